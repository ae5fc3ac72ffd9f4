//! Prometheus metrics, the `/metrics` `/healthz` `/readyz` HTTP endpoints and log set-up.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::config::{LogFormat, MetricsSettings};

/// Metric handles; cloning shares the same series.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Records taken from the input topic, by `outcome` (`scored`, `dead_lettered`).
    pub records_consumed: IntCounterVec,
    /// Dead letters by `reason`.
    pub dead_letters: IntCounterVec,
    /// Verdicts by `status`.
    pub verdicts: IntCounterVec,
    /// Anomaly verdicts by `device`, with at most `metrics.max_device_series` devices
    /// labelled.
    pub device_anomalies: DeviceCounter,
    /// Windows per inference batch.
    pub batch_windows: Histogram,
    pub inference_seconds: Histogram,
    /// Verdict acknowledged minus record timestamp.
    pub record_latency_seconds: Histogram,
    /// Time from a record's arrival from the consumer to the broker's acknowledgement
    /// of its verdict or dead letter (buckets [`PROCESSING_BUCKETS`]).
    pub processing_seconds: Histogram,
    pub devices_tracked: IntGauge,
    /// Evicted device windows by `cause` (`idle`, `capacity`).
    pub device_evictions: IntCounterVec,
    pub producer_errors: IntCounter,
    /// Constant 1 labelled with the loaded model's version and shape.
    pub model_info: IntGaugeVec,
    /// Model reload attempts by `result` (`success`, `failed`, `rejected`).
    pub model_reloads: IntCounterVec,
    /// Records between the consumer's position and the partition's end, by `topic`
    /// and `partition`, from librdkafka statistics.
    pub consumer_lag: IntGaugeVec,
    /// Alert events acknowledged by the broker, by `event` (`opened`, `closed`).
    pub alerts: IntCounterVec,
    /// Devices with an open alert episode in this process.
    pub alerts_open: IntGauge,
}

impl Metrics {
    /// Creates the metrics with the default `metrics.max_device_series`.
    pub fn new() -> Self {
        Self::with_max_device_series(MetricsSettings::default().max_device_series)
    }

    /// Creates the metrics; `max_device_series` devices get their own series in
    /// `iot_anomaly_device_anomalies_total`.
    pub fn with_max_device_series(max_device_series: usize) -> Self {
        let registry =
            Registry::new_custom(Some("iot_anomaly".into()), None).expect("static prefix is valid");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric names are unique");
            metric
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("static metric definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric names are unique");
            metric
        };

        let records_consumed = counter_vec(
            "records_consumed_total",
            "Records read from the input topic, by outcome.",
            &["outcome"],
        );
        let dead_letters = counter_vec(
            "dead_letters_total",
            "Records sent to the dead-letter topic, by reason.",
            &["reason"],
        );
        let verdicts = counter_vec(
            "verdicts_total",
            "Verdicts published, by status.",
            &["status"],
        );
        let device_anomalies = DeviceCounter {
            counter: counter_vec(
                "device_anomalies_total",
                "Anomaly verdicts published, by device; devices beyond metrics.max_device_series count under device=\"\".",
                &["device"],
            ),
            limit: max_device_series,
            labelled: Arc::new(Mutex::new(HashSet::new())),
        };
        let model_reloads = counter_vec(
            "model_reloads_total",
            "Model reload attempts, by result.",
            &["result"],
        );
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "consumer_lag_records",
                "Records not yet consumed per assigned partition (librdkafka statistics).",
            ),
            &["topic", "partition"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(consumer_lag.clone()))
            .expect("metric names are unique");
        let device_evictions = counter_vec(
            "device_evictions_total",
            "Device windows dropped, by cause.",
            &["cause"],
        );
        let batch_windows = histogram(
            "inference_batch_windows",
            "Windows scored per inference batch.",
            vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ],
        );
        let inference_seconds = histogram(
            "inference_duration_seconds",
            "Time to score one inference batch.",
            prometheus::exponential_buckets(0.000_05, 2.0, 16).expect("static buckets"),
        );
        let record_latency_seconds = histogram(
            "record_latency_seconds",
            "Time from the record's timestamp to its verdict being acknowledged.",
            prometheus::exponential_buckets(0.001, 2.0, 16).expect("static buckets"),
        );
        let processing_seconds = histogram(
            "processing_seconds",
            "Time from receiving a record to the broker acknowledging its verdict or dead letter.",
            processing_buckets(),
        );
        let devices_tracked = IntGauge::new("devices_tracked", "Devices with a window in memory.")
            .expect("static metric definition");
        registry
            .register(Box::new(devices_tracked.clone()))
            .expect("metric names are unique");
        let producer_errors = IntCounter::new(
            "producer_errors_total",
            "Verdicts or dead letters the broker did not acknowledge.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(producer_errors.clone()))
            .expect("metric names are unique");
        let model_info = IntGaugeVec::new(
            Opts::new("model_info", "Loaded model; the value is always 1."),
            &["version", "features", "window", "threshold"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(model_info.clone()))
            .expect("metric names are unique");

        let alerts = counter_vec(
            "alerts_total",
            "Alert episode events published, by event.",
            &["event"],
        );
        let alerts_open = IntGauge::new(
            "alerts_open",
            "Devices with an open alert episode in this process.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(alerts_open.clone()))
            .expect("metric names are unique");

        Self {
            registry,
            records_consumed,
            dead_letters,
            verdicts,
            device_anomalies,
            batch_windows,
            inference_seconds,
            record_latency_seconds,
            processing_seconds,
            devices_tracked,
            device_evictions,
            producer_errors,
            model_info,
            model_reloads,
            consumer_lag,
            alerts,
            alerts_open,
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

/// Bucket bounds of `processing_seconds`: 100 µs × 1.2^k for k = 0..60, up to about
/// 4.7 s. Neighbouring bounds differ by 20 %, so a quantile interpolated inside a
/// bucket is off by less than that.
pub const PROCESSING_BUCKETS: (f64, f64, usize) = (0.000_1, 1.2, 60);

fn processing_buckets() -> Vec<f64> {
    let (start, factor, count) = PROCESSING_BUCKETS;
    prometheus::exponential_buckets(start, factor, count).expect("static buckets")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A counter with a `device` label whose series count is bounded: the first `limit`
/// devices seen get their own series, later ones share the series `device=""`. The
/// record parser rejects empty device ids, so that series cannot be a real device.
#[derive(Clone)]
pub struct DeviceCounter {
    counter: IntCounterVec,
    limit: usize,
    /// Devices that have their own series.
    labelled: Arc<Mutex<HashSet<String>>>,
}

impl DeviceCounter {
    /// Adds one to `device`'s series, or to the shared series once `limit` devices
    /// have their own.
    pub fn inc(&self, device: &str) {
        let mut labelled = self.labelled.lock().unwrap_or_else(PoisonError::into_inner);
        let has_series = labelled.contains(device)
            || (labelled.len() < self.limit && labelled.insert(device.to_owned()));
        let label = if has_series { device } else { "" };
        self.counter.with_label_values(&[label]).inc();
    }
}

/// Readiness flags behind `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    pub model_loaded: AtomicBool,
    pub partitions_assigned: AtomicBool,
    /// Set when librdkafka reports every broker down; cleared by the next message.
    pub brokers_down: AtomicBool,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.model_loaded.load(Ordering::Relaxed)
            && self.partitions_assigned.load(Ordering::Relaxed)
            && !self.brokers_down.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Metrics,
    health: Arc<Health>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown` resolves.
pub async fn serve_http(
    addr: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(HttpState { metrics, health });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "HTTP endpoints listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn ready_handler(State(state): State<HttpState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the model, a partition assignment or a reachable broker\n",
        )
    }
}

/// Installs the global `tracing` subscriber; `RUST_LOG` overrides `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second call (tests, demo after serve) keeps the first subscriber.
    drop(result);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_series_stop_at_limit() {
        let metrics = Metrics::with_max_device_series(2);
        for device in ["a", "b", "c", "a", "d"] {
            metrics.device_anomalies.inc(device);
        }
        let rendered = metrics.render();
        assert!(rendered.contains("iot_anomaly_device_anomalies_total{device=\"a\"} 2"));
        assert!(rendered.contains("iot_anomaly_device_anomalies_total{device=\"b\"} 1"));
        assert!(rendered.contains("iot_anomaly_device_anomalies_total{device=\"\"} 2"));
        assert!(!rendered.contains("device=\"c\""));
        assert!(!rendered.contains("device=\"d\""));
    }

    #[test]
    fn zero_device_series_share_one() {
        let metrics = Metrics::with_max_device_series(0);
        metrics.device_anomalies.inc("a");
        let rendered = metrics.render();
        assert!(rendered.contains("iot_anomaly_device_anomalies_total{device=\"\"} 1"));
    }
}
