//! `/metrics` of a `serve` process against a real broker (tansu): every metric family
//! an operator's dashboard and alerts read exists and moves as records flow, and every
//! metric name that the shipped Grafana dashboard and Prometheus rules use is served.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::tansu::{metric_value, wait_until, Replica, Tansu};
use iot_anomaly::config::KafkaSettings;
use iot_anomaly::replay::{produce_all, ReplayMessage};

const WINDOW: i64 = 4;
/// Valid readings per device in the first phase.
const PER_DEVICE: usize = 10;
const DEVICES: [&str; 3] = ["metrics-a", "metrics-b", "metrics-c"];

/// Writes the scorer configuration: one partition keeps the record order fixed, two
/// device windows make the third device evict one, and one device series makes the
/// others share the overflow series of `iot_anomaly_device_anomalies_total`.
fn write_config(dir: &Path, brokers: &str, model: &Path) -> std::path::PathBuf {
    let config = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "metrics-test"
[kafka.consumer]
"fetch.wait.max.ms" = "10"
"statistics.interval.ms" = "500"
[kafka.producer]
"linger.ms" = "2"
[model]
dir = "{}"
reload_interval_s = 1
[scoring]
max_wait_ms = 5
[windows]
max_devices = 2
[metrics]
max_device_series = 1
"#,
        model.display()
    );
    let path = dir.join("scorer.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A valid reading of `device` taken `step` seconds after `start_ms`.
fn reading(device: &str, start_ms: i64, step: usize) -> ReplayMessage {
    let payload = format!(
        r#"{{"device_id":"{device}","ts":{},"temperatura":{:.1},"umidade":60,"qualidade_do_ar":75,"luz":628,"som":150}}"#,
        start_ms + step as i64 * 1000,
        24.0 + (step % 5) as f64 * 0.2
    );
    ReplayMessage {
        key: Some(device.to_owned()),
        payload: payload.into_bytes(),
    }
}

/// Records that fail parsing, one per dead-letter reason the test checks.
fn bad_records() -> Vec<(ReplayMessage, &'static str)> {
    let message = |payload: &str| ReplayMessage {
        key: Some("metrics-bad".into()),
        payload: payload.as_bytes().to_vec(),
    };
    vec![
        (message("{not json"), "invalid_json"),
        (
            message(r#"{"device_id":"metrics-bad","temperatura":25,"umidade":60}"#),
            "missing_feature",
        ),
        (
            message(
                r#"{"device_id":"metrics-bad","temperatura":900,"umidade":60,"qualidade_do_ar":75,"luz":628,"som":150}"#,
            ),
            "out_of_range",
        ),
    ]
}

async fn produce(brokers: &str, messages: &[ReplayMessage]) {
    let producer = iot_anomaly::kafka::create_producer(&KafkaSettings {
        brokers: brokers.to_owned(),
        ..Default::default()
    })
    .unwrap();
    let sent = produce_all(&producer, "sensors.raw", messages, None)
        .await
        .unwrap();
    assert_eq!(sent, messages.len());
}

fn scrape(replica: &Replica) -> String {
    let (status, body) = replica.http("/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    body
}

/// Value of `series`, or 0 when the series does not exist yet.
fn value(metrics: &str, series: &str) -> f64 {
    metric_value(metrics, series).unwrap_or(0.0)
}

/// Metric family names declared by `# TYPE` lines, with the type of each.
fn families(metrics: &str) -> Vec<(String, String)> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// Names starting with `iot_anomaly_` in `text` (a dashboard or a rules file).
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("iot_anomaly_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// True when `name` is a served family, or a `_bucket`/`_sum`/`_count` series of a
/// served histogram.
fn is_served(name: &str, families: &[(String, String)]) -> bool {
    families.iter().any(|(family, kind)| {
        family == name
            || (kind == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(family.as_str())))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_families_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    // A threshold far below any reconstruction error: every full window is an anomaly.
    common::random_checkpoint(&model, WINDOW, 1e-12, 31);
    let broker = Tansu::start();
    broker.create_scoring_topics(1);
    let config = write_config(dir.path(), &broker.bootstrap(), &model);
    let replica = Replica::start(&config, dir.path(), "scorer");
    wait_until(Duration::from_secs(60), "the scorer to be ready", || {
        replica.is_ready()
    });

    let (status, _) = replica.http("/healthz").unwrap();
    assert_eq!(status, 200);
    let before = scrape(&replica);

    // Phase 1: three devices one after another, then the bad records.
    let start_ms = chrono::Utc::now().timestamp_millis() - 600_000;
    let mut messages: Vec<ReplayMessage> = DEVICES
        .iter()
        .flat_map(|device| (0..PER_DEVICE).map(move |step| reading(device, start_ms, step)))
        .collect();
    let bad = bad_records();
    messages.extend(bad.iter().map(|(message, _)| ReplayMessage {
        key: message.key.clone(),
        payload: message.payload.clone(),
    }));
    produce(&broker.bootstrap(), &messages).await;

    let valid = (DEVICES.len() * PER_DEVICE) as f64;
    let mut during = String::new();
    wait_until(Duration::from_secs(60), "every record counted", || {
        during = scrape(&replica);
        value(
            &during,
            "iot_anomaly_records_consumed_total{outcome=\"scored\"}",
        ) >= valid
            && value(
                &during,
                "iot_anomaly_records_consumed_total{outcome=\"dead_lettered\"}",
            ) >= bad.len() as f64
            && during.contains("iot_anomaly_consumer_lag_records{")
    });

    let moved = |series: &str| value(&during, series) - value(&before, series);
    assert_eq!(
        moved("iot_anomaly_records_consumed_total{outcome=\"scored\"}"),
        valid
    );
    assert_eq!(
        moved("iot_anomaly_records_consumed_total{outcome=\"dead_lettered\"}"),
        bad.len() as f64
    );
    for (_, reason) in &bad {
        assert_eq!(
            moved(&format!(
                "iot_anomaly_dead_letters_total{{reason=\"{reason}\"}}"
            )),
            1.0,
            "dead letters with reason {reason}"
        );
    }
    assert_eq!(
        moved("iot_anomaly_verdicts_total{status=\"warming_up\"}"),
        (DEVICES.len() * (WINDOW as usize - 1)) as f64
    );
    assert_eq!(
        moved("iot_anomaly_verdicts_total{status=\"anomaly\"}"),
        (DEVICES.len() * (PER_DEVICE - WINDOW as usize + 1)) as f64
    );
    assert!(moved("iot_anomaly_inference_batch_windows_count") > 0.0);
    assert!(moved("iot_anomaly_inference_batch_windows_sum") > 0.0);
    assert!(moved("iot_anomaly_inference_duration_seconds_count") > 0.0);
    assert_eq!(moved("iot_anomaly_record_latency_seconds_count"), valid);
    // The records are 591 to 600 s old when scored, so their latencies sum to over 500 s each.
    assert!(moved("iot_anomaly_record_latency_seconds_sum") >= valid * 500.0);
    assert!(
        during.contains("iot_anomaly_consumer_lag_records{partition=\"0\",topic=\"sensors.raw\"}"),
        "{during}"
    );
    assert_eq!(value(&during, "iot_anomaly_devices_tracked"), 2.0);
    assert!(moved("iot_anomaly_device_evictions_total{cause=\"capacity\"}") >= 1.0);
    // The first device takes the one per-device series; the others share device="".
    assert_eq!(
        moved("iot_anomaly_device_anomalies_total{device=\"metrics-a\"}"),
        (PER_DEVICE - WINDOW as usize + 1) as f64
    );
    assert_eq!(
        moved("iot_anomaly_device_anomalies_total{device=\"\"}"),
        (2 * (PER_DEVICE - WINDOW as usize + 1)) as f64
    );
    assert!(
        during.contains("iot_anomaly_model_info{features=\"Temperature,Humidity,Air Quality,Light,Loudness\",threshold=\"0.000000000001\",version=\"random-31\",window=\"4\"} 1"),
        "{during}"
    );
    assert_eq!(value(&during, "iot_anomaly_producer_errors_total"), 0.0);
    assert!(during.contains("# TYPE iot_anomaly_producer_errors_total counter"));

    // Phase 2: a new checkpoint whose threshold no window reaches replaces the model.
    // mtime has a one-second resolution on some file systems.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    common::random_checkpoint(&model, WINDOW, 1e12, 32);
    wait_until(Duration::from_secs(30), "a successful reload", || {
        value(
            &scrape(&replica),
            "iot_anomaly_model_reloads_total{result=\"success\"}",
        ) >= 1.0
    });
    let later: Vec<ReplayMessage> = (PER_DEVICE..2 * PER_DEVICE)
        .map(|step| reading(DEVICES[2], start_ms, step))
        .collect();
    produce(&broker.bootstrap(), &later).await;
    let mut after = String::new();
    wait_until(Duration::from_secs(60), "the second phase counted", || {
        after = scrape(&replica);
        value(
            &after,
            "iot_anomaly_records_consumed_total{outcome=\"scored\"}",
        ) >= valid + later.len() as f64
    });
    // The last device kept its full window across the reload, so every reading scores.
    assert_eq!(
        value(&after, "iot_anomaly_verdicts_total{status=\"normal\"}")
            - value(&during, "iot_anomaly_verdicts_total{status=\"normal\"}"),
        later.len() as f64
    );
    assert_eq!(
        value(
            &after,
            "iot_anomaly_model_reloads_total{result=\"success\"}"
        ),
        1.0
    );
    assert!(after.contains("version=\"random-32\""), "{after}");
    assert!(!after.contains("version=\"random-31\""), "{after}");

    // Every metric the shipped dashboard and alert rules query must be served.
    let served = families(&after);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "deploy/grafana/dashboards/iot-anomaly.json",
        "deploy/prometheus/rules.yml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let names = metric_names_in(&text);
        assert!(!names.is_empty(), "{file} uses no iot_anomaly_ metric");
        for name in names {
            assert!(
                is_served(&name, &served),
                "{file} uses {name}, which /metrics does not serve"
            );
        }
    }
    drop(replica);
}
