//! One end-to-end run: a throughput segment, then one segment per offered rate, each
//! on a fresh tansu broker.
//!
//! tansu 0.6.0's in-memory store scans a partition's whole history on every fetch. A
//! fresh broker per segment therefore keeps earlier segments from slowing later ones,
//! and the floor is warmed up with as many records as the scorer, so that both read
//! topics of the same length.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use iot_anomaly::config::Settings;
use iot_anomaly::kafka;
use iot_anomaly::workload::Workload;
use rdkafka::producer::FutureProducer;

use crate::ceiling;
use crate::load::{latencies_ms, produce, OutputKind, Plan, Reader};
use crate::process::{cpu_seconds, rss_bytes, Broker, Service};
use crate::report::{RateResult, RunResult, ThroughputResult};
use crate::stats::{Histogram, Percentiles};

const RAW: &str = "sensors.raw";
const SCORED: &str = "sensors.scored";
const DEAD_LETTERS: &str = "sensors.deadletter";
const ALERTS: &str = "sensors.alerts";
const FLOOR_RAW: &str = "bench.floor.raw";
const FLOOR_OUT: &str = "bench.floor.out";
const PROCESSING_HISTOGRAM: &str = "iot_anomaly_processing_seconds";
/// Time a service may take to load, join its group and get partitions.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra time after sending for the last outputs to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// An offered rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Offered {
    /// Records per second.
    Rate(f64),
    /// The throughput the same run measured: the scorer at saturation.
    Max,
    /// As fast as the producer goes, which builds a backlog when the producer is faster.
    Flood,
}

impl Offered {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        match text {
            "max" => return Ok(Self::Max),
            "flood" => return Ok(Self::Flood),
            _ => {}
        }
        let (number, scale) = match text.strip_suffix('k') {
            Some(number) => (number, 1000.0),
            None => (text, 1.0),
        };
        let rate: f64 = number
            .parse()
            .with_context(|| format!("invalid rate {text:?}: use a number, 10k, max or flood"))?;
        if !(rate > 0.0 && rate.is_finite()) {
            bail!("invalid rate {text:?}: it must be positive");
        }
        Ok(Self::Rate(rate * scale))
    }

    fn label(&self) -> String {
        match self {
            Self::Rate(rate) => format!("{rate:.0}"),
            Self::Max => "max".into(),
            Self::Flood => "flood".into(),
        }
    }

    /// Returns the sending plan. `max_rate` is the throughput measured earlier in the run.
    fn plan(&self, duration: Duration, max_rate: f64) -> Plan {
        match *self {
            Self::Rate(rate) => Plan::Rate { rate, duration },
            Self::Max => Plan::Rate {
                rate: max_rate,
                duration,
            },
            Self::Flood => Plan::Flood { duration },
        }
    }
}

/// Everything a run needs; shared by its segments.
pub struct RunContext {
    pub tansu: PathBuf,
    pub scorer_binary: PathBuf,
    pub harness_binary: PathBuf,
    /// Scorer settings except brokers and topics, which each segment sets; the
    /// harness's own clients use them too.
    pub settings: Settings,
    /// The configuration file's keys plus the command line's overrides. Segments write
    /// it with their brokers and topics; keys at their defaults stay out, so scorers
    /// built before a key existed (`--scorer` for a before/after comparison) accept it.
    pub config: toml::Table,
    pub workload: Workload,
    pub window: usize,
    pub partitions: u32,
    pub records: u64,
    pub rates: Vec<Offered>,
    pub phase: Duration,
    pub work_dir: PathBuf,
}

/// CPU use of one process between two instants, in cores.
struct CpuMeter {
    pid: u32,
    cpu: f64,
    wall: Instant,
}

impl CpuMeter {
    fn start(pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            pid,
            cpu: cpu_seconds(pid)?,
            wall: Instant::now(),
        })
    }

    fn cores(&self) -> anyhow::Result<f64> {
        let cpu = cpu_seconds(self.pid)? - self.cpu;
        Ok(cpu / self.wall.elapsed().as_secs_f64().max(1e-9))
    }
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Sets `value` at the dotted `path` of `table`, creating tables on the way.
pub fn set_key(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    let (last, parents) = path.split_last().expect("a key path is not empty");
    let mut current = table;
    for parent in parents {
        let entry = current
            .entry(parent.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = entry.as_table_mut().expect("made a table above");
    }
    current.insert(last.to_string(), value);
}

fn write_config(table: &toml::Table, path: &Path) -> anyhow::Result<()> {
    let text = toml::to_string(table).context("cannot write the configuration as TOML")?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// A fresh broker with the topics of one segment and the settings pointing at it.
struct Segment {
    broker: Broker,
    scorer: Settings,
    floor: Settings,
    dir: PathBuf,
}

impl Segment {
    fn start(context: &RunContext, name: &str, with_floor: bool) -> anyhow::Result<Self> {
        let dir = context.work_dir.join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let broker = Broker::start(&context.tansu, &dir)?;
        broker.create_topic(RAW, context.partitions)?;
        broker.create_topic(SCORED, context.partitions)?;
        broker.create_topic(DEAD_LETTERS, 1)?;
        broker.create_topic(ALERTS, context.partitions)?;
        if with_floor {
            broker.create_topic(FLOOR_RAW, context.partitions)?;
            broker.create_topic(FLOOR_OUT, context.partitions)?;
        }

        let mut scorer = context.settings.clone();
        scorer.kafka.brokers = broker.bootstrap();
        scorer.kafka.group_id = "bench-scorer".into();
        scorer.kafka.input_topic = RAW.into();
        scorer.kafka.output_topic = SCORED.into();
        scorer.kafka.deadletter_topic = DEAD_LETTERS.into();
        scorer.kafka.alerts_topic = ALERTS.into();
        let mut floor = scorer.clone();
        floor.kafka.group_id = "bench-floor".into();
        floor.kafka.input_topic = FLOOR_RAW.into();
        floor.kafka.output_topic = FLOOR_OUT.into();

        let text = |value: &str| toml::Value::String(value.to_owned());
        let mut scorer_file = context.config.clone();
        for (key, value) in [
            ("brokers", scorer.kafka.brokers.as_str()),
            ("group_id", "bench-scorer"),
            ("input_topic", RAW),
            ("output_topic", SCORED),
            ("deadletter_topic", DEAD_LETTERS),
            ("alerts_topic", ALERTS),
        ] {
            set_key(&mut scorer_file, &["kafka", key], text(value));
        }
        set_key(
            &mut scorer_file,
            &["model", "reload_interval_s"],
            toml::Value::Integer(0),
        );
        let mut floor_file = scorer_file.clone();
        for (key, value) in [
            ("group_id", "bench-floor"),
            ("input_topic", FLOOR_RAW),
            ("output_topic", FLOOR_OUT),
        ] {
            set_key(&mut floor_file, &["kafka", key], text(value));
        }
        write_config(&scorer_file, &dir.join("scorer.toml"))?;
        write_config(&floor_file, &dir.join("floor.toml"))?;
        Ok(Self {
            broker,
            scorer,
            floor,
            dir,
        })
    }

    fn start_scorer(&self, context: &RunContext) -> anyhow::Result<Service> {
        Service::start(
            "scorer",
            &context.scorer_binary,
            &["serve"],
            &self.dir.join("scorer.toml"),
            &self.dir,
        )
    }

    fn start_floor(&self, context: &RunContext) -> anyhow::Result<Service> {
        Service::start(
            "floor",
            &context.harness_binary,
            &["forward"],
            &self.dir.join("floor.toml"),
            &self.dir,
        )
    }

    /// Creates a producer with the scorer's client settings.
    fn producer(&self) -> anyhow::Result<FutureProducer> {
        kafka::create_producer(&self.scorer.kafka).context("cannot create the load producer")
    }
}

/// Runs the throughput segment and every offered rate once.
pub async fn run_once(context: &RunContext, run: usize) -> anyhow::Result<RunResult> {
    let load_average_before = load_average();
    let arch_window = context.window;
    eprintln!("run {run}: measuring the sgemm rate");
    let ceiling = ceiling::measure(architecture_of(context)?);

    eprintln!("run {run}: throughput, {} records backlog", context.records);
    let throughput = throughput_segment(context, run).await?;
    let mut rates = Vec::with_capacity(context.rates.len());
    for offered in &context.rates {
        eprintln!("run {run}: offered {}", offered.label());
        let max_rate = throughput.throughput_records_per_s;
        rates.push(rate_segment(context, run, *offered, max_rate, arch_window).await?);
    }
    Ok(RunResult {
        run,
        load_average_before,
        load_average_after: load_average(),
        fraction_of_ceiling: throughput.throughput_windows_per_s / ceiling.ceiling_windows_per_s,
        ceiling,
        throughput,
        rates,
    })
}

fn architecture_of(context: &RunContext) -> anyhow::Result<iot_anomaly::model::Architecture> {
    let meta_path = context
        .settings
        .model
        .dir
        .join(iot_anomaly::model::META_FILE);
    let text = std::fs::read(&meta_path)
        .with_context(|| format!("cannot read {}; run `make train`", meta_path.display()))?;
    let meta: iot_anomaly::model::ModelMeta = serde_json::from_slice(&text)
        .with_context(|| format!("invalid {}", meta_path.display()))?;
    Ok(meta.architecture)
}

/// Warms the scorer up (every device's window full, connections open), pauses it
/// with SIGSTOP while the backlog is produced, resumes it and times the backlog's
/// verdicts from the resume to the last arrival.
async fn throughput_segment(context: &RunContext, run: usize) -> anyhow::Result<ThroughputResult> {
    let segment = Segment::start(context, &format!("run{run}-throughput"), false)?;
    let mut scorer = segment.start_scorer(context)?;
    scorer.wait_ready(READY_TIMEOUT)?;
    let producer = segment.producer()?;
    let reader = Reader::start(
        &segment.scorer.kafka,
        SCORED,
        context.partitions,
        OutputKind::Verdicts,
    )?;
    let warm_up = (context.workload.devices() * context.window) as u64;
    produce(
        &producer,
        RAW,
        &context.workload,
        0,
        Plan::Burst { count: warm_up },
    )
    .await?;
    reader
        .wait_for(warm_up as usize, DRAIN_TIMEOUT, || {
            scorer.process.check_running()
        })
        .await?;

    scorer.process.signal("STOP")?;
    let backlog = produce(
        &producer,
        RAW,
        &context.workload,
        warm_up,
        Plan::Burst {
            count: context.records,
        },
    )
    .await;
    // Resume before looking at the result, so a failed produce leaves no stopped process.
    let resumed = Instant::now();
    scorer.process.signal("CONT")?;
    let backlog = backlog?;
    let scorer_cpu = CpuMeter::start(scorer.process.pid())?;
    let broker_cpu = CpuMeter::start(segment.broker.pid())?;
    let harness_cpu = CpuMeter::start(std::process::id())?;
    reader
        .wait_for(warm_up as usize + backlog.len(), DRAIN_TIMEOUT, || {
            scorer.process.check_running()
        })
        .await?;
    let scorer_cpu_cores = scorer_cpu.cores()?;
    let broker_cpu_cores = broker_cpu.cores()?;
    let harness_cpu_cores = harness_cpu.cores()?;
    let scorer_rss_bytes = rss_bytes(scorer.process.pid())?;

    let arrivals = reader.arrivals();
    let of_backlog = || {
        arrivals
            .iter()
            .filter(|a| backlog.positions.contains_key(&(a.partition, a.offset)))
    };
    let last = of_backlog()
        .map(|a| a.at)
        .max()
        .context("no verdict of the backlog arrived")?;
    let scored_windows = of_backlog().filter(|a| a.scored).count() as u64;
    let drain_s = last.duration_since(resumed).as_secs_f64();

    let status = scorer.process.terminate(Duration::from_secs(60))?;
    if !status.success() {
        bail!("the scorer exited with {status} after SIGTERM");
    }
    reader.stop().await;
    drop(producer);
    Ok(ThroughputResult {
        records: backlog.len() as u64,
        drain_s,
        throughput_records_per_s: backlog.len() as f64 / drain_s,
        scored_windows,
        throughput_windows_per_s: scored_windows as f64 / drain_s,
        scorer_cpu_cores,
        broker_cpu_cores,
        harness_cpu_cores,
        scorer_rss_bytes,
    })
}

/// Measures the scorer and then the floor at one offered rate, both warmed up first.
async fn rate_segment(
    context: &RunContext,
    run: usize,
    offered: Offered,
    max_rate: f64,
    window: usize,
) -> anyhow::Result<RateResult> {
    let segment = Segment::start(context, &format!("run{run}-rate-{}", offered.label()), true)?;
    let mut scorer = segment.start_scorer(context)?;
    let mut floor = segment.start_floor(context)?;
    scorer.wait_ready(READY_TIMEOUT)?;
    floor.wait_ready(READY_TIMEOUT)?;
    let producer = segment.producer()?;
    let verdicts = Reader::start(
        &segment.scorer.kafka,
        SCORED,
        context.partitions,
        OutputKind::Verdicts,
    )?;
    let forwarded = Reader::start(
        &segment.floor.kafka,
        FLOOR_OUT,
        context.partitions,
        OutputKind::Forwarded,
    )?;

    // Fill every device's window, so the phase scores full windows from its start.
    let warm_up = (context.workload.devices() * window) as u64;
    for (topic, reader, service) in [
        (RAW, &verdicts, &mut scorer),
        (FLOOR_RAW, &forwarded, &mut floor),
    ] {
        produce(
            &producer,
            topic,
            &context.workload,
            0,
            Plan::Burst { count: warm_up },
        )
        .await?;
        reader
            .wait_for(warm_up as usize, DRAIN_TIMEOUT, || {
                service.process.check_running()
            })
            .await?;
    }

    let plan = offered.plan(context.phase, max_rate);
    let scorer_phase = phase(
        &producer,
        RAW,
        context,
        warm_up,
        plan,
        &verdicts,
        &mut scorer,
    )
    .await?;
    let scorer_rss_bytes = rss_bytes(scorer.process.pid())?;
    // The scorer stays up but idle, as the floor did during the scorer's phase.
    let floor_phase = phase(
        &producer, FLOOR_RAW, context, warm_up, plan, &forwarded, &mut floor,
    )
    .await?;

    verdicts.stop().await;
    forwarded.stop().await;
    drop(producer);
    drop(scorer);
    drop(floor);
    Ok(RateResult {
        offered: offered.label(),
        sent_records_per_s: scorer_phase.sent_records_per_s,
        floor_sent_records_per_s: floor_phase.sent_records_per_s,
        records: scorer_phase.records,
        in_service_ms: scorer_phase.in_service_ms,
        latency_ms: scorer_phase.latency_ms,
        floor_in_service_ms: floor_phase.in_service_ms,
        floor_latency_ms: floor_phase.latency_ms,
        scorer_cpu_cores: scorer_phase.cpu_cores,
        floor_cpu_cores: floor_phase.cpu_cores,
        scorer_rss_bytes,
        missing: scorer_phase.missing + floor_phase.missing,
    })
}

struct PhaseResult {
    records: usize,
    sent_records_per_s: f64,
    in_service_ms: Percentiles,
    latency_ms: Percentiles,
    cpu_cores: f64,
    missing: usize,
}

/// Offers `plan` to `topic` after `already_sent` records and measures the service that
/// reads it: its own histogram for in-service time, the reader for end-to-end time.
async fn phase(
    producer: &FutureProducer,
    topic: &str,
    context: &RunContext,
    already_sent: u64,
    plan: Plan,
    reader: &Reader,
    service: &mut Service,
) -> anyhow::Result<PhaseResult> {
    let before = Histogram::parse(&service.metrics()?, PROCESSING_HISTOGRAM);
    let cpu = CpuMeter::start(service.process.pid())?;
    let arrived_before = reader.count();
    let log = produce(producer, topic, &context.workload, already_sent, plan).await?;
    reader
        .wait_for(arrived_before + log.len(), DRAIN_TIMEOUT, || {
            service.process.check_running()
        })
        .await?;
    let cpu_cores = cpu.cores()?;
    let after = Histogram::parse(&service.metrics()?, PROCESSING_HISTOGRAM);

    let (mut samples, missing) = latencies_ms(&log, &reader.arrivals());
    Ok(PhaseResult {
        records: log.len(),
        sent_records_per_s: log.offered_rate(),
        in_service_ms: Percentiles::of_histogram(&after.since(&before)),
        latency_ms: Percentiles::of_samples(&mut samples),
        cpu_cores,
        missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_rates_parse() {
        assert_eq!(Offered::parse("max").unwrap(), Offered::Max);
        assert_eq!(Offered::parse("flood").unwrap(), Offered::Flood);
        assert_eq!(Offered::parse("10k").unwrap(), Offered::Rate(10_000.0));
        assert_eq!(Offered::parse(" 1500 ").unwrap(), Offered::Rate(1_500.0));
        assert!(Offered::parse("-1").is_err());
        assert!(Offered::parse("fast").is_err());
    }
}
