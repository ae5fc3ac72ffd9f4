//! Per-device windows plus batched scoring: the step the service and the offline
//! evaluation share, so their verdicts cannot disagree.

use crate::config::WindowSettings;
use crate::record::{RejectReason, SensorRecord};
use crate::scorer::{Scorer, WindowScore};
use crate::verdict::{format_ts, Status, Verdict};
use crate::window::{Push, Pushed, WindowEvents, WindowStore};

/// Outcome for one valid record.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub status: Status,
    /// Absent while the device warms up.
    pub score: Option<WindowScore>,
    /// The status and score repeat the device's last scored window, because this
    /// record fell between two scored ones (`scoring.stride`).
    pub carried: bool,
}

#[derive(Debug)]
pub struct Detector {
    windows: WindowStore,
    scorer: Scorer,
    /// Reused buffer of ready windows, `W × F` values each.
    batch: Vec<f32>,
    /// Every `stride`-th full window of a device is scored.
    stride: u64,
    /// The last scored assessment of each window slot; kept only when `stride > 1`.
    last_scored: Vec<Option<Assessment>>,
}

impl Detector {
    pub fn new(scorer: Scorer, settings: &WindowSettings) -> Self {
        let arch = scorer.meta().architecture;
        Self {
            windows: WindowStore::new(arch.window as usize, arch.features as usize, settings),
            scorer,
            batch: Vec::new(),
            stride: 1,
            last_scored: Vec::new(),
        }
    }

    /// Scores only every `stride`-th full window of each device (`scoring.stride`);
    /// the records in between repeat the device's last scored assessment, marked
    /// `carried`. The first full window after a (re)start is always scored.
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.stride = stride.max(1) as u64;
        self
    }

    pub fn scorer(&self) -> &Scorer {
        &self.scorer
    }

    pub fn into_scorer(self) -> Scorer {
        self.scorer
    }

    /// Replaces the model between two batches and returns the old one. The caller
    /// checks compatibility first: device windows are kept, so the new model must
    /// have the same features and window length.
    pub fn replace_scorer(&mut self, scorer: Scorer) -> Scorer {
        std::mem::replace(&mut self.scorer, scorer)
    }

    pub fn device_count(&self) -> usize {
        self.windows.device_count()
    }

    pub fn take_window_events(&mut self) -> WindowEvents {
        self.windows.take_events()
    }

    /// Appends each record to its device's window, in order, and scores every full
    /// window in one inference batch. `records` pairs each record with "now" in Unix
    /// milliseconds for idle-device expiry. Returns one result per record, in order;
    /// a record rejected by the window policy (late) comes back as `Err`.
    pub fn assess<'a>(
        &mut self,
        records: impl IntoIterator<Item = (&'a SensorRecord, i64)>,
    ) -> Vec<Result<Assessment, RejectReason>> {
        self.batch.clear();
        let per_window = self.scorer.window_values();
        let mut results = Vec::new();
        let mut ready = Vec::new();
        // With a stride: (result index, slot, carried) of every full window, in order.
        let mut strided = Vec::new();
        let pending = Assessment {
            status: Status::Normal,
            score: None,
            carried: false,
        };
        for (record, now_ms) in records {
            match self.windows.push_tracked(record, now_ms, &mut self.batch) {
                Ok(Pushed {
                    push: Push::Ready,
                    slot,
                    full_before,
                }) => {
                    let scored = full_before % self.stride == 0;
                    if scored {
                        ready.push(results.len());
                    } else {
                        // Not scored: drop the window just copied out.
                        self.batch.truncate(self.batch.len() - per_window);
                    }
                    if self.stride > 1 {
                        strided.push((results.len(), slot, !scored));
                    }
                    results.push(Ok(pending.clone()));
                }
                Ok(Pushed {
                    push: Push::WarmingUp { .. },
                    ..
                }) => results.push(Ok(Assessment {
                    status: Status::WarmingUp,
                    ..pending.clone()
                })),
                Err(reason) => results.push(Err(reason)),
            }
        }

        let scores = self.scorer.score_windows(&mut self.batch);
        debug_assert_eq!(scores.len(), ready.len());
        for (index, score) in ready.into_iter().zip(scores) {
            if let Ok(assessment) = &mut results[index] {
                assessment.status = self.scorer.status_of(&score);
                assessment.score = Some(score);
            }
        }
        self.carry_forward(&mut results, strided);
        results
    }

    /// Gives each record that fell between two scored windows the last scored
    /// assessment of its device, going through the batch in record order so a record
    /// scored earlier in the same batch counts.
    fn carry_forward(
        &mut self,
        results: &mut [Result<Assessment, RejectReason>],
        strided: Vec<(usize, usize, bool)>,
    ) {
        for (index, slot, carried) in strided {
            if self.last_scored.len() <= slot {
                self.last_scored.resize(slot + 1, None);
            }
            let Ok(assessment) = &mut results[index] else {
                continue;
            };
            if carried {
                // A device's first full window is always scored, and its slot keeps that
                // assessment until the device is evicted, so one is always there.
                if let Some(last) = &self.last_scored[slot] {
                    *assessment = Assessment {
                        carried: true,
                        ..last.clone()
                    };
                }
            } else {
                self.last_scored[slot] = Some(assessment.clone());
            }
        }
    }

    /// Builds the output message for one assessed record.
    pub fn verdict(
        &self,
        record: &SensorRecord,
        assessment: &Assessment,
        partition: Option<i32>,
        offset: Option<i64>,
    ) -> Verdict {
        let meta = self.scorer.meta();
        let names: Vec<&str> = meta.features.names().collect();
        let (score, feature_errors, top_feature) = match &assessment.score {
            Some(score) => (
                Some(score.score),
                Some(
                    names
                        .iter()
                        .zip(&score.feature_errors)
                        .map(|(name, error)| (name.to_string(), *error))
                        .collect(),
                ),
                Some(names[score.top_feature()].to_string()),
            ),
            None => (None, None, None),
        };
        Verdict {
            device_id: record.device_id.clone(),
            ts: format_ts(record.ts_ms),
            status: assessment.status,
            score,
            threshold: self.scorer.threshold(),
            feature_errors,
            top_feature,
            model_version: meta.model_version.clone(),
            partition,
            offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FeatureSpec;
    use crate::model::Architecture;
    use crate::schema::FeatureSchema;
    use crate::workload::stand_in_model;

    const WINDOW: i64 = 3;

    fn detector(stride: usize) -> Detector {
        let schema = FeatureSchema::new(vec![FeatureSpec {
            name: "x".into(),
            aliases: Vec::new(),
            min: None,
            max: None,
        }])
        .unwrap();
        let arch = Architecture {
            features: 1,
            window: WINDOW,
            hidden_size: 4,
            num_layers: 1,
        };
        let scorer = Scorer::new(stand_in_model(&schema, arch, 1));
        Detector::new(scorer, &WindowSettings::default()).with_stride(stride)
    }

    fn reading(device: &str, ts_ms: i64) -> SensorRecord {
        SensorRecord {
            device_id: device.into(),
            ts_ms,
            values: vec![(ts_ms % 7) as f32],
        }
    }

    fn assess(detector: &mut Detector, records: &[SensorRecord]) -> Vec<Assessment> {
        detector
            .assess(records.iter().map(|r| (r, r.ts_ms)))
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn stride_scores_every_kth_window() {
        let mut detector = detector(3);
        let records: Vec<SensorRecord> = (0..9).map(|ts| reading("a", ts)).collect();
        let results = assess(&mut detector, &records);

        assert_eq!(results[0].status, Status::WarmingUp);
        assert_eq!(results[1].status, Status::WarmingUp);
        let carried: Vec<bool> = results[2..].iter().map(|a| a.carried).collect();
        assert_eq!(carried, [false, true, true, false, true, true, false]);
        // Carried records repeat the last scored window's status and score.
        for (scored, copies) in [(2, [3, 4]), (5, [6, 7])] {
            for copy in copies {
                assert_eq!(results[copy].status, results[scored].status);
                assert_eq!(results[copy].score, results[scored].score);
            }
        }
        assert_ne!(results[2].score, results[5].score);
    }

    #[test]
    fn stride_carries_per_device_across_batches() {
        let mut detector = detector(2);
        let mut last_scored: std::collections::HashMap<String, Assessment> = Default::default();
        // Two devices interleaved, assessed in batches of three records.
        let records: Vec<SensorRecord> = (0..12)
            .flat_map(|ts| [reading("a", ts), reading("b", 100 + ts)])
            .collect();
        for batch in records.chunks(3) {
            for (record, result) in batch.iter().zip(assess(&mut detector, batch)) {
                let device = record.device_id.as_str();
                if result.carried {
                    let expected = &last_scored[device];
                    assert_eq!(result.score, expected.score, "device {device}");
                    assert_eq!(result.status, expected.status, "device {device}");
                } else if result.score.is_some() {
                    last_scored.insert(device.to_owned(), result);
                }
            }
        }
        assert_eq!(last_scored.len(), 2);
    }

    #[test]
    fn stride_one_scores_every_window() {
        let mut detector = detector(1);
        let records: Vec<SensorRecord> = (0..6).map(|ts| reading("a", ts)).collect();
        let results = assess(&mut detector, &records);
        let scored = results.iter().filter(|a| a.score.is_some()).count();
        assert_eq!(scored, 6 - (WINDOW as usize - 1));
        assert!(results.iter().all(|a| !a.carried));
    }
}
