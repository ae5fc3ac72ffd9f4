//! Resident memory of the window store and scorer with many active devices, over
//! several passes in which every device fills its window again.

use std::time::Instant;

use iot_anomaly::config::WindowSettings;
use iot_anomaly::detector::Detector;
use iot_anomaly::model::LoadedModel;
use iot_anomaly::record::SensorRecord;
use iot_anomaly::scorer::Scorer;
use iot_anomaly::workload::Workload;
use serde::{Deserialize, Serialize};

use crate::process::rss_bytes;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryReport {
    pub devices: usize,
    pub window: usize,
    pub features: usize,
    pub passes: usize,
    /// Resident size with the model loaded and no device yet.
    pub baseline_rss_bytes: u64,
    /// Resident size after each pass.
    pub rss_after_pass_bytes: Vec<u64>,
    pub devices_tracked: usize,
    /// `(last pass RSS - baseline) / devices`.
    pub bytes_per_device: f64,
    /// The window's own values: `window × features × 4` bytes.
    pub window_value_bytes: usize,
    /// RSS after the last pass minus RSS after the first.
    pub growth_after_first_pass_bytes: i64,
    pub records_per_s: f64,
}

/// Feeds `passes × window` records to each of `workload.devices()` devices through a
/// detector in batches of `batch` records, measuring this process's RSS after each pass.
pub fn measure(
    model: LoadedModel,
    workload: &Workload,
    passes: usize,
    batch: usize,
    max_devices: usize,
) -> anyhow::Result<MemoryReport> {
    let arch = model.meta.architecture;
    let window = arch.window as usize;
    let features = arch.features as usize;
    let devices = workload.devices();
    let settings = WindowSettings {
        max_devices,
        ..WindowSettings::default()
    };
    let mut detector = Detector::new(Scorer::new(model), &settings);
    let pid = std::process::id();
    let baseline = rss_bytes(pid)?;

    let per_pass = (devices * window) as u64;
    let mut after_pass = Vec::with_capacity(passes);
    let mut chunk: Vec<SensorRecord> = Vec::with_capacity(batch);
    let started = Instant::now();
    for pass in 0..passes as u64 {
        let first = pass * per_pass;
        let mut sequence = first;
        while sequence < first + per_pass {
            chunk.clear();
            let end = (sequence + batch as u64).min(first + per_pass);
            for s in sequence..end {
                chunk.push(SensorRecord {
                    device_id: workload.device_id(s),
                    ts_ms: workload.ts_ms(s),
                    values: workload.values(s).to_vec(),
                });
            }
            detector.assess(chunk.iter().map(|r| (r, r.ts_ms)));
            sequence = end;
        }
        let rss = rss_bytes(pid)?;
        eprintln!(
            "pass {} of {passes}: {} devices, RSS {:.1} MiB",
            pass + 1,
            detector.device_count(),
            rss as f64 / (1024.0 * 1024.0)
        );
        after_pass.push(rss);
    }
    let elapsed = started.elapsed().as_secs_f64();

    let last = *after_pass.last().unwrap_or(&baseline);
    let first = *after_pass.first().unwrap_or(&baseline);
    Ok(MemoryReport {
        devices,
        window,
        features,
        passes,
        baseline_rss_bytes: baseline,
        devices_tracked: detector.device_count(),
        bytes_per_device: last.saturating_sub(baseline) as f64 / devices as f64,
        window_value_bytes: window * features * 4,
        growth_after_first_pass_bytes: last as i64 - first as i64,
        rss_after_pass_bytes: after_pass,
        records_per_s: (per_pass * passes as u64) as f64 / elapsed,
    })
}
