//! `iot-anomaly`: the scoring service and its companion commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use iot_anomaly::config::{LogFormat, Settings};
use iot_anomaly::dataset::{load_csv, CsvOptions};
mod demo;

use demo::{run_demo, DemoOptions};
use iot_anomaly::detector::Detector;
use iot_anomaly::evaluation::evaluate;
use iot_anomaly::model::{load_checkpoint, META_FILE};
use iot_anomaly::pipeline::Pipeline;
use iot_anomaly::replay::{produce_all, read_messages};
use iot_anomaly::scorer::Scorer;
use iot_anomaly::telemetry::{self, Health, Metrics};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Real-time anomaly detection for IoT sensor streams on Kafka"
)]
struct Cli {
    /// Log format; overrides log.format from the configuration.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume sensors.raw, publish a verdict per record to sensors.scored.
    Serve {
        /// Configuration file (TOML); IOT_ANOMALY__SECTION__KEY variables override it.
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
    },
    /// Train if needed, then replay AnoML-IoT through an in-process Kafka mock cluster.
    Demo {
        #[arg(long, default_value = "config/anoml-iot.toml")]
        config: PathBuf,
        /// CSV to replay; defaults to dataset.path from the configuration.
        #[arg(long)]
        data: Option<PathBuf>,
        /// JSON-lines examples replayed after the series.
        #[arg(long, default_value = "data/seed-examples.jsonl")]
        seed_examples: PathBuf,
        /// Records per second to offer; 0 replays as fast as possible.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Anomaly episodes printed in full.
        #[arg(long, default_value_t = 20)]
        show: usize,
    },
    /// Produce a CSV or JSON-lines file to a topic.
    Replay {
        /// Input file: .csv, or .jsonl/.ndjson/.json with one JSON object per line.
        #[arg(long)]
        file: PathBuf,
        /// bootstrap.servers, host:port[,host:port...]
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value = "sensors.raw")]
        topic: String,
        /// Records per second; omit to send as fast as possible.
        #[arg(long)]
        rate: Option<f64>,
        /// Device id for every record (message key; also device_id in CSV rows).
        #[arg(long)]
        device: Option<String>,
    },
    /// Validate or print the effective configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Run librdkafka's in-process mock cluster with the three topics until Ctrl-C, to
    /// try `serve` and `replay` without a Kafka install. Not a durable broker.
    MockBroker {
        /// Partitions of the input and output topics.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
    },
    /// Score a labelled CSV in stream order and print detection metrics.
    Evaluate {
        /// Checkpoint directory.
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        data: PathBuf,
        /// Column with 0/1 labels (1 = anomalous). Without it, the model's recorded
        /// anomaly windows label the rows.
        #[arg(long, default_value = "anomaly")]
        label_column: String,
        /// Column naming each row's device.
        #[arg(long)]
        device_column: Option<String>,
        /// Column with the reading time; guessed from Time/time/ts/timestamp/datetime.
        #[arg(long)]
        time_column: Option<String>,
        /// Records per inference batch.
        #[arg(long, default_value_t = 512)]
        batch: usize,
        /// Configuration whose [windows] policies and scoring.stride apply;
        /// IOT_ANOMALY__SECTION__KEY variables override it, with or without a file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Load the configuration and the model it names; exit 1 with the problem if either fails.
    Check {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
    },
    /// Print the effective configuration (defaults, file, environment) as TOML, secrets masked.
    Show {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(&config, cli.log_format).await,
        Command::Demo {
            config,
            data,
            seed_examples,
            rate,
            show,
        } => {
            telemetry::init_logging(cli.log_format.unwrap_or_default(), "warn");
            let settings = Settings::load(Some(&config))?;
            ensure_model(&config, &settings.model.dir)?;
            let data = match data.or_else(|| settings.dataset.path.clone()) {
                Some(data) => data,
                None => bail!(
                    "no data to replay: pass --data or set dataset.path in {}",
                    config.display()
                ),
            };
            let summary = run_demo(DemoOptions {
                settings,
                data,
                seed_examples: seed_examples.is_file().then_some(seed_examples),
                rate: (rate > 0.0).then_some(rate),
                max_episodes_shown: show,
            })
            .await?;
            println!("{}", summary.to_text());
            Ok(())
        }
        Command::Replay {
            file,
            brokers,
            topic,
            rate,
            device,
        } => {
            telemetry::init_logging(cli.log_format.unwrap_or_default(), "warn");
            let messages = read_messages(&file, device.as_deref())?;
            let mut kafka = iot_anomaly::config::KafkaSettings {
                brokers,
                ..Default::default()
            };
            kafka
                .producer
                .insert("enable.idempotence".into(), "true".into());
            let producer = iot_anomaly::kafka::create_producer(&kafka)?;
            eprintln!(
                "sending {} records from {} to {topic} at {}",
                messages.len(),
                file.display(),
                kafka.brokers
            );
            let started = std::time::Instant::now();
            let sent = produce_all(&producer, &topic, &messages, rate).await?;
            eprintln!(
                "sent {sent} records in {:.2} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Config { action } => match action {
            ConfigAction::Check { config } => {
                let settings = Settings::load(Some(&config))?;
                let loaded = load_checkpoint(&settings.model.dir)?;
                println!(
                    "configuration valid: {} (model {} in {}, window {}, threshold {:.5})",
                    config.display(),
                    loaded.meta.model_version,
                    settings.model.dir.display(),
                    loaded.meta.architecture.window,
                    loaded.meta.threshold.value
                );
                Ok(())
            }
            ConfigAction::Show { config } => {
                let mut settings = Settings::load(Some(&config))?;
                settings.kafka = settings.kafka.with_secrets_masked();
                print!(
                    "{}",
                    toml::to_string(&settings).context("cannot print the configuration as TOML")?
                );
                Ok(())
            }
        },
        Command::MockBroker { partitions, config } => {
            telemetry::init_logging(cli.log_format.unwrap_or_default(), "warn");
            let settings = Settings::load(Some(&config))?;
            let kafka = &settings.kafka;
            let cluster =
                rdkafka::mocking::MockCluster::new(1).context("cannot start the mock cluster")?;
            cluster.create_topic(&kafka.input_topic, partitions, 1)?;
            cluster.create_topic(&kafka.output_topic, partitions, 1)?;
            cluster.create_topic(&kafka.deadletter_topic, 1, 1)?;
            cluster.create_topic(&kafka.alerts_topic, partitions, 1)?;
            // Scripts read this line to find the port.
            println!("bootstrap.servers={}", cluster.bootstrap_servers());
            eprintln!(
                "mock cluster running with topics {}, {}, {}, {}; Ctrl-C or SIGTERM stops it",
                kafka.input_topic, kafka.output_topic, kafka.deadletter_topic, kafka.alerts_topic
            );
            wait_for_signal().await;
            Ok(())
        }
        Command::Evaluate {
            model,
            data,
            label_column,
            device_column,
            time_column,
            batch,
            config,
            json,
        } => {
            telemetry::init_logging(cli.log_format.unwrap_or_default(), "warn");
            let loaded = load_checkpoint(&model)?;
            let options = CsvOptions {
                time_column: time_column.or_else(|| loaded.meta.training.time_column.clone()),
                label_column: Some(label_column),
                device_column,
                anomaly_windows: loaded.meta.training.anomaly_windows.clone(),
            };
            let series = load_csv(&data, &loaded.meta.features, &options)?;
            let settings = Settings::load(config.as_deref())?;
            let mut detector = Detector::new(Scorer::new(loaded), &settings.windows)
                .with_stride(settings.scoring.stride);
            let (report, _) = evaluate(&mut detector, &series, batch);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }
    }
}

/// Trains a model into `dir` with the sibling `iot-anomaly-train` binary when `dir`
/// has no checkpoint yet.
fn ensure_model(config: &Path, dir: &Path) -> anyhow::Result<()> {
    if dir.join(META_FILE).is_file() {
        println!("using the model in {}", dir.display());
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let trainer = exe.with_file_name("iot-anomaly-train");
    if !trainer.is_file() {
        bail!(
            "no model in {} and no trainer at {}; build it with `cargo build --workspace` or train with `iot-anomaly-train --config {}`",
            dir.display(),
            trainer.display(),
            config.display()
        );
    }
    println!(
        "no model in {}: training one with {}",
        dir.display(),
        trainer.display()
    );
    let status = std::process::Command::new(&trainer)
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(dir)
        .status()
        .with_context(|| format!("cannot start {}", trainer.display()))?;
    if !status.success() {
        bail!("training failed ({status})");
    }
    Ok(())
}

async fn serve(config: &Path, log_format: Option<LogFormat>) -> anyhow::Result<()> {
    let settings = Settings::load(Some(config))?;
    telemetry::init_logging(
        log_format.unwrap_or(settings.log.format),
        &settings.log.level,
    );
    if settings.scoring.intra_op_threads > 0 {
        tch::set_num_threads(settings.scoring.intra_op_threads as i32);
    }
    let loaded = load_checkpoint(&settings.model.dir)?;
    tracing::info!(
        model = %loaded.meta.model_version,
        dir = %settings.model.dir.display(),
        window = loaded.meta.architecture.window,
        threshold = loaded.meta.threshold.value,
        "model loaded"
    );
    let bind: SocketAddr = settings.http.bind.parse().with_context(|| {
        format!(
            "invalid http.bind {:?}; use an address such as 0.0.0.0:9898",
            settings.http.bind
        )
    })?;

    let shutdown_timeout_s = settings.shutdown.timeout_s;
    let metrics = Metrics::with_max_device_series(settings.metrics.max_device_series);
    let health = Arc::new(Health::default());
    let detector =
        Detector::new(Scorer::new(loaded), &settings.windows).with_stride(settings.scoring.stride);
    let updates = iot_anomaly::reload::spawn_watcher(&settings.model, metrics.clone());
    let pipeline = Pipeline::new(settings, detector, metrics.clone(), health.clone())?
        .with_model_updates(updates);

    let (stop, stopped) = watch::channel(false);
    let mut http_stopped = stopped.clone();
    let http = tokio::spawn(telemetry::serve_http(bind, metrics, health, async move {
        let _ = http_stopped.wait_for(|stop| *stop).await;
    }));
    let shutdown_timeout = std::time::Duration::from_secs(shutdown_timeout_s);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            timeout_s = shutdown_timeout.as_secs(),
            "shutdown requested; finishing the batch in flight"
        );
        stop.send(true).ok();
        tokio::time::sleep(shutdown_timeout).await;
        tracing::error!(
            timeout_s = shutdown_timeout.as_secs(),
            "shutdown timed out; exiting without a final commit"
        );
        std::process::exit(1);
    });

    let result = pipeline.run(stopped).await;
    http.abort();
    result?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
