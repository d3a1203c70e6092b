//! Trainable-parameter counts of every architecture and the parameter matching: of the plain
//! RNN to a CB-RNN, of the plain GRU to a CB-GRU, and of the recurrent-module control's module
//! to the cerebellar module it replaces (docs/science.md#parameter-matching).

/// Trainable parameters of a plain Elman RNN with `hidden` units, input size 1, two bias vectors
/// and a 2-class readout: H^2 + 5H + 2.
pub fn rnn_params(hidden: u32) -> u64 {
    let h = u64::from(hidden);
    h * h + 5 * h + 2
}

/// Trainable parameters of the cerebellar module alone (granule, Purkinje, deep nuclei).
pub fn cb_module_params(hidden: u32, granule: u32, purkinje: u32) -> u64 {
    let (h, g, p) = (u64::from(hidden), u64::from(granule), u64::from(purkinje));
    g * (h + 1) + g + p * g + p + h * p + h
}

/// Trainable parameters of a CB-RNN: the RNN plus its cerebellar module.
pub fn cbrnn_params(hidden: u32, granule: u32, purkinje: u32) -> u64 {
    rnn_params(hidden) + cb_module_params(hidden, granule, purkinje)
}

/// Trainable parameters of the recurrent-module control's module of `units` (A) units on a
/// core of `hidden` units: input layer [h; x] -> A, recurrent A -> A, output A -> H, each with
/// its bias: A^2 + A(2H + 3) + H.
pub fn recurrent_module_params(hidden: u32, units: u32) -> u64 {
    let (h, a) = (u64::from(hidden), u64::from(units));
    a * a + a * (2 * h + 3) + h
}

/// Units A of the recurrent module whose count is closest to the cerebellar module of the given
/// shape (the smaller on a tie): H = 64 and the G = 256, P = 64 module give 139.
pub fn recurrent_module_units(hidden: u32, granule: u32, purkinje: u32) -> u32 {
    let target = cb_module_params(hidden, granule, purkinje);
    // the count grows monotonically in A: start near the positive root of A^2 + A(2H + 3) + H
    let b = 2.0 * f64::from(hidden) + 3.0;
    let root = ((b * b + 4.0 * (target as f64 - f64::from(hidden)).max(0.0)).sqrt() - b) / 2.0;
    let approx = (root as u32).max(1);
    let lo = approx.saturating_sub(4).max(1);
    (lo..=approx + 4).min_by_key(|&a| (recurrent_module_params(hidden, a).abs_diff(target), a)).unwrap_or(1)
}

/// Trainable parameters of the recurrent-module control: the RNN plus its recurrent module,
/// sized to the cerebellar module of shape (granule, purkinje) it replaces.
pub fn rmrnn_params(hidden: u32, granule: u32, purkinje: u32) -> u64 {
    rnn_params(hidden) + recurrent_module_params(hidden, recurrent_module_units(hidden, granule, purkinje))
}

/// Trainable parameters of a plain GRU with `hidden` units, input size 1 (the lab's cell: per gate
/// a linear layer on the input and one on the state, each with its bias) and a 2-class readout:
/// the core 3H^2 + 9H, the readout 2H + 2.
pub fn gru_params(hidden: u32) -> u64 {
    let h = u64::from(hidden);
    3 * h * h + 9 * h + 2 * h + 2
}

/// Trainable parameters of a CB-GRU: the GRU plus its cerebellar module.
pub fn cbgru_params(hidden: u32, granule: u32, purkinje: u32) -> u64 {
    gru_params(hidden) + cb_module_params(hidden, granule, purkinje)
}

/// The hidden size whose plain-GRU count is closest to `target` (the smaller on a tie).
pub fn closest_gru_hidden(target: u64) -> u32 {
    let approx = (((target as f64) / 3.0).sqrt() as u32).max(1);
    let lo = approx.saturating_sub(4).max(1);
    (lo..=approx + 4).min_by_key(|&h| (gru_params(h).abs_diff(target), h)).unwrap_or(1)
}

/// Hidden size of the plain GRU matched to a CB-GRU of the given shape: the closest count (the
/// lab's pair, H = 64 with the G = 256 module against H = 128, is the closest).
pub fn matched_gru_hidden(hidden: u32, granule: u32, purkinje: u32) -> u32 {
    closest_gru_hidden(cbgru_params(hidden, granule, purkinje))
}

/// The matched sizes the study published for H = 64, P = 64 (CB-RNN granule size, RNN hidden).
/// For G = 128 the study's 160 is not the closest count (157 is: 25,436 against 25,282); cbsweep
/// reproduces the published pairs and uses the closest count everywhere else.
pub const PUBLISHED_MATCHES: [(u32, u32); 4] = [(64, 128), (128, 160), (256, 202), (512, 272)];

/// The hidden size whose plain-RNN count is closest to `target` (the smaller on a tie).
pub fn closest_rnn_hidden(target: u64) -> u32 {
    // rnn_params grows monotonically, so start near the root of H^2 + 5H + 2 = target.
    let approx = ((target as f64).sqrt() as u32).max(1);
    let lo = approx.saturating_sub(4).max(1);
    (lo..=approx + 4).min_by_key(|&h| (rnn_params(h).abs_diff(target), h)).unwrap_or(1)
}

/// Hidden size of the plain RNN matched to a CB-RNN of the given shape: the study's published
/// pair where one exists, the closest parameter count otherwise.
pub fn matched_rnn_hidden(hidden: u32, granule: u32, purkinje: u32) -> u32 {
    if hidden == 64
        && purkinje == 64
        && let Some(&(_, h)) = PUBLISHED_MATCHES.iter().find(|(g, _)| *g == granule)
    {
        return h;
    }
    closest_rnn_hidden(cbrnn_params(hidden, granule, purkinje))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn study_parameter_pairs_come_out_exactly() {
        let table = [(64, 16_962, 128, 17_026), (128, 25_282, 160, 26_402), (256, 41_922, 202, 41_816), (512, 75_202, 272, 75_346)];
        for (g, cb_total, rnn_h, rnn_total) in table {
            assert_eq!(cbrnn_params(64, g, 64), cb_total, "CB-RNN G={g}");
            assert_eq!(matched_rnn_hidden(64, g, 64), rnn_h, "matched H for G={g}");
            assert_eq!(rnn_params(rnn_h), rnn_total, "RNN H={rnn_h}");
        }
    }

    #[test]
    fn closest_rule_matches_three_published_pairs_and_differs_on_g128() {
        assert_eq!(closest_rnn_hidden(16_962), 128);
        assert_eq!(closest_rnn_hidden(41_922), 202);
        assert_eq!(closest_rnn_hidden(75_202), 272);
        assert_eq!(closest_rnn_hidden(25_282), 157);
    }

    #[test]
    fn the_recurrent_module_control_matches_the_labs_figure() {
        assert_eq!(cb_module_params(64, 256, 64), 37_504);
        assert_eq!(recurrent_module_units(64, 256, 64), 139);
        assert_eq!(recurrent_module_params(64, 139), 37_594);
        assert_eq!(rmrnn_params(64, 256, 64), rnn_params(64) + 37_594);
        // the closest count for other shapes, neighbours included
        for (h, g, p) in [(64, 64, 64), (32, 128, 32), (12, 20, 7), (128, 512, 64)] {
            let (target, a) = (cb_module_params(h, g, p), recurrent_module_units(h, g, p));
            for other in [a - 1, a + 1] {
                assert!(
                    recurrent_module_params(h, a).abs_diff(target) <= recurrent_module_params(h, other).abs_diff(target),
                    "{h} {g} {p}"
                );
            }
        }
    }

    #[test]
    fn the_labs_gru_pair_comes_out_exactly() {
        assert_eq!(gru_params(64) - (2 * 64 + 2), 3 * 64 * 64 + 9 * 64);
        assert_eq!(cbgru_params(64, 256, 64), 50_498);
        assert_eq!(matched_gru_hidden(64, 256, 64), 128);
        assert_eq!(gru_params(128), 50_562);
        let target = cbgru_params(32, 128, 32);
        let h = matched_gru_hidden(32, 128, 32);
        for other in [h - 1, h + 1] {
            assert!(gru_params(h).abs_diff(target) <= gru_params(other).abs_diff(target));
        }
    }

    #[test]
    fn unpublished_shapes_use_the_closest_count() {
        let target = cbrnn_params(32, 128, 32);
        let h = matched_rnn_hidden(32, 128, 32);
        for other in [h - 1, h + 1] {
            assert!(rnn_params(h).abs_diff(target) <= rnn_params(other).abs_diff(target));
        }
    }
}
