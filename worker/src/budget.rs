//! The memory budget a worker sends with every lease request, and its default per device. The
//! coordinator sizes packs from it with `cbsweep_common::memory`.

use std::num::NonZeroU64;

/// The default budget on a CUDA device: libtorch (through tch) does not expose
/// cudaMemGetInfo, so the free device memory is unknown here. 40 GiB suits the 40 GB and larger
/// cards; pass `--memory-budget` on smaller ones.
pub const CUDA_DEFAULT_BYTES: u64 = 40 << 30;

/// The budget a worker on `device` uses unless told otherwise: half of MemTotal on the CPU,
/// `CUDA_DEFAULT_BYTES` on a CUDA device; none for other trainers (the fake one) or when
/// /proc/meminfo cannot be read.
pub fn default_budget(device: &str) -> Option<NonZeroU64> {
    if device == "cpu" {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let total = kib_field_bytes(&meminfo, "MemTotal")?;
        NonZeroU64::new(total / 2)
    } else if device.starts_with("cuda") {
        NonZeroU64::new(CUDA_DEFAULT_BYTES)
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(default_budget("fake"), None);
        if let Some(total) = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| kib_field_bytes(&t, "MemTotal")) {
            assert_eq!(default_budget("cpu").map(NonZeroU64::get), Some(total / 2));
        }
    }
}
