//! Checkpoint directory: weights plus `model.json`, everything needed to score.
//!
//! Files:
//! - `model.safetensors`: the weights, read back by the service (exact round trip);
//! - `model.pt`: the same weights as a TorchScript archive that Python's
//!   `torch.jit.load` opens (tch writes parameter names with `.` replaced by `|`);
//! - `model.json`: [`ModelMeta`], written last so a complete `model.json` means a
//!   complete checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use super::autoencoder::{Architecture, LstmAutoencoder};
use super::scaler::Scaler;
use crate::config::{ScoreAggregation, ThresholdMethod};
use crate::schema::FeatureSchema;

/// Format tag written into `model.json`; bumped when the layout changes.
pub const CHECKPOINT_FORMAT: &str = "iot-anomaly-checkpoint/1";
pub const META_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TORCHSCRIPT_FILE: &str = "model.pt";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("no model in {dir}: {file} not found; train one with `iot-anomaly-train --config config/anoml-iot.toml --out {dir}` or set model.dir")]
    Missing { dir: PathBuf, file: &'static str },
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("invalid {path}: {message}; retrain the model or restore the file")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot load weights from {path}: {cause}; the file does not match model.json, retrain the model")]
    Weights { path: PathBuf, cause: tch::TchError },
    #[error("cannot write checkpoint to {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// Alarm threshold and its derivation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdInfo {
    /// A window whose score is above this value is an anomaly.
    pub value: f64,
    pub method: ThresholdMethod,
    pub quantile: f64,
    pub multiplier: f64,
    /// Held-out normal windows the quantile was taken over.
    pub calibration_windows: usize,
    /// The fitted tail, for the `pot` method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pot: Option<PotFit>,
}

/// Generalized Pareto fit of the calibration scores above `initial_threshold`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PotFit {
    pub initial_threshold: f64,
    /// Shape ξ; above 0 for a heavy tail.
    pub shape: f64,
    /// Scale σ, in score units.
    pub scale: f64,
    /// Calibration scores above `initial_threshold`.
    pub excesses: usize,
    /// Target probability that a normal window exceeds the threshold.
    pub risk: f64,
}

/// Provenance of the model, so a verdict can be traced back to its data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainingInfo {
    pub data_path: String,
    /// SHA-256 of the training CSV's bytes.
    pub data_sha256: String,
    pub rows: usize,
    pub train_windows: usize,
    pub validation_windows: usize,
    pub seed: u64,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_validation_loss: f64,
    pub train_seconds: f64,
    pub time_column: Option<String>,
    pub label_column: Option<String>,
    pub device_column: Option<String>,
    /// Labelled anomalous periods of the training data (inclusive Unix seconds).
    pub anomaly_windows: Vec<[i64; 2]>,
}

/// Contents of `model.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelMeta {
    pub format: String,
    pub model_version: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    pub features: FeatureSchema,
    pub architecture: Architecture,
    pub scaler: Scaler,
    /// Typical squared reconstruction error of each feature on held-out normal
    /// windows (the mean or the 0.99 quantile, per `training.error_scale`). Each window's per-feature error is divided by it, so a noisy sensor
    /// does not drown a quiet one: 1.0 means "as large as usual".
    pub error_scale: Vec<f64>,
    /// Checkpoints written before this field existed used the mean.
    #[serde(default)]
    pub score_aggregation: ScoreAggregation,
    pub threshold: ThresholdInfo,
    pub training: TrainingInfo,
    /// Metrics of the stream-order evaluation run right after training.
    #[serde(default)]
    pub evaluation: Option<serde_json::Value>,
}

impl ModelMeta {
    /// Checks internal consistency; `path` only names the file in the error.
    pub fn validate(&self, path: &Path) -> Result<(), CheckpointError> {
        let invalid = |message: String| CheckpointError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if self.format != CHECKPOINT_FORMAT {
            return Err(invalid(format!(
                "format is {:?}, this build reads {CHECKPOINT_FORMAT:?}",
                self.format
            )));
        }
        let arch = &self.architecture;
        if arch.features != self.features.len() as i64 {
            return Err(invalid(format!(
                "architecture.features = {} but {} features are listed",
                arch.features,
                self.features.len()
            )));
        }
        if arch.window < 2 || arch.hidden_size < 1 || arch.num_layers < 1 {
            return Err(invalid(format!(
                "architecture {arch:?} has a non-positive size"
            )));
        }
        self.scaler
            .validate()
            .map_err(|m| invalid(format!("scaler: {m}")))?;
        if self.scaler.len() != self.features.len() {
            return Err(invalid(format!(
                "scaler has {} columns for {} features",
                self.scaler.len(),
                self.features.len()
            )));
        }
        if self.error_scale.len() != self.features.len()
            || self
                .error_scale
                .iter()
                .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(invalid(format!(
                "error_scale must hold {} positive finite numbers, found {:?}",
                self.features.len(),
                self.error_scale
            )));
        }
        if !(self.threshold.value.is_finite() && self.threshold.value > 0.0) {
            return Err(invalid(format!(
                "threshold.value = {} is not a positive finite number",
                self.threshold.value
            )));
        }
        Ok(())
    }
}

/// A checkpoint in memory, ready to score.
#[derive(Debug)]
pub struct LoadedModel {
    pub meta: ModelMeta,
    pub model: LstmAutoencoder,
    /// Owns the model's tensors; dropping it frees them.
    pub vars: nn::VarStore,
}

/// Writes weights (safetensors and TorchScript) and then `model.json` into `dir`.
pub fn save_checkpoint(
    dir: &Path,
    vars: &nn::VarStore,
    meta: &ModelMeta,
) -> Result<(), CheckpointError> {
    let write_error = |path: &Path, message: String| CheckpointError::Write {
        path: path.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e.to_string()))?;

    let weights = dir.join(WEIGHTS_FILE);
    vars.save(&weights)
        .map_err(|e| write_error(&weights, e.to_string()))?;
    let torchscript = dir.join(TORCHSCRIPT_FILE);
    vars.save(&torchscript)
        .map_err(|e| write_error(&torchscript, e.to_string()))?;

    let meta_path = dir.join(META_FILE);
    let staging = dir.join(format!("{META_FILE}.tmp"));
    let json =
        serde_json::to_vec_pretty(meta).map_err(|e| write_error(&meta_path, e.to_string()))?;
    std::fs::write(&staging, json).map_err(|e| write_error(&staging, e.to_string()))?;
    std::fs::rename(&staging, &meta_path).map_err(|e| write_error(&meta_path, e.to_string()))?;
    Ok(())
}

/// Reads `model.json`, validates it and loads the weights on the CPU.
pub fn load_checkpoint(dir: &Path) -> Result<LoadedModel, CheckpointError> {
    let meta_path = dir.join(META_FILE);
    if !meta_path.is_file() {
        return Err(CheckpointError::Missing {
            dir: dir.to_path_buf(),
            file: META_FILE,
        });
    }
    let text = std::fs::read(&meta_path).map_err(|source| CheckpointError::Io {
        path: meta_path.clone(),
        cause: source,
    })?;
    let meta: ModelMeta = serde_json::from_slice(&text).map_err(|e| CheckpointError::Invalid {
        path: meta_path.clone(),
        message: e.to_string(),
    })?;
    meta.validate(&meta_path)?;

    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(CheckpointError::Missing {
            dir: dir.to_path_buf(),
            file: WEIGHTS_FILE,
        });
    }
    let mut vars = nn::VarStore::new(Device::Cpu);
    let model = LstmAutoencoder::new(&vars.root(), meta.architecture);
    vars.load(&weights)
        .map_err(|source| CheckpointError::Weights {
            path: weights,
            cause: source,
        })?;
    vars.freeze();
    Ok(LoadedModel { meta, model, vars })
}
