//! A fixed seed, data set and thread count give the same model, byte for byte.

use std::fmt::Write as _;
use std::path::Path;

use iot_anomaly::config::Settings;
use iot_anomaly::model::{load_checkpoint, WEIGHTS_FILE};
use iot_anomaly::schema::FeatureSchema;
use iot_anomaly_train::train_checkpoint;

/// 800 rows of two smooth signals, with a step in rows 600..650 labelled anomalous.
fn write_data(dir: &Path) -> std::path::PathBuf {
    let mut csv = String::from("ts,a,b,anomaly\n");
    for i in 0..800 {
        let t = i as f64 / 10.0;
        let step = if (600..650).contains(&i) { 5.0 } else { 0.0 };
        writeln!(
            csv,
            "{},{:.4},{:.4},{}",
            1_700_000_000 + i,
            t.sin() + step,
            t.cos(),
            u8::from(step > 0.0)
        )
        .unwrap();
    }
    let path = dir.join("data.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

fn settings(dir: &Path, data: &Path) -> Settings {
    let config = format!(
        r#"
[[features]]
name = "a"
[[features]]
name = "b"
[dataset]
path = "{}"
[training]
window = 8
hidden_size = 8
max_epochs = 4
batch_size = 32
threads = 1
seed = 5
"#,
        data.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    Settings::load(Some(&path)).unwrap()
}

#[test]
fn same_seed_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    let settings = settings(dir.path(), &data);
    let schema = FeatureSchema::new(settings.features.clone()).unwrap();

    let first = dir.path().join("first");
    let second = dir.path().join("second");
    let report = train_checkpoint(&settings, &schema, &data, &first)
        .unwrap()
        .report;
    train_checkpoint(&settings, &schema, &data, &second).unwrap();

    let a = std::fs::read(first.join(WEIGHTS_FILE)).unwrap();
    let b = std::fs::read(second.join(WEIGHTS_FILE)).unwrap();
    assert_eq!(a, b, "weights differ between two runs with the same seed");
    let meta_a = load_checkpoint(&first).unwrap().meta;
    let meta_b = load_checkpoint(&second).unwrap().meta;
    assert_eq!(meta_a.threshold, meta_b.threshold);
    assert_eq!(meta_a.scaler, meta_b.scaler);

    // The step is far outside anything seen in training, so it must be flagged.
    let metrics = report.metrics.expect("labelled data has metrics");
    assert!(metrics.recall > 0.5, "recall {}", metrics.recall);
    assert!(first.join("report.json").is_file());
}
