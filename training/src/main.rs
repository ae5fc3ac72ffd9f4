//! `iot-anomaly-train`: builds, calibrates and evaluates an LSTM autoencoder from a
//! CSV of sensor history and writes a checkpoint directory the service can load.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use iot_anomaly::config::{LogFormat, Settings};
use iot_anomaly::schema::FeatureSchema;
use iot_anomaly_train::train_checkpoint;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Train and calibrate the iot-anomaly LSTM autoencoder from a CSV of sensor history"
)]
struct Args {
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
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() {
    let args = Args::parse();
    iot_anomaly::telemetry::init_logging(args.log_format, "info");
    if let Err(error) = run(args) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut settings = Settings::load(Some(&args.config))?;
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
    let schema = FeatureSchema::new(settings.features.clone())
        .with_context(|| format!("invalid [[features]] in {}", args.config.display()))?;

    let trained = train_checkpoint(&settings, &schema, &data_path, &out)?;
    println!("{}", trained.report.to_text());
    println!("checkpoint    {}", out.display());
    Ok(())
}
