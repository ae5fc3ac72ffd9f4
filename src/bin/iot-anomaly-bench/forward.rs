//! The pass-through floor: a consumer that forwards every record unscored to the
//! output topic with the scorer's client settings, so its latency is what the broker
//! and the Kafka clients alone cost.
//!
//! Each record is produced as soon as it is received (no batching wait), with headers
//! naming its source partition and offset; a second task awaits the acknowledgements
//! in order, observes `iot_anomaly_processing_seconds` and stores offsets, as the
//! scorer does.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use iot_anomaly::config::Settings;
use iot_anomaly::kafka::{self, KafkaError};
use iot_anomaly::pipeline::{HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION};
use iot_anomaly::telemetry::{self, Health, Metrics};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message};
use tokio::sync::mpsc;

/// Outputs awaiting acknowledgement; bounds memory when the broker falls behind.
const IN_FLIGHT: usize = 100_000;

/// Marks the forwarder ready once partitions are assigned.
struct AssignmentContext {
    health: Arc<Health>,
}

impl ClientContext for AssignmentContext {}

impl ConsumerContext for AssignmentContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = matches!(rebalance, Rebalance::Assign(partitions) if partitions.count() > 0);
        self.health
            .partitions_assigned
            .store(assigned, Ordering::Relaxed);
    }
}

struct Pending {
    delivery: DeliveryFuture,
    received: Instant,
    topic: String,
    partition: i32,
    offset: i64,
}

/// Runs the forwarder until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    health.model_loaded.store(true, Ordering::Relaxed);

    let consumer: StreamConsumer<AssignmentContext> = kafka::consumer_config(&settings.kafka)
        .create_with_context(AssignmentContext {
            health: health.clone(),
        })
        .context("cannot create the forwarder's consumer")?;
    let consumer = Arc::new(consumer);
    let producer = kafka::create_producer(&settings.kafka)
        .context("cannot create the forwarder's producer")?;
    consumer
        .subscribe(&[settings.kafka.input_topic.as_str()])
        .context("cannot subscribe")?;

    let bind: SocketAddr = settings
        .http
        .bind
        .parse()
        .with_context(|| format!("invalid http.bind {:?}", settings.http.bind))?;
    tokio::spawn(telemetry::serve_http(
        bind,
        metrics.clone(),
        health,
        std::future::pending(),
    ));

    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(IN_FLIGHT);
    let acknowledger = tokio::spawn(acknowledge(pending_rx, consumer.clone(), metrics));
    let output_topic = settings.kafka.output_topic.clone();
    tracing::info!(input = %settings.kafka.input_topic, output = %output_topic, "forwarder started");

    let mut stop = Box::pin(tokio::signal::ctrl_c());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let message = tokio::select! {
            _ = &mut stop => break,
            _ = terminate.recv() => break,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "consume failed; librdkafka keeps retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let received = Instant::now();
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_SOURCE_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: HEADER_SOURCE_OFFSET,
                value: Some(offset.as_str()),
            });
        let mut record = FutureRecord::to(&output_topic)
            .payload(message.payload().unwrap_or_default())
            .headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => return Err(error).context("cannot produce"),
            }
        };
        let pending = Pending {
            delivery,
            received,
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        };
        if pending_tx.send(pending).await.is_err() {
            break;
        }
    }

    drop(pending_tx);
    let acknowledged = acknowledger
        .await
        .context("the acknowledgement task failed")?;
    let forwarded = acknowledged?;
    tracing::info!(forwarded, "forwarder stopped");
    Ok(())
}

/// Awaits acknowledgements in order and stores each input offset after its output is
/// acknowledged. Returns the number of records forwarded.
async fn acknowledge(
    mut pending: mpsc::Receiver<Pending>,
    consumer: Arc<StreamConsumer<AssignmentContext>>,
    metrics: Metrics,
) -> anyhow::Result<u64> {
    let mut forwarded = 0u64;
    while let Some(item) = pending.recv().await {
        match item.delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(error).context("the broker rejected a record"),
            Err(_) => anyhow::bail!("the producer dropped a delivery"),
        }
        metrics
            .processing_seconds
            .observe(item.received.elapsed().as_secs_f64());
        metrics
            .records_consumed
            .with_label_values(&["forwarded"])
            .inc();
        if let Err(error) = consumer.store_offset(&item.topic, item.partition, item.offset) {
            tracing::debug!(%error, "offset not stored");
        }
        forwarded += 1;
    }
    Ok(forwarded)
}
