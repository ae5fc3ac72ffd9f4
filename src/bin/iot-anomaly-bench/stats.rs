//! Percentiles of latency samples and of Prometheus histograms, and medians over runs.

use serde::Serialize;

/// p50, p99 and p99.9 in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples_ms`; all zero when there is none.
    pub fn of_samples(samples_ms: &mut [f64]) -> Self {
        if samples_ms.is_empty() {
            return Self::default();
        }
        samples_ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = (q * samples_ms.len() as f64).ceil() as usize;
            samples_ms[rank.clamp(1, samples_ms.len()) - 1]
        };
        Self {
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
        }
    }

    /// Percentiles of `histogram`, interpolated linearly inside buckets as
    /// Prometheus's `histogram_quantile` does, in milliseconds.
    pub fn of_histogram(histogram: &Histogram) -> Self {
        Self {
            p50: histogram.quantile(0.5) * 1000.0,
            p99: histogram.quantile(0.99) * 1000.0,
            p999: histogram.quantile(0.999) * 1000.0,
        }
    }

    /// Median of each percentile over `runs`.
    pub fn median_of(runs: &[Percentiles]) -> Self {
        Self {
            p50: median(runs.iter().map(|p| p.p50)),
            p99: median(runs.iter().map(|p| p.p99)),
            p999: median(runs.iter().map(|p| p.p999)),
        }
    }
}

/// Median of `values` (mean of the middle two for an even count); 0 when empty.
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// Cumulative bucket counts of one Prometheus histogram, `+Inf` last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// `(upper bound in seconds, cumulative count)`, ascending.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// Reads the `{name}_bucket` series from a Prometheus text exposition.
    pub fn parse(exposition: &str, name: &str) -> Self {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, u64)> = exposition
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(&prefix)?;
                let (bound, rest) = rest.split_once("\"}")?;
                let bound = if bound == "+Inf" {
                    f64::INFINITY
                } else {
                    bound.parse().ok()?
                };
                let count = rest.trim().parse::<f64>().ok()? as u64;
                Some((bound, count))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self { buckets }
    }

    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |b| b.1)
    }

    /// Observations made between `earlier` and `self`, two snapshots of one series.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(bound, count)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|b| b.0 == bound)
                    .map_or(0, |b| b.1);
                (bound, count.saturating_sub(before))
            })
            .collect();
        Histogram { buckets }
    }

    /// Returns the `q` quantile in seconds. A quantile in the `+Inf` bucket comes out
    /// as the largest finite bound, an underestimate.
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = q * total as f64;
        let mut lower_bound = 0.0;
        let mut lower_count = 0u64;
        for &(bound, count) in &self.buckets {
            if count as f64 >= rank {
                if bound.is_infinite() {
                    return lower_bound;
                }
                let in_bucket = (count - lower_count) as f64;
                if in_bucket == 0.0 {
                    return bound;
                }
                let fraction = (rank - lower_count as f64) / in_bucket;
                return lower_bound + (bound - lower_bound) * fraction;
            }
            lower_bound = bound;
            lower_count = count;
        }
        lower_bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<f64> = (1..=1000).map(f64::from).collect();
        let p = Percentiles::of_samples(&mut samples);
        assert_eq!(p.p50, 500.0);
        assert_eq!(p.p99, 990.0);
        assert_eq!(p.p999, 999.0);
    }

    #[test]
    fn histogram_quantile_interpolates() {
        let text = "x_bucket{le=\"0.001\"} 0\nx_bucket{le=\"0.002\"} 100\nx_bucket{le=\"+Inf\"} 100\nx_sum 0.15\nx_count 100\n";
        let histogram = Histogram::parse(text, "x");
        assert_eq!(histogram.count(), 100);
        assert!((histogram.quantile(0.5) - 0.0015).abs() < 1e-12);
        assert!((histogram.quantile(0.99) - 0.00199).abs() < 1e-12);
    }

    #[test]
    fn histogram_difference() {
        let before = Histogram {
            buckets: vec![(0.001, 5), (f64::INFINITY, 10)],
        };
        let after = Histogram {
            buckets: vec![(0.001, 7), (f64::INFINITY, 20)],
        };
        let delta = after.since(&before);
        assert_eq!(delta.buckets, vec![(0.001, 2), (f64::INFINITY, 10)]);
        // Eight of ten observations lie beyond the last finite bound.
        assert_eq!(delta.quantile(0.9), 0.001);
    }

    #[test]
    fn median_even_and_odd() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }
}
