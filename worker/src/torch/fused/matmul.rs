//! The CPU engine's arithmetic ground: the float types it computes in (`Real`) and its one
//! matrix product, `gemm`'s AVX-512/AVX2 kernels over strided views of the engine's buffers.

// `gemm` is an unsafe API over raw pointers; `matmul` is the one place that calls it, behind
// bounds checks on every operand.
#![allow(unsafe_code)]

/// The floating-point types the engine computes in: f32 for training, f64 for the cross-check
/// against the PyTorch reference.
pub(crate) trait Real:
    num_traits::Float + std::ops::AddAssign + std::iter::Sum + Default + Send + Sync + std::fmt::Debug + 'static
{
    fn of(v: f64) -> Self;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
}

/// A strided matrix view: element (i, j) at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major `rows` x `cols` at the start of `data`.
    pub(super) fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }

    /// Row-major with row stride `rs` (a block of columns of a wider matrix).
    pub(super) fn strided(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        Mat { data, rows, cols, rs, cs: 1 }
    }

    pub(super) fn t(self) -> Self {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = lhs . rhs`, or `dst += lhs . rhs` with `accumulate`; `dst` is row-major with row
/// stride `ld`. Panics when an operand does not fit its slice.
pub(super) fn matmul<T: Real>(dst: &mut [T], ld: usize, lhs: Mat<'_, T>, rhs: Mat<'_, T>, accumulate: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions of a product");
    assert!(lhs.fits() && rhs.fits(), "a product's operand exceeds its slice");
    assert!(m == 0 || n == 0 || (m - 1) * ld + n <= dst.len(), "a product's result exceeds its slice");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| dst[i * ld..i * ld + n].fill(T::zero()));
        }
        return;
    }
    // SAFETY: the asserts above keep every element gemm reads or writes inside the three slices,
    // and `dst` is borrowed mutably, so it cannot overlap `lhs` or `rhs`. T is f32 or f64 (Real),
    // both of which gemm supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_handles_strided_operands() {
        // [2 x 3] . [3 x 2] with the rhs a transposed view, accumulated onto ones
        let lhs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let rhs_t = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
        let mut dst = [1.0; 4];
        matmul(&mut dst, 2, Mat::new(&lhs, 2, 3), Mat::new(&rhs_t, 2, 3).t(), true);
        assert_eq!(dst, [1.0 - 2.0, 1.0 + 4.0, 1.0 - 2.0, 1.0 + 13.0]);
    }
}
