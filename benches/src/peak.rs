//! The CPU's float32 ceiling, measured for `train`'s table: the peak of N cores at once from
//! independent fused multiply-adds on full vector registers, one pinned thread per core, the
//! best of AVX-512 and AVX2 and of 8, 12 and 16 independent accumulators (enough to cover the
//! FMA latency on both FMA ports of current x86 cores: 4 cycles x 2 ports needs 8 in flight),
//! and what one large matrix product on one thread reaches. No baseline of its own: its numbers are the denominators of
//! `train`'s peak column.

use std::time::Instant;

/// A measured peak: FLOP/s and how it was reached.
#[derive(Clone, Debug)]
pub(crate) struct Peak {
    pub(crate) rate: f64,
    pub(crate) how: String,
}

/// The fp32 peak of `threads` cores, measured: each thread, pinned to a core of its own (else
/// the kernel may start two on one core and move one only after much of a short burst), runs
/// independent fused multiply-adds for a fixed count, all threads released at once, so the
/// clock is the one every core runs at under load; the best of every vector width the CPU has
/// and of 8, 12 and 16 accumulators, each burst long enough (about 0.15 s) that start-up and
/// placement do not count.
pub(crate) fn measured_peak(threads: usize) -> Peak {
    let cpus = allowed_cpus();
    let mut best = Peak { rate: 0.0, how: "no FMA loop ran".into() };
    for width in Width::available() {
        for chains in [8usize, 12, 16] {
            // about 32 GFLOP per thread
            let iters = 16_000_000_000 / chains / width.lanes();
            let ready = std::sync::Barrier::new(threads + 1);
            let (flop, secs) = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|i| {
                        let (ready, cpu) = (&ready, cpus.get(i % cpus.len().max(1)).copied());
                        scope.spawn(move || {
                            if let Some(cpu) = cpu {
                                pin_to(cpu);
                            }
                            ready.wait();
                            fma_burst(width, chains, iters)
                        })
                    })
                    .collect();
                ready.wait();
                let t0 = Instant::now();
                let flop = handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum::<f64>();
                (flop, t0.elapsed().as_secs_f64())
            });
            let rate = flop / secs;
            if rate > best.rate {
                let pinned = if cpus.len() >= threads { "each thread pinned to its own core" } else { "not pinned" };
                best = Peak { rate, how: format!("{} FMA loop, {chains} accumulators per thread, {pinned}", width.name()) };
            }
        }
    }
    best
}

/// The CPUs this process may run on.
#[allow(unsafe_code)]
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and sched_getaffinity writes at most its
    // size into it; CPU_ISSET reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Pins the calling thread to `cpu` (best effort: an error leaves it where it is).
#[allow(unsafe_code)]
fn pin_to(cpu: usize) {
    // SAFETY: as in `allowed_cpus`; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A vector width with FMA.
#[derive(Clone, Copy, Debug)]
enum Width {
    Avx512,
    Avx2,
}

impl Width {
    fn available() -> Vec<Width> {
        #[cfg(target_arch = "x86_64")]
        {
            let mut v = vec![];
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Width::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                v.push(Width::Avx2);
            }
            v
        }
        #[cfg(not(target_arch = "x86_64"))]
        vec![]
    }

    fn lanes(self) -> usize {
        match self {
            Width::Avx512 => 16,
            Width::Avx2 => 8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Width::Avx512 => "AVX-512",
            Width::Avx2 => "AVX2",
        }
    }
}

/// FLOP done by `iters` rounds of `chains` (8, 12 or 16) independent vector FMAs.
#[allow(unsafe_code)]
fn fma_burst(width: Width, chains: usize, iters: usize) -> f64 {
    assert!(matches!(chains, 8 | 12 | 16), "8, 12 or 16 accumulators");
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each function is only called where `Width::available` found its features.
        let sink = unsafe {
            match (width, chains) {
                (Width::Avx512, 8) => fma_avx512::<8>(iters),
                (Width::Avx512, 12) => fma_avx512::<12>(iters),
                (Width::Avx512, _) => fma_avx512::<16>(iters),
                (Width::Avx2, 8) => fma_avx2::<8>(iters),
                (Width::Avx2, 12) => fma_avx2::<12>(iters),
                (Width::Avx2, _) => fma_avx2::<16>(iters),
            }
        };
        std::hint::black_box(sink);
        iters as f64 * chains as f64 * width.lanes() as f64 * 2.0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (width, chains, iters);
        0.0
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_avx512<const K: usize>(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); K];
    for _ in 0..iters {
        for r in &mut acc {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    acc.iter().map(|&r| _mm512_reduce_add_ps(r)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_avx2<const K: usize>(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); K];
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
