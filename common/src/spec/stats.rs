//! `[stats]`: what the statistics compare. Validated against the grid it compares (each side an
//! architecture of the grid, optionally in one of its regimes), and read back from a stored
//! sweep's resolved text alone (`resolved_stats`), without expanding its grid.

use super::checks::{Checker, SpecError};
use super::raw::RawStats;
use crate::trial::{Arch, ComparePair, CompareSide, RegimeKind, StatsPlan, TrialSpec};
use std::collections::BTreeSet;

/// `SweepSpec::stats` of a stored sweep, from its resolved text alone (the `[stats]` section,
/// validated when the sweep was; no grid expansion): what a coordinator's export needs. A text
/// without the section, or one this code cannot read, gives `StatsPlan::default()`.
pub fn resolved_stats(resolved: &str) -> StatsPlan {
    let Some(stats) = toml::from_str::<toml::Table>(resolved).ok().and_then(|t| t.get("stats").cloned()) else {
        return StatsPlan::default();
    };
    let default = StatsPlan::default();
    let pairs = match stats.get("compare").and_then(|v| v.as_array()) {
        None => Some(default.pairs),
        Some(pairs) => pairs
            .iter()
            .map(|p| {
                let p = p.as_array()?;
                Some(ComparePair { a: p.first()?.as_str()?.parse().ok()?, b: p.get(1)?.as_str()?.parse().ok()? })
            })
            .collect::<Option<Vec<_>>>(),
    };
    let freeze_vs_simult = stats.get("freeze_vs_simult").and_then(|v| v.as_bool()).unwrap_or(default.freeze_vs_simult);
    match pairs {
        Some(pairs) => StatsPlan { pairs, freeze_vs_simult },
        None => StatsPlan::default(),
    }
}

/// The `[stats]` section of a sweep whose grid has the architectures `archs` and expanded to
/// `trials`; absent: `StatsPlan::default()`.
pub(super) fn plan(c: &Checker, raw: Option<&RawStats>, archs: &[Arch], trials: &[TrialSpec]) -> Result<StatsPlan, SpecError> {
    Ok(match raw {
        None => StatsPlan::default(),
        Some(st) => {
            let kinds: BTreeSet<RegimeKind> = trials.iter().map(|t| t.regime.kind()).collect();
            StatsPlan {
                pairs: match &st.compare {
                    Some(pairs) => compare_pairs(c, pairs, archs, &kinds)?,
                    None => StatsPlan::default().pairs,
                },
                freeze_vs_simult: st.freeze_vs_simult.unwrap_or(true),
            }
        }
    })
}

/// `stats.compare`'s pairs: each side an architecture of the grid, optionally in one of its
/// regimes (`"cbrnn:reservoir"`), the two sides distinct.
fn compare_pairs(c: &Checker, pairs: &[Vec<String>], archs: &[Arch], kinds: &BTreeSet<RegimeKind>) -> Result<Vec<ComparePair>, SpecError> {
    c.nonempty("stats.compare", pairs)?;
    let grid = archs.iter().map(|a| format!("{:?}", a.to_string())).collect::<Vec<_>>().join(", ");
    let regimes = kinds.iter().map(|r| format!("{:?}", r.name())).collect::<Vec<_>>().join(", ");
    let mut out = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        let field = format!("stats.compare[{i}]");
        if pair.len() != 2 {
            return Err(c.invalid(
                &field,
                format!("{pair:?}"),
                "a comparison names two sides, each an architecture or architecture:regime: [\"a\", \"b\"] or [\"cbrnn:reservoir\", \"rnn:simult\"]",
            ));
        }
        let mut two = Vec::new();
        for (j, name) in pair.iter().enumerate() {
            let f = format!("{field}[{j}]");
            let side: CompareSide = name.parse().map_err(|why: String| c.invalid(&f, format!("{name:?}"), &why))?;
            if !archs.contains(&side.arch) {
                return Err(c.invalid(&f, format!("{name:?}"), &format!("not an architecture of the grid (grid.arch = [{grid}])")));
            }
            if let Some(r) = side.regime
                && !kinds.contains(&r)
            {
                return Err(c.invalid(&f, format!("{name:?}"), &format!("not a regime of the grid (its regimes: [{regimes}])")));
            }
            two.push(side);
        }
        let p = ComparePair { a: two[0], b: two[1] };
        if p.a == p.b || (p.a.arch == p.b.arch && (p.a.regime.is_none() || p.b.regime.is_none())) {
            return Err(c.invalid(&field, format!("{pair:?}"), "compares a group with itself (the same architecture needs two regimes)"));
        }
        if out.contains(&p) {
            return Err(c.invalid(&field, format!("{pair:?}"), "is listed twice"));
        }
        out.push(p);
    }
    Ok(out)
}
