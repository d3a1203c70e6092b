//! The memory budget a worker sends with every lease request, and its default per device. The
//! coordinator sizes packs from it with `cbsweep_common::memory`. On the CPU the default is half
//! of the memory this process may really use: MemTotal, or the memory limit of its cgroup where
//! that is lower (Slurm's `--mem`, a Kubernetes memory limit), because a pack sized to the
//! node's memory inside a smaller cgroup is not a failed trial but an OOM-killed worker.
//!
//! The cgroup is read from /proc/self/cgroup and the files under /sys/fs/cgroup, for cgroup v2
//! (`memory.max`, `memory.high`) and v1 (`memory.limit_in_bytes` of the memory hierarchy),
//! walking up to the hierarchy's root since any ancestor's limit binds too. The functions here
//! log nothing: they say where the budget came from, and the binary logs it.

use std::fmt;
use std::num::NonZeroU64;
use std::path::{Component, Path, PathBuf};

/// The default budget on a CUDA device: libtorch (through tch) does not expose
/// cudaMemGetInfo, so the free device memory is unknown here, and a cgroup does not limit
/// device memory. 40 GiB suits the 40 GB and larger cards; pass `--memory-budget` on smaller ones.
pub const CUDA_DEFAULT_BYTES: u64 = 40 << 30;

/// A default budget and what set it, so that the caller can log where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub bytes: NonZeroU64,
    pub source: BudgetSource,
}

/// What a default budget is derived from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetSource {
    /// Half of MemTotal in /proc/meminfo: no cgroup limits this process to less.
    MemTotal,
    /// Half of the limit in this cgroup file (the smallest one found).
    Cgroup(PathBuf),
    /// `CUDA_DEFAULT_BYTES`.
    CudaDefault,
}

/// The budget a worker on `device` uses unless told otherwise (see `default_budget_explained`).
pub fn default_budget(device: &str) -> Option<NonZeroU64> {
    default_budget_explained(device).map(|b| b.bytes)
}

/// The budget a worker on `device` uses unless told otherwise, and its source: on the CPU half
/// of the smaller of MemTotal and this process's cgroup memory limit, `CUDA_DEFAULT_BYTES` on a
/// CUDA device; none for other trainers (the fake one) or when neither /proc/meminfo nor a
/// cgroup limit can be read.
pub fn default_budget_explained(device: &str) -> Option<Budget> {
    if device == "cpu" {
        let mem_total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| kib_field_bytes(&m, "MemTotal"));
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|c| cgroup_limit(&c, Path::new(CGROUP_ROOT)));
        cpu_budget(mem_total, cgroup)
    } else if device.starts_with("cuda") {
        Some(Budget { bytes: NonZeroU64::new(CUDA_DEFAULT_BYTES)?, source: BudgetSource::CudaDefault })
    } else {
        None
    }
}

/// A `Field: N kB` line of a /proc file (/proc/meminfo, /proc/self/status), in bytes.
pub fn kib_field_bytes(text: &str, field: &str) -> Option<u64> {
    let value = text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let kib: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

impl fmt::Display for BudgetSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetSource::MemTotal => f.write_str("MemTotal"),
            BudgetSource::Cgroup(file) => write!(f, "cgroup {}", file.display()),
            BudgetSource::CudaDefault => f.write_str("CUDA default"),
        }
    }
}

/// Where cgroup hierarchies are mounted: v2 here (unified) or at `unified/` below it (hybrid),
/// v1 controllers at a folder named by their controller list (`memory`).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// At or above this a limit is none: v1 writes "no limit" as 2^63 rounded down to a page.
const NO_LIMIT_FROM: u64 = 1 << 60;

/// The tightest memory limit of a cgroup and its ancestors, and the file that set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CgroupLimit {
    pub(crate) bytes: u64,
    pub(crate) file: PathBuf,
}

/// Half of the smaller of `mem_total` and the cgroup limit; none when both are unknown or half
/// is zero.
pub(crate) fn cpu_budget(mem_total: Option<u64>, cgroup: Option<CgroupLimit>) -> Option<Budget> {
    let (bytes, source) = match (mem_total, cgroup) {
        (Some(total), Some(limit)) if limit.bytes < total => (limit.bytes, BudgetSource::Cgroup(limit.file)),
        (Some(total), _) => (total, BudgetSource::MemTotal),
        (None, Some(limit)) => (limit.bytes, BudgetSource::Cgroup(limit.file)),
        (None, None) => return None,
    };
    Some(Budget { bytes: NonZeroU64::new(bytes / 2)?, source })
}

/// The smallest finite memory limit that binds the process whose /proc/self/cgroup is
/// `proc_self_cgroup`, with cgroup hierarchies mounted under `root` (/sys/fs/cgroup). Reads
/// `memory.max` and `memory.high` (v2, line `0::/path`) or `memory.limit_in_bytes` (v1, a line
/// whose controllers include `memory`) of the process's cgroup and each ancestor; missing or
/// unreadable files and "max" are no limit.
pub(crate) fn cgroup_limit(proc_self_cgroup: &str, root: &Path) -> Option<CgroupLimit> {
    let mut tightest: Option<CgroupLimit> = None;
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else { continue };
        let (mount, files): (PathBuf, &[&str]) = if controllers.is_empty() {
            // A hybrid system mounts v2 below the v1 controllers; there memory is usually v1's,
            // and v2's folders simply have no memory files.
            let mount = if root.join("cgroup.controllers").exists() { root.to_path_buf() } else { root.join("unified") };
            (mount, &["memory.max", "memory.high"])
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join(controllers), &["memory.limit_in_bytes"])
        } else {
            continue;
        };
        for dir in self_and_ancestors(&mount, path) {
            for name in files {
                let file = dir.join(name);
                if let Some(bytes) = read_limit(&file)
                    && tightest.as_ref().is_none_or(|t| bytes < t.bytes)
                {
                    tightest = Some(CgroupLimit { bytes, file });
                }
            }
        }
    }
    tightest
}

/// The folders of cgroup `path` and of its ancestors under `mount`, the cgroup's own first.
/// A path that is not plainly below the mount (`/../x`: the cgroup lies outside this cgroup
/// namespace) yields the mount alone, which then shows the namespace's own cgroup; so does a
/// path the mount does not show (a container's mount rooted at its own cgroup), since its
/// deeper folders do not exist.
fn self_and_ancestors(mount: &Path, path: &str) -> Vec<PathBuf> {
    let path = Path::new(path);
    let plain = path.is_absolute() && path.components().skip(1).all(|c| matches!(c, Component::Normal(_)));
    let mut dirs = vec![mount.to_path_buf()];
    if plain {
        for c in path.components().skip(1) {
            let deeper = dirs.last().unwrap().join(c);
            dirs.push(deeper);
        }
    }
    dirs.reverse();
    dirs
}

/// A limit file's value in bytes; none for "max", a value meaning no limit, or no file.
fn read_limit(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < NO_LIMIT_FROM).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// Writes `files` (path under `root`, contents) into a fake cgroup tree.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let file = dir.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        dir
    }

    #[test]
    fn kib_fields_are_read_from_proc_files_in_bytes() {
        let text = "MemTotal:       24683652 kB\nMemFree:         1000000 kB\n";
        assert_eq!(kib_field_bytes(text, "MemTotal"), Some(24_683_652 * 1024));
        assert_eq!(kib_field_bytes(text, "MemFree"), Some(1_000_000 * 1024));
        assert_eq!(kib_field_bytes(text, "Mem"), None);
        assert_eq!(kib_field_bytes(text, "MemAvailable"), None);
    }

    #[test]
    fn defaults_follow_the_device() {
        assert_eq!(default_budget("cuda:1").map(NonZeroU64::get), Some(40 << 30));
        assert_eq!(default_budget_explained("cuda").map(|b| b.source), Some(BudgetSource::CudaDefault));
        assert_eq!(default_budget("fake"), None);
        // The CPU's depends on this machine's cgroup: at most half of MemTotal either way.
        if let Some(total) = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| kib_field_bytes(&t, "MemTotal")) {
            let budget = default_budget_explained("cpu").unwrap();
            assert!(budget.bytes.get() <= total / 2, "{budget:?}");
            if budget.source == BudgetSource::MemTotal {
                assert_eq!(budget.bytes.get(), total / 2);
            }
        }
    }

    #[test]
    fn a_v2_limit_is_the_smallest_of_the_cgroup_and_its_ancestors() {
        let root = tree(&[
            ("cgroup.controllers", "cpu memory pids\n"),
            ("job/memory.max", "8589934592\n"),
            ("job/memory.high", "max\n"),
            ("job/step/memory.max", "max\n"),
            ("job/step/task/memory.max", "17179869184\n"),
        ]);
        let limit = cgroup_limit("0::/job/step/task\n", root.path()).unwrap();
        assert_eq!(limit, CgroupLimit { bytes: 8 * GIB, file: root.path().join("job/memory.max") });
    }

    #[test]
    fn a_v2_memory_high_below_memory_max_is_the_limit() {
        let root = tree(&[("cgroup.controllers", "memory\n"), ("pod/memory.max", "4294967296\n"), ("pod/memory.high", "3221225472\n")]);
        let limit = cgroup_limit("0::/pod\n", root.path()).unwrap();
        assert_eq!(limit, CgroupLimit { bytes: 3 * GIB, file: root.path().join("pod/memory.high") });
    }

    #[test]
    fn a_cgroup_without_finite_limits_has_none() {
        let root = tree(&[("cgroup.controllers", "memory\n"), ("a/memory.max", "max\n"), ("a/b/memory.max", "max\n")]);
        assert_eq!(cgroup_limit("0::/a/b\n", root.path()), None);
        assert_eq!(cgroup_limit("0::/\n", root.path()), None);
        assert_eq!(cgroup_limit("", root.path()), None);
    }

    #[test]
    fn a_v1_limit_is_read_from_the_memory_hierarchy_and_huge_values_are_no_limit() {
        let root = tree(&[
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory/slurm/memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory/slurm/job_7/memory.limit_in_bytes", "2147483648\n"),
            ("cpu/slurm/job_7/memory.limit_in_bytes", "1024\n"),
        ]);
        let text = "5:cpu,cpuacct:/slurm/job_7\n4:memory:/slurm/job_7\n1:name=systemd:/\n";
        let limit = cgroup_limit(text, root.path()).unwrap();
        assert_eq!(limit, CgroupLimit { bytes: 2 * GIB, file: root.path().join("memory/slurm/job_7/memory.limit_in_bytes") });
        assert_eq!(cgroup_limit("4:memory:/slurm\n", root.path()), None);
    }

    #[test]
    fn a_hybrid_system_reads_v1_memory_and_v2_below_unified() {
        // as on this project's machines: v1 controllers, v2 at unified/ without memory
        let root = tree(&[
            ("unified/cgroup.controllers", "hugetlb\n"),
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory/api/x/memory.limit_in_bytes", "6442450944\n"),
        ]);
        let limit = cgroup_limit("4:memory:/api/x\n0::/\n", root.path()).unwrap();
        assert_eq!(limit.bytes, 6 * GIB);
        // a v2 memory limit there (memory bound to v2) counts too, and the smaller one wins
        std::fs::create_dir_all(root.path().join("unified/u")).unwrap();
        std::fs::write(root.path().join("unified/u/memory.max"), "1073741824\n").unwrap();
        let limit = cgroup_limit("4:memory:/api/x\n0::/u\n", root.path()).unwrap();
        assert_eq!(limit, CgroupLimit { bytes: GIB, file: root.path().join("unified/u/memory.max") });
    }

    #[test]
    fn a_cgroup_the_mount_does_not_show_reads_the_mount_itself() {
        // a container's mount rooted at its own cgroup, or a path outside its cgroup namespace
        let root = tree(&[("cgroup.controllers", "memory\n"), ("memory.max", "2147483648\n")]);
        assert_eq!(cgroup_limit("0::/docker/abc\n", root.path()).map(|l| l.bytes), Some(2 * GIB));
        assert_eq!(cgroup_limit("0::/../../elsewhere\n", root.path()).map(|l| l.bytes), Some(2 * GIB));
    }

    #[test]
    fn the_cpu_budget_is_half_of_the_smaller_of_memtotal_and_the_cgroup_limit() {
        let limit = |bytes| Some(CgroupLimit { bytes, file: PathBuf::from("/sys/fs/cgroup/job/memory.max") });
        let budget = cpu_budget(Some(16 * GIB), limit(3 * GIB)).unwrap();
        assert_eq!(budget.bytes.get(), 3 * GIB / 2);
        assert_eq!(budget.source.to_string(), "cgroup /sys/fs/cgroup/job/memory.max");
        let budget = cpu_budget(Some(16 * GIB), limit(32 * GIB)).unwrap();
        assert_eq!((budget.bytes.get(), budget.source.to_string()), (8 * GIB, "MemTotal".to_string()));
        assert_eq!(cpu_budget(Some(16 * GIB), None).map(|b| b.source), Some(BudgetSource::MemTotal));
        assert_eq!(cpu_budget(None, limit(2 * GIB)).map(|b| b.bytes.get()), Some(GIB));
        assert_eq!(cpu_budget(None, None), None);
        assert_eq!(cpu_budget(Some(1), None), None);
    }
}
