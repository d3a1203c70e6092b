//! Grid expansion: the grid's axes (lists, seed ranges `{ from, count }`, linear and
//! log-spaced ranges of rates and factors), `grid.zip` rows that vary keys together,
//! `grid.exclude` entries that drop cells, and the crossing of it all into cells in grid order
//! (the order every sweep's trial ids were fixed in). What a cell becomes as a trial (matched
//! sizes, budget, analyses) is `validate`'s.

use super::checks::{Checker, MAX_TRIALS, Num, SpecError};
use super::raw::{RawGrid, RawModel, ZIPPABLE};
use crate::ids::Seed;
use crate::trial::{Arch, FreezePoint, Regime, STUDY_SIZE, Task};
use std::collections::BTreeSet;

/// A checked grid, not yet crossed: its factors in crossing order and its exclude entries.
pub(super) struct Grid<'a> {
    /// `grid.arch` as listed: what `[stats]` may compare.
    pub(super) archs: Vec<Arch>,
    /// One factor per key of `GRID_ORDER` (a zip group standing where its first key would),
    /// each a list of options, an option the values it sets together.
    factors: Vec<Vec<Vec<Coord>>>,
    /// Each `grid.exclude` entry as written, with the values it matches.
    excludes: Vec<(&'a toml::Table, Vec<Coord>)>,
}

impl<'a> Grid<'a> {
    /// Checks every axis of `g` (a size given in the older form comes from `model`), its zip rows
    /// and its exclude entries.
    pub(super) fn new(c: &Checker, g: &'a RawGrid, model: &RawModel) -> Result<Self, SpecError> {
        let tasks: Vec<Task> = c.parse_each("grid.task", &g.task)?;
        let archs: Vec<Arch> = c.parse_each("grid.arch", &g.arch)?;
        let regimes = regimes(c, g)?;
        let zip = zip_groups(c, g.zip.as_deref())?;
        let mut factors: Vec<Vec<Vec<Coord>>> = Vec::new();
        for key in GRID_ORDER {
            if let Some(group) = zip.iter().find(|(keys, _)| keys.contains(key)) {
                // A zipped group stands where the first of its keys would.
                if GRID_ORDER.iter().find(|k| group.0.contains(**k)) == Some(&key) {
                    factors.push(group.1.clone());
                }
                continue;
            }
            let one = |v: Vec<Coord>| v.into_iter().map(|x| vec![x]).collect::<Vec<_>>();
            factors.push(match key {
                "task" => one(tasks.iter().map(|&t| Coord::Task(t)).collect()),
                "arch" => one(archs.iter().map(|&a| Coord::Arch(a)).collect()),
                "hidden" => one(sizes(c, "hidden", g.hidden.as_deref(), model.hidden)?.into_iter().map(Coord::Hidden).collect()),
                "granule" => one(sizes(c, "granule", g.granule.as_deref(), None)?.into_iter().map(Coord::Granule).collect()),
                "purkinje" => one(sizes(c, "purkinje", g.purkinje.as_deref(), model.purkinje)?.into_iter().map(Coord::Purkinje).collect()),
                "regime" => one(regimes.iter().map(|&r| Coord::Regime(r)).collect()),
                "core_plasticity" => one(c
                    .float_axis("grid.core_plasticity", g.core_plasticity.as_ref(), |f, v| c.factor(f, v))?
                    .into_iter()
                    .map(Coord::CorePlasticity)
                    .collect()),
                "lr_core" => one(c
                    .float_axis("grid.lr_core", g.lr_core.as_ref(), |f, v| c.rate_as(f, "grid.lr_core", v))?
                    .into_iter()
                    .map(Coord::LrCore)
                    .collect()),
                "lr_cb" => one(c
                    .float_axis("grid.lr_cb", g.lr_cb.as_ref(), |f, v| c.rate_as(f, "grid.lr_cb", v))?
                    .into_iter()
                    .map(Coord::LrCb)
                    .collect()),
                _ => one(c.seeds(&g.seed)?.into_iter().map(Coord::Seed).collect()),
            });
        }
        let excludes = g
            .exclude
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, entry)| Ok((entry, exclude_entry(c, i, entry)?)))
            .collect::<Result<Vec<_>, SpecError>>()?;
        Ok(Grid { archs, factors, excludes })
    }

    /// The cells of the crossed grid in grid order, less the excluded ones. Refused: a grid of
    /// more than `MAX_TRIALS` cells, an exclude entry that matches no cell, or no cell left.
    pub(super) fn cells(&self, c: &Checker) -> Result<Vec<Cell>, SpecError> {
        let cells = self.factors.iter().try_fold(1usize, |n, f| n.checked_mul(f.len())).unwrap_or(usize::MAX);
        if cells > MAX_TRIALS {
            return Err(c.invalid(
                "grid",
                format!("{cells} cells"),
                &format!("a sweep may expand to at most {MAX_TRIALS} trials; split it"),
            ));
        }
        let mut excluded = vec![0usize; self.excludes.len()];
        let mut kept = Vec::new();
        for cell in product(&self.factors) {
            let mut keep = true;
            for (hits, (_, entry)) in excluded.iter_mut().zip(&self.excludes) {
                if entry.iter().all(|x| x.matches(&cell)) {
                    *hits += 1;
                    keep = false;
                }
            }
            if keep {
                kept.push(cell);
            }
        }
        if let Some(i) = excluded.iter().position(|&hits| hits == 0) {
            let entry = toml::Value::Table(self.excludes[i].0.clone());
            return Err(c.invalid(&format!("grid.exclude[{i}]"), entry, "matches no cell of the grid (check its keys and values)"));
        }
        if kept.is_empty() {
            return Err(c.invalid("grid.exclude", "(every cell)", "leaves no cell to run"));
        }
        Ok(kept)
    }
}

/// One grid coordinate: what a trial's cell key shows. `hidden` is the grid shape's (the
/// CB-RNN's); the matched architectures' own sizes follow from it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cell {
    pub(super) task: Task,
    pub(super) arch: Arch,
    pub(super) hidden: u32,
    pub(super) granule: u32,
    pub(super) purkinje: u32,
    pub(super) regime: Regime,
    pub(super) core_plasticity: f64,
    pub(super) lr_core: f64,
    pub(super) lr_cb: f64,
    pub(super) seed: Seed,
}

/// The regimes of the grid: `grid.regime` with each of `grid.freeze` (reservoir, interleaved)
/// and each of `grid.refresh_every` (interleaved).
fn regimes(c: &Checker, g: &RawGrid) -> Result<BTreeSet<Regime>, SpecError> {
    let freezes: Vec<FreezePoint> = c.parse_each("grid.freeze", &g.freeze)?;
    c.nonempty("grid.refresh_every", &g.refresh_every)?;
    let refreshes = g.refresh_every.iter().map(|&v| c.positive("grid.refresh_every", v)).collect::<Result<Vec<_>, _>>()?;
    c.nonempty("grid.regime", &g.regime)?;
    for r in &g.regime {
        regime_name(r).ok_or_else(|| c.invalid("grid.regime", format!("{r:?}"), REGIME_HINT))?;
    }
    let mut regimes = BTreeSet::new();
    for r in &g.regime {
        match r.as_str() {
            "simult" => {
                regimes.insert(Regime::Simult);
            }
            "reservoir" => regimes.extend(freezes.iter().map(|&freeze| Regime::Reservoir { freeze })),
            _ => {
                for &freeze in &freezes {
                    regimes.extend(refreshes.iter().map(|&every| Regime::Interleaved { freeze, every }));
                }
            }
        }
    }
    Ok(regimes)
}

const REGIME_HINT: &str = "unknown regime (expected one of: simult, reservoir, interleaved)";

/// The grid's keys in the order it crosses them (the last varies fastest); the order of every
/// sweep's trials before zip and ranges existed, with hidden and purkinje beside granule.
const GRID_ORDER: [&str; 10] = ["task", "arch", "hidden", "granule", "purkinje", "regime", "core_plasticity", "lr_core", "lr_cb", "seed"];

fn regime_name(r: &str) -> Option<&'static str> {
    ["simult", "reservoir", "interleaved"].into_iter().find(|n| *n == r)
}

/// One value of one grid key: what axes, zip rows and exclude entries are made of. The regime's
/// parts (`RegimeName`, `Freeze`, `Refresh`) only match, in an exclude entry.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Coord {
    Task(Task),
    Arch(Arch),
    Hidden(u32),
    Granule(u32),
    Purkinje(u32),
    Regime(Regime),
    CorePlasticity(f64),
    LrCore(f64),
    LrCb(f64),
    Seed(Seed),
    RegimeName(&'static str),
    Freeze(FreezePoint),
    Refresh(u32),
}

impl Coord {
    fn set(self, c: &mut Cell) {
        match self {
            Coord::Task(v) => c.task = v,
            Coord::Arch(v) => c.arch = v,
            Coord::Hidden(v) => c.hidden = v,
            Coord::Granule(v) => c.granule = v,
            Coord::Purkinje(v) => c.purkinje = v,
            Coord::Regime(v) => c.regime = v,
            Coord::CorePlasticity(v) => c.core_plasticity = v,
            Coord::LrCore(v) => c.lr_core = v,
            Coord::LrCb(v) => c.lr_cb = v,
            Coord::Seed(v) => c.seed = v,
            Coord::RegimeName(_) | Coord::Freeze(_) | Coord::Refresh(_) => {}
        }
    }

    fn matches(self, c: &Cell) -> bool {
        match self {
            Coord::Task(v) => c.task == v,
            Coord::Arch(v) => c.arch == v,
            Coord::Hidden(v) => c.hidden == v,
            Coord::Granule(v) => c.granule == v,
            Coord::Purkinje(v) => c.purkinje == v,
            Coord::Regime(v) => c.regime == v,
            Coord::CorePlasticity(v) => c.core_plasticity == v,
            Coord::LrCore(v) => c.lr_core == v,
            Coord::LrCb(v) => c.lr_cb == v,
            Coord::Seed(v) => c.seed == v,
            Coord::RegimeName(v) => c.regime.name() == v,
            Coord::Freeze(v) => c.regime != Regime::Simult && c.regime.freeze() == v,
            Coord::Refresh(v) => c.regime.refresh_every() == Some(v),
        }
    }
}

/// Every cell of the crossed factors (each a list of options, an option a list of values set
/// together), the last factor varying fastest.
fn product(factors: &[Vec<Vec<Coord>>]) -> Vec<Cell> {
    let start = Cell {
        task: Task::Dms,
        arch: Arch::Cbrnn,
        hidden: STUDY_SIZE,
        granule: 0,
        purkinje: STUDY_SIZE,
        regime: Regime::Simult,
        core_plasticity: 1.0,
        lr_core: 0.0,
        lr_cb: 0.0,
        seed: Seed(0),
    };
    factors.iter().fold(vec![start], |cells, factor| {
        cells
            .iter()
            .flat_map(|cell| {
                factor.iter().map(move |option| {
                    let mut c = *cell;
                    option.iter().for_each(|x| x.set(&mut c));
                    c
                })
            })
            .collect()
    })
}

/// A size axis: `grid.KEY`'s list, or the older `model.KEY` scalar (canonicalize leaves one).
fn sizes(c: &Checker, key: &str, list: Option<&[i64]>, scalar: Option<i64>) -> Result<Vec<u32>, SpecError> {
    let field = format!("grid.{key}");
    match (list, scalar) {
        (Some(vs), _) => {
            c.nonempty(&field, vs)?;
            vs.iter().map(|&v| c.positive(&field, v)).collect()
        }
        (None, Some(v)) => Ok(vec![c.positive(&format!("model.{key}"), v)?]),
        (None, None) => Err(c.invalid(&field, "(none)", "missing")),
    }
}

/// Keys zipped together, and the options (rows) of their values.
type ZipGroup = (BTreeSet<String>, Vec<Vec<Coord>>);

/// `grid.zip`'s rows grouped by the keys they name (rows naming the same keys vary together;
/// groups cross each other), each group with its keys and its options.
fn zip_groups(c: &Checker, rows: Option<&[toml::Table]>) -> Result<Vec<ZipGroup>, SpecError> {
    let Some(rows) = rows else { return Ok(Vec::new()) };
    if rows.is_empty() {
        return Err(c.invalid("grid.zip", "[]", "needs at least one row (or leave it out)"));
    }
    let mut groups: Vec<ZipGroup> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let field = format!("grid.zip[{i}]");
        if row.is_empty() {
            return Err(c.invalid(&field, "{}", "a row names at least one key"));
        }
        let keys: BTreeSet<String> = row.keys().cloned().collect();
        let mut option = Vec::new();
        for (key, v) in row {
            if !ZIPPABLE.contains(&key.as_str()) {
                return Err(c.invalid(
                    &format!("{field}.{key}"),
                    v,
                    &format!("cannot be zipped (zip takes {}; the other keys cross, and grid.exclude drops cells)", ZIPPABLE.join(", ")),
                ));
            }
            option.push(c.coord(&format!("{field}.{key}"), key, v)?);
        }
        match groups.iter_mut().find(|(k, _)| *k == keys) {
            Some((_, options)) => options.push(option),
            None => {
                if let Some((other, _)) = groups.iter().find(|(k, _)| !k.is_disjoint(&keys)) {
                    return Err(c.invalid(
                        &field,
                        toml::Value::Table(row.clone()),
                        &format!(
                            "names {} as other rows do, but with other keys ({}); rows that zip a key must name the same keys",
                            keys.intersection(other).cloned().collect::<Vec<_>>().join(", "),
                            other.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                groups.push((keys, vec![option]));
            }
        }
    }
    Ok(groups)
}

/// One `grid.exclude` entry: a partial cell, every one of its values matching.
fn exclude_entry(c: &Checker, i: usize, entry: &toml::Table) -> Result<Vec<Coord>, SpecError> {
    let field = format!("grid.exclude[{i}]");
    if entry.is_empty() {
        return Err(c.invalid(&field, "{}", "an entry names at least one key (it would exclude every cell)"));
    }
    entry.iter().map(|(key, v)| c.coord(&format!("{field}.{key}"), key, v)).collect()
}

impl Checker<'_> {
    /// One value of grid key `key`, shown as `field`, checked as the axis checks it.
    fn coord(&self, field: &str, key: &str, v: &toml::Value) -> Result<Coord, SpecError> {
        let int = || v.as_integer().ok_or_else(|| self.invalid(field, v, "must be an integer"));
        let num = || v.as_float().or(v.as_integer().map(|i| i as f64)).ok_or_else(|| self.invalid(field, v, "must be a number"));
        let text = || v.as_str().ok_or_else(|| self.invalid(field, v, "must be a string"));
        let bound = format!("grid.{key}");
        let parsed = |why: String| self.invalid(field, v, &why);
        Ok(match key {
            "task" => Coord::Task(text()?.parse().map_err(parsed)?),
            "arch" => Coord::Arch(text()?.parse().map_err(parsed)?),
            "hidden" => Coord::Hidden(self.positive_as(field, &bound, int()?)?),
            "granule" => Coord::Granule(self.positive_as(field, &bound, int()?)?),
            "purkinje" => Coord::Purkinje(self.positive_as(field, &bound, int()?)?),
            "core_plasticity" => Coord::CorePlasticity(self.factor(field, num()?)?),
            "lr_core" => Coord::LrCore(self.rate_as(field, &bound, num()?)?),
            "lr_cb" => Coord::LrCb(self.rate_as(field, &bound, num()?)?),
            "seed" => Coord::Seed(self.seed(field, int()?)?),
            "regime" => Coord::RegimeName(regime_name(text()?).ok_or_else(|| self.invalid(field, v, REGIME_HINT))?),
            "freeze" => Coord::Freeze(text()?.parse().map_err(parsed)?),
            "refresh_every" => Coord::Refresh(self.positive_as(field, &bound, int()?)?),
            _ => {
                return Err(self.invalid(
                    field,
                    v,
                    &format!("not a grid key (expected one of: {}, freeze, refresh_every)", GRID_ORDER.join(", ")),
                ));
            }
        })
    }

    /// The reduced-plasticity factor: in (0, 1].
    fn factor(&self, field: &str, f: f64) -> Result<f64, SpecError> {
        if f.is_finite() && f > 0.0 && f <= 1.0 { Ok(f) } else { Err(self.invalid(field, Num(f), "must be in (0, 1]")) }
    }

    fn seed(&self, field: &str, s: i64) -> Result<Seed, SpecError> {
        let v = u64::try_from(s).map_err(|_| self.invalid(field, s, "seeds must be integers >= 0"))?;
        self.bounded_as(field, "grid.seed", v as f64, s).map(|()| Seed(v))
    }

    /// A range's `count`: a positive integer under the bound on every range.
    fn count(&self, field: &str, v: Option<&toml::Value>) -> Result<u32, SpecError> {
        let field = format!("{field}.count");
        let v = v.ok_or_else(|| self.invalid(&field, "(none)", "missing: a range needs a count"))?;
        let n = v.as_integer().ok_or_else(|| self.invalid(&field, v, "must be a positive integer"))?;
        self.positive_as(&field, "grid.count", n)
    }

    /// `grid.seed`: a list, or `{ from = S, count = N }` (S, S+1, ..., S+N-1).
    fn seeds(&self, v: &toml::Value) -> Result<Vec<Seed>, SpecError> {
        const FIELD: &str = "grid.seed";
        match v {
            toml::Value::Array(vs) => {
                self.nonempty(FIELD, vs)?;
                vs.iter()
                    .map(|s| self.seed(FIELD, s.as_integer().ok_or_else(|| self.invalid(FIELD, s, "seeds must be integers >= 0"))?))
                    .collect()
            }
            toml::Value::Table(t) => {
                if let Some(k) = t.keys().find(|k| !matches!(k.as_str(), "from" | "count")) {
                    return Err(self.invalid(&format!("{FIELD}.{k}"), &t[k], "unknown key of a seed range (expected from, count)"));
                }
                let from =
                    t.get("from").ok_or_else(|| self.invalid(&format!("{FIELD}.from"), "(none)", "missing: a seed range needs a start"))?;
                let from = self.seed(
                    &format!("{FIELD}.from"),
                    from.as_integer().ok_or_else(|| self.invalid(&format!("{FIELD}.from"), from, "must be an integer >= 0"))?,
                )?;
                let count = self.count(FIELD, t.get("count"))?;
                (0..u64::from(count)).map(|k| self.seed(FIELD, (from.0 + k) as i64)).collect()
            }
            other => Err(self.invalid(FIELD, other, "expected a list of seeds or a range { from = 0, count = 32 }")),
        }
    }

    /// A rate or factor axis: a list, `{ from = A, to = B, count = N }` (N evenly spaced values,
    /// both ends included) or `{ log_from = A, to = B, count = N }` (N log-spaced, both > 0).
    /// Values between the ends are kept to 12 significant digits (0.01, not 0.010000000000000002),
    /// so they read as written in cell keys. Each value is checked by `check`.
    fn float_axis(
        &self,
        field: &str,
        v: Option<&toml::Value>,
        check: impl Fn(&str, f64) -> Result<f64, SpecError>,
    ) -> Result<Vec<f64>, SpecError> {
        let v = v.ok_or_else(|| self.invalid(field, "(none)", "missing"))?;
        let number = |f: &str, x: &toml::Value| {
            x.as_float().or(x.as_integer().map(|i| i as f64)).ok_or_else(|| self.invalid(f, x, "must be a number"))
        };
        let values = match v {
            toml::Value::Array(vs) => {
                self.nonempty(field, vs)?;
                vs.iter().map(|x| number(field, x)).collect::<Result<Vec<_>, _>>()?
            }
            toml::Value::Table(t) => {
                let log = t.contains_key("log_from");
                let start = if log { "log_from" } else { "from" };
                if let Some(k) = t.keys().find(|k| ![start, "to", "count"].contains(&k.as_str())) {
                    return Err(self.invalid(
                        &format!("{field}.{k}"),
                        &t[k],
                        "unknown key of a range (expected from, to, count or log_from, to, count)",
                    ));
                }
                let get = |k: &str| {
                    let f = format!("{field}.{k}");
                    t.get(k)
                        .ok_or_else(|| self.invalid(&f, "(none)", "missing: a range needs from (or log_from), to and count"))
                        .and_then(|x| number(&f, x))
                };
                let (a, b, n) = (get(start)?, get("to")?, self.count(field, t.get("count"))?);
                if log && !(a > 0.0 && b > 0.0) {
                    return Err(self.invalid(field, v, "a log-spaced range needs log_from > 0 and to > 0"));
                }
                if n == 1 && a != b {
                    return Err(self.invalid(&format!("{field}.count"), 1, "a range of one value needs from = to (or write a list)"));
                }
                let at = |k: u32| {
                    if k == 0 {
                        return a;
                    }
                    if k + 1 == n {
                        return b;
                    }
                    let t = f64::from(k) / f64::from(n - 1);
                    let x = if log { (a.ln() + t * (b.ln() - a.ln())).exp() } else { a + t * (b - a) };
                    format!("{x:.11e}").parse().expect("a formatted float parses")
                };
                (0..n).map(at).collect()
            }
            other => Err(self.invalid(field, other, "expected a list, { from, to, count } or { log_from, to, count }"))?,
        };
        values.into_iter().map(|x| check(field, x)).collect()
    }
}
