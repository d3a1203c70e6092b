"""Recomputes stats.parquet from trials.parquet and curves.parquet with numpy and scipy, and
compares every value within 1e-9 relative. Usage: stats_check.py DIR. Exits 1 on a mismatch.
`stats_check.py --pairs FILE` checks Mann-Whitney p-values and methods of sample pairs alone.

Independent of the Rust code: the per-trial measures, the grouping into conditions, the pairing
of comparisons, the tests and the Holm correction are all redone here from the documented
definitions (results/src/stats.rs, common/src/measures.rs). What is compared comes from
DIR/plan.json when present ({"pairs": [["cbrnn:reservoir", "rnn:simult"], ...],
"freeze_vs_simult": false}), else the default (CB-RNN against RNN, freeze points against simult)."""

import json
import math
import os
import sys
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
from scipy import stats as st

KEYS = ["task", "arch", "hidden", "granule", "purkinje", "regime", "freeze", "refresh_every",
        "core_plasticity", "lr_core", "lr_cb"]
MEASURES = ["max_n", "area_n", "epochs_to_half_max_n", "max_level", "final_level", "auc_level_epochs", "epochs_to_half_max"]

def mwu_p(a, b):
    """The Mann-Whitney p and its method as docs/results.md defines them: scipy's auto choice,
    with the exact permutation test where auto would approximate a small sample with ties."""
    pooled = np.concatenate([a, b])
    if len(set(pooled)) == 1:
        return math.nan, None
    ties = len(set(pooled)) < len(pooled)
    auto = st.mannwhitneyu(a, b, alternative="two-sided").pvalue
    if len(a) > 8 and len(b) > 8:
        return auto, "asymptotic"
    if not ties:
        assert auto == st.mannwhitneyu(a, b, alternative="two-sided", method="exact").pvalue
        return auto, "exact"
    perm = st.mannwhitneyu(a, b, alternative="two-sided", method=st.PermutationMethod(n_resamples=np.inf))
    return perm.pvalue, "permutation"


if len(sys.argv) > 2 and sys.argv[1] == "--pairs":
    # mwu_check mode: one "a;b;p;method" line per pair (values comma-separated) in the file.
    bad = 0
    lines = open(sys.argv[2]).read().splitlines()
    for line in lines:
        xa, xb, p, method = line.split(";")
        a, b = np.array([float(v) for v in xa.split(",")]), np.array([float(v) for v in xb.split(",")])
        want_p, want_method = mwu_p(a, b)
        got_p = float(p)
        ok = method == (want_method or "") and (math.isclose(got_p, want_p, rel_tol=1e-9, abs_tol=1e-12)
                                                 or (math.isnan(got_p) and math.isnan(want_p)))
        if not ok:
            bad += 1
            print(f"a={xa} b={xb}: got p={got_p} {method!r}, scipy says p={want_p} {want_method!r}")
    print(f"checked {len(lines)} pairs, {bad} disagree")
    sys.exit(1 if bad else 0)


d = sys.argv[1]
trials = pq.read_table(f"{d}/trials.parquet").to_pylist()
curves = pq.read_table(f"{d}/curves.parquet").to_pylist()
got = pq.read_table(f"{d}/stats.parquet").to_pylist()

by_trial = defaultdict(list)
for c in curves:
    by_trial[c["trial_id"]].append(c)


class Trial:
    def __init__(self, row, epochs):
        epochs = sorted(epochs, key=lambda c: c["epoch"])
        budget = max(row["epochs_budget"], epochs[-1]["epoch"])
        solved = np.zeros(budget)
        for c in epochs:
            if c["solved"]:
                solved[c["epoch"] - 1] = c["level"]
        self.reached = np.maximum.accumulate(solved)
        self.max_level = float(self.reached[-1])
        last = epochs[-1]
        self.final_level = float(last["level"] + (1 if last["solved"] else 0))
        self.auc = float(np.trapezoid(self.reached))
        # the lab's curve: the level trained in each epoch, the last carried to the budget
        trained = np.zeros(budget)
        for c in epochs:
            trained[c["epoch"] - 1:] = c["level"]
        self.trained = trained
        self.max_n = float(trained.max())
        self.area_n = float(np.trapezoid(trained))

    def value(self, measure, half):
        if measure == "max_n":
            return self.max_n
        if measure == "area_n":
            return self.area_n
        if measure == "epochs_to_half_max_n":
            if half <= 0:
                return math.nan
            hit = np.nonzero(self.trained >= half)[0]
            return float(hit[0] + 1) if len(hit) else math.nan
        if measure == "max_level":
            return self.max_level
        if measure == "final_level":
            return self.final_level
        if measure == "auc_level_epochs":
            return self.auc
        if half <= 0:
            return math.nan
        hit = np.nonzero(self.reached >= half)[0]
        return float(hit[0] + 1) if len(hit) else float(len(self.reached) + 1)


groups = {}
for row in trials:
    if by_trial.get(row["trial_id"]):
        groups.setdefault(tuple(row[k] for k in KEYS), []).append(Trial(row, by_trial[row["trial_id"]]))


def key_dict(key):
    return dict(zip(KEYS, key))


def half_max(measure, members):
    if measure == "epochs_to_half_max":
        return max(t.max_level for t in members) / 2
    if measure == "epochs_to_half_max_n":
        return max(t.max_n for t in members) / 2
    return None


def values(members, measure, half):
    v = [t.value(measure, half or 0.0) for t in members]
    return np.array([x for x in v if math.isfinite(x)])


def summary(v):
    n = len(v)
    mean = float(np.mean(v)) if n else math.nan
    sd = float(np.std(v, ddof=1)) if n >= 2 else math.nan
    sem = sd / math.sqrt(n) if n else math.nan
    hw = st.t.ppf(0.975, n - 1) * sem if n >= 2 else math.nan
    return dict(n=n, mean=mean, sd=sd, sem=sem, ci95_low=mean - hw, ci95_high=mean + hw)


def tests(a, b):
    sa, sb = summary(a), summary(b)
    out = dict(n_a=sa["n"], n_b=sb["n"], mean_a=sa["mean"], mean_b=sb["mean"], sd_a=sa["sd"], sd_b=sb["sd"])
    nan = math.nan
    out.update(welch_t=nan, welch_df=nan, welch_p=nan, mwu_u=nan, mwu_p=nan, cohens_d=nan, rank_biserial=nan)
    if len(a) < 2 or len(b) < 2:
        return out
    if np.var(a) + np.var(b) > 0:
        w = st.ttest_ind(a, b, equal_var=False)
        pooled = ((len(a) - 1) * np.var(a, ddof=1) + (len(b) - 1) * np.var(b, ddof=1)) / (len(a) + len(b) - 2)
        out.update(welch_t=w.statistic, welch_df=w.df, welch_p=w.pvalue,
                   cohens_d=(np.mean(a) - np.mean(b)) / math.sqrt(pooled))
    m = st.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True)
    out.update(mwu_u=m.statistic, rank_biserial=2 * m.statistic / (len(a) * len(b)) - 1)
    out["mwu_p"], out["mwu_method"] = mwu_p(a, b)
    return out



def holm(ps):
    idx = [i for i, p in enumerate(ps) if not math.isnan(p)]
    idx.sort(key=lambda i: ps[i])
    out, running = [math.nan] * len(ps), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - rank) * ps[i]))
        out[i] = running
    return out


expected = {}
for key, members in groups.items():
    for m in MEASURES:
        half = half_max(m, members)
        row = dict(kind="condition", comparison=None, half_max_level=half, **summary(values(members, m, half)))
        expected[("condition", None, key, None, m)] = row

plan = {"pairs": [["cbrnn", "rnn"]], "freeze_vs_simult": True}
if os.path.exists(f"{d}/plan.json"):
    plan = json.load(open(f"{d}/plan.json"))


def side(name):
    arch, _, regime = name.partition(":")
    return arch, regime or None


def selects(s, k):
    return k["arch"] == s[0] and (s[1] is None or k["regime"] == s[1])


pairs = []
for sa, sb in plan["pairs"]:
    a_side, b_side = side(sa), side(sb)
    skip = {"arch", "hidden"} if a_side[1] is None and b_side[1] is None else {"arch", "hidden", "regime", "freeze", "refresh_every"}
    for a in groups:
        ka = key_dict(a)
        for b in groups:
            kb = key_dict(b)
            if selects(a_side, ka) and selects(b_side, kb) and all(ka[k] == kb[k] for k in KEYS if k not in skip):
                pairs.append((f"{sa}_vs_{sb}", a, b))
if plan["freeze_vs_simult"]:
    for a in groups:
        ka = key_dict(a)
        for b in groups:
            kb = key_dict(b)
            if ka["regime"] != "simult" and kb["regime"] == "simult" and all(
                    ka[k] == kb[k] for k in KEYS if k not in {"regime", "freeze", "refresh_every"}):
                pairs.append(("freeze_vs_simult", a, b))
for comparison, a, b in pairs:
    for m in MEASURES:
        half = half_max(m, groups[a] + groups[b])
        row = dict(kind="comparison", comparison=comparison, half_max_level=half,
                   **tests(values(groups[a], m, half), values(groups[b], m, half)))
        expected[("comparison", comparison, a, b, m)] = row
for m in MEASURES:
    fam = [r for k, r in expected.items() if k[0] == "comparison" and k[4] == m]
    for test in ["welch", "mwu"]:
        for r, h in zip(fam, holm([r[f"{test}_p"] for r in fam])):
            r[f"{test}_p_holm"] = h


worst, worst_at = 0.0, ""


def reference_matches(b, reference):
    """Whether condition key b is the one stats.parquet names as `reference` (its condition
    string: every key=value of b that the condition string carries)."""
    kb = key_dict(b)
    parts = dict(p.split("=", 1) for p in reference.split(" "))
    checks = {"task": kb["task"], "arch": kb["arch"], "regime": kb["regime"], "freeze": kb["freeze"]}
    return all(parts.get(k) == str(v) for k, v in checks.items() if k in parts)


def same(x, y, col=""):
    global worst, worst_at
    if x is None or y is None:
        return x is None and y is None
    if isinstance(x, float) or isinstance(y, float):
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        if x != y and abs(x - y) / max(abs(x), abs(y)) > worst:
            worst, worst_at = abs(x - y) / max(abs(x), abs(y)), col
        return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
    return x == y


errors = []
sweeps = {t["sweep_id"] for t in trials}
errors += [f"row with sweep_id {g['sweep_id']!r}" for g in got if g["sweep_id"] not in sweeps]
seen = set()
by_condition = {}
for key, members in groups.items():
    by_condition[" ".join(f"{k}={v}" for k, v in zip(KEYS, key))] = key
for g in got:
    ref = None
    if g["kind"] == "comparison":
        # the reference's keys: group a's, with what the comparison may change taken from b
        ref = next((b for (kind, c, a, b, m) in expected if kind == "comparison" and c == g["comparison"]
                    and a == tuple(g[k] for k in KEYS) and m == g["measure"] and reference_matches(b, g["reference"])), None)
    k = (g["kind"], g["comparison"], tuple(g[k] for k in KEYS), ref, g["measure"])
    if k in seen:
        errors.append(f"duplicate row {k}")
    seen.add(k)
    e = expected.get(k)
    if e is None:
        errors.append(f"unexpected row {k}")
        continue
    for col, want in e.items():
        if not same(g[col], want, col):
            errors.append(f"{k}: {col} = {g[col]!r}, scipy/numpy say {want!r}")
# trials.parquet carries each trial's own AUC and epochs to half its own highest level (cbsweep's
# measures), and the lab's: max_n, area_n, epochs to half the largest max_n of the trial's task.
curved = [(row, Trial(row, by_trial[row["trial_id"]])) for row in trials if by_trial.get(row["trial_id"])]
task_max_n = defaultdict(float)
for row, t in curved:
    task_max_n[row["task"]] = max(task_max_n[row["task"]], t.max_n)
for row in trials:
    if not by_trial.get(row["trial_id"]) and (row["auc_level_epochs"] is not None or row["max_n"] is not None):
        errors.append(f"trial {row['trial_id']} without a curve has a measure")
for row, t in curved:
    for col, want in [("auc_level_epochs", t.auc), ("epochs_to_half_max", t.value("epochs_to_half_max", t.max_level / 2)),
                      ("max_n", t.max_n), ("area_n", t.area_n),
                      ("epochs_to_half_max_n", t.value("epochs_to_half_max_n", task_max_n[row["task"]] / 2))]:
        if not same(None if row[col] is None else float(row[col]), want, col):
            errors.append(f"trial {row['trial_id']}: {col} {row[col]} != {want}")
missing = set(expected) - seen
errors += [f"missing row {k}" for k in sorted(missing, key=str)]
print("\n".join(errors[:40]))
if errors:
    print(f"{len(errors)} mismatches")
    sys.exit(1)
print(f"checked {len(got)} rows (largest relative difference {worst:.1e}, in {worst_at})")
