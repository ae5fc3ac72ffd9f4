//! Batched inference: raw windows → scaled values → reconstruction errors → scores.

use crate::model::{FusedAutoencoder, LoadedModel, ModelMeta};
use crate::verdict::Status;

/// Reconstruction error of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowScore {
    /// `feature_errors` combined by the model's [`crate::config::ScoreAggregation`].
    pub score: f64,
    /// Squared reconstruction error per feature, averaged over the window's steps and
    /// divided by the feature's typical error on normal data, in schema order.
    pub feature_errors: Vec<f64>,
}

impl WindowScore {
    /// Index of the feature with the largest error.
    pub fn top_feature(&self) -> usize {
        self.feature_errors
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0)
    }
}

/// A loaded model plus its threshold.
#[derive(Debug)]
pub struct Scorer {
    loaded: LoadedModel,
    /// The same weights for the fused forward pass that scoring runs.
    fused: FusedAutoencoder,
}

impl Scorer {
    pub fn new(loaded: LoadedModel) -> Self {
        let fused = FusedAutoencoder::from_vars(&loaded.vars, loaded.meta.architecture)
            .expect("the VarStore of an LstmAutoencoder contains all of its weights");
        Self { loaded, fused }
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.loaded.meta
    }

    /// Gives the model back, for example to change its threshold after calibration.
    pub fn into_model(self) -> LoadedModel {
        self.loaded
    }

    pub fn threshold(&self) -> f64 {
        self.loaded.meta.threshold.value
    }

    /// Values per window (`W × F`).
    pub fn window_values(&self) -> usize {
        let arch = self.loaded.meta.architecture;
        (arch.window * arch.features) as usize
    }

    pub fn status_of(&self, score: &WindowScore) -> Status {
        if score.score > self.threshold() {
            Status::Anomaly
        } else {
            Status::Normal
        }
    }

    /// Scores `windows.len() / (W × F)` windows of raw readings, oldest step first.
    /// The buffer is scaled in place.
    pub fn score_windows(&self, windows: &mut [f32]) -> Vec<WindowScore> {
        let per_window = self.window_values();
        let count = windows.len() / per_window;
        if count == 0 {
            return Vec::new();
        }
        debug_assert_eq!(windows.len(), count * per_window);
        self.loaded.meta.scaler.transform_in_place(windows);

        let features = self.loaded.meta.architecture.features as usize;
        // [B, W, F] → mean squared error over steps → [B, F]
        let per_feature = self.fused.reconstruction_errors(windows);

        per_feature
            .chunks_exact(features)
            .map(|errors| {
                let feature_errors: Vec<f64> = errors
                    .iter()
                    .zip(&self.loaded.meta.error_scale)
                    .map(|(&e, scale)| e as f64 / scale)
                    .collect();
                let score = self.loaded.meta.score_aggregation.combine(&feature_errors);
                WindowScore {
                    score,
                    feature_errors,
                }
            })
            .collect()
    }
}
