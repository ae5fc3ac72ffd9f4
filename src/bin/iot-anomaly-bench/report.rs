//! Results of one run and of several, as JSON and as a printed table.

use serde::Serialize;

use crate::ceiling::Ceiling;
use crate::memory::MemoryReport;
use crate::stats::{median, Percentiles};

/// Backlog drain: records produced while the warm scorer is paused, then scored as
/// fast as it goes.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputResult {
    pub records: u64,
    /// From resuming the scorer to the arrival of the backlog's last verdict at the
    /// harness's reader.
    pub drain_s: f64,
    pub throughput_records_per_s: f64,
    /// Verdicts with a score (full windows), the ones that needed inference.
    pub scored_windows: u64,
    pub throughput_windows_per_s: f64,
    /// CPU seconds per wall second while verdicts arrived.
    pub scorer_cpu_cores: f64,
    pub broker_cpu_cores: f64,
    pub harness_cpu_cores: f64,
    pub scorer_rss_bytes: u64,
}

/// One offered rate: the scorer, then the pass-through floor, at the same rate.
#[derive(Debug, Clone, Serialize)]
pub struct RateResult {
    /// The requested rate as given on the command line (`1000`, `max`).
    pub offered: String,
    /// Records per second actually sent to the scorer and to the floor.
    pub sent_records_per_s: f64,
    pub floor_sent_records_per_s: f64,
    pub records: usize,
    /// Record received by the scorer → its verdict acknowledged by the broker.
    pub in_service_ms: Percentiles,
    /// Record produced → its verdict consumed.
    pub latency_ms: Percentiles,
    /// The forwarder's receive → acknowledgement time.
    pub floor_in_service_ms: Percentiles,
    /// Record produced → forwarded copy consumed.
    pub floor_latency_ms: Percentiles,
    pub scorer_cpu_cores: f64,
    pub floor_cpu_cores: f64,
    pub scorer_rss_bytes: u64,
    /// Records whose verdict or forwarded copy never arrived (should be 0).
    pub missing: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub run: usize,
    pub load_average_before: String,
    pub load_average_after: String,
    pub ceiling: Ceiling,
    pub throughput: ThroughputResult,
    /// `throughput_windows_per_s / ceiling_windows_per_s`.
    pub fraction_of_ceiling: f64,
    pub rates: Vec<RateResult>,
}

/// Minimum, median and maximum of one figure over the runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: impl Iterator<Item = f64> + Clone) -> Self {
        Self {
            min: values.clone().fold(f64::INFINITY, f64::min),
            median: median(values.clone()),
            max: values.fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// Medians over the runs for one offered rate.
#[derive(Debug, Clone, Serialize)]
pub struct RateSummary {
    pub offered: String,
    pub sent_records_per_s: f64,
    pub in_service_ms: Percentiles,
    pub latency_ms: Percentiles,
    pub floor_in_service_ms: Percentiles,
    pub floor_latency_ms: Percentiles,
    /// Median over runs of `latency p99 - floor latency p99`.
    pub latency_p99_above_floor_ms: f64,
    pub in_service_p99_spread_ms: Spread,
    pub latency_p99_spread_ms: Spread,
    pub floor_latency_p99_spread_ms: Spread,
    pub scorer_cpu_cores: f64,
    pub floor_cpu_cores: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub dir: String,
    pub version: String,
    pub window: i64,
    pub features: i64,
    pub hidden_size: i64,
    pub num_layers: i64,
}

/// The whole benchmark; top-level figures are medians over `runs`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub command: String,
    pub machine: Machine,
    pub model: ModelSummary,
    /// The scorer configuration the run used (brokers and topics aside), as TOML.
    pub scorer_config: String,
    pub devices: usize,
    pub partitions: u32,
    pub phase_s: f64,
    pub flops_per_window: u64,
    pub sgemm_flops_per_s: f64,
    pub ceiling_windows_per_s: f64,
    pub ceiling_model_shape_windows_per_s: f64,
    pub throughput_records_per_s: f64,
    pub throughput_windows_per_s: f64,
    pub fraction_of_ceiling: f64,
    pub throughput_spread: Spread,
    pub scorer_cpu_cores: f64,
    pub broker_cpu_cores: f64,
    pub scorer_rss_bytes: f64,
    pub rates: Vec<RateSummary>,
    pub memory: Option<MemoryReport>,
    pub runs: Vec<RunResult>,
}

impl Report {
    /// Fills the median figures from `runs`, which must not be empty and must list the
    /// same offered rates in the same order.
    pub fn summarise(head: ReportHead, runs: Vec<RunResult>, memory: Option<MemoryReport>) -> Self {
        let throughput = |f: fn(&RunResult) -> f64| median(runs.iter().map(f));
        let rates = runs[0]
            .rates
            .iter()
            .enumerate()
            .map(|(index, first)| {
                let of_rate = || runs.iter().map(move |run| &run.rates[index]);
                let percentiles = |f: fn(&RateResult) -> Percentiles| {
                    Percentiles::median_of(&of_rate().map(f).collect::<Vec<_>>())
                };
                RateSummary {
                    offered: first.offered.clone(),
                    sent_records_per_s: median(of_rate().map(|r| r.sent_records_per_s)),
                    in_service_ms: percentiles(|r| r.in_service_ms),
                    latency_ms: percentiles(|r| r.latency_ms),
                    floor_in_service_ms: percentiles(|r| r.floor_in_service_ms),
                    floor_latency_ms: percentiles(|r| r.floor_latency_ms),
                    latency_p99_above_floor_ms: median(
                        of_rate().map(|r| r.latency_ms.p99 - r.floor_latency_ms.p99),
                    ),
                    in_service_p99_spread_ms: Spread::of(of_rate().map(|r| r.in_service_ms.p99)),
                    latency_p99_spread_ms: Spread::of(of_rate().map(|r| r.latency_ms.p99)),
                    floor_latency_p99_spread_ms: Spread::of(
                        of_rate().map(|r| r.floor_latency_ms.p99),
                    ),
                    scorer_cpu_cores: median(of_rate().map(|r| r.scorer_cpu_cores)),
                    floor_cpu_cores: median(of_rate().map(|r| r.floor_cpu_cores)),
                }
            })
            .collect();
        Self {
            date: head.date,
            command: head.command,
            machine: head.machine,
            model: head.model,
            scorer_config: head.scorer_config,
            devices: head.devices,
            partitions: head.partitions,
            phase_s: head.phase_s,
            flops_per_window: runs[0].ceiling.flops_per_window,
            sgemm_flops_per_s: throughput(|r| r.ceiling.sgemm_flops_per_s),
            ceiling_windows_per_s: throughput(|r| r.ceiling.ceiling_windows_per_s),
            ceiling_model_shape_windows_per_s: throughput(|r| {
                r.ceiling.ceiling_model_shape_windows_per_s
            }),
            throughput_records_per_s: throughput(|r| r.throughput.throughput_records_per_s),
            throughput_windows_per_s: throughput(|r| r.throughput.throughput_windows_per_s),
            fraction_of_ceiling: throughput(|r| r.fraction_of_ceiling),
            throughput_spread: Spread::of(
                runs.iter().map(|r| r.throughput.throughput_records_per_s),
            ),
            scorer_cpu_cores: throughput(|r| r.throughput.scorer_cpu_cores),
            broker_cpu_cores: throughput(|r| r.throughput.broker_cpu_cores),
            scorer_rss_bytes: throughput(|r| r.throughput.scorer_rss_bytes as f64),
            rates,
            memory,
            runs,
        }
    }

    /// Formats the human-readable summary printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let runs = self.runs.len();
        out.push_str(&format!(
            "machine      {} ({} cores), {}\n",
            self.machine.cpu, self.machine.cores, self.date
        ));
        out.push_str(&format!(
            "model        {} (W={}, F={}, H={}, layers={})\n",
            self.model.version,
            self.model.window,
            self.model.features,
            self.model.hidden_size,
            self.model.num_layers
        ));
        out.push_str(&format!(
            "ceiling      {:.0} FLOP/window, sgemm {:.1} GFLOP/s (1 thread) -> {:.0} windows/s ({:.0} at the model's GEMM shape)\n",
            self.flops_per_window as f64,
            self.sgemm_flops_per_s / 1e9,
            self.ceiling_windows_per_s,
            self.ceiling_model_shape_windows_per_s
        ));
        out.push_str(&format!(
            "throughput   {:.0} records/s, {:.0} scored windows/s = {:.1} % of the ceiling (median of {runs}; records/s min {:.0}, max {:.0})\n",
            self.throughput_records_per_s,
            self.throughput_windows_per_s,
            100.0 * self.fraction_of_ceiling,
            self.throughput_spread.min,
            self.throughput_spread.max
        ));
        out.push_str(&format!(
            "             scorer {:.2} cores, broker {:.2} cores, scorer RSS {:.0} MiB\n",
            self.scorer_cpu_cores,
            self.broker_cpu_cores,
            self.scorer_rss_bytes / (1024.0 * 1024.0)
        ));
        out.push_str("\nlatency in ms, p50 / p99 / p99.9 (medians over runs)\n");
        out.push_str(&format!(
            "{:>8} {:>9} | {:>22} | {:>22} | {:>22} | {:>22} | {:>9}\n",
            "offered",
            "sent/s",
            "in-service",
            "end-to-end",
            "floor in-service",
            "floor end-to-end",
            "p99-floor"
        ));
        let cell = |p: &Percentiles| format!("{:.2} / {:.2} / {:.2}", p.p50, p.p99, p.p999);
        for rate in &self.rates {
            out.push_str(&format!(
                "{:>8} {:>9.0} | {:>22} | {:>22} | {:>22} | {:>22} | {:>9.2}\n",
                rate.offered,
                rate.sent_records_per_s,
                cell(&rate.in_service_ms),
                cell(&rate.latency_ms),
                cell(&rate.floor_in_service_ms),
                cell(&rate.floor_latency_ms),
                rate.latency_p99_above_floor_ms
            ));
        }
        if let Some(memory) = &self.memory {
            out.push_str(&format!(
                "\nmemory       {} devices: RSS {:.1} MiB -> {:.1} MiB, {:.0} bytes per device (window values {} bytes), growth after pass 1: {} bytes\n",
                memory.devices,
                memory.baseline_rss_bytes as f64 / (1024.0 * 1024.0),
                *memory.rss_after_pass_bytes.last().unwrap_or(&0) as f64 / (1024.0 * 1024.0),
                memory.bytes_per_device,
                memory.window_value_bytes,
                memory.growth_after_first_pass_bytes
            ));
        }
        out
    }
}

/// Facts about the run that do not come from measurements.
#[derive(Debug, Clone)]
pub struct ReportHead {
    pub date: String,
    pub command: String,
    pub machine: Machine,
    pub model: ModelSummary,
    pub scorer_config: String,
    pub devices: usize,
    pub partitions: u32,
    pub phase_s: f64,
}
