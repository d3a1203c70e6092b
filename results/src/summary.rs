//! Statistics of groups of per-trial values, with statrs' distributions (no hand-written special
//! functions): a group's mean, sample standard deviation and t-based 95% interval (`Summary`),
//! and two groups compared (`Tests`: Welch's t-test, the Mann-Whitney U test, Cohen's d, the
//! rank-biserial correlation), and Holm's step-down adjustment. Knows nothing of trials or
//! tables.

use statrs::distribution::{ContinuousCDF, StudentsT};
use statrs::stats_tests::Alternative;
use statrs::stats_tests::mannwhitneyu::{MannWhitneyUMethod, mannwhitneyu};

/// Mean, spread and t-based 95% interval of one group of per-trial values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: u32,
    pub mean: f64,
    /// Sample standard deviation (n - 1 in the denominator).
    pub sd: f64,
    pub sem: f64,
    pub ci95_low: f64,
    pub ci95_high: f64,
}

/// How a Mann-Whitney p-value was computed (stats.parquet's `mwu_method`). The choice follows
/// scipy 1.17's `mannwhitneyu(method="auto")` (`_mwu_choose_method`): asymptotic when both groups
/// have more than 8 values; otherwise exact when no value is tied. Where scipy's auto falls back
/// to the normal approximation for a small sample with ties, cbsweep uses the exact permutation
/// distribution instead (every split of the pooled midranks, counted by the same recursion; what
/// scipy computes with `method=PermutationMethod(n_resamples=np.inf)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MwuMethod {
    /// The exact null distribution of U without ties: p = 2 P(U >= max(U1, U2)), at most 1.
    Exact,
    /// The normal approximation with tie and continuity correction (`method="asymptotic"`).
    Asymptotic,
    /// The exact conditional distribution of U1 over every split of the pooled midranks:
    /// p = 2 min(P(U1 >= u1), P(U1 <= u1)), at most 1.
    Permutation,
}

impl MwuMethod {
    pub fn name(&self) -> &'static str {
        match self {
            MwuMethod::Exact => "exact",
            MwuMethod::Asymptotic => "asymptotic",
            MwuMethod::Permutation => "permutation",
        }
    }
}

/// Two groups compared: Welch's t-test, Mann-Whitney U (two-sided; exact, asymptotic or
/// permutation as `MwuMethod` says), effect sizes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tests {
    pub a: Summary,
    pub b: Summary,
    pub welch_t: f64,
    pub welch_df: f64,
    pub welch_p: f64,
    /// Filled in across a family of comparisons (`holm`) by whoever holds the family.
    pub welch_p_holm: f64,
    pub mwu_u: f64,
    pub mwu_p: f64,
    pub mwu_p_holm: f64,
    /// How `mwu_p` was computed; None when it is NaN (too few values, or all tied).
    pub mwu_method: Option<MwuMethod>,
    pub cohens_d: f64,
    pub rank_biserial: f64,
}

/// Mean and sample standard deviation (n - 1 in the denominator) of `values`: NaN mean when
/// there are none, NaN sd when there are fewer than two.
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    let mean = if n == 0 { f64::NAN } else { values.iter().sum::<f64>() / n as f64 };
    let sd = if n < 2 { f64::NAN } else { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() };
    (mean, sd)
}

/// Holm-Bonferroni adjusted p-values, in the order given. NaN stays NaN and is not counted.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let m = order.len();
    let mut out = vec![f64::NAN; p.len()];
    let mut running = 0.0_f64;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

impl Summary {
    /// Summary of finite values (the caller drops NaN).
    pub fn of(values: &[f64]) -> Summary {
        let n = values.len();
        let (mean, sd) = mean_sd(values);
        let sem = sd / (n as f64).sqrt();
        let half_width = t_quantile(0.975, n as f64 - 1.0) * sem;
        Summary { n: n as u32, mean, sd, sem, ci95_low: mean - half_width, ci95_high: mean + half_width }
    }
}

impl Tests {
    /// Group a against group b (finite values; the caller drops NaN).
    pub fn of(a: &[f64], b: &[f64]) -> Tests {
        let (sa, sb) = (Summary::of(a), Summary::of(b));
        let nan = f64::NAN;
        let mut t = Tests {
            a: sa,
            b: sb,
            welch_t: nan,
            welch_df: nan,
            welch_p: nan,
            welch_p_holm: nan,
            mwu_u: nan,
            mwu_p: nan,
            mwu_p_holm: nan,
            mwu_method: None,
            cohens_d: nan,
            rank_biserial: nan,
        };
        if a.len() < 2 || b.len() < 2 {
            return t;
        }
        let (na, nb) = (a.len() as f64, b.len() as f64);
        let (qa, qb) = (sa.sd.powi(2) / na, sb.sd.powi(2) / nb);
        if qa + qb > 0.0 {
            t.welch_t = (sa.mean - sb.mean) / (qa + qb).sqrt();
            t.welch_df = (qa + qb).powi(2) / (qa.powi(2) / (na - 1.0) + qb.powi(2) / (nb - 1.0));
            t.welch_p = StudentsT::new(0.0, 1.0, t.welch_df).map(|d| 2.0 * d.sf(t.welch_t.abs())).unwrap_or(nan);
            let pooled = ((na - 1.0) * sa.sd.powi(2) + (nb - 1.0) * sb.sd.powi(2)) / (na + nb - 2.0);
            t.cohens_d = (sa.mean - sb.mean) / pooled.sqrt();
        }
        if let Ok((u, p)) = mannwhitneyu(a, b, MannWhitneyUMethod::AsymptoticInclContinuityCorrection, Alternative::TwoSided) {
            t.mwu_u = u;
            t.rank_biserial = 2.0 * u / (na * nb) - 1.0;
            let all_tied = a.iter().chain(b).all(|v| *v == a[0]);
            if !all_tied {
                let ranks = doubled_midranks(a, b);
                let tied = {
                    let mut sorted = ranks.clone();
                    sorted.sort_unstable();
                    sorted.windows(2).any(|w| w[0] == w[1])
                };
                let (method, p) = if a.len() > 8 && b.len() > 8 {
                    (MwuMethod::Asymptotic, p)
                } else if !tied {
                    (MwuMethod::Exact, exact_p(&ranks, a.len(), false))
                } else {
                    (MwuMethod::Permutation, exact_p(&ranks, a.len(), true))
                };
                t.mwu_p = p;
                t.mwu_method = Some(method);
            }
        }
        t
    }
}

/// Twice the midranks of a's then b's values in the pooled sample (integers: a tie of ranks 3
/// and 4 is 7 and 7).
fn doubled_midranks(a: &[f64], b: &[f64]) -> Vec<u64> {
    let pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    let mut order: Vec<usize> = (0..pooled.len()).collect();
    order.sort_by(|&i, &j| pooled[i].total_cmp(&pooled[j]));
    let mut ranks = vec![0u64; pooled.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && pooled[order[j + 1]] == pooled[order[i]] {
            j += 1;
        }
        // ranks i+1 ..= j+1 share their mean; doubled: i + j + 2
        for &k in &order[i..=j] {
            ranks[k] = (i + j + 2) as u64;
        }
        i = j + 1;
    }
    ranks
}

/// The two-sided p-value of the rank sum of the first `n_a` of `ranks` (doubled midranks) against
/// its exact distribution over every choice of `n_a` of them, counted by the standard recursion
/// (ways[k][s]: the ways to choose k of the ranks seen so far with doubled sum s). Without
/// `ties_conditional` (no ties) p = 2 P(U >= max(U1, U2)) as scipy's exact method; with it
/// p = 2 min(P(U1 >= u1), P(U1 <= u1)) as scipy's exact permutation test. Counts on the
/// smaller group (the same distribution by symmetry); probabilities in f64.
fn exact_p(ranks: &[u64], n_a: usize, ties_conditional: bool) -> f64 {
    let n = ranks.len();
    let (chosen, k): (Vec<u64>, usize) = if n_a <= n - n_a { (ranks[..n_a].to_vec(), n_a) } else { (ranks[n_a..].to_vec(), n - n_a) };
    let observed: u64 = chosen.iter().sum();
    let max_sum: u64 = {
        let mut sorted = ranks.to_vec();
        sorted.sort_unstable_by(|x, y| y.cmp(x));
        sorted[..k].iter().sum()
    };
    let width = max_sum as usize + 1;
    let mut ways = vec![0f64; (k + 1) * width];
    ways[0] = 1.0;
    for (seen, &r) in ranks.iter().enumerate() {
        let r = r as usize;
        for j in (1..=k.min(seen + 1)).rev() {
            for s in (r..width).rev() {
                let from = ways[(j - 1) * width + s - r];
                if from != 0.0 {
                    ways[j * width + s] += from;
                }
            }
        }
    }
    let dist = &ways[k * width..];
    let total: f64 = dist.iter().sum();
    let at_least = |s: u64| dist[s as usize..].iter().sum::<f64>() / total;
    let at_most = |s: u64| dist[..=s as usize].iter().sum::<f64>() / total;
    let p = if ties_conditional {
        2.0 * at_least(observed).min(at_most(observed))
    } else {
        // U = sum/2 - k(k+1)/2, so U >= max(U, k m - U) is a sum at least max(sum, mirror).
        let mirror = 2 * (k as u64) * (n as u64 + 1) - observed;
        2.0 * at_least(observed.max(mirror))
    };
    p.min(1.0)
}

/// The `q` quantile of Student's t with `df` degrees of freedom (NaN when df is not positive).
fn t_quantile(q: f64, df: f64) -> f64 {
    StudentsT::new(0.0, 1.0, df).map(|d| d.inverse_cdf(q)).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degenerate_groups_give_nan_not_a_panic() {
        let t = Tests::of(&[3.0], &[1.0, 2.0]);
        assert!(t.welch_t.is_nan() && t.welch_p.is_nan() && t.mwu_p.is_nan() && t.cohens_d.is_nan() && t.rank_biserial.is_nan());
        assert_eq!((t.a.n, t.b.n, t.a.mean), (1, 2, 3.0));
        let t = Tests::of(&[2.0, 2.0, 2.0], &[5.0, 5.0]);
        assert!(t.welch_t.is_nan() && t.welch_df.is_nan() && t.welch_p.is_nan() && t.cohens_d.is_nan());
        assert!(t.mwu_p.is_finite(), "the ranks still separate the groups");
        let t = Tests::of(&[4.0, 4.0], &[4.0, 4.0, 4.0]);
        assert!(t.mwu_p.is_nan() && t.welch_p.is_nan());
        assert_eq!(t.rank_biserial, 0.0);
        let t = Tests::of(&[], &[]);
        assert!(t.a.mean.is_nan() && t.welch_p.is_nan());
        let s = Summary::of(&[7.0]);
        assert!(s.sd.is_nan() && s.ci95_low.is_nan());
    }

    #[test]
    fn holm_keeps_order_is_monotone_and_skips_nan() {
        let h = holm(&[0.01, f64::NAN, 0.04, 0.03, 0.5]);
        assert!(h[1].is_nan());
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        assert!(close(h[0], 0.04) && close(h[3], 0.09) && close(h[2], 0.09) && close(h[4], 0.5), "{h:?}");
    }
}
