//! Alert episodes: per-device state that turns a stream of verdicts into one
//! `opened` event when a device becomes anomalous and one `closed` event when it
//! recovers, so one long fault is one alert instead of thousands of verdicts.
//!
//! A device opens an episode when `open_after` of its last `of_last` scored verdicts
//! are anomalies, and closes it after `close_after` normal verdicts in a row.
//! Warming-up verdicts and records without a verdict do not count either way.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::AlertSettings;
use crate::verdict::{format_ts, Status};

/// Event published on the alerts topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertEvent {
    pub event: AlertEventKind,
    /// `<device_id>@<start>`, the same in the `opened` and the `closed` event.
    pub alert_id: String,
    pub device_id: String,
    /// Reading time of the first anomalous verdict of the episode (RFC 3339, UTC).
    pub start: String,
    /// Reading time of the last anomalous verdict; only in `closed` events.
    pub end: Option<String>,
    /// `end − start` in seconds; only in `closed` events.
    pub duration_s: Option<f64>,
    /// Highest score so far, and the top feature of the verdict that had it.
    pub peak_score: f64,
    pub top_feature: Option<String>,
    pub threshold: f64,
    /// Anomalous verdicts in the episode so far.
    pub anomalous_verdicts: u64,
    pub model_version: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AlertEventKind {
    Opened,
    Closed,
}

impl AlertEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Closed => "closed",
        }
    }
}

/// One scored verdict, as the tracker needs it.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub device_id: &'a str,
    pub ts_ms: i64,
    pub status: Status,
    pub score: f64,
    pub threshold: f64,
    pub top_feature: Option<&'a str>,
    pub model_version: &'a str,
}

#[derive(Debug)]
struct Episode {
    start_ms: i64,
    last_anomaly_ms: i64,
    peak_score: f64,
    top_feature: Option<String>,
    anomalous_verdicts: u64,
}

#[derive(Debug, Default)]
struct DeviceAlerts {
    /// Reading times of the last `of_last` scored verdicts, `Some` for anomalies.
    recent: VecDeque<Option<i64>>,
    open: Option<Episode>,
    normal_streak: usize,
    /// Tracker-wide counter value at the last update, for eviction order.
    touched: u64,
}

impl DeviceAlerts {
    /// True when forgetting the device changes nothing: no episode is open and no
    /// recent verdict was an anomaly, which is the state of a device never seen.
    fn is_quiet(&self) -> bool {
        self.open.is_none() && self.recent.iter().all(Option::is_none)
    }
}

/// Alert state of every device with a recent anomaly or an open episode.
///
/// Memory is bounded by `max_devices`. Quiet devices are dropped first, which loses
/// nothing. Past that, the least recently updated device is dropped and its open
/// episode, if any, ends without a `closed` event (counted in `evicted_open`).
#[derive(Debug)]
pub struct AlertTracker {
    settings: AlertSettings,
    max_devices: usize,
    devices: HashMap<String, DeviceAlerts>,
    counter: u64,
    /// Devices dropped with an open episode since the last [`Self::take_evicted_open`].
    evicted_open: u64,
}

impl AlertTracker {
    pub fn new(settings: &AlertSettings, max_devices: usize) -> Self {
        Self {
            settings: settings.clone(),
            max_devices: max_devices.max(1),
            devices: HashMap::new(),
            counter: 0,
            evicted_open: 0,
        }
    }

    /// Devices with an open episode.
    pub fn open_count(&self) -> usize {
        self.devices.values().filter(|d| d.open.is_some()).count()
    }

    pub fn take_evicted_open(&mut self) -> u64 {
        std::mem::take(&mut self.evicted_open)
    }

    /// Feeds one verdict; returns the event it causes, if any.
    pub fn observe(&mut self, observation: Observation<'_>) -> Option<AlertEvent> {
        if !self.settings.enabled || observation.status == Status::WarmingUp {
            return None;
        }
        let anomalous = observation.status == Status::Anomaly;
        if !anomalous && !self.devices.contains_key(observation.device_id) {
            // A normal verdict for a quiet device changes nothing.
            return None;
        }
        if !self.devices.contains_key(observation.device_id)
            && self.devices.len() >= self.max_devices
        {
            self.make_room();
        }

        self.counter += 1;
        let settings = &self.settings;
        let device = self
            .devices
            .entry(observation.device_id.to_string())
            .or_default();
        device.touched = self.counter;
        device
            .recent
            .push_back(anomalous.then_some(observation.ts_ms));
        if device.recent.len() > settings.of_last {
            device.recent.pop_front();
        }

        let event = if anomalous {
            device.normal_streak = 0;
            match &mut device.open {
                Some(episode) => {
                    episode.last_anomaly_ms = observation.ts_ms;
                    episode.anomalous_verdicts += 1;
                    if observation.score > episode.peak_score {
                        episode.peak_score = observation.score;
                        episode.top_feature = observation.top_feature.map(str::to_string);
                    }
                    None
                }
                None => {
                    let anomalies: Vec<i64> = device.recent.iter().flatten().copied().collect();
                    if anomalies.len() >= settings.open_after {
                        let episode = Episode {
                            start_ms: anomalies[0],
                            last_anomaly_ms: observation.ts_ms,
                            peak_score: observation.score,
                            top_feature: observation.top_feature.map(str::to_string),
                            anomalous_verdicts: anomalies.len() as u64,
                        };
                        let event = event_of(
                            AlertEventKind::Opened,
                            observation.device_id,
                            &episode,
                            &observation,
                        );
                        device.open = Some(episode);
                        Some(event)
                    } else {
                        None
                    }
                }
            }
        } else {
            device.normal_streak += 1;
            if device.normal_streak >= settings.close_after {
                device.open.take().map(|episode| {
                    event_of(
                        AlertEventKind::Closed,
                        observation.device_id,
                        &episode,
                        &observation,
                    )
                })
            } else {
                None
            }
        };

        if device.is_quiet() {
            self.devices.remove(observation.device_id);
        }
        event
    }

    fn make_room(&mut self) {
        self.devices.retain(|_, device| !device.is_quiet());
        if self.devices.len() < self.max_devices {
            return;
        }
        let oldest = self
            .devices
            .iter()
            .min_by_key(|(_, device)| device.touched)
            .map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            if let Some(device) = self.devices.remove(&id) {
                if device.open.is_some() {
                    self.evicted_open += 1;
                }
            }
        }
    }
}

fn event_of(
    kind: AlertEventKind,
    device_id: &str,
    episode: &Episode,
    observation: &Observation<'_>,
) -> AlertEvent {
    let start = format_ts(episode.start_ms);
    let closed = kind == AlertEventKind::Closed;
    AlertEvent {
        event: kind,
        alert_id: format!("{device_id}@{start}"),
        device_id: device_id.to_string(),
        start,
        end: closed.then(|| format_ts(episode.last_anomaly_ms)),
        duration_s: closed.then(|| (episode.last_anomaly_ms - episode.start_ms) as f64 / 1000.0),
        peak_score: episode.peak_score,
        top_feature: episode.top_feature.clone(),
        threshold: observation.threshold,
        anomalous_verdicts: episode.anomalous_verdicts,
        model_version: observation.model_version.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(open_after: usize, of_last: usize, close_after: usize) -> AlertSettings {
        AlertSettings {
            enabled: true,
            open_after,
            of_last,
            close_after,
        }
    }

    /// Feeds `pattern` ('A' anomaly, '.' normal, 'w' warming up) for one device, one
    /// second apart, and returns each event with the index of the verdict that caused it.
    fn run(tracker: &mut AlertTracker, device: &str, pattern: &str) -> Vec<(usize, AlertEvent)> {
        pattern
            .chars()
            .enumerate()
            .filter_map(|(i, c)| {
                let status = match c {
                    'A' => Status::Anomaly,
                    '.' => Status::Normal,
                    _ => Status::WarmingUp,
                };
                tracker
                    .observe(Observation {
                        device_id: device,
                        ts_ms: i as i64 * 1000,
                        status,
                        score: if c == 'A' { 2.0 + i as f64 } else { 0.5 },
                        threshold: 1.0,
                        top_feature: Some(if i % 2 == 0 { "even" } else { "odd" }),
                        model_version: "m",
                    })
                    .map(|event| (i, event))
            })
            .collect()
    }

    #[test]
    fn long_fault_is_one_episode() {
        let mut tracker = AlertTracker::new(&settings(3, 5, 4), 10);
        let events = run(&mut tracker, "d", "..A.AA..AAAAAAAAAAAAAAA....");
        assert_eq!(events.len(), 2);

        let (opened_at, opened) = &events[0];
        assert_eq!(*opened_at, 5);
        assert_eq!(opened.event, AlertEventKind::Opened);
        assert_eq!(opened.start, format_ts(2000));
        assert_eq!(opened.anomalous_verdicts, 3);
        assert_eq!(opened.end, None);

        let (closed_at, closed) = &events[1];
        assert_eq!(*closed_at, 26);
        assert_eq!(closed.event, AlertEventKind::Closed);
        assert_eq!(closed.alert_id, opened.alert_id);
        assert_eq!(closed.end.as_deref(), Some(format_ts(22_000).as_str()));
        assert_eq!(closed.duration_s, Some(20.0));
        assert_eq!(closed.peak_score, 24.0);
        assert_eq!(closed.top_feature.as_deref(), Some("even"));
        assert_eq!(closed.anomalous_verdicts, 18);
        assert_eq!(tracker.open_count(), 0);
    }

    #[test]
    fn isolated_anomalies_open_nothing() {
        let mut tracker = AlertTracker::new(&settings(3, 5, 4), 10);
        let events = run(&mut tracker, "d", "A....A....AA....A");
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn short_dip_does_not_close() {
        // Three normal verdicts inside the fault are fewer than close_after = 4.
        let mut tracker = AlertTracker::new(&settings(2, 3, 4), 10);
        let events = run(&mut tracker, "d", "AAA...AAA....");
        let kinds: Vec<_> = events.iter().map(|(_, e)| e.event).collect();
        assert_eq!(kinds, [AlertEventKind::Opened, AlertEventKind::Closed]);
        assert_eq!(events[1].0, 12);
    }

    #[test]
    fn warming_up_counts_neither_way() {
        let mut tracker = AlertTracker::new(&settings(2, 2, 2), 10);
        let events = run(&mut tracker, "d", "AwwA");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].1.event, AlertEventKind::Opened);
    }

    #[test]
    fn devices_are_independent() {
        let mut tracker = AlertTracker::new(&settings(2, 2, 2), 10);
        assert!(run(&mut tracker, "a", "A").is_empty());
        assert!(run(&mut tracker, "b", "A").is_empty());
        assert_eq!(run(&mut tracker, "a", "AA").len(), 1);
        assert_eq!(tracker.open_count(), 1);
    }

    #[test]
    fn disabled_tracker_emits_nothing() {
        let mut disabled = settings(1, 1, 1);
        disabled.enabled = false;
        let mut tracker = AlertTracker::new(&disabled, 10);
        assert!(run(&mut tracker, "d", "AAAA....").is_empty());
    }

    #[test]
    fn memory_stays_bounded() {
        let mut tracker = AlertTracker::new(&settings(1, 1, 1), 3);
        for device in 0..100 {
            run(&mut tracker, &format!("d{device}"), "A");
        }
        assert_eq!(tracker.devices.len(), 3);
        assert_eq!(tracker.open_count(), 3);
        assert_eq!(tracker.take_evicted_open(), 97);
    }

    #[test]
    fn quiet_devices_are_forgotten() {
        let mut tracker = AlertTracker::new(&settings(2, 3, 1), 10);
        run(&mut tracker, "d", "A...");
        assert!(tracker.devices.is_empty());
    }
}
