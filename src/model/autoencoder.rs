//! Sequence-to-sequence LSTM autoencoder over windows of `W` steps × `F` features.
//!
//! The encoder LSTM reads the window; its last hidden state (the bottleneck) is
//! repeated `W` times and decoded by a second LSTM, then a linear layer maps each
//! step back to `F` features. The model has to squeeze the window through `hidden`
//! numbers, so windows unlike the training data reconstruct badly.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, RNN};
use tch::Tensor;

/// Shape of the network; stored in `model.json` so a checkpoint rebuilds itself.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Features per step (`F`).
    pub features: i64,
    /// Steps per window (`W`).
    pub window: i64,
    /// LSTM hidden size, which is also the bottleneck size.
    pub hidden_size: i64,
    /// Stacked LSTM layers in the encoder and in the decoder.
    pub num_layers: i64,
}

#[derive(Debug)]
pub struct LstmAutoencoder {
    encoder: nn::LSTM,
    decoder: nn::LSTM,
    output: nn::Linear,
    arch: Architecture,
}

impl LstmAutoencoder {
    /// Creates the variables under `path` (`encoder.*`, `decoder.*`, `output.*`).
    pub fn new(path: &nn::Path, arch: Architecture) -> Self {
        let rnn = nn::RNNConfig {
            num_layers: arch.num_layers,
            batch_first: true,
            ..Default::default()
        };
        let encoder = nn::lstm(path / "encoder", arch.features, arch.hidden_size, rnn);
        let decoder = nn::lstm(path / "decoder", arch.hidden_size, arch.hidden_size, rnn);
        let output = nn::linear(
            path / "output",
            arch.hidden_size,
            arch.features,
            Default::default(),
        );
        Self {
            encoder,
            decoder,
            output,
            arch,
        }
    }

    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    /// Reconstructs a batch: `[B, W, F]` in, `[B, W, F]` out (scaled units).
    pub fn forward(&self, windows: &Tensor) -> Tensor {
        let (_, state) = self.encoder.seq(windows);
        // h has shape [num_layers, B, H]; the top layer's state is the code.
        let code = state.h().select(0, -1);
        let repeated = code.unsqueeze(1).expand([-1, self.arch.window, -1], false);
        let (decoded, _) = self.decoder.seq(&repeated);
        self.output.forward(&decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn output_shape_matches_input() {
        let vs = nn::VarStore::new(Device::Cpu);
        let arch = Architecture {
            features: 5,
            window: 7,
            hidden_size: 8,
            num_layers: 2,
        };
        let model = LstmAutoencoder::new(&vs.root(), arch);
        let input = Tensor::randn([3, 7, 5], (Kind::Float, Device::Cpu));
        assert_eq!(model.forward(&input).size(), vec![3, 7, 5]);
    }
}
