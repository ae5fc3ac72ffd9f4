//! Faults against a real broker (tansu): killed, stopped and added replicas, a broker
//! outage, and a corpus of malformed records. Each test counts records in, verdicts
//! out, duplicates and dead letters, and prints the counts.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::tansu::{metric_value, scorer_config, wait_until, Replica, Tansu};
use iot_anomaly::config::KafkaSettings;
use iot_anomaly::pipeline::HEADER_REASON_KIND;
use iot_anomaly::replay::{produce_all, ReplayMessage};
use iot_anomaly::verdict::Verdict;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;

const WINDOW: i64 = 4;

/// Each test runs brokers and scorer processes; one at a time keeps two cores from
/// being oversubscribed, which would stretch timeouts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reads `sensors.scored` and `sensors.deadletter` in the background.
struct Reader {
    verdicts: Arc<Mutex<Vec<Verdict>>>,
    dead_letters: Arc<Mutex<Vec<OwnedMessage>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn start(brokers: &str) -> Self {
        let consumer: StreamConsumer = iot_anomaly::kafka::consumer_config(&kafka(brokers))
            .set("group.id", format!("reader-{}", common::tansu::free_port()))
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        consumer
            .subscribe(&["sensors.scored", "sensors.deadletter"])
            .unwrap();
        let verdicts = Arc::new(Mutex::new(Vec::new()));
        let dead_letters = Arc::new(Mutex::new(Vec::new()));
        let (v, d) = (verdicts.clone(), dead_letters.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok(message) = consumer.recv().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let message = message.detach();
                if message.topic() == "sensors.deadletter" {
                    d.lock().unwrap().push(message);
                } else if let Ok(verdict) =
                    serde_json::from_slice::<Verdict>(message.payload().unwrap_or_default())
                {
                    v.lock().unwrap().push(verdict);
                }
            }
        });
        Self {
            verdicts,
            dead_letters,
            task,
        }
    }

    fn verdict_count(&self) -> usize {
        self.verdicts.lock().unwrap().len()
    }

    /// Distinct source records with at least one verdict, keyed by device and time.
    fn distinct(&self) -> HashSet<(String, String)> {
        self.verdicts
            .lock()
            .unwrap()
            .iter()
            .map(|v| (v.device_id.clone(), v.ts.clone()))
            .collect()
    }

    /// Waits until `expected` distinct records have verdicts; on timeout the panic
    /// message carries the logs of `replicas`.
    async fn wait_for_distinct(&self, expected: usize, timeout: Duration, replicas: &[&Replica]) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.distinct().len() < expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out with {} of {expected} records scored; scorer logs:\n{}",
                self.distinct().len(),
                replicas
                    .iter()
                    .map(|r| r.log())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn kafka(brokers: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: brokers.to_owned(),
        ..Default::default()
    }
}

/// `per_device` readings for each of `devices` devices named `{prefix}-{n}`, interleaved.
fn readings(prefix: &str, devices: usize, per_device: usize) -> Vec<ReplayMessage> {
    let mut messages = Vec::with_capacity(devices * per_device);
    for step in 0..per_device {
        for device in 0..devices {
            let id = format!("{prefix}-{device}");
            let payload = format!(
                r#"{{"device_id":"{id}","ts":{},"temperatura":{:.1},"umidade":60,"qualidade_do_ar":75,"luz":628,"som":150}}"#,
                1_700_000_000_000i64 + step as i64 * 1000,
                24.0 + (step % 5) as f64 * 0.2
            );
            messages.push(ReplayMessage {
                key: Some(id),
                payload: payload.into_bytes(),
            });
        }
    }
    messages
}

fn spawn_producer(
    brokers: &str,
    messages: Vec<ReplayMessage>,
    rate: Option<f64>,
) -> tokio::task::JoinHandle<usize> {
    let producer = iot_anomaly::kafka::create_producer(&kafka(brokers)).unwrap();
    tokio::spawn(async move {
        produce_all(&producer, "sensors.raw", &messages, rate)
            .await
            .unwrap()
    })
}

fn duplicates(reader: &Reader) -> usize {
    reader.verdict_count() - reader.distinct().len()
}

fn model(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("model");
    common::random_checkpoint(&model, WINDOW, 1.0, 17);
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start();
    broker.create_scoring_topics(4);
    let config = scorer_config(
        dir.path(),
        "scorer",
        &broker.bootstrap(),
        &model(dir.path()),
        "",
    );

    let mut first = Replica::start(&config, dir.path(), "first");
    wait_until(
        Duration::from_secs(60),
        "the first replica to be ready",
        || first.is_ready(),
    );
    let reader = Reader::start(&broker.bootstrap());

    let records = readings("kill", 20, 150);
    let total = records.len();
    let producing = spawn_producer(&broker.bootstrap(), records, Some(1000.0));
    wait_until(
        Duration::from_secs(60),
        "1000 verdicts before the kill",
        || reader.verdict_count() >= 1000,
    );
    first.sigkill();

    let second = Replica::start(&config, dir.path(), "second");
    assert_eq!(producing.await.unwrap(), total);
    reader
        .wait_for_distinct(total, Duration::from_secs(120), &[])
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let dups = duplicates(&reader);
    eprintln!(
        "SIGKILL: records in {total}, verdicts out {}, distinct {}, duplicates {dups}",
        reader.verdict_count(),
        reader.distinct().len()
    );
    assert_eq!(reader.distinct().len(), total);
    assert!(
        second.log().contains("partitions assigned"),
        "{}",
        second.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_split_partitions_and_survive_rebalance() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start();
    broker.create_scoring_topics(6);
    let config = scorer_config(
        dir.path(),
        "scorer",
        &broker.bootstrap(),
        &model(dir.path()),
        "",
    );

    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| Replica::start(&config, dir.path(), &format!("replica-{i}")))
        .collect();
    wait_until(Duration::from_secs(90), "three ready replicas", || {
        replicas.iter().all(Replica::is_ready)
    });
    let reader = Reader::start(&broker.bootstrap());

    // Stable group: exactly one verdict per record, partitions shared out.
    let records = readings("steady", 30, 50);
    let total = records.len();
    spawn_producer(&broker.bootstrap(), records, None)
        .await
        .unwrap();
    reader
        .wait_for_distinct(total, Duration::from_secs(120), &[])
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        reader.verdict_count(),
        total,
        "a stable group duplicated verdicts"
    );

    let consumed: Vec<f64> = replicas
        .iter()
        .map(|r| {
            let metrics = r.http("/metrics").map(|(_, body)| body).unwrap_or_default();
            metric_value(
                &metrics,
                "iot_anomaly_records_consumed_total{outcome=\"scored\"}",
            )
            .unwrap_or(0.0)
        })
        .collect();
    eprintln!(
        "three replicas: records in {total}, verdicts out {}, per replica {consumed:?}",
        reader.verdict_count()
    );
    assert_eq!(consumed.iter().sum::<f64>() as usize, total);
    assert!(
        consumed.iter().all(|&c| c > 0.0),
        "a replica got no partition: {consumed:?}"
    );

    let mut partitions_by_device: HashMap<String, HashSet<i32>> = HashMap::new();
    for verdict in reader.verdicts.lock().unwrap().iter() {
        partitions_by_device
            .entry(verdict.device_id.clone())
            .or_default()
            .insert(verdict.partition.unwrap());
    }
    assert!(
        partitions_by_device.values().all(|p| p.len() == 1),
        "a device moved between partitions"
    );

    // Rebalance mid-stream: one replica leaves, another joins.
    let records = readings("rebalance", 30, 100);
    let second_total = records.len();
    let producing = spawn_producer(&broker.bootstrap(), records, Some(1000.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = replicas[2].sigterm(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM exit status {status}");
    replicas.push(Replica::start(&config, dir.path(), "replica-3"));
    producing.await.unwrap();
    reader
        .wait_for_distinct(total + second_total, Duration::from_secs(120), &[])
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!(
        "rebalance: records in {}, verdicts out {}, duplicates {}",
        total + second_total,
        reader.verdict_count(),
        duplicates(&reader)
    );
    assert_eq!(reader.distinct().len(), total + second_total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_so_restart_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start();
    broker.create_scoring_topics(2);
    let config = scorer_config(
        dir.path(),
        "scorer",
        &broker.bootstrap(),
        &model(dir.path()),
        "[shutdown]\ntimeout_s = 10\n",
    );

    let mut first = Replica::start(&config, dir.path(), "first");
    wait_until(Duration::from_secs(60), "the replica to be ready", || {
        first.is_ready()
    });
    let reader = Reader::start(&broker.bootstrap());

    let records = readings("term", 10, 300);
    let total = records.len();
    let producing = spawn_producer(&broker.bootstrap(), records, Some(1000.0));
    wait_until(
        Duration::from_secs(60),
        "1000 verdicts before SIGTERM",
        || reader.verdict_count() >= 1000,
    );
    let status = first.sigterm(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}:\n{}", first.log());
    assert!(
        first.log().contains("scoring pipeline stopped"),
        "{}",
        first.log()
    );

    let _second = Replica::start(&config, dir.path(), "second");
    producing.await.unwrap();
    reader
        .wait_for_distinct(total, Duration::from_secs(120), &[])
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "SIGTERM: records in {total}, verdicts out {}, duplicates {}",
        reader.verdict_count(),
        duplicates(&reader)
    );
    assert_eq!(reader.distinct().len(), total);
    assert_eq!(
        duplicates(&reader),
        0,
        "a graceful stop must commit what it scored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_sets_not_ready_then_resumes() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start();
    broker.create_scoring_topics(2);
    let config = scorer_config(
        dir.path(),
        "scorer",
        &broker.bootstrap(),
        &model(dir.path()),
        "",
    );
    // NOTE: a pause longer than the group session makes the scorer rejoin, and tansu
    // 0.6.0 never completed that rejoin here (a new process joins fine), so the session
    // outlasts the pause.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace(
            "\"session.timeout.ms\" = \"6000\"",
            "\"session.timeout.ms\" = \"30000\"",
        )
        .replace(
            "\"max.poll.interval.ms\" = \"15000\"",
            "\"max.poll.interval.ms\" = \"60000\"",
        )
        // Verdicts wait 1 s in the producer, so when the broker stops the scorer is
        // almost always waiting for an acknowledgement, which is what flips /readyz.
        .replace("\"linger.ms\" = \"2\"", "\"linger.ms\" = \"1000\"");
    std::fs::write(&config, text).unwrap();
    let replica = Replica::start(&config, dir.path(), "scorer");
    wait_until(Duration::from_secs(60), "the replica to be ready", || {
        replica.is_ready()
    });
    let reader = Reader::start(&broker.bootstrap());

    // Records flow before, during and after a broker pause of about 8 s.
    let records = readings("outage", 10, 200);
    let total = records.len();
    let producing = spawn_producer(&broker.bootstrap(), records, Some(200.0));
    wait_until(
        Duration::from_secs(60),
        "verdicts before the outage",
        || reader.verdict_count() >= 200,
    );
    broker.pause();
    wait_until(
        Duration::from_secs(60),
        "/readyz to report not ready",
        || !replica.is_ready(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.resume();

    let recovered = tokio::time::Instant::now() + Duration::from_secs(90);
    while !replica.is_ready() {
        assert!(
            tokio::time::Instant::now() < recovered,
            "/readyz did not recover; scorer log:\n{}\nbroker log:\n{}",
            replica.log(),
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(producing.await.unwrap(), total);
    reader
        .wait_for_distinct(total, Duration::from_secs(120), &[&replica])
        .await;
    eprintln!(
        "broker pause: records in {total}, verdicts out {}, duplicates {}",
        reader.verdict_count(),
        duplicates(&reader)
    );
    let log = replica.log();
    assert!(log.contains("not ready until it does"), "{log}");
    // Whichever of the consumer or the acknowledgement task reaches the broker first
    // clears the flag and logs its own "... again; resuming" line.
    assert!(log.contains("again; resuming"), "{log}");
}

/// One malformed message and the dead-letter reason it must get.
struct Case {
    key: Option<&'static str>,
    payload: Vec<u8>,
    reason: &'static str,
}

/// Malformed payloads; the scorer under test rejects unknown fields.
fn corpus() -> Vec<Case> {
    let valid = r#"{"device_id":"c","temperatura":25.1,"umidade":60.5,"qualidade_do_ar":75,"luz":628.0,"som":145.0}"#;
    let with = |from: &str, to: &str| valid.replace(from, to).into_bytes();
    // 30,000 levels: deep, yet under the 64 KiB message limit, so the parser reads it.
    let nested = valid.replace(
        "145.0",
        &format!("{}1{}", "[".repeat(30_000), "]".repeat(30_000)),
    );
    let huge = format!(r#"{{"device_id":"c","pad":"{}"}}"#, "x".repeat(1_000_000));
    vec![
        Case {
            key: None,
            payload: valid.as_bytes()[..40].to_vec(),
            reason: "invalid_json",
        },
        Case {
            key: None,
            payload: with("25.1", "true"),
            reason: "non_numeric",
        },
        Case {
            key: None,
            payload: with("25.1", "\"25.1\""),
            reason: "non_numeric",
        },
        Case {
            key: None,
            payload: with("25.1", "NaN"),
            reason: "invalid_json",
        },
        Case {
            key: None,
            payload: with("25.1", "Infinity"),
            reason: "invalid_json",
        },
        Case {
            key: None,
            payload: with("25.1", "1e999"),
            reason: "invalid_json",
        },
        Case {
            key: None,
            payload: with("25.1", "1e300"),
            reason: "non_finite",
        },
        Case {
            key: None,
            payload: with(r#","som":145.0"#, ""),
            reason: "missing_feature",
        },
        Case {
            key: None,
            payload: with(r#""som":145.0"#, r#""som":145.0,"battery":3.1"#),
            reason: "unknown_field",
        },
        Case {
            key: None,
            payload: with(r#""som":145.0"#, r#""som":145.0,"som":146.0"#),
            reason: "duplicate_key",
        },
        Case {
            key: None,
            payload: nested.into_bytes(),
            reason: "non_numeric",
        },
        Case {
            key: None,
            payload: huge.into_bytes(),
            reason: "oversized",
        },
        Case {
            key: None,
            payload: b"{\"device_id\":\"c\",\"temperatura\":\xff}".to_vec(),
            reason: "invalid_utf8",
        },
        Case {
            key: None,
            payload: Vec::new(),
            reason: "empty",
        },
        Case {
            key: Some("key"),
            payload: b"[]".to_vec(),
            reason: "not_an_object",
        },
        Case {
            key: None,
            payload: with("25.1", "-400"),
            reason: "out_of_range",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_corpus_goes_to_dead_letters() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start();
    broker.create_scoring_topics(1);
    let config = scorer_config(
        dir.path(),
        "scorer",
        &broker.bootstrap(),
        &model(dir.path()),
        "[input]\nunknown_fields = \"reject\"\n",
    );
    let replica = Replica::start(&config, dir.path(), "scorer");
    wait_until(Duration::from_secs(60), "the replica to be ready", || {
        replica.is_ready()
    });
    let reader = Reader::start(&broker.bootstrap());

    let corpus = corpus();
    let mut messages: Vec<ReplayMessage> = corpus
        .iter()
        .map(|case| ReplayMessage {
            key: case.key.map(str::to_owned),
            payload: case.payload.clone(),
        })
        .collect();
    // A valid device after the corpus proves the scorer is still running.
    messages.extend(readings("alive", 1, WINDOW as usize));
    let mut settings = kafka(&broker.bootstrap());
    settings
        .producer
        .insert("message.max.bytes".into(), "4000000".into());
    let producer = iot_anomaly::kafka::create_producer(&settings).unwrap();
    produce_all(&producer, "sensors.raw", &messages, None)
        .await
        .unwrap();

    reader
        .wait_for_distinct(WINDOW as usize, Duration::from_secs(60), &[&replica])
        .await;
    wait_until(Duration::from_secs(60), "every dead letter", || {
        reader.dead_letters.lock().unwrap().len() >= corpus.len()
    });
    let letters = reader.dead_letters.lock().unwrap();
    eprintln!(
        "corpus: records in {}, dead letters {}, verdicts {}",
        messages.len(),
        letters.len(),
        reader.verdict_count()
    );
    assert_eq!(letters.len(), corpus.len());
    for (case, letter) in corpus.iter().zip(letters.iter()) {
        let (payload, kind) = (&case.payload, &case.reason);
        let reason = letter
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == HEADER_REASON_KIND))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        assert_eq!(
            reason.as_deref(),
            Some(*kind),
            "payload {:.60}",
            String::from_utf8_lossy(payload)
        );
        // Oversized payloads keep their first 64 KiB, the configured input limit.
        let kept = if case.reason == "oversized" {
            &payload[..65_536]
        } else {
            payload.as_slice()
        };
        assert_eq!(
            letter.payload().unwrap_or_default(),
            kept,
            "{kind}: bytes changed"
        );
    }
    assert_eq!(reader.verdict_count(), WINDOW as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_without_broker_support_stops_at_startup() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start();
    broker.create_scoring_topics(1);
    let config = scorer_config(
        dir.path(),
        "eos",
        &broker.bootstrap(),
        &model(dir.path()),
        "",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[kafka]\n", "[kafka]\ndelivery = \"exactly_once\"\n"),
    )
    .unwrap();

    // tansu 0.6.0 accepts InitProducerId but rejects EndTxn.
    let output = std::process::Command::new(common::tansu::SCORER_BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env(
            "IOT_ANOMALY__HTTP__BIND",
            format!("127.0.0.1:{}", common::tansu::free_port()),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("rejected Kafka transactions"), "{stderr}");
    assert!(stderr.contains("kafka.delivery"), "{stderr}");
}
