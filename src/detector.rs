//! Per-device windows plus batched scoring: the step the service and the offline
//! evaluation share, so their verdicts cannot disagree.

use crate::config::WindowSettings;
use crate::record::{RejectReason, SensorRecord};
use crate::scorer::{Scorer, WindowScore};
use crate::verdict::{format_ts, Status, Verdict};
use crate::window::{Push, WindowEvents, WindowStore};

/// Outcome for one valid record.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub status: Status,
    /// Absent while the device warms up.
    pub score: Option<WindowScore>,
}

#[derive(Debug)]
pub struct Detector {
    windows: WindowStore,
    scorer: Scorer,
    /// Reused buffer of ready windows, `W × F` values each.
    batch: Vec<f32>,
}

impl Detector {
    pub fn new(scorer: Scorer, settings: &WindowSettings) -> Self {
        let arch = scorer.meta().architecture;
        Self {
            windows: WindowStore::new(arch.window as usize, arch.features as usize, settings),
            scorer,
            batch: Vec::new(),
        }
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
        let mut results = Vec::new();
        let mut ready = Vec::new();
        for (record, now_ms) in records {
            match self.windows.push(record, now_ms, &mut self.batch) {
                Ok(Push::Ready) => {
                    ready.push(results.len());
                    results.push(Ok(Assessment {
                        status: Status::Normal,
                        score: None,
                    }));
                }
                Ok(Push::WarmingUp { .. }) => results.push(Ok(Assessment {
                    status: Status::WarmingUp,
                    score: None,
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
        results
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
