//! cbsweep on a real Slurm cluster: a one-node cluster (munged, slurmctld, slurmd from Debian's
//! slurm-wlm and munge) started from a fresh temporary folder for each test, the worker job array
//! rendered from deploy/slurm/ and submitted by the coordinator's `slurm` module, workers with
//! the fake trainer, results read back by DuckDB. Needs root and the packages
//! (`bash scripts/cluster-setup.sh` installs them); otherwise each test says why it skips.
//!
//! One cluster at a time on a machine: each test holds an exclusive lock on
//! /tmp/cbsweep-slurm-tests.lock while its cluster lives, so parallel test processes queue.
//! The cluster's daemons and jobs are stopped by pid when the test ends, failed or not.

use cbsweep_common::SweepId;
use cbsweep_coordinator::slurm::{self, Coordinator, CoordinatorAddr, CoordinatorJob, Plan, Resources, Sbatch, Submitted, Workers};
use cbsweep_tests::{
    Proc, bin, coordinator, counts, duckdb, fake_worker, find_program, free_port, http_get, is_root, results_once, resumed_from, skipped,
    submit, sweep_done, wait_until, write_spec,
};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const PROGRAMS: [&str; 7] = ["munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue"];
/// Fake GPUs on the node, so the worker script's `--gres=gpu:1` is scheduled as on a GPU cluster.
const GPUS: u32 = 4;

/// A one-node Slurm cluster of this test's own; stopped (jobs cancelled, daemons terminated by
/// pid) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    munged: Proc,
    slurmctld: Proc,
    slurmd: Proc,
    _lock: std::fs::File,
}

impl Cluster {
    /// The cluster, or None (after saying why) where this machine cannot run one.
    fn start(test: &str) -> Option<Cluster> {
        if !is_root() {
            skipped(test, "not root (a Slurm cluster needs root to start munged, slurmctld and slurmd)");
            return None;
        }
        let missing: Vec<&str> = PROGRAMS.into_iter().filter(|p| find_program(p).is_none()).collect();
        if !missing.is_empty() {
            skipped(test, &format!("{} not installed (`bash scripts/cluster-setup.sh` installs slurm-wlm and munge)", missing.join(", ")));
            return None;
        }
        let Some((munge_uid, munge_gid)) = passwd_ids("munge") else {
            skipped(test, "no munge user (reinstall the munge package)");
            return None;
        };
        let lock = std::fs::File::create("/tmp/cbsweep-slurm-tests.lock").expect("lock file");
        lock.lock().expect("lock");
        let dir = tempfile::Builder::new().prefix("cbsweep-slurm-").tempdir().expect("temp dir");
        let d = dir.path();
        // munged refuses a socket or key in a folder its user cannot reach, or others can write.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (keys, run) = (d.join("munge-key"), d.join("munge-run"));
        for (folder, mode) in [(&keys, 0o700), (&run, 0o755)] {
            std::fs::create_dir(folder).unwrap();
            std::os::unix::fs::chown(folder, Some(munge_uid), Some(munge_gid)).unwrap();
            std::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let key = keys.join("munge.key");
        let mut bytes = vec![0u8; 1024];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
        std::fs::write(&key, &bytes).unwrap();
        std::os::unix::fs::chown(&key, Some(munge_uid), Some(munge_gid)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        let socket = run.join("munge.socket");
        let munged = Proc::spawn(
            Command::new(find_program("munged").unwrap())
                .uid(munge_uid)
                .gid(munge_gid)
                .arg("--foreground")
                .arg(format!("--key-file={}", key.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--pid-file={}", run.join("munged.pid").display()))
                .arg(format!("--log-file={}", keys.join("munged.log").display()))
                .arg(format!("--seed-file={}", keys.join("munged.seed").display()))
                .stdout(log_file(d, "munged.out"))
                .stderr(log_file(d, "munged.out")),
        );
        wait_until(10, "munged's socket", || socket.exists());

        let host = short_hostname();
        let mut gres = String::new();
        for i in 0..GPUS {
            let dev = d.join(format!("gpu{i}"));
            // a character device, as slurmd wants for a GPU; a plain file works too (with a warning)
            let made = Command::new("mknod").arg(&dev).args(["c", "1", "3"]).status().map(|s| s.success()).unwrap_or(false);
            if !made {
                std::fs::write(&dev, b"").unwrap();
            }
        }
        gres.push_str(&format!("NodeName={host} Name=gpu File={}/gpu[0-{}]\n", d.display(), GPUS - 1));
        std::fs::write(d.join("gres.conf"), gres).unwrap();
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let conf = d.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=cbsweeptest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
SchedulerParameters=sched_interval=2,sched_min_interval=100000
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=2000 Gres=gpu:{GPUS} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
",
                ctld_port = free_port(),
                slurmd_port = free_port(),
                socket = socket.display(),
                d = d.display(),
            ),
        )
        .unwrap();
        let slurmctld = Proc::spawn(
            Command::new(find_program("slurmctld").unwrap())
                .args(["-D", "-i", "-f"])
                .arg(&conf)
                .stdout(log_file(d, "slurmctld.out"))
                .stderr(log_file(d, "slurmctld.out")),
        );
        let slurmd = Proc::spawn(
            Command::new(find_program("slurmd").unwrap())
                .args(["-D", "-f"])
                .arg(&conf)
                .stdout(log_file(d, "slurmd.out"))
                .stderr(log_file(d, "slurmd.out")),
        );
        let cluster = Cluster { dir, conf, munged, slurmctld, slurmd, _lock: lock };
        let mut last = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        while last != "idle" {
            assert!(std::time::Instant::now() < deadline, "the node is not idle after 40 s: {last:?}\n{}", cluster.logs());
            std::thread::sleep(Duration::from_millis(250));
            last = cluster.output("sinfo", &["-h", "-N", "-o", "%t"]).trim().to_string();
        }
        Some(cluster)
    }

    /// A Slurm client command that talks to this cluster.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(find_program(program).unwrap_or_else(|| program.into()));
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn output(&self, program: &str, args: &[&str]) -> String {
        let o = self.command(program).args(args).output().expect("slurm command runs");
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    }

    fn sbatch(&self) -> Sbatch {
        Sbatch { slurm_conf: Some(self.conf.clone()), ..Sbatch::default() }
    }

    /// A field of `scontrol show job` (for an array task: `ID_N`), e.g. JobState.
    fn job(&self, job: &str, field: &str) -> String {
        job_field(&self.output("scontrol", &["-o", "show", "job", job]), field)
    }

    /// Lets a requeued job start now: Slurm holds one back for about two minutes (its
    /// StartTime; the reason says BeginTime), longer than a test should wait.
    fn release_held(&self, job: &str) {
        let text = self.output("scontrol", &["-o", "show", "job", job]);
        if job_field(&text, "JobState") == "PENDING" && job_field(&text, "Reason") == "BeginTime" {
            // it may have started in between: a refusal then is no failure
            let _ = self.output("scontrol", &["update", &format!("JobId={job}"), "StartTime=now"]);
        }
    }

    fn wait_for_state(&self, job: &str, state: &str, secs: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let now = self.job(job, "JobState");
            if now == state {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "job {job} is {now:?}, not {state} after {secs} s\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The daemons' logs, for a failure message.
    fn logs(&self) -> String {
        ["slurmctld.out", "slurmd.out", "log/slurmctld.log", "log/slurmd.log"]
            .iter()
            .map(|f| {
                let t = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(15).collect();
                format!("--- {f}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first (their workers and slurmstepd end with them), then the daemons, by pid.
        let _ = self.command("scancel").args(["--user", "root"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let o = self.command("squeue").args(["-h", "-o", "%i"]).output();
            if o.map(|o| !o.status.success() || o.stdout.iter().all(u8::is_ascii_whitespace)).unwrap_or(true) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for p in [&mut self.slurmd, &mut self.slurmctld, &mut self.munged] {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid()), nix::sys::signal::Signal::SIGTERM);
            if p.wait_for(10).is_none() {
                p.kill9();
            }
        }
    }
}

/// `field`'s value in one line of `scontrol -o show job`.
fn job_field(text: &str, field: &str) -> String {
    text.split_whitespace().find_map(|kv| kv.strip_prefix(field).and_then(|v| v.strip_prefix('='))).unwrap_or("").to_string()
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).expect("log file")
}

/// (uid, gid) of a user in /etc/passwd.
fn passwd_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user) && f.len() > 3).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn short_hostname() -> String {
    let o = Command::new("hostname").arg("-s").output().expect("hostname runs");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A quickstart-like grid: 2 tasks x 2 architectures x `seeds` seeds.
fn spec_text(name: &str, seeds: usize, epochs: u32) -> String {
    let seeds: Vec<String> = (0..seeds).map(|s| s.to_string()).collect();
    format!(
        "[sweep]\nname = \"{name}\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{}]\n[train]\nepochs = {epochs}\n[run]\npack_size = 1\nlease_seconds = 10\nmax_attempts = 5\n",
        seeds.join(", ")
    )
}

/// Two trials (seeds 0 and 1 of one condition), checkpointed after every epoch (so a hand-back
/// keeps every epoch trained), one at a time: two trials finishing at one moment start two
/// exports of the sweep at once, which the coordinator does not order (a stale one may land
/// last).
fn one_by_one_spec_text(name: &str, epochs: u32) -> String {
    format!(
        "[sweep]\nname = \"{name}\"\n[grid]\ntask = [\"dms\"]\narch = [\"cbrnn\"]\nseed = [0, 1]\n[train]\nepochs = {epochs}\n[run]\npack_size = 1\ncheckpoint_every = 1\nlease_seconds = 10\nmax_attempts = 5\n"
    )
}

/// RESULTS/curves.parquet read by DuckDB in a fixed order, less sweep_id and trial_id (a
/// trial's id hashes its sweep's name): comparable between sweeps of one grid.
fn curves(results: &Path) -> Vec<serde_json::Value> {
    duckdb(&format!("SELECT * EXCLUDE (sweep_id, trial_id) FROM '{}' ORDER BY ALL", results.join("curves.parquet").display()))
}

/// The curves of `spec`'s sweep trained without any time limit: by a coordinator and a
/// fake-trainer worker of their own, outside Slurm, at 25 ms an epoch (the fake's curves do
/// not depend on its speed).
fn curves_without_limits(name: &str, spec: &str, cells: usize, epochs: u32) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let (port, token) = (free_port(), format!("t0ken-{name}"));
    let state = dir.path().join("state");
    let _coordinator = coordinator(&state, port, &token);
    submit(port, &token, &write_spec(dir.path(), &format!("{name}.toml"), spec));
    let _worker = fake_worker(port, &token, &dir.path().join("exec.log"), 25, &[]);
    let results = state.join("results").join(name);
    results_once(&results, cells, epochs);
    curves(&results)
}

/// Workers that train with the fake trainer and log each execution to `exec_log`.
fn fake_workers(count: u32, epoch_ms: u64, exec_log: &Path) -> Workers {
    Workers {
        count,
        resources: Resources {
            partition: Some("debug".into()),
            cpus_per_task: 1,
            mem: "100M".into(),
            time: "00:10:00".into(),
            ..Resources::gpu_worker()
        },
        device: "cpu".into(),
        worker_binary: bin("cbsweep-worker"),
        worker_args: ["--trainer", "fake", "--fake-epoch-ms", &epoch_ms.to_string(), "--fake-execution-log", exec_log.to_str().unwrap()]
            .map(String::from)
            .to_vec(),
        warning_s: 120,
    }
}

/// A sweep whose workers run as a Slurm job array, and where to look at it.
struct Run {
    _dir: tempfile::TempDir,
    exec_log: PathBuf,
    results: PathBuf,
    plan: Plan,
    submitted: Submitted,
    /// A coordinator this test runs itself, outside Slurm.
    _coordinator: Option<Proc>,
}

impl Run {
    /// A coordinator on loopback (outside Slurm, as on a login node) with `name`'s sweep
    /// (`spec_text`) submitted, and two fake-trainer workers submitted as an array.
    fn with_running_coordinator(cluster: &Cluster, name: &str, seeds: usize, epochs: u32, epoch_ms: u64) -> Run {
        Run::with_coordinator_serving(cluster, name, &spec_text(name, seeds, epochs), |exec_log| fake_workers(2, epoch_ms, exec_log))
    }

    /// A coordinator on loopback with the sweep `name` of `spec` submitted, its URL and token in
    /// files on the "shared filesystem" the way worker.sbatch finds them, and the array that
    /// `workers` makes (given the execution log) submitted.
    fn with_coordinator_serving(cluster: &Cluster, name: &str, spec: &str, workers: impl FnOnce(&Path) -> Workers) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (port, token) = (free_port(), format!("t0ken-{name}"));
        let state = d.join("state");
        let proc = coordinator(&state, port, &token);
        let spec = write_spec(d, &format!("{name}.toml"), spec);
        submit(port, &token, &spec);
        let url_file = d.join("coordinator.url");
        std::fs::write(&url_file, format!("http://127.0.0.1:{port}\n")).unwrap();
        let token_file = d.join("token");
        std::fs::write(&token_file, &token).unwrap();
        let coordinator = Coordinator::Running { addr: CoordinatorAddr::File(url_file), token_file };
        Run::submit(cluster, dir, spec, coordinator, &state, workers, Some(proc))
    }

    /// The workers that `workers` makes (given the execution log) for the sweep in `spec`
    /// (named as its file), submitted as an array through `slurm::submit`, with a coordinator
    /// job first if `coordinator` is one.
    fn submit(
        cluster: &Cluster,
        dir: tempfile::TempDir,
        spec: PathBuf,
        coordinator: Coordinator,
        state: &Path,
        workers: impl FnOnce(&Path) -> Workers,
        proc: Option<Proc>,
    ) -> Run {
        let name = spec.file_stem().unwrap().to_str().unwrap().to_string();
        let exec_log = dir.path().join("exec.log");
        let plan = Plan { sweep: SweepId(name.clone()), spec, coordinator, workers: workers(&exec_log), log_dir: dir.path().join("logs") };
        let submitted = slurm::submit(&plan, &cluster.sbatch()).expect("sbatch accepts the rendered scripts");
        Run { results: state.join("results").join(name), _dir: dir, exec_log, plan, submitted, _coordinator: proc }
    }

    /// An array task's id, `ARRAY_TASK`.
    fn task(&self, task: u32) -> String {
        format!("{}_{task}", self.submitted.workers)
    }

    /// What an array task printed (the script's and the worker's log lines).
    fn task_output(&self, task: u32) -> String {
        std::fs::read_to_string(self.plan.log_dir.join(format!("cbsweep-{}-worker-{}_{task}.out", self.plan.sweep, self.submitted.workers)))
            .unwrap_or_default()
    }

    /// Waits until task 0 trains a trial, so it holds a lease (a trial lasts ~1 s and the next
    /// one starts at once; the output is polled every 50 ms).
    fn wait_until_task_0_trains(&self) {
        wait_until(60, "array task 0 to start training", || self.task_output(0).contains("training"));
    }

    /// Every cell done exactly once in the export (DuckDB). Fails early, with what the jobs and
    /// daemons said, when the worker tasks are all gone without that.
    fn results_once(&self, cluster: &Cluster, cells: usize, epochs: u32) {
        self.results_once_within(cluster, cells, epochs, 90, || {});
    }

    /// `results_once` within `secs`, calling `each_poll` every half second while it waits.
    fn results_once_within(&self, cluster: &Cluster, cells: usize, epochs: u32, secs: u64, mut each_poll: impl FnMut()) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        let mut gone_at: Option<std::time::Instant> = None;
        while !sweep_done(&self.results, cells) {
            each_poll();
            let gone = cluster.output("squeue", &["-h", "-o", "%i", "-j", &self.submitted.workers.to_string()]).trim().is_empty();
            gone_at = if gone { gone_at.or_else(|| Some(std::time::Instant::now())) } else { None };
            let export_late = gone_at.is_some_and(|t| t.elapsed() > Duration::from_secs(10));
            if std::time::Instant::now() > deadline || export_late {
                let outputs: Vec<String> = std::fs::read_dir(&self.plan.log_dir)
                    .map(|d| {
                        d.flatten()
                            .map(|e| format!("--- {}\n{}", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                panic!(
                    "sweep not done in {} (time out, or every worker task ended)\n{}\n{}\n{}",
                    self.results.display(),
                    cluster.output("squeue", &["-a"]),
                    outputs.join("\n"),
                    cluster.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        results_once(&self.results, cells, epochs);
    }
}

#[test]
fn worker_array_from_deploy_slurm_drains_a_sweep_with_every_cell_once() {
    let Some(cluster) = Cluster::start("worker_array_from_deploy_slurm_drains_a_sweep_with_every_cell_once") else { return };
    let run = Run::with_running_coordinator(&cluster, "slurmqs", 3, 10, 40);
    assert_eq!(run.submitted.coordinator, None);
    run.results_once(&cluster, 12, 10);
    let (starts, dones) = counts(&run.exec_log);
    assert!(dones.len() == 12 && dones.values().all(|&n| n == 1), "each trial trained once: {dones:?}");
    assert!(starts.values().all(|&n| n == 1), "no trial started twice: {starts:?}");
    let mut gpus = Vec::new();
    for task in 0..2 {
        cluster.wait_for_state(&run.task(task), "COMPLETED", 30);
        let out = run.task_output(task);
        assert_eq!(cluster.job(&run.task(task), "ExitCode"), "0:0", "{out}");
        assert!(out.contains("no work left; exiting"), "the worker exited because the sweep was drained:\n{out}");
        gpus.push(out.split("GPU ").nth(1).and_then(|r| r.split(':').next()).map(str::to_string));
    }
    assert!(
        gpus.iter().all(|g| g.as_deref().is_some_and(|g| g != "none")) && gpus[0] != gpus[1],
        "each task got a GPU of its own (--gres=gpu:1): {gpus:?}"
    );
}

/// Quarantined (issue 32's "keep flaky tests out"): it failed 3 times in 9 runs on 2026-12-07,
/// alone and beside other tests: after the scancel of task 0, Slurm requeued both tasks of the
/// array ("Requeuing JobId=1_1", "Requeuing JobId=1_0") and task 0 stayed PENDING past 30 s.
/// The worker script now requeues only its own array task (the first task's job id is the
/// array's own, and `scontrol requeue` of it requeued every task). With that fix it passed 9 runs
/// of 9 on 2026-12-08 (`--run-ignored only`, alone); a few more such runs on other days, then
/// drop this quarantine.
#[test]
#[ignore = "flaky under Slurm: a scancelled array task is sometimes requeued instead of cancelled (see its doc comment)"]
fn scancelled_worker_hands_its_lease_back_and_the_sweep_still_completes_once() {
    let Some(cluster) = Cluster::start("scancelled_worker_hands_its_lease_back_and_the_sweep_still_completes_once") else { return };
    let run = Run::with_running_coordinator(&cluster, "slurmcancel", 2, 10, 100);
    run.wait_until_task_0_trains();
    let o = cluster.command("scancel").arg(run.task(0)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    cluster.wait_for_state(&run.task(0), "CANCELLED", 30);
    run.results_once(&cluster, 8, 10);
    let out = run.task_output(0);
    assert!(out.contains("handed leases back"), "the cancelled worker handed its lease back on SIGTERM:\n{out}");
    let (starts, dones) = counts(&run.exec_log);
    assert_eq!(dones.values().sum::<usize>(), 8, "no stopped trial reported as finished: {dones:?}");
    assert!(starts.values().any(|&n| n == 2), "the handed-back trial ran again on the other task: {starts:?}");
    cluster.wait_for_state(&run.task(1), "COMPLETED", 30);
}

#[test]
fn preemption_warning_hands_the_lease_back_and_requeues_the_task() {
    let Some(cluster) = Cluster::start("preemption_warning_hands_the_lease_back_and_requeues_the_task") else { return };
    let run = Run::with_running_coordinator(&cluster, "slurmwarn", 2, 10, 100);
    run.wait_until_task_0_trains();
    // What --signal=B:USR1@120 sends before the time limit: USR1 to the batch shell only.
    let o = cluster.command("scancel").args(["--signal=USR1", "--batch"]).arg(run.task(0)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_until(30, "the warned task to be requeued", || cluster.job(&run.task(0), "Restarts") == "1");
    let out = run.task_output(0);
    assert!(out.contains("handed leases back") && out.contains("requeueing"), "USR1: leases handed back, task requeued:\n{out}");
    run.results_once(&cluster, 8, 10);
    let (starts, _) = counts(&run.exec_log);
    assert!(starts.values().any(|&n| n == 2), "the handed-back trial ran again: {starts:?}");
    // Slurm holds a requeued job back for a while; let it start now: it finds the sweep drained.
    let o = cluster.command("scontrol").args(["update", &format!("JobId={}", run.task(0)), "StartTime=now"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    cluster.wait_for_state(&run.task(0), "COMPLETED", 60);
    assert_eq!(cluster.job(&run.task(0), "ExitCode"), "0:0");
}

/// A coordinator job's resources on the test cluster.
fn coordinator_resources() -> Resources {
    Resources { partition: Some("debug".into()), cpus_per_task: 1, mem: "100M".into(), time: "00:10:00".into(), ..Resources::coordinator() }
}

#[test]
fn coordinator_job_submits_the_spec_and_its_workers_follow_it() {
    let Some(cluster) = Cluster::start("coordinator_job_submits_the_spec_and_its_workers_follow_it") else { return };
    let dir = tempfile::tempdir().unwrap();
    // STATE stands for the shared filesystem, `local` for the coordinator node's own disk.
    let (state, local) = (dir.path().join("state"), dir.path().join("node-local"));
    let http = format!("127.0.0.1:{}", free_port());
    let coordinator = Coordinator::Job(Box::new(CoordinatorJob {
        state: state.clone(),
        local_state: Some(local.clone()),
        cbsweep_binary: bin("cbsweep"),
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        http_listen: Some(http.parse().unwrap()),
        advertise_host: Some("127.0.0.1".into()),
        resources: coordinator_resources(),
    }));
    let spec = write_spec(dir.path(), "slurmjob.toml", &spec_text("slurmjob", 2, 8));
    let run = Run::submit(&cluster, dir, spec, coordinator, &state, |exec_log| fake_workers(2, 40, exec_log), None);
    let coord = run.submitted.coordinator.expect("a coordinator job").to_string();
    let workers_script = std::fs::read_to_string(&run.submitted.scripts[1]).unwrap();
    assert!(workers_script.contains(&format!("#SBATCH --dependency=after:{coord}\n")), "{workers_script}");
    run.results_once(&cluster, 8, 8);
    let (_, dones) = counts(&run.exec_log);
    assert!(dones.len() == 8 && dones.values().all(|&n| n == 1), "{dones:?}");
    for task in 0..2 {
        cluster.wait_for_state(&run.task(task), "COMPLETED", 30);
    }
    let (code, metrics) = http_get(&http, "/metrics").expect("the coordinator job serves /metrics");
    assert_eq!(code, 200);
    assert!(metrics.lines().any(|l| l.starts_with("cbsweep_trials_finished_total") && l.ends_with(" 8")), "{metrics}");
    assert_eq!(http_get(&http, "/readyz").map(|(c, _)| c), Some(200));
    assert!(std::fs::read_to_string(state.join(format!("coordinator-{coord}.url"))).unwrap().starts_with("http://127.0.0.1:"));
    // The coordinator runs until cancelled; SIGTERM stops it with its state saved.
    let o = cluster.command("scancel").arg(&coord).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    cluster.wait_for_state(&coord, "CANCELLED", 30);
    let log_text =
        || std::fs::read_to_string(run.plan.log_dir.join(format!("cbsweep-slurmjob-coordinator-{coord}.out"))).unwrap_or_default();
    let log = log_text();
    assert!(log.contains("ready: workers read") && log.contains("state is saved"), "{log}");
    // The database was on the node's disk, never on the shared one; the workers' token and the
    // database's backup (taken when the coordinator stopped) are on the shared one.
    assert!(local.join("cbsweep.sqlite").exists(), "{log}");
    assert!(!state.join("cbsweep.sqlite").exists(), "a database on the shared filesystem: {log}");
    assert!(state.join("token").exists(), "{log}");
    wait_until(30, "the script to back the stopped coordinator's state up", || log_text().contains("backed up the state to"));
    // The backup holds the finished sweep: restored elsewhere, it exports every cell done.
    let elsewhere = run._dir.path().join("elsewhere");
    let o = Command::new(bin("cbsweep"))
        .arg("restore")
        .arg(state.join("coordinator-backup.sqlite"))
        .arg("--state")
        .arg(&elsewhere)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o =
        Command::new(bin("cbsweep")).args(["export", "slurmjob", "--state"]).arg(&elsewhere).arg("--out").arg(&elsewhere).output().unwrap();
    assert!(o.status.success() && sweep_done(&elsewhere.join("slurmjob"), 8), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_coordinator_job_on_another_node_restores_the_state_from_the_shared_backup() {
    let Some(cluster) = Cluster::start("a_coordinator_job_on_another_node_restores_the_state_from_the_shared_backup") else { return };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let token = "t0ken-moved";
    let spec = write_spec(dir.path(), "moved.toml", &spec_text("moved", 1, 4));
    // A first coordinator (a job before this one, elsewhere) ran the sweep and backed it up.
    let (port, first) = (free_port(), dir.path().join("first-node"));
    let proc = coordinator(&first, port, token);
    submit(port, token, &spec);
    let _worker = fake_worker(port, token, &dir.path().join("exec.log"), 10, &[]);
    results_once(&first.join("results").join("moved"), 4, 4);
    std::fs::create_dir_all(&state).unwrap();
    let o = Command::new(bin("cbsweep"))
        .arg("backup")
        .arg(state.join("coordinator-backup.sqlite"))
        .arg("--state")
        .arg(&first)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(proc);
    std::fs::write(state.join("token"), token).unwrap();
    std::fs::set_permissions(state.join("token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(state.join("coordinator.local"), "another-node:/tmp/cbsweep-coordinator-1\n").unwrap();

    // The coordinator job starts on a node whose disk holds no state: it restores the backup.
    let local = dir.path().join("this-node");
    let plan = Plan {
        sweep: SweepId("moved".into()),
        spec: spec.clone(),
        coordinator: Coordinator::Job(Box::new(CoordinatorJob {
            state: state.clone(),
            local_state: Some(local.clone()),
            cbsweep_binary: bin("cbsweep"),
            listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            http_listen: None,
            advertise_host: Some("127.0.0.1".into()),
            resources: coordinator_resources(),
        })),
        workers: fake_workers(1, 10, &dir.path().join("exec.log")),
        log_dir: dir.path().join("logs"),
    };
    std::fs::create_dir_all(&plan.log_dir).unwrap();
    let script = plan.log_dir.join("coordinator.sbatch");
    std::fs::write(&script, slurm::render_coordinator(&plan).unwrap().unwrap()).unwrap();
    let o = cluster.command("sbatch").arg("--parsable").arg(&script).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let job = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let url_file = state.join(format!("coordinator-{job}.url"));
    let out = plan.log_dir.join(format!("cbsweep-moved-coordinator-{job}.out"));
    wait_until(60, "the restored coordinator to serve, or its job to end", || {
        url_file.exists() || !["RUNNING", "PENDING"].contains(&cluster.job(&job, "JobState").as_str())
    });
    let log = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(url_file.exists(), "{log}\n{}", cluster.logs());
    assert!(log.contains("restoring the coordinator's state from"), "{log}");
    let url = std::fs::read_to_string(&url_file).unwrap();
    let o = Command::new(bin("cbsweep"))
        .args(["status", "moved", "--coordinator", url.trim(), "--token-file"])
        .arg(state.join("token"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("4 done"),
        "the restored coordinator knows the finished sweep: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let host = Command::new("hostname").output().unwrap();
    let here = format!("{}:{}", String::from_utf8_lossy(&host.stdout).trim(), local.display());
    assert_eq!(std::fs::read_to_string(state.join("coordinator.local")).unwrap().trim(), here, "where the database now is");
    assert!(local.join("cbsweep.sqlite").exists() && !state.join("cbsweep.sqlite").exists());
    let o = cluster.command("scancel").arg(&job).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    cluster.wait_for_state(&job, "CANCELLED", 30);
}

#[test]
fn trials_longer_than_the_jobs_time_limit_finish_across_requeued_jobs_once_with_unchanged_curves() {
    let Some(cluster) = Cluster::start("trials_longer_than_the_jobs_time_limit_finish_across_requeued_jobs_once_with_unchanged_curves")
    else {
        return;
    };
    // A job trains at most 15 s (its hand-back comes 45 s before its end), 30 epochs at 500 ms:
    // each trial needs two jobs, the sweep at least three.
    const EPOCHS: u32 = 40;
    let expected = curves_without_limits("slurmlimitref", &one_by_one_spec_text("slurmlimitref", EPOCHS), 2, EPOCHS);
    let run = Run::with_coordinator_serving(&cluster, "slurmlimit", &one_by_one_spec_text("slurmlimit", EPOCHS), |exec_log| {
        let mut w = fake_workers(1, 500, exec_log);
        // Slurm's shortest limit; the worker stops 45 s before the job's end, ~15 s into it.
        w.resources.time = "00:01:00".into();
        w.worker_args.extend(["--deadline-margin-s", "45"].map(String::from));
        // No USR1 (--signal=B:USR1@0 sends none): only the worker's own deadline stops a job.
        w.warning_s = 0;
        w
    });
    let task = run.task(0);
    run.results_once_within(&cluster, 2, EPOCHS, 150, || cluster.release_held(&task));
    wait_until(60, "the last job to find the sweep drained and complete", || {
        cluster.release_held(&task);
        cluster.job(&task, "JobState") == "COMPLETED"
    });
    let out = run.task_output(0);
    assert_eq!(cluster.job(&task, "ExitCode"), "0:0", "{out}");
    let restarts: usize = cluster.job(&task, "Restarts").parse().unwrap_or(0);
    assert!(restarts >= 2, "the task was requeued for each job after the first (Restarts={restarts}):\n{out}");
    assert!(
        out.contains("the allocation's end is near") && out.contains("the job's time limit is near; requeueing job "),
        "the worker stopped at its deadline and the script requeued the task:\n{out}"
    );
    assert!(!out.contains("got SIGUSR1"), "no USR1 came; the deadline alone stopped each job:\n{out}");
    let (starts, dones) = counts(&run.exec_log);
    let resumed = resumed_from(&run.exec_log);
    assert!(dones.len() == 2 && dones.values().all(|&n| n == 1), "each trial finished once: {dones:?}");
    for (id, from) in &resumed {
        assert!(from.windows(2).all(|w| w[0] < w[1]) && from.iter().all(|&e| e > 0 && e < EPOCHS), "{id} resumed from {from:?}");
        assert_eq!(starts[id], 1 + from.len(), "{id}: one fresh start, the rest resumed: {starts:?} {resumed:?}");
        assert!(from.len() <= restarts, "{id} resumed in requeued jobs only: {from:?}, Restarts={restarts}");
    }
    assert!(resumed.len() == 2, "each trial resumed from a checkpoint: {resumed:?}");
    let trials =
        duckdb(&format!("SELECT seed, resumes, epochs_lost FROM '{}' ORDER BY seed", run.results.join("trials.parquet").display()));
    assert!(trials.iter().all(|t| t["resumes"].as_u64() >= Some(1) && t["epochs_lost"].as_u64() == Some(0)), "{trials:?}");
    assert_eq!(curves(&run.results), expected, "the curves equal those of a run without limits");
}
