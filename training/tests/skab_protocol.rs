//! The SKAB benchmark protocol on small synthetic files in SKAB's format: which files
//! count, which rows are test rows, and how the aggregate is formed.

use std::fmt::Write as _;
use std::path::Path;

use iot_anomaly::config::{FeatureSpec, Settings};
use iot_anomaly::schema::FeatureSchema;
use iot_anomaly_train::benchmark::{run_skab, SKAB_TRAIN_ROWS};

const FEATURES: [&str; 2] = ["Pressure", "Volume Flow RateRMS"];

/// Writes a `;`-separated file with `rows` rows, one per second; rows in `fault`
/// are labelled anomalous and read 30 standard deviations off.
fn write_skab_file(path: &Path, rows: usize, fault: std::ops::Range<usize>, labelled: bool) {
    let mut text = String::from("datetime;Pressure;Volume Flow RateRMS");
    text.push_str(if labelled {
        ";anomaly;changepoint\n"
    } else {
        "\n"
    });
    for i in 0..rows {
        let noise = ((i * 7919) % 13) as f64 / 13.0 - 0.5;
        let shift = if fault.contains(&i) { 30.0 } else { 0.0 };
        write!(
            text,
            "2020-03-09 10:{:02}:{:02};{:.4};{:.4}",
            i / 60,
            i % 60,
            1.0 + 0.1 * noise,
            32.0 + noise + shift
        )
        .unwrap();
        if labelled {
            write!(text, ";{}.0;0.0", u8::from(fault.contains(&i))).unwrap();
        }
        text.push('\n');
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn settings() -> Settings {
    let mut settings = Settings {
        features: FEATURES
            .iter()
            .map(|name| FeatureSpec {
                name: name.to_string(),
                aliases: Vec::new(),
                min: None,
                max: None,
            })
            .collect(),
        ..Default::default()
    };
    settings.dataset.time_column = Some("datetime".into());
    settings.training.window = 10;
    settings.training.hidden_size = 4;
    settings.training.batch_size = 32;
    settings.training.max_epochs = 3;
    settings.training.threads = 1;
    settings
}

#[test]
fn skab_counts_test_rows_of_labelled_files() {
    let dir = tempfile::tempdir().unwrap();
    write_skab_file(&dir.path().join("valve1/0.csv"), 700, 500..600, true);
    write_skab_file(&dir.path().join("valve1/10.csv"), 650, 450..520, true);
    write_skab_file(&dir.path().join("other/2.csv"), 600, 420..440, true);
    // No label column: skipped, like SKAB's anomaly-free file.
    write_skab_file(
        &dir.path().join("anomaly-free/anomaly-free.csv"),
        900,
        0..0,
        false,
    );
    let settings = settings();
    let schema = FeatureSchema::new(settings.features.clone()).unwrap();

    let (report, rows) = run_skab(&settings, &schema, dir.path()).unwrap();

    let names: Vec<&str> = report.files.iter().map(|f| f.file.as_str()).collect();
    assert_eq!(names, ["other/2.csv", "valve1/0.csv", "valve1/10.csv"]);
    assert_eq!(report.files_count, 3);

    // Only rows after the training rows are scored and counted.
    let test_rows = (700 - SKAB_TRAIN_ROWS) + (650 - SKAB_TRAIN_ROWS) + (600 - SKAB_TRAIN_ROWS);
    assert_eq!(rows.len(), test_rows);
    assert!(rows.iter().all(|r| r.row >= SKAB_TRAIN_ROWS));
    let c = report.confusion;
    assert_eq!((c.tp + c.fp + c.tn + c.fn_) as usize, test_rows);
    assert_eq!(c.tp + c.fn_, 100 + 70 + 20);

    // The aggregate comes from the summed counts; FAR and MAR are percentages.
    let sum = |field: fn(&iot_anomaly::evaluation::Confusion) -> u64| -> u64 {
        report.files.iter().map(|f| field(&f.confusion)).sum()
    };
    assert_eq!(sum(|c| c.tp), c.tp);
    assert_eq!(sum(|c| c.fp), c.fp);
    let f1 = c.tp as f64 / (c.tp as f64 + (c.fp + c.fn_) as f64 / 2.0);
    assert!((report.f1 - f1).abs() < 1e-12);
    assert!((report.far - 100.0 * c.fp as f64 / (c.fp + c.tn) as f64).abs() < 1e-9);
    assert!((report.mar - 100.0 * c.fn_ as f64 / (c.fn_ + c.tp) as f64).abs() < 1e-9);

    // A 30-sigma fault in one sensor is found, and the verdicts blame that sensor.
    assert!(report.recall > 0.9, "recall {}", report.recall);
    assert!(
        report.top_feature_first > 0.9,
        "{}",
        report.top_feature_first
    );

    // Each file's one fault opens at least one alert episode, far fewer than verdicts.
    assert!(report.alerts_opened >= 3, "{} alerts", report.alerts_opened);
    assert!(report.alerts_opened * 10 < report.anomaly_verdicts);

    let json = serde_json::to_value(&report).unwrap();
    for key in ["f1", "far", "mar"] {
        assert!(json[key].as_f64().is_some(), "{key} missing");
    }
    assert_eq!(json["files"].as_array().map(Vec::len), Some(3));
}

#[test]
fn skab_without_files_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings();
    let schema = FeatureSchema::new(settings.features.clone()).unwrap();
    let error = run_skab(&settings, &schema, dir.path()).unwrap_err();
    assert!(error.to_string().contains("--data"), "{error}");
}
