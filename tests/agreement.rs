//! Live and offline scoring agree: the AnoML-IoT series replayed through Kafka gets
//! the same verdict per record as `evaluate` computes from the CSV.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::mock::Harness;
use iot_anomaly::dataset::{load_csv, CsvOptions};
use iot_anomaly::detector::Detector;
use iot_anomaly::evaluation::evaluate;
use iot_anomaly::model::load_checkpoint;
use iot_anomaly::replay::read_messages;
use iot_anomaly::scorer::Scorer;
use iot_anomaly::verdict::Status;

const WINDOW: i64 = 20;
const SEED: i64 = 11;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_verdicts_match_offline_evaluation() {
    let settings = common::anoml_settings();
    let options = CsvOptions {
        time_column: Some("Time".into()),
        anomaly_windows: settings.dataset.anomaly_windows.clone(),
        ..Default::default()
    };
    let series = load_csv(
        Path::new(common::ANOML_CSV),
        &common::anoml_schema(),
        &options,
    )
    .unwrap();

    // Put the threshold at the median offline score so both statuses occur.
    let dir = tempfile::tempdir().unwrap();
    common::random_checkpoint(dir.path(), WINDOW, 1.0, SEED);
    let mut probe = Detector::new(
        Scorer::new(load_checkpoint(dir.path()).unwrap()),
        &settings.windows,
    );
    let (_, outcomes) = evaluate(&mut probe, &series, 512);
    let mut scores: Vec<f64> = outcomes.iter().filter_map(|o| o.score).collect();
    scores.sort_by(f64::total_cmp);
    let threshold = scores[scores.len() / 2];
    common::random_checkpoint(dir.path(), WINDOW, threshold, SEED);

    let mut detector = Detector::new(
        Scorer::new(load_checkpoint(dir.path()).unwrap()),
        &settings.windows,
    );
    let (report, offline) = evaluate(&mut detector, &series, 512);
    let anomalies = report.verdicts.get("anomaly").copied().unwrap_or(0);
    assert!(
        anomalies > 1000,
        "threshold at the median should flag about half: {anomalies}"
    );

    let harness = Harness::start(dir.path(), 3);
    let messages = read_messages(Path::new(common::ANOML_CSV), Some("lab")).unwrap();
    harness.produce(&messages).await;
    let collected = harness
        .collect(
            messages.len(),
            0,
            Duration::from_millis(500),
            Duration::from_secs(120),
        )
        .await;
    harness.stop().await;

    let live: HashMap<String, (Status, Option<f64>)> = collected
        .verdicts
        .iter()
        .map(|v| (v.ts.clone(), (v.status, v.score)))
        .collect();
    assert_eq!(live.len(), series.records.len());
    let mut mismatches = Vec::new();
    for (record, outcome) in series.records.iter().zip(&offline) {
        let ts = iot_anomaly::verdict::format_ts(record.ts_ms);
        let (status, score) = live[&ts];
        let same_score = match (score, outcome.score) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            (None, None) => true,
            _ => false,
        };
        if Some(status) != outcome.status || !same_score {
            mismatches.push((ts, status, outcome.status, score, outcome.score));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {:?}",
        mismatches.len(),
        mismatches.first()
    );
}
