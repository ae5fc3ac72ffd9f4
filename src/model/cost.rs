//! Arithmetic cost of scoring one window, and the single-thread matrix-multiply rate
//! that bounds how many windows per second a core can score.
//!
//! FLOPs follow the PyTorch `nn.LSTM` equations that libtorch runs, per step and
//! layer with input size `I` and hidden size `H`:
//!
//! - gates `x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh`: `2·4H·(I + H)` FLOPs of matrix products
//!   (a multiply-add counts as two) and `3·4H` additions;
//! - three sigmoids and two tanh over `H` values, counted as one FLOP each (a lower
//!   bound: libtorch evaluates them with several instructions), and `5H` products and
//!   sums for the cell and hidden state.
//!
//! The decoder's first layer reads the same input, the code, at every step, so its
//! input product is counted once per window: that is all the arithmetic a window
//! needs, and what [`super::FusedAutoencoder`] computes (libtorch computes it `W`
//! times).

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::autoencoder::Architecture;

/// FLOPs of one window: scaling, encoder, decoder, output layer and error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCost {
    /// Matrix-product FLOPs (two per multiply-add): the work a GEMM kernel does.
    pub matmul_flops: u64,
    /// Bias additions, activations, gate products, input scaling and the squared
    /// error, one FLOP per value.
    pub elementwise_flops: u64,
}

impl WindowCost {
    pub fn of(arch: Architecture) -> Self {
        let steps = arch.window as u64;
        let features = arch.features as u64;
        let hidden = arch.hidden_size as u64;
        let layers = arch.num_layers as u64;
        let gates = 4 * hidden;

        let lstm_matmul = |input: u64| steps * 2 * gates * (input + hidden);
        // 12H bias and projection sums, 4H activations over the gates (i, f, o, g),
        // 3H for c' = f·c + i·g, 2H for h' = o·tanh(c').
        let lstm_elementwise = steps * 21 * hidden;

        let encoder_matmul = lstm_matmul(features) + (layers - 1) * lstm_matmul(hidden);
        let decoder_first = 2 * gates * hidden + steps * 2 * gates * hidden;
        let decoder_matmul = decoder_first + (layers - 1) * lstm_matmul(hidden);
        let output_matmul = steps * 2 * hidden * features;
        let output_bias = steps * features;
        // (x - mean) / std before the model; difference, square and sum after it.
        let scaling = 2 * steps * features;
        let error = 3 * steps * features + features;

        Self {
            matmul_flops: encoder_matmul + decoder_matmul + output_matmul,
            elementwise_flops: 2 * layers * lstm_elementwise + output_bias + scaling + error,
        }
    }

    pub fn total_flops(&self) -> u64 {
        self.matmul_flops + self.elementwise_flops
    }
}

/// Measures the rate of `f32` matrix products `[m, k] × [k, n]` on the CPU with the
/// current libtorch thread count, running for about `duration`. Returns FLOP/s
/// (`2·m·k·n` per product).
pub fn measure_sgemm(m: i64, k: i64, n: i64, duration: Duration) -> f64 {
    let options = (Kind::Float, Device::Cpu);
    let a = Tensor::randn([m, k], options);
    let b = Tensor::randn([k, n], options);
    let out = Tensor::zeros([m, n], options);
    // One untimed product first, so libtorch's lazy initialisation is not timed.
    let _ = a.mm_out(&out, &b);
    let flops_per_product = 2.0 * (m * k * n) as f64;

    let started = Instant::now();
    let mut products = 0u64;
    while started.elapsed() < duration {
        for _ in 0..8 {
            let _ = a.mm_out(&out, &b);
        }
        products += 8;
    }
    let seconds = started.elapsed().as_secs_f64();
    products as f64 * flops_per_product / seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_architecture_cost() {
        let cost = WindowCost::of(Architecture {
            features: 5,
            window: 20,
            hidden_size: 16,
            num_layers: 1,
        });
        // Encoder 20·2·64·21; decoder input 2·64·16 once and recurrent 20·2·64·16;
        // output 20·2·16·5.
        assert_eq!(cost.matmul_flops, 53_760 + 2_048 + 40_960 + 3_200);
        // Two LSTMs 2·20·21·16, output bias 100, scaling 200, error 305.
        assert_eq!(cost.elementwise_flops, 13_440 + 100 + 200 + 305);
        assert_eq!(cost.total_flops(), 114_013);
    }

    #[test]
    fn stacked_layers_add_hidden_inputs() {
        let one = WindowCost::of(Architecture {
            features: 5,
            window: 10,
            hidden_size: 8,
            num_layers: 1,
        });
        let two = WindowCost::of(Architecture {
            features: 5,
            window: 10,
            hidden_size: 8,
            num_layers: 2,
        });
        // A second layer adds one H→H LSTM to the encoder and one to the decoder.
        let extra_layer = 10 * 2 * 32 * (8 + 8);
        assert_eq!(two.matmul_flops - one.matmul_flops, 2 * extra_layer);
    }

    #[test]
    fn sgemm_rate_is_positive() {
        let rate = measure_sgemm(64, 64, 64, Duration::from_millis(20));
        assert!(rate.is_finite(), "rate {rate}");
        assert!(rate > 0.0, "rate {rate}");
    }
}
