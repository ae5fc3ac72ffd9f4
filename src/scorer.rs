//! Batched inference: raw windows → scaled tensor → reconstruction errors → scores.

use tch::{Kind, Tensor};

use crate::model::{LoadedModel, ModelMeta};
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
}

impl Scorer {
    pub fn new(loaded: LoadedModel) -> Self {
        Self { loaded }
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

        let arch = self.loaded.meta.architecture;
        let (per_feature, features) = tch::no_grad(|| {
            let input =
                Tensor::from_slice(windows).view([count as i64, arch.window, arch.features]);
            let reconstruction = self.loaded.model.forward(&input);
            // [B, W, F] → mean over steps → [B, F]
            let errors = (reconstruction - &input)
                .square()
                .mean_dim(1, false, Kind::Float)
                .contiguous();
            (
                Vec::<f32>::try_from(errors.view([-1])),
                arch.features as usize,
            )
        });
        let per_feature = per_feature.expect("a contiguous float tensor converts to Vec<f32>");

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
