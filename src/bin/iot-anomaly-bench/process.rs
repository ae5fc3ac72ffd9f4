//! Child processes of a benchmark run: the tansu broker, the scorer (`iot-anomaly
//! serve`) and the pass-through forwarder, each killed when its handle drops.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        // USER_HZ is 100 on every Linux architecture this runs on.
        .unwrap_or(100.0)
}

/// User plus system CPU seconds of process `pid` and its threads so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) may contain spaces, so fields are counted after its ')'.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/<pid>/stat format")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / clock_ticks_per_second())
}

/// Resident set size of process `pid` in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let kilobytes = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse::<u64>().ok())
        .context("VmRSS missing from /proc/<pid>/status")?;
    Ok(kilobytes * 1024)
}

/// Returns the status code and body of `GET path` on 127.0.0.1:`port`.
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("malformed HTTP response")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A child process killed on drop, with its stderr in a log file.
pub struct Child {
    name: String,
    child: Option<std::process::Child>,
    log_path: PathBuf,
}

impl Child {
    fn spawn(name: &str, mut command: Command, log_path: PathBuf) -> anyhow::Result<Self> {
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Fails with the log's tail when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited early ({status}); last log lines:\n{}",
                    self.name,
                    tail(&self.log(), 20)
                );
            }
        }
        Ok(())
    }

    /// Sends signal `name` (`STOP`, `CONT`, ...) with `kill`.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -{name} {} failed", self.pid());
        }
        Ok(())
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.name);
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", child.id());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A tansu broker with in-memory storage on a free loopback port.
pub struct Broker {
    process: Child,
    binary: PathBuf,
    pub port: u16,
}

impl Broker {
    pub fn start(binary: &Path, log_dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(binary);
        command
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn");
        let mut process = Child::spawn("tansu", command, log_dir.join("tansu.log"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            process.check_running()?;
            if Instant::now() > deadline {
                bail!("tansu did not listen on 127.0.0.1:{port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            process,
            binary: binary.to_path_buf(),
            port,
        })
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn create_topic(&self, name: &str, partitions: u32) -> anyhow::Result<()> {
        let output = Command::new(&self.binary)
            .args(["topic", "create", name])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string()])
            .output()
            .context("cannot run tansu topic create")?;
        if !output.status.success() {
            bail!(
                "tansu topic create {name} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

/// A service process (`serve` or `forward`) with its HTTP port.
pub struct Service {
    pub process: Child,
    pub http_port: u16,
}

impl Service {
    /// Starts `binary args... --config config` with its HTTP endpoints on a free port.
    pub fn start(
        name: &str,
        binary: &Path,
        args: &[&str],
        config: &Path,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let http_port = free_port()?;
        let mut command = Command::new(binary);
        command
            .args(["--log-format", "json"])
            .args(args)
            .arg("--config")
            .arg(config)
            .env("IOT_ANOMALY__HTTP__BIND", format!("127.0.0.1:{http_port}"))
            .env("RUST_LOG", "info");
        let process = Child::spawn(name, command, log_dir.join(format!("{name}.log")))?;
        Ok(Self { process, http_port })
    }

    /// Waits until `/readyz` returns 200 (model loaded, partitions assigned).
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.process.check_running()?;
            if let Ok((200, _)) = http_get(self.http_port, "/readyz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not ready within {timeout:?}; last log lines:\n{}",
                    tail(&self.process.log(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = http_get(self.http_port, "/metrics")?;
        if status != 200 {
            bail!("GET /metrics returned {status}");
        }
        Ok(body)
    }
}
