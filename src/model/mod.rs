//! The LSTM autoencoder, its input scaler and its on-disk checkpoint.

mod autoencoder;
mod checkpoint;
mod scaler;

pub use autoencoder::{Architecture, LstmAutoencoder};
pub use checkpoint::{
    load_checkpoint, save_checkpoint, CheckpointError, LoadedModel, ModelMeta, PotFit,
    ThresholdInfo, TrainingInfo, CHECKPOINT_FORMAT, META_FILE, TORCHSCRIPT_FILE, WEIGHTS_FILE,
};
pub use scaler::Scaler;
