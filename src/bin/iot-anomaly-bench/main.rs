//! `iot-anomaly-bench`: end-to-end throughput and latency of the scorer against a real
//! Kafka-protocol broker (tansu), next to a pass-through floor, plus the compute-bound
//! ceiling and resident memory with many devices. `make bench` runs it.

mod ceiling;
mod forward;
mod load;
mod memory;
mod process;
mod report;
mod run;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use iot_anomaly::config::{LogFormat, Settings};
use iot_anomaly::model::{load_checkpoint, ModelMeta, META_FILE};
use iot_anomaly::telemetry;
use iot_anomaly::workload::Workload;

use crate::report::{Machine, ModelSummary, Report, ReportHead};
use crate::run::{load_average, run_once, set_key, Offered, RunContext};

#[derive(Debug, Parser)]
#[command(about = "End-to-end benchmark of iot-anomaly against a local tansu broker")]
struct Cli {
    /// Log format of this process.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the end-to-end benchmark on fresh tansu brokers; print a table and write JSON.
    Run(Box<RunArgs>),
    /// Forward records unscored from kafka.input_topic to kafka.output_topic (the
    /// pass-through floor that `run` starts).
    Forward {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the FLOPs per window, the single-thread sgemm rate and the ceiling.
    Ceiling {
        #[arg(long, default_value = "models/anoml-iot")]
        model: PathBuf,
    },
    /// Measure resident memory with many active devices over several passes.
    Memory(MemoryArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Scorer configuration; brokers, topics and the HTTP address are set per segment.
    #[arg(long, default_value = "config/bench.toml")]
    config: PathBuf,
    /// Checkpoint directory; overrides model.dir of the configuration.
    #[arg(long)]
    model: Option<PathBuf>,
    /// tansu 0.6.0 binary (`scripts/setup-tansu.sh` prints its path).
    #[arg(long, env = "IOT_ANOMALY_TANSU")]
    tansu: PathBuf,
    /// The `iot-anomaly` binary; defaults to the one beside this binary.
    #[arg(long)]
    scorer: Option<PathBuf>,
    /// CSV whose rows the devices replay.
    #[arg(long, default_value = "data/anoml-iot.csv")]
    data: PathBuf,
    /// Records produced before the scorer starts, in the throughput segment.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    #[arg(long, default_value_t = 1_000)]
    devices: usize,
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Offered rates in records per second (`10k` = 10000); `max` offers the
    /// throughput measured earlier in the same run, `flood` as fast as the producer goes.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,max")]
    rates: Vec<String>,
    /// Seconds each offered rate is sent, to the scorer and then to the floor.
    #[arg(long, default_value_t = 10.0)]
    phase_s: f64,
    /// Repetitions; the report's top-level figures are medians over them.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Also measure resident memory with this many devices (0 skips it).
    #[arg(long, default_value_t = 0)]
    memory_devices: usize,
    /// librdkafka consumer property for every client, KEY=VALUE; repeatable.
    #[arg(long = "consumer", value_name = "KEY=VALUE")]
    consumer_properties: Vec<String>,
    /// librdkafka producer property for every client, KEY=VALUE; repeatable.
    #[arg(long = "producer", value_name = "KEY=VALUE")]
    producer_properties: Vec<String>,
    /// Overrides scoring.max_batch.
    #[arg(long)]
    max_batch: Option<usize>,
    /// Overrides scoring.max_wait_ms.
    #[arg(long)]
    max_wait_ms: Option<u64>,
    /// Overrides scoring.intra_op_threads.
    #[arg(long)]
    intra_op_threads: Option<usize>,
    /// JSON report path.
    #[arg(long, default_value = "target/bench/e2e.json")]
    out: PathBuf,
    /// Directory for broker and service logs and generated configurations.
    #[arg(long, default_value = "target/bench/work")]
    work_dir: PathBuf,
}

#[derive(Debug, Args)]
struct MemoryArgs {
    #[arg(long, default_value = "models/anoml-iot")]
    model: PathBuf,
    #[arg(long, default_value = "data/anoml-iot.csv")]
    data: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    devices: usize,
    /// Times every device fills its window again.
    #[arg(long, default_value_t = 5)]
    passes: usize,
    /// Records per inference batch.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// JSON report path; omitted, the report goes to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format.unwrap_or_default(), "warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run_benchmark(*args).await,
            Command::Forward { config } => {
                let settings = Settings::load(Some(&config))?;
                telemetry::init_logging(
                    cli.log_format.unwrap_or(settings.log.format),
                    &settings.log.level,
                );
                forward::run(settings).await
            }
            Command::Ceiling { model } => {
                let meta = read_meta(&model)?;
                let ceiling = ceiling::measure(meta.architecture);
                println!("{}", serde_json::to_string_pretty(&ceiling)?);
                Ok(())
            }
            Command::Memory(args) => memory_benchmark(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_meta(model: &Path) -> anyhow::Result<ModelMeta> {
    let path = model.join(META_FILE);
    let text = std::fs::read(&path)
        .with_context(|| format!("cannot read {}; run `make train`", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("invalid {}", path.display()))
}

fn key_value(text: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => bail!("invalid property {text:?}: use KEY=VALUE"),
    }
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found; build it with `cargo build --release` or pass --scorer",
            path.display()
        );
    }
    Ok(path)
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_owned())
            .unwrap_or_default(),
    }
}

async fn run_benchmark(args: RunArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be 1 or more");
    }
    // The scorer gets the file's keys plus these overrides; the harness's own clients
    // get the same settings, loaded back from the file written here.
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let mut config: toml::Table = text
        .parse()
        .with_context(|| format!("invalid TOML in {}", args.config.display()))?;
    let string = |value: &str| toml::Value::String(value.to_owned());
    let integer = |value: u64| toml::Value::Integer(value as i64);
    if let Some(model) = &args.model {
        set_key(
            &mut config,
            &["model", "dir"],
            string(&model.display().to_string()),
        );
    }
    for property in &args.consumer_properties {
        let (key, value) = key_value(property)?;
        set_key(&mut config, &["kafka", "consumer", &key], string(&value));
    }
    for property in &args.producer_properties {
        let (key, value) = key_value(property)?;
        set_key(&mut config, &["kafka", "producer", &key], string(&value));
    }
    if let Some(max_batch) = args.max_batch {
        set_key(
            &mut config,
            &["scoring", "max_batch"],
            integer(max_batch as u64),
        );
    }
    if let Some(max_wait_ms) = args.max_wait_ms {
        set_key(
            &mut config,
            &["scoring", "max_wait_ms"],
            integer(max_wait_ms),
        );
    }
    if let Some(threads) = args.intra_op_threads {
        set_key(
            &mut config,
            &["scoring", "intra_op_threads"],
            integer(threads as u64),
        );
    }
    set_key(&mut config, &["log", "format"], string("json"));
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("cannot create {}", args.work_dir.display()))?;
    let base = args.work_dir.join("base.toml");
    std::fs::write(&base, toml::to_string(&config)?)
        .with_context(|| format!("cannot write {}", base.display()))?;
    let settings = Settings::load(Some(&base))?;

    let meta = read_meta(&settings.model.dir)?;
    let workload = Workload::from_csv(&args.data, &meta.features, args.devices)
        .with_context(|| format!("cannot build the workload from {}", args.data.display()))?;
    let rates = args
        .rates
        .iter()
        .map(|rate| Offered::parse(rate))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let scorer_binary = match &args.scorer {
        Some(path) => path.clone(),
        None => sibling_binary("iot-anomaly")?,
    };
    let mut shown = settings.clone();
    shown.kafka = shown.kafka.with_secrets_masked();
    let head = ReportHead {
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: machine(),
        model: ModelSummary {
            dir: settings.model.dir.display().to_string(),
            version: meta.model_version.clone(),
            window: meta.architecture.window,
            features: meta.architecture.features,
            hidden_size: meta.architecture.hidden_size,
            num_layers: meta.architecture.num_layers,
        },
        scorer_config: toml::to_string(&shown)?,
        devices: args.devices,
        partitions: args.partitions,
        phase_s: args.phase_s,
    };
    let context = RunContext {
        tansu: args.tansu.clone(),
        scorer_binary,
        harness_binary: std::env::current_exe()?,
        window: meta.architecture.window as usize,
        settings,
        config,
        workload,
        partitions: args.partitions,
        records: args.records,
        rates,
        phase: Duration::from_secs_f64(args.phase_s),
        work_dir: args.work_dir.clone(),
    };

    let mut runs = Vec::with_capacity(args.runs);
    for run in 1..=args.runs {
        eprintln!(
            "run {run} of {}: load average {}",
            args.runs,
            load_average()
        );
        let result = run_once(&context, run).await?;
        eprintln!(
            "run {run}: {:.0} records/s, load average {}",
            result.throughput.throughput_records_per_s,
            load_average()
        );
        runs.push(result);
    }

    let memory = if args.memory_devices > 0 {
        Some(memory_in_child(&args, &context.settings.model.dir)?)
    } else {
        None
    };
    let report = Report::summarise(head, runs, memory);
    print!("{}", report.table());
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("report written to {}", args.out.display());
    Ok(())
}

/// Runs `memory` in a child process, so the harness's own buffers stay out of the RSS.
fn memory_in_child(args: &RunArgs, model: &Path) -> anyhow::Result<memory::MemoryReport> {
    let out = args.work_dir.join("memory.json");
    eprintln!("memory: {} devices", args.memory_devices);
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("memory")
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(&args.data)
        .args(["--devices", &args.memory_devices.to_string()])
        .arg("--out")
        .arg(&out)
        .status()
        .context("cannot start the memory measurement")?;
    if !status.success() {
        bail!("the memory measurement failed ({status})");
    }
    let text = std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))?;
    Ok(serde_json::from_slice(&text)?)
}

fn memory_benchmark(args: MemoryArgs) -> anyhow::Result<()> {
    tch::set_num_threads(1);
    let loaded = load_checkpoint(&args.model)?;
    let workload = Workload::from_csv(&args.data, &loaded.meta.features, args.devices)?;
    let report = memory::measure(loaded, &workload, args.passes, args.batch, args.devices)?;
    let json = serde_json::to_string_pretty(&report)?;
    match &args.out {
        Some(path) => std::fs::write(path, json)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{json}"),
    }
    Ok(())
}
