//! The memory model: how many bytes one trial adds to a pack at its peak, so that the scheduler
//! can size packs to a worker's memory budget; and byte sizes as people write them (`8GiB`).

use crate::trial::{Core, ModuleKind, TrainBudget, TrialSpec};

/// Bytes of one stored value: the worker trains in float32.
pub const VALUE_BYTES: u64 = 4;

/// Test batches the worker evaluates together in one forward pass.
pub const TEST_BATCHES_PER_PASS: u32 = 10;

/// Copies of the parameters a trial keeps: the weights, their gradients, the momentum buffers.
pub const PARAMETER_COPIES: u64 = 3;

/// Factor on the counted bytes, from `cbsweep-bench memory` with 8 SGD steps per pack (main
/// CB-RNN, N = 10, CPU, peak resident memory per packed trial against the 5.6 MiB counted). The count is what
/// backpropagation through time must keep; libtorch's autograd keeps about twice that (the input
/// drives precomputed for all steps, the gradient buffers that fill during the backward pass:
/// 10.7 to 12.3 MiB with a fixed malloc mmap threshold), and glibc's sliding mmap threshold then
/// leaves freed heap pages resident: up to 32.2 MiB (5.75 x) at M = 8. 8 covers that with room
/// for the kernel to change. The fused CPU engine needs far less (2 MiB at M = 32), so on it the
/// budget is conservative.
pub const SAFETY_FACTOR: u64 = 8;

/// The highest curriculum level a trial can reach: one level per epoch at most, capped by
/// `max_level`.
pub fn highest_level(budget: &TrainBudget) -> u32 {
    budget.max_level.min(budget.start_level.saturating_add(budget.epochs.saturating_sub(1)))
}

/// The longest sequence a trial can meet: at level N, T is uniform in N+2 ..= 4N+1.
pub fn longest_sequence(budget: &TrainBudget) -> u64 {
    4 * u64::from(highest_level(budget)) + 1
}

/// Values one sequence stores per time step for the backward pass: the Elman core's state h_t
/// and pre-activation (H each), the GRU core's state, its three gates, the recurrent product of
/// the candidate and the candidate's pre-activation (6H); the cerebellar module adds its
/// granule (G), Purkinje (P) and output (H) layers, the recurrent module its state and
/// pre-activation (A each) and output (H).
pub fn values_per_step(spec: &TrialSpec) -> u64 {
    let (h, g, p) = (u64::from(spec.hidden), u64::from(spec.granule), u64::from(spec.purkinje));
    let core = match spec.arch.core() {
        Core::Elman => 2 * h,
        Core::Gru => 6 * h,
    };
    let module = match spec.arch.module() {
        None => 0,
        Some(ModuleKind::Cerebellar) => g + p + h,
        Some(ModuleKind::Recurrent) => 2 * u64::from(spec.module_units().unwrap_or(0)) + h,
    };
    core + module
}

/// Peak bytes one trial adds to a pack:
///
/// ```text
/// SAFETY_FACTOR * VALUE_BYTES * (PARAMETER_COPIES * params + max(T * B * W, K * B * W))
/// ```
///
/// with `params` the trainable parameters, `T` the longest sequence the trial can reach
/// (`longest_sequence`), `B` the batch size, `W` the values per sequence and step
/// (`values_per_step`) and `K = min(test_batches, TEST_BATCHES_PER_PASS)`. The first term of the
/// max is a training step's backpropagation through time (every step's activity kept); the
/// second the test pass (forward only, K batches at once, one step alive at a time). They never
/// live together. The libtorch runtime itself (a few hundred MB per process) is not part of it:
/// a budget is for the pack's tensors.
pub fn trial_memory_bytes(spec: &TrialSpec) -> u64 {
    let b = &spec.budget;
    let width = values_per_step(spec) * u64::from(b.batch_size);
    let train = longest_sequence(b) * width;
    let test = u64::from(b.test_batches.min(TEST_BATCHES_PER_PASS)) * width;
    SAFETY_FACTOR * VALUE_BYTES * (PARAMETER_COPIES * spec.param_count() + train.max(test))
}

/// How many trials like `spec` fit in `budget_bytes` by `trial_memory_bytes` (0 when not one).
pub fn trials_within(budget_bytes: u64, spec: &TrialSpec) -> u64 {
    budget_bytes / trial_memory_bytes(spec).max(1)
}

/// Parses a byte size: a number (decimals allowed) with an optional unit. `KiB`, `MiB`, `GiB`,
/// `TiB` and the bare `K`, `M`, `G`, `T` are powers of 1024 (as in Slurm's `--mem=8G`); `kB`/`KB`,
/// `MB`, `GB`, `TB` powers of 1000; `B` or nothing is bytes. Case and spaces do not matter.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let s: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (expected B, KiB, MiB, GiB, TiB, K, M, G, T, KB, MB, GB or TB)")),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?}: expected a number of bytes, optionally with a unit, e.g. 8GiB"))?;
    let bytes = (value * factor as f64).floor();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?}: too large"));
    }
    Ok(bytes as u64)
}

/// A byte size for people, in powers of 1024 with one decimal ("12.5 MiB").
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AnalysisPlan, Arch, Regime, Seed, SweepId, Task, model_size};

    fn cbrnn(granule: u32, batch: u32, start: u32, max: u32, epochs: u32) -> TrialSpec {
        TrialSpec {
            sweep: SweepId("s".into()),
            task: Task::Dms,
            arch: Arch::Cbrnn,
            hidden: 64,
            granule,
            purkinje: 64,
            seed: Seed(1),
            regime: Regime::Simult,
            lr_core: 0.01,
            lr_cb: 0.01,
            lr_readout: 0.01,
            core_plasticity: 1.0,
            budget: TrainBudget {
                epochs,
                steps_per_epoch: 100,
                test_batches: 50,
                batch_size: batch,
                start_level: start,
                max_level: max,
                solve_threshold: 0.98,
                momentum: 0.1,
                clip_norm: 7.5,
                curriculum: crate::trial::Curriculum::Climb,
            },
            analysis: AnalysisPlan::study(),
            grid_hidden: 64,
            gru_cell: crate::trial::GruCell::Original,
            module_start: crate::trial::ModuleStart::Original,
        }
    }

    #[test]
    fn highest_level_rises_one_per_epoch_up_to_the_cap() {
        assert_eq!(highest_level(&cbrnn(256, 64, 2, 150, 1).budget), 2);
        assert_eq!(highest_level(&cbrnn(256, 64, 2, 150, 9).budget), 10);
        assert_eq!(highest_level(&cbrnn(256, 64, 2, 150, 1000).budget), 150);
        assert_eq!(longest_sequence(&cbrnn(256, 64, 10, 10, 1).budget), 41);
    }

    #[test]
    fn the_formula_counts_parameters_and_stored_activity() {
        // main CB-RNN at N = 10: T = 41, W = 3 * 64 + 256 + 64 = 512
        let spec = cbrnn(256, 64, 10, 10, 1);
        let counted = 3 * 41_922 + 41 * 64 * 512;
        assert_eq!(trial_memory_bytes(&spec), SAFETY_FACTOR * 4 * counted);
        // at the study's cap, N = 150: T = 601, about 76 MiB counted
        let capped = cbrnn(256, 64, 2, 150, 1000);
        assert_eq!(trial_memory_bytes(&capped), SAFETY_FACTOR * 4 * (3 * 41_922 + 601 * 64 * 512));
    }

    #[test]
    fn memory_grows_with_level_granule_and_batch() {
        let base = trial_memory_bytes(&cbrnn(256, 64, 10, 10, 1));
        assert!(trial_memory_bytes(&cbrnn(256, 64, 11, 11, 1)) > base, "level");
        assert!(trial_memory_bytes(&cbrnn(256, 64, 10, 20, 5)) > base, "epochs reach higher levels");
        assert!(trial_memory_bytes(&cbrnn(512, 64, 10, 10, 1)) > base, "granule");
        assert!(trial_memory_bytes(&cbrnn(256, 128, 10, 10, 1)) > base, "batch");
        assert!(trial_memory_bytes(&cbrnn(128, 64, 10, 10, 1)) < base, "smaller granule");
    }

    #[test]
    fn a_plain_rnn_needs_less_than_a_cbrnn_of_the_same_core() {
        let cb = cbrnn(256, 64, 10, 10, 1);
        let same_core = TrialSpec { arch: Arch::Rnn, ..cb.clone() };
        assert!(trial_memory_bytes(&same_core) < trial_memory_bytes(&cb));
        // the parameter-matched RNN (H = 202) stores 2 * 202 values a step against 512
        let matched = TrialSpec { arch: Arch::Rnn, hidden: model_size::matched_rnn_hidden(64, 256, 64), ..cb.clone() };
        assert!(trial_memory_bytes(&matched) < trial_memory_bytes(&cb));
    }

    #[test]
    fn the_new_architectures_store_their_modules_and_gates_per_step() {
        let cb = cbrnn(256, 64, 10, 10, 1);
        let at = |arch, hidden| values_per_step(&TrialSpec { arch, hidden, ..cb.clone() });
        assert_eq!(at(Arch::Cbrnn, 64), 2 * 64 + 256 + 64 + 64);
        // the control: the core's 2H, the module's state and pre-activation (A = 139) and output
        assert_eq!(at(Arch::Rmrnn, 64), 2 * 64 + 2 * 139 + 64);
        assert_eq!(at(Arch::Cbgru, 64), 6 * 64 + 256 + 64 + 64);
        assert_eq!(at(Arch::Gru, 128), 6 * 128);
    }

    #[test]
    fn the_test_pass_decides_on_short_sequences() {
        // N = 2: T = 9 < 10 test batches at once
        let spec = cbrnn(256, 64, 2, 2, 1);
        assert_eq!(trial_memory_bytes(&spec), SAFETY_FACTOR * 4 * (3 * 41_922 + 10 * 64 * 512));
        let few = TrialSpec { budget: TrainBudget { test_batches: 1, ..spec.budget }, ..spec.clone() };
        assert_eq!(trial_memory_bytes(&few), SAFETY_FACTOR * 4 * (3 * 41_922 + 9 * 64 * 512));
    }

    #[test]
    fn trials_within_divides_and_floors() {
        let spec = cbrnn(256, 64, 10, 10, 1);
        let one = trial_memory_bytes(&spec);
        assert_eq!(trials_within(3 * one, &spec), 3);
        assert_eq!(trials_within(4 * one - 1, &spec), 3);
        assert_eq!(trials_within(one - 1, &spec), 0);
    }

    #[test]
    fn byte_sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_bytes("123").unwrap(), 123);
        assert_eq!(parse_bytes("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_bytes("8 gib").unwrap(), 8 << 30);
        assert_eq!(parse_bytes("8G").unwrap(), 8 << 30);
        assert_eq!(parse_bytes("8GB").unwrap(), 8_000_000_000);
        assert_eq!(parse_bytes("1.5MiB").unwrap(), 3 << 19);
        assert_eq!(parse_bytes("512k").unwrap(), 512 << 10);
        assert!(parse_bytes("8 GiBs").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
    }

    #[test]
    fn byte_sizes_format_for_people() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 << 19), "1.5 MiB");
        assert_eq!(format_bytes(40 << 30), "40.0 GiB");
    }
}
