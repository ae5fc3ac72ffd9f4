//! The `iot-anomaly` binary as a user runs it: `serve` against the `mock-broker`
//! command, `replay`, the HTTP endpoints, SIGTERM, and start-up errors.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::tansu::{free_port, http_get, metric_value, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_iot-anomaly");

/// Kills the child on drop so a failing test leaves no process behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_mock_broker() -> (Process, String) {
    let mut child = Command::new(BIN)
        .args(["mock-broker", "--partitions", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let brokers = line
        .trim()
        .strip_prefix("bootstrap.servers=")
        .expect("bootstrap line")
        .to_owned();
    (Process(child), brokers)
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn serve_scores_replay_and_stops_on_sigterm() {
    let model = tempfile::tempdir().unwrap();
    common::random_checkpoint(model.path(), 4, 1.0, 21);
    let (_broker, brokers) = start_mock_broker();
    let http_port = free_port();
    let log_file = tempfile::NamedTempFile::new().unwrap();

    let serve = Command::new(BIN)
        .args(["serve", "--config", "config/default.toml"])
        .env("IOT_ANOMALY__KAFKA__BROKERS", &brokers)
        .env("IOT_ANOMALY__MODEL__DIR", model.path())
        .env("IOT_ANOMALY__HTTP__BIND", format!("127.0.0.1:{http_port}"))
        .stdout(Stdio::null())
        // A file, not a pipe: an undrained pipe would block the service once full.
        .stderr(log_file.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut serve = Process(serve);

    wait_until(Duration::from_secs(15), "/healthz", || {
        http_get(http_port, "/healthz").is_some_and(|(status, _)| status == 200)
    });

    let replay = Command::new(BIN)
        .args([
            "replay",
            "--file",
            "data/seed-examples.jsonl",
            "--brokers",
            &brokers,
            // One key keeps the five records on one partition, in order; without it
            // they spread over partitions and may arrive late for their device.
            "--device",
            "seed",
        ])
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );

    wait_until(Duration::from_secs(60), "/readyz", || {
        http_get(http_port, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    let mut metrics = String::new();
    wait_until(Duration::from_secs(60), "five verdicts in /metrics", || {
        metrics = http_get(http_port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        let warming = metric_value(
            &metrics,
            "iot_anomaly_verdicts_total{status=\"warming_up\"}",
        )
        .unwrap_or(0.0);
        let normal =
            metric_value(&metrics, "iot_anomaly_verdicts_total{status=\"normal\"}").unwrap_or(0.0);
        let anomaly =
            metric_value(&metrics, "iot_anomaly_verdicts_total{status=\"anomaly\"}").unwrap_or(0.0);
        warming + normal + anomaly >= 5.0
    });
    assert_eq!(
        metric_value(
            &metrics,
            "iot_anomaly_verdicts_total{status=\"warming_up\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "iot_anomaly_records_consumed_total{outcome=\"scored\"}"
        ),
        Some(5.0)
    );
    assert!(metrics.contains("iot_anomaly_model_info{"), "{metrics}");

    terminate(&serve.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = serve.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(log_file.path()).unwrap();
    assert!(status.success(), "serve exited with {status}: {log}");
    assert!(log.contains("scoring pipeline stopped"), "{log}");
}

fn run(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().unwrap()
}

#[test]
fn serve_without_model_names_the_fix() {
    let empty = tempfile::tempdir().unwrap();
    let output = run(&["serve"], &[("IOT_ANOMALY__MODEL__DIR", empty.path())]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("model.json not found"), "{stderr}");
    assert!(stderr.contains("iot-anomaly-train"), "{stderr}");
}

#[test]
fn serve_rejects_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[scoring]\nmax_batchh = 3\n").unwrap();
    let output = run(&["serve", "--config", config.to_str().unwrap()], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_batchh"), "{stderr}");
}

#[test]
fn evaluate_json_has_the_metrics() {
    let model = tempfile::tempdir().unwrap();
    common::random_checkpoint(model.path(), 10, 1.0, 4);
    let output = run(
        &[
            "evaluate",
            "--model",
            model.path().to_str().unwrap(),
            "--data",
            common::ANOML_CSV,
            "--json",
        ],
        &[],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for key in ["precision", "recall", "f1", "far", "mar"] {
        let value = report[key].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&value), "{key} = {value}");
    }
    assert_eq!(report["records"], 6558);
    assert_eq!(report["verdicts"]["warming_up"], 9);
    assert_eq!(report["labelled_anomalous"], 1777);
}

#[test]
fn config_show_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("secret.toml");
    std::fs::write(
        &config,
        "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"sasl.username\" = \"scorer\"\n",
    )
    .unwrap();
    let output = run(
        &["config", "show", "--config", config.to_str().unwrap()],
        &[],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("\"sasl.password\" = \"***\""), "{shown}");
    assert!(shown.contains("\"sasl.username\" = \"scorer\""), "{shown}");
    // The printed configuration is itself a valid configuration file.
    let reloaded = dir.path().join("shown.toml");
    std::fs::write(&reloaded, shown.as_bytes()).unwrap();
    let again = run(
        &["config", "show", "--config", reloaded.to_str().unwrap()],
        &[],
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn config_check_loads_the_model() {
    let model = tempfile::tempdir().unwrap();
    common::random_checkpoint(model.path(), 4, 1.0, 30);
    let good = run(
        &["config", "check"],
        &[("IOT_ANOMALY__MODEL__DIR", model.path())],
    );
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("random-30"));

    let empty = tempfile::tempdir().unwrap();
    let bad = run(
        &["config", "check"],
        &[("IOT_ANOMALY__MODEL__DIR", empty.path())],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("model.json not found"));
}
