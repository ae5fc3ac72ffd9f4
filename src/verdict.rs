//! The verdict published on `sensors.scored` for every valid record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Normal,
    Anomaly,
    /// The device has fewer readings than one window; no score yet.
    WarmingUp,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Anomaly => "anomaly",
            Self::WarmingUp => "warming_up",
        }
    }
}

/// One output message. `score`, `feature_errors` and `top_feature` are absent while
/// the device is warming up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub device_id: String,
    /// Reading time, RFC 3339 in UTC with milliseconds.
    pub ts: String,
    pub status: Status,
    /// `feature_errors` combined by the model's aggregation (mean or max); above
    /// `threshold` means anomaly.
    pub score: Option<f64>,
    pub threshold: f64,
    /// Reconstruction error of each feature over the window, relative to its typical
    /// error on normal training data (1.0 = as usual).
    pub feature_errors: Option<BTreeMap<String, f64>>,
    /// The feature with the largest relative reconstruction error.
    pub top_feature: Option<String>,
    pub model_version: String,
    /// Source partition and offset of the record in the input topic.
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

/// Formats Unix milliseconds as RFC 3339 UTC; out-of-range values fall back to the epoch.
pub fn format_ts(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
