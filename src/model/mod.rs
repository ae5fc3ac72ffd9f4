//! The LSTM autoencoder, its input scaler, its on-disk checkpoint and its cost.

mod autoencoder;
mod checkpoint;
mod cost;
mod fused;
mod scaler;

pub use autoencoder::{Architecture, LstmAutoencoder};
pub use checkpoint::{
    load_checkpoint, save_checkpoint, CheckpointError, LoadedModel, ModelMeta, PotFit,
    ThresholdInfo, TrainingInfo, CHECKPOINT_FORMAT, META_FILE, TORCHSCRIPT_FILE, WEIGHTS_FILE,
};
pub use cost::{measure_sgemm, WindowCost};
pub use fused::FusedAutoencoder;
pub use scaler::Scaler;
