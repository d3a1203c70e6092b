//! The CPU's float32 ceiling, measured for `train`'s table: the peak of its threads from
//! independent fused multiply-adds on full vector registers (AVX-512 where the CPU has it, else
//! AVX2), and what one large matrix product on one thread reaches. No baseline of its own: its
//! numbers are the denominators of `train`'s peak column.

use std::time::Instant;

/// The fp32 peak of `threads` cores, measured: each thread runs independent fused multiply-adds
/// on full vector registers (AVX-512 where the CPU has it, else AVX2) for a fixed count, all
/// threads at once, so the clock is the one every core runs at under load.
pub(crate) fn measured_peak(threads: usize) -> (f64, &'static str) {
    let avx512 = cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx512f");
    let iters = 20_000_000usize;
    let t0 = Instant::now();
    let flop_per_thread: f64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(move || fma_burst(iters, avx512))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum::<f64>()
    });
    let rate = flop_per_thread / t0.elapsed().as_secs_f64();
    (rate, if avx512 { "AVX-512 FMA loop" } else { "AVX2 FMA loop" })
}

/// FLOP done by `iters` rounds of 12 independent vector FMAs.
#[allow(unsafe_code)]
fn fma_burst(iters: usize, avx512: bool) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each function is only called where the CPU was found to have its features.
        let (sink, lanes) = if avx512 { (unsafe { fma_avx512(iters) }, 16.0) } else { (unsafe { fma_avx2(iters) }, 8.0) };
        std::hint::black_box(sink);
        iters as f64 * 12.0 * lanes * 2.0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (iters, avx512);
        0.0
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for r in &mut acc {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    acc.iter().map(|&r| _mm512_reduce_add_ps(r)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for r in &mut acc {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    acc.iter().map(|&r| _mm256_cvtss_f32(r)).sum()
}

/// FLOP/s of one large float32 matrix product (1024^3) on one thread: what the kernel library
/// reaches when size is no obstacle.
pub(crate) fn large_gemm_rate() -> f64 {
    let n = 1024;
    let a = tch::Tensor::randn([n, n], (tch::Kind::Float, tch::Device::Cpu));
    let b = tch::Tensor::randn([n, n], (tch::Kind::Float, tch::Device::Cpu));
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    let _ = a.mm(&b);
    let t0 = Instant::now();
    let reps = 4;
    for _ in 0..reps {
        let _ = a.mm(&b);
    }
    let secs = t0.elapsed().as_secs_f64();
    tch::set_num_threads(threads);
    f64::from(reps) * 2.0 * (n as f64).powi(3) / secs
}
