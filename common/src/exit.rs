//! The exit codes of every cbsweep binary, in one table (README.md, "Exit codes"): each code
//! means one thing whichever binary exits with it. Deploy scripts act on some of them
//! (deploy/slurm/worker.sbatch requeues on `DEADLINE`).

/// Everything it was asked to do is done.
pub const SUCCESS: u8 = 0;
/// A failure not covered below; the message says what.
pub const FAILURE: u8 = 1;
/// Bad input: an invalid spec or flag, a resubmission that changes existing cells.
pub const BAD_INPUT: u8 = 2;
/// `run` or `resume` finished, and at least one trial ended failed (out of attempts): its error
/// is in trials.parquet; `cbsweep retry-failed` or a new `run` queues it again.
pub const TRIALS_FAILED: u8 = 3;
/// A worker's parent process (`cbsweep run`, whose embedded coordinator it served) is gone.
pub const PARENT_GONE: u8 = 4;
/// The coordinator could not be reached (sysexits' EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// A worker's deadline came (`--deadline`, or the Slurm job's end): its trials went back with
/// their checkpoints and the sweep may have work left (sysexits' EX_TEMPFAIL).
pub const DEADLINE: u8 = 75;
/// Stopped by a signal (Ctrl-C): `run` saved its state (resume it); a worker's second signal
/// handed its leases back at once, without checkpoints.
pub const INTERRUPTED: u8 = 130;

/// Every code with its name, for the README's table and its test.
pub const ALL: [(u8, &str); 8] = [
    (SUCCESS, "SUCCESS"),
    (FAILURE, "FAILURE"),
    (BAD_INPUT, "BAD_INPUT"),
    (TRIALS_FAILED, "TRIALS_FAILED"),
    (PARENT_GONE, "PARENT_GONE"),
    (UNAVAILABLE, "UNAVAILABLE"),
    (DEADLINE, "DEADLINE"),
    (INTERRUPTED, "INTERRUPTED"),
];

#[cfg(test)]
mod tests {
    #[test]
    fn each_code_means_one_thing() {
        let mut codes: Vec<u8> = super::ALL.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), super::ALL.len(), "a code named twice in {:?}", super::ALL);
    }

    #[test]
    fn the_readme_tables_every_code() {
        let readme = include_str!("../../README.md");
        for (code, name) in super::ALL {
            assert!(readme.contains(&format!("| {code} | {name} |")), "README.md's exit-code table lacks {code} {name}");
        }
    }
}
