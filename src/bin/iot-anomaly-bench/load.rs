//! Offered load and its observation: a producer that sends workload records at a
//! fixed rate, remembering when each was sent and where the broker put it, and
//! readers that timestamp every output message on arrival.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use iot_anomaly::config::KafkaSettings;
use iot_anomaly::kafka::{self, KafkaError};
use iot_anomaly::pipeline::{HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION};
use iot_anomaly::workload::Workload;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How many records to send, and how fast.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// `count` records as fast as the producer accepts them.
    Burst { count: u64 },
    /// `rate` records per second for `duration`, paced on a 1 ms timer.
    Rate { rate: f64, duration: Duration },
    /// As fast as the producer accepts them, for `duration`.
    Flood { duration: Duration },
}

/// When each record of one phase was handed to the producer, and where it landed.
#[derive(Debug, Default)]
pub struct SendLog {
    /// Send time of the phase's `i`-th record.
    pub sent: Vec<Instant>,
    /// Input `(partition, offset)` → index into `sent`.
    pub positions: HashMap<(i32, i64), usize>,
    /// From the first send to the last send.
    pub sending: Duration,
}

impl SendLog {
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// Records sent per second while sending.
    pub fn offered_rate(&self) -> f64 {
        self.sent.len() as f64 / self.sending.as_secs_f64().max(1e-9)
    }
}

/// Sends records `first_sequence..` of `workload` to `topic` following `plan`, keyed by
/// device id, and waits until the broker acknowledged them all.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    workload: &Workload,
    first_sequence: u64,
    plan: Plan,
) -> anyhow::Result<SendLog> {
    let (deliveries_tx, deliveries_rx) = mpsc::unbounded_channel::<DeliveryFuture>();
    let positions_task = tokio::spawn(collect_positions(deliveries_rx));

    let mut sent = Vec::new();
    let mut payload = Vec::with_capacity(256);
    let started = Instant::now();
    let mut index = 0u64;
    loop {
        let elapsed = started.elapsed();
        let due = match plan {
            Plan::Burst { count } => count,
            Plan::Rate { rate, duration } => {
                if elapsed >= duration {
                    break;
                }
                (elapsed.as_secs_f64() * rate).floor() as u64 + 1
            }
            Plan::Flood { duration } => {
                if elapsed >= duration {
                    break;
                }
                index + 1_000
            }
        };
        while index < due {
            let sequence = first_sequence + index;
            let key = workload.device_id(sequence);
            workload.write_payload(sequence, &mut payload);
            let mut record = FutureRecord::<str, [u8]>::to(topic)
                .key(key.as_str())
                .payload(&payload);
            let delivery = loop {
                let now = Instant::now();
                match producer.send_result(record) {
                    Ok(delivery) => {
                        sent.push(now);
                        break delivery;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((error, _)) => return Err(error).context("cannot produce a record"),
                }
            };
            deliveries_tx
                .send(delivery)
                .map_err(|_| anyhow::anyhow!("the delivery collector stopped"))?;
            index += 1;
        }
        match plan {
            Plan::Burst { .. } => break,
            Plan::Rate { .. } => tokio::time::sleep(Duration::from_micros(500)).await,
            Plan::Flood { .. } => tokio::task::yield_now().await,
        }
    }
    let sending = match (sent.first(), sent.last()) {
        (Some(first), Some(last)) => last.duration_since(*first),
        _ => Duration::ZERO,
    };
    drop(deliveries_tx);
    let positions = positions_task
        .await
        .context("the delivery collector panicked")??;
    Ok(SendLog {
        sent,
        positions,
        sending,
    })
}

/// Awaits deliveries in send order and maps each `(partition, offset)` to its index.
async fn collect_positions(
    mut deliveries: mpsc::UnboundedReceiver<DeliveryFuture>,
) -> anyhow::Result<HashMap<(i32, i64), usize>> {
    let mut positions = HashMap::new();
    let mut index = 0usize;
    while let Some(delivery) = deliveries.recv().await {
        match delivery.await {
            Ok(Ok(delivered)) => {
                positions.insert((delivered.partition, delivered.offset), index);
            }
            Ok(Err((error, _))) => return Err(error).context("the broker rejected a record"),
            Err(_) => bail!("the producer dropped a delivery"),
        }
        index += 1;
    }
    Ok(positions)
}

/// The input record an output message is for, and when the message arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub partition: i32,
    pub offset: i64,
    pub at: Instant,
    /// The verdict carries a score (its window was full), so inference ran for it.
    pub scored: bool,
}

/// Format of the messages a reader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Verdict JSON with `partition` and `offset` fields.
    Verdicts,
    /// Forwarded records with source headers.
    Forwarded,
}

#[derive(Deserialize)]
struct VerdictPosition {
    partition: Option<i32>,
    offset: Option<i64>,
    score: Option<f64>,
}

/// Reads every partition of one topic from the beginning and timestamps arrivals.
pub struct Reader {
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    task: JoinHandle<()>,
}

impl Reader {
    pub fn start(
        kafka: &KafkaSettings,
        topic: &str,
        partitions: u32,
        kind: OutputKind,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = kafka::consumer_config(kafka)
            .set("group.id", format!("bench-reader-{topic}"))
            .set("enable.auto.commit", "false")
            .create()
            .context("cannot create a reader")?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions as i32 {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let sink = arrivals.clone();
        let task = tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(message) => {
                        let at = Instant::now();
                        match decode(&message, kind, at) {
                            Some(arrival) => sink.lock().expect("not poisoned").push(arrival),
                            None => tracing::warn!(
                                partition = message.partition(),
                                offset = message.offset(),
                                "output message without a source position; ignored"
                            ),
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "reader: consume failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Self { arrivals, task })
    }

    pub fn count(&self) -> usize {
        self.arrivals.lock().expect("not poisoned").len()
    }

    /// Waits until at least `count` messages arrived; fails after `timeout`, or at
    /// once when `check` fails (a child process exited).
    pub async fn wait_for(
        &self,
        count: usize,
        timeout: Duration,
        mut check: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.count() < count {
            check()?;
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} with {} of {count} output messages",
                    self.count()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Arrivals so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().expect("not poisoned").clone()
    }

    /// Stops reading and closes the consumer, before its broker goes away.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn decode(message: &BorrowedMessage<'_>, kind: OutputKind, at: Instant) -> Option<Arrival> {
    match kind {
        OutputKind::Verdicts => {
            let position: VerdictPosition = serde_json::from_slice(message.payload()?).ok()?;
            Some(Arrival {
                partition: position.partition?,
                offset: position.offset?,
                at,
                scored: position.score.is_some(),
            })
        }
        OutputKind::Forwarded => {
            let headers = message.headers()?;
            let value = |key: &str| {
                headers
                    .iter()
                    .find(|header| header.key == key)
                    .and_then(|header| header.value)
                    .and_then(|bytes| std::str::from_utf8(bytes).ok())
                    .map(str::to_owned)
            };
            Some(Arrival {
                partition: value(HEADER_SOURCE_PARTITION)?.parse().ok()?,
                offset: value(HEADER_SOURCE_OFFSET)?.parse().ok()?,
                at,
                scored: false,
            })
        }
    }
}

/// Milliseconds from send to arrival for each record of `log` that arrived, and the
/// number of its records that did not.
pub fn latencies_ms(log: &SendLog, arrivals: &[Arrival]) -> (Vec<f64>, usize) {
    let mut seen = vec![false; log.len()];
    let mut samples = Vec::with_capacity(log.len());
    for arrival in arrivals {
        let Some(&index) = log.positions.get(&(arrival.partition, arrival.offset)) else {
            continue;
        };
        // A redelivered verdict counts once, at its first arrival.
        if std::mem::replace(&mut seen[index], true) {
            continue;
        }
        let latency = arrival.at.saturating_duration_since(log.sent[index]);
        samples.push(latency.as_secs_f64() * 1000.0);
    }
    let missing = seen.iter().filter(|&&arrived| !arrived).count();
    (samples, missing)
}
