//! Exactly-once delivery (Kafka transactions) against librdkafka's mock cluster, which
//! implements the transactional protocol: in-process, and as the `mock-broker`
//! command with scorer processes killed mid-stream.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::mock::Harness;
use common::tansu::{scorer_config, wait_until, Replica, SCORER_BIN};
use iot_anomaly::config::{Delivery, KafkaSettings};
use iot_anomaly::replay::{produce_all, ReplayMessage};
use iot_anomaly::verdict::Verdict;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;

fn readings(devices: usize, per_device: usize) -> Vec<ReplayMessage> {
    let mut messages = Vec::new();
    for step in 0..per_device {
        for device in 0..devices {
            let payload = format!(
                r#"{{"device_id":"eos-{device}","ts":{},"temperatura":25,"umidade":60,"qualidade_do_ar":75,"luz":628,"som":150}}"#,
                1_700_000_000 + step
            );
            messages.push(ReplayMessage {
                key: Some(format!("eos-{device}")),
                payload: payload.into_bytes(),
            });
        }
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_pipeline_emits_each_verdict_once() {
    let dir = tempfile::tempdir().unwrap();
    common::random_checkpoint(dir.path(), 4, 1.0, 8);
    let harness = Harness::start_with(dir.path(), 3, |settings| {
        settings.kafka.delivery = Delivery::ExactlyOnce;
    });
    let mut messages = readings(6, 50);
    messages.push(ReplayMessage {
        key: None,
        payload: b"not json".to_vec(),
    });
    harness.produce(&messages).await;

    let collected = harness
        .collect(300, 1, Duration::from_secs(2), Duration::from_secs(60))
        .await;
    let stats = harness.stop().await;
    assert_eq!(collected.verdicts.len(), 300);
    assert_eq!(collected.dead_letters.len(), 1);
    assert_eq!(stats.verdicts, 300);
    let sources: HashSet<(String, String)> = collected
        .verdicts
        .iter()
        .map(|v| (v.device_id.clone(), v.ts.clone()))
        .collect();
    assert_eq!(sources.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_transactional_replica_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    common::random_checkpoint(&model, 4, 1.0, 9);

    // The mock cluster as its own process, so scorers connect to it over TCP.
    let mut broker = Command::new(SCORER_BIN)
        .args(["mock-broker", "--partitions", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(broker.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let brokers = line
        .trim()
        .strip_prefix("bootstrap.servers=")
        .unwrap()
        .to_owned();
    let _broker = KillOnDrop(broker);

    let config = scorer_config(dir.path(), "eos", &brokers, &model, "");
    let config_text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        config_text.replace("[kafka]\n", "[kafka]\ndelivery = \"exactly_once\"\n"),
    )
    .unwrap();

    let mut first = Replica::start(&config, dir.path(), "first");
    wait_until(
        Duration::from_secs(60),
        "the first replica to be ready",
        || first.is_ready(),
    );

    let settings = KafkaSettings {
        brokers: brokers.clone(),
        delivery: Delivery::ExactlyOnce,
        ..Default::default()
    };
    let reader: StreamConsumer = iot_anomaly::kafka::consumer_config(&settings)
        .set("group.id", "eos-reader")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    reader.subscribe(&["sensors.scored"]).unwrap();

    let messages = readings(10, 300);
    let total = messages.len();
    let producer = iot_anomaly::kafka::create_producer(&KafkaSettings {
        brokers: brokers.clone(),
        ..Default::default()
    })
    .unwrap();
    let producing = tokio::spawn(async move {
        produce_all(&producer, "sensors.raw", &messages, Some(1500.0))
            .await
            .unwrap()
    });

    let mut verdicts: Vec<Verdict> = Vec::new();
    let mut second = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    while verdicts
        .iter()
        .map(|v| (&v.device_id, &v.ts))
        .collect::<HashSet<_>>()
        .len()
        < total
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out with {} verdicts",
            verdicts.len()
        );
        if let Ok(Ok(message)) =
            tokio::time::timeout(Duration::from_millis(200), reader.recv()).await
        {
            verdicts.push(serde_json::from_slice(message.payload().unwrap()).unwrap());
        }
        if second.is_none() && verdicts.len() >= 1000 {
            first.sigkill();
            second = Some(Replica::start(&config, dir.path(), "second"));
        }
    }
    producing.await.unwrap();
    // Anything duplicated would arrive right after the last new verdict.
    let linger = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < linger {
        if let Ok(Ok(message)) =
            tokio::time::timeout(Duration::from_millis(200), reader.recv()).await
        {
            verdicts.push(serde_json::from_slice(message.payload().unwrap()).unwrap());
        }
    }
    let distinct = verdicts
        .iter()
        .map(|v| (&v.device_id, &v.ts))
        .collect::<HashSet<_>>()
        .len();
    eprintln!(
        "exactly-once SIGKILL: records in {total}, committed verdicts {}, distinct {distinct}, duplicates {}",
        verdicts.len(),
        verdicts.len() - distinct
    );
    assert!(second.is_some(), "the kill never happened");
    assert_eq!(distinct, total);
    assert_eq!(verdicts.len(), total, "read_committed saw duplicates");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
