//! The worker's default memory budget honours the memory limit of the cgroup it runs in: the
//! real binary, started inside a cgroup limited to 3 GiB, logs a budget of 1.5 GiB in its
//! `pack limits` line. Needs root and a writable memory cgroup: v2 (memory among
//! /sys/fs/cgroup/cgroup.controllers) or, on a v1 or hybrid host, v1's memory hierarchy at
//! /sys/fs/cgroup/memory; otherwise it says why it skips (and fails in CI). The worker runs in
//! a leaf below the limited cgroup, so the limit is found by the walk up the ancestors, and
//! v2's rule of no processes in a cgroup with controllers enabled for its children never bites.
//! The cgroups are removed when the test ends, passed or failed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";
const LIMIT: u64 = 3 << 30;

/// A cgroup limited to `LIMIT` with an empty leaf below it for the worker; removed (and the
/// memory controller disabled again where this test enabled it) when dropped.
struct TestCgroup {
    limited: PathBuf,
    leaf: PathBuf,
    enabled_memory_in: Option<PathBuf>,
}

impl TestCgroup {
    /// The cgroup, or None (after saying why) where this machine cannot make one.
    fn create(test: &str) -> Option<TestCgroup> {
        let skip = |why: String| {
            cbsweep_tests::skipped(test, &why);
            None
        };
        if !cbsweep_tests::is_root() {
            return skip("not root (making a cgroup and moving a process into it needs root)".into());
        }
        let root = Path::new(ROOT);
        let name = format!("cbsweep-test-{}", std::process::id());
        let v2 = std::fs::read_to_string(root.join("cgroup.controllers")).is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (limited, limit_file, enabled_memory_in) = if v2 {
            let subtree = root.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&subtree).is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
            if !enabled && let Err(e) = std::fs::write(&subtree, "+memory") {
                return skip(format!("cannot enable the memory controller in {} ({e})", subtree.display()));
            }
            (root.join(&name), "memory.max", (!enabled).then_some(subtree))
        } else if root.join("memory/memory.limit_in_bytes").exists() {
            (root.join("memory").join(&name), "memory.limit_in_bytes", None)
        } else {
            return skip(format!("no memory cgroup: neither v2 with the memory controller at {ROOT} nor v1's at {ROOT}/memory"));
        };
        let leaf = limited.join("worker");
        if let Err(e) = std::fs::create_dir(&limited) {
            if let Some(subtree) = &enabled_memory_in {
                let _ = std::fs::write(subtree, "-memory");
            }
            return skip(format!("cannot make the cgroup {} ({e})", limited.display()));
        }
        let cgroup = TestCgroup { limited, leaf, enabled_memory_in };
        std::fs::write(cgroup.limited.join(limit_file), LIMIT.to_string()).expect("the cgroup's memory limit");
        std::fs::create_dir(&cgroup.leaf).expect("the worker's leaf cgroup");
        Some(cgroup)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A process that has just been reaped may still count in its cgroup for a moment.
        for dir in [&self.leaf, &self.limited] {
            let give_up = Instant::now() + Duration::from_secs(5);
            while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(subtree) = &self.enabled_memory_in {
            let _ = std::fs::write(subtree, "-memory");
        }
    }
}

fn mem_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse::<u64>().ok()?;
    Some(kib * 1024)
}

/// `memory_budget_bytes` of the `pack limits` line in a worker's log.
fn logged_budget(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("pack limits"))?;
    let value = line.split("memory_budget_bytes=").nth(1)?;
    value.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[test]
fn a_worker_in_a_memory_limited_cgroup_budgets_half_of_the_limit() {
    let test = "a_worker_in_a_memory_limited_cgroup_budgets_half_of_the_limit";
    if mem_total().is_none_or(|total| total <= LIMIT) {
        return cbsweep_tests::skipped(test, "MemTotal is not above the 3 GiB limit, so the limit would not be what binds");
    }
    let Some(cgroup) = TestCgroup::create(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    // The shell moves itself into the leaf and then becomes the worker: it starts there.
    let procs = cgroup.leaf.join("cgroup.procs");
    let script = format!("echo $$ > '{}' && cat /proc/$$/cgroup >&2 && exec \"$0\" \"$@\"", procs.display());
    let mut child = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_cbsweep-worker")])
        .args(["--trainer", "torch", "--device", "cpu", "--coordinator", "http://127.0.0.1:1", "--give-up-after-s", "1"])
        .env("CBSWEEP_TOKEN", "x")
        .env("CBSWEEP_LOG", "info")
        .env_remove("CBSWEEP_MEMORY_BUDGET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("sh");
    // It logs its pack limits, then gives up on the unreachable coordinator within seconds.
    let give_up = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let leaf = format!("/cbsweep-test-{}/worker", std::process::id());
    assert!(text.lines().any(|l| l.ends_with(&leaf)), "the worker did not start in the test's cgroup:\n{text}");
    assert_eq!(logged_budget(&text), Some(LIMIT / 2), "the worker's log:\n{text}");
}

#[test]
fn the_budget_is_read_from_the_pack_limits_line() {
    let log = "2026-12-01T22:00:00Z  INFO cbsweep_worker: pack limits max_pack=2 memory_budget_bytes=1610612736\n";
    assert_eq!(logged_budget(log), Some(1_610_612_736));
    assert_eq!(logged_budget("INFO cbsweep_worker: registered\n"), None);
}
