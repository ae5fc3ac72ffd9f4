//! Layered configuration: built-in defaults → TOML file → `IOT_ANOMALY__*` environment.
//!
//! Every section rejects unknown keys, so a typo stops start-up instead of being
//! silently ignored. `config/default.toml` lists every key with its default value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Prefix of environment overrides; `__` separates nesting levels, for example
/// `IOT_ANOMALY__KAFKA__BROKERS=broker:9092`.
pub const ENV_PREFIX: &str = "IOT_ANOMALY";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} not found; pass an existing file with --config")]
    FileNotFound { path: PathBuf },

    #[error("invalid configuration (file {path}, environment {ENV_PREFIX}__*): {cause}; compare the key with config/default.toml")]
    Parse {
        path: PathBuf,
        cause: config::ConfigError,
    },

    #[error("invalid configuration value {key} = {value}: {fix}")]
    Invalid {
        key: &'static str,
        value: String,
        fix: String,
    },
}

/// The whole configuration of the service and of the training binary.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub model: ModelSettings,
    pub scoring: ScoringSettings,
    pub windows: WindowSettings,
    pub input: InputSettings,
    pub http: HttpSettings,
    pub metrics: MetricsSettings,
    pub alerts: AlertSettings,
    pub shutdown: ShutdownSettings,
    pub log: LogSettings,
    /// Feature schema used for training; the service reads it from the checkpoint.
    pub features: Vec<FeatureSpec>,
    pub dataset: DatasetSettings,
    pub training: TrainingSettings,
}

/// `Debug` masks secret librdkafka properties (see [`is_secret_property`]), so the
/// settings can be logged.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`, comma separated `host:port` list.
    pub brokers: String,
    pub group_id: String,
    pub input_topic: String,
    pub output_topic: String,
    pub deadletter_topic: String,
    /// Alert episode events (`opened`, `closed`); see [`AlertSettings`].
    pub alerts_topic: String,
    pub delivery: Delivery,
    /// `transactional.id` prefix in exactly-once mode; each process appends its own
    /// suffix because consumer-group fencing, not the id, protects against zombies.
    pub transactional_id: String,
    /// librdkafka properties applied to every client (security settings go here).
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties applied to the consumer only.
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties applied to the producer only.
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "iot-anomaly".into(),
            input_topic: "sensors.raw".into(),
            output_topic: "sensors.scored".into(),
            deadletter_topic: "sensors.deadletter".into(),
            alerts_topic: "sensors.alerts".into(),
            delivery: Delivery::AtLeastOnce,
            transactional_id: "iot-anomaly".into(),
            properties: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// Delivery guarantee between input offsets and output messages.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Offsets are committed after the outputs are acknowledged; a crash can repeat
    /// verdicts.
    AtLeastOnce,
    /// Outputs and input offsets are written in one Kafka transaction per batch;
    /// consumers of the output topics must read with `isolation.level=read_committed`.
    ExactlyOnce,
}

/// Value shown in place of a secret.
pub const MASK: &str = "***";

/// True for librdkafka properties whose values are credentials: passwords, secrets,
/// private keys, SASL/JAAS and OAUTHBEARER configuration.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key.pem",
        "sasl.jaas",
        "oauthbearer.config",
        "sasl.oauthbearer.client",
    ]
    .iter()
    .any(|marker| key.contains(marker))
}

fn masked(properties: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    properties
        .iter()
        .map(|(key, value)| {
            let shown = if is_secret_property(key) {
                MASK
            } else {
                value.as_str()
            };
            (key.as_str(), shown)
        })
        .collect()
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("input_topic", &self.input_topic)
            .field("output_topic", &self.output_topic)
            .field("deadletter_topic", &self.deadletter_topic)
            .field("alerts_topic", &self.alerts_topic)
            .field("delivery", &self.delivery)
            .field("transactional_id", &self.transactional_id)
            .field("properties", &masked(&self.properties))
            .field("consumer", &masked(&self.consumer))
            .field("producer", &masked(&self.producer))
            .finish()
    }
}

impl KafkaSettings {
    /// Returns a copy with every secret property value replaced by [`MASK`].
    pub fn with_secrets_masked(&self) -> Self {
        let mask = |properties: &BTreeMap<String, String>| {
            masked(properties)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        };
        Self {
            properties: mask(&self.properties),
            consumer: mask(&self.consumer),
            producer: mask(&self.producer),
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// Checkpoint directory holding `model.json` and `model.safetensors`.
    pub dir: PathBuf,
    /// Seconds between checks of `model.json` for a new checkpoint; 0 disables the
    /// check (SIGHUP still reloads).
    pub reload_interval_s: u64,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("models/anoml-iot"),
            reload_interval_s: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringSettings {
    /// Maximum records taken from Kafka into one inference batch.
    pub max_batch: usize,
    /// Maximum time in milliseconds a batch waits to fill before it is scored.
    pub max_wait_ms: u64,
    /// libtorch intra-op threads; 0 keeps libtorch's default (one per core). Scoring
    /// runs its own forward pass on the scoring task's thread, so this applies only to
    /// libtorch work such as loading checkpoints.
    pub intra_op_threads: usize,
    /// Score every `stride`-th full window of each device; the records in between get
    /// the status and score of the device's last scored window. 1 scores every record.
    pub stride: usize,
}

impl Default for ScoringSettings {
    fn default() -> Self {
        Self {
            max_batch: 512,
            max_wait_ms: 5,
            intra_op_threads: 1,
            stride: 1,
        }
    }
}

/// Policy for a record whose timestamp is older than its device's last one.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Send it to the dead-letter topic with reason `late`.
    DeadLetter,
    /// Append it to the window as if it were in order.
    Accept,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WindowSettings {
    /// Maximum devices with a window in memory; the least recently seen is evicted.
    pub max_devices: usize,
    /// Seconds without a record after which a device's window is dropped.
    pub idle_ttl_s: u64,
    /// A gap between two records of one device longer than this many seconds restarts
    /// its window (warm-up again); 0 disables the check.
    pub max_gap_s: u64,
    pub late_policy: LatePolicy,
}

impl Default for WindowSettings {
    fn default() -> Self {
        Self {
            max_devices: 100_000,
            idle_ttl_s: 86_400,
            max_gap_s: 0,
            late_policy: LatePolicy::DeadLetter,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InputSettings {
    /// Messages larger than this many bytes go to the dead-letter topic unparsed.
    pub max_message_bytes: usize,
    pub unknown_fields: UnknownFields,
}

impl Default for InputSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            unknown_fields: UnknownFields::Ignore,
        }
    }
}

/// Policy for a record with a key that is neither a feature, an alias,
/// `device_id` nor `ts`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    /// Score the record and ignore the extra keys (battery level, firmware, ...).
    Ignore,
    /// Send the record to the dead-letter topic with reason `unknown_field`.
    Reject,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints.
    pub bind: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0:9898".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Devices that get their own `iot_anomaly_device_anomalies_total` series. Anomalies
    /// of later devices count in the series with an empty `device` label, so the metric
    /// has at most this many plus one series per process.
    pub max_device_series: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            max_device_series: 1000,
        }
    }
}

/// Alert episodes on `kafka.alerts_topic`: a device's episode opens when
/// `open_after` of its last `of_last` scored verdicts are anomalies and closes after
/// `close_after` normal verdicts in a row.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    pub enabled: bool,
    pub open_after: usize,
    pub of_last: usize,
    pub close_after: usize,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            open_after: 3,
            of_last: 5,
            close_after: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// Seconds `serve` may take after SIGTERM to finish its batch, flush and commit;
    /// past it the process exits with status 1.
    pub timeout_s: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self { timeout_s: 30 }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `tracing` filter directive, overridden by `RUST_LOG` when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// One model input: its canonical name, the other names it may arrive under, and the
/// physical range outside which a reading is rejected as a sensor fault.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

/// Source of the training history and of its labels.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetSettings {
    /// CSV file with one row per reading.
    pub path: Option<PathBuf>,
    /// Column with the reading time (Unix seconds, milliseconds or RFC 3339).
    pub time_column: Option<String>,
    /// Column with 0/1 labels (1 = anomalous), used when present in the CSV.
    pub label_column: Option<String>,
    /// Column that names the device of each row; absent means one device.
    pub device_column: Option<String>,
    /// Known anomalous periods as inclusive `[start, end]` Unix seconds, used when
    /// the CSV has no label column.
    pub anomaly_windows: Vec<[i64; 2]>,
}

/// Division of the normal windows into training, validation and calibration sets.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SplitMethod {
    /// One cut in time over all normal windows: oldest trains, newest calibrates.
    Chronological,
    /// The same cut inside every run of normal windows between two anomalies.
    PerRun,
}

/// Combination of a window's per-feature errors into its score.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScoreAggregation {
    /// Mean over features: a fault must show in several sensors or strongly in one.
    #[default]
    Mean,
    /// Largest feature: a moderate shift in one sensor is not diluted by the others.
    Max,
}

impl ScoreAggregation {
    /// Combines `errors` (one per feature, not empty) into a score.
    pub fn combine(self, errors: &[f64]) -> f64 {
        match self {
            Self::Mean => errors.iter().sum::<f64>() / errors.len() as f64,
            Self::Max => errors.iter().copied().fold(f64::MIN, f64::max),
        }
    }
}

/// Statistic of each feature's error on validation windows that its errors are
/// divided by, so that features with different noise levels compare.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorScale {
    /// Mean error: a feature's normalised error averages 1.0 on normal data.
    #[default]
    Mean,
    /// 0.99 quantile: every feature's normalised error exceeds 1.0 on 1 % of normal
    /// windows, so their tails, which decide a maximum, are equal.
    P99,
}

/// Derivation of the threshold from held-out normal window scores.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMethod {
    /// `multiplier × quantile(q)` of calibration scores.
    Quantile,
    /// Peaks over threshold: a generalized Pareto tail fitted to the calibration
    /// scores above an initial quantile, extrapolated to a false-alarm risk per window.
    Pot,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSettings {
    /// Window length in records.
    pub window: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub max_epochs: usize,
    /// Epochs without validation improvement before training stops.
    pub patience: usize,
    pub seed: u64,
    /// Fractions of the normal windows, in time order, used for validation (early
    /// stopping) and calibration (threshold); the rest trains the model.
    pub validation_fraction: f64,
    pub calibration_fraction: f64,
    pub split: SplitMethod,
    /// Written into the checkpoint; the service scores with the model's aggregation.
    pub score_aggregation: ScoreAggregation,
    pub error_scale: ErrorScale,
    pub threshold_method: ThresholdMethod,
    pub threshold_quantile: f64,
    pub threshold_multiplier: f64,
    /// `pot` only: quantile of the calibration scores above which the tail is fitted.
    pub pot_initial_quantile: f64,
    /// `pot` only: probability that a normal window scores above the threshold.
    pub pot_risk: f64,
    /// Threads libtorch may use during training; 0 keeps libtorch's default.
    pub threads: usize,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        Self {
            window: 20,
            hidden_size: 16,
            num_layers: 1,
            batch_size: 64,
            learning_rate: 1e-3,
            max_epochs: 60,
            patience: 8,
            seed: 42,
            validation_fraction: 0.15,
            calibration_fraction: 0.15,
            split: SplitMethod::PerRun,
            score_aggregation: ScoreAggregation::Mean,
            error_scale: ErrorScale::Mean,
            threshold_method: ThresholdMethod::Quantile,
            threshold_quantile: 0.99,
            threshold_multiplier: 1.5,
            pot_initial_quantile: 0.9,
            pot_risk: 1e-3,
            threads: 0,
        }
    }
}

impl Settings {
    /// Loads built-in defaults, then `path` (if given), then `IOT_ANOMALY__*` variables.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        let shown_path = path.map(Path::to_path_buf).unwrap_or_default();
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::FileNotFound {
                    path: path.to_path_buf(),
                });
            }
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let settings: Settings = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|source| ConfigError::Parse {
                path: shown_path,
                cause: source,
            })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, value: impl ToString, fix: &str) -> ConfigError {
            ConfigError::Invalid {
                key,
                value: value.to_string(),
                fix: fix.to_string(),
            }
        }

        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid(
                "kafka.brokers",
                "\"\"",
                "set it to a comma-separated host:port list",
            ));
        }
        if self.scoring.max_batch == 0 {
            return Err(invalid("scoring.max_batch", 0, "use 1 or more"));
        }
        if self.scoring.stride == 0 {
            return Err(invalid("scoring.stride", 0, "use 1 or more"));
        }
        if self.windows.max_devices == 0 {
            return Err(invalid("windows.max_devices", 0, "use 1 or more"));
        }
        if self.input.max_message_bytes == 0 {
            return Err(invalid("input.max_message_bytes", 0, "use 1 or more"));
        }
        let t = &self.training;
        if t.window < 2 {
            return Err(invalid(
                "training.window",
                t.window,
                "use 2 or more records",
            ));
        }
        if t.hidden_size == 0 || t.num_layers == 0 || t.batch_size == 0 {
            return Err(invalid(
                "training.hidden_size/num_layers/batch_size",
                format!("{}/{}/{}", t.hidden_size, t.num_layers, t.batch_size),
                "use positive integers",
            ));
        }
        if !(t.learning_rate > 0.0 && t.learning_rate.is_finite()) {
            return Err(invalid(
                "training.learning_rate",
                t.learning_rate,
                "use a positive number such as 0.001",
            ));
        }
        let held_out = t.validation_fraction + t.calibration_fraction;
        if !(t.validation_fraction > 0.0 && t.calibration_fraction > 0.0 && held_out < 0.9) {
            return Err(invalid(
                "training.validation_fraction + calibration_fraction",
                held_out,
                "both must be positive and together below 0.9",
            ));
        }
        if !(t.threshold_quantile > 0.0 && t.threshold_quantile <= 1.0) {
            return Err(invalid(
                "training.threshold_quantile",
                t.threshold_quantile,
                "use a value in (0, 1]",
            ));
        }
        if !(t.threshold_multiplier > 0.0 && t.threshold_multiplier.is_finite()) {
            return Err(invalid(
                "training.threshold_multiplier",
                t.threshold_multiplier,
                "use a positive number",
            ));
        }
        let alerts = &self.alerts;
        if !(1..=alerts.of_last).contains(&alerts.open_after) || alerts.of_last > 1000 {
            return Err(invalid(
                "alerts.open_after/of_last",
                format!("{}/{}", alerts.open_after, alerts.of_last),
                "use 1 <= open_after <= of_last <= 1000",
            ));
        }
        if alerts.close_after == 0 {
            return Err(invalid(
                "alerts.close_after",
                alerts.close_after,
                "use at least 1 normal verdict",
            ));
        }
        if !(t.pot_initial_quantile > 0.0 && t.pot_initial_quantile < 1.0) {
            return Err(invalid(
                "training.pot_initial_quantile",
                t.pot_initial_quantile,
                "use a value in (0, 1), typically 0.9 to 0.98",
            ));
        }
        if !(t.pot_risk > 0.0 && t.pot_risk < 1.0 - t.pot_initial_quantile) {
            return Err(invalid(
                "training.pot_risk",
                t.pot_risk,
                "use a probability above 0 and below 1 - pot_initial_quantile",
            ));
        }
        for feature in &self.features {
            if let (Some(min), Some(max)) = (feature.min, feature.max) {
                if min >= max {
                    return Err(invalid(
                        "features.min/max",
                        format!("{}: {min}/{max}", feature.name),
                        "min must be below max",
                    ));
                }
            }
        }
        for window in &self.dataset.anomaly_windows {
            if window[0] > window[1] {
                return Err(invalid(
                    "dataset.anomaly_windows",
                    format!("[{}, {}]", window[0], window[1]),
                    "each window is [start, end] with start <= end",
                ));
            }
        }
        Ok(())
    }
}
