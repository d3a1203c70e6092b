//! Running a sweep's workers (and optionally its coordinator) as Slurm jobs: renders the batch
//! scripts of deploy/slurm/ for one sweep and submits them with `sbatch`.
//!
//! The rendered scripts are the files in deploy/slurm/ with their `#SBATCH` header replaced by
//! this plan's resources and their settings fixed; their bodies are the same text, so what a
//! person submits by hand and what `cbsweep slurm submit` submits behave alike. Workers find the
//! coordinator through a URL or a file on the shared filesystem (written by coordinator.sbatch
//! once the coordinator serves), and the token through a file. A coordinator job keeps its
//! database on its node's local disk (SQLite's WAL is not safe on a network filesystem) and
//! backs it up into the shared folder. This module knows nothing about gRPC, the scheduler or
//! trials: submitting the spec to a running coordinator is the caller's.

use cbsweep_common::SweepId;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// deploy/slurm/worker.sbatch: a job array, one worker per task.
pub const WORKER_TEMPLATE: &str = include_str!("../../deploy/slurm/worker.sbatch");
/// deploy/slurm/coordinator.sbatch: the coordinator as a long CPU job.
pub const COORDINATOR_TEMPLATE: &str = include_str!("../../deploy/slurm/coordinator.sbatch");

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("the number of workers must be at least 1")]
    NoWorkers,
    #[error("{what} {value:?} cannot go on an #SBATCH line: no spaces, quotes, backslashes or line breaks")]
    BadValue { what: &'static str, value: String },
    #[error("sbatch option {0:?} must be one option starting with --, e.g. --account=lab")]
    BadOption(String),
    #[error("{what} {} is not valid UTF-8", path.display())]
    NotUtf8 { what: &'static str, path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot run {}: {source} (is Slurm's sbatch installed and on PATH?)", program.display())]
    NoSbatch { program: PathBuf, source: std::io::Error },
    #[error("sbatch refused {}: {stderr}", script.display())]
    Refused { script: PathBuf, stderr: String },
    #[error("sbatch answered {output:?} for {}, not a job id", script.display())]
    NoJobId { script: PathBuf, output: String },
}

/// A Slurm job id; for a job array, the array's id (its tasks are `ID_0`, `ID_1`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What one job (or each task of an array) asks Slurm for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    /// None: the cluster's default partition.
    pub partition: Option<String>,
    /// Generic resources per task, e.g. `gpu:1` or `gpu:a100:1`; None on CPU-only nodes.
    pub gres: Option<String>,
    pub cpus_per_task: u32,
    /// Memory per node in sbatch's syntax: `32G`, `4000M`.
    pub mem: String,
    /// Time limit in sbatch's syntax: `24:00:00`, `2-00:00:00`.
    pub time: String,
    /// More sbatch options, one per line, e.g. `--account=lab` or `--qos=long`.
    pub extra: Vec<String>,
}

/// Where the workers find the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorAddr {
    /// Its URL, e.g. `http://login1:50051`.
    Url(String),
    /// A file on the shared filesystem whose first line is the URL; workers wait for it.
    File(PathBuf),
}

/// The coordinator as a Slurm job (deploy/slurm/coordinator.sbatch): it serves with its
/// database in `local_state`, submits the spec once serving, then writes
/// STATE/coordinator-JOBID.url for the workers, whose array starts after it
/// (`--dependency=after:JOBID`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorJob {
    /// The coordinator's folder on the shared filesystem: token, URL files, results, the
    /// database's backup (STATE/coordinator-backup.sqlite, restored by a coordinator that starts
    /// on another node).
    pub state: PathBuf,
    /// The database's folder on the node's local disk; None: the script's default
    /// (CBSWEEP_LOCAL_STATE from the environment, else TMPDIR/cbsweep-coordinator-JOBID).
    pub local_state: Option<PathBuf>,
    /// The `cbsweep` binary, as the compute node sees it.
    pub cbsweep_binary: PathBuf,
    pub listen: SocketAddr,
    /// /healthz, /readyz and /metrics; None serves none.
    pub http_listen: Option<SocketAddr>,
    /// The host name workers connect to; None: the node's `hostname -f`.
    pub advertise_host: Option<String>,
    pub resources: Resources,
}

/// Which coordinator the workers use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coordinator {
    /// One already serving (a login-node service, another machine). The caller submits the
    /// spec to it before the workers start: a worker finding no sweep exits at once.
    Running { addr: CoordinatorAddr, token_file: PathBuf },
    /// Submit the coordinator as a job too; the token is STATE/token.
    Job(Box<CoordinatorJob>),
}

/// The worker job array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workers {
    /// Array tasks: one worker each.
    pub count: u32,
    pub resources: Resources,
    /// `auto` (the task's GPU if Slurm gave one, else the CPU), `cpu` or `cuda:N`.
    pub device: String,
    /// The `cbsweep-worker` binary, as the compute nodes see it.
    pub worker_binary: PathBuf,
    /// More worker arguments, e.g. `--max-pack 16`.
    pub worker_args: Vec<String>,
    /// Seconds before the time limit at which Slurm sends USR1: the worker hands its leases
    /// back and the task is requeued.
    pub warning_s: u32,
}

/// Everything `cbsweep slurm submit` sends to Slurm for one sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub sweep: SweepId,
    /// The spec, on the shared filesystem (a coordinator job submits it itself).
    pub spec: PathBuf,
    pub coordinator: Coordinator,
    pub workers: Workers,
    /// The rendered scripts and the jobs' output files go here (shared filesystem).
    pub log_dir: PathBuf,
}

/// The scripts for a plan, as sbatch would receive them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub coordinator: Option<String>,
    pub workers: String,
}

/// What was submitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub coordinator: Option<JobId>,
    /// The worker array; its tasks are `ID_0` .. `ID_{count-1}`.
    pub workers: JobId,
    /// The rendered scripts as submitted (in the plan's log folder).
    pub scripts: Vec<PathBuf>,
}

/// How to call sbatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sbatch {
    pub program: PathBuf,
    /// A slurm.conf other than the default (sets SLURM_CONF for sbatch and so for the jobs).
    pub slurm_conf: Option<PathBuf>,
}

impl Default for Sbatch {
    fn default() -> Self {
        Sbatch { program: PathBuf::from("sbatch"), slurm_conf: None }
    }
}

impl Resources {
    /// A GPU worker: one GPU, 8 cores, 32 GB, a day.
    pub fn gpu_worker() -> Resources {
        Resources {
            partition: None,
            gres: Some("gpu:1".into()),
            cpus_per_task: 8,
            mem: "32G".into(),
            time: "24:00:00".into(),
            extra: Vec::new(),
        }
    }

    /// The coordinator: no GPU, 2 cores, 4 GB, a week.
    pub fn coordinator() -> Resources {
        Resources { partition: None, gres: None, cpus_per_task: 2, mem: "4G".into(), time: "7-00:00:00".into(), extra: Vec::new() }
    }
}

/// Renders both scripts; the workers' one as if the coordinator job had no id yet (it reads
/// STATE/coordinator.url and has no dependency), which is what a dry run shows.
pub fn render(plan: &Plan) -> Result<Rendered, SlurmError> {
    Ok(Rendered { coordinator: render_coordinator(plan)?, workers: render_workers(plan, None)? })
}

/// The coordinator job's script, if the plan has one.
pub fn render_coordinator(plan: &Plan) -> Result<Option<String>, SlurmError> {
    let Coordinator::Job(job) = &plan.coordinator else {
        return Ok(None);
    };
    let name = format!("cbsweep-{}-coordinator", plan.sweep);
    let mut h = Header::new(&name, "coordinator.sbatch");
    h.resources(&job.resources)?;
    h.sbatch("--requeue");
    h.sbatch("--signal=B:TERM@60");
    h.sbatch(&format!("--output={}/{name}-%j.out", sbatch_path("log folder", &plan.log_dir)?));
    h.sbatch("--open-mode=append");
    h.set("CBSWEEP_STATE", path_str("state folder", &job.state)?);
    if let Some(local) = &job.local_state {
        h.set("CBSWEEP_LOCAL_STATE", path_str("local state folder", local)?);
    }
    h.set("CBSWEEP", path_str("cbsweep binary", &job.cbsweep_binary)?);
    h.set("CBSWEEP_LISTEN", &job.listen.to_string());
    h.set("CBSWEEP_HTTP_LISTEN", &job.http_listen.map(|a| a.to_string()).unwrap_or_default());
    if let Some(host) = &job.advertise_host {
        h.set("CBSWEEP_ADVERTISE_HOST", host);
    }
    h.set("CBSWEEP_SPEC", path_str("spec", &plan.spec)?);
    h.set("CBSWEEP_TOKEN_FILE", "");
    Ok(Some(h.finish(COORDINATOR_TEMPLATE)))
}

/// The worker array's script. `coordinator_job`: the id of the coordinator job it follows, for
/// a plan with one (the workers then wait for STATE/coordinator-ID.url and start after it).
pub fn render_workers(plan: &Plan, coordinator_job: Option<JobId>) -> Result<String, SlurmError> {
    let w = &plan.workers;
    if w.count == 0 {
        return Err(SlurmError::NoWorkers);
    }
    let name = format!("cbsweep-{}-worker", plan.sweep);
    let mut h = Header::new(&name, "worker.sbatch");
    h.sbatch(&format!("--array=0-{}", w.count - 1));
    h.resources(&w.resources)?;
    h.sbatch("--requeue");
    h.sbatch(&format!("--signal=B:USR1@{}", w.warning_s));
    h.sbatch(&format!("--output={}/{name}-%A_%a.out", sbatch_path("log folder", &plan.log_dir)?));
    h.sbatch("--open-mode=append");
    let (addr, token_file) = match &plan.coordinator {
        Coordinator::Running { addr, token_file } => (addr.clone(), token_file.clone()),
        Coordinator::Job(job) => {
            if let Some(id) = coordinator_job {
                h.sbatch(&format!("--dependency=after:{id}"));
            }
            let file = match coordinator_job {
                Some(id) => format!("coordinator-{id}.url"),
                None => "coordinator.url".into(),
            };
            (CoordinatorAddr::File(job.state.join(file)), job.state.join("token"))
        }
    };
    match &addr {
        CoordinatorAddr::Url(url) => {
            h.set("CBSWEEP_COORDINATOR", url);
            h.set("CBSWEEP_COORDINATOR_FILE", "");
        }
        CoordinatorAddr::File(f) => {
            h.set("CBSWEEP_COORDINATOR", "");
            h.set("CBSWEEP_COORDINATOR_FILE", path_str("coordinator file", f)?);
        }
    }
    h.set("CBSWEEP_TOKEN_FILE", path_str("token file", &token_file)?);
    h.set("CBSWEEP_WORKER", path_str("worker binary", &w.worker_binary)?);
    h.set("CBSWEEP_DEVICE", &w.device);
    h.line(&format!("worker_args=({})", w.worker_args.iter().map(|a| sh_quote(a)).collect::<Vec<_>>().join(" ")));
    Ok(h.finish(WORKER_TEMPLATE))
}

/// Renders the plan's scripts into its log folder and submits them: the coordinator job first
/// (if any), then the worker array after it. Returns the job ids.
pub fn submit(plan: &Plan, sbatch: &Sbatch) -> Result<Submitted, SlurmError> {
    let log_dir = std::path::absolute(&plan.log_dir).map_err(|source| SlurmError::Write { path: plan.log_dir.clone(), source })?;
    let plan = Plan { log_dir, ..plan.clone() };
    std::fs::create_dir_all(&plan.log_dir).map_err(|source| SlurmError::Write { path: plan.log_dir.clone(), source })?;
    let mut scripts = Vec::new();
    let coordinator = match render_coordinator(&plan)? {
        Some(text) => {
            let path = write_script(&plan.log_dir, &format!("cbsweep-{}-coordinator.sbatch", plan.sweep), &text)?;
            let id = run_sbatch(sbatch, &path)?;
            scripts.push(path);
            Some(id)
        }
        None => None,
    };
    let text = render_workers(&plan, coordinator)?;
    let path = write_script(&plan.log_dir, &format!("cbsweep-{}-worker.sbatch", plan.sweep), &text)?;
    let workers = run_sbatch(sbatch, &path)?;
    scripts.push(path);
    Ok(Submitted { coordinator, workers, scripts })
}

/// The rendered header: `#SBATCH` lines, then fixed settings, then the template's body.
struct Header {
    sbatch: Vec<String>,
    settings: Vec<String>,
}

impl Header {
    fn new(job_name: &str, template: &str) -> Header {
        let mut h = Header { sbatch: Vec::new(), settings: Vec::new() };
        h.sbatch.push("#!/usr/bin/env bash".into());
        h.sbatch.push(format!("# Rendered by cbsweep from deploy/slurm/{template}; its settings are described there."));
        h.sbatch(&format!("--job-name={job_name}"));
        h
    }

    fn sbatch(&mut self, option: &str) {
        self.sbatch.push(format!("#SBATCH {option}"));
    }

    fn resources(&mut self, r: &Resources) -> Result<(), SlurmError> {
        if let Some(p) = &r.partition {
            self.sbatch(&format!("--partition={}", sbatch_value("partition", p)?));
        }
        if let Some(g) = &r.gres {
            self.sbatch(&format!("--gres={}", sbatch_value("gres", g)?));
        }
        self.sbatch(&format!("--cpus-per-task={}", r.cpus_per_task.max(1)));
        self.sbatch(&format!("--mem={}", sbatch_value("mem", &r.mem)?));
        self.sbatch(&format!("--time={}", sbatch_value("time", &r.time)?));
        for e in &r.extra {
            if !e.starts_with("--") {
                return Err(SlurmError::BadOption(e.clone()));
            }
            self.sbatch(sbatch_value("sbatch option", e)?);
        }
        Ok(())
    }

    fn set(&mut self, name: &str, value: &str) {
        self.settings.push(format!("{name}={}", sh_quote(value)));
    }

    fn line(&mut self, line: &str) {
        self.settings.push(line.into());
    }

    /// The header, the settings, then the template from its first line of code on (its own
    /// shebang, comments and #SBATCH lines are replaced by the header).
    fn finish(self, template: &str) -> String {
        let body: Vec<&str> = template.lines().skip_while(|l| l.trim().is_empty() || l.starts_with('#')).collect();
        let mut out = self.sbatch.join("\n");
        out.push('\n');
        out.push_str(&self.settings.join("\n"));
        out.push_str("\n\n");
        out.push_str(&body.join("\n"));
        out.push('\n');
        out
    }
}

/// `'value'` for bash, with embedded single quotes closed and escaped.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path_str<'a>(what: &'static str, p: &'a Path) -> Result<&'a str, SlurmError> {
    p.to_str().ok_or_else(|| SlurmError::NotUtf8 { what, path: p.to_owned() })
}

/// A value that goes on an #SBATCH line, where it cannot be quoted.
fn sbatch_value<'a>(what: &'static str, value: &'a str) -> Result<&'a str, SlurmError> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\')) {
        return Err(SlurmError::BadValue { what, value: value.into() });
    }
    Ok(value)
}

/// A path that goes on an #SBATCH line.
fn sbatch_path<'a>(what: &'static str, p: &'a Path) -> Result<&'a str, SlurmError> {
    sbatch_value(what, path_str(what, p)?)
}

fn write_script(dir: &Path, name: &str, text: &str) -> Result<PathBuf, SlurmError> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|source| SlurmError::Write { path: path.clone(), source })?;
    Ok(path)
}

fn run_sbatch(sbatch: &Sbatch, script: &Path) -> Result<JobId, SlurmError> {
    let mut cmd = Command::new(&sbatch.program);
    cmd.arg("--parsable").arg(script);
    if let Some(conf) = &sbatch.slurm_conf {
        cmd.env("SLURM_CONF", conf);
    }
    let out = cmd.output().map_err(|source| SlurmError::NoSbatch { program: sbatch.program.clone(), source })?;
    if !out.status.success() {
        return Err(SlurmError::Refused { script: script.to_owned(), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    parse_job_id(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| SlurmError::NoJobId { script: script.to_owned(), output: String::from_utf8_lossy(&out.stdout).trim().to_string() })
}

/// `sbatch --parsable` prints `ID` or `ID;CLUSTER`.
fn parse_job_id(out: &str) -> Option<JobId> {
    out.trim().split(';').next()?.trim().parse().ok().map(JobId)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(coordinator: Coordinator) -> Plan {
        Plan {
            sweep: SweepId("quickstart".into()),
            spec: "/shared/sweeps/quickstart.toml".into(),
            coordinator,
            workers: Workers {
                count: 4,
                resources: Resources { partition: Some("gpu".into()), ..Resources::gpu_worker() },
                device: "auto".into(),
                worker_binary: "/shared/bin/cbsweep-worker".into(),
                worker_args: vec!["--max-pack".into(), "16".into(), "it's".into()],
                warning_s: 120,
            },
            log_dir: "/shared/logs".into(),
        }
    }

    fn running() -> Coordinator {
        Coordinator::Running { addr: CoordinatorAddr::Url("http://login1:50051".into()), token_file: "/shared/state/token".into() }
    }

    fn job() -> Coordinator {
        Coordinator::Job(Box::new(CoordinatorJob {
            state: "/shared/state".into(),
            local_state: None,
            cbsweep_binary: "/shared/bin/cbsweep".into(),
            listen: "0.0.0.0:50051".parse().unwrap(),
            http_listen: Some("0.0.0.0:9090".parse().unwrap()),
            advertise_host: None,
            resources: Resources::coordinator(),
        }))
    }

    fn sbatch_lines(script: &str) -> Vec<&str> {
        // sbatch reads #SBATCH lines only before the first command
        script.lines().take_while(|l| l.starts_with('#')).filter(|l| l.starts_with("#SBATCH")).collect()
    }

    #[test]
    fn worker_script_asks_for_the_plans_resources_before_any_command() {
        let s = render_workers(&plan(running()), None).unwrap();
        assert_eq!(
            sbatch_lines(&s),
            [
                "#SBATCH --job-name=cbsweep-quickstart-worker",
                "#SBATCH --array=0-3",
                "#SBATCH --partition=gpu",
                "#SBATCH --gres=gpu:1",
                "#SBATCH --cpus-per-task=8",
                "#SBATCH --mem=32G",
                "#SBATCH --time=24:00:00",
                "#SBATCH --requeue",
                "#SBATCH --signal=B:USR1@120",
                "#SBATCH --output=/shared/logs/cbsweep-quickstart-worker-%A_%a.out",
                "#SBATCH --open-mode=append",
            ]
        );
        assert!(s.contains("\nCBSWEEP_COORDINATOR='http://login1:50051'\n"), "{s}");
        assert!(s.contains("\nCBSWEEP_TOKEN_FILE='/shared/state/token'\n"), "{s}");
        assert!(s.contains("\nworker_args=('--max-pack' '16' 'it'\\''s')\n"), "{s}");
        assert_eq!(s.matches("#SBATCH").count(), 11, "the template's own #SBATCH lines are replaced: {s}");
        assert!(s.contains("--exit-when-drained"), "the template's body follows: {s}");
    }

    #[test]
    fn rendered_scripts_are_valid_bash() {
        let r = render(&plan(job())).unwrap();
        for s in [r.workers, r.coordinator.unwrap()] {
            let out = Command::new("bash").args(["-n", "-c", &s]).output().unwrap();
            assert!(out.status.success(), "{}\n{s}", String::from_utf8_lossy(&out.stderr));
        }
    }

    #[test]
    fn workers_of_a_coordinator_job_start_after_it_and_read_its_url_file() {
        let s = render_workers(&plan(job()), Some(JobId(4242))).unwrap();
        assert!(sbatch_lines(&s).contains(&"#SBATCH --dependency=after:4242"), "{s}");
        assert!(s.contains("\nCBSWEEP_COORDINATOR_FILE='/shared/state/coordinator-4242.url'\n"), "{s}");
        assert!(s.contains("\nCBSWEEP_TOKEN_FILE='/shared/state/token'\n"), "{s}");
        let c = render_coordinator(&plan(job())).unwrap().unwrap();
        assert!(sbatch_lines(&c).contains(&"#SBATCH --time=7-00:00:00"), "{c}");
        assert!(!c.contains("--gres"), "the coordinator needs no GPU: {c}");
        assert!(c.contains("\nCBSWEEP_SPEC='/shared/sweeps/quickstart.toml'\n"), "{c}");
        assert!(c.contains("\nCBSWEEP_HTTP_LISTEN='0.0.0.0:9090'\n"), "{c}");
        assert_eq!(render_coordinator(&plan(running())).unwrap(), None);
    }

    #[test]
    fn a_coordinator_job_keeps_its_database_on_local_disk_and_its_files_for_workers_on_the_shared_one() {
        let c = render_coordinator(&plan(job())).unwrap().unwrap();
        assert!(c.contains("\nCBSWEEP_STATE='/shared/state'\n"), "{c}");
        assert!(!c.contains("\nCBSWEEP_LOCAL_STATE="), "unset: the environment's or the script's default: {c}");
        assert!(c.contains(r#"--state "$local_state""#) && !c.contains(r#"--state "$state""#), "{c}");
        assert!(c.contains(r#"--token-file "$token_file""#) && c.contains(r#"backup "$backup" --overwrite --state "$local_state""#), "{c}");
        let mut p = plan(job());
        let Coordinator::Job(j) = &mut p.coordinator else { unreachable!() };
        j.local_state = Some("/scratch/cbsweep".into());
        let c = render_coordinator(&p).unwrap().unwrap();
        assert!(c.contains("\nCBSWEEP_LOCAL_STATE='/scratch/cbsweep'\n"), "{c}");
    }

    #[test]
    fn values_that_would_break_an_sbatch_line_are_refused() {
        let mut p = plan(running());
        p.workers.resources.partition = Some("gpu\n#SBATCH --uid=0".into());
        assert!(matches!(render_workers(&p, None), Err(SlurmError::BadValue { what: "partition", .. })));
        let mut p = plan(running());
        p.workers.count = 0;
        assert!(matches!(render_workers(&p, None), Err(SlurmError::NoWorkers)));
        let mut p = plan(running());
        p.workers.resources.extra = vec!["account=lab".into()];
        assert!(matches!(render_workers(&p, None), Err(SlurmError::BadOption(_))));
        let mut p = plan(running());
        p.log_dir = "/shared/my logs".into();
        assert!(matches!(render_workers(&p, None), Err(SlurmError::BadValue { what: "log folder", .. })));
    }

    #[test]
    fn job_ids_are_read_from_parsable_output() {
        assert_eq!(parse_job_id("1234\n"), Some(JobId(1234)));
        assert_eq!(parse_job_id("77;cluster2\n"), Some(JobId(77)));
        assert_eq!(parse_job_id("Submitted batch job 5"), None);
    }
}
