//! Which modules of a trial learn in an SGD step (docs/science.md#regimes): the `Learning`
//! flags the engines apply as freeze masks, and the regimes' rule that sets them from a trial's
//! place in its curriculum. Knows no engine.

use super::model::Module;
use cbsweep_common::{FreezePoint, Regime};

/// Which modules of a trial learn during one SGD step. The readout always learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Learning {
    pub(crate) core: bool,
    pub(crate) cb: bool,
}

impl Learning {
    /// Whether `module` learns.
    pub(crate) fn module(self, module: Module) -> bool {
        match module {
            Module::Core => self.core,
            Module::Cb => self.cb,
            Module::Readout => true,
        }
    }
}

/// Which modules learn for a trial with `regime` that has done `epochs_done` epochs and
/// `steps_done` SGD steps and now trains at `level` of a curriculum starting at `start_level`.
pub(crate) fn learning(regime: Regime, start_level: u32, level: u32, epochs_done: u32, steps_done: u64) -> Learning {
    let frozen = match regime.freeze() {
        FreezePoint::Level(n) => level > n,
        FreezePoint::Epoch(n) => epochs_done >= n,
        FreezePoint::Step(n) => steps_done >= n,
        FreezePoint::Never => false,
    };
    match regime {
        Regime::Simult => Learning { core: true, cb: true },
        Regime::Reservoir { .. } | Regime::Interleaved { .. } if !frozen => Learning { core: true, cb: false },
        Regime::Interleaved { every, .. } if every > 0 && level > start_level && (level - start_level).is_multiple_of(every) => {
            Learning { core: true, cb: true }
        }
        Regime::Reservoir { .. } | Regime::Interleaved { .. } => Learning { core: false, cb: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regimes_decide_which_modules_learn() {
        let learns = |regime, level, epochs, steps| {
            let l = learning(regime, 2, level, epochs, steps);
            (l.core, l.cb)
        };
        assert_eq!(learns(Regime::Simult, 7, 9, 900), (true, true));
        let level2 = Regime::Reservoir { freeze: FreezePoint::Level(2) };
        assert_eq!(learns(level2, 2, 5, 500), (true, false));
        assert_eq!(learns(level2, 3, 5, 500), (false, true));
        let epoch3 = Regime::Reservoir { freeze: FreezePoint::Epoch(3) };
        assert_eq!(learns(epoch3, 4, 2, 200), (true, false));
        assert_eq!(learns(epoch3, 4, 3, 300), (false, true));
        let step10 = Regime::Reservoir { freeze: FreezePoint::Step(10) };
        assert_eq!(learns(step10, 2, 0, 9), (true, false));
        assert_eq!(learns(step10, 2, 0, 10), (false, true));
        assert_eq!(learns(Regime::Reservoir { freeze: FreezePoint::Never }, 50, 99, 9_999), (true, false));
        let refresh = Regime::Interleaved { freeze: FreezePoint::Level(2), every: 10 };
        assert_eq!(learns(refresh, 2, 0, 0), (true, false));
        assert_eq!(learns(refresh, 3, 1, 100), (false, true));
        assert_eq!(learns(refresh, 12, 9, 900), (true, true));
        assert_eq!(learns(refresh, 13, 9, 900), (false, true));
        assert_eq!(learns(refresh, 22, 9, 900), (true, true));
        // a refresh level before the freeze point still trains the core alone
        let late = Regime::Interleaved { freeze: FreezePoint::Epoch(50), every: 1 };
        assert_eq!(learns(late, 3, 10, 1000), (true, false));
    }
}
