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

/// Two groups compared: Welch's t-test, Mann-Whitney U (two-sided, asymptotic normal with tie
/// and continuity correction, as scipy's `mannwhitneyu(method="asymptotic")`), effect sizes.
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
            t.mwu_p = if all_tied { nan } else { p };
        }
        t
    }
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
