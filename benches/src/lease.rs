//! `cbsweep-bench lease`: the coordinator's lease throughput and latency. Simulated gRPC
//! workers (64 by default, each on a connection of its own, in client processes of their own)
//! register with a real coordinator (scheduler thread, SQLite store, server on loopback), then
//! lease one trial and complete it, as fast as they can (saturated: trials/s) and then at a fixed
//! offered rate (paced: latency quantiles, counted from each lease's due time), with the server's
//! and the scheduler thread's CPU time per trial. The baseline, measured in the same run, is the
//! bare lease round trip: leases against an empty queue (transport, auth, one scheduler round
//! trip). `--two-calls` measures the older protocol (result and next lease in two calls).

use anyhow::Context;
use std::time::Duration;

/// Options of `cbsweep-bench lease`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct LeaseBench {
    /// Simulated workers.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Trials of each phase (saturated, paced).
    #[arg(long, default_value_t = 20_000)]
    trials: usize,
    /// Trials per second the simulated workers offer together in the paced phase (0: no paced phase).
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
    /// Simulated workers per gRPC connection (1: each its own, as real workers).
    #[arg(long, default_value_t = 1)]
    per_connection: usize,
    /// Processes the simulated workers are spread over, each on one thread.
    #[arg(long, default_value_t = 1)]
    client_procs: usize,
    /// Run the simulated workers in the server's process instead (they then share its cores).
    #[arg(long)]
    in_process: bool,
    /// Report each result and lease the next trial in two calls, as workers did before a
    /// result could carry the next lease.
    #[arg(long)]
    two_calls: bool,
}

impl Default for LeaseBench {
    fn default() -> Self {
        LeaseBench { workers: 64, trials: 20_000, rate: 5_000.0, per_connection: 1, client_procs: 1, in_process: false, two_calls: false }
    }
}

/// What the simulated workers of one phase of `lease` do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Load {
    /// `EMPTY_LEASES` leases each against an empty queue: transport, auth, one scheduler round trip.
    Empty,
    /// Lease one trial, complete it, at once again, until the coordinator is drained.
    Saturated,
    /// As saturated, but each worker at a fixed pace: together they offer `rate` trials/s.
    Paced,
}

const EMPTY_LEASES: usize = 200;
/// No phase of the lease bench runs longer than this.
const PHASE_LIMIT: Duration = Duration::from_secs(120);

/// What one or more client processes of the lease bench measured (latencies in µs).
#[derive(Debug, Default)]
struct ClientReport {
    trials: usize,
    lease_us: Vec<u64>,
    complete_us: Vec<u64>,
    /// Paced: from a lease's due time to its answer, so a lease held up behind a slow one counts
    /// the wait too (no coordinated omission).
    due_us: Vec<u64>,
    /// From the first lease to the last answer (the longest of the processes).
    secs: f64,
    cpu_secs: f64,
}

impl ClientReport {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "trials": self.trials, "lease_us": self.lease_us, "complete_us": self.complete_us, "due_us": self.due_us, "secs": self.secs, "cpu_secs": self.cpu_secs })
    }

    fn from_json(v: &serde_json::Value) -> ClientReport {
        let list = |k: &str| v[k].as_array().map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect()).unwrap_or_default();
        ClientReport {
            trials: v["trials"].as_u64().unwrap_or(0) as usize,
            lease_us: list("lease_us"),
            complete_us: list("complete_us"),
            due_us: list("due_us"),
            secs: v["secs"].as_f64().unwrap_or(0.0),
            cpu_secs: v["cpu_secs"].as_f64().unwrap_or(0.0),
        }
    }

    fn merge(&mut self, r: ClientReport) {
        self.trials += r.trials;
        self.lease_us.extend(r.lease_us);
        self.complete_us.extend(r.complete_us);
        self.due_us.extend(r.due_us);
        self.secs = self.secs.max(r.secs);
        self.cpu_secs += r.cpu_secs;
    }
}

/// The `q` quantile of latencies in µs, in ms.
fn quantile_ms(l: &mut [u64], q: f64) -> f64 {
    l.sort_unstable();
    l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1))).map(|&us| us as f64 / 1e3).unwrap_or(f64::NAN)
}

/// CPU seconds (user + system) of this process, or of its live threads whose name passes `keep`.
fn cpu_secs(threads: Option<&dyn Fn(&str) -> bool>) -> anyhow::Result<f64> {
    // utime and stime are the 14th and 15th fields of a stat line, in USER_HZ (100) ticks; the
    // name (2nd) is in parentheses and may hold spaces
    fn ticks(stat: &str) -> u64 {
        let f: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
        [11, 12].iter().filter_map(|&i| f.get(i)?.parse::<u64>().ok()).sum()
    }
    let Some(keep) = threads else { return Ok(ticks(&std::fs::read_to_string("/proc/self/stat")?) as f64 / 100.0) };
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task")? {
        let dir = t?.path();
        let (Ok(name), Ok(stat)) = (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("stat"))) else { continue };
        if keep(name.trim()) {
            total += ticks(&stat);
        }
    }
    Ok(total as f64 / 100.0)
}

/// The simulated workers `first..first + workers` (`lease-clients`): register, then lease one
/// trial and complete it until the phase ends; `per_connection` workers share a gRPC connection.
async fn lease_clients(
    url: &str,
    first: usize,
    workers: usize,
    per_connection: usize,
    load: Load,
    rate: f64,
    two_calls: bool,
) -> anyhow::Result<ClientReport> {
    use cbsweep_proto::{PROTOCOL_VERSION, v1};
    use tokio::time::Instant;
    let cpu0 = cpu_secs(None)?;
    let mut clients = Vec::new();
    for _ in 0..workers.div_ceil(per_connection.max(1)) {
        clients.push(cbsweep_proto::client::worker_client(url, "t").await?);
    }
    let mut registered = Vec::new();
    for i in 0..workers {
        let mut c = clients[i / per_connection.max(1)].clone();
        let hello = v1::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            hostname: format!("sim{}", first + i),
            device: "sim".into(),
            max_pack: 1,
            pid: (first + i) as u32,
        };
        let id = c.register(hello).await?.into_inner().worker_id;
        registered.push((c, id));
    }
    // each worker's pace in the paced phase, their starts spread over one period
    let period = if load == Load::Paced { Duration::from_secs_f64(workers as f64 / rate) } else { Duration::ZERO };
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (mut c, worker_id)) in registered.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut r = ClientReport::default();
            let us = |d: Duration| d.as_micros() as u64;
            let mut due = start + period.mul_f64(i as f64 / workers as f64);
            let request = v1::LeaseRequest { worker_id: worker_id.clone(), max_trials: 1, memory_budget_bytes: 0 };
            let e = v1::EpochRecord { epoch: 1, level: 2, train_loss: 0.5, test_accuracy: 0.5, ..Default::default() };
            let result = v1::TrialResult {
                outcome: v1::OutcomeKind::Completed as i32,
                curve: vec![e],
                device: "sim".into(),
                pack_size: 1,
                ..Default::default()
            };
            // the trial in hand: reported at the next due time, which (one call) leases the next
            let mut held: Option<v1::LeasedTrial> = None;
            loop {
                // (a timer that is already due still waits for the timer's next 1 ms tick)
                if load == Load::Paced && due > Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
                let t0 = Instant::now();
                let (lease, lease_us) = match held.take() {
                    None => (c.lease(request.clone()).await?.into_inner(), us(t0.elapsed())),
                    Some(t) => {
                        let next = (!two_calls).then(|| request.clone());
                        let done = v1::CompleteRequest {
                            worker_id: worker_id.clone(),
                            trial_id: t.trial_id,
                            attempt: t.attempt,
                            result: Some(result.clone()),
                            next,
                        };
                        let answer = c.complete(done).await?.into_inner();
                        let done_us = us(t0.elapsed());
                        r.complete_us.push(done_us);
                        r.trials += 1;
                        match answer.next {
                            // the lease came with the result
                            Some(lease) => (lease, done_us),
                            // two calls: the lease is a call of its own
                            None => {
                                let t1 = Instant::now();
                                (c.lease(request.clone()).await?.into_inner(), us(t1.elapsed()))
                            }
                        }
                    }
                };
                r.lease_us.push(lease_us);
                if load == Load::Paced {
                    r.due_us.push(us(due.elapsed()));
                    due += period;
                }
                match lease.trials.into_iter().next() {
                    Some(t) => held = Some(t),
                    None => match load {
                        Load::Empty if r.lease_us.len() >= EMPTY_LEASES => break,
                        Load::Empty => {}
                        _ if lease.drained => break,
                        // nothing pending until the last leases come back
                        _ => tokio::time::sleep(Duration::from_millis(1)).await,
                    },
                }
            }
            anyhow::Ok(r)
        });
    }
    let mut all = ClientReport::default();
    while let Some(r) = tasks.join_next().await {
        all.merge(r??);
    }
    all.secs = start.elapsed().as_secs_f64();
    all.cpu_secs = cpu_secs(None)? - cpu0;
    Ok(all)
}

/// The `lease-clients` process: its simulated workers on one thread, what they measured printed
/// as JSON (`lease_phase` merges the processes' reports).
pub(crate) fn clients_process(
    url: &str,
    load: Load,
    first: usize,
    workers: usize,
    per_connection: usize,
    rate: f64,
    two_calls: bool,
) -> anyhow::Result<()> {
    // one thread: the clients take one core, the server the others
    let clients = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = clients.block_on(lease_clients(url, first, workers, per_connection, load, rate, two_calls))?;
    println!("{}", report.to_json());
    Ok(())
}

/// One phase of the lease bench: the simulated workers in `client_procs` processes of this
/// binary (`lease-clients`), or in this process; with the server's CPU time over the phase.
async fn lease_phase(url: &str, o: &LeaseBench, load: Load, rate: f64) -> anyhow::Result<(ClientReport, f64, f64)> {
    let is_scheduler = |name: &str| name.starts_with("cbsweep-sched");
    let (cpu0, sched0) = (cpu_secs(None)?, cpu_secs(Some(&is_scheduler))?);
    let mut report = ClientReport::default();
    if o.in_process {
        report = tokio::time::timeout(PHASE_LIMIT, lease_clients(url, 0, o.workers, o.per_connection, load, rate, o.two_calls)).await??;
    } else {
        let procs = o.client_procs.clamp(1, o.workers);
        let mut children = Vec::new();
        for p in 0..procs {
            let (first, end) = (o.workers * p / procs, o.workers * (p + 1) / procs);
            let share = rate * (end - first) as f64 / o.workers as f64;
            let child = tokio::process::Command::new(std::env::current_exe()?)
                .args(["lease-clients", url, "--load"])
                .arg(format!("{load:?}").to_lowercase())
                .args(["--first", &first.to_string(), "--workers", &(end - first).to_string()])
                .args(["--per-connection", &o.per_connection.to_string(), "--rate", &share.to_string()])
                .args(o.two_calls.then_some("--two-calls"))
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            children.push(child);
        }
        for child in children {
            let out =
                tokio::time::timeout(PHASE_LIMIT, child.wait_with_output()).await.context("a lease-clients process ran too long")??;
            anyhow::ensure!(out.status.success(), "a lease-clients process failed ({})", out.status);
            report.merge(ClientReport::from_json(&serde_json::from_slice(&out.stdout)?));
        }
    }
    Ok((report, cpu_secs(None)? - cpu0, cpu_secs(Some(&is_scheduler))? - sched0))
}

pub(crate) async fn bench_lease(o: LeaseBench) -> anyhow::Result<()> {
    use cbsweep_coordinator::scheduler::{SchedulerHandle, SchedulerOptions};
    let dir = tempfile::tempdir()?;
    let sched = SchedulerHandle::start(dir.path(), SchedulerOptions::default())?;
    let running =
        cbsweep_coordinator::server::serve("127.0.0.1:0".parse()?, sched.clone(), cbsweep_coordinator::server::Token("t".into())).await?;
    let url = format!("http://{}", running.addr);
    let seeds = (o.trials / 4).max(1);
    let sweep = |name: &str| {
        let text = format!(
            "[sweep]\nname = \"{name}\"\n[grid]\ntask = [\"dms\", \"parity\"]\narch = [\"cbrnn\", \"rnn\"]\nseed = [{}]\n[train]\nepochs = 1\n[run]\npack_size = 1\n",
            (0..seeds).map(|s| s.to_string()).collect::<Vec<_>>().join(",")
        );
        cbsweep_common::parse_spec(&text, std::path::Path::new("bench.toml"))
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let clients = if o.in_process {
        "in the server's process".to_string()
    } else {
        format!("in {} client process(es)", o.client_procs.clamp(1, o.workers))
    };
    println!(
        "lease: {} simulated workers ({} per gRPC connection) {clients}, loopback, {} trials per phase, {cores} cores",
        o.workers,
        o.per_connection,
        seeds * 4
    );
    let cpu_line = |r: &ClientReport, server: f64, scheduler: f64, n: usize| {
        let per = |s: f64| s * 1e6 / n.max(1) as f64;
        let share = if o.in_process {
            "; clients and server share the process".to_string()
        } else {
            format!(", clients {:.0} µs", per(r.cpu_secs))
        };
        format!("CPU per trial: server {:.0} µs (scheduler thread {:.0} µs){share}", per(server), per(scheduler))
    };

    // Baseline: lease calls against an empty queue.
    let (mut base, _, _) = lease_phase(&url, &o, Load::Empty, 0.0).await?;
    let base_rate = base.lease_us.len() as f64 / base.secs;

    sched.submit(sweep("bench-saturated")?, "bench.toml".into()).await?;
    let (mut sat, server, scheduler) = lease_phase(&url, &o, Load::Saturated, 0.0).await?;
    anyhow::ensure!(sat.trials == seeds * 4, "{} trials completed, expected {}", sat.trials, seeds * 4);
    let rate = sat.trials as f64 / sat.secs;
    println!(
        "  saturated: {rate:>7.0} trials/s leased and completed   lease p50 {:.2} ms p99 {:.2} ms   complete p99 {:.2} ms",
        quantile_ms(&mut sat.lease_us, 0.5),
        quantile_ms(&mut sat.lease_us, 0.99),
        quantile_ms(&mut sat.complete_us, 0.99)
    );
    println!("             {}", cpu_line(&sat, server, scheduler, sat.trials));
    println!(
        "             ({} calls always in flight: mean latency = {} / call rate, so p99 is measured paced, below)",
        o.workers, o.workers
    );

    if o.rate > 0.0 {
        sched.submit(sweep("bench-paced")?, "bench.toml".into()).await?;
        let (mut paced, server, scheduler) = lease_phase(&url, &o, Load::Paced, o.rate).await?;
        anyhow::ensure!(paced.trials == seeds * 4, "{} trials completed, expected {}", paced.trials, seeds * 4);
        let l = &mut paced.lease_us;
        println!(
            "  paced at {:.0} trials/s: {:>7.0} trials/s   lease p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms   complete p99 {:.2} ms",
            o.rate,
            paced.trials as f64 / paced.secs,
            quantile_ms(l, 0.5),
            quantile_ms(l, 0.9),
            quantile_ms(l, 0.99),
            quantile_ms(l, 1.0),
            quantile_ms(&mut paced.complete_us, 0.99)
        );
        // from due time: a lease sent late because the one before it was slow counts its wait
        // too (and up to 1 ms of the client's timer)
        println!(
            "             lease p99 from due time {:.2} ms; {}",
            quantile_ms(&mut paced.due_us, 0.99),
            cpu_line(&paced, server, scheduler, paced.trials)
        );
    }
    println!("  baseline (empty-queue lease, saturated): {base_rate:>7.0} leases/s   p99 {:.2} ms", quantile_ms(&mut base.lease_us, 0.99));
    println!("  ratio: {:.2}x of the bare lease round trip", rate / base_rate);
    Ok(())
}
