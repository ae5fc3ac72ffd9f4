//! Configuration loading: the shipped files, environment overrides and rejected input.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use iot_anomaly::config::{ConfigError, Settings};

/// Environment variables are process-wide; tests that set them take this lock.
static ENV_LOCK: Mutex<()> = Mutex::new(());

fn write_config(content: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(content.as_bytes()).unwrap();
    file
}

#[test]
fn default_file_matches_builtin_defaults() {
    let _guard = ENV_LOCK.lock().unwrap();
    let loaded = Settings::load(Some(Path::new("config/default.toml"))).unwrap();
    assert_eq!(loaded, Settings::default());
}

#[test]
fn anoml_iot_file_loads() {
    let _guard = ENV_LOCK.lock().unwrap();
    let settings = Settings::load(Some(Path::new("config/anoml-iot.toml"))).unwrap();
    assert_eq!(settings.features.len(), 5);
    assert_eq!(settings.features[2].aliases[0], "qualidade_do_ar");
    assert_eq!(settings.dataset.anomaly_windows.len(), 3);
}

#[test]
fn unknown_key_is_rejected_with_its_name() {
    let _guard = ENV_LOCK.lock().unwrap();
    let file = write_config("[kafka]\nbrokerz = \"x:1\"\n");
    let error = Settings::load(Some(file.path())).unwrap_err();
    assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
    assert!(error.to_string().contains("brokerz"), "{error}");
}

#[test]
fn invalid_value_names_key_and_fix() {
    let _guard = ENV_LOCK.lock().unwrap();
    let file = write_config("[scoring]\nmax_batch = 0\n");
    let error = Settings::load(Some(file.path())).unwrap_err();
    assert!(error.to_string().contains("scoring.max_batch"), "{error}");
    assert!(error.to_string().contains("use 1 or more"), "{error}");
}

#[test]
fn environment_overrides_file() {
    let _guard = ENV_LOCK.lock().unwrap();
    let file = write_config("[kafka]\nbrokers = \"file:9092\"\n[scoring]\nmax_batch = 7\n");
    // SAFETY: ENV_LOCK serialises every test of this binary that touches the environment.
    unsafe {
        std::env::set_var("IOT_ANOMALY__KAFKA__BROKERS", "env:9092");
        std::env::set_var("IOT_ANOMALY__SCORING__MAX_WAIT_MS", "42");
    }
    let loaded = Settings::load(Some(file.path()));
    unsafe {
        std::env::remove_var("IOT_ANOMALY__KAFKA__BROKERS");
        std::env::remove_var("IOT_ANOMALY__SCORING__MAX_WAIT_MS");
    }
    let settings = loaded.unwrap();
    assert_eq!(settings.kafka.brokers, "env:9092");
    assert_eq!(settings.scoring.max_wait_ms, 42);
    assert_eq!(settings.scoring.max_batch, 7);
}

#[test]
fn librdkafka_properties_keep_dotted_keys() {
    let _guard = ENV_LOCK.lock().unwrap();
    let file = write_config("[kafka.consumer]\n\"fetch.wait.max.ms\" = \"10\"\n");
    let settings = Settings::load(Some(file.path())).unwrap();
    assert_eq!(
        settings
            .kafka
            .consumer
            .get("fetch.wait.max.ms")
            .map(String::as_str),
        Some("10")
    );
}

#[test]
fn missing_file_is_named() {
    let _guard = ENV_LOCK.lock().unwrap();
    let error = Settings::load(Some(Path::new("config/nope.toml"))).unwrap_err();
    assert!(error.to_string().contains("config/nope.toml"), "{error}");
}

#[test]
fn secrets_are_masked_in_debug_output() {
    let _guard = ENV_LOCK.lock().unwrap();
    let file = write_config(
        "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"ssl.key.password\" = \"pem-pass\"\n\"security.protocol\" = \"SASL_SSL\"\n",
    );
    let settings = Settings::load(Some(file.path())).unwrap();
    let shown = format!("{settings:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("pem-pass"), "{shown}");
    assert!(shown.contains("SASL_SSL"), "{shown}");
    let masked = settings.kafka.with_secrets_masked();
    assert_eq!(masked.properties["sasl.password"], "***");
    assert_eq!(masked.properties["security.protocol"], "SASL_SSL");
    // The real value still reaches librdkafka.
    assert_eq!(settings.kafka.properties["sasl.password"], "hunter2");
}

#[test]
fn score_aggregation_combines_errors() {
    use iot_anomaly::config::ScoreAggregation;
    let errors = [1.0, 4.0, 1.0];
    assert_eq!(ScoreAggregation::Mean.combine(&errors), 2.0);
    assert_eq!(ScoreAggregation::Max.combine(&errors), 4.0);
}
