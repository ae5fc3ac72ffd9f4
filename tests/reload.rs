//! Model hot reload: a new checkpoint in the model directory replaces the running
//! model between batches; an invalid or incompatible one is counted and ignored.

mod common;

use std::time::Duration;

use common::mock::Harness;
use iot_anomaly::replay::ReplayMessage;

fn readings(step_offset: usize, count: usize) -> Vec<ReplayMessage> {
    (0..count)
        .map(|i| {
            let step = step_offset + i;
            ReplayMessage {
                key: Some("lab".into()),
                payload: format!(
                    r#"{{"device_id":"lab","ts":{},"temperatura":25,"umidade":60,"qualidade_do_ar":75,"luz":628,"som":150}}"#,
                    1_700_000_000 + step
                )
                .into_bytes(),
            }
        })
        .collect()
}

async fn wait_for_reloads(harness: &Harness, result: &str, count: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while harness
        .metrics
        .model_reloads
        .with_label_values(&[result])
        .get()
        < count
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {result} reload counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_checkpoint_replaces_model_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    common::random_checkpoint(dir.path(), 4, 1.0, 1);
    let harness = Harness::start_with(dir.path(), 1, |settings| {
        settings.model.reload_interval_s = 1
    });

    harness.produce(&readings(0, 10)).await;
    let first = harness
        .collect(10, 0, Duration::ZERO, Duration::from_secs(60))
        .await;
    assert!(first.verdicts.iter().all(|v| v.model_version == "random-1"));

    // mtime has a one-second resolution on some file systems.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    common::random_checkpoint(dir.path(), 4, 1.0, 2);
    wait_for_reloads(&harness, "success", 1).await;
    // The swap happens before the next batch, which this produce starts.
    harness.produce(&readings(10, 10)).await;
    let second = harness
        .collect(20, 0, Duration::from_millis(500), Duration::from_secs(60))
        .await;
    let versions: Vec<&str> = second.verdicts[10..]
        .iter()
        .map(|v| v.model_version.as_str())
        .collect();
    assert!(versions.iter().all(|v| *v == "random-2"), "{versions:?}");
    assert!(harness.metrics.render().contains("version=\"random-2\""));
    assert!(!harness.metrics.render().contains("version=\"random-1\""));

    // A corrupt model.json: counted as failed, the running model stays.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(dir.path().join("model.json"), b"{ not json").unwrap();
    wait_for_reloads(&harness, "failed", 1).await;

    // A model with another window length cannot take over the device windows.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    common::random_checkpoint(dir.path(), 6, 1.0, 3);
    wait_for_reloads(&harness, "rejected", 1).await;

    harness.produce(&readings(20, 5)).await;
    let third = harness
        .collect(25, 0, Duration::from_millis(500), Duration::from_secs(60))
        .await;
    harness.stop().await;
    let versions: Vec<&str> = third.verdicts[20..]
        .iter()
        .map(|v| v.model_version.as_str())
        .collect();
    assert!(versions.iter().all(|v| *v == "random-2"), "{versions:?}");
}
