//! The scoring pipeline over the Kafka protocol (librdkafka's mock cluster): every
//! valid record gets one verdict, every invalid one a dead letter, nothing more.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::mock::{header, Harness};
use iot_anomaly::alerts::AlertEventKind;
use iot_anomaly::pipeline::{HEADER_REASON, HEADER_REASON_KIND, HEADER_SOURCE_OFFSET};
use iot_anomaly::replay::ReplayMessage;
use iot_anomaly::verdict::Status;
use rdkafka::Message;

const WINDOW: i64 = 4;
const DEVICES: usize = 5;
const PER_DEVICE: usize = 40;

fn valid(device: usize, step: usize) -> ReplayMessage {
    let payload = format!(
        r#"{{"device_id": "room-{device}", "ts": {}, "temperatura": {}, "umidade": 60.0, "qualidade_do_ar": 75, "luz": 628, "som": 150}}"#,
        1_700_000_000 + step as i64 * 10,
        24.0 + (step % 7) as f64 * 0.1,
    );
    ReplayMessage {
        key: Some(format!("room-{device}")),
        payload: payload.into_bytes(),
    }
}

/// Invalid payloads with the dead-letter reason each must get.
fn invalid() -> Vec<(Vec<u8>, &'static str)> {
    vec![
        (b"not json".to_vec(), "invalid_json"),
        (br#"{"temperatura": 25.1, "umidade": 60.5}"#.to_vec(), "missing_feature"),
        (
            br#"{"temperatura": "hot", "umidade": 60.5, "qualidade_do_ar": 75, "luz": 628.0, "som": 145.0}"#.to_vec(),
            "non_numeric",
        ),
        (
            br#"{"temperatura": 25.1, "umidade": 160.5, "qualidade_do_ar": 75, "luz": 628.0, "som": 145.0}"#.to_vec(),
            "out_of_range",
        ),
        (b"[1, 2]".to_vec(), "not_an_object"),
        (b"\xff\xfe".to_vec(), "invalid_utf8"),
        (
            br#"{"temperatura": 25.1, "temperatura": 25.2, "umidade": 60.5, "qualidade_do_ar": 75, "luz": 628.0, "som": 145.0}"#.to_vec(),
            "duplicate_key",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_gets_one_outcome() {
    let dir = tempfile::tempdir().unwrap();
    common::random_checkpoint(dir.path(), WINDOW, 1.0, 3);
    let harness = Harness::start(dir.path(), 3);

    // Interleave devices and put an invalid record after every 25 valid ones.
    let bad = invalid();
    let mut messages = Vec::new();
    let mut bad_iter = bad.iter();
    for step in 0..PER_DEVICE {
        for device in 0..DEVICES {
            messages.push(valid(device, step));
            if messages.len() % 26 == 25 {
                if let Some((payload, _)) = bad_iter.next() {
                    messages.push(ReplayMessage {
                        key: None,
                        payload: payload.clone(),
                    });
                }
            }
        }
    }
    let valid_count = DEVICES * PER_DEVICE;
    assert_eq!(messages.len(), valid_count + bad.len());
    harness.produce(&messages).await;

    let collected = harness
        .collect(
            valid_count,
            bad.len(),
            Duration::from_secs(2),
            Duration::from_secs(60),
        )
        .await;
    let metrics = harness.metrics.clone();

    // librdkafka statistics (every 500 ms here) report the lag of each assigned
    // partition, which is zero once everything is scored.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lag_lines = loop {
        let rendered = metrics.render();
        let lines: Vec<String> = rendered
            .lines()
            .filter(|l| l.starts_with("iot_anomaly_consumer_lag_records{"))
            .map(str::to_owned)
            .collect();
        if lines.len() == 3 && lines.iter().all(|l| l.ends_with(" 0")) {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lag never settled at zero: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        lag_lines
            .iter()
            .all(|l| l.contains("topic=\"sensors.raw\"")),
        "{lag_lines:?}"
    );

    let stats = harness.stop().await;

    // Exactly one verdict per valid record: no loss, no duplicate.
    assert_eq!(collected.verdicts.len(), valid_count);
    let sources: HashSet<(i32, i64)> = collected
        .verdicts
        .iter()
        .map(|v| (v.partition.unwrap(), v.offset.unwrap()))
        .collect();
    assert_eq!(sources.len(), valid_count);
    assert_eq!(stats.verdicts, valid_count as u64);
    assert_eq!(stats.dead_letters, bad.len() as u64);

    // Per device: in order, warming up for the first W - 1 records, scored after.
    let mut by_device: HashMap<&str, Vec<_>> = HashMap::new();
    for verdict in &collected.verdicts {
        by_device
            .entry(verdict.device_id.as_str())
            .or_default()
            .push(verdict);
    }
    assert_eq!(by_device.len(), DEVICES);
    for (device, verdicts) in &by_device {
        assert_eq!(verdicts.len(), PER_DEVICE, "{device}");
        assert!(
            verdicts.windows(2).all(|w| w[0].ts < w[1].ts),
            "{device} verdicts out of order"
        );
        let warming = verdicts
            .iter()
            .filter(|v| v.status == Status::WarmingUp)
            .count();
        assert_eq!(warming, WINDOW as usize - 1, "{device}");
        let scored = &verdicts[WINDOW as usize - 1..];
        assert!(
            scored
                .iter()
                .all(|v| v.score.is_some() && v.top_feature.is_some()),
            "{device}"
        );
        assert!(scored.iter().all(|v| v.model_version == "random-3"));
    }

    // Every dead letter keeps the original bytes and carries its reason.
    assert_eq!(collected.dead_letters.len(), bad.len());
    for (payload, kind) in &bad {
        let letter = collected
            .dead_letters
            .iter()
            .find(|m| m.payload() == Some(payload.as_slice()))
            .unwrap_or_else(|| panic!("no dead letter for {kind}"));
        assert_eq!(header(letter, HEADER_REASON_KIND).as_deref(), Some(*kind));
        assert!(header(letter, HEADER_REASON).is_some_and(|r| !r.is_empty()));
        assert!(header(letter, HEADER_SOURCE_OFFSET).is_some_and(|o| o.parse::<i64>().is_ok()));
    }

    // The metrics saw the same traffic.
    let consumed = |outcome: &str| metrics.records_consumed.with_label_values(&[outcome]).get();
    assert_eq!(consumed("scored"), valid_count as u64);
    assert_eq!(consumed("dead_lettered"), bad.len() as u64);
    let warming = metrics.verdicts.with_label_values(&["warming_up"]).get();
    assert_eq!(warming, (DEVICES * (WINDOW as usize - 1)) as u64);
    assert_eq!(
        metrics
            .dead_letters
            .with_label_values(&["invalid_json"])
            .get(),
        1
    );
    assert!(metrics.render().contains("iot_anomaly_verdicts_total"));
}

/// Builds a reading of `device` at `step` (10 s apart). It is the random checkpoint's
/// scaler mean, or with `fault` a temperature 75 standard deviations off.
fn reading(device: &str, step: usize, fault: bool) -> ReplayMessage {
    let temperature = if fault { 100.0 } else { 25.0 };
    let payload = format!(
        r#"{{"device_id": "{device}", "ts": {}, "temperatura": {temperature}, "umidade": 60.0, "qualidade_do_ar": 75, "luz": 630, "som": 150}}"#,
        1_700_000_000 + step as i64 * 10,
    );
    ReplayMessage {
        key: Some(device.to_string()),
        payload: payload.into_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_fault_is_one_alert() {
    let dir = tempfile::tempdir().unwrap();
    // Readings at the scaler's mean score far below 50; the faulty ones far above.
    common::random_checkpoint(dir.path(), WINDOW, 50.0, 5);
    let harness = Harness::start(dir.path(), 2);

    // pump-1: 20 normal readings, a 30-reading fault, 30 normal; pump-2: all normal.
    let mut messages = Vec::new();
    for step in 0..80 {
        messages.push(reading("pump-1", step, (20..50).contains(&step)));
        messages.push(reading("pump-2", step, false));
    }
    harness.produce(&messages).await;
    let collected = harness
        .collect(
            messages.len(),
            0,
            Duration::from_millis(500),
            Duration::from_secs(60),
        )
        .await;
    let metrics = harness.metrics.clone();
    harness.stop().await;

    let anomalies: Vec<_> = collected
        .verdicts
        .iter()
        .filter(|v| v.device_id == "pump-1" && v.status == Status::Anomaly)
        .collect();
    assert!(
        anomalies.len() >= 30,
        "{} anomaly verdicts",
        anomalies.len()
    );
    assert!(collected
        .verdicts
        .iter()
        .filter(|v| v.device_id == "pump-2")
        .all(|v| v.status != Status::Anomaly));

    // Dozens of anomaly verdicts, one episode.
    assert_eq!(collected.alerts.len(), 2, "{:?}", collected.alerts);
    let opened = &collected.alerts[0];
    let closed = &collected.alerts[1];
    assert_eq!(opened.event, AlertEventKind::Opened);
    assert_eq!(closed.event, AlertEventKind::Closed);
    assert_eq!(opened.device_id, "pump-1");
    assert_eq!(closed.alert_id, opened.alert_id);

    let first = anomalies.iter().map(|v| v.ts.as_str()).min().unwrap();
    let last = anomalies.iter().map(|v| v.ts.as_str()).max().unwrap();
    assert_eq!(opened.start, first);
    assert_eq!(closed.start, first);
    assert_eq!(closed.end.as_deref(), Some(last));
    assert_eq!(closed.anomalous_verdicts, anomalies.len() as u64);
    assert_eq!(closed.top_feature.as_deref(), Some("Temperature"));
    let peak = anomalies
        .iter()
        .filter_map(|v| v.score)
        .fold(f64::MIN, f64::max);
    assert_eq!(closed.peak_score, peak);

    let alerts = |event: &str| metrics.alerts.with_label_values(&[event]).get();
    assert_eq!(alerts("opened"), 1);
    assert_eq!(alerts("closed"), 1);
    assert_eq!(metrics.alerts_open.get(), 0);
}
