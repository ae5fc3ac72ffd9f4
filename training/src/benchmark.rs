//! SKAB (Skoltech Anomaly Benchmark) outlier-detection protocol.
//!
//! Each labelled file is one experiment: a model is trained on its first
//! [`SKAB_TRAIN_ROWS`] rows, and the remaining rows are scored in file order by the
//! service's [`Detector`]. The training rows are anomaly-free by the benchmark's
//! convention. Where a file labels some of them anomalous, windows touching those rows
//! are left out of training.
//! The training rows are streamed through the detector first, so the first test row
//! already has a full window, as it would in a service that had been running. Only
//! test rows are counted. Confusion counts are summed over all files before F1, FAR
//! and MAR are computed, which is how the SKAB leaderboard aggregates them (its
//! evaluation concatenates the per-file predictions into one series).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use iot_anomaly::alerts::{AlertEventKind, AlertTracker, Observation};
use iot_anomaly::config::Settings;
use iot_anomaly::dataset::{load_csv, LabelSource, LabelledSeries};
use iot_anomaly::detector::Detector;
use iot_anomaly::evaluation::{
    check_top_features, Confusion, Metrics, RecordOutcome, TopFeatureCheck,
};
use iot_anomaly::schema::FeatureSchema;
use iot_anomaly::scorer::Scorer;
use iot_anomaly::verdict::Status;
use serde::Serialize;

use crate::{csv_options, fit_calibrated, Progress};

/// Rows at the start of each SKAB file that train its model.
pub const SKAB_TRAIN_ROWS: usize = 400;

/// Points of the report's sweep over `score / threshold`.
const RATIO_SWEEP: [f64; 13] = [
    0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0,
];

/// Result of one SKAB file.
#[derive(Debug, Clone, Serialize)]
pub struct FileResult {
    /// Path relative to the data directory, such as `valve1/3.csv`.
    pub file: String,
    pub train_rows: usize,
    pub test_rows: usize,
    pub labelled_anomalous: usize,
    pub threshold: f64,
    pub epochs_run: usize,
    pub train_seconds: f64,
    /// Test-row metrics; `far` and `mar` in percent, as the leaderboard gives them.
    pub f1: f64,
    pub far: f64,
    pub mar: f64,
    pub confusion: Confusion,
    /// Alert episodes opened on the test rows under the configured `[alerts]`.
    pub alerts_opened: u64,
    /// Per labelled period (SKAB files have one), whether the true-positive
    /// verdicts' top feature names a sensor that moved.
    pub top_feature: Vec<TopFeatureCheck>,
}

/// Detection quality if every file's threshold were multiplied by `ratio`.
#[derive(Debug, Clone, Serialize)]
pub struct RatioPoint {
    pub ratio: f64,
    pub f1: f64,
    pub far: f64,
    pub mar: f64,
}

/// Aggregate over all files; `far` and `mar` in percent.
#[derive(Debug, Clone, Serialize)]
pub struct SkabReport {
    pub benchmark: &'static str,
    pub data: String,
    pub files_count: usize,
    pub f1: f64,
    pub far: f64,
    pub mar: f64,
    pub precision: f64,
    pub recall: f64,
    pub confusion: Confusion,
    /// Alert episodes opened over all files, against `anomaly_verdicts` verdicts.
    pub alerts_opened: u64,
    pub anomaly_verdicts: u64,
    pub seconds: f64,
    /// Share of true-positive verdicts whose top feature is the sensor that moved
    /// most, and one of the two that moved most.
    pub top_feature_first: f64,
    pub top_feature_first_two: f64,
    pub threshold_ratio_sweep: Vec<RatioPoint>,
    pub settings: serde_json::Value,
    pub files: Vec<FileResult>,
}

/// Outcome of one test row.
#[derive(Debug, Clone)]
pub struct ScoredRow {
    /// Index into [`SkabReport::files`].
    pub file: usize,
    /// Row number in the file, 0 for the first data row.
    pub row: usize,
    pub label: bool,
    pub anomaly: bool,
    /// `None` while warming up or when the row was rejected.
    pub score: Option<f64>,
    pub threshold: f64,
    /// Index of the feature with the largest error, when scored.
    pub top_feature: Option<usize>,
}

impl ScoredRow {
    fn ratio(&self) -> Option<f64> {
        self.score.map(|s| s / self.threshold)
    }
}

/// Writes `rows` as CSV (`file,row,label,anomaly,score,threshold,top_feature`), for plots and
/// for trying other decision rules on the same scores.
pub fn write_scores(
    path: &Path,
    report: &SkabReport,
    schema: &FeatureSchema,
    rows: &[ScoredRow],
) -> anyhow::Result<()> {
    let names: Vec<&str> = schema.names().collect();
    let mut out = String::from("file,row,label,anomaly,score,threshold,top_feature\n");
    for row in rows {
        let score = row.score.map(|s| s.to_string()).unwrap_or_default();
        let top = row.top_feature.map(|i| names[i]).unwrap_or_default();
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            report.files[row.file].file,
            row.row,
            u8::from(row.label),
            u8::from(row.anomaly),
            score,
            row.threshold,
            top
        ));
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs the protocol on every labelled CSV under `data_dir`. Returns the report and
/// the outcome of every test row.
pub fn run_skab(
    settings: &Settings,
    schema: &FeatureSchema,
    data_dir: &Path,
) -> anyhow::Result<(SkabReport, Vec<ScoredRow>)> {
    let started = Instant::now();
    let files = labelled_files(data_dir)?;
    if files.is_empty() {
        bail!(
            "no CSV files under {}; pass the SKAB data directory (the one with valve1/, valve2/ and other/) with --data",
            data_dir.display()
        );
    }

    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] file {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix("skab");

    let mut results = Vec::with_capacity(files.len());
    let mut rows = Vec::new();
    let mut total = Confusion::default();
    for path in &files {
        let name = path
            .strip_prefix(data_dir)
            .unwrap_or(path)
            .display()
            .to_string();
        bar.set_message(name.clone());
        if bar.is_hidden() {
            eprintln!("skab: {name}");
        }
        let (result, file_rows) = run_file(settings, schema, path, name, results.len())?;
        total.merge(&result.confusion);
        rows.extend(file_rows);
        results.push(result);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let checks = || results.iter().flat_map(|r| &r.top_feature);
    let verdicts: u64 = checks().map(|c| c.verdicts).sum();
    let share = |count: u64| {
        if verdicts == 0 {
            0.0
        } else {
            count as f64 / verdicts as f64
        }
    };
    let first = share(checks().map(|c| c.first).sum());
    let first_two = share(checks().map(|c| c.first_two).sum());
    let metrics = Metrics::from(total);
    let report = SkabReport {
        benchmark: "skab-outlier-detection",
        data: data_dir.display().to_string(),
        files_count: results.len(),
        f1: metrics.f1,
        far: metrics.far * 100.0,
        mar: metrics.mar * 100.0,
        precision: metrics.precision,
        recall: metrics.recall,
        confusion: total,
        alerts_opened: results.iter().map(|r| r.alerts_opened).sum(),
        anomaly_verdicts: total.tp + total.fp,
        seconds: started.elapsed().as_secs_f64(),
        top_feature_first: first,
        top_feature_first_two: first_two,
        threshold_ratio_sweep: ratio_sweep(&rows),
        settings: serde_json::json!({
            "training": settings.training,
            "alerts": settings.alerts,
        }),
        files: results,
    };
    Ok((report, rows))
}

/// Lists every `*.csv` below `dir` whose header has the label column, sorted by path.
/// SKAB's `anomaly-free/anomaly-free.csv` has no labels and is skipped.
fn labelled_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .with_context(|| format!("cannot read directory {}", current.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot read directory {}", current.display()))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "csv") && has_label_column(&path)? {
                found.push(path);
            }
        }
    }
    found.sort_by_key(|path| natural_key(path));
    Ok(found)
}

fn has_label_column(path: &Path) -> anyhow::Result<bool> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = iot_anomaly::dataset::csv_reader(&bytes);
    let header = reader
        .headers()
        .with_context(|| format!("{}: invalid CSV header", path.display()))?;
    Ok(header
        .iter()
        .any(|h| h == iot_anomaly::dataset::DEFAULT_LABEL_COLUMN))
}

/// Sort key that puts `valve1/2.csv` before `valve1/10.csv`.
fn natural_key(path: &Path) -> (PathBuf, u64, String) {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    (
        path.parent().map(Path::to_path_buf).unwrap_or_default(),
        stem.parse().unwrap_or(u64::MAX),
        stem.to_string(),
    )
}

fn run_file(
    settings: &Settings,
    schema: &FeatureSchema,
    path: &Path,
    name: String,
    file_index: usize,
) -> anyhow::Result<(FileResult, Vec<ScoredRow>)> {
    let series = load_csv(path, schema, &csv_options(settings))?;
    let Some(labels) = series.labels.clone() else {
        bail!("{}: no label column", path.display());
    };
    if series.records.len() <= SKAB_TRAIN_ROWS {
        bail!(
            "{}: {} rows, but the protocol trains on the first {SKAB_TRAIN_ROWS} and tests on the rest",
            path.display(),
            series.records.len()
        );
    }
    let train = LabelledSeries {
        path: series.path.clone(),
        sha256: series.sha256.clone(),
        records: series.records[..SKAB_TRAIN_ROWS].to_vec(),
        labels: Some(labels[..SKAB_TRAIN_ROWS].to_vec()),
        label_source: LabelSource::Column(iot_anomaly::dataset::DEFAULT_LABEL_COLUMN.into()),
    };
    let version = format!("skab-{}", name.replace(['/', '.'], "-"));
    let loaded = fit_calibrated(settings, schema, &train, version, Progress::Hide)
        .with_context(|| format!("training on the first {SKAB_TRAIN_ROWS} rows of {name}"))?;
    let threshold = loaded.meta.threshold.value;
    let epochs_run = loaded.meta.training.epochs_run;
    let train_seconds = loaded.meta.training.train_seconds;

    // Stream every row in file order, as the service would see it; count test rows.
    let mut detector = Detector::new(Scorer::new(loaded), &settings.windows);
    let mut confusion = Confusion::default();
    let mut rows = Vec::new();
    let mut outcomes = Vec::with_capacity(series.records.len());
    let mut alerts = AlertTracker::new(&settings.alerts, 1);
    let mut alerts_opened = 0;
    let model_version = detector.scorer().meta().model_version.clone();
    let mut index = 0;
    for chunk in series.records.chunks(settings.scoring.max_batch.max(1)) {
        let results = detector.assess(chunk.iter().map(|r| (r, r.ts_ms)));
        for (record, result) in chunk.iter().zip(results) {
            let label = labels[index];
            index += 1;
            let (status, score, top) = match result {
                Ok(assessment) => (
                    Some(assessment.status),
                    assessment.score.as_ref().map(|s| s.score),
                    assessment.score.as_ref().map(|s| s.top_feature()),
                ),
                Err(_) => (None, None, None),
            };
            outcomes.push(RecordOutcome {
                ts_ms: record.ts_ms,
                status,
                score,
                top_feature: top,
                label: Some(label),
            });
            if index <= SKAB_TRAIN_ROWS {
                continue;
            }
            let anomalous = status == Some(Status::Anomaly);
            confusion.add(anomalous, label);
            if let (Some(status), Some(score)) = (status, score) {
                let event = alerts.observe(Observation {
                    device_id: "skab",
                    ts_ms: record.ts_ms,
                    status,
                    score,
                    threshold,
                    top_feature: None,
                    model_version: &model_version,
                });
                if event.is_some_and(|e| e.event == AlertEventKind::Opened) {
                    alerts_opened += 1;
                }
            }
            rows.push(ScoredRow {
                file: file_index,
                row: index - 1,
                label,
                anomaly: anomalous,
                score,
                threshold,
                top_feature: top,
            });
        }
    }

    let metrics = Metrics::from(confusion);
    let names: Vec<&str> = schema.names().collect();
    let top_feature = check_top_features(&series, &outcomes, &names);
    let result = FileResult {
        file: name,
        train_rows: SKAB_TRAIN_ROWS,
        test_rows: series.records.len() - SKAB_TRAIN_ROWS,
        labelled_anomalous: labels[SKAB_TRAIN_ROWS..].iter().filter(|&&l| l).count(),
        threshold,
        epochs_run,
        train_seconds,
        f1: metrics.f1,
        far: metrics.far * 100.0,
        mar: metrics.mar * 100.0,
        confusion,
        alerts_opened,
        top_feature,
    };
    Ok((result, rows))
}

fn ratio_sweep(rows: &[ScoredRow]) -> Vec<RatioPoint> {
    RATIO_SWEEP
        .iter()
        .map(|&ratio| {
            let mut confusion = Confusion::default();
            for row in rows {
                confusion.add(row.ratio().is_some_and(|r| r > ratio), row.label);
            }
            let metrics = Metrics::from(confusion);
            RatioPoint {
                ratio,
                f1: metrics.f1,
                far: metrics.far * 100.0,
                mar: metrics.mar * 100.0,
            }
        })
        .collect()
}

impl SkabReport {
    /// Table of per-file results and the aggregate, one line per file.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<16} {:>6} {:>6} {:>7} {:>7} {:>7} {:>10}  top feature\n",
            "file", "test", "anom", "F1", "FAR %", "MAR %", "threshold"
        ));
        for file in &self.files {
            let verdicts: u64 = file.top_feature.iter().map(|c| c.verdicts).sum();
            let first_two: u64 = file.top_feature.iter().map(|c| c.first_two).sum();
            let leaders = file
                .top_feature
                .first()
                .map(|c| {
                    c.moved
                        .iter()
                        .take(2)
                        .map(|(name, _)| name.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                })
                .unwrap_or_default();
            let agreement = if verdicts == 0 {
                "-".to_string()
            } else {
                format!(
                    "{:.0} % = {leaders}",
                    100.0 * first_two as f64 / verdicts as f64
                )
            };
            out.push_str(&format!(
                "{:<16} {:>6} {:>6} {:>7.3} {:>7.2} {:>7.2} {:>10.4}  {}\n",
                file.file,
                file.test_rows,
                file.labelled_anomalous,
                file.f1,
                file.far,
                file.mar,
                file.threshold,
                agreement
            ));
        }
        out.push_str(&format!(
            "\nSKAB outlier detection, {} files: F1 {:.3}  FAR {:.2} %  MAR {:.2} %  (precision {:.3}, recall {:.3}; {:.0} s)\n",
            self.files_count, self.f1, self.far, self.mar, self.precision, self.recall, self.seconds
        ));
        out.push_str(&format!(
            "alert episodes ({} of the last {} verdicts open, {} normal close): {} opened for {} anomaly verdicts\n",
            self.settings["alerts"]["open_after"],
            self.settings["alerts"]["of_last"],
            self.settings["alerts"]["close_after"],
            self.alerts_opened,
            self.anomaly_verdicts
        ));
        out.push_str(&format!(
            "top feature of true-positive verdicts: the sensor that moved most in {:.1} %, one of the two that moved most in {:.1} %\n",
            100.0 * self.top_feature_first,
            100.0 * self.top_feature_first_two
        ));
        out
    }
}
