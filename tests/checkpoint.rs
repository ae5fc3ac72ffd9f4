//! Checkpoint round trip and the errors a broken checkpoint gives at start-up.

mod common;

use iot_anomaly::model::{
    load_checkpoint, CheckpointError, META_FILE, TORCHSCRIPT_FILE, WEIGHTS_FILE,
};
use iot_anomaly::scorer::Scorer;

/// Two windows of AnoML-like readings (W = 6, F = 5).
fn windows() -> Vec<f32> {
    (0..12)
        .flat_map(|i| {
            let t = i as f32;
            [
                24.0 + t * 0.1,
                60.0 - t * 0.2,
                75.0,
                628.0 + t,
                140.0 + t * 3.0,
            ]
        })
        .collect()
}

#[test]
fn save_load_gives_identical_scores() {
    let dir = tempfile::tempdir().unwrap();
    let meta = common::random_checkpoint(dir.path(), 6, 1.0, 7);

    let first = Scorer::new(load_checkpoint(dir.path()).unwrap());
    let second = Scorer::new(load_checkpoint(dir.path()).unwrap());
    let a = first.score_windows(&mut windows());
    let b = second.score_windows(&mut windows());
    assert_eq!(a.len(), 2);
    assert_eq!(a, b);
    assert!(a[0].score.is_finite());
    assert!(a[0].score > 0.0);
    assert_eq!(first.meta(), &meta);
    assert!(dir.path().join(TORCHSCRIPT_FILE).is_file());
}

#[test]
fn missing_checkpoint_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let error = load_checkpoint(dir.path()).unwrap_err();
    assert!(matches!(error, CheckpointError::Missing { .. }));
    assert!(error.to_string().contains("iot-anomaly-train"), "{error}");
}

#[test]
fn invalid_threshold_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    common::random_checkpoint(dir.path(), 6, 1.0, 7);
    let path = dir.path().join(META_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text.replacen("\"value\": 1.0", "\"value\": -1.0", 1);
    assert_ne!(text, broken);
    std::fs::write(&path, broken).unwrap();
    let error = load_checkpoint(dir.path()).unwrap_err();
    assert!(
        error.to_string().contains("threshold.value = -1"),
        "{error}"
    );
}

#[test]
fn weights_that_do_not_fit_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    common::random_checkpoint(dir.path(), 6, 1.0, 7);
    let path = dir.path().join(META_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("\"hidden_size\": 8", "\"hidden_size\": 16", 1),
    )
    .unwrap();
    let error = load_checkpoint(dir.path()).unwrap_err();
    assert!(matches!(error, CheckpointError::Weights { .. }), "{error}");
}

#[test]
fn missing_weights_are_named() {
    let dir = tempfile::tempdir().unwrap();
    common::random_checkpoint(dir.path(), 6, 1.0, 7);
    std::fs::remove_file(dir.path().join(WEIGHTS_FILE)).unwrap();
    let error = load_checkpoint(dir.path()).unwrap_err();
    assert!(error.to_string().contains(WEIGHTS_FILE), "{error}");
}
