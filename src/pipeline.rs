//! The scoring loop: consume a batch → parse → window → score → produce verdicts and
//! dead letters → wait for the broker's acknowledgements → store offsets.
//!
//! Delivery is at-least-once: an input offset is stored (and later auto-committed)
//! only after the verdict or dead letter of that record and of every earlier record
//! is acknowledged. After a crash the group resumes from the last committed offset,
//! so verdicts can repeat but none is lost. Acknowledgements are awaited by a
//! separate task ([`crate::delivery`]), so the next batch is scored meanwhile.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::TopicPartitionList;
use rdkafka::{ClientContext, Message};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::alerts::{AlertTracker, Observation};
use crate::config::{Delivery, Settings};
use crate::delivery::{
    acknowledge_batch, acknowledge_in_order, AckContext, Acknowledged, Offsets, Output,
    PendingOutput, SentBatch,
};
use crate::detector::Detector;
use crate::kafka::{self, KafkaError};
use crate::model::ModelMeta;
use crate::record::{MessageMeta, RecordParser, RejectReason, SensorRecord};
use crate::reload::incompatibility;
use crate::scorer::Scorer;
use crate::telemetry::{Health, Metrics};

/// Headers of a dead-letter message; its payload and key are the original bytes.
pub const HEADER_REASON: &str = "iot-anomaly.reason";
pub const HEADER_REASON_KIND: &str = "iot-anomaly.reason-kind";
pub const HEADER_SOURCE_TOPIC: &str = "iot-anomaly.source-topic";
pub const HEADER_SOURCE_PARTITION: &str = "iot-anomaly.source-partition";
pub const HEADER_SOURCE_OFFSET: &str = "iot-anomaly.source-offset";
/// Marks the aborted record written by the exactly-once start-up check.
pub const HEADER_TRANSACTION_PROBE: &str = "iot-anomaly.transaction-probe";
/// Original size in bytes of an oversized payload, of which only a prefix was kept.
pub const HEADER_TRUNCATED_FROM: &str = "iot-anomaly.truncated-from";

/// Minimum time between two logs of repeated client errors.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Batches whose outputs may await acknowledgement at once, beyond the one being
/// scored.
const BATCHES_IN_FLIGHT: usize = 4;

/// Maximum time for one transactional call (init, send offsets, commit, abort).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for outstanding deliveries.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    // Fields are named `cause`, not `source`, because each message already shows the
    // Kafka error; a `source` would print it a second time in anyhow's error chain.
    #[error("cannot create the Kafka {client}: {cause}")]
    Client {
        client: &'static str,
        cause: KafkaError,
    },
    #[error("cannot subscribe to {topic}: {cause}")]
    Subscribe { topic: String, cause: KafkaError },
    #[error("the broker did not acknowledge a message for {topic}: {cause}; stopping without storing offsets so the batch is consumed again after restart")]
    Delivery { topic: String, cause: KafkaError },
    #[error("the broker rejected Kafka transactions ({cause}); it may not support them: set kafka.delivery = \"at_least_once\" or use a broker with transactions")]
    TransactionsUnsupported { cause: KafkaError },
    #[error("transaction failed and was aborted: {cause}; stopping so the batch is consumed again from the last committed offset")]
    Transaction { cause: KafkaError },
    #[error("the task awaiting the broker's acknowledgements stopped unexpectedly; stopping so the records are consumed again from the last committed offset")]
    AcknowledgerStopped,
    #[error("cannot serialise a verdict: {0}")]
    Serialise(#[from] serde_json::Error),
}

/// Totals of one pipeline run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub consumed: u64,
    pub verdicts: u64,
    pub anomalies: u64,
    pub dead_letters: u64,
    /// Arrival of the first record from the consumer.
    pub first_received: Option<Instant>,
    /// Broker acknowledgement of the last verdict or dead letter.
    pub last_acknowledged: Option<Instant>,
}

impl PipelineStats {
    /// Seconds from the first record received to the last output acknowledged.
    pub fn active_seconds(&self) -> Option<f64> {
        let (first, last) = (self.first_received?, self.last_acknowledged?);
        Some(last.saturating_duration_since(first).as_secs_f64())
    }
}

/// Consumer context that reports rebalances to the log and to `/readyz`.
pub struct ScoringContext {
    health: Arc<Health>,
    metrics: Metrics,
    last_error_log: Mutex<Option<Instant>>,
}

impl ClientContext for ScoringContext {
    /// Publishes consumer lag per assigned partition; librdkafka reports -1 while it
    /// does not know the lag and uses partition -1 for its internal bookkeeping.
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics.consumer_lag.reset();
        for (topic, stats) in &statistics.topics {
            for (partition, partition_stats) in &stats.partitions {
                if *partition < 0 || partition_stats.consumer_lag < 0 {
                    continue;
                }
                self.metrics
                    .consumer_lag
                    .with_label_values(&[topic.as_str(), &partition.to_string()])
                    .set(partition_stats.consumer_lag);
            }
        }
    }

    /// librdkafka reports connection problems here and keeps retrying with its own
    /// backoff (`reconnect.backoff.ms` up to `reconnect.backoff.max.ms`).
    fn error(&self, error: KafkaError, reason: &str) {
        let all_down = matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown));
        if all_down && !self.health.brokers_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, reason, "all brokers down; not ready until one responds, librdkafka keeps retrying");
            return;
        }
        // Repeats of the same failure would flood the log while a broker is away.
        let now = Instant::now();
        let mut last = self
            .last_error_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= ERROR_LOG_INTERVAL) {
            *last = Some(now);
            tracing::warn!(%error, reason, "Kafka client error; librdkafka keeps retrying");
        }
    }
}

impl ConsumerContext for ScoringContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let assigned: Vec<String> = partitions
                    .elements()
                    .iter()
                    .map(|p| format!("{}[{}]", p.topic(), p.partition()))
                    .collect();
                tracing::info!(partitions = ?assigned, "partitions assigned");
                self.health
                    .partitions_assigned
                    .store(!assigned.is_empty(), Ordering::Relaxed);
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(count = partitions.count(), "partitions revoked");
                self.health
                    .partitions_assigned
                    .store(false, Ordering::Relaxed);
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }
}

/// Everything the loop needs; built once by [`Pipeline::new`].
pub struct Pipeline {
    settings: Settings,
    parser: RecordParser,
    detector: Detector,
    alerts: AlertTracker,
    consumer: Arc<StreamConsumer<ScoringContext>>,
    producer: FutureProducer,
    metrics: Metrics,
    health: Arc<Health>,
    stats: PipelineStats,
    /// Outputs and offsets of each batch go in one transaction.
    exactly_once: bool,
    /// New checkpoints from [`crate::reload::watch`], applied between batches.
    model_updates: Option<mpsc::Receiver<Scorer>>,
    /// Batches handed to the acknowledgement task (at-least-once mode).
    in_flight: Option<mpsc::Sender<SentBatch>>,
    acknowledger: Option<JoinHandle<Result<Acknowledged, PipelineError>>>,
    /// Outputs acknowledged inline (exactly-once mode).
    acknowledged: Acknowledged,
}

/// One consumed message with what the pipeline decided for it.
struct Item {
    message: OwnedMessage,
    /// When the consumer handed the message over.
    received: Instant,
    parsed: Result<SensorRecord, RejectReason>,
}

impl Pipeline {
    pub fn new(
        settings: Settings,
        detector: Detector,
        metrics: Metrics,
        health: Arc<Health>,
    ) -> Result<Self, PipelineError> {
        let schema = detector.scorer().meta().features.clone();
        let parser = RecordParser::new(
            schema,
            settings.input.max_message_bytes,
            settings.input.unknown_fields,
        );
        let consumer: StreamConsumer<ScoringContext> = kafka::consumer_config(&settings.kafka)
            .create_with_context(ScoringContext {
                health: health.clone(),
                metrics: metrics.clone(),
                last_error_log: Mutex::new(None),
            })
            .map_err(|source| PipelineError::Client {
                client: "consumer",
                cause: source,
            })?;
        let producer =
            kafka::create_producer(&settings.kafka).map_err(|source| PipelineError::Client {
                client: "producer",
                cause: source,
            })?;
        publish_model_info(&metrics, detector.scorer().meta());
        let exactly_once = settings.kafka.delivery == Delivery::ExactlyOnce;
        if exactly_once {
            producer
                .init_transactions(TRANSACTION_TIMEOUT)
                .map_err(|source| PipelineError::TransactionsUnsupported { cause: source })?;
            probe_transactions(&producer, &settings.kafka.deadletter_topic)
                .map_err(|source| PipelineError::TransactionsUnsupported { cause: source })?;
            tracing::info!("exactly-once delivery: one Kafka transaction per batch");
        }
        health.model_loaded.store(true, Ordering::Relaxed);
        Ok(Self {
            exactly_once,
            model_updates: None,
            alerts: AlertTracker::new(&settings.alerts, settings.windows.max_devices),
            settings,
            parser,
            detector,
            consumer: Arc::new(consumer),
            producer,
            metrics,
            health,
            stats: PipelineStats::default(),
            in_flight: None,
            acknowledger: None,
            acknowledged: Acknowledged::default(),
        })
    }

    /// Receives replacement models, for example from [`crate::reload::watch`].
    pub fn with_model_updates(mut self, updates: mpsc::Receiver<Scorer>) -> Self {
        self.model_updates = Some(updates);
        self
    }

    /// Swaps in `candidate` unless it is incompatible with the running model.
    fn apply_model_update(&mut self, candidate: Scorer) {
        let running = self.detector.scorer().meta();
        if let Some(reason) = incompatibility(running, candidate.meta()) {
            self.metrics
                .model_reloads
                .with_label_values(&["rejected"])
                .inc();
            tracing::error!(
                running = %running.model_version,
                candidate = %candidate.meta().model_version,
                %reason,
                "new model rejected; keeping the running model"
            );
            return;
        }
        let schema = candidate.meta().features.clone();
        let old = self.detector.replace_scorer(candidate);
        let new = self.detector.scorer().meta();
        publish_model_info(&self.metrics, new);
        self.parser = RecordParser::new(
            schema,
            self.settings.input.max_message_bytes,
            self.settings.input.unknown_fields,
        );
        self.metrics
            .model_reloads
            .with_label_values(&["success"])
            .inc();
        tracing::info!(
            old = %old.meta().model_version,
            new = %new.model_version,
            threshold = new.threshold.value,
            "model reloaded"
        );
    }

    /// Runs until `shutdown` turns true, then finishes the batch in hand, flushes the
    /// producer and commits stored offsets.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<PipelineStats, PipelineError> {
        let topic = self.settings.kafka.input_topic.clone();
        self.consumer
            .subscribe(&[topic.as_str()])
            .map_err(|source| PipelineError::Subscribe {
                topic,
                cause: source,
            })?;
        tracing::info!(
            brokers = %self.settings.kafka.brokers,
            group = %self.settings.kafka.group_id,
            input = %self.settings.kafka.input_topic,
            output = %self.settings.kafka.output_topic,
            model = %self.detector.scorer().meta().model_version,
            "scoring pipeline started"
        );
        if !self.exactly_once {
            let (sender, receiver) = mpsc::channel(BATCHES_IN_FLIGHT);
            self.in_flight = Some(sender);
            self.acknowledger = Some(tokio::spawn(acknowledge_in_order(
                receiver,
                self.consumer.clone(),
                self.ack_context(),
            )));
        }

        let max_batch = self.settings.scoring.max_batch;
        let max_wait = Duration::from_millis(self.settings.scoring.max_wait_ms);
        let mut batch: Vec<OwnedMessage> = Vec::with_capacity(max_batch);
        let mut received: Vec<Instant> = Vec::with_capacity(max_batch);
        let mut last_consume_error: Option<Instant> = None;

        let result = loop {
            if *shutdown.borrow() {
                break Ok(());
            }
            let first = tokio::select! {
                biased;
                _ = shutdown.changed() => break Ok(()),
                error = acknowledger_failure(&mut self.acknowledger) => break Err(error),
                Some(candidate) = next_model(&mut self.model_updates) => {
                    // Between batches: nothing is in flight, so the swap is atomic.
                    self.apply_model_update(candidate);
                    continue;
                }
                message = self.consumer.recv() => message,
            };
            match first {
                Ok(message) => {
                    if self.health.brokers_down.swap(false, Ordering::Relaxed) {
                        tracing::info!("brokers reachable again; resuming");
                    }
                    batch.push(message.detach());
                    received.push(Instant::now());
                }
                Err(error) => {
                    // librdkafka retries connections itself; log at most once a second.
                    if last_consume_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        tracing::warn!(%error, "consume failed; librdkafka keeps retrying");
                        last_consume_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let deadline = tokio::time::Instant::now() + max_wait;
            while batch.len() < max_batch {
                match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                    Ok(Ok(message)) => {
                        batch.push(message.detach());
                        received.push(Instant::now());
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "consume failed inside a batch");
                        break;
                    }
                    Err(_) => break,
                }
            }
            let batch = std::mem::take(&mut batch);
            let received = std::mem::take(&mut received);
            if let Err(error) = self.process_batch(batch, received).await {
                break Err(error);
            }
        };

        let acknowledged = self.stop_acknowledger().await;
        self.finish();
        result.and(acknowledged).map(|_| self.stats)
    }

    fn ack_context(&self) -> AckContext {
        AckContext {
            metrics: self.metrics.clone(),
            health: self.health.clone(),
        }
    }

    /// Lets the acknowledgement task finish the batches in flight and adds its totals
    /// to the stats.
    async fn stop_acknowledger(&mut self) -> Result<(), PipelineError> {
        self.in_flight = None;
        let acknowledged = match self.acknowledger.take() {
            Some(task) => match task.await {
                Ok(result) => result?,
                Err(error) => {
                    tracing::error!(%error, "the acknowledgement task failed");
                    return Err(PipelineError::AcknowledgerStopped);
                }
            },
            None => self.acknowledged,
        };
        self.stats.verdicts = acknowledged.verdicts;
        self.stats.anomalies = acknowledged.anomalies;
        self.stats.last_acknowledged = acknowledged.last;
        Ok(())
    }

    /// Scores one batch and publishes its outputs; in exactly-once mode inside one
    /// transaction, otherwise followed by storing the input offsets.
    async fn process_batch(
        &mut self,
        messages: Vec<OwnedMessage>,
        received: Vec<Instant>,
    ) -> Result<(), PipelineError> {
        self.stats.first_received = self.stats.first_received.or(received.first().copied());
        if !self.exactly_once {
            let batch = self.score_and_send(messages, received).await?;
            let handed_over = match &self.in_flight {
                Some(in_flight) => in_flight.send(batch).await.is_ok(),
                None => false,
            };
            if !handed_over {
                // The acknowledgement task ended, which it does only on an error.
                return Err(acknowledger_failure(&mut self.acknowledger).await);
            }
            return Ok(());
        }

        self.producer
            .begin_transaction()
            .map_err(|source| PipelineError::Transaction { cause: source })?;
        let context = self.ack_context();
        let acknowledged = match self.score_and_send(messages, received).await {
            Ok(batch) => acknowledge_batch(batch, &context, &mut self.acknowledged).await,
            Err(error) => Err(error),
        };
        let offsets = match acknowledged {
            Ok(offsets) => offsets,
            Err(error) => {
                tokio::task::block_in_place(|| self.abort_transaction());
                return Err(error);
            }
        };
        tokio::task::block_in_place(|| match self.commit_transaction(&offsets) {
            Ok(()) => Ok(()),
            // Some brokers accept InitProducerId but not EndTxn (tansu 0.6.0 among
            // them), so lack of support can first show up here.
            Err(source)
                if source.rdkafka_error_code() == Some(RDKafkaErrorCode::UnsupportedFeature) =>
            {
                Err(PipelineError::TransactionsUnsupported { cause: source })
            }
            Err(source) => {
                self.abort_transaction();
                Err(PipelineError::Transaction { cause: source })
            }
        })
    }

    /// Parses, scores and produces one batch. Returns its outputs, still awaiting
    /// acknowledgement, and the highest input offset per partition.
    async fn score_and_send(
        &mut self,
        messages: Vec<OwnedMessage>,
        received: Vec<Instant>,
    ) -> Result<SentBatch, PipelineError> {
        let items: Vec<Item> = messages
            .into_iter()
            .zip(received)
            .map(|(message, received)| {
                let meta = MessageMeta {
                    key: message.key(),
                    timestamp_ms: message.timestamp().to_millis(),
                };
                let parsed = self
                    .parser
                    .parse(message.payload().unwrap_or_default(), meta);
                Item {
                    message,
                    received,
                    parsed,
                }
            })
            .collect();

        // Inference is CPU-bound; block_in_place keeps the other runtime threads (HTTP,
        // librdkafka callbacks) responsive while it runs.
        let now_ms = chrono::Utc::now().timestamp_millis();
        let started = Instant::now();
        let detector = &mut self.detector;
        let mut assessments = tokio::task::block_in_place(|| {
            detector.assess(
                items
                    .iter()
                    .filter_map(|item| item.parsed.as_ref().ok())
                    .map(|r| (r, now_ms)),
            )
        })
        .into_iter();
        self.metrics
            .inference_seconds
            .observe(started.elapsed().as_secs_f64());

        let mut deliveries = Vec::with_capacity(items.len());
        let mut offsets = Offsets::new();
        let mut windows_in_batch = 0u64;
        let output_topic: Arc<str> = self.settings.kafka.output_topic.as_str().into();
        let deadletter_topic: Arc<str> = self.settings.kafka.deadletter_topic.as_str().into();
        let alerts_topic: Arc<str> = self.settings.kafka.alerts_topic.as_str().into();

        for item in &items {
            let message = &item.message;
            let outcome = match &item.parsed {
                Ok(record) => match assessments
                    .next()
                    .expect("one assessment per parsed record")
                {
                    Ok(assessment) => Ok((record, assessment)),
                    Err(reason) => Err(reason),
                },
                Err(reason) => Err(reason.clone()),
            };
            match outcome {
                Ok((record, assessment)) => {
                    if assessment.score.is_some() && !assessment.carried {
                        windows_in_batch += 1;
                    }
                    let verdict = self.detector.verdict(
                        record,
                        &assessment,
                        Some(message.partition()),
                        Some(message.offset()),
                    );
                    let payload = serde_json::to_vec(&verdict)?;
                    let future = send_in_order(
                        &self.producer,
                        &self.metrics,
                        FutureRecord::to(&output_topic)
                            .key(record.device_id.as_bytes())
                            .payload(&payload),
                    )
                    .await?;
                    deliveries.push(PendingOutput {
                        delivery: future,
                        output: Output::Verdict {
                            status: assessment.status,
                            ts_ms: record.ts_ms,
                            device_id: record.device_id.clone(),
                        },
                        topic: output_topic.clone(),
                        received: item.received,
                    });
                    self.metrics
                        .records_consumed
                        .with_label_values(&["scored"])
                        .inc();

                    // A carried score was observed when its window was scored.
                    let fresh_score = assessment.score.as_ref().filter(|_| !assessment.carried);
                    let event = fresh_score.and_then(|score| {
                        self.alerts.observe(Observation {
                            device_id: &record.device_id,
                            ts_ms: record.ts_ms,
                            status: assessment.status,
                            score: score.score,
                            threshold: verdict.threshold,
                            top_feature: verdict.top_feature.as_deref(),
                            model_version: &verdict.model_version,
                        })
                    });
                    if let Some(event) = event {
                        let payload = serde_json::to_vec(&event)?;
                        let future = send_in_order(
                            &self.producer,
                            &self.metrics,
                            FutureRecord::to(&alerts_topic)
                                .key(record.device_id.as_bytes())
                                .payload(&payload),
                        )
                        .await?;
                        deliveries.push(PendingOutput {
                            delivery: future,
                            output: Output::Alert(event.event),
                            topic: alerts_topic.clone(),
                            received: item.received,
                        });
                        tracing::info!(
                            alert_id = %event.alert_id,
                            event = event.event.as_str(),
                            device_id = %event.device_id,
                            peak_score = event.peak_score,
                            top_feature = event.top_feature.as_deref().unwrap_or(""),
                            "alert episode {}",
                            event.event.as_str()
                        );
                    }
                }
                Err(reason) => {
                    let mut headers = dead_letter_headers(&reason, message);
                    let mut payload = message.payload().unwrap_or_default();
                    // An oversized payload would also be too large for the dead-letter
                    // topic, so only its first input.max_message_bytes bytes go there.
                    if let RejectReason::Oversized { bytes, max } = reason {
                        payload = &payload[..max.min(payload.len())];
                        headers = headers.insert(Header {
                            key: HEADER_TRUNCATED_FROM,
                            value: Some(bytes.to_string().as_str()),
                        });
                    }
                    let mut record = FutureRecord::to(&deadletter_topic)
                        .payload(payload)
                        .headers(headers);
                    if let Some(key) = message.key() {
                        record = record.key(key);
                    }
                    let future = send_in_order(&self.producer, &self.metrics, record).await?;
                    deliveries.push(PendingOutput {
                        delivery: future,
                        output: Output::DeadLetter,
                        topic: deadletter_topic.clone(),
                        received: item.received,
                    });
                    self.metrics
                        .records_consumed
                        .with_label_values(&["dead_lettered"])
                        .inc();
                    self.metrics
                        .dead_letters
                        .with_label_values(&[reason.kind()])
                        .inc();
                    if self.stats.dead_letters < 10 || self.stats.dead_letters.is_power_of_two() {
                        tracing::info!(
                            partition = message.partition(),
                            offset = message.offset(),
                            reason = reason.kind(),
                            detail = %reason,
                            dead_letters = self.stats.dead_letters + 1,
                            "record sent to the dead-letter topic"
                        );
                    }
                    self.stats.dead_letters += 1;
                }
            }
            self.stats.consumed += 1;
            let entry = offsets
                .entry((message.topic().to_owned(), message.partition()))
                .or_insert(message.offset());
            *entry = (*entry).max(message.offset());
        }
        self.metrics.batch_windows.observe(windows_in_batch as f64);

        self.metrics
            .alerts_open
            .set(self.alerts.open_count() as i64);
        let dropped = self.alerts.take_evicted_open();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max_devices = self.settings.windows.max_devices,
                "dropped the alert state of devices with an open episode to stay within windows.max_devices; those episodes get no closed event"
            );
        }
        self.metrics
            .devices_tracked
            .set(self.detector.device_count() as i64);
        let events = self.detector.take_window_events();
        self.metrics
            .device_evictions
            .with_label_values(&["idle"])
            .inc_by(events.evicted_idle);
        self.metrics
            .device_evictions
            .with_label_values(&["capacity"])
            .inc_by(events.evicted_capacity);
        Ok(SentBatch {
            outputs: deliveries,
            offsets,
        })
    }

    /// Sends the batch's input offsets into the open transaction and commits it.
    fn commit_transaction(&self, offsets: &Offsets) -> Result<(), KafkaError> {
        let mut positions = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets {
            // A committed offset names the next record to read.
            positions.add_partition_offset(
                topic,
                *partition,
                rdkafka::Offset::Offset(offset + 1),
            )?;
        }
        let group = self
            .consumer
            .group_metadata()
            .ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::InvalidGroupId))?;
        self.producer
            .send_offsets_to_transaction(&positions, &group, TRANSACTION_TIMEOUT)?;
        self.producer.commit_transaction(TRANSACTION_TIMEOUT)
    }

    fn abort_transaction(&self) {
        if let Err(error) = self.producer.abort_transaction(TRANSACTION_TIMEOUT) {
            tracing::error!(%error, "aborting the transaction failed");
        }
    }
}

/// Runs one aborted transaction holding an empty record for `topic`, because some
/// brokers (tansu 0.6.0) accept InitProducerId but reject the EndTxn that ends every
/// transaction. Consumers reading with `read_committed`, as exactly-once requires,
/// never see the aborted record.
fn probe_transactions(producer: &FutureProducer, topic: &str) -> Result<(), KafkaError> {
    producer.begin_transaction()?;
    let probe =
        FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&[])
            .headers(OwnedHeaders::new().insert(Header {
                key: HEADER_TRANSACTION_PROBE,
                value: Some("aborted at start-up"),
            }));
    let sent = match producer.send_result(probe) {
        // Flushing makes the record reach the broker, so the transaction really
        // involves a partition and the abort needs EndTxn.
        Ok(_delivery) => producer.flush(TRANSACTION_TIMEOUT),
        Err((error, _)) => Err(error),
    };
    let aborted = producer.abort_transaction(TRANSACTION_TIMEOUT);
    sent.and(aborted)
}

/// Waits until the acknowledgement task ends and returns its error; never resolves
/// without a task. The task ends on its own only when a delivery fails.
async fn acknowledger_failure(
    task: &mut Option<JoinHandle<Result<Acknowledged, PipelineError>>>,
) -> PipelineError {
    let Some(handle) = task.as_mut() else {
        return std::future::pending().await;
    };
    let outcome = handle.await;
    *task = None;
    match outcome {
        Ok(Err(error)) => error,
        Ok(Ok(_)) => PipelineError::AcknowledgerStopped,
        Err(error) => {
            tracing::error!(%error, "the acknowledgement task failed");
            PipelineError::AcknowledgerStopped
        }
    }
}

/// Waits for the next replacement model; never resolves without a watcher.
async fn next_model(updates: &mut Option<mpsc::Receiver<Scorer>>) -> Option<Scorer> {
    match updates {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Sets `model_info` to the loaded model's labels, dropping the previous model's.
fn publish_model_info(metrics: &Metrics, meta: &ModelMeta) {
    metrics.model_info.reset();
    let features = meta.features.names().collect::<Vec<_>>().join(",");
    let window = meta.architecture.window.to_string();
    let threshold = meta.threshold.value.to_string();
    metrics
        .model_info
        .with_label_values(&[meta.model_version.as_str(), &features, &window, &threshold])
        .set(1);
}

/// Enqueues `record`, waiting while librdkafka's queue is full, so messages enter the
/// queue in the order they are offered. A free function so the pipeline (whose model
/// tensors are not `Sync`) is not borrowed across the wait.
async fn send_in_order(
    producer: &FutureProducer,
    metrics: &Metrics,
    mut record: FutureRecord<'_, [u8], [u8]>,
) -> Result<rdkafka::producer::DeliveryFuture, PipelineError> {
    loop {
        match producer.send_result(record) {
            Ok(future) => return Ok(future),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((source, returned)) => {
                metrics.producer_errors.inc();
                return Err(PipelineError::Delivery {
                    topic: returned.topic.to_owned(),
                    cause: source,
                });
            }
        }
    }
}

impl Pipeline {
    fn finish(&self) {
        if let Err(error) = self.producer.flush(Timeout::After(FLUSH_TIMEOUT)) {
            tracing::warn!(%error, "producer flush timed out");
        }
        // In exactly-once mode every batch committed its offsets in its transaction.
        let commit = if self.exactly_once {
            Ok(())
        } else {
            self.consumer
                .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        };
        match commit {
            Ok(()) => {}
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(%error, "final offset commit failed"),
        }
        let active_s = self.stats.active_seconds().unwrap_or(0.0);
        tracing::info!(
            consumed = self.stats.consumed,
            verdicts = self.stats.verdicts,
            anomalies = self.stats.anomalies,
            dead_letters = self.stats.dead_letters,
            active_s,
            records_per_s = self.stats.consumed as f64 / active_s.max(1e-9),
            "scoring pipeline stopped"
        );
    }
}

fn dead_letter_headers(reason: &RejectReason, message: &OwnedMessage) -> OwnedHeaders {
    let detail = reason.to_string();
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: HEADER_REASON_KIND,
            value: Some(reason.kind()),
        })
        .insert(Header {
            key: HEADER_REASON,
            value: Some(detail.as_str()),
        })
        .insert(Header {
            key: HEADER_SOURCE_TOPIC,
            value: Some(message.topic()),
        })
        .insert(Header {
            key: HEADER_SOURCE_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: HEADER_SOURCE_OFFSET,
            value: Some(offset.as_str()),
        })
}
