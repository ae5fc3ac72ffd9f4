//! A real Kafka-protocol broker (tansu) and scorer replicas as child processes.
//!
//! The tansu binary comes from `IOT_ANOMALY_TANSU`, which `make test` sets from
//! `scripts/setup-tansu.sh`. Every process is killed when its handle drops, so a
//! failing test leaves nothing running.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SCORER_BIN: &str = env!("CARGO_BIN_EXE_iot-anomaly");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A tansu broker with in-memory storage on a free loopback port.
pub struct Tansu {
    child: Option<Child>,
    binary: PathBuf,
    pub port: u16,
    /// stderr of every broker process this handle started, appended.
    log: tempfile::NamedTempFile,
}

impl Tansu {
    pub fn start() -> Self {
        let binary = std::env::var_os("IOT_ANOMALY_TANSU")
            .map(PathBuf::from)
            .expect("IOT_ANOMALY_TANSU is not set: run `make test`, or export IOT_ANOMALY_TANSU=$(scripts/setup-tansu.sh)");
        assert!(
            binary.is_file(),
            "IOT_ANOMALY_TANSU={} is not a file",
            binary.display()
        );
        let mut broker = Self {
            child: None,
            binary,
            port: free_port(),
            log: tempfile::NamedTempFile::new().unwrap(),
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(self.log.reopen().unwrap())
            .stderr(self.log.reopen().unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(20), "tansu to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Returns the broker's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let output = Command::new(&self.binary)
            .args([
                "topic",
                "create",
                name,
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .args(["--partitions", &partitions.to_string()])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "tansu topic create {name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Creates the input, output, dead-letter and alerts topics with their default
    /// names.
    pub fn create_scoring_topics(&self, partitions: u32) {
        self.create_topic("sensors.raw", partitions);
        self.create_topic("sensors.scored", partitions);
        self.create_topic("sensors.deadletter", 1);
        self.create_topic("sensors.alerts", partitions);
    }

    /// Kills the broker; its in-memory topics and offsets are lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker process (SIGSTOP): connections stay open but nothing responds,
    /// as in a long pause or a network partition. Its data survives, unlike a restart
    /// of the in-memory storage, which loses every topic and offset.
    pub fn pause(&self) {
        signal(self.child.as_ref().expect("broker running").id(), "STOP");
    }

    /// Lets a paused broker run again (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.as_ref().expect("broker running").id(), "CONT");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a scorer configuration for `brokers` tuned for tansu: its fetch responses
/// wait the full `fetch.wait.max.ms`, so a short wait keeps tests fast.
pub fn scorer_config(dir: &Path, name: &str, brokers: &str, model: &Path, extra: &str) -> PathBuf {
    let config = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "scorers"
[kafka.consumer]
"fetch.wait.max.ms" = "10"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"max.poll.interval.ms" = "15000"
[kafka.producer]
"linger.ms" = "2"
[model]
dir = "{}"
[scoring]
max_wait_ms = 5
{extra}
"#,
        model.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    path
}

/// One `iot-anomaly serve` process.
pub struct Replica {
    child: Option<Child>,
    pub http_port: u16,
    log_path: PathBuf,
}

impl Replica {
    pub fn start(config: &Path, log_dir: &Path, name: &str) -> Self {
        let http_port = free_port();
        let log_path = log_dir.join(format!("{name}-{http_port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(SCORER_BIN)
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("IOT_ANOMALY__HTTP__BIND", format!("127.0.0.1:{http_port}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            http_port,
            log_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("replica running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn http(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http_port, path)
    }

    pub fn is_ready(&self) -> bool {
        self.http("/readyz")
            .is_some_and(|(status, _)| status == 200)
    }

    pub fn sigkill(&mut self) {
        signal(self.pid(), "KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and returns the exit status, waiting at most `timeout`.
    pub fn sigterm(&mut self, timeout: Duration) -> std::process::ExitStatus {
        signal(self.pid(), "TERM");
        let mut child = self.child.take().expect("replica running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "replica did not exit within {timeout:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Returns the status code and body of `GET path` on 127.0.0.1:`port`.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Value of one series in a Prometheus text exposition.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
