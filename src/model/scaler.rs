//! Per-feature standardisation fitted on training data.

use serde::{Deserialize, Serialize};

/// Standard deviations below this are treated as a constant feature.
const MIN_STD: f64 = 1e-8;

/// `z = (x - mean) / std` per feature.
///
/// A constant feature (std below 1e-8, such as AnoML-IoT's Air Quality, always 75) is
/// centred but keeps `std = 1`, so it cannot divide by zero and any later deviation
/// from the constant shows up in the sensor's own units.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Scaler {
    /// Fits on rows of `features` values each.
    pub fn fit<'a>(rows: impl IntoIterator<Item = &'a [f32]>, features: usize) -> Self {
        let mut count = 0u64;
        let mut mean = vec![0.0f64; features];
        let mut m2 = vec![0.0f64; features];
        // Welford's update keeps the variance accurate for large offsets.
        for row in rows {
            count += 1;
            for (i, &x) in row.iter().enumerate().take(features) {
                let x = x as f64;
                let delta = x - mean[i];
                mean[i] += delta / count as f64;
                m2[i] += delta * (x - mean[i]);
            }
        }
        let std = m2
            .iter()
            .map(|&m| {
                let std = if count > 1 {
                    (m / (count - 1) as f64).sqrt()
                } else {
                    0.0
                };
                if std < MIN_STD {
                    1.0
                } else {
                    std
                }
            })
            .collect();
        Self { mean, std }
    }

    pub fn len(&self) -> usize {
        self.mean.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mean.is_empty()
    }

    /// Scales a flat buffer of rows in place.
    pub fn transform_in_place(&self, values: &mut [f32]) {
        let features = self.len();
        for row in values.chunks_exact_mut(features) {
            for (i, x) in row.iter_mut().enumerate() {
                *x = ((*x as f64 - self.mean[i]) / self.std[i]) as f32;
            }
        }
    }

    /// Checks that the stored numbers can be used.
    pub fn validate(&self) -> Result<(), String> {
        if self.mean.len() != self.std.len() {
            return Err(format!(
                "{} means but {} standard deviations",
                self.mean.len(),
                self.std.len()
            ));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err("a mean is not finite".into());
        }
        if self.std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err("a standard deviation is not a positive finite number".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_column_is_centred_not_divided() {
        let rows: Vec<[f32; 2]> = vec![[1.0, 75.0], [2.0, 75.0], [3.0, 75.0]];
        let scaler = Scaler::fit(rows.iter().map(|r| r.as_slice()), 2);
        assert_eq!(scaler.std[1], 1.0);
        assert_eq!(scaler.mean[1], 75.0);
        let mut values = vec![2.0, 75.0, 3.0, 55.0];
        scaler.transform_in_place(&mut values);
        assert_eq!(values, vec![0.0, 0.0, 1.0, -20.0]);
        assert!(values.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn fit_matches_sample_statistics() {
        let rows: Vec<[f32; 1]> = vec![[2.0], [4.0], [4.0], [4.0], [5.0], [5.0], [7.0], [9.0]];
        let scaler = Scaler::fit(rows.iter().map(|r| r.as_slice()), 1);
        assert!((scaler.mean[0] - 5.0).abs() < 1e-12);
        assert!((scaler.std[0] - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert!(scaler.validate().is_ok());
    }
}
