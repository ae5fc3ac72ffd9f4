//! Training pipeline of `iot-anomaly-train`, one module per step: [`data`] (normal
//! windows and the split), [`train`] (the fit loop), [`calibrate`] (error scales and
//! threshold); this file runs them and evaluates the result with the service's code.

pub mod benchmark;
pub mod calibrate;
pub mod data;
pub mod plots;
pub mod train;

use std::path::Path;

use anyhow::{bail, Context};
use iot_anomaly::config::{Settings, SplitMethod, TrainingSettings};
use iot_anomaly::dataset::{load_csv, CsvOptions, LabelledSeries};
use iot_anomaly::detector::Detector;
use iot_anomaly::evaluation::{
    check_top_features, evaluate, threshold_sweep, EvaluationReport, TopFeatureCheck,
};
use iot_anomaly::model::{
    save_checkpoint, Architecture, LoadedModel, LstmAutoencoder, ModelMeta, Scaler, ThresholdInfo,
    TrainingInfo, CHECKPOINT_FORMAT,
};
use iot_anomaly::schema::FeatureSchema;
use iot_anomaly::scorer::Scorer;
use serde_json::json;
use tch::{nn, Device, Tensor};

/// Thresholds tried in the report's precision/recall sweep.
const SWEEP_POINTS: usize = 60;

/// Result of a training run; the checkpoint and `report.json` are on disk.
pub struct Trained {
    pub report: EvaluationReport,
    /// Per labelled period, whether verdicts named the sensor that moved.
    pub top_features: Vec<TopFeatureCheck>,
}

pub(crate) fn csv_options(settings: &Settings) -> CsvOptions {
    CsvOptions {
        time_column: settings.dataset.time_column.clone(),
        label_column: settings.dataset.label_column.clone(),
        device_column: settings.dataset.device_column.clone(),
        anomaly_windows: settings.dataset.anomaly_windows.clone(),
    }
}

/// Trains, calibrates and evaluates a model on `data_path` and writes the
/// checkpoint plus `report.json` into `out`.
pub fn train_checkpoint(
    settings: &Settings,
    schema: &FeatureSchema,
    data_path: &Path,
    out: &Path,
) -> anyhow::Result<Trained> {
    eprintln!("loading {}", data_path.display());
    let series = load_csv(data_path, schema, &csv_options(settings))?;
    let version = model_version(out, &series, &settings.training);
    let loaded = fit_calibrated(settings, schema, &series, version, Progress::Show)?;

    // Step 4: stream-order evaluation with the service's detector.
    let mut detector = Detector::new(Scorer::new(loaded), &settings.windows);
    let (report, outcomes) = evaluate(&mut detector, &series, settings.scoring.max_batch);
    let sweep = threshold_sweep(&outcomes, SWEEP_POINTS);
    let names: Vec<&str> = schema.names().collect();
    let top_features = check_top_features(&series, &outcomes, &names);
    let mut loaded = detector_into_model(detector);
    loaded.meta.evaluation = Some(serde_json::to_value(&report)?);

    save_checkpoint(out, &loaded.vars, &loaded.meta)?;
    let plots = plots::write_report_plots(out, &outcomes, &sweep, loaded.meta.threshold.value)?;
    let plot_names: Vec<String> = plots
        .iter()
        .filter_map(|p| p.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    let report_json = json!({
        "model_version": loaded.meta.model_version,
        "training": loaded.meta.training,
        "threshold": loaded.meta.threshold,
        "evaluation": report,
        "threshold_sweep": sweep,
        "top_feature": top_features,
        "plots": plot_names,
    });
    let report_path = out.join("report.json");
    std::fs::write(&report_path, serde_json::to_vec_pretty(&report_json)?)
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    Ok(Trained {
        report,
        top_features,
    })
}

/// Whether a training run prints its steps and a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Show,
    Hide,
}

/// Steps 1–3: normal windows of `series`, the fit, the error scales and the
/// threshold. Returns a model ready to score, with no evaluation attached.
pub fn fit_calibrated(
    settings: &Settings,
    schema: &FeatureSchema,
    series: &LabelledSeries,
    model_version: String,
    progress: Progress,
) -> anyhow::Result<LoadedModel> {
    let t = &settings.training;
    if t.threads > 0 {
        tch::set_num_threads(t.threads as i32);
    }
    tch::manual_seed(t.seed as i64);
    let say = |message: String| {
        if progress == Progress::Show {
            eprintln!("{message}");
        }
    };

    // Step 1: data.
    let features = schema.len();
    let per_window = t.window * features;
    let windows = data::normal_windows(series, t.window, features);
    let split = match t.split {
        SplitMethod::Chronological => data::split_chronologically(
            &windows,
            per_window,
            t.validation_fraction,
            t.calibration_fraction,
        ),
        SplitMethod::PerRun => data::split_per_run(
            &windows,
            per_window,
            t.validation_fraction,
            t.calibration_fraction,
        ),
    };
    say(format!(
        "{} rows ({} labelled anomalous, labels from {}); {} normal windows of {} steps: {} train, {} validation, {} calibration",
        series.records.len(),
        series.anomalous_count(),
        series.label_source,
        windows.count,
        t.window,
        split.train.count,
        split.validation.count,
        split.calibration.count
    ));
    if split.train.count < t.batch_size {
        bail!(
            "{}: only {} training windows, fewer than training.batch_size = {}; supply more normal history or lower training.window",
            series.path.display(),
            split.train.count,
            t.batch_size
        );
    }

    // Step 2: scaler and training.
    let scaler = Scaler::fit(split.train.rows(features), features);
    let arch = Architecture {
        features: features as i64,
        window: t.window as i64,
        hidden_size: t.hidden_size as i64,
        num_layers: t.num_layers as i64,
    };
    let to_tensor = |set: &data::WindowSet| {
        let mut values = set.values.clone();
        scaler.transform_in_place(&mut values);
        Tensor::from_slice(&values).view([set.count as i64, arch.window, arch.features])
    };
    let mut vars = nn::VarStore::new(Device::Cpu);
    let model = LstmAutoencoder::new(&vars.root(), arch);
    let fit = train::fit(
        &mut vars,
        &model,
        arch,
        &to_tensor(&split.train),
        &to_tensor(&split.validation),
        t,
        progress == Progress::Show,
    )?;
    say(format!(
        "trained {} epochs in {:.1} s; best validation loss {:.5} at epoch {}",
        fit.epochs_run, fit.seconds, fit.best_validation_loss, fit.best_epoch
    ));

    // Step 3: calibration, through the service's scorer.
    let meta = ModelMeta {
        format: CHECKPOINT_FORMAT.to_string(),
        model_version,
        created_at: chrono_now(),
        features: schema.clone(),
        architecture: arch,
        scaler,
        error_scale: vec![1.0; features],
        score_aggregation: t.score_aggregation,
        threshold: ThresholdInfo {
            value: 1.0,
            method: t.threshold_method,
            quantile: t.threshold_quantile,
            multiplier: t.threshold_multiplier,
            calibration_windows: 0,
            pot: None,
        },
        training: TrainingInfo {
            data_path: series.path.display().to_string(),
            data_sha256: series.sha256.clone(),
            rows: series.records.len(),
            train_windows: split.train.count,
            validation_windows: split.validation.count,
            seed: t.seed,
            epochs_run: fit.epochs_run,
            best_epoch: fit.best_epoch,
            best_validation_loss: fit.best_validation_loss,
            train_seconds: fit.seconds,
            time_column: settings.dataset.time_column.clone(),
            label_column: settings.dataset.label_column.clone(),
            device_column: settings.dataset.device_column.clone(),
            anomaly_windows: settings.dataset.anomaly_windows.clone(),
        },
        evaluation: None,
    };
    vars.freeze();
    let scorer = Scorer::new(LoadedModel { meta, model, vars });
    let mut validation = split.validation.values.clone();
    let error_scale = calibrate::error_scale(
        &scorer.score_windows(&mut validation),
        features,
        t.error_scale,
    );
    let mut loaded = scorer.into_model();
    loaded.meta.error_scale = error_scale;
    let scorer = Scorer::new(loaded);
    let mut calibration = split.calibration.values.clone();
    let calibration_scores: Vec<f64> = scorer
        .score_windows(&mut calibration)
        .into_iter()
        .map(|s| s.score)
        .collect();
    let threshold = calibrate::threshold(&calibration_scores, t)?;
    say(match &threshold.pot {
        None => format!(
            "threshold {:.5} = {} x quantile {} of {} calibration window scores",
            threshold.value,
            threshold.multiplier,
            threshold.quantile,
            threshold.calibration_windows
        ),
        Some(pot) => format!(
            "threshold {:.5}: peaks over {:.5} ({} of {} calibration window scores), shape {:.3}, scale {:.5}, risk {}",
            threshold.value,
            pot.initial_threshold,
            pot.excesses,
            threshold.calibration_windows,
            pot.shape,
            pot.scale,
            pot.risk
        ),
    });
    let mut loaded = scorer.into_model();
    loaded.meta.threshold = threshold;
    Ok(loaded)
}

fn detector_into_model(detector: Detector) -> LoadedModel {
    detector.into_scorer().into_model()
}

/// `<checkpoint dir name>-<UTC time>-<data hash prefix>-s<seed>`.
fn model_version(out: &Path, series: &LabelledSeries, t: &TrainingSettings) -> String {
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    format!("{name}-{stamp}-{}-s{}", &series.sha256[..8], t.seed)
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
