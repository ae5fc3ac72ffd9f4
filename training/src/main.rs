//! `iot-anomaly-train`: builds, calibrates and evaluates an LSTM autoencoder from a
//! CSV of sensor history and writes a checkpoint directory the service can load.
//! `iot-anomaly-train benchmark skab` runs the SKAB benchmark with the same code.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use iot_anomaly::config::{LogFormat, Settings};
use iot_anomaly::schema::FeatureSchema;
use iot_anomaly_train::benchmark::{run_skab, write_scores};
use iot_anomaly_train::train_checkpoint;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Train and calibrate the iot-anomaly LSTM autoencoder from a CSV of sensor history",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a public anomaly-detection benchmark with the service's scoring code.
    #[command(subcommand)]
    Benchmark(Benchmark),
}

#[derive(Debug, Subcommand)]
enum Benchmark {
    /// SKAB outlier detection: per labelled file, train on the first 400 rows and
    /// score the rest in stream order; F1, FAR and MAR over all files.
    Skab(SkabArgs),
}

#[derive(Debug, Args)]
struct TrainArgs {
    /// Configuration file with [[features]], [dataset] and [training].
    #[arg(long, default_value = "config/anoml-iot.toml")]
    config: PathBuf,
    /// Checkpoint directory to write; defaults to model.dir from the configuration.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Training CSV; defaults to dataset.path from the configuration.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Random seed; the same seed, data and thread count give the same model.
    #[arg(long)]
    seed: Option<u64>,
    /// Maximum epochs (early stopping may end training sooner).
    #[arg(long)]
    epochs: Option<usize>,
}

#[derive(Debug, Args)]
struct SkabArgs {
    /// SKAB's data directory (the one holding valve1/, valve2/ and other/).
    #[arg(long)]
    data: PathBuf,
    /// Configuration with SKAB's eight [[features]] and the [training] to use for
    /// every file.
    #[arg(long, default_value = "config/skab.toml")]
    config: PathBuf,
    /// Random seed for every file's model.
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write every test row's label, verdict, score and threshold to this CSV.
    #[arg(long)]
    scores_out: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    iot_anomaly::telemetry::init_logging(cli.log_format, "info");
    let result = match cli.command {
        None => train(cli.train),
        Some(Command::Benchmark(Benchmark::Skab(args))) => skab(args),
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn load(path: &Path) -> anyhow::Result<(Settings, FeatureSchema)> {
    let settings = Settings::load(Some(path))?;
    let schema = FeatureSchema::new(settings.features.clone())
        .with_context(|| format!("invalid [[features]] in {}", path.display()))?;
    Ok((settings, schema))
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let (mut settings, schema) = load(&args.config)?;
    if let Some(seed) = args.seed {
        settings.training.seed = seed;
    }
    if let Some(epochs) = args.epochs {
        settings.training.max_epochs = epochs;
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| settings.model.dir.clone());
    let data_path = match args.data.clone().or_else(|| settings.dataset.path.clone()) {
        Some(path) => path,
        None => bail!(
            "no training data: set dataset.path in {} or pass --data FILE",
            args.config.display()
        ),
    };

    let trained = train_checkpoint(&settings, &schema, &data_path, &out)?;
    println!("{}", trained.report.to_text());
    for check in &trained.top_features {
        let leaders: Vec<&str> = check.moved.iter().take(2).map(|m| m.0.as_str()).collect();
        println!(
            "top feature   {} – {}: {} of {} anomaly verdicts name {}, {} name {} or {}",
            check.start,
            check.end,
            check.first,
            check.verdicts,
            leaders.first().unwrap_or(&"-"),
            check.first_two,
            leaders.first().unwrap_or(&"-"),
            leaders.get(1).unwrap_or(&"-"),
        );
    }
    println!("checkpoint    {}", out.display());
    Ok(())
}

fn skab(args: SkabArgs) -> anyhow::Result<()> {
    let (mut settings, schema) = load(&args.config)?;
    if let Some(seed) = args.seed {
        settings.training.seed = seed;
    }
    eprintln!(
        "SKAB benchmark: one model per labelled file under {}, configuration {}",
        args.data.display(),
        args.config.display()
    );

    let (report, rows) = run_skab(&settings, &schema, &args.data)?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.report {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.scores_out {
        write_scores(path, &report, &schema, &rows)?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
