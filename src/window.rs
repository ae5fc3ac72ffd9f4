//! Per-device sliding windows with bounded memory.
//!
//! Each device keeps a ring buffer of its last `W` readings (`W × F` f32 values).
//! Memory is bounded by `max_devices`: a new device beyond the cap evicts the least
//! recently seen one, and devices idle for longer than the TTL are dropped. "Now" is
//! supplied by the caller (wall clock in the service, record time in offline
//! evaluation), so both paths age devices the same way.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{LatePolicy, WindowSettings};
use crate::record::{RejectReason, SensorRecord};

/// Result of appending one reading to its device's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// The window is not full yet; `filled` readings of `W` are present.
    WarmingUp { filled: usize },
    /// The window is full and was copied to the output buffer, oldest reading first.
    Ready,
}

/// A successful [`WindowStore::push_tracked`]: the outcome plus what strided scoring
/// needs to know about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    pub push: Push,
    /// The device's slot: stable while the device stays in the store, and reused for
    /// another device after it is evicted.
    pub slot: usize,
    /// Full windows the device produced before this one since its window last
    /// started filling: 0 for the first full window.
    pub full_before: u64,
}

/// Counters of state changes, read and reset by [`WindowStore::take_events`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowEvents {
    pub evicted_idle: u64,
    pub evicted_capacity: u64,
    pub gap_resets: u64,
}

/// Marks the end of the recency list.
const NONE: usize = usize::MAX;

#[derive(Debug)]
struct DeviceWindow {
    /// Ring buffer of `W` rows of `F` values; `head` is the next row to write.
    values: Vec<f32>,
    head: usize,
    filled: usize,
    last_ts_ms: i64,
    last_seen_ms: i64,
    /// Pushes that found the window full since it last started filling.
    full_pushes: u64,
    /// Neighbours in the recency list, slot indices or [`NONE`].
    older: usize,
    newer: usize,
    id: Arc<str>,
}

/// Device windows in a slab of slots. A hash map finds a device's slot by id, and a
/// doubly linked list threaded through the slots orders them by last use, so a push
/// does one hash lookup and no allocation once the device is known. Slots of evicted
/// devices, with their value buffers, are reused for new devices.
#[derive(Debug)]
pub struct WindowStore {
    window: usize,
    features: usize,
    max_devices: usize,
    idle_ttl_ms: i64,
    max_gap_ms: i64,
    late_policy: LatePolicy,
    slots: Vec<DeviceWindow>,
    index: HashMap<Arc<str>, usize>,
    free: Vec<usize>,
    /// Least and most recently seen devices.
    oldest: usize,
    newest: usize,
    events: WindowEvents,
}

impl WindowStore {
    pub fn new(window: usize, features: usize, settings: &WindowSettings) -> Self {
        Self {
            window,
            features,
            max_devices: settings.max_devices.max(1),
            idle_ttl_ms: i64::try_from(settings.idle_ttl_s.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            max_gap_ms: i64::try_from(settings.max_gap_s.saturating_mul(1000)).unwrap_or(i64::MAX),
            late_policy: settings.late_policy,
            slots: Vec::new(),
            index: HashMap::new(),
            free: Vec::new(),
            oldest: NONE,
            newest: NONE,
            events: WindowEvents::default(),
        }
    }

    pub fn window_len(&self) -> usize {
        self.window
    }

    pub fn feature_count(&self) -> usize {
        self.features
    }

    pub fn device_count(&self) -> usize {
        self.index.len()
    }

    /// Returns and clears the eviction and reset counters.
    pub fn take_events(&mut self) -> WindowEvents {
        std::mem::take(&mut self.events)
    }

    /// Appends `record` to its device's window. When the window is full, its `W × F`
    /// values are appended to `out`, oldest reading first.
    ///
    /// A record older than the device's last one is rejected as `late` under
    /// [`LatePolicy::DeadLetter`] and leaves the window unchanged.
    pub fn push(
        &mut self,
        record: &SensorRecord,
        now_ms: i64,
        out: &mut Vec<f32>,
    ) -> Result<Push, RejectReason> {
        self.push_tracked(record, now_ms, out)
            .map(|pushed| pushed.push)
    }

    /// Like [`WindowStore::push`], and also returns the device's slot and how many full
    /// windows it produced before this one.
    pub fn push_tracked(
        &mut self,
        record: &SensorRecord,
        now_ms: i64,
        out: &mut Vec<f32>,
    ) -> Result<Pushed, RejectReason> {
        debug_assert_eq!(record.values.len(), self.features);
        self.evict_idle(now_ms);

        let slot = match self.index.get(record.device_id.as_str()) {
            Some(&slot) => slot,
            None => self.insert(&record.device_id, now_ms),
        };
        let state = &mut self.slots[slot];

        if record.ts_ms < state.last_ts_ms && self.late_policy == LatePolicy::DeadLetter {
            return Err(RejectReason::Late {
                ts_ms: record.ts_ms,
                last_ts_ms: state.last_ts_ms,
            });
        }
        if self.max_gap_ms > 0
            && state.filled > 0
            && record.ts_ms.saturating_sub(state.last_ts_ms) > self.max_gap_ms
        {
            state.filled = 0;
            state.head = 0;
            state.full_pushes = 0;
            self.events.gap_resets += 1;
        }

        let row = state.head * self.features;
        state.values[row..row + self.features].copy_from_slice(&record.values);
        state.head = (state.head + 1) % self.window;
        state.filled = (state.filled + 1).min(self.window);
        state.last_ts_ms = state.last_ts_ms.max(record.ts_ms);
        state.last_seen_ms = now_ms;
        let (filled, head) = (state.filled, state.head);
        if filled < self.window {
            self.make_newest(slot);
            return Ok(Pushed {
                push: Push::WarmingUp { filled },
                slot,
                full_before: 0,
            });
        }
        let full_before = state.full_pushes;
        state.full_pushes += 1;
        self.make_newest(slot);

        // Full ring: `head` is the oldest row.
        let values = &self.slots[slot].values;
        let split = head * self.features;
        out.extend_from_slice(&values[split..]);
        out.extend_from_slice(&values[..split]);
        Ok(Pushed {
            push: Push::Ready,
            slot,
            full_before,
        })
    }

    /// Adds an empty window for `device`, evicting the least recently seen device when
    /// the store is full, and returns its slot.
    fn insert(&mut self, device: &str, now_ms: i64) -> usize {
        if self.index.len() >= self.max_devices {
            self.remove(self.oldest);
            self.events.evicted_capacity += 1;
        }
        let id: Arc<str> = Arc::from(device);
        let window = DeviceWindow {
            values: Vec::new(),
            head: 0,
            filled: 0,
            last_ts_ms: i64::MIN,
            last_seen_ms: now_ms,
            full_pushes: 0,
            older: NONE,
            newer: NONE,
            id: id.clone(),
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                // Keep the freed slot's value buffer; `filled = 0` hides its contents.
                let values = std::mem::take(&mut self.slots[slot].values);
                self.slots[slot] = DeviceWindow { values, ..window };
                slot
            }
            None => {
                self.slots.push(DeviceWindow {
                    values: vec![0.0; self.window * self.features],
                    ..window
                });
                self.slots.len() - 1
            }
        };
        self.index.insert(id, slot);
        self.link_newest(slot);
        slot
    }

    /// Drops the device in `slot` and keeps the slot for reuse.
    fn remove(&mut self, slot: usize) {
        self.unlink(slot);
        self.index.remove(&self.slots[slot].id);
        self.free.push(slot);
    }

    fn unlink(&mut self, slot: usize) {
        let (older, newer) = (self.slots[slot].older, self.slots[slot].newer);
        match older {
            NONE => self.oldest = newer,
            older => self.slots[older].newer = newer,
        }
        match newer {
            NONE => self.newest = older,
            newer => self.slots[newer].older = older,
        }
    }

    fn link_newest(&mut self, slot: usize) {
        self.slots[slot].older = self.newest;
        self.slots[slot].newer = NONE;
        match self.newest {
            NONE => self.oldest = slot,
            newest => self.slots[newest].newer = slot,
        }
        self.newest = slot;
    }

    fn make_newest(&mut self, slot: usize) {
        if self.newest != slot {
            self.unlink(slot);
            self.link_newest(slot);
        }
    }

    fn evict_idle(&mut self, now_ms: i64) {
        while self.oldest != NONE
            && now_ms.saturating_sub(self.slots[self.oldest].last_seen_ms) > self.idle_ttl_ms
        {
            self.remove(self.oldest);
            self.events.evicted_idle += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_devices: usize) -> WindowSettings {
        WindowSettings {
            max_devices,
            idle_ttl_s: 60,
            max_gap_s: 0,
            late_policy: LatePolicy::DeadLetter,
        }
    }

    fn reading(device: &str, ts_ms: i64, value: f32) -> SensorRecord {
        SensorRecord {
            device_id: device.into(),
            ts_ms,
            values: vec![value, value * 10.0],
        }
    }

    #[test]
    fn warm_up_then_ready() {
        let mut store = WindowStore::new(3, 2, &settings(10));
        let mut out = Vec::new();
        assert_eq!(
            store.push(&reading("a", 1, 1.0), 1, &mut out),
            Ok(Push::WarmingUp { filled: 1 })
        );
        assert_eq!(
            store.push(&reading("a", 2, 2.0), 2, &mut out),
            Ok(Push::WarmingUp { filled: 2 })
        );
        assert!(out.is_empty());
        assert_eq!(
            store.push(&reading("a", 3, 3.0), 3, &mut out),
            Ok(Push::Ready)
        );
        assert_eq!(out, vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0]);
    }

    #[test]
    fn window_slides_in_order() {
        let mut store = WindowStore::new(3, 2, &settings(10));
        let mut out = Vec::new();
        for i in 1..=5 {
            out.clear();
            store.push(&reading("a", i, i as f32), i, &mut out).unwrap();
        }
        assert_eq!(out, vec![3.0, 30.0, 4.0, 40.0, 5.0, 50.0]);
    }

    #[test]
    fn interleaved_devices_stay_separate() {
        let mut store = WindowStore::new(2, 2, &settings(10));
        let mut out = Vec::new();
        store.push(&reading("a", 1, 1.0), 1, &mut out).unwrap();
        store.push(&reading("b", 1, 100.0), 1, &mut out).unwrap();
        store.push(&reading("c", 1, 7.0), 1, &mut out).unwrap();
        assert_eq!(
            store.push(&reading("a", 2, 2.0), 2, &mut out),
            Ok(Push::Ready)
        );
        assert_eq!(out, vec![1.0, 10.0, 2.0, 20.0]);
        out.clear();
        assert_eq!(
            store.push(&reading("b", 2, 200.0), 2, &mut out),
            Ok(Push::Ready)
        );
        assert_eq!(out, vec![100.0, 1000.0, 200.0, 2000.0]);
        assert_eq!(store.device_count(), 3);
    }

    #[test]
    fn late_record_is_rejected_and_ignored() {
        let mut store = WindowStore::new(2, 2, &settings(10));
        let mut out = Vec::new();
        store.push(&reading("a", 10, 1.0), 10, &mut out).unwrap();
        let late = store
            .push(&reading("a", 5, 99.0), 11, &mut out)
            .unwrap_err();
        assert_eq!(late.kind(), "late");
        assert_eq!(
            store.push(&reading("a", 10, 2.0), 12, &mut out),
            Ok(Push::Ready)
        );
        assert_eq!(out, vec![1.0, 10.0, 2.0, 20.0]);
    }

    #[test]
    fn late_record_accepted_by_policy() {
        let mut window_settings = settings(10);
        window_settings.late_policy = LatePolicy::Accept;
        let mut store = WindowStore::new(2, 2, &window_settings);
        let mut out = Vec::new();
        store.push(&reading("a", 10, 1.0), 10, &mut out).unwrap();
        assert_eq!(
            store.push(&reading("a", 5, 2.0), 11, &mut out),
            Ok(Push::Ready)
        );
    }

    #[test]
    fn long_gap_restarts_warm_up() {
        let mut window_settings = settings(10);
        window_settings.max_gap_s = 5;
        let mut store = WindowStore::new(2, 2, &window_settings);
        let mut out = Vec::new();
        store.push(&reading("a", 0, 1.0), 0, &mut out).unwrap();
        let after_gap = store
            .push(&reading("a", 6_000, 2.0), 6_000, &mut out)
            .unwrap();
        assert_eq!(after_gap, Push::WarmingUp { filled: 1 });
        assert_eq!(store.take_events().gap_resets, 1);
    }

    #[test]
    fn capacity_evicts_least_recent() {
        let mut store = WindowStore::new(2, 2, &settings(2));
        let mut out = Vec::new();
        store.push(&reading("a", 1, 1.0), 1, &mut out).unwrap();
        store.push(&reading("b", 1, 1.0), 1, &mut out).unwrap();
        store.push(&reading("a", 2, 1.0), 2, &mut out).unwrap();
        store.push(&reading("c", 2, 1.0), 2, &mut out).unwrap();
        assert_eq!(store.device_count(), 2);
        assert_eq!(store.take_events().evicted_capacity, 1);
        // "b" was least recently seen, so it starts over; "a" keeps its window.
        assert_eq!(
            store.push(&reading("b", 3, 1.0), 3, &mut out),
            Ok(Push::WarmingUp { filled: 1 })
        );
    }

    #[test]
    fn idle_devices_expire() {
        let mut store = WindowStore::new(2, 2, &settings(100));
        let mut out = Vec::new();
        store.push(&reading("a", 0, 1.0), 0, &mut out).unwrap();
        store
            .push(&reading("b", 50_000, 1.0), 50_000, &mut out)
            .unwrap();
        store
            .push(&reading("c", 61_000, 1.0), 61_000, &mut out)
            .unwrap();
        assert_eq!(store.device_count(), 2);
        assert_eq!(store.take_events().evicted_idle, 1);
    }

    #[test]
    fn full_windows_are_counted_per_device() {
        let mut window_settings = settings(10);
        window_settings.max_gap_s = 5;
        let mut store = WindowStore::new(2, 2, &window_settings);
        let mut out = Vec::new();
        let mut full_before = |store: &mut WindowStore, device: &str, ts_ms: i64| {
            let pushed = store.push_tracked(&reading(device, ts_ms, 1.0), ts_ms, &mut out);
            pushed.unwrap().full_before
        };
        assert_eq!(full_before(&mut store, "a", 0), 0);
        assert_eq!(full_before(&mut store, "a", 1), 0);
        assert_eq!(full_before(&mut store, "b", 1), 0);
        assert_eq!(full_before(&mut store, "a", 2), 1);
        assert_eq!(full_before(&mut store, "a", 3), 2);
        // A gap restarts the window, and with it the count.
        assert_eq!(full_before(&mut store, "a", 9_000), 0);
        assert_eq!(full_before(&mut store, "a", 9_001), 0);
        assert_eq!(full_before(&mut store, "a", 9_002), 1);
    }

    #[test]
    fn many_devices_stay_bounded() {
        let mut store = WindowStore::new(4, 2, &settings(1_000));
        let mut out = Vec::new();
        for i in 0..100_000 {
            store
                .push(&reading(&format!("device-{i}"), i, 1.0), i, &mut out)
                .unwrap();
        }
        assert_eq!(store.device_count(), 1_000);
        assert_eq!(store.take_events().evicted_capacity, 99_000);
        assert_eq!(store.slots.len(), 1_000);
    }
}
