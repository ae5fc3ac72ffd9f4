//! Stream-order scoring of a labelled series and its detection metrics.
//!
//! Records go through the same [`Detector`] as live traffic, in file order and in
//! batches, so offline figures are what the service would have published. Records
//! without a score (warming up, or rejected as late) count as predicted normal.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::dataset::LabelledSeries;
use crate::detector::Detector;
use crate::verdict::Status;

/// Point-wise confusion counts.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl Confusion {
    pub fn add(&mut self, predicted: bool, actual: bool) {
        match (predicted, actual) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, false) => self.tn += 1,
            (false, true) => self.fn_ += 1,
        }
    }

    pub fn merge(&mut self, other: &Confusion) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.tn += other.tn;
        self.fn_ += other.fn_;
    }

    fn ratio(numerator: u64, denominator: u64) -> f64 {
        if denominator == 0 {
            0.0
        } else {
            numerator as f64 / denominator as f64
        }
    }

    pub fn precision(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fn_)
    }

    /// `TP / (TP + (FP + FN) / 2)`, the same value as `2PR / (P + R)`.
    pub fn f1(&self) -> f64 {
        let denominator = self.tp as f64 + (self.fp + self.fn_) as f64 / 2.0;
        if denominator == 0.0 {
            0.0
        } else {
            self.tp as f64 / denominator
        }
    }

    /// False-alarm rate `FP / (FP + TN)`, a fraction.
    pub fn far(&self) -> f64 {
        Self::ratio(self.fp, self.fp + self.tn)
    }

    /// Missed-alarm rate `FN / (FN + TP)`, a fraction.
    pub fn mar(&self) -> f64 {
        Self::ratio(self.fn_, self.fn_ + self.tp)
    }
}

/// Detection quality of one run; rates are fractions in [0, 1].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub far: f64,
    pub mar: f64,
    pub confusion: Confusion,
}

impl From<Confusion> for Metrics {
    fn from(confusion: Confusion) -> Self {
        Self {
            precision: confusion.precision(),
            recall: confusion.recall(),
            f1: confusion.f1(),
            far: confusion.far(),
            mar: confusion.mar(),
            confusion,
        }
    }
}

/// Everything `evaluate --json` prints and the trainer stores in `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationReport {
    pub data: String,
    pub label_source: String,
    pub model_version: String,
    pub threshold: f64,
    pub records: usize,
    /// Verdict counts by status.
    pub verdicts: BTreeMap<&'static str, u64>,
    /// Records rejected by the window policy (late), with no verdict.
    pub rejected: u64,
    pub labelled_anomalous: usize,
    #[serde(flatten)]
    pub metrics: Option<Metrics>,
}

/// Per-record outcome kept for reports and threshold sweeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordOutcome {
    pub ts_ms: i64,
    pub status: Option<Status>,
    pub score: Option<f64>,
    pub label: Option<bool>,
}

/// Scores `series` in file order, `batch_size` records per inference batch.
pub fn evaluate(
    detector: &mut Detector,
    series: &LabelledSeries,
    batch_size: usize,
) -> (EvaluationReport, Vec<RecordOutcome>) {
    let mut outcomes = Vec::with_capacity(series.records.len());
    let mut verdicts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut rejected = 0u64;

    for chunk in series.records.chunks(batch_size.max(1)) {
        let results = detector.assess(chunk.iter().map(|r| (r, r.ts_ms)));
        for (record, result) in chunk.iter().zip(results) {
            let index = outcomes.len();
            let label = series.labels.as_ref().map(|l| l[index]);
            let outcome = match result {
                Ok(assessment) => {
                    *verdicts.entry(assessment.status.as_str()).or_default() += 1;
                    RecordOutcome {
                        ts_ms: record.ts_ms,
                        status: Some(assessment.status),
                        score: assessment.score.map(|s| s.score),
                        label,
                    }
                }
                Err(_) => {
                    rejected += 1;
                    RecordOutcome {
                        ts_ms: record.ts_ms,
                        status: None,
                        score: None,
                        label,
                    }
                }
            };
            outcomes.push(outcome);
        }
    }

    let metrics = series.labels.as_ref().map(|_| {
        let mut confusion = Confusion::default();
        for outcome in &outcomes {
            if let Some(label) = outcome.label {
                confusion.add(outcome.status == Some(Status::Anomaly), label);
            }
        }
        Metrics::from(confusion)
    });

    let meta = detector.scorer().meta();
    let report = EvaluationReport {
        data: series.path.display().to_string(),
        label_source: series.label_source.to_string(),
        model_version: meta.model_version.clone(),
        threshold: meta.threshold.value,
        records: series.records.len(),
        verdicts,
        rejected,
        labelled_anomalous: series.anomalous_count(),
        metrics,
    };
    (report, outcomes)
}

/// Detection quality if the threshold were `threshold`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SweepPoint {
    pub threshold: f64,
    #[serde(flatten)]
    pub metrics: Metrics,
}

/// Re-judges labelled `outcomes` at `points` thresholds spaced evenly in log scale
/// between the smallest and largest positive score, so a user can pick an operating
/// point. Records without a score count as predicted normal, as in [`evaluate`].
pub fn threshold_sweep(outcomes: &[RecordOutcome], points: usize) -> Vec<SweepPoint> {
    let positive = || outcomes.iter().filter_map(|o| o.score).filter(|s| *s > 0.0);
    let (Some(low), Some(high)) = (positive().reduce(f64::min), positive().reduce(f64::max)) else {
        return Vec::new();
    };
    let steps = points.max(2) - 1;
    (0..=steps)
        .map(|i| {
            let threshold = low * (high / low).powf(i as f64 / steps as f64);
            let mut confusion = Confusion::default();
            for outcome in outcomes {
                if let Some(label) = outcome.label {
                    confusion.add(outcome.score.is_some_and(|s| s > threshold), label);
                }
            }
            SweepPoint {
                threshold,
                metrics: Metrics::from(confusion),
            }
        })
        .collect()
}

impl EvaluationReport {
    /// Human-readable summary, one fact per line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let count = |status: &str| self.verdicts.get(status).copied().unwrap_or(0);
        out.push_str(&format!("data          {}\n", self.data));
        out.push_str(&format!("labels        {}\n", self.label_source));
        out.push_str(&format!(
            "model         {} (threshold {:.5})\n",
            self.model_version, self.threshold
        ));
        out.push_str(&format!(
            "records       {} ({} normal, {} anomaly, {} warming_up, {} rejected)\n",
            self.records,
            count("normal"),
            count("anomaly"),
            count("warming_up"),
            self.rejected
        ));
        if let Some(m) = &self.metrics {
            let c = &m.confusion;
            out.push_str(&format!(
                "precision     {:.4}\nrecall        {:.4}\nF1            {:.4}\nfalse alarms  {:.4} (FAR)\nmissed        {:.4} (MAR)\n",
                m.precision, m.recall, m.f1, m.far, m.mar
            ));
            out.push_str("confusion                 labelled anomaly  labelled normal\n");
            out.push_str(&format!(
                "  predicted anomaly       {:>16}  {:>15}\n",
                c.tp, c.fp
            ));
            out.push_str(&format!(
                "  predicted normal        {:>16}  {:>15}\n",
                c.fn_, c.tn
            ));
        } else {
            out.push_str("metrics       none (the data has no labels)\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_from_confusion() {
        let confusion = Confusion {
            tp: 8,
            fp: 2,
            tn: 88,
            fn_: 2,
        };
        let m = Metrics::from(confusion);
        assert!((m.precision - 0.8).abs() < 1e-12);
        assert!((m.recall - 0.8).abs() < 1e-12);
        assert!((m.f1 - 0.8).abs() < 1e-12);
        assert!((m.far - 2.0 / 90.0).abs() < 1e-12);
        assert!((m.mar - 0.2).abs() < 1e-12);
    }

    #[test]
    fn empty_confusion_has_zero_rates() {
        let m = Metrics::from(Confusion::default());
        assert_eq!(
            (m.precision, m.recall, m.f1, m.far, m.mar),
            (0.0, 0.0, 0.0, 0.0, 0.0)
        );
    }
}
