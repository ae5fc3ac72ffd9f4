//! Kafka client builders with the settings the pipeline's guarantees rely on.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureProducer;

use crate::config::KafkaSettings;

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
        .set("fetch.wait.max.ms", "100");
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
