//! Acknowledgements of produced outputs: waits for the broker to acknowledge each
//! verdict, dead letter and alert, counts them in the metrics, and hands back the
//! input offsets they cover.
//!
//! In at-least-once mode a separate task ([`acknowledge_in_order`]) does this for one
//! batch after another, so the scoring loop can consume and score the next batch while
//! the broker acknowledges the previous one. It stores a batch's offsets only after
//! every output of that batch and of all earlier batches was acknowledged, so a crash
//! still repeats verdicts and never loses one.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::DeliveryFuture;
use tokio::sync::mpsc;

use crate::alerts::AlertEventKind;
use crate::kafka::KafkaError;
use crate::pipeline::PipelineError;
use crate::telemetry::{Health, Metrics};
use crate::verdict::Status;

/// Highest processed offset per input (topic, partition).
pub(crate) type Offsets = BTreeMap<(String, i32), i64>;

/// A delivery unacknowledged for this long marks the service not ready.
// NOTE: a broker that stops responding while the scorer only waits on fetches (no
// delivery pending) flips /readyz only when the group session expires.
const DELIVERY_STALL: Duration = Duration::from_secs(5);

/// Kind of a produced message, for the bookkeeping done once the broker
/// acknowledges it.
pub(crate) enum Output {
    Verdict {
        status: Status,
        ts_ms: i64,
        device_id: String,
    },
    DeadLetter,
    Alert(AlertEventKind),
}

/// One produced message awaiting its acknowledgement.
pub(crate) struct PendingOutput {
    pub delivery: DeliveryFuture,
    pub output: Output,
    pub topic: Arc<str>,
    /// When the consumer handed over the input record that this output is for.
    pub received: Instant,
}

/// The outputs of one batch and the input offsets they cover.
pub(crate) struct SentBatch {
    pub outputs: Vec<PendingOutput>,
    pub offsets: Offsets,
}

/// Totals of acknowledged outputs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Acknowledged {
    pub verdicts: u64,
    pub anomalies: u64,
    pub last: Option<Instant>,
}

/// Handles shared by every acknowledgement.
#[derive(Clone)]
pub(crate) struct AckContext {
    pub metrics: Metrics,
    pub health: Arc<Health>,
}

/// Waits for every output of `batch`, counting each in `totals` and the metrics as it
/// is acknowledged. Returns the batch's offsets, or the first delivery error.
pub(crate) async fn acknowledge_batch(
    batch: SentBatch,
    context: &AckContext,
    totals: &mut Acknowledged,
) -> Result<Offsets, PipelineError> {
    // Outputs are awaited together, so each is timed when its own acknowledgement
    // arrives rather than when the ones before it are done.
    let mut pending: FuturesUnordered<_> = batch
        .outputs
        .into_iter()
        .map(|pending| async move {
            let result = pending.delivery.await;
            (
                result,
                Instant::now(),
                pending.output,
                pending.topic,
                pending.received,
            )
        })
        .collect();

    loop {
        // librdkafka retries until message.timeout.ms. Meanwhile a broker that stopped
        // responding makes the service not ready instead of silently stalling.
        let next = match tokio::time::timeout(DELIVERY_STALL, pending.next()).await {
            Ok(next) => next,
            Err(_) => {
                if !context.health.brokers_down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        waited_s = DELIVERY_STALL.as_secs(),
                        waiting = pending.len(),
                        "broker has not acknowledged a message; not ready until it does, librdkafka keeps retrying"
                    );
                }
                let next = pending.next().await;
                if context.health.brokers_down.swap(false, Ordering::Relaxed) {
                    tracing::info!("broker acknowledged again; resuming");
                }
                next
            }
        };
        let Some((result, acknowledged, output, topic, received)) = next else {
            break;
        };
        let delivered = match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((source, _))) => Err(source),
            Err(_canceled) => Err(KafkaError::Canceled),
        };
        if let Err(source) = delivered {
            context.metrics.producer_errors.inc();
            return Err(PipelineError::Delivery {
                topic: topic.to_string(),
                cause: source,
            });
        }
        count(output, acknowledged, received, context, totals);
    }
    Ok(batch.offsets)
}

/// Counts one acknowledged output in `totals` and the metrics.
fn count(
    output: Output,
    acknowledged: Instant,
    received: Instant,
    context: &AckContext,
    totals: &mut Acknowledged,
) {
    let metrics = &context.metrics;
    totals.last = Some(acknowledged);
    match output {
        Output::Verdict {
            status,
            ts_ms,
            device_id,
        } => {
            totals.verdicts += 1;
            if status == Status::Anomaly {
                totals.anomalies += 1;
                metrics.device_anomalies.inc(&device_id);
            }
            metrics.verdicts.with_label_values(&[status.as_str()]).inc();
            let latency_ms = chrono::Utc::now().timestamp_millis() - ts_ms;
            if latency_ms >= 0 {
                metrics
                    .record_latency_seconds
                    .observe(latency_ms as f64 / 1000.0);
            }
            metrics
                .processing_seconds
                .observe(acknowledged.duration_since(received).as_secs_f64());
        }
        Output::DeadLetter => {
            metrics
                .processing_seconds
                .observe(acknowledged.duration_since(received).as_secs_f64());
        }
        Output::Alert(kind) => {
            metrics.alerts.with_label_values(&[kind.as_str()]).inc();
        }
    }
}

/// Stores the next offset to consume for each partition, for auto-commit.
fn store_offsets<C: ConsumerContext>(consumer: &StreamConsumer<C>, offsets: &Offsets) {
    for ((topic, partition), offset) in offsets {
        if let Err(error) = consumer.store_offset(topic, *partition, *offset) {
            // The partition was revoked by a rebalance while the batch was in
            // flight; its new owner consumes these records again.
            tracing::debug!(%topic, partition, offset, %error, "offset not stored");
        }
    }
}

/// Acknowledges batches in the order they arrive and stores their offsets, until the
/// sender is dropped or a delivery fails.
pub(crate) async fn acknowledge_in_order<C: ConsumerContext + 'static>(
    mut batches: mpsc::Receiver<SentBatch>,
    consumer: Arc<StreamConsumer<C>>,
    context: AckContext,
) -> Result<Acknowledged, PipelineError> {
    let mut totals = Acknowledged::default();
    while let Some(batch) = batches.recv().await {
        let offsets = acknowledge_batch(batch, &context, &mut totals).await?;
        store_offsets(&consumer, &offsets);
    }
    Ok(totals)
}
