//! Timescales per population, from a long drive with Bernoulli(0.5) bits: each unit's time
//! constant (`fits`) from its autocorrelation, the population's 1/e lag from that of its summed
//! activity. The autocovariances are summed chunk by chunk (FFT), never keeping the series.

use super::fits::ExpFitter;
use crate::input::{PackedInput, host_tensor};
use crate::model::{CbOutput, PackedModel, Population, Unroll};
use crate::tasks::{self, Stream};
use cbsweep_common::{AnalysisPlan, TrialSpec};
use tch::{Device, Kind, TchError, Tensor};

/// Autocovariance at lags 0..=max_lag of many series fed in chunks of time ([..., T] each).
/// Each series is centred on its own mean and lag k is averaged over its n - k pairs (as the
/// study's code does), without keeping the series: lagged products are summed per chunk by a
/// float32 FFT of values shifted near zero, across the chunk boundary through the previous
/// chunk's last max_lag values; the sums are float64.
pub(crate) struct Autocovariance {
    max_lag: i64,
    /// Samples per series so far.
    n: i64,
    sums: Option<Sums>,
}

/// Running sums of `Autocovariance`, over the values shifted by `shift`, y = x - shift.
struct Sums {
    /// The series' mean over its first chunk (float32), [...].
    shift: Tensor,
    /// Sum of y (float64), [...].
    total: Tensor,
    /// Sum over t of y_t y_{t+k} (float64), [..., max_lag + 1].
    products: Tensor,
    /// The first max_lag values of y (fewer while the series is shorter; float64), [..., <= max_lag].
    head: Tensor,
    /// The last max_lag values of y, zeros before the start (float32), [..., max_lag].
    tail: Tensor,
}

/// A series whose standard deviation is below this fraction of its mean, or whose variance is
/// below VARIANCE_FLOOR, has no variance to speak of (float32 rounding, not dynamics): skipped.
const RELATIVE_STD_FLOOR: f64 = 1e-5;
const VARIANCE_FLOOR: f64 = 1e-24;

/// The FFT length the timescale drive's chunks are cut for (a chunk is this less twice the
/// units' lags); bounds its memory.
const TIMESCALE_FFT_LEN: i64 = 2048;

/// Each population's per-unit time constants and population 1/e lag, from a long drive with
/// Bernoulli(0.5) bits. Units' autocorrelations are taken to the fitted lags only (the rest
/// would not be reported), the summed activity's to max_lag. Row r of `model` is the trial
/// `trials[r]`; the drive runs on `unroll`, each chunk from the states the last one ended in
/// (the recurrent module's included); `push(row, population, metric, value)`.
pub(super) fn timescales(
    model: &PackedModel,
    trials: &[&TrialSpec],
    plan: &AnalysisPlan,
    kind: Kind,
    device: Device,
    unroll: &Unroll<'_>,
    push: &mut dyn FnMut(usize, &str, &str, f64),
) -> Result<(), TchError> {
    let steps = i64::from(plan.timescale_steps);
    let burn_in = i64::from(plan.timescale_burn_in).min(steps);
    let kept = steps - burn_in;
    if plan.timescale_trials == 0 || kept < 2 {
        return Ok(());
    }
    let max_lag = i64::from(plan.timescale_max_lag).min(kept - 1);
    let fit_lags = i64::from(plan.timescale_fit_lags).min(max_lag);
    let fitter = ExpFitter::new(fit_lags as usize);
    let dims = *model.dims();
    let pops = Population::of(dims.arch);
    let (m, s) = (trials.len(), plan.timescale_trials as usize);
    // units' chunks fill an FFT of TIMESCALE_FFT_LEN exactly
    let chunk = (TIMESCALE_FFT_LEN - 2 * fit_lags).max(TIMESCALE_FFT_LEN / 2);

    // per row [T, S] time-major bits, and the initial states [S, H (+ A)]
    let bits: Vec<Vec<u8>> =
        trials.iter().map(|t| tasks::draw_bits(&mut tasks::stream(t.seed, Stream::TimescaleInput), steps as usize, s)).collect();
    let (hidden, module) = (dims.hidden as usize, dims.module_units() as usize);
    let initial: Vec<f64> = trials
        .iter()
        .flat_map(|t| {
            let (mut h0, mut a0) = (tasks::stream(t.seed, Stream::TimescaleH0), tasks::stream(t.seed, Stream::TimescaleA0));
            tasks::draw_states(&mut h0, &mut a0, t.module_start, s, hidden, module)
        })
        .collect();
    let mut state = host_tensor(&initial, &[m as i64, s as i64, dims.state_units()], kind, device)?; // [M, S, H (+ A)]
    // per population: its units, and its summed activity
    let mut autocov: Vec<[Autocovariance; 2]> =
        pops.iter().map(|_| [Autocovariance::new(fit_lags), Autocovariance::new(max_lag)]).collect();

    let mut start = 0;
    while start < steps {
        let end = (if start < burn_in { burn_in } else { steps }).min(start + chunk);
        let len = end - start;
        let mut x = Vec::with_capacity(len as usize * m * s); // [T', M, S]
        for t in start as usize..end as usize {
            for row in &bits {
                x.extend_from_slice(&row[t * s..(t + 1) * s]);
            }
        }
        let input = PackedInput {
            x: Tensor::f_from_slice(&x)?.f_view([len, m as i64, s as i64])?.f_to_device(device)?.f_to_kind(kind)?,
            lengths: Tensor::f_full([m as i64, s as i64], len, (Kind::Int64, device))?,
            min_len: len,
            initial: state,
        };
        if start < burn_in {
            state = unroll(model, &input, CbOutput::On, &mut |_| Ok(()))?;
        } else {
            let mut recorded: Vec<Vec<Tensor>> = pops.iter().map(|_| Vec::with_capacity(len as usize)).collect();
            state = unroll(model, &input, CbOutput::On, &mut |step| {
                for (pop, trace) in pops.iter().zip(&mut recorded) {
                    trace.extend(step.activity[pop.index()].map(Tensor::shallow_clone));
                }
                Ok(())
            })?;
            for ([units, total], trace) in autocov.iter_mut().zip(&recorded) {
                let activity = Tensor::f_stack(trace, 0)?.f_permute([1, 2, 3, 0])?; // [M, S, N, T']
                total.push(&activity.f_sum_dim_intlist(Some([2i64].as_slice()), false, None::<Kind>)?)?; // [M, S, T']
                units.push(&activity)?;
            }
        }
        start = end;
    }

    for (pop, [units, total]) in pops.iter().zip(&autocov) {
        let units = per_row_autocorrelations(units, m)?;
        let total = per_row_autocorrelations(total, m)?;
        for (row, (units, total)) in units.iter().zip(&total).enumerate() {
            let taus: Vec<f64> = units.iter().flatten().filter_map(|ac| fitter.fit(ac)).map(|f| f.tau).collect();
            push(row, pop.name(), "units_fitted", taus.len() as f64);
            if let Some(median) = median(&taus) {
                push(row, pop.name(), "timescale_median_steps", median);
                push(row, pop.name(), "timescale_mean_steps", taus.iter().sum::<f64>() / taus.len() as f64);
            }
            if let Some(Some(ac)) = total.first() {
                push(row, pop.name(), "population_lag_1e_steps", lag_below_1e(ac) as f64);
            }
        }
    }
    Ok(())
}

/// The normalised autocorrelations [row][series][lag] of series laid out [M, S, series...]:
/// the mean over the S sequences of each one's autocovariance, divided by its lag 0; None for
/// a series without variance.
fn per_row_autocorrelations(acc: &Autocovariance, m: usize) -> Result<Vec<Vec<Option<Vec<f64>>>>, TchError> {
    let (cov, mean) = acc.finish()?; // [M, S, ..., L + 1], [M, S, ...]
    let width = *cov.size().last().unwrap_or(&1) as usize;
    let per_sequence = Some([1i64].as_slice());
    let cov = cov.f_mean_dim(per_sequence, false, None::<Kind>)?.f_reshape([m as i64, -1])?; // [M, n (L + 1)]
    let mean = mean.f_mean_dim(per_sequence, false, None::<Kind>)?.f_reshape([m as i64, -1])?; // [M, n]
    let cov = Vec::<Vec<f64>>::try_from(&cov.f_to_device(Device::Cpu)?)?;
    let mean = Vec::<Vec<f64>>::try_from(&mean.f_to_device(Device::Cpu)?)?;
    Ok(cov
        .iter()
        .zip(&mean)
        .map(|(cov, mean)| {
            cov.chunks(width).zip(mean).map(|(c, &mu)| has_variance(c[0], mu).then(|| c.iter().map(|v| v / c[0]).collect())).collect()
        })
        .collect())
}

/// Whether a series with lag-0 autocovariance `c0` and mean `mean` varies at all.
fn has_variance(c0: f64, mean: f64) -> bool {
    c0.is_finite() && c0 > VARIANCE_FLOOR && c0.sqrt() > RELATIVE_STD_FLOOR * mean.abs()
}

/// The first lag at which a normalised autocorrelation falls to 1/e or below; its length (one
/// past the largest lag) when it never does.
pub(crate) fn lag_below_1e(ac: &[f64]) -> usize {
    let threshold = (-1.0f64).exp();
    ac.iter().position(|&r| r <= threshold).unwrap_or(ac.len())
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if !n.is_multiple_of(2) => Some(v[n / 2]),
        _ => Some(0.5 * (v[n / 2 - 1] + v[n / 2])),
    }
}

impl Autocovariance {
    pub(crate) fn new(max_lag: i64) -> Self {
        Autocovariance { max_lag, n: 0, sums: None }
    }

    /// Adds the next `chunk` [..., T'] of every series.
    pub(crate) fn push(&mut self, chunk: &Tensor) -> Result<(), TchError> {
        let lags = self.max_lag;
        let len = *chunk.size().last().unwrap_or(&0);
        if len == 0 {
            return Ok(());
        }
        let (device, float) = (chunk.device(), Kind::Float);
        let sums = match self.sums.take() {
            Some(sums) => sums,
            None => {
                let mut shape = chunk.size();
                let last = shape.len() - 1;
                shape[last] = lags;
                let tail = Tensor::f_zeros(shape.as_slice(), (float, device))?;
                shape[last] = lags + 1;
                let products = Tensor::f_zeros(shape.as_slice(), (Kind::Double, device))?;
                let shift = chunk.f_mean_dim(Some([-1i64].as_slice()), false, Kind::Double)?.f_to_kind(float)?; // [...]
                let head = tail.f_narrow(-1, 0, 0)?.f_to_kind(Kind::Double)?;
                Sums { total: shift.f_zeros_like()?.f_to_kind(Kind::Double)?, products, head, tail, shift }
            }
        };
        // ext = [last max_lag values; this chunk], shifted, float32
        let mut shape = chunk.size();
        let last = shape.len() - 1;
        shape[last] = lags + len;
        let ext = Tensor::f_empty(shape.as_slice(), (float, device))?; // [..., L + T']
        ext.f_narrow(-1, 0, lags)?.f_copy_(&sums.tail)?;
        let mut y = ext.f_narrow(-1, lags, len)?; // [..., T']
        y.f_copy_(chunk)?;
        let _ = y.f_sub_(&sums.shift.f_unsqueeze(-1)?)?;
        // every pair (t, t + k) with t + k in this chunk lies in ext: those of ext less those of
        // the tail alone (counted with the previous chunk)
        let lagged = lagged_products(&ext, lags)?.f_sub(&lagged_products(&sums.tail, lags)?)?; // [..., L + 1]
        let head_len = *sums.head.size().last().unwrap_or(&0);
        let head = if head_len < lags {
            let more = y.f_narrow(-1, 0, (lags - head_len).min(len))?.f_to_kind(Kind::Double)?;
            Tensor::f_cat(&[&sums.head, &more], -1)?
        } else {
            sums.head
        };
        self.sums = Some(Sums {
            total: sums.total.f_add(&y.f_sum_dim_intlist(Some([-1i64].as_slice()), false, Kind::Double)?)?,
            products: sums.products.f_add(&lagged)?,
            head,
            tail: ext.f_narrow(-1, len, lags)?.f_contiguous()?,
            shift: sums.shift,
        });
        self.n += len;
        Ok(())
    }

    /// Each series' autocovariance at lags 0..=max_lag [..., L + 1] and its mean [...]. Needs
    /// more samples than max_lag.
    pub(crate) fn finish(&self) -> Result<(Tensor, Tensor), TchError> {
        let lags = self.max_lag;
        let Some(s) = self.sums.as_ref().filter(|_| self.n > lags) else {
            return Err(TchError::Shape(format!("{} samples cannot give lags up to {lags}", self.n)));
        };
        let n = self.n as f64;
        // in the shifted values y = x - shift, whose mean is mu
        let mu = s.total.f_div_scalar(n)?.f_unsqueeze(-1)?; // [..., 1]
        let zero = mu.f_zeros_like()?; // [..., 1]
        // first_k = sum of the first k values, last_k = sum of the last k, k = 0..=L
        let first_k = Tensor::f_cat(&[&zero, &s.head.f_cumsum(-1, None::<Kind>)?], -1)?; // [..., L + 1]
        let last_k = Tensor::f_cat(&[&zero, &s.tail.f_flip([-1i64])?.f_cumsum(-1, Kind::Double)?], -1)?; // [..., L + 1]
        let total = s.total.f_unsqueeze(-1)?; // [..., 1]
        // sum over the n - k pairs of (y_t - mu)(y_{t+k} - mu)
        //   = products_k - mu (total - last_k) - mu (total - first_k) + (n - k) mu^2
        let pairs = Tensor::f_arange(lags + 1, (Kind::Double, s.total.device()))?.f_neg()?.f_add_scalar(n)?; // [L + 1]
        let partial = total.f_mul_scalar(2.0)?.f_sub(&first_k)?.f_sub(&last_k)?; // [..., L + 1]
        let centred = s.products.f_sub(&partial.f_mul(&mu)?)?.f_add(&mu.f_square()?.f_mul(&pairs)?)?;
        let mean = mu.f_squeeze_dim(-1)?.f_add(&s.shift.f_to_kind(Kind::Double)?)?; // [...]
        Ok((centred.f_div(&pairs)?, mean))
    }
}

/// sum over i of x_i x_{i+k} for k = 0..=max_lag within each series x [..., T] (float32 in,
/// float64 out), by a float32 FFT: several times faster than float64, and precise enough for
/// values shifted near zero (about six digits of the autocorrelation).
fn lagged_products(x: &Tensor, max_lag: i64) -> Result<Tensor, TchError> {
    let len = *x.size().last().unwrap_or(&0);
    if len == 0 {
        let mut shape = x.size();
        *shape.last_mut().unwrap_or(&mut 0) = max_lag + 1;
        return Tensor::f_zeros(shape.as_slice(), (Kind::Double, x.device()));
    }
    // no wrap-around for lags up to max_lag
    let n_fft = ((len + max_lag).max(2) as u64).next_power_of_two() as i64;
    let power = x.f_fft_rfft(n_fft, -1, "backward")?.f_abs()?.f_square()?; // [..., n_fft / 2 + 1]
    let corr = power.f_fft_irfft(n_fft, -1, "backward")?; // [..., n_fft]
    let kept = max_lag.min(len - 1) + 1;
    let corr = corr.f_narrow(-1, 0, kept)?.f_to_kind(Kind::Double)?;
    // lags past the series' own length have no pairs
    corr.f_constant_pad_nd([0, max_lag + 1 - kept])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::one_thread;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    /// `sequences` AR(1) series x_t = phi x_{t-1} + N(0, 1), started in their stationary law.
    fn ar1(rng: &mut ChaCha8Rng, phi: f64, sequences: usize, steps: usize) -> Vec<Vec<f64>> {
        let sd = (1.0 / (1.0 - phi * phi)).sqrt();
        let mut noise = || -> f64 { StandardNormal.sample(rng) };
        (0..sequences)
            .map(|_| {
                let mut x = sd * noise();
                (0..steps)
                    .map(|_| {
                        x = phi * x + noise();
                        x
                    })
                    .collect()
            })
            .collect()
    }

    /// The mean over sequences of each one's autocorrelation at lags 0..=max_lag, fed through
    /// `Autocovariance` in chunks of `chunk` steps (as one row with one unit).
    fn autocorrelation(series: &[Vec<f64>], max_lag: i64, chunk: usize) -> Vec<f64> {
        let steps = series[0].len();
        let mut acc = Autocovariance::new(max_lag);
        for start in (0..steps).step_by(chunk) {
            let end = (start + chunk).min(steps);
            let part: Vec<f64> = series.iter().flat_map(|s| s[start..end].iter().copied()).collect();
            acc.push(&Tensor::from_slice(&part).view([1, series.len() as i64, 1, (end - start) as i64])).unwrap();
        }
        let (cov, _) = acc.finish().unwrap();
        let cov = cov.mean_dim(Some([1i64].as_slice()), false, None::<Kind>).flatten(0, -1);
        let cov = Vec::<f64>::try_from(&cov).unwrap();
        cov.iter().map(|c| c / cov[0]).collect()
    }

    #[test]
    fn chunked_autocovariance_equals_the_direct_sum() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let series: Vec<Vec<f64>> = ar1(&mut rng, 0.7, 3, 157).into_iter().map(|s| s.iter().map(|v| v + 2.5).collect()).collect();
        let max_lag = 12;
        for chunk in [5, 12, 13, 40, 157] {
            let mut acc = Autocovariance::new(max_lag);
            for start in (0..157).step_by(chunk) {
                let end = (start + chunk).min(157);
                let part: Vec<f64> = series.iter().flat_map(|s| s[start..end].iter().copied()).collect();
                acc.push(&Tensor::from_slice(&part).view([3, (end - start) as i64])).unwrap();
            }
            let (cov, mean) = acc.finish().unwrap();
            let cov = Vec::<Vec<f64>>::try_from(&cov).unwrap();
            let mean = Vec::<f64>::try_from(&mean).unwrap();
            for (s, x) in series.iter().enumerate() {
                let n = x.len();
                let mu = x.iter().sum::<f64>() / n as f64;
                assert!((mean[s] - mu).abs() < 1e-6 * mu.abs(), "the data is float32");
                for k in 0..=max_lag as usize {
                    let direct = (0..n - k).map(|t| (x[t] - mu) * (x[t + k] - mu)).sum::<f64>() / (n - k) as f64;
                    // float32 products of values shifted near zero
                    assert!((cov[s][k] - direct).abs() < 1e-5 * cov[s][0], "chunk {chunk}, series {s}, lag {k}");
                }
            }
        }
        assert!(Autocovariance::new(20).finish().is_err(), "too few samples for the lags");
    }

    #[test]
    fn an_ar1_unit_has_autocorrelation_phi_to_the_lag_and_its_timescale_is_recovered() {
        one_thread();
        let tau: f64 = 7.5;
        let phi = (-1.0 / tau).exp();
        let series = ar1(&mut ChaCha8Rng::seed_from_u64(1), phi, 8, 100_000);
        let ac = autocorrelation(&series, 60, 1024);
        for (k, r) in ac.iter().enumerate() {
            assert!((r - phi.powi(k as i32)).abs() < 0.02, "lag {k}: {r} against {}", phi.powi(k as i32));
        }
        let fit = ExpFitter::new(30).fit(&ac).unwrap();
        assert!((fit.tau / tau - 1.0).abs() < 0.05, "{fit:?}");
        assert_eq!(lag_below_1e(&ac), tau.ceil() as usize, "the 1/e lag is ceil(-1 / ln phi)");
        assert_eq!(lag_below_1e(&[1.0, 0.9, 0.5]), 3, "never below 1/e: one past the largest lag");

        // exact curves: one exponential stays one, its time constant exact
        let exact: Vec<f64> = (0..=30).map(|k| phi.powi(k)).collect();
        let fit = ExpFitter::new(30).fit(&exact).unwrap();
        assert_eq!(fit.exponentials, 1);
        assert!((fit.tau / tau - 1.0).abs() < 1e-6, "{fit:?}");
    }

    #[test]
    fn two_ar1_processes_pick_two_exponentials_and_report_the_slower() {
        one_thread();
        let (fast, slow): (f64, f64) = (1.5, 12.0);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        // equal variances: the autocorrelation is (e^{-k/1.5} + e^{-k/12}) / 2
        let scale = |tau: f64| (1.0 - (-2.0 / tau).exp()).sqrt();
        let a = ar1(&mut rng, (-1.0 / fast).exp(), 16, 100_000);
        let b = ar1(&mut rng, (-1.0 / slow).exp(), 16, 100_000);
        let sum: Vec<Vec<f64>> =
            a.iter().zip(&b).map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * scale(fast) + y * scale(slow)).collect()).collect();
        let ac = autocorrelation(&sum, 40, 1024);
        let fit = ExpFitter::new(30).fit(&ac).unwrap();
        assert_eq!(fit.exponentials, 2, "{fit:?}");
        assert!((fit.tau / slow - 1.0).abs() < 0.05, "{fit:?}");

        let exact: Vec<f64> = (0..=30).map(|k| 0.5 * (-k as f64 / fast).exp() + 0.5 * (-k as f64 / slow).exp()).collect();
        let fit = ExpFitter::new(30).fit(&exact).unwrap();
        assert_eq!(fit.exponentials, 2);
        assert!((fit.tau / slow - 1.0).abs() < 1e-4, "{fit:?}");
    }
}
