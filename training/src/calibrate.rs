//! Step 3: derive the alarm threshold from held-out normal windows.

use iot_anomaly::config::{ThresholdMethod, TrainingSettings};
use iot_anomaly::model::ThresholdInfo;
use iot_anomaly::scorer::WindowScore;

/// Quantile `q` of `values` with linear interpolation between order statistics (the
/// default of NumPy's `quantile`). `values` must not be empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lower = position.floor() as usize;
    let upper = position.ceil() as usize;
    let fraction = position - lower as f64;
    sorted[lower] + (sorted[upper] - sorted[lower]) * fraction
}

/// Smallest per-feature error scale, in squared standard deviations. A feature that
/// the model reconstructs almost perfectly (a constant sensor) would otherwise turn
/// rounding noise into huge relative errors.
const MIN_ERROR_SCALE: f64 = 1e-4;

/// Mean per-feature error of `scores` (computed with unit scales), floored at 1e-4.
pub fn error_scale(scores: &[WindowScore], features: usize) -> Vec<f64> {
    let mut sums = vec![0.0; features];
    for score in scores {
        for (sum, error) in sums.iter_mut().zip(&score.feature_errors) {
            *sum += error;
        }
    }
    sums.iter()
        .map(|sum| (sum / scores.len().max(1) as f64).max(MIN_ERROR_SCALE))
        .collect()
}

/// Threshold = `multiplier × quantile(q)` of the calibration scores.
pub fn threshold(scores: &[f64], settings: &TrainingSettings) -> anyhow::Result<ThresholdInfo> {
    anyhow::ensure!(
        !scores.is_empty(),
        "no calibration windows: the data has too few normal rows for training.window = {}",
        settings.window
    );
    let value = match settings.threshold_method {
        ThresholdMethod::Quantile => {
            settings.threshold_multiplier * quantile(scores, settings.threshold_quantile)
        }
    };
    anyhow::ensure!(
        value.is_finite() && value > 0.0,
        "calibration gave threshold {value}; the calibration windows reconstruct perfectly, so the data may be constant"
    );
    Ok(ThresholdInfo {
        value,
        method: settings.threshold_method,
        quantile: settings.threshold_quantile,
        multiplier: settings.threshold_multiplier,
        calibration_windows: scores.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates() {
        let values = [4.0, 1.0, 3.0, 2.0, 5.0];
        assert_eq!(quantile(&values, 0.0), 1.0);
        assert_eq!(quantile(&values, 0.5), 3.0);
        assert_eq!(quantile(&values, 1.0), 5.0);
        assert!((quantile(&values, 0.9) - 4.6).abs() < 1e-12);
    }

    #[test]
    fn threshold_applies_multiplier() {
        let settings = TrainingSettings {
            threshold_quantile: 1.0,
            threshold_multiplier: 1.5,
            ..Default::default()
        };
        let info = threshold(&[0.1, 0.2, 0.4], &settings).unwrap();
        assert!((info.value - 0.6).abs() < 1e-12);
        assert_eq!(info.calibration_windows, 3);
    }
}
