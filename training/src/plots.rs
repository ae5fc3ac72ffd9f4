//! PNG plots of a training report, written next to `report.json`:
//!
//! - `score_timeline.png`: every record's score over time, the threshold, and the
//!   labelled anomalous periods shaded;
//! - `score_histogram.png`: score distributions of records labelled normal and
//!   anomalous, with the threshold;
//! - `precision_recall.png`: precision, recall and F1 against the threshold.
//!
//! Scores span orders of magnitude, so every score axis is logarithmic. Text is drawn
//! with the embedded DejaVu Sans font, so no system font is needed.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Context};
use iot_anomaly::evaluation::{RecordOutcome, SweepPoint};
use plotters::prelude::*;
use plotters::style::FontStyle;

const SIZE: (u32, u32) = (1200, 500);
const NORMAL: RGBColor = RGBColor(31, 119, 180);
const ANOMALY: RGBColor = RGBColor(214, 39, 40);
const SHADE: RGBColor = RGBColor(255, 200, 200);
const THRESHOLD: RGBColor = RGBColor(40, 40, 40);
/// Bins of the score histogram, evenly spaced in log10(score).
const HISTOGRAM_BINS: usize = 60;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        // The bytes are a valid TrueType font compiled into the dejavu crate.
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| ())
            .expect("DejaVu Sans is a valid font");
    });
}

/// Writes the three plots into `dir`; returns their paths.
pub fn write_report_plots(
    dir: &Path,
    outcomes: &[RecordOutcome],
    sweep: &[SweepPoint],
    threshold: f64,
) -> anyhow::Result<Vec<PathBuf>> {
    register_font();
    let scored: Vec<(f64, f64, Option<bool>)> = outcomes
        .iter()
        .filter_map(|o| o.score.map(|s| (o.ts_ms as f64 / 1000.0, s, o.label)))
        .filter(|(_, s, _)| *s > 0.0 && s.is_finite())
        .collect();
    if scored.is_empty() {
        return Ok(Vec::new());
    }

    let paths = vec![
        dir.join("score_timeline.png"),
        dir.join("score_histogram.png"),
        dir.join("precision_recall.png"),
    ];
    timeline(&paths[0], outcomes, &scored, threshold)
        .with_context(|| format!("cannot draw {}", paths[0].display()))?;
    histogram(&paths[1], &scored, threshold)
        .with_context(|| format!("cannot draw {}", paths[1].display()))?;
    precision_recall(&paths[2], sweep, threshold)
        .with_context(|| format!("cannot draw {}", paths[2].display()))?;
    Ok(paths)
}

/// Range of the positive values in `values` widened by a small margin, for a log axis.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (low, high) = values
        .filter(|v| *v > 0.0 && v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if low > high {
        return 0.1..10.0;
    }
    low / 1.5..high * 1.5
}

fn draw_error<E: std::error::Error + Send + Sync>(error: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("{error}")
}

fn timeline(
    path: &Path,
    outcomes: &[RecordOutcome],
    scored: &[(f64, f64, Option<bool>)],
    threshold: f64,
) -> anyhow::Result<()> {
    let start = scored[0].0;
    let hours = |t: f64| (t - start) / 3600.0;
    let end = hours(scored[scored.len() - 1].0).max(1e-3);
    let y_range = log_range(scored.iter().map(|s| s.1).chain(std::iter::once(threshold)));

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Window score over time", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end, y_range.clone().log_scale())
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("hours since the first scored record")
        .y_desc("score (log scale)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(draw_error)?;

    // Shade each run of records labelled anomalous.
    let mut run_start: Option<f64> = None;
    let mut shades = Vec::new();
    for outcome in outcomes {
        let t = hours(outcome.ts_ms as f64 / 1000.0);
        match (outcome.label == Some(true), run_start) {
            (true, None) => run_start = Some(t),
            (false, Some(s)) => {
                shades.push((s, t));
                run_start = None;
            }
            _ => {}
        }
    }
    if let (Some(s), Some(last)) = (run_start, outcomes.last()) {
        shades.push((s, hours(last.ts_ms as f64 / 1000.0)));
    }
    chart
        .draw_series(shades.iter().map(|&(a, b)| {
            Rectangle::new(
                [(a, y_range.start), (b, y_range.end)],
                SHADE.mix(0.6).filled(),
            )
        }))
        .map_err(draw_error)?
        .label("labelled anomalous")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], SHADE.filled()));

    chart
        .draw_series(LineSeries::new(
            scored.iter().map(|&(t, s, _)| (hours(t), s)),
            NORMAL.stroke_width(1),
        ))
        .map_err(draw_error)?
        .label("score")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], NORMAL));
    chart
        .draw_series(LineSeries::new(
            [(0.0, threshold), (end, threshold)],
            THRESHOLD.stroke_width(2),
        ))
        .map_err(draw_error)?
        .label(format!("threshold {threshold:.3}"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], THRESHOLD));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(draw_error)?;
    root.present().map_err(draw_error)?;
    Ok(())
}

fn histogram(
    path: &Path,
    scored: &[(f64, f64, Option<bool>)],
    threshold: f64,
) -> anyhow::Result<()> {
    let range = log_range(scored.iter().map(|s| s.1));
    let (low, high) = (range.start.log10(), range.end.log10());
    let width = (high - low) / HISTOGRAM_BINS as f64;
    let mut normal = vec![0u64; HISTOGRAM_BINS];
    let mut anomalous = vec![0u64; HISTOGRAM_BINS];
    for &(_, score, label) in scored {
        let bin = (((score.log10() - low) / width) as usize).min(HISTOGRAM_BINS - 1);
        match label {
            Some(true) => anomalous[bin] += 1,
            _ => normal[bin] += 1,
        }
    }
    // Shares of each class, so a rare class stays visible.
    let share = |counts: &[u64]| -> Vec<f64> {
        let total = counts.iter().sum::<u64>().max(1) as f64;
        counts.iter().map(|&c| c as f64 / total).collect()
    };
    let (normal, anomalous) = (share(&normal), share(&anomalous));
    let top = normal
        .iter()
        .chain(&anomalous)
        .copied()
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.1;

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Score distribution by label (share of each class per bin)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(range.clone().log_scale(), 0.0..top)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("score (log scale)")
        .y_desc("share of records")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(draw_error)?;

    let bar = |bin: usize| {
        (
            10f64.powf(low + bin as f64 * width),
            10f64.powf(low + (bin + 1) as f64 * width),
        )
    };
    for (shares, color, name) in [
        (&normal, NORMAL, "labelled normal"),
        (&anomalous, ANOMALY, "labelled anomalous"),
    ] {
        chart
            .draw_series(shares.iter().enumerate().map(|(bin, &value)| {
                let (a, b) = bar(bin);
                Rectangle::new([(a, 0.0), (b, value)], color.mix(0.5).filled())
            }))
            .map_err(draw_error)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    chart
        .draw_series(LineSeries::new(
            [(threshold, 0.0), (threshold, top)],
            THRESHOLD.stroke_width(2),
        ))
        .map_err(draw_error)?
        .label(format!("threshold {threshold:.3}"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], THRESHOLD));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(draw_error)?;
    root.present().map_err(draw_error)?;
    Ok(())
}

fn precision_recall(path: &Path, sweep: &[SweepPoint], threshold: f64) -> anyhow::Result<()> {
    let range = log_range(
        sweep
            .iter()
            .map(|p| p.threshold)
            .chain(std::iter::once(threshold)),
    );
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Precision and recall against the threshold",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(range.log_scale(), 0.0..1.05)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("threshold (log scale)")
        .y_desc("fraction")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(draw_error)?;

    let green = RGBColor(44, 160, 44);
    for (name, color, value) in [
        (
            "precision",
            NORMAL,
            (|p: &SweepPoint| p.metrics.precision) as fn(&SweepPoint) -> f64,
        ),
        ("recall", ANOMALY, |p: &SweepPoint| p.metrics.recall),
        ("F1", green, |p: &SweepPoint| p.metrics.f1),
    ] {
        chart
            .draw_series(LineSeries::new(
                sweep.iter().map(|p| (p.threshold, value(p))),
                color.stroke_width(2),
            ))
            .map_err(draw_error)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color));
    }
    chart
        .draw_series(LineSeries::new(
            [(threshold, 0.0), (threshold, 1.05)],
            THRESHOLD.stroke_width(1),
        ))
        .map_err(draw_error)?
        .label(format!("model threshold {threshold:.3}"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], THRESHOLD));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(draw_error)?;
    root.present().map_err(draw_error)?;
    Ok(())
}
