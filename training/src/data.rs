//! Step 1: labelled history → normal windows → chronological train/validation/calibration split.

use std::collections::{HashMap, VecDeque};

use iot_anomaly::config::{LatePolicy, WindowSettings};
use iot_anomaly::dataset::LabelledSeries;
use iot_anomaly::window::{Push, WindowStore};

/// Windows stored back to back, `W × F` raw values each, in time order.
#[derive(Debug, Clone, Default)]
pub struct WindowSet {
    pub values: Vec<f32>,
    pub count: usize,
    /// For each window, the index of the run of back-to-back normal windows it
    /// belongs to; a run ends at an anomalous row, a late row or a new device.
    pub runs: Vec<usize>,
}

impl WindowSet {
    fn slice(&self, range: std::ops::Range<usize>, per_window: usize) -> WindowSet {
        WindowSet {
            values: self.values[range.start * per_window..range.end * per_window].to_vec(),
            count: range.len(),
            runs: self.runs[range].to_vec(),
        }
    }

    fn extend(&mut self, other: &WindowSet) {
        self.values.extend_from_slice(&other.values);
        self.count += other.count;
        self.runs.extend_from_slice(&other.runs);
    }

    /// Iterates over the rows (`F` values each) of every window.
    pub fn rows(&self, features: usize) -> impl Iterator<Item = &[f32]> {
        self.values.chunks_exact(features)
    }
}

#[derive(Debug)]
pub struct Split {
    pub train: WindowSet,
    pub validation: WindowSet,
    pub calibration: WindowSet,
}

/// Collects every window whose rows are all labelled normal (all rows, when the data
/// has no labels), using the service's own [`WindowStore`] so windows are built the
/// way live traffic builds them. Late rows are skipped, as the service would.
pub fn normal_windows(series: &LabelledSeries, window: usize, features: usize) -> WindowSet {
    let settings = WindowSettings {
        max_devices: usize::MAX,
        idle_ttl_s: u64::MAX / 1000,
        max_gap_s: 0,
        late_policy: LatePolicy::DeadLetter,
    };
    let mut store = WindowStore::new(window, features, &settings);
    let mut recent_labels: HashMap<&str, DeviceRun> = HashMap::new();
    let mut set = WindowSet::default();
    let mut scratch = Vec::with_capacity(window * features);
    let mut next_run = 0;

    for (index, record) in series.records.iter().enumerate() {
        scratch.clear();
        let device = recent_labels.entry(record.device_id.as_str()).or_default();
        let Ok(push) = store.push(record, record.ts_ms, &mut scratch) else {
            device.run = None;
            continue;
        };
        let label = series.labels.as_ref().is_some_and(|l| l[index]);
        device.labels.push_back(label);
        if device.labels.len() > window {
            device.labels.pop_front();
        }
        if push == Push::Ready && !device.labels.iter().any(|&anomalous| anomalous) {
            let run = *device.run.get_or_insert_with(|| {
                next_run += 1;
                next_run - 1
            });
            set.values.extend_from_slice(&scratch);
            set.count += 1;
            set.runs.push(run);
        } else {
            device.run = None;
        }
    }
    set
}

/// Labels of a device's last `W` rows and the run its latest normal window is in.
#[derive(Default)]
struct DeviceRun {
    labels: VecDeque<bool>,
    run: Option<usize>,
}

/// Splits windows in time order: the first part trains, the next validates (early
/// stopping), the last calibrates the threshold. No shuffling, so no held-out window
/// precedes a training window.
pub fn split_chronologically(
    set: &WindowSet,
    per_window: usize,
    validation_fraction: f64,
    calibration_fraction: f64,
) -> Split {
    let n = set.count;
    let calibration = ((n as f64 * calibration_fraction).round() as usize)
        .max(1)
        .min(n);
    let validation = ((n as f64 * validation_fraction).round() as usize)
        .max(1)
        .min(n - calibration);
    let train_end = n - calibration - validation;
    Split {
        train: set.slice(0..train_end, per_window),
        validation: set.slice(train_end..train_end + validation, per_window),
        calibration: set.slice(train_end + validation..n, per_window),
    }
}

/// Splits each run of back-to-back normal windows in time order, as
/// [`split_chronologically`] does for the whole set, and concatenates the parts.
/// Every normal period between anomalies then contributes to training, validation
/// and calibration, so a regime seen only late in the history (a different time of
/// day, say) is not left entirely to calibration.
pub fn split_per_run(
    set: &WindowSet,
    per_window: usize,
    validation_fraction: f64,
    calibration_fraction: f64,
) -> Split {
    let mut split = Split {
        train: WindowSet::default(),
        validation: WindowSet::default(),
        calibration: WindowSet::default(),
    };
    let mut start = 0;
    while start < set.count {
        let run = set.runs[start];
        let end = start + set.runs[start..].iter().take_while(|&&r| r == run).count();
        let n = end - start;
        let calibration = (n as f64 * calibration_fraction).round() as usize;
        let validation = ((n as f64 * validation_fraction).round() as usize).min(n - calibration);
        let train_end = end - calibration - validation;
        split.train.extend(&set.slice(start..train_end, per_window));
        split
            .validation
            .extend(&set.slice(train_end..train_end + validation, per_window));
        split
            .calibration
            .extend(&set.slice(train_end + validation..end, per_window));
        start = end;
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_anomaly::dataset::LabelSource;
    use iot_anomaly::record::SensorRecord;

    fn series(labels: Vec<bool>) -> LabelledSeries {
        let records = (0..labels.len())
            .map(|i| SensorRecord {
                device_id: "d".into(),
                ts_ms: i as i64 * 1000,
                values: vec![i as f32],
            })
            .collect();
        LabelledSeries {
            path: "memory".into(),
            sha256: String::new(),
            records,
            labels: Some(labels),
            label_source: LabelSource::Column("anomaly".into()),
        }
    }

    #[test]
    fn windows_touching_anomalies_are_dropped() {
        // Rows 0..10, row 5 anomalous, W = 3: windows end at rows 2..=9, and those
        // ending at 5, 6 and 7 contain row 5.
        let mut labels = vec![false; 10];
        labels[5] = true;
        let set = normal_windows(&series(labels), 3, 1);
        assert_eq!(set.count, 5);
        assert_eq!(&set.values[..3], &[0.0, 1.0, 2.0]);
        assert_eq!(&set.values[set.values.len() - 3..], &[7.0, 8.0, 9.0]);
    }

    #[test]
    fn split_keeps_time_order() {
        let set = normal_windows(&series(vec![false; 22]), 3, 1);
        assert_eq!(set.count, 20);
        let split = split_chronologically(&set, 3, 0.2, 0.1);
        assert_eq!(
            (
                split.train.count,
                split.validation.count,
                split.calibration.count
            ),
            (14, 4, 2)
        );
        assert_eq!(split.validation.values[0], 14.0);
        assert_eq!(split.calibration.values[0], 18.0);
    }
}
