//! The time constants of an autocorrelation: one and two exponentials fitted by variable
//! projection (bounded amplitudes in closed form, time constants by a grid then a pattern
//! search in log space), the better chosen by AIC. Pure arithmetic on host vectors.

/// The better of one and two exponentials fitted to an autocorrelation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct TimescaleFit {
    /// The time constant in steps; the slower one when two exponentials won.
    pub(crate) tau: f64,
    /// 1 or 2.
    pub(crate) exponentials: u8,
}

/// Fits one and two exponentials to autocorrelations at lags 0..=fit_lags by variable
/// projection: for given time constants the amplitudes solve a small bounded least-squares
/// problem in closed form; the time constants are searched on a log grid, then refined by a
/// pattern search in log space.
pub(crate) struct ExpFitter {
    lags: usize,
    /// ln tau of the grid points.
    grid: Vec<f64>,
    /// exp(-t / tau_i) for every grid point i, [grid][lag].
    basis: Vec<Vec<f64>>,
    /// Inner products of the grid's basis vectors, [grid][grid].
    gram: Vec<Vec<f64>>,
}

/// Bounds of every time constant searched, in steps. The upper one is the study's fit bound.
const TAU_MIN: f64 = 0.05;
const TAU_MAX: f64 = 500.0;
/// Log-spaced grid points over [TAU_MIN, TAU_MAX] that seed the search.
const TAU_GRID: usize = 48;
/// The pattern search stops when its step in ln tau falls below this.
const SEARCH_TOLERANCE: f64 = 1e-9;
/// A residual sum of squares per point below this counts as a perfect fit (so exact data does
/// not pick two exponentials on rounding noise).
const RSS_FLOOR: f64 = 1e-24;

impl ExpFitter {
    /// A fitter for lags 0..=fit_lags.
    pub(crate) fn new(fit_lags: usize) -> Self {
        let lags = fit_lags + 1;
        let (lo, hi) = (TAU_MIN.ln(), TAU_MAX.ln());
        let grid: Vec<f64> = (0..TAU_GRID).map(|i| lo + (hi - lo) * i as f64 / (TAU_GRID - 1) as f64).collect();
        let basis: Vec<Vec<f64>> = grid.iter().map(|&u| decay(u, lags)).collect();
        let gram = basis.iter().map(|a| basis.iter().map(|b| dot(a, b)).collect()).collect();
        ExpFitter { lags, grid, basis, gram }
    }

    /// The better fit by AIC (n ln(RSS / n) + 2k) of a e^{-t/tau} and a1 e^{-t/tau1} + a2
    /// e^{-t/tau2} to a normalised autocorrelation's first fit_lags + 1 lags, amplitudes
    /// non-negative with a sum of at most 1 and time constants in [TAU_MIN, TAU_MAX]; None when
    /// the autocorrelation is too short or not finite.
    pub(crate) fn fit(&self, ac: &[f64]) -> Option<TimescaleFit> {
        let y = ac.get(..self.lags).filter(|y| y.len() >= 2 && y.iter().all(|v| v.is_finite()))?;
        let yy = dot(y, y);
        let b: Vec<f64> = self.basis.iter().map(|e| dot(y, e)).collect();
        let step = self.grid[1] - self.grid[0];

        let one = |u: [f64; 1]| {
            let e = decay(u[0], self.lags);
            one_amplitude(dot(y, &e), dot(&e, &e), yy).0
        };
        let start =
            (0..TAU_GRID).map(|i| ([self.grid[i]], one_amplitude(b[i], self.gram[i][i], yy).0)).min_by(|a, b| a.1.total_cmp(&b.1))?;
        let (u1, _) = self.refine(one, start, step);

        let two = |u: [f64; 2]| {
            let (e1, e2) = (decay(u[0], self.lags), decay(u[1], self.lags));
            let g = [dot(&e1, &e1), dot(&e1, &e2), dot(&e2, &e2)];
            two_amplitudes([dot(y, &e1), dot(y, &e2)], g, yy).0
        };
        let start = (0..TAU_GRID)
            .flat_map(|i| (i + 1..TAU_GRID).map(move |j| (i, j)))
            .map(|(i, j)| {
                let g = [self.gram[i][i], self.gram[i][j], self.gram[j][j]];
                ([self.grid[i], self.grid[j]], two_amplitudes([b[i], b[j]], g, yy).0)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        let (u2, _) = self.refine(two, start, step);

        // the residuals themselves, not the normal equations, decide between the models
        let e = decay(u1[0], self.lags);
        let (_, a) = one_amplitude(dot(y, &e), dot(&e, &e), yy);
        let rss1: f64 = y.iter().zip(&e).map(|(y, e)| (y - a * e).powi(2)).sum();
        let (e1, e2) = (decay(u2[0], self.lags), decay(u2[1], self.lags));
        let g = [dot(&e1, &e1), dot(&e1, &e2), dot(&e2, &e2)];
        let (_, [a1, a2]) = two_amplitudes([dot(y, &e1), dot(y, &e2)], g, yy);
        let rss2: f64 = y.iter().zip(e1.iter().zip(&e2)).map(|(y, (e1, e2))| (y - a1 * e1 - a2 * e2).powi(2)).sum();

        let n = self.lags as f64;
        let aic = |rss: f64, k: f64| n * (rss / n).max(RSS_FLOOR).ln() + 2.0 * k;
        if aic(rss2, 4.0) < aic(rss1, 2.0) {
            Some(TimescaleFit { tau: u2[0].max(u2[1]).exp(), exponentials: 2 })
        } else {
            Some(TimescaleFit { tau: u1[0].exp(), exponentials: 1 })
        }
    }

    /// Pattern search from `start` (point, value) over ln tau within the bounds: tries a step
    /// along each axis and the diagonals, halves the step when none improves.
    fn refine<const D: usize>(&self, f: impl Fn([f64; D]) -> f64, start: ([f64; D], f64), mut step: f64) -> ([f64; D], f64) {
        let (lo, hi) = (self.grid[0], self.grid[TAU_GRID - 1]);
        let mut directions: Vec<[f64; D]> = Vec::new();
        for signs in 0..3usize.pow(D as u32) {
            // every non-zero vector with entries in {-1, 0, 1}
            let mut d = [0.0; D];
            let mut code = signs;
            for v in &mut d {
                *v = (code % 3) as f64 - 1.0;
                code /= 3;
            }
            if d.iter().any(|&v| v != 0.0) {
                directions.push(d);
            }
        }
        let (mut best, mut value) = start;
        while step > SEARCH_TOLERANCE {
            let moved = directions.iter().find_map(|d| {
                let mut p = best;
                for (v, dv) in p.iter_mut().zip(d) {
                    *v = (*v + step * dv).clamp(lo, hi);
                }
                let fp = f(p);
                (fp < value).then_some((p, fp))
            });
            match moved {
                Some((p, fp)) => (best, value) = (p, fp),
                None => step *= 0.5,
            }
        }
        (best, value)
    }
}

/// exp(-t / tau) at lags 0..n for tau = exp(u).
fn decay(u: f64, n: usize) -> Vec<f64> {
    let r = (-(-u).exp()).exp();
    std::iter::successors(Some(1.0), |v| Some(v * r)).take(n).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The least-squares amplitude in [0, 1] of one basis vector e (b = y.e, g = e.e, yy = y.y)
/// and the residual sum of squares it leaves.
fn one_amplitude(b: f64, g: f64, yy: f64) -> (f64, f64) {
    let a = if g > 0.0 { (b / g).clamp(0.0, 1.0) } else { 0.0 };
    ((yy - 2.0 * a * b + a * a * g).max(0.0), a)
}

/// The least-squares amplitudes of two basis vectors with a1, a2 >= 0 and a1 + a2 <= 1 (b = the
/// products with y, g = [e1.e1, e1.e2, e2.e2]) and the residual sum of squares: the
/// unconstrained optimum when feasible, else the best point on the triangle's edges (the
/// problem is convex).
fn two_amplitudes(b: [f64; 2], g: [f64; 3], yy: f64) -> (f64, [f64; 2]) {
    let rss = |a: [f64; 2]| {
        let quad = a[0] * a[0] * g[0] + 2.0 * a[0] * a[1] * g[1] + a[1] * a[1] * g[2];
        (yy - 2.0 * (a[0] * b[0] + a[1] * b[1]) + quad).max(0.0)
    };
    let det = g[0] * g[2] - g[1] * g[1];
    if det > 1e-12 * g[0] * g[2] {
        let a = [(g[2] * b[0] - g[1] * b[1]) / det, (g[0] * b[1] - g[1] * b[0]) / det];
        if a[0] >= 0.0 && a[1] >= 0.0 && a[0] + a[1] <= 1.0 {
            return (rss(a), a);
        }
    }
    let along = |num: f64, den: f64| if den > 0.0 { (num / den).clamp(0.0, 1.0) } else { 0.0 };
    // a2 = 0, a1 = 0, and a1 = s, a2 = 1 - s
    let s = along(b[0] - b[1] - g[1] + g[2], g[0] - 2.0 * g[1] + g[2]);
    [[along(b[0], g[0]), 0.0], [0.0, along(b[1], g[2])], [s, 1.0 - s]]
        .into_iter()
        .map(|a| (rss(a), a))
        .min_by(|x, y| x.0.total_cmp(&y.0))
        .unwrap_or((yy, [0.0, 0.0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amplitudes_stay_in_their_triangle() {
        // y = 2 e1: the best feasible amplitudes are (1, 0)
        let (rss, a) = two_amplitudes([2.0, 0.0], [1.0, 0.0, 1.0], 4.0);
        assert_eq!(a, [1.0, 0.0]);
        assert!((rss - 1.0).abs() < 1e-12);
        // y = e1 + e2 (orthonormal): on the edge a1 + a2 = 1 at (0.5, 0.5)
        let (rss, a) = two_amplitudes([1.0, 1.0], [1.0, 0.0, 1.0], 2.0);
        assert_eq!(a, [0.5, 0.5]);
        assert!((rss - 0.5).abs() < 1e-12);
        // y = -e2: nothing negative
        let (_, a) = two_amplitudes([0.0, -1.0], [1.0, 0.0, 1.0], 1.0);
        assert_eq!(a, [0.0, 0.0]);
    }
}
