//! The three memory tasks as pure-Rust data generation (docs/science.md#tasks), and the
//! per-trial random streams every draw of a trial follows from. No torch RNG is used anywhere:
//! what a trial sees depends on its seed alone, never on which trials share its pack.

use cbsweep_common::{ModuleStart, Seed, Task};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The independent random streams of one trial. All share the trial's seed as ChaCha key and
/// differ in the ChaCha stream number, so drawing more from one never shifts another. The
/// numbers are part of what a trial computes: changing one changes every result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Initial weights.
    Weights = 0,
    /// Lengths and bits of the training batches.
    TrainData = 1,
    /// h_0 of the training batches.
    TrainH0 = 2,
    /// Lengths and bits of the test batches.
    TestData = 3,
    /// h_0 of the test batches.
    TestH0 = 4,
    /// Lengths and bits of the checkpoint analyses' fixed batches; re-seeded at every
    /// checkpoint, so each one sees the same batches at a given level.
    AnalysisData = 5,
    /// h_0 of the analyses' fixed batches.
    AnalysisH0 = 6,
    /// Bits of the timescale analysis' long drive (re-seeded at every checkpoint).
    TimescaleInput = 7,
    /// h_0 of the timescale analysis' drive.
    TimescaleH0 = 8,
    /// Lengths and bits of the readout recovery's training batches (re-seeded at every
    /// checkpoint).
    RecoveryData = 9,
    /// h_0 of the readout recovery's training batches.
    RecoveryH0 = 10,
    /// The recurrent module's a_0 (the lab's start of the recurrent-module control) of the
    /// training batches, the test batches, the analyses' fixed batches, the timescale drive and
    /// the readout recovery's batches: streams of their own, so the h_0 and data streams are the
    /// CB-RNN's.
    TrainA0 = 11,
    TestA0 = 12,
    AnalysisA0 = 13,
    TimescaleA0 = 14,
    RecoveryA0 = 15,
}

/// One batch of one trial: B sequences of the same length T.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TaskBatch {
    /// Sequence length T, shared by the batch.
    pub(crate) len: usize,
    /// Bits in time-major order, [T, B]: bit t of sequence b is `bits[t * batch + b]`.
    pub(crate) bits: Vec<u8>,
    /// One class (0 or 1) per sequence, [B].
    pub(crate) labels: Vec<i64>,
}

/// The random generator of one of a trial's streams.
pub(crate) fn stream(seed: Seed, which: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.0);
    rng.set_stream(which as u64);
    rng
}

/// Shortest and longest sequence length at memory depth `level`: N+2 ..= 4N+1.
pub(crate) fn length_range(level: u32) -> (usize, usize) {
    let n = level as usize;
    (n + 2, 4 * n + 1)
}

/// A sequence length drawn uniformly from `length_range(level)`.
pub(crate) fn draw_length(rng: &mut impl Rng, level: u32) -> usize {
    let (lo, hi) = length_range(level);
    rng.random_range(lo..=hi)
}

/// `len * batch` Bernoulli(0.5) bits, [T, B].
pub(crate) fn draw_bits(rng: &mut impl Rng, len: usize, batch: usize) -> Vec<u8> {
    (0..len * batch).map(|_| u8::from(rng.random::<bool>())).collect()
}

/// A batch at memory depth `level`: the length, then the bits, then the labels they imply.
pub(crate) fn draw_batch(rng: &mut impl Rng, task: Task, level: u32, batch: usize) -> TaskBatch {
    let len = draw_length(rng, level);
    let bits = draw_bits(rng, len, batch);
    let labels = (0..batch)
        .map(|b| {
            let seq: Vec<u8> = (0..len).map(|t| bits[t * batch + b]).collect();
            i64::from(label(task, &seq, level))
        })
        .collect();
    TaskBatch { len, bits, labels }
}

/// The class of one sequence (bits in time order, at least N+1 of them) at memory depth `level`.
pub(crate) fn label(task: Task, seq: &[u8], level: u32) -> u8 {
    let n = level as usize;
    let len = seq.len();
    debug_assert!(len > n, "a sequence of memory depth {n} needs at least {} bits", n + 1);
    let last = seq[len - 1];
    match task {
        // x_{T-N+1} == x_T, bits indexed 1..T
        Task::Dms => u8::from(seq[len - n] == last),
        Task::Parity => seq[len - n..].iter().sum::<u8>() % 2,
        Task::Oddball => {
            let context = &seq[len - 1 - n..len - 1];
            let changes = context.windows(2).filter(|w| w[0] != w[1]).count();
            // N = 1 has no neighbours to compare; its context is never volatile
            let volatile = n > 1 && changes as f64 / (n - 1) as f64 > 0.35;
            let context_last = context[n - 1];
            let expected = if volatile { 1 - context_last } else { context_last };
            u8::from(last == expected)
        }
    }
}

/// h_0 for one batch: 0.1 * U(0, 1) per sequence and unit, [B, H] row-major.
pub(crate) fn draw_h0(rng: &mut impl Rng, batch: usize, hidden: usize) -> Vec<f64> {
    (0..batch * hidden).map(|_| 0.1 * rng.random::<f64>()).collect()
}

/// The initial states of one batch, [B, H + A] row-major (the layout of `Dims::state_units`):
/// per sequence h_0 from `h0` as `draw_h0` draws it, then, for a model with a recurrent module
/// of `module` = A units, its a_0: 0.1 * U(0, 1) per unit from `a0` for the lab's start, 0 for
/// the near-zero start (nothing drawn). With A = 0 it is `draw_h0`'s batch.
pub(crate) fn draw_states(
    h0: &mut impl Rng,
    a0: &mut impl Rng,
    start: ModuleStart,
    batch: usize,
    hidden: usize,
    module: usize,
) -> Vec<f64> {
    let h = draw_h0(h0, batch, hidden);
    if module == 0 {
        return h;
    }
    let a = match start {
        ModuleStart::Lab => draw_h0(a0, batch, module),
        ModuleStart::NearZero | ModuleStart::Original => vec![0.0; batch * module],
    };
    h.chunks(hidden).zip(a.chunks(module)).flat_map(|(h, a)| h.iter().chain(a)).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dms_compares_the_bit_n_back_with_the_last() {
        // N = 2: x_{T-1} against x_T
        assert_eq!(label(Task::Dms, &[0, 0, 1, 1], 2), 1);
        assert_eq!(label(Task::Dms, &[1, 1, 0, 1], 2), 0);
        // N = 3, T = 5: x_3 against x_5; earlier bits do not matter
        assert_eq!(label(Task::Dms, &[1, 0, 1, 0, 1], 3), 1);
        assert_eq!(label(Task::Dms, &[0, 1, 0, 1, 1], 3), 0);
        assert_eq!(label(Task::Dms, &[1, 1, 0, 0, 0], 3), 1);
    }

    #[test]
    fn parity_sums_the_last_n_bits() {
        assert_eq!(label(Task::Parity, &[1, 1, 0, 1], 2), 1);
        assert_eq!(label(Task::Parity, &[1, 1, 1, 1], 2), 0);
        assert_eq!(label(Task::Parity, &[1, 0, 1, 1, 1], 3), 1);
        assert_eq!(label(Task::Parity, &[1, 1, 0, 1, 1], 3), 0);
        assert_eq!(label(Task::Parity, &[1, 1, 1, 0, 0, 0], 3), 0);
    }

    #[test]
    fn oddball_expects_a_flip_after_a_volatile_context_and_a_repeat_otherwise() {
        // N = 2: context is the two bits before the last; fraction = changes / 1
        // context [0, 1] changes once (1.0 > 0.35): volatile, expected last = flip of 1 = 0
        assert_eq!(label(Task::Oddball, &[1, 0, 1, 0], 2), 1);
        assert_eq!(label(Task::Oddball, &[1, 0, 1, 1], 2), 0);
        // context [1, 1] never changes: stable, expected last = 1
        assert_eq!(label(Task::Oddball, &[0, 1, 1, 1], 2), 1);
        assert_eq!(label(Task::Oddball, &[0, 1, 1, 0], 2), 0);
        // N = 4: context [0, 0, 0, 1] changes once, 1/3 = 0.33 <= 0.35: stable, expected 1
        assert_eq!(label(Task::Oddball, &[1, 0, 0, 0, 1, 1], 4), 1);
        assert_eq!(label(Task::Oddball, &[1, 0, 0, 0, 1, 0], 4), 0);
        // N = 4: context [0, 1, 1, 0] changes twice, 2/3 > 0.35: volatile, expected flip of 0 = 1
        assert_eq!(label(Task::Oddball, &[1, 0, 1, 1, 0, 1], 4), 1);
        assert_eq!(label(Task::Oddball, &[1, 0, 1, 1, 0, 0], 4), 0);
        // N = 3: context [1, 0, 1]; the first bit lies outside it
        assert_eq!(label(Task::Oddball, &[0, 1, 0, 1, 0], 3), 1);
    }

    #[test]
    fn lengths_cover_n_plus_2_to_4n_plus_1_and_nothing_else() {
        let mut rng = stream(Seed(7), Stream::TrainData);
        for level in [2, 3, 10] {
            let (lo, hi) = length_range(level);
            assert_eq!((lo, hi), (level as usize + 2, 4 * level as usize + 1));
            let mut seen = vec![false; hi + 1];
            for _ in 0..5_000 {
                let t = draw_length(&mut rng, level);
                assert!((lo..=hi).contains(&t), "length {t} at level {level}");
                seen[t] = true;
            }
            assert!(seen[lo..=hi].iter().all(|&s| s), "every length in range is drawn at level {level}");
        }
    }

    #[test]
    fn batches_are_time_major_and_labelled_per_column() {
        let mut rng = stream(Seed(3), Stream::TestData);
        let batch = 16;
        for task in [Task::Dms, Task::Parity, Task::Oddball] {
            let b = draw_batch(&mut rng, task, 3, batch);
            assert_eq!(b.bits.len(), b.len * batch);
            for (col, &y) in b.labels.iter().enumerate() {
                let seq: Vec<u8> = (0..b.len).map(|t| b.bits[t * batch + col]).collect();
                assert_eq!(i64::from(label(task, &seq, 3)), y);
            }
        }
    }

    #[test]
    fn the_recurrent_modules_a0_comes_from_its_own_stream_and_moves_no_other() {
        let (b, h, a) = (3, 4, 5);
        let draw = |start, module| {
            let (mut h0, mut a0) = (stream(Seed(9), Stream::TrainH0), stream(Seed(9), Stream::TrainA0));
            let states = draw_states(&mut h0, &mut a0, start, b, h, module);
            (states, h0.get_word_pos(), a0.get_word_pos())
        };
        let h0 = draw_h0(&mut stream(Seed(9), Stream::TrainH0), b, h);
        let a0 = draw_h0(&mut stream(Seed(9), Stream::TrainA0), b, a);
        // no module: draw_h0's batch, nothing drawn from the a0 stream
        let (plain, h_words, a_words) = draw(ModuleStart::Lab, 0);
        assert_eq!((plain, a_words), (h0.clone(), 0));
        for (start, module_state) in [(ModuleStart::Lab, a0), (ModuleStart::NearZero, vec![0.0; b * a])] {
            let (states, words, _) = draw(start, a);
            assert_eq!(words, h_words, "{start:?}: the h0 stream moves as without the module");
            for i in 0..b {
                assert_eq!(states[i * (h + a)..i * (h + a) + h], h0[i * h..(i + 1) * h], "{start:?}: h_0 of sequence {i}");
                assert_eq!(states[i * (h + a) + h..(i + 1) * (h + a)], module_state[i * a..(i + 1) * a], "{start:?}: a_0 of {i}");
            }
        }
        assert_eq!(draw(ModuleStart::NearZero, a).2, 0, "the near-zero start draws nothing");
    }

    #[test]
    fn streams_of_one_seed_differ_and_repeat() {
        let draw = |seed, which| draw_bits(&mut stream(Seed(seed), which), 8, 8);
        assert_eq!(draw(1, Stream::TrainData), draw(1, Stream::TrainData));
        assert_ne!(draw(1, Stream::TrainData), draw(1, Stream::TestData));
        assert_ne!(draw(1, Stream::TrainData), draw(2, Stream::TrainData));
    }
}
