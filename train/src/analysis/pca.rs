//! PCA dimensionality per population: running moments of each row's activity over every valid
//! step of every sequence (float64), and the covariance spectrum's 90% and 95% component counts
//! and participation ratio.

use crate::input::{Batches, in_passes};
use crate::model::{CbOutput, PackedModel, Population};
use tch::{Device, Kind, TchError, Tensor};

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

/// Running moments of one population's activity per row, in float64: sample count [M], sums
/// [M, N] and the Gram matrix [M, N, N] of the raw (uncentred) activity.
pub(crate) struct Moments {
    count: Tensor,
    sum: Tensor,
    gram: Tensor,
}

/// Fractions of variance a component count is reported for, compared with this slack for
/// rounding (k equal eigenvalues need exactly ceil(0.9 k) components for 90%).
const FRACTION_SLACK: f64 = 1e-9;

/// Batches per forward pass of the dimensionality analysis.
const DIMENSIONALITY_BATCHES_PER_PASS: usize = 10;

/// PCA of each population's activity over every valid step of every sequence of each row's
/// `batches`; `push(row, population, metric, value)`.
pub(super) fn dimensionality(
    model: &PackedModel,
    batches: Batches,
    kind: Kind,
    device: Device,
    push: &mut dyn FnMut(usize, &str, &str, f64),
) -> Result<(), TchError> {
    if batches.first().is_none_or(Vec::is_empty) {
        return Ok(());
    }
    let dims = *model.dims();
    let pops = Population::of(dims.arch);
    let m = batches.len() as i64;
    let mut moments = pops.iter().map(|p| Moments::zeros(m, p.size(&dims), device)).collect::<Result<Vec<_>, _>>()?;
    in_passes(batches, DIMENSIONALITY_BATCHES_PER_PASS, dims.state_units(), kind, device, &mut |input, _| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::one_thread;

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
}
