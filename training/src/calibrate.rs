//! Step 3: derive the alarm threshold from held-out normal windows.

use iot_anomaly::config::{ErrorScale, ThresholdMethod, TrainingSettings};
use iot_anomaly::model::{PotFit, ThresholdInfo};
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

/// Per-feature statistic `kind` of the errors in `scores` (computed with unit
/// scales), floored at 1e-4.
pub fn error_scale(scores: &[WindowScore], features: usize, kind: ErrorScale) -> Vec<f64> {
    (0..features)
        .map(|feature| {
            let errors: Vec<f64> = scores.iter().map(|s| s.feature_errors[feature]).collect();
            let value = match kind {
                _ if errors.is_empty() => 0.0,
                ErrorScale::Mean => errors.iter().sum::<f64>() / errors.len() as f64,
                ErrorScale::P99 => quantile(&errors, 0.99),
            };
            value.max(MIN_ERROR_SCALE)
        })
        .collect()
}

/// Minimum number of scores above the initial threshold for a tail fit.
const MIN_EXCESSES: usize = 5;

/// Derives the threshold from the calibration scores with the configured method.
pub fn threshold(scores: &[f64], settings: &TrainingSettings) -> anyhow::Result<ThresholdInfo> {
    anyhow::ensure!(
        !scores.is_empty(),
        "no calibration windows: the data has too few normal rows for training.window = {}",
        settings.window
    );
    let (value, pot) = match settings.threshold_method {
        ThresholdMethod::Quantile => (
            settings.threshold_multiplier * quantile(scores, settings.threshold_quantile),
            None,
        ),
        ThresholdMethod::Pot => {
            let fit = fit_pot(scores, settings.pot_initial_quantile, settings.pot_risk)?;
            (pot_threshold(&fit, scores.len()), Some(fit))
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
        pot,
    })
}

/// Fits a generalized Pareto distribution to the excesses of `scores` over their
/// `initial_quantile`, by the method of moments: with excess mean `m` and variance
/// `v`, shape `ξ = (1 − m²/v) / 2` and scale `σ = m (1 + m²/v) / 2`. The moments
/// fit needs no iteration, so unlike maximum likelihood it has no convergence
/// failure on the small calibration sets (tens of excesses) it is used on.
pub fn fit_pot(scores: &[f64], initial_quantile: f64, risk: f64) -> anyhow::Result<PotFit> {
    let initial_threshold = quantile(scores, initial_quantile);
    let excesses: Vec<f64> = scores
        .iter()
        .filter(|&&s| s > initial_threshold)
        .map(|s| s - initial_threshold)
        .collect();
    anyhow::ensure!(
        excesses.len() >= MIN_EXCESSES,
        "threshold_method = \"pot\" found {} of {} calibration scores above quantile {initial_quantile}, fewer than {MIN_EXCESSES}; lower training.pot_initial_quantile, hold out more data with training.calibration_fraction, or use threshold_method = \"quantile\"",
        excesses.len(),
        scores.len()
    );
    let n = excesses.len() as f64;
    let mean = excesses.iter().sum::<f64>() / n;
    let variance = excesses.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let (shape, scale) = if variance > 0.0 {
        let ratio = mean * mean / variance;
        (0.5 * (1.0 - ratio), 0.5 * mean * (1.0 + ratio))
    } else {
        // All excesses equal: an exponential tail with that mean.
        (0.0, mean)
    };
    Ok(PotFit {
        initial_threshold,
        shape,
        scale,
        excesses: excesses.len(),
        risk,
    })
}

/// Score exceeded with probability `fit.risk`, given `total` calibration scores:
/// `t + σ/ξ · ((risk · n / N_t)^(−ξ) − 1)`, or `t − σ · ln(risk · n / N_t)` as ξ → 0.
pub fn pot_threshold(fit: &PotFit, total: usize) -> f64 {
    let tail_share = fit.risk * total as f64 / fit.excesses as f64;
    if fit.shape.abs() < 1e-9 {
        fit.initial_threshold - fit.scale * tail_share.ln()
    } else {
        fit.initial_threshold + fit.scale / fit.shape * (tail_share.powf(-fit.shape) - 1.0)
    }
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

    #[test]
    fn error_scale_uses_requested_statistic() {
        // Feature 0's errors are 1..=100, feature 1's are all 2.
        let scores: Vec<WindowScore> = (1..=100)
            .map(|i| WindowScore {
                score: 0.0,
                feature_errors: vec![i as f64, 2.0],
            })
            .collect();
        let mean = error_scale(&scores, 2, ErrorScale::Mean);
        assert_eq!(mean, vec![50.5, 2.0]);
        let p99 = error_scale(&scores, 2, ErrorScale::P99);
        assert!((p99[0] - 99.01).abs() < 1e-9, "{p99:?}");
        assert_eq!(p99[1], 2.0);
    }

    /// Deterministic sample of the exponential distribution with mean 1, by its
    /// inverse CDF on an even grid.
    fn exponential_sample(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| -(1.0 - (i as f64 + 0.5) / n as f64).ln())
            .collect()
    }

    #[test]
    fn pot_recovers_exponential_tail() {
        // An exponential tail has shape 0 and scale equal to its mean, and its
        // 1 − 1e-4 quantile is ln(1e4) ≈ 9.21.
        let scores = exponential_sample(20_000);
        let fit = fit_pot(&scores, 0.9, 1e-4).unwrap();
        assert!(fit.shape.abs() < 0.05, "shape {}", fit.shape);
        assert!((fit.scale - 1.0).abs() < 0.05, "scale {}", fit.scale);
        assert_eq!(fit.excesses, 2000);
        let value = pot_threshold(&fit, scores.len());
        assert!((value - 1e4_f64.ln()).abs() < 0.3, "threshold {value}");
    }

    #[test]
    fn pot_extrapolates_beyond_sample() {
        // With 1000 scores, risk 1e-4 requests a score never seen: the fitted tail
        // must reach above the sample maximum.
        let scores = exponential_sample(1000);
        let settings = TrainingSettings {
            threshold_method: ThresholdMethod::Pot,
            pot_initial_quantile: 0.9,
            pot_risk: 1e-4,
            ..Default::default()
        };
        let info = threshold(&scores, &settings).unwrap();
        let max = scores.iter().copied().fold(f64::MIN, f64::max);
        assert!(info.value > max, "threshold {} vs max {max}", info.value);
        assert!(info.pot.is_some());
    }

    #[test]
    fn pot_rejects_too_few_excesses() {
        let settings = TrainingSettings {
            threshold_method: ThresholdMethod::Pot,
            pot_initial_quantile: 0.9,
            ..Default::default()
        };
        let error = threshold(&exponential_sample(20), &settings).unwrap_err();
        assert!(
            error.to_string().contains("pot_initial_quantile"),
            "{error}"
        );
    }
}
