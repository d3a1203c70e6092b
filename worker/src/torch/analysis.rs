//! The checkpoint analyses (cb-rnn-spec.md, "Analyses, at each solved level"): the cerebellar
//! output's ablation, PCA dimensionality and timescales per population, and the checkpoint's
//! weights as safetensors.
//!
//! They run under no_grad on a pack with one row per analysed trial and draw only from the
//! analysis streams (`Stream::Analysis*`, `Stream::Timescale*`), re-seeded at every checkpoint:
//! successive checkpoints see the same inputs at a given level, and a trial's training data never
//! shifts because it was analysed.

use super::fused;
use super::model::{self, CbOutput, PackedInput, PackedModel, Population, Step};
use super::tasks::{self, Stream, TaskBatch};
use super::train;
use cbsweep_common::{AnalysisPlan, AnalysisRecord, Arch, TrialSpec};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, TchError, Tensor};

/// Sequences per batch of the ablation and dimensionality analyses (the study's 64).
const BATCH: usize = 64;

/// One trial's checkpoint: the level it just solved and the epoch it solved it in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checkpoint<'a> {
    pub(crate) spec: &'a TrialSpec,
    pub(crate) level: u32,
    pub(crate) epoch: u32,
}

/// Why a checkpoint's weights could not be saved (a warning, never a failed trial).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckpointError {
    #[error("cannot write {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("libtorch error")]
    Torch(#[from] TchError),
}

/// The better of one and two exponentials fitted to an autocorrelation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct TimescaleFit {
    /// The time constant in steps; the slower one when two exponentials won.
    pub(crate) tau: f64,
    /// 1 or 2.
    pub(crate) exponentials: u8,
}

/// A covariance spectrum's dimensionality.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Spectrum {
    /// Components needed for 90% of the variance.
    pub(crate) d90: usize,
    /// Components needed for 95% of the variance.
    pub(crate) d95: usize,
    /// (sum of eigenvalues)^2 / (sum of their squares).
    pub(crate) participation_ratio: f64,
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

/// Running moments of one population's activity per row, in float64: sample count [M], sums
/// [M, N] and the Gram matrix [M, N, N] of the raw (uncentred) activity.
pub(crate) struct Moments {
    count: Tensor,
    sum: Tensor,
    gram: Tensor,
}

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
/// Fractions of variance a component count is reported for, compared with this slack for
/// rounding (k equal eigenvalues need exactly ceil(0.9 k) components for 90%).
const FRACTION_SLACK: f64 = 1e-9;
/// A series whose standard deviation is below this fraction of its mean, or whose variance is
/// below VARIANCE_FLOOR, has no variance to speak of (float32 rounding, not dynamics): skipped.
const RELATIVE_STD_FLOOR: f64 = 1e-5;
const VARIANCE_FLOOR: f64 = 1e-24;
/// Batches per forward pass of the dimensionality analysis.
const DIMENSIONALITY_BATCHES_PER_PASS: usize = 10;
/// The FFT length the timescale drive's chunks are cut for (a chunk is this less twice the
/// units' lags); bounds its memory.
const TIMESCALE_FFT_LEN: i64 = 2048;

/// Runs the analyses of `points[r]` on row r of `model`, all under the first point's plan (the
/// caller groups checkpoints by plan). Returns each point's records, in the order taken.
pub(crate) fn analyse(
    model: &PackedModel,
    points: &[Checkpoint],
    kind: Kind,
    device: Device,
) -> Result<Vec<Vec<AnalysisRecord>>, TchError> {
    let Some(first) = points.first() else {
        return Ok(Vec::new());
    };
    let plan = first.spec.analysis;
    let _no_grad = tch::no_grad_guard();
    let mut out: Vec<Vec<AnalysisRecord>> = vec![Vec::new(); points.len()];
    let mut push = |row: usize, population: &str, metric: &str, value: f64| {
        let point = &points[row];
        out[row].push(AnalysisRecord {
            level: point.level,
            epoch: point.epoch,
            population: population.to_string(),
            metric: metric.to_string(),
            value,
        });
    };

    let fixed = fixed_batches(points, plan.ablation_batches.max(plan.dimensionality_batches) as usize, model);
    let first_n = |n: u32| fixed.iter().map(|b| b[..n as usize].to_vec()).collect::<Vec<_>>();
    ablation(model, first_n(plan.ablation_batches), kind, device, &mut push)?;
    dimensionality(model, first_n(plan.dimensionality_batches), kind, device, &mut push)?;
    timescales(model, points, &plan, kind, device, &mut push)?;
    Ok(out)
}

/// Writes row `row` of `model` to `path` as safetensors, one tensor per parameter named as in
/// the parameter table (core.w_h, ...) with its per-trial shape, through a temporary file.
pub(crate) fn save_checkpoint(model: &PackedModel, row: i64, path: &Path) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let named = model
        .dims()
        .param_specs()
        .iter()
        .zip(model.params())
        .map(|(spec, p)| Ok((spec.name, p.f_get(row)?.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?)))
        .collect::<Result<Vec<_>, TchError>>()?;
    let partial = path.with_extension("safetensors.partial");
    Tensor::write_safetensors(&named, &partial)?;
    std::fs::rename(&partial, path).map_err(io)
}

/// Where a trial's checkpoint at `level` is saved under `dir`.
pub(crate) fn checkpoint_path(dir: &Path, spec: &TrialSpec, level: u32) -> PathBuf {
    dir.join(spec.id().as_str()).join(format!("level-{level}.safetensors"))
}

/// `n` fixed batches of `BATCH` sequences per point at its level, from its analysis streams.
fn fixed_batches(points: &[Checkpoint], n: usize, model: &PackedModel) -> Vec<Vec<(TaskBatch, Vec<f64>)>> {
    let hidden = model.dims().hidden as usize;
    points
        .iter()
        .map(|p| {
            let mut data = tasks::stream(p.spec.seed, Stream::AnalysisData);
            let mut h0 = tasks::stream(p.spec.seed, Stream::AnalysisH0);
            (0..n)
                .map(|_| {
                    let batch = tasks::draw_batch(&mut data, p.spec.task, p.level, BATCH);
                    (batch, tasks::draw_h0(&mut h0, BATCH, hidden))
                })
                .collect()
        })
        .collect()
}

type Push<'a> = dyn FnMut(usize, &str, &str, f64) + 'a;

/// Accuracy with the cerebellar output on and off (CB-RNN only) and the drop.
fn ablation(
    model: &PackedModel,
    batches: Vec<Vec<(TaskBatch, Vec<f64>)>>,
    kind: Kind,
    device: Device,
    push: &mut Push,
) -> Result<(), TchError> {
    let Some(per_row) = batches.first().map(Vec::len).filter(|&n| n > 0) else {
        return Ok(());
    };
    let sequences = (per_row * BATCH) as f64;
    let accuracy = |batches, cb| -> Result<Vec<f64>, TchError> {
        let correct = train::count_correct(model, batches, cb, kind, device)?.f_to_device(Device::Cpu)?;
        Ok(Vec::<i64>::try_from(&correct)?.into_iter().map(|c| c as f64 / sequences).collect())
    };
    let off = match model.dims().arch {
        Arch::Cbrnn => Some(accuracy(batches.clone(), CbOutput::Off)?),
        Arch::Rnn => None,
    };
    let on = accuracy(batches, CbOutput::On)?;
    for (row, &on) in on.iter().enumerate() {
        push(row, "network", "accuracy_cb_on", on);
        if let Some(off) = &off {
            push(row, "network", "accuracy_cb_off", off[row]);
            push(row, "network", "ablation_drop", on - off[row]);
        }
    }
    Ok(())
}

/// PCA of each population's activity over every valid step of every sequence.
fn dimensionality(
    model: &PackedModel,
    batches: Vec<Vec<(TaskBatch, Vec<f64>)>>,
    kind: Kind,
    device: Device,
    push: &mut Push,
) -> Result<(), TchError> {
    if batches.first().is_none_or(Vec::is_empty) {
        return Ok(());
    }
    let dims = *model.dims();
    let pops = Population::of(dims.arch);
    let m = batches.len() as i64;
    let mut moments = pops.iter().map(|p| Moments::zeros(m, p.size(&dims), device)).collect::<Result<Vec<_>, _>>()?;
    train::in_passes(batches, DIMENSIONALITY_BATCHES_PER_PASS, dims.hidden, kind, device, &mut |input, _| {
        model
            .unroll(input, CbOutput::On, &mut |step| {
                // steps past a sequence's own length hold its frozen state: left out
                let valid = if step.t >= input.min_len {
                    Some(input.lengths.f_gt(step.t)?.f_unsqueeze(-1)?) // [M, B, 1]
                } else {
                    None
                };
                for (pop, acc) in pops.iter().zip(&mut moments) {
                    if let Some(x) = step.activity[pop.index()] {
                        acc.add(x, valid.as_ref())?;
                    }
                }
                Ok(())
            })
            .map(drop)
    })?;
    for (pop, acc) in pops.iter().zip(&moments) {
        let size = pop.size(&dims) as f64;
        for (row, eigenvalues) in acc.eigenvalues()?.iter().enumerate() {
            let Some(s) = eigenvalues.as_deref().and_then(spectrum) else { continue };
            push(row, pop.name(), "d90", s.d90 as f64);
            push(row, pop.name(), "d95", s.d95 as f64);
            push(row, pop.name(), "d90_fraction", s.d90 as f64 / size);
            push(row, pop.name(), "d95_fraction", s.d95 as f64 / size);
            push(row, pop.name(), "participation_ratio", s.participation_ratio);
        }
    }
    Ok(())
}

/// Each population's per-unit time constants and population 1/e lag, from a long drive with
/// Bernoulli(0.5) bits. Units' autocorrelations are taken to the fitted lags only (the rest
/// would not be reported), the summed activity's to max_lag.
fn timescales(
    model: &PackedModel,
    points: &[Checkpoint],
    plan: &AnalysisPlan,
    kind: Kind,
    device: Device,
    push: &mut Push,
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
    let (m, s) = (points.len(), plan.timescale_trials as usize);
    // units' chunks fill an FFT of TIMESCALE_FFT_LEN exactly
    let chunk = (TIMESCALE_FFT_LEN - 2 * fit_lags).max(TIMESCALE_FFT_LEN / 2);

    // per row [T, S] time-major bits, and h_0 [S, H]
    let bits: Vec<Vec<u8>> =
        points.iter().map(|p| tasks::draw_bits(&mut tasks::stream(p.spec.seed, Stream::TimescaleInput), steps as usize, s)).collect();
    let h0: Vec<f64> =
        points.iter().flat_map(|p| tasks::draw_h0(&mut tasks::stream(p.spec.seed, Stream::TimescaleH0), s, dims.hidden as usize)).collect();
    let mut state = model::host_tensor(&h0, &[m as i64, s as i64, dims.hidden], kind, device)?; // [M, S, H]
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
            h0: state,
        };
        // the CPU engine where it applies (float32 on the CPU), libtorch's time loop elsewhere
        let unroll = |observe: &mut dyn FnMut(Step<'_>) -> Result<(), TchError>| match fused::unroll(model, &input, CbOutput::On, observe)?
        {
            Some(state) => Ok::<_, TchError>(state),
            None => model.unroll(&input, CbOutput::On, observe),
        };
        if start < burn_in {
            state = unroll(&mut |_| Ok(()))?;
        } else {
            let mut recorded: Vec<Vec<Tensor>> = pops.iter().map(|_| Vec::with_capacity(len as usize)).collect();
            state = unroll(&mut |step| {
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

/// Components for 90% and 95% of the variance and the participation ratio of a covariance
/// spectrum (any order; rounding's tiny negative eigenvalues count as zero), or None when there
/// is no variance.
pub(crate) fn spectrum(eigenvalues: &[f64]) -> Option<Spectrum> {
    let mut v: Vec<f64> = eigenvalues.iter().map(|&e| e.max(0.0)).collect();
    v.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = v.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return None;
    }
    let components = |fraction: f64| {
        let mut cumulative = 0.0;
        v.iter()
            .position(|&e| {
                cumulative += e;
                cumulative >= (fraction - FRACTION_SLACK) * total
            })
            .map_or(v.len(), |i| i + 1)
    };
    let squares: f64 = v.iter().map(|e| e * e).sum();
    Some(Spectrum { d90: components(0.90), d95: components(0.95), participation_ratio: total * total / squares })
}

impl Moments {
    pub(crate) fn zeros(m: i64, n: i64, device: Device) -> Result<Self, TchError> {
        let opts = (Kind::Double, device);
        Ok(Moments { count: Tensor::f_zeros([m], opts)?, sum: Tensor::f_zeros([m, n], opts)?, gram: Tensor::f_zeros([m, n, n], opts)? })
    }

    /// Adds the samples x [M, B, N] where `valid` [M, B, 1] (bool) holds; all of them without it.
    pub(crate) fn add(&mut self, x: &Tensor, valid: Option<&Tensor>) -> Result<(), TchError> {
        let (_m, b, _n) = x.size3()?;
        let mut x = x.f_to_kind(Kind::Double)?; // [M, B, N]
        let count = match valid {
            Some(valid) => {
                x = x.f_where_scalarother(valid, 0.0)?;
                valid.f_sum_dim_intlist(Some([1i64, 2].as_slice()), false, Kind::Double)? // [M]
            }
            None => self.count.f_full_like(b as f64)?,
        };
        self.count = self.count.f_add(&count)?;
        self.sum = self.sum.f_add(&x.f_sum_dim_intlist(Some([1i64].as_slice()), false, None::<Kind>)?)?; // [M, N]
        self.gram = self.gram.f_baddbmm(&x.f_transpose(1, 2)?, &x, 1.0, 1.0)?; // [M, N, N]
        Ok(())
    }

    /// Eigenvalues of each row's sample covariance, ascending; None for a row with fewer than
    /// two samples or a covariance that is not finite.
    pub(crate) fn eigenvalues(&self) -> Result<Vec<Option<Vec<f64>>>, TchError> {
        let count = self.count.f_view([-1, 1, 1])?; // [M, 1, 1]
        let outer = self.sum.f_unsqueeze(2)?.f_mul(&self.sum.f_unsqueeze(1)?)?.f_div(&count)?; // [M, N, N]
        let cov = self.gram.f_sub(&outer)?.f_div(&count.f_sub_scalar(1.0)?)?; // [M, N, N]
        let usable = cov.f_isfinite()?.f_all_dims(Some([1i64, 2].as_slice()), false)?.f_logical_and(&self.count.f_ge(2.0)?)?; // [M]
        // eigvalsh fails on NaN: unusable rows are replaced and dropped after
        let cov = cov.f_where_scalarother(&usable.f_view([-1, 1, 1])?, 0.0)?;
        let eig = cov.f_linalg_eigvalsh("L")?.f_to_device(Device::Cpu)?; // [M, N]
        let usable = Vec::<bool>::try_from(&usable.f_to_device(Device::Cpu)?)?;
        let n = eig.size()[1] as usize;
        let eig = Vec::<f64>::try_from(&eig.f_flatten(0, -1)?)?;
        Ok(usable.iter().enumerate().map(|(r, &ok)| ok.then(|| eig[r * n..(r + 1) * n].to_vec())).collect())
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
    use crate::torch::model::{Dims, init_trial};
    use crate::torch::tests::{analysis_plan, one_thread, small_spec};
    use cbsweep_common::{Regime, Seed, Task};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    /// Walsh function j at sample i: +1 or -1; functions 1.. have mean zero over 2^k samples and
    /// are orthogonal to each other.
    fn walsh(i: usize, j: usize) -> f64 {
        if (i & j).count_ones().is_multiple_of(2) { 1.0 } else { -1.0 }
    }

    #[test]
    fn k_orthogonal_unit_variance_units_have_participation_ratio_k() {
        one_thread();
        // row 0: 20 live units of 24, row 1: 10 of 24; 64 samples fed as two batches of 32, with
        // a third batch whose samples the mask leaves out
        let (n, size) = (64, 24);
        let live = [20, 10];
        let mut values = vec![0.0; 2 * n * size]; // [M, B, N]
        for (row, &k) in live.iter().enumerate() {
            for i in 0..n {
                for j in 0..k {
                    values[(row * n + i) * size + j] = walsh(i, j + 1);
                }
            }
        }
        let x = Tensor::from_slice(&values).view([2, n as i64, size as i64]);
        let mut moments = Moments::zeros(2, size as i64, Device::Cpu).unwrap();
        moments.add(&x.narrow(1, 0, 32), None).unwrap();
        let junk = Tensor::randn([2, 32, size as i64], (Kind::Double, Device::Cpu));
        let second = Tensor::cat(&[x.narrow(1, 32, 32), junk], 1); // [2, 64, N]
        let valid = Tensor::arange(64, (Kind::Int64, Device::Cpu)).lt(32).view([1, 64, 1]).expand([2, 64, 1], false);
        moments.add(&second, Some(&valid)).unwrap();

        for (row, eigenvalues) in moments.eigenvalues().unwrap().into_iter().enumerate() {
            let k = live[row] as f64;
            let s = spectrum(&eigenvalues.unwrap()).unwrap();
            assert!((s.participation_ratio - k).abs() < 1e-9, "row {row}: {s:?}");
            assert_eq!((s.d90, s.d95), ((0.9 * k).ceil() as usize, (0.95 * k).ceil() as usize), "row {row}");
        }
        // a decaying spectrum: 4 + 3 + 2 of 10 is exactly 90%
        let s = spectrum(&[1.0, 4.0, 2.0, 3.0, -1e-15]).unwrap();
        assert_eq!((s.d90, s.d95), (3, 4));
        assert!((s.participation_ratio - 100.0 / 30.0).abs() < 1e-12);
        assert_eq!(spectrum(&[0.0, 0.0]), None, "no variance, no dimensionality");
    }

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

    fn ablation_plan() -> AnalysisPlan {
        AnalysisPlan { dimensionality_batches: 0, timescale_steps: 0, ..analysis_plan() }
    }

    fn records<'r>(records: &'r [AnalysisRecord], population: &str, metric: &str) -> Vec<&'r AnalysisRecord> {
        records.iter().filter(|r| r.population == population && r.metric == metric).collect()
    }

    #[test]
    fn with_the_module_output_zeroed_accuracy_is_the_same_on_and_off() {
        one_thread();
        let mut spec = small_spec(3, Task::Parity, Arch::Cbrnn, Regime::Simult);
        spec.analysis = ablation_plan();
        let dims = Dims::of(&spec);
        let mut init = init_trial(&dims, &spec);
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for (p, values) in dims.param_specs().iter().zip(init.iter_mut()) {
            if p.name.starts_with("cb.dcn") {
                values.iter_mut().for_each(|v| *v = 0.0);
            } else if p.name.starts_with("cb.") {
                // a module that would matter if its output were not zero
                values.iter_mut().for_each(|v| *v = StandardNormal.sample(&mut rng));
            }
        }
        let model = PackedModel::from_host(dims, &[init], Kind::Float, Device::Cpu).unwrap();
        let points = [Checkpoint { spec: &spec, level: 3, epoch: 5 }];
        let out = analyse(&model, &points, Kind::Float, Device::Cpu).unwrap();
        let value = |metric| records(&out[0], "network", metric)[0].value;
        assert_eq!(value("accuracy_cb_on"), value("accuracy_cb_off"));
        assert_eq!(value("ablation_drop"), 0.0);
        assert!(out[0].iter().all(|r| (r.level, r.epoch) == (3, 5)));
        assert_eq!(out[0].len(), 3, "the plan asks for the ablation only: {:?}", out[0]);

        // the plain RNN has no module to switch off
        let rnn = TrialSpec { arch: Arch::Rnn, ..spec.clone() };
        let model = PackedModel::new(Dims::of(&rnn), std::slice::from_ref(&rnn), Kind::Float, Device::Cpu).unwrap();
        let out = analyse(&model, &[Checkpoint { spec: &rnn, level: 3, epoch: 5 }], Kind::Float, Device::Cpu).unwrap();
        let metrics: Vec<&str> = out[0].iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(metrics, ["accuracy_cb_on"]);
    }

    #[test]
    fn fixed_batches_repeat_at_a_level_and_follow_the_seed() {
        let spec = small_spec(4, Task::Dms, Arch::Rnn, Regime::Simult);
        let model = PackedModel::new(Dims::of(&spec), std::slice::from_ref(&spec), Kind::Float, Device::Cpu).unwrap();
        let at = |spec: &TrialSpec, level| fixed_batches(&[Checkpoint { spec, level, epoch: 1 }], 3, &model);
        assert_eq!(at(&spec, 3), at(&spec, 3));
        assert_ne!(at(&spec, 3), at(&spec, 4));
        assert_ne!(at(&spec, 3), at(&TrialSpec { seed: Seed(5), ..spec.clone() }, 3));
    }

    #[test]
    fn a_saved_checkpoint_reads_back_as_the_weights() {
        one_thread();
        let specs: Vec<TrialSpec> = (1..3).map(|s| small_spec(s, Task::Dms, Arch::Cbrnn, Regime::Simult)).collect();
        let dims = Dims::of(&specs[0]);
        let model = PackedModel::new(dims, &specs, Kind::Float, Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint_path(dir.path(), &specs[1], 3);
        save_checkpoint(&model, 1, &path).unwrap();
        assert_eq!(path, dir.path().join(specs[1].id().as_str()).join("level-3.safetensors"));
        let files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, ["level-3.safetensors"], "no temporary file is left");

        let read = Tensor::read_safetensors(&path).unwrap();
        assert_eq!(read.len(), dims.param_specs().len());
        for (p, packed) in dims.param_specs().iter().zip(model.params()) {
            let (_, t) = read.iter().find(|(name, _)| name == p.name).unwrap();
            assert_eq!(t.size(), p.shape, "{}", p.name);
            assert!(t.equal(&packed.get(1).detach()), "{}", p.name);
        }
        // a directory that cannot be made is an error to report, not a panic
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"").unwrap();
        assert!(save_checkpoint(&model, 0, &blocked.join("x").join("level-2.safetensors")).is_err());
    }

    /// The analyses of one checkpoint of the main CB-RNN (H = 64, G = 256, P = 64) under the
    /// study's plan, on one CPU thread. Run with
    /// `cargo test --release -p cbsweep-worker -- --ignored --nocapture checkpoint_timing`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cbrnn_checkpoint_timing() {
        one_thread();
        let mut spec = small_spec(1, Task::Dms, Arch::Cbrnn, Regime::Simult);
        (spec.hidden, spec.granule, spec.purkinje) = (64, 256, 64);
        spec.analysis = AnalysisPlan::study();
        let model = PackedModel::new(Dims::of(&spec), std::slice::from_ref(&spec), Kind::Float, Device::Cpu).unwrap();
        let only = |plan: AnalysisPlan| TrialSpec { analysis: plan, ..spec.clone() };
        let study = AnalysisPlan::study();
        let parts = [
            ("ablation", only(AnalysisPlan { dimensionality_batches: 0, timescale_steps: 0, ..study })),
            ("dimensionality", only(AnalysisPlan { ablation_batches: 0, timescale_steps: 0, ..study })),
            ("timescales", only(AnalysisPlan { ablation_batches: 0, dimensionality_batches: 0, ..study })),
            ("all", spec.clone()),
        ];
        for level in [2, 6] {
            for (what, spec) in &parts {
                let started = std::time::Instant::now();
                let out = analyse(&model, &[Checkpoint { spec, level, epoch: 1 }], Kind::Float, Device::Cpu).unwrap();
                println!("level {level}, {what}: {:.2} s ({} records)", started.elapsed().as_secs_f64(), out[0].len());
            }
        }
        // three trials of a pack that solve a level in the same epoch
        let pack: Vec<TrialSpec> = (0..3).map(|s| TrialSpec { seed: Seed(s), ..spec.clone() }).collect();
        let model = PackedModel::new(Dims::of(&spec), &pack, Kind::Float, Device::Cpu).unwrap();
        let points: Vec<Checkpoint> = pack.iter().map(|spec| Checkpoint { spec, level: 4, epoch: 1 }).collect();
        let started = std::time::Instant::now();
        analyse(&model, &points, Kind::Float, Device::Cpu).unwrap();
        println!("level 4, all, 3 trials at once: {:.2} s", started.elapsed().as_secs_f64());
    }
}
