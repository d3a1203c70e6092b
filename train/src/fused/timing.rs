//! Measurements of the CPU engine (ignored tests): the phases of a main-size training step and
//! the rates of the per-step products.

use super::FusedPack;
use super::backward::{backward_steps, weight_grads};
use super::forward::{forward, readout};
use super::matmul::{Mat, matmul};
use super::step::{Job, Prepared, Scratch, sized};
use crate::model::{CbOutput, Dims, PackedModel, init_trial};
use crate::tasks::{self, Stream, draw_batch, draw_h0};
use crate::testing::small_spec;
use cbsweep_common::{Arch, Regime, Seed, Task};

#[test]
#[ignore = "prints the time of each phase of a main-size training step"]
fn phase_times() {
    let dims = Dims { arch: Arch::Cbrnn, hidden: 64, granule: 256, purkinje: 64 };
    let mut spec = small_spec(1, Task::Dms, Arch::Cbrnn, Regime::Simult);
    (spec.hidden, spec.granule, spec.purkinje) = (64, 256, 64);
    let model = PackedModel::from_host(dims, &[init_trial(&dims, &spec)], tch::Kind::Float, tch::Device::Cpu).unwrap();
    let momentum: Vec<tch::Tensor> = model.params().iter().map(tch::Tensor::zeros_like).collect();
    let pack = FusedPack::<f32>::from_tensors(dims, model.params(), &momentum, &[[0.01; 3]]).unwrap();
    let mut rng = tasks::stream(Seed(5), Stream::TrainData);
    let mut batch = draw_batch(&mut rng, Task::Dms, 10, 64);
    while batch.len != 26 {
        batch = draw_batch(&mut rng, Task::Dms, 10, 64);
    }
    let h0 = draw_h0(&mut rng, 64, 64);
    let job = Job { row: 0, batch: &batch, initial: &h0, start: 0, rows: 64, scale: 1.0 / 64.0 };
    let w = Prepared::new(dims, &pack.layout, &pack.rows[0].params);
    let mut s = Scratch::default();
    let mut grads = vec![0f32; pack.layout.total];
    let reps = 300;
    let (mut fwd, mut bwd, mut wg, mut prep) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..reps {
        let t0 = std::time::Instant::now();
        let _ = Prepared::new(dims, &pack.layout, &pack.rows[0].params);
        let t1 = std::time::Instant::now();
        let last = forward(&w, &job, CbOutput::On, true, &mut s);
        readout(&w, 64, last, &mut s);
        let t2 = std::time::Instant::now();
        sized(&mut s.dh, 64 * 64).fill(0.01);
        backward_steps(&w, &job, &mut s);
        let t3 = std::time::Instant::now();
        weight_grads(&w, &job, &mut s, &mut grads);
        let t4 = std::time::Instant::now();
        prep += (t1 - t0).as_secs_f64();
        fwd += (t2 - t1).as_secs_f64();
        bwd += (t3 - t2).as_secs_f64();
        wg += (t4 - t3).as_secs_f64();
    }
    let flop = 2.0 * 64.0 * 26.0 * (64.0 * 64.0 + 256.0 * 64.0 + 64.0 * 256.0 + 64.0 * 64.0);
    for (name, secs) in [("prepare", prep), ("forward", fwd), ("backward steps", bwd), ("weight gradients", wg)] {
        let us = secs / f64::from(reps) * 1e6;
        println!("{name:>17}: {us:8.1} us  {:6.1} GFLOP/s", flop / (us * 1e-6) / 1e9);
    }
    println!("total {:.1} us per trial-step", (prep + fwd + bwd + wg) / f64::from(reps) * 1e6);
}

#[test]
#[ignore = "prints timings of the per-step products"]
fn per_step_product_rates() {
    for (m, k, n, transposed) in [
        (64, 64, 320, false),
        (64, 64, 320, false),
        (64, 256, 64, false),
        (64, 64, 64, false),
        (64, 64, 256, false),
        (64, 320, 64, false),
        (320, 1664, 64, false),
        (64, 202, 202, false),
        (64, 208, 208, false),
        (64, 192, 192, false),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0f32; m * n];
        let reps = 20_000_000 / (m * n * k).max(1) + 10;
        let rhs = if transposed { Mat::new(&b, n, k).t() } else { Mat::new(&b, k, n) };
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            matmul(&mut c, n, Mat::new(&a, m, k), rhs, true);
        }
        let s = t0.elapsed().as_secs_f64();
        println!(
            "{m}x{k} . {k}x{n} (rhs transposed {transposed}): {:.1} GFLOP/s, {:.2} us",
            2.0 * (m * n * k * reps) as f64 / s / 1e9,
            s / reps as f64 * 1e6
        );
    }
    // weight gradients: dZ^T [320 x K] . H [K x 64] from row-major dZ [K x 320], or its transpose
    let (k, a_cols, b_cols) = (1664, 320, 64);
    let dz: Vec<f32> = (0..k * a_cols).map(|i| (i % 7) as f32 * 0.1).collect();
    let hh: Vec<f32> = (0..k * b_cols).map(|i| (i % 5) as f32 * 0.1).collect();
    for variant in 0..2 {
        let mut c = vec![0f32; a_cols * b_cols];
        let t0 = std::time::Instant::now();
        for _ in 0..20 {
            if variant == 0 {
                matmul(&mut c, b_cols, Mat::new(&dz, k, a_cols).t(), Mat::new(&hh, k, b_cols), true);
            } else {
                matmul(&mut c, a_cols, Mat::new(&hh, k, b_cols).t(), Mat::new(&dz, k, a_cols), true);
            }
        }
        let s = t0.elapsed().as_secs_f64();
        println!("weight gradient variant {variant}: {:.1} GFLOP/s", 2.0 * (k * a_cols * b_cols * 20) as f64 / s / 1e9);
    }
}
