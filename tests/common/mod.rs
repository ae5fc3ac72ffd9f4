//! Shared fixtures: the AnoML-IoT feature schema and checkpoints with random weights.
//!
//! Tests of plumbing (pipeline counts, checkpoint round trips, agreement between the
//! live and offline paths) need a real model but not a trained one; random weights
//! keep them fast and independent of training.

#![allow(dead_code)]

use std::path::Path;

use iot_anomaly::config::{Settings, ThresholdMethod};
use iot_anomaly::model::{
    save_checkpoint, Architecture, LstmAutoencoder, ModelMeta, Scaler, ThresholdInfo, TrainingInfo,
    CHECKPOINT_FORMAT,
};
use iot_anomaly::schema::FeatureSchema;
use tch::{nn, Device};

pub const ANOML_CONFIG: &str = "config/anoml-iot.toml";
pub const ANOML_CSV: &str = "data/anoml-iot.csv";

pub fn anoml_settings() -> Settings {
    Settings::load(Some(Path::new(ANOML_CONFIG))).expect("the shipped AnoML-IoT config loads")
}

pub fn anoml_schema() -> FeatureSchema {
    FeatureSchema::new(anoml_settings().features).expect("the shipped features are valid")
}

/// Writes a checkpoint with random weights (seeded) for the AnoML-IoT features.
pub fn random_checkpoint(dir: &Path, window: i64, threshold: f64, seed: i64) -> ModelMeta {
    let schema = anoml_schema();
    tch::manual_seed(seed);
    let arch = Architecture {
        features: schema.len() as i64,
        window,
        hidden_size: 8,
        num_layers: 1,
    };
    let vars = nn::VarStore::new(Device::Cpu);
    let _model = LstmAutoencoder::new(&vars.root(), arch);
    let meta = ModelMeta {
        format: CHECKPOINT_FORMAT.into(),
        model_version: format!("random-{seed}"),
        created_at: "2026-12-04T00:00:00Z".into(),
        features: schema,
        architecture: arch,
        scaler: Scaler {
            mean: vec![25.0, 60.0, 75.0, 630.0, 150.0],
            std: vec![1.0, 3.0, 1.0, 2.0, 20.0],
        },
        error_scale: vec![1.0; 5],
        score_aggregation: Default::default(),
        threshold: ThresholdInfo {
            value: threshold,
            method: ThresholdMethod::Quantile,
            quantile: 0.99,
            multiplier: 1.0,
            calibration_windows: 1,
            pot: None,
        },
        training: TrainingInfo {
            data_path: ANOML_CSV.into(),
            data_sha256: String::new(),
            rows: 0,
            train_windows: 0,
            validation_windows: 0,
            seed: seed as u64,
            epochs_run: 0,
            best_epoch: 0,
            best_validation_loss: 0.0,
            train_seconds: 0.0,
            time_column: Some("Time".into()),
            label_column: None,
            device_column: None,
            anomaly_windows: anoml_settings().dataset.anomaly_windows,
        },
        evaluation: None,
    };
    save_checkpoint(dir, &vars, &meta).expect("checkpoint written");
    meta
}

pub mod tansu;

pub mod mock {
    //! The scoring pipeline against librdkafka's in-process mock cluster.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use iot_anomaly::config::Settings;
    use iot_anomaly::detector::Detector;
    use iot_anomaly::model::load_checkpoint;
    use iot_anomaly::pipeline::{Pipeline, PipelineStats};
    use iot_anomaly::replay::{produce_all, ReplayMessage};
    use iot_anomaly::scorer::Scorer;
    use iot_anomaly::telemetry::{Health, Metrics};
    use iot_anomaly::verdict::Verdict;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, OwnedMessage};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;
    use rdkafka::Message;
    use tokio::sync::watch;
    use tokio::task::JoinHandle;

    static READER_GROUPS: AtomicUsize = AtomicUsize::new(0);

    pub struct Harness {
        // Dropping the cluster stops its brokers, so it lives as long as the harness.
        _cluster: MockCluster<'static, DefaultProducerContext>,
        pub settings: Settings,
        stop: watch::Sender<bool>,
        task: JoinHandle<Result<PipelineStats, iot_anomaly::pipeline::PipelineError>>,
        pub metrics: Metrics,
    }

    /// Everything read back from the output, dead-letter and alerts topics.
    #[derive(Default)]
    pub struct Collected {
        pub verdicts: Vec<Verdict>,
        pub dead_letters: Vec<OwnedMessage>,
        pub alerts: Vec<iot_anomaly::alerts::AlertEvent>,
    }

    impl Harness {
        /// Starts a one-broker mock cluster with the three topics and a pipeline
        /// scoring with the checkpoint in `model_dir`.
        pub fn start(model_dir: &std::path::Path, partitions: i32) -> Self {
            Self::start_with(model_dir, partitions, |_| {})
        }

        /// Like [`Harness::start`], with `adjust` applied to the settings first.
        pub fn start_with(
            model_dir: &std::path::Path,
            partitions: i32,
            adjust: impl FnOnce(&mut Settings),
        ) -> Self {
            let cluster = MockCluster::new(1).expect("mock cluster starts");
            let mut settings = Settings::default();
            adjust(&mut settings);
            settings.model.dir = model_dir.to_path_buf();
            settings.kafka.brokers = cluster.bootstrap_servers();
            settings
                .kafka
                .consumer
                .insert("fetch.wait.max.ms".into(), "10".into());
            settings
                .kafka
                .consumer
                .insert("statistics.interval.ms".into(), "500".into());
            cluster
                .create_topic(&settings.kafka.input_topic, partitions, 1)
                .unwrap();
            cluster
                .create_topic(&settings.kafka.output_topic, partitions, 1)
                .unwrap();
            cluster
                .create_topic(&settings.kafka.deadletter_topic, 1, 1)
                .unwrap();
            cluster
                .create_topic(&settings.kafka.alerts_topic, partitions, 1)
                .unwrap();

            let detector = Detector::new(
                Scorer::new(load_checkpoint(model_dir).unwrap()),
                &settings.windows,
            );
            let metrics = Metrics::new();
            let updates = iot_anomaly::reload::spawn_watcher(&settings.model, metrics.clone());
            let pipeline = Pipeline::new(
                settings.clone(),
                detector,
                metrics.clone(),
                Arc::new(Health::default()),
            )
            .unwrap()
            .with_model_updates(updates);
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(pipeline.run(stopped));
            Self {
                _cluster: cluster,
                settings,
                stop,
                task,
                metrics,
            }
        }

        pub async fn produce(&self, messages: &[ReplayMessage]) {
            // A plain producer: the test's input is not part of the scorer's transactions.
            let mut kafka = self.settings.kafka.clone();
            kafka.delivery = iot_anomaly::config::Delivery::AtLeastOnce;
            let producer = iot_anomaly::kafka::create_producer(&kafka).unwrap();
            produce_all(&producer, &self.settings.kafka.input_topic, messages, None)
                .await
                .unwrap();
        }

        /// Reads both output topics until `verdicts` and `dead_letters` messages arrived,
        /// then keeps reading for `linger` to catch duplicates. Panics after `timeout`.
        pub async fn collect(
            &self,
            verdicts: usize,
            dead_letters: usize,
            linger: Duration,
            timeout: Duration,
        ) -> Collected {
            let consumer: StreamConsumer =
                iot_anomaly::kafka::consumer_config(&self.settings.kafka)
                    // A fresh group per call: a new member of an old group waits for the previous
                    // member's session to expire on the mock cluster.
                    .set(
                        "group.id",
                        format!(
                            "test-reader-{}",
                            READER_GROUPS.fetch_add(1, Ordering::Relaxed)
                        ),
                    )
                    .create()
                    .unwrap();
            consumer
                .subscribe(&[
                    &self.settings.kafka.output_topic,
                    &self.settings.kafka.deadletter_topic,
                    &self.settings.kafka.alerts_topic,
                ])
                .unwrap();
            let mut collected = Collected::default();
            let deadline = Instant::now() + timeout;
            let mut complete_at: Option<Instant> = None;
            loop {
                let done = collected.verdicts.len() >= verdicts
                    && collected.dead_letters.len() >= dead_letters;
                if done && complete_at.is_none() {
                    complete_at = Some(Instant::now());
                }
                if complete_at.is_some_and(|t| t.elapsed() >= linger) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out with {} of {verdicts} verdicts and {} of {dead_letters} dead letters",
                    collected.verdicts.len(),
                    collected.dead_letters.len()
                );
                let Ok(message) =
                    tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
                else {
                    continue;
                };
                let message = message.unwrap().detach();
                // The exactly-once start-up check aborts one record. Kafka hides it from
                // read_committed consumers, but librdkafka's mock cluster delivers it.
                if header(&message, iot_anomaly::pipeline::HEADER_TRANSACTION_PROBE).is_some() {
                    continue;
                }
                if message.topic() == self.settings.kafka.deadletter_topic {
                    collected.dead_letters.push(message);
                } else if message.topic() == self.settings.kafka.alerts_topic {
                    collected
                        .alerts
                        .push(serde_json::from_slice(message.payload().unwrap()).unwrap());
                } else {
                    collected
                        .verdicts
                        .push(serde_json::from_slice(message.payload().unwrap()).unwrap());
                }
            }
            collected
        }

        pub async fn stop(self) -> PipelineStats {
            self.stop.send(true).unwrap();
            self.task.await.unwrap().unwrap()
        }
    }

    /// Value of the dead-letter header `key`.
    pub fn header(message: &OwnedMessage, key: &str) -> Option<String> {
        let headers = message.headers()?;
        headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}
