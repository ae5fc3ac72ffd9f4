//! The compute-bound ceiling: FLOPs per window over a measured single-thread sgemm rate.

use std::time::Duration;

use iot_anomaly::model::{measure_sgemm, Architecture, WindowCost};
use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ceiling {
    pub flops_per_window: u64,
    pub matmul_flops_per_window: u64,
    /// Single-thread sgemm rate on 1024 × 1024 × 1024 products, FLOP/s.
    pub sgemm_flops_per_s: f64,
    /// Single-thread sgemm rate on the model's recurrent product at batch 512
    /// (`[512, H] × [H, 4H]`), FLOP/s.
    pub sgemm_model_shape_flops_per_s: f64,
    /// `sgemm_flops_per_s / flops_per_window`: windows per second one core could
    /// score if every FLOP ran at the large-matrix sgemm rate.
    pub ceiling_windows_per_s: f64,
    /// The same at the model-shape sgemm rate.
    pub ceiling_model_shape_windows_per_s: f64,
}

/// Measures the sgemm rates with one libtorch thread, about three seconds in all.
pub fn measure(arch: Architecture) -> Ceiling {
    tch::set_num_threads(1);
    let cost = WindowCost::of(arch);
    let gates = 4 * arch.hidden_size;
    let sgemm = measure_sgemm(1024, 1024, 1024, Duration::from_secs(2));
    let model_shape = measure_sgemm(512, arch.hidden_size, gates, Duration::from_secs(1));
    let flops = cost.total_flops() as f64;
    Ceiling {
        flops_per_window: cost.total_flops(),
        matmul_flops_per_window: cost.matmul_flops,
        sgemm_flops_per_s: sgemm,
        sgemm_model_shape_flops_per_s: model_shape,
        ceiling_windows_per_s: sgemm / flops,
        ceiling_model_shape_windows_per_s: model_shape / flops,
    }
}
