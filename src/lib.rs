//! iot-anomaly: real-time anomaly detection for IoT sensor streams on Kafka.
//!
//! Layers, each using only the ones listed after it:
//!
//! - orchestration: [`pipeline`] (consume → window → score → produce → store offsets),
//!   [`replay`] (CSV or JSON lines → sensor messages), [`reload`] (model hot reload),
//!   [`evaluation`] (stream-order scoring of a labelled CSV and its metrics),
//!   [`workload`] (synthetic traffic and stand-in models for benchmarks);
//! - domain: [`record`] (parse and validate sensor JSON), [`detector`] (per-device
//!   windows plus batched scoring), [`scorer`] (batch → tensor → errors → verdicts),
//!   [`kafka`] (client builders), [`dataset`] (CSV history and labels);
//! - foundations: [`config`], [`schema`], [`window`], [`model`], [`telemetry`].

pub mod alerts;
pub mod config;
pub mod dataset;
mod delivery;
pub mod detector;
pub mod evaluation;
pub mod kafka;
pub mod model;
pub mod pipeline;
pub mod record;
pub mod reload;
pub mod replay;
pub mod schema;
pub mod scorer;
pub mod telemetry;
pub mod verdict;
pub mod window;
pub mod workload;
