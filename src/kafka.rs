//! Kafka client builders with the settings the pipeline's guarantees rely on.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureProducer;

use crate::config::{Delivery, KafkaSettings};

pub use rdkafka::error::KafkaError;

fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    for (key, value) in &settings.properties {
        config.set(key, value);
    }
    config
}

/// Consumer config for the scoring group.
///
/// Offsets are stored by the pipeline only after a record's verdict or dead letter
/// is acknowledged (`enable.auto.offset.store=false`); librdkafka's auto-commit then
/// commits what was stored. A fresh group starts from the earliest offset so no
/// record produced before the scorer started is skipped.
pub fn consumer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = base_config(settings);
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        // Feeds the consumer lag metric.
        .set("statistics.interval.ms", "5000");
    if settings.delivery == Delivery::ExactlyOnce {
        // Offsets travel inside the producer's transactions instead.
        config
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
    }
    for (key, value) in &settings.consumer {
        config.set(key, value);
    }
    config
}

/// Producer config for verdicts and dead letters: idempotent, so retries neither
/// duplicate nor reorder messages within a partition.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = base_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4");
    if settings.delivery == Delivery::ExactlyOnce {
        // Unique per process: fencing of stale instances comes from the consumer group
        // metadata sent with the offsets, so ids need not survive restarts.
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let id = format!(
            "{}-{}-{started:x}",
            settings.transactional_id,
            std::process::id()
        );
        config.set("transactional.id", id);
    }
    for (key, value) in &settings.producer {
        config.set(key, value);
    }
    config
}

pub fn create_consumer(settings: &KafkaSettings) -> Result<StreamConsumer, KafkaError> {
    consumer_config(settings).create()
}

pub fn create_producer(settings: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    producer_config(settings).create()
}
