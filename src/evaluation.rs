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
    /// Index of the verdict's top feature, when scored.
    pub top_feature: Option<usize>,
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
                        score: assessment.score.as_ref().map(|s| s.score),
                        top_feature: assessment.score.as_ref().map(|s| s.top_feature()),
                        label,
                    }
                }
                Err(_) => {
                    rejected += 1;
                    RecordOutcome {
                        ts_ms: record.ts_ms,
                        status: None,
                        score: None,
                        top_feature: None,
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

/// Whether the `top_feature` of true-positive verdicts names a sensor that moved,
/// for one labelled anomalous period (a maximal run of labelled rows).
///
/// Each feature's shift is the distance between its mean over the period and its
/// mean over all rows labelled normal, in standard deviations of the normal rows.
/// The sensors that moved most are the ones an operator would look at first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopFeatureCheck {
    pub start: String,
    pub end: String,
    /// Features in decreasing order of shift, with the shift in standard deviations.
    pub moved: Vec<(String, f64)>,
    /// True-positive verdicts in the period.
    pub verdicts: u64,
    /// Of those, verdicts whose top feature is the sensor that moved most.
    pub first: u64,
    /// Of those, verdicts whose top feature is one of the two that moved most.
    pub first_two: u64,
}

/// Checks the top features of `outcomes` against the labelled periods of `series`;
/// `outcomes[i]` belongs to `series.records[i]`. Returns one check per period.
pub fn check_top_features(
    series: &LabelledSeries,
    outcomes: &[RecordOutcome],
    feature_names: &[&str],
) -> Vec<TopFeatureCheck> {
    let Some(labels) = &series.labels else {
        return Vec::new();
    };
    let features = feature_names.len();
    let normal: Vec<&[f32]> = series
        .records
        .iter()
        .zip(labels)
        .filter(|(_, &anomalous)| !anomalous)
        .map(|(r, _)| r.values.as_slice())
        .collect();
    let normal_stats: Vec<(f64, f64)> = (0..features)
        .map(|f| mean_std(normal.iter().map(|values| values[f] as f64)))
        .collect();

    let mut checks = Vec::new();
    let mut start = 0;
    while start < labels.len() {
        if !labels[start] {
            start += 1;
            continue;
        }
        let end = start + labels[start..].iter().take_while(|&&l| l).count();
        let period = &series.records[start..end];
        let mut moved: Vec<(usize, f64)> = (0..features)
            .map(|f| {
                let (mean, _) = mean_std(period.iter().map(|r| r.values[f] as f64));
                let (normal_mean, normal_std) = normal_stats[f];
                (f, (mean - normal_mean).abs() / normal_std.max(1e-9))
            })
            .collect();
        moved.sort_by(|a, b| b.1.total_cmp(&a.1));

        let mut check = TopFeatureCheck {
            start: crate::verdict::format_ts(period[0].ts_ms),
            end: crate::verdict::format_ts(period[period.len() - 1].ts_ms),
            moved: moved
                .iter()
                .map(|&(f, shift)| (feature_names[f].to_string(), shift))
                .collect(),
            verdicts: 0,
            first: 0,
            first_two: 0,
        };
        for outcome in &outcomes[start..end.min(outcomes.len())] {
            let Some(top) = outcome.top_feature else {
                continue;
            };
            if outcome.status != Some(Status::Anomaly) {
                continue;
            }
            check.verdicts += 1;
            if moved.first().is_some_and(|m| m.0 == top) {
                check.first += 1;
                check.first_two += 1;
            } else if moved.get(1).is_some_and(|m| m.0 == top) {
                check.first_two += 1;
            }
        }
        checks.push(check);
        start = end;
    }
    checks
}

fn mean_std(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut n, mut sum, mut sum_sq) = (0.0, 0.0, 0.0);
    for v in values {
        n += 1.0;
        sum += v;
        sum_sq += v * v;
    }
    if n == 0.0 {
        return (0.0, 0.0);
    }
    let mean = sum / n;
    (mean, (sum_sq / n - mean * mean).max(0.0).sqrt())
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
    fn top_feature_check_finds_moved_sensor() {
        use crate::dataset::LabelSource;
        use crate::record::SensorRecord;

        // Feature 1 jumps by 10 standard deviations in rows 4..8, feature 0 by 1.
        let labels: Vec<bool> = (0..12).map(|i| (4..8).contains(&i)).collect();
        let records = (0..12)
            .map(|i| {
                let noise = if i % 2 == 0 { 1.0 } else { -1.0 };
                let shift = if labels[i] { 1.0 } else { 0.0 };
                SensorRecord {
                    device_id: "d".into(),
                    ts_ms: i as i64 * 1000,
                    values: vec![noise + shift, noise + 10.0 * shift, noise],
                }
            })
            .collect();
        let series = LabelledSeries {
            path: "memory".into(),
            sha256: String::new(),
            records,
            labels: Some(labels.clone()),
            label_source: LabelSource::Column("anomaly".into()),
        };
        // Verdicts in the period name features 1, 1, 0 and 2; one row is not flagged.
        let tops = [Some(1), Some(1), Some(0), Some(2)];
        let outcomes: Vec<RecordOutcome> = (0..12)
            .map(|i| RecordOutcome {
                ts_ms: i as i64 * 1000,
                status: Some(if labels[i] && i != 7 {
                    Status::Anomaly
                } else {
                    Status::Normal
                }),
                score: Some(1.0),
                top_feature: if labels[i] { tops[i - 4] } else { Some(2) },
                label: Some(labels[i]),
            })
            .collect();

        let checks = check_top_features(&series, &outcomes, &["a", "b", "c"]);
        assert_eq!(checks.len(), 1);
        let check = &checks[0];
        assert_eq!(check.moved[0].0, "b");
        assert_eq!(check.moved[1].0, "a");
        assert!((check.moved[0].1 - 10.0).abs() < 1e-9, "{:?}", check.moved);
        assert_eq!(check.verdicts, 3);
        assert_eq!(check.first, 2);
        assert_eq!(check.first_two, 3);
        assert_eq!(check.start, crate::verdict::format_ts(4000));
        assert_eq!(check.end, crate::verdict::format_ts(7000));
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
