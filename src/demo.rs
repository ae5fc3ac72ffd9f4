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

/// Options of `iot-anomaly demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub settings: Settings,
    pub data: PathBuf,
    /// Extra JSON-lines file replayed after the series (the original project's examples).
    pub seed_examples: Option<PathBuf>,
    /// Records per second offered by the replay; `None` is as fast as possible.
    pub rate: Option<f64>,
    /// Anomaly episodes printed in full before the rest are only counted.
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
    let detector = Detector::new(Scorer::new(loaded), &settings.windows);

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
    view.close_episodes();

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
        metrics: DetectionMetrics::from(view.confusion),
        records_per_second: view.verdicts.saturating_sub(1) as f64 / flowing.max(1e-9),
        seconds,
    })
}

/// Prints anomaly episodes as verdicts arrive and tallies the summary.
struct Viewer {
    verdicts: u64,
    dead_letters: u64,
    anomalies: u64,
    warming_up: u64,
    confusion: Confusion,
    /// Open episode per device: start time, records, peak score, top feature.
    open: HashMap<String, Episode>,
    episodes: usize,
    max_episodes_shown: usize,
}

struct Episode {
    start: String,
    last: String,
    records: u64,
    peak: f64,
    top_feature: String,
}

impl Viewer {
    fn new(max_episodes_shown: usize) -> Self {
        Self {
            verdicts: 0,
            dead_letters: 0,
            anomalies: 0,
            warming_up: 0,
            confusion: Confusion::default(),
            open: HashMap::new(),
            episodes: 0,
            max_episodes_shown,
        }
    }

    fn observe(&mut self, verdict: &Verdict, labels: &HashMap<i64, bool>) {
        self.verdicts += 1;
        match verdict.status {
            Status::Anomaly => self.anomalies += 1,
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

        let score = verdict.score.unwrap_or_default();
        if verdict.status == Status::Anomaly {
            let shown = self.episodes < self.max_episodes_shown;
            let episode = self
                .open
                .entry(verdict.device_id.clone())
                .or_insert_with(|| {
                    self.episodes += 1;
                    if self.episodes == 1 {
                        let json = serde_json::to_string(verdict).unwrap_or_default();
                        println!(
                            "first anomaly verdict, as published on the output topic:\n  {json}"
                        );
                    }
                    if shown {
                        println!(
                            "ANOMALY      {}  {}  score {:.3} > threshold {:.3}  top feature {}",
                            verdict.device_id,
                            verdict.ts,
                            score,
                            verdict.threshold,
                            verdict.top_feature.as_deref().unwrap_or("-")
                        );
                    }
                    Episode {
                        start: verdict.ts.clone(),
                        last: verdict.ts.clone(),
                        records: 0,
                        peak: 0.0,
                        top_feature: String::new(),
                    }
                });
            episode.records += 1;
            episode.last = verdict.ts.clone();
            if score >= episode.peak {
                episode.peak = score;
                episode.top_feature = verdict.top_feature.clone().unwrap_or_default();
            }
        } else if let Some(episode) = self.open.remove(&verdict.device_id) {
            self.print_closed(&verdict.device_id, &episode);
        }
    }

    fn close_episodes(&mut self) {
        for (device, episode) in std::mem::take(&mut self.open) {
            self.print_closed(&device, &episode);
        }
        if self.episodes > self.max_episodes_shown {
            println!(
                "... {} more anomaly episodes not shown",
                self.episodes - self.max_episodes_shown
            );
        }
    }

    fn print_closed(&self, device: &str, episode: &Episode) {
        if self.episodes <= self.max_episodes_shown {
            println!(
                "  ended      {device}  {} .. {}  {} records, peak score {:.3} ({})",
                episode.start, episode.last, episode.records, episode.peak, episode.top_feature
            );
        }
    }
}

impl DemoSummary {
    pub fn to_text(&self) -> String {
        let m = &self.metrics;
        format!(
            "\nsummary\n  records in        {}\n  verdicts out      {} ({} anomaly, {} warming_up)\n  dead letters      {}\n  precision         {:.4}\n  recall            {:.4}\n  F1                {:.4}\n  throughput        {:.0} records/s (first to last verdict)\n  wall time         {:.2} s from first record produced to last verdict, consumer group start-up included\n",
            self.records_in,
            self.verdicts,
            self.anomalies,
            self.warming_up,
            self.dead_letters,
            m.precision,
            m.recall,
            m.f1,
            self.records_per_second,
            self.seconds
        )
    }
}
