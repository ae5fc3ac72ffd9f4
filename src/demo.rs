//! The embedded default run: librdkafka's in-process mock cluster, the real scoring
//! pipeline, the AnoML-IoT series replayed through it and a summary at the end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::Message;
use tokio::sync::watch;

use iot_anomaly::alerts::{AlertEvent, AlertEventKind};
use iot_anomaly::config::Settings;
use iot_anomaly::dataset::{load_csv, CsvOptions};
use iot_anomaly::detector::Detector;
use iot_anomaly::evaluation::{Confusion, Metrics as DetectionMetrics};
use iot_anomaly::model::load_checkpoint;
use iot_anomaly::pipeline::{Pipeline, HEADER_REASON_KIND};
use iot_anomaly::replay::{produce_all, read_messages, ReplayMessage};
use iot_anomaly::schema::FeatureSchema;
use iot_anomaly::scorer::Scorer;
use iot_anomaly::telemetry::{Health, Metrics};
use iot_anomaly::verdict::{Status, Verdict};

/// Device id given to the replayed AnoML-IoT series.
pub const DEMO_DEVICE: &str = "anoml-iot-lab";
/// Device id of the original project's five example records.
pub const SEED_DEVICE: &str = "seed-examples";
const INPUT_PARTITIONS: i32 = 3;
/// Maximum wait for the last verdict once everything is produced.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Quiet time after the last verdict before the demo stops reading alert events.
const ALERT_LINGER: Duration = Duration::from_secs(1);

/// Options of `iot-anomaly demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub settings: Settings,
    pub data: PathBuf,
    /// Extra JSON-lines file replayed after the series (the original project's examples).
    pub seed_examples: Option<PathBuf>,
    /// Records per second offered by the replay; `None` is as fast as possible.
    pub rate: Option<f64>,
    /// Alert events printed in full before the rest are only counted.
    pub max_episodes_shown: usize,
}

/// Counts and rates measured by the demo.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub records_in: usize,
    pub verdicts: u64,
    pub dead_letters: u64,
    pub anomalies: u64,
    pub warming_up: u64,
    pub alerts_opened: u64,
    pub alerts_closed: u64,
    pub metrics: DetectionMetrics,
    pub records_per_second: f64,
    pub seconds: f64,
}

/// Runs the demo against an already trained checkpoint in `settings.model.dir`.
pub async fn run_demo(options: DemoOptions) -> anyhow::Result<DemoSummary> {
    let mut settings = options.settings.clone();
    let loaded = load_checkpoint(&settings.model.dir)?;
    let schema: FeatureSchema = loaded.meta.features.clone();
    let windows = loaded.meta.training.anomaly_windows.clone();
    let detector =
        Detector::new(Scorer::new(loaded), &settings.windows).with_stride(settings.scoring.stride);

    // The labelled series, for the precision/recall at the end.
    let csv_options = CsvOptions {
        time_column: settings.dataset.time_column.clone(),
        label_column: settings.dataset.label_column.clone(),
        device_column: None,
        anomaly_windows: windows,
    };
    let series = load_csv(&options.data, &schema, &csv_options)?;
    let labels: HashMap<i64, bool> = match &series.labels {
        Some(labels) => series
            .records
            .iter()
            .map(|r| r.ts_ms)
            .zip(labels.iter().copied())
            .collect(),
        None => bail!(
            "{} has no labels, so the demo cannot score its verdicts",
            options.data.display()
        ),
    };

    // Messages: the series, then the original project's examples, then two broken records that
    // must end up on the dead-letter topic.
    let mut messages = read_messages(&options.data, Some(DEMO_DEVICE))?;
    let series_len = messages.len();
    if let Some(seed) = &options.seed_examples {
        messages.extend(read_messages(seed, Some(SEED_DEVICE))?);
    }
    let broken = [
        ReplayMessage {
            key: Some(SEED_DEVICE.into()),
            payload: br#"{"temperatura": 25.1, "umidade": "#.to_vec(),
        },
        ReplayMessage {
            key: Some(SEED_DEVICE.into()),
            payload: br#"{"temperatura": 900, "umidade": 60.5, "qualidade_do_ar": 75, "luz": 628.0, "som": 145.0}"#.to_vec(),
        },
    ];
    messages.extend(broken.iter().cloned());
    let expected_dead = broken.len() as u64;
    let expected_verdicts = (messages.len() - broken.len()) as u64;

    println!("starting an in-process Kafka mock cluster (librdkafka)");
    let cluster = MockCluster::new(1).context("cannot start the mock cluster")?;
    let k = &mut settings.kafka;
    cluster.create_topic(&k.input_topic, INPUT_PARTITIONS, 1)?;
    cluster.create_topic(&k.output_topic, INPUT_PARTITIONS, 1)?;
    cluster.create_topic(&k.deadletter_topic, 1, 1)?;
    cluster.create_topic(&k.alerts_topic, INPUT_PARTITIONS, 1)?;
    k.brokers = cluster.bootstrap_servers();
    k.group_id = "iot-anomaly-demo".into();
    k.consumer.insert("fetch.wait.max.ms".into(), "10".into());
    println!(
        "brokers {}: topics {}, {}, {}, {}",
        k.brokers, k.input_topic, k.output_topic, k.deadletter_topic, k.alerts_topic
    );

    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    let pipeline = Pipeline::new(settings.clone(), detector, metrics, health)?;
    let (stop, stopped) = watch::channel(false);
    let pipeline_task = tokio::spawn(pipeline.run(stopped));

    let viewer: StreamConsumer = iot_anomaly::kafka::consumer_config(&settings.kafka)
        .set("group.id", "iot-anomaly-demo-viewer")
        .create()?;
    viewer.subscribe(&[
        settings.kafka.output_topic.as_str(),
        settings.kafka.deadletter_topic.as_str(),
        settings.kafka.alerts_topic.as_str(),
    ])?;

    println!(
        "replaying {} records of {} as device {DEMO_DEVICE}, then {} more (seed examples and broken records)",
        series_len,
        options.data.display(),
        messages.len() - series_len
    );
    let producer = iot_anomaly::kafka::create_producer(&settings.kafka)?;
    let started = Instant::now();
    let topic = settings.kafka.input_topic.clone();
    let rate = options.rate;
    let produce_task =
        tokio::spawn(async move { produce_all(&producer, &topic, &messages, rate).await });

    let mut view = Viewer::new(options.max_episodes_shown);
    let mut first_verdict_at: Option<Instant> = None;
    let mut last_verdict_at = started;
    let deadline = Instant::now()
        + DRAIN_TIMEOUT
        + options.rate.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(series_len as f64 / r)
        });
    while view.verdicts < expected_verdicts || view.dead_letters < expected_dead {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            bail!(
                "timed out: {} of {expected_verdicts} verdicts and {} of {expected_dead} dead letters arrived",
                view.verdicts,
                view.dead_letters
            );
        }
        let message = match tokio::time::timeout(
            remaining.min(Duration::from_secs(1)),
            viewer.recv(),
        )
        .await
        {
            Ok(message) => message.context("the viewer consumer failed")?,
            Err(_) => continue,
        };
        if message.topic() == settings.kafka.alerts_topic {
            view.observe_alert(message.payload().unwrap_or_default())?;
            continue;
        }
        if message.topic() == settings.kafka.deadletter_topic {
            let reason = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == HEADER_REASON_KIND))
                .and_then(|h| h.value)
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            println!(
                "dead letter  partition {} offset {}: {reason}",
                message.partition(),
                message.offset()
            );
            view.dead_letters += 1;
            continue;
        }
        let verdict: Verdict = serde_json::from_slice(message.payload().unwrap_or_default())
            .context("a verdict on the output topic is not valid JSON")?;
        view.observe(&verdict, &labels);
        last_verdict_at = Instant::now();
        first_verdict_at.get_or_insert(last_verdict_at);
    }
    produce_task.await.context("the replay task panicked")??;

    // Alert events of the last batch may arrive after its verdicts.
    while let Ok(message) = tokio::time::timeout(ALERT_LINGER, viewer.recv()).await {
        let message = message.context("the viewer consumer failed")?;
        if message.topic() == settings.kafka.alerts_topic {
            view.observe_alert(message.payload().unwrap_or_default())?;
        }
    }
    view.finish();

    stop.send(true).ok();
    let stats = pipeline_task
        .await
        .context("the pipeline task panicked")??;
    // The consumer group takes seconds to form on the mock cluster, so throughput is
    // measured from the first verdict to the last, while records were flowing.
    let seconds = last_verdict_at.duration_since(started).as_secs_f64();
    let flowing = last_verdict_at
        .duration_since(first_verdict_at.unwrap_or(started))
        .as_secs_f64();
    Ok(DemoSummary {
        records_in: stats.consumed as usize,
        verdicts: view.verdicts,
        dead_letters: view.dead_letters,
        anomalies: view.anomalies,
        warming_up: view.warming_up,
        alerts_opened: view.alerts_opened,
        alerts_closed: view.alerts_closed,
        metrics: DetectionMetrics::from(view.confusion),
        records_per_second: view.verdicts.saturating_sub(1) as f64 / flowing.max(1e-9),
        seconds,
    })
}

/// Prints the first anomaly verdict and the alert events as they arrive, and tallies
/// the summary.
struct Viewer {
    verdicts: u64,
    dead_letters: u64,
    anomalies: u64,
    warming_up: u64,
    confusion: Confusion,
    alerts_opened: u64,
    alerts_closed: u64,
    max_alerts_shown: usize,
}

impl Viewer {
    fn new(max_alerts_shown: usize) -> Self {
        Self {
            verdicts: 0,
            dead_letters: 0,
            anomalies: 0,
            warming_up: 0,
            confusion: Confusion::default(),
            alerts_opened: 0,
            alerts_closed: 0,
            max_alerts_shown,
        }
    }

    fn observe(&mut self, verdict: &Verdict, labels: &HashMap<i64, bool>) {
        self.verdicts += 1;
        match verdict.status {
            Status::Anomaly => {
                self.anomalies += 1;
                if self.anomalies == 1 {
                    let json = serde_json::to_string(verdict).unwrap_or_default();
                    println!("first anomaly verdict, as published on the output topic:\n  {json}");
                }
            }
            Status::WarmingUp => self.warming_up += 1,
            Status::Normal => {}
        }
        if verdict.device_id == DEMO_DEVICE {
            let ts_ms = chrono::DateTime::parse_from_rfc3339(&verdict.ts)
                .map(|t| t.timestamp_millis())
                .ok();
            if let Some(label) = ts_ms.and_then(|ts| labels.get(&ts)) {
                self.confusion
                    .add(verdict.status == Status::Anomaly, *label);
            }
        }
    }

    fn observe_alert(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let event: AlertEvent = serde_json::from_slice(payload)
            .context("an event on the alerts topic is not valid JSON")?;
        let shown = (self.alerts_opened + self.alerts_closed) < self.max_alerts_shown as u64;
        match event.event {
            AlertEventKind::Opened => {
                self.alerts_opened += 1;
                if shown {
                    println!(
                        "ALERT opened {}  since {}  score {:.3} > threshold {:.3}  top feature {}",
                        event.device_id,
                        event.start,
                        event.peak_score,
                        event.threshold,
                        event.top_feature.as_deref().unwrap_or("-")
                    );
                }
            }
            AlertEventKind::Closed => {
                self.alerts_closed += 1;
                if self.alerts_closed == 1 {
                    println!(
                        "first closed alert, as published on the alerts topic:\n  {}",
                        String::from_utf8_lossy(payload)
                    );
                }
                if shown {
                    println!(
                        "ALERT closed {}  {} .. {}  {} anomaly verdicts, peak score {:.3} ({})",
                        event.device_id,
                        event.start,
                        event.end.as_deref().unwrap_or("-"),
                        event.anomalous_verdicts,
                        event.peak_score,
                        event.top_feature.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        Ok(())
    }

    fn finish(&self) {
        let events = self.alerts_opened + self.alerts_closed;
        if events > self.max_alerts_shown as u64 {
            println!(
                "... {} more alert events not shown",
                events - self.max_alerts_shown as u64
            );
        }
    }
}

impl DemoSummary {
    pub fn to_text(&self) -> String {
        let m = &self.metrics;
        format!(
            "\nsummary\n  records in        {}\n  verdicts out      {} ({} anomaly, {} warming_up)\n  alerts            {} opened, {} closed\n  dead letters      {}\n  precision         {:.4}\n  recall            {:.4}\n  F1                {:.4}\n  throughput        {:.0} records/s (first to last verdict)\n  wall time         {:.2} s from first record produced to last verdict, consumer group start-up included\n",
            self.records_in,
            self.verdicts,
            self.anomalies,
            self.warming_up,
            self.alerts_opened,
            self.alerts_closed,
            self.dead_letters,
            m.precision,
            m.recall,
            m.f1,
            self.records_per_second,
            self.seconds
        )
    }
}
