//! The CPU engine's arithmetic ground: the float types it computes in (`Real`), the weights the
//! time loop reuses at every step (`Weight`), and its one matrix product over strided views of
//! the engine's buffers. The time loop's products (a batch of 64 rows against a weight of at
//! most a few hundred columns, both operands row-major) run in float32 on AVX-512 through
//! `avx512::matmul`, a register-tiled kernel that reads the operands where they lie: at these
//! sizes `gemm`'s packing of both operands on every call costs as much as the arithmetic. On
//! CPUs with FMA and without AVX-512 they run `gemm`'s microkernels over the weight packed once
//! per training step (`fma::matmul`). Everything else (the weight gradients' large products with
//! a transposed operand, float64) goes to `gemm`. Each kernel sums every output over k in order,
//! so a product's result depends only on its operands.

// `gemm` is an unsafe API over raw pointers; `matmul` is the one place that calls it, behind
// bounds checks on every operand.
#![allow(unsafe_code)]

/// The floating-point types the engine computes in: f32 for training, f64 for the cross-check
/// against the PyTorch reference.
pub(crate) trait Real:
    num_traits::Float + std::ops::AddAssign + std::iter::Sum + Default + Send + Sync + std::fmt::Debug + 'static
{
    fn of(v: f64) -> Self;

    /// `b` ([k, n] row-major) in the panels of this CPU's kernel for weights (`fma`), where it
    /// has one for this type.
    fn pack(b: &[Self], k: usize, n: usize) -> Option<Packed>;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }

    fn pack(b: &[f32], k: usize, n: usize) -> Option<Packed> {
        #[cfg(target_arch = "x86_64")]
        if fma::available() {
            return Some(Packed::new(b, k, n));
        }
        let _ = (b, k, n);
        None
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }

    fn pack(_: &[f64], _: usize, _: usize) -> Option<Packed> {
        None
    }
}

/// A float32 right operand [k, n] in panels of `PANEL` columns, each [k, PANEL] row-major and
/// zero-padded past column n: `gemm`'s packed layout for its FMA microkernels.
pub(crate) struct Packed {
    data: Vec<f32>,
    k: usize,
    n: usize,
}

/// Columns of a panel: `gemm`'s MR for float32 on FMA (two vectors of 8).
const PANEL: usize = 16;

impl Packed {
    /// Packs row-major `b` [k, n].
    pub(crate) fn new(b: &[f32], k: usize, n: usize) -> Self {
        assert!(b.len() >= k * n, "a packed weight exceeds its slice");
        let mut data = vec![0f32; n.div_ceil(PANEL) * k * PANEL];
        for (q, panel) in data.chunks_mut(k * PANEL).enumerate() {
            let (j0, width) = (q * PANEL, (n - q * PANEL).min(PANEL));
            for (kk, row) in panel.chunks_mut(PANEL).enumerate() {
                row[..width].copy_from_slice(&b[kk * n + j0..kk * n + j0 + width]);
            }
        }
        Packed { data, k, n }
    }
}

/// A weight the time loop multiplies by at every step, row-major [rows, cols], with its panels
/// packed once (`Real::pack`) where this CPU's kernel for weights runs.
pub(super) struct Weight<T> {
    pub(super) data: Vec<T>,
    rows: usize,
    cols: usize,
    packed: Option<Packed>,
}

impl<T: Real> Weight<T> {
    pub(super) fn new(data: Vec<T>, rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "a weight's shape");
        let packed = T::pack(&data, rows, cols);
        Weight { data, rows, cols, packed }
    }

    /// No weight (an architecture without the layer).
    pub(super) fn none() -> Self {
        Weight { data: Vec::new(), rows: 0, cols: 0, packed: None }
    }

    /// The whole weight as a product's right operand.
    pub(super) fn mat(&self) -> Mat<'_, T> {
        self.block(self.rows, self.cols)
    }

    /// Its first `rows` rows and `cols` columns as a product's right operand.
    pub(super) fn block(&self, rows: usize, cols: usize) -> Mat<'_, T> {
        assert!(rows <= self.rows && cols <= self.cols, "a block outside its weight");
        Mat { packed: self.packed.as_ref(), ..Mat::strided(&self.data, rows, cols, self.cols) }
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
    /// The same values in panels, when this is (a block of) a packed `Weight`.
    packed: Option<&'a Packed>,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major `rows` x `cols` at the start of `data`.
    pub(super) fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat::strided(data, rows, cols, cols)
    }

    /// Row-major with row stride `rs` (a block of columns of a wider matrix).
    pub(super) fn strided(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        Mat { data, rows, cols, rs, cs: 1, packed: None }
    }

    pub(super) fn t(self) -> Self {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, packed: None }
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
    #[cfg(target_arch = "x86_64")]
    if let Some(packed) = rhs.packed.filter(|_| fma::runs(m, n, k)) {
        // SAFETY: only float32 weights are packed (`Real::pack`), so T is f32 and the casts
        // reinterpret nothing; the asserts above keep every element of dst and lhs the kernel
        // touches inside their slices, a block's k and n are inside its packed weight's, and
        // `Packed` exists only where `fma::available()`.
        unsafe {
            fma::matmul(m, n, k, dst.as_mut_ptr().cast::<f32>(), ld, lhs.data.as_ptr().cast::<f32>(), (lhs.rs, lhs.cs), packed, accumulate);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && rhs.cs == 1 && avx512::available() {
        // SAFETY: T is f32 (checked above), so the casts reinterpret nothing; the asserts above
        // keep every element the kernel reads or writes inside the slices (its masked loads and
        // stores touch no lane past a row's end), and the CPU has AVX-512F.
        unsafe {
            avx512::matmul(
                m,
                n,
                k,
                dst.as_mut_ptr().cast::<f32>(),
                ld,
                lhs.data.as_ptr().cast::<f32>(),
                (lhs.rs, lhs.cs),
                rhs.data.as_ptr().cast::<f32>(),
                rhs.rs,
                accumulate,
            );
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

/// Float32 products by a packed `Weight` on CPUs with FMA and without AVX-512: `gemm`'s own FMA
/// microkernels, tile by tile over the weight's panels, the left operand read in place. `gemm`
/// packs the weight again on every call; here it is packed once per training step (a trial-step
/// 1.05-1.14x as fast, docs/decisions.md). With k in one block (as `gemm` runs every k up to 512),
/// each output is the same sum in the same order by the same kernel, so the bits are `gemm`'s.
#[cfg(target_arch = "x86_64")]
mod fma {
    use super::{PANEL, Packed};
    use gemm_f32::microkernel::fma::f32::UKR;

    /// Rows of the left operand per tile: `gemm`'s NR.
    const TILE: usize = 6;
    /// The deepest product `gemm` runs in one block of k.
    const MAX_K: usize = 512;

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("fma") && !std::arch::is_x86_feature_detected!("avx512f")
    }

    /// Whether a product of these sizes takes `gemm`'s microkernel path in one block of k (not
    /// its matrix-vector or rank-2 paths), so that this kernel gives its bits.
    pub(super) fn runs(m: usize, n: usize, k: usize) -> bool {
        m >= 2 && n >= 2 && (3..=MAX_K).contains(&k)
    }

    /// `dst = a . b` (or `dst += a . b`) for b the first k rows and n columns of `b`: dst
    /// [m, n] row-major with row stride `ldd`, a [m, k] with element (i, kk) at
    /// `a + i * lda.0 + kk * lda.1`.
    ///
    /// # Safety
    /// `available()`; `runs(m, n, k)`; k and n within `b`'s; every row i < m of dst holds n
    /// elements from `dst + i * ldd`; every element of a lies at its address; dst overlaps
    /// neither operand.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn matmul(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        ldd: usize,
        a: *const f32,
        lda: (usize, usize),
        b: &Packed,
        accumulate: bool,
    ) {
        assert!(k <= b.k && n <= b.n, "a block outside its packed weight");
        // gemm's transposed problem (its kernels vectorise the output's rows, ours its columns):
        // dst^T [n, m] = b^T a^T, b^T's panels its packed left operand, a^T its right one
        let (alpha, alpha_status) = if accumulate { (1.0, 1) } else { (0.0, 0) };
        for i in (0..m).step_by(TILE) {
            let rows = (m - i).min(TILE);
            for q in 0..n.div_ceil(PANEL) {
                let cols = (n - q * PANEL).min(PANEL);
                let kernel = UKR[cols.div_ceil(8) - 1][rows - 1];
                // SAFETY: the caller's contract; panel q holds b.k rows of PANEL values, of
                // which the kernel reads the first k
                unsafe {
                    kernel(
                        cols,
                        rows,
                        k,
                        dst.add(i * ldd + q * PANEL),
                        b.data.as_ptr().add(q * b.k * PANEL),
                        a.add(i * lda.0),
                        ldd as isize,
                        1,
                        PANEL as isize,
                        lda.1 as isize,
                        lda.0 as isize,
                        alpha,
                        1.0,
                        alpha_status,
                        false,
                        false,
                        false,
                        std::ptr::null(),
                    );
                }
            }
        }
    }
}

/// The float32 kernel on AVX-512 for a row-major right operand (the left one strided either
/// way): the output in tiles of up to 6 rows by 64 columns (24 accumulators in registers), each
/// tile summing over k in order with fused multiply-adds of a broadcast left element and the
/// right operand's row, the last vector of a tile masked to the columns that remain.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows per tile.
    const MR: usize = 6;
    /// Rows of b per block of k: 512 rows of a 64-column block are 128 KiB, inside L2.
    const KC: usize = 512;

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// `dst = a . b` (or `dst += a . b`): dst [m, n] row-major with row stride `ldd`, a [m, k]
    /// with element (i, kk) at `a + i * lda.0 + kk * lda.1` (row-major or a transposed view),
    /// b [k, n] row-major with row stride `ldb`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; every row i < m of dst holds n elements from `dst + i * ldd`, every
    /// element of a lies at its address, and every row of b holds n elements from
    /// `b + kk * ldb`; dst overlaps neither operand.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn matmul(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        ldd: usize,
        a: *const f32,
        lda: (usize, usize),
        b: *const f32,
        ldb: usize,
        accumulate: bool,
    ) {
        // A weight gradient's k (T x rows, up to about 9,000) in blocks of KC rows of b: each
        // block's columns stay in L2 while every row tile reads them, where the whole k would
        // stream from memory once per tile. A block adds its sums to dst (the first one as
        // asked); the time loop's products (k at most a few hundred) are one block.
        let mut k0 = 0;
        let mut add = accumulate;
        while k0 < k {
            let kb = (k - k0).min(KC);
            // SAFETY: rows k0 .. k0 + kb of b and columns k0 .. k0 + kb of a are inside them
            let (ak, bk) = unsafe { (a.add(k0 * lda.1), b.add(k0 * ldb)) };
            let mut j = 0;
            while j < n {
                let width = (n - j).min(64);
                let vecs = width.div_ceil(16);
                let tail = width - (vecs - 1) * 16;
                let mask: __mmask16 = if tail == 16 { 0xFFFF } else { (1u16 << tail) - 1 };
                // SAFETY: columns j .. j + width are inside every row (the caller's contract)
                unsafe {
                    let (d, bj) = (dst.add(j), bk.add(j));
                    match vecs {
                        1 => rows::<1>(m, kb, d, ldd, ak, lda, bj, ldb, mask, add),
                        2 => rows::<2>(m, kb, d, ldd, ak, lda, bj, ldb, mask, add),
                        3 => rows::<3>(m, kb, d, ldd, ak, lda, bj, ldb, mask, add),
                        _ => rows::<4>(m, kb, d, ldd, ak, lda, bj, ldb, mask, add),
                    }
                }
                j += 64;
            }
            add = true;
            k0 += kb;
        }
    }

    /// One block of `C` vectors' columns, all m rows, in tiles of `MR` rows and one of the rest.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<const C: usize>(
        m: usize,
        k: usize,
        dst: *mut f32,
        ldd: usize,
        a: *const f32,
        lda: (usize, usize),
        b: *const f32,
        ldb: usize,
        mask: __mmask16,
        accumulate: bool,
    ) {
        let mut i = 0;
        // SAFETY: rows i .. i + R < m of dst and a (the caller's contract)
        unsafe {
            while i + MR <= m {
                tile::<MR, C>(k, dst.add(i * ldd), ldd, a.add(i * lda.0), lda, b, ldb, mask, accumulate);
                i += MR;
            }
            let (d, ai) = (dst.add(i * ldd), a.add(i * lda.0));
            match m - i {
                5 => tile::<5, C>(k, d, ldd, ai, lda, b, ldb, mask, accumulate),
                4 => tile::<4, C>(k, d, ldd, ai, lda, b, ldb, mask, accumulate),
                3 => tile::<3, C>(k, d, ldd, ai, lda, b, ldb, mask, accumulate),
                2 => tile::<2, C>(k, d, ldd, ai, lda, b, ldb, mask, accumulate),
                1 => tile::<1, C>(k, d, ldd, ai, lda, b, ldb, mask, accumulate),
                _ => {}
            }
        }
    }

    /// `R` rows by `C` vectors of columns (the last one masked by `mask`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const C: usize>(
        k: usize,
        dst: *mut f32,
        ldd: usize,
        a: *const f32,
        lda: (usize, usize),
        b: *const f32,
        ldb: usize,
        mask: __mmask16,
        accumulate: bool,
    ) {
        let lane_mask = |c: usize| if c + 1 == C { mask } else { 0xFFFF };
        // SAFETY: every load and store is inside a row of its operand (masked past the end)
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            for kk in 0..k {
                let row = b.add(kk * ldb);
                let mut bv = [_mm512_setzero_ps(); C];
                for (c, v) in bv.iter_mut().enumerate() {
                    *v = _mm512_maskz_loadu_ps(lane_mask(c), row.add(16 * c));
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(r * lda.0 + kk * lda.1));
                    for (acc_rc, &v) in acc_r.iter_mut().zip(&bv) {
                        *acc_rc = _mm512_fmadd_ps(av, v, *acc_rc);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                for (c, &sum) in acc_r.iter().enumerate() {
                    let p = dst.add(r * ldd + 16 * c);
                    let v = if accumulate { _mm512_add_ps(_mm512_maskz_loadu_ps(lane_mask(c), p), sum) } else { sum };
                    _mm512_mask_storeu_ps(p, lane_mask(c), v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in [-0.5, 0.5) from a xorshift generator seeded with `state`.
    fn noise(mut state: u32) -> impl FnMut() -> f32 {
        move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (f64::from(state) / f64::from(u32::MAX)) as f32 - 0.5
        }
    }

    /// The left operand [m, k] held in `a` with leading dimension `lda`, row-major or stored
    /// transposed.
    fn left(a: &[f32], m: usize, k: usize, lda: usize, transposed: bool) -> Mat<'_, f32> {
        if transposed { Mat::strided(a, k, m, lda).t() } else { Mat::strided(a, m, k, lda) }
    }

    #[test]
    fn matmul_handles_strided_operands() {
        // [2 x 3] . [3 x 2] with the rhs a transposed view, accumulated onto ones
        let lhs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let rhs_t = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
        let mut dst = [1.0; 4];
        matmul(&mut dst, 2, Mat::new(&lhs, 2, 3), Mat::new(&rhs_t, 2, 3).t(), true);
        assert_eq!(dst, [1.0 - 2.0, 1.0 + 4.0, 1.0 - 2.0, 1.0 + 13.0]);
    }

    /// The float32 kernel against the same product in float64 summed in order, at the shapes the
    /// time loop uses and at ragged ones (every tile and mask width), strided and accumulating;
    /// the columns past each row's end stay untouched.
    #[test]
    fn float32_products_match_float64_at_every_tile_shape() {
        let mut next = noise(0x9e37_79b9_u32);
        // (m, k, n): the time loop's products, a weight gradient's (k = T x rows), ragged ones
        let shapes = [
            (64, 64, 320),
            (64, 256, 64),
            (64, 202, 202),
            (64, 2, 64),
            (64, 64, 2),
            (64, 1700, 64),
            (1, 1, 1),
            (7, 3, 17),
            (13, 65, 129),
            (5, 9, 48),
        ];
        for &(m, k, n) in &shapes {
            for (accumulate, transposed) in [(false, false), (true, false), (false, true), (true, true)] {
                let (lda, ldb, ldd) = (if transposed { m + 3 } else { k + 3 }, n + 5, n + 7);
                let a: Vec<f32> = (0..m.max(k) * lda).map(|_| next()).collect();
                // element (i, kk) of the left operand, row-major or stored transposed
                let at = |i: usize, kk: usize| if transposed { a[kk * lda + i] } else { a[i * lda + kk] };
                let lhs = left(&a, m, k, lda, transposed);
                let b: Vec<f32> = (0..k * ldb).map(|_| next()).collect();
                let before: Vec<f32> = (0..m * ldd).map(|_| next()).collect();
                let mut dst = before.clone();
                matmul(&mut dst, ldd, lhs, Mat::strided(&b, k, n, ldb), accumulate);
                for i in 0..m {
                    for j in 0..ldd {
                        let got = dst[i * ldd + j];
                        if j >= n {
                            assert_eq!(
                                got.to_bits(),
                                before[i * ldd + j].to_bits(),
                                "({m}, {k}, {n}): column {j} past the row's end was written"
                            );
                            continue;
                        }
                        let sum: f64 = (0..k).map(|kk| f64::from(at(i, kk)) * f64::from(b[kk * ldb + j])).sum();
                        let want = if accumulate { f64::from(before[i * ldd + j]) + sum } else { sum };
                        let scale: f64 = 1.0 + (0..k).map(|kk| f64::from(at(i, kk) * b[kk * ldb + j]).abs()).sum::<f64>();
                        assert!(
                            (f64::from(got) - want).abs() <= 1e-6 * scale,
                            "({m}, {k}, {n}, transposed {transposed}) [{i}, {j}]: {got} against {want}"
                        );
                    }
                }
            }
        }
    }

    /// A product by a packed weight (or a block of one) against the same product by the
    /// weight's plain values: the same bits, with or without accumulating, with the left operand
    /// strided or transposed, at full and ragged tiles, and in the sizes `gemm` runs otherwise
    /// (k of 1, 2 and past one block, a single row or column). Where the CPU has FMA the packed
    /// kernel runs here directly too, AVX-512 or not.
    #[test]
    fn packed_weights_give_the_bits_of_the_plain_product() {
        let mut next = noise(0x2545_f491_u32);
        // (m, weight rows, weight cols, block rows = k, block cols = n)
        let shapes = [
            (64, 64, 320, 64, 320),
            (64, 64, 320, 64, 64),
            (64, 320, 64, 64, 64),
            (64, 256, 64, 256, 64),
            (64, 202, 202, 202, 202),
            (64, 448, 116, 448, 116),
            (13, 17, 25, 17, 9),
            (7, 5, 8, 3, 7),
            (6, 520, 40, 520, 40),
            (2, 600, 3, 513, 2),
            (1, 9, 9, 9, 9),
            (9, 9, 1, 9, 1),
            (9, 2, 9, 2, 9),
            (5, 1, 18, 1, 18),
        ];
        for &(m, rows, cols, k, n) in &shapes {
            let weight = Weight::new((0..rows * cols).map(|_| next()).collect(), rows, cols);
            let plain = Mat::strided(&weight.data, k, n, cols);
            for (accumulate, transposed) in [(false, false), (true, false), (false, true), (true, true)] {
                let (lda, ldd) = (if transposed { m + 3 } else { k + 3 }, n + 5);
                let a: Vec<f32> = (0..m.max(k) * lda).map(|_| next()).collect();
                let lhs = left(&a, m, k, lda, transposed);
                let before: Vec<f32> = (0..m * ldd).map(|_| next()).collect();
                let mut want = before.clone();
                matmul(&mut want, ldd, lhs, plain, accumulate);
                let mut got = before.clone();
                matmul(&mut got, ldd, lhs, weight.block(k, n), accumulate);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let case = format!("({m}, {k}, {n}) of [{rows}, {cols}], accumulate {accumulate}, transposed {transposed}");
                assert_eq!(bits(&got), bits(&want), "{case}: through matmul");
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("fma") && fma::runs(m, n, k) {
                    let packed = Packed::new(&weight.data, rows, cols);
                    let mut direct = before.clone();
                    // SAFETY: the CPU has FMA; the sizes are inside the buffers as in matmul's
                    // asserts above (the same operands passed them)
                    unsafe { fma::matmul(m, n, k, direct.as_mut_ptr(), ldd, a.as_ptr(), (lhs.rs, lhs.cs), &packed, accumulate) };
                    assert_eq!(bits(&direct), bits(&want), "{case}: the packed kernel");
                }
            }
        }
    }
}
