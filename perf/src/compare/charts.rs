//! SVG charts of a comparison (plotters' SVG backend: text is left to the
//! viewer's fonts, so nothing here needs a font file).
//!
//! - throughput: one panel per throughput scenario, median msgs/s (log
//!   scale) by payload size, one line per system;
//! - latency: request/reply percentiles (log scale), one line per system.

use std::path::Path;

use plotters::prelude::*;

use super::fleet::System;
use super::report::{Scenario, SummaryRow, size_label};

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("chart {path}: {reason}")]
pub(crate) struct ChartError {
    path: String,
    reason: String,
}

fn color(s: System) -> RGBColor {
    match s {
        System::Arqonbus => RGBColor(0xd6, 0x27, 0x28),
        System::Nats => RGBColor(0x1f, 0x77, 0xb4),
        System::NatsLatest => RGBColor(0x2c, 0xa0, 0x2c),
        System::Relay => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

/// Throughput scenarios in panel order.
const PANELS: [Scenario; 8] = [
    Scenario::PubOnly,
    Scenario::OneToOne,
    Scenario::OneToOneSameShard,
    Scenario::OneToOneTls,
    Scenario::Fanout8,
    Scenario::Fanout64,
    Scenario::NToN,
    Scenario::Queue8,
];

fn log_range(values: impl Iterator<Item = f64>) -> Option<std::ops::Range<f64>> {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    (lo <= hi).then(|| (lo / 2.0)..(hi * 2.0))
}

/// The category index a tick at `x` stands for, when it is on one of `n`.
fn tick(x: f64, n: usize) -> Option<usize> {
    let i = x.round();
    ((x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < n).then_some(i as usize)
}

/// A chart with categories along x and a log-scale y.
type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, LogCoord<f64>>,
>;

/// One line with dots per system through its medians in `columns` (the row
/// at each x, if any; systems without points are skipped), and the legend at
/// `legend`.
fn draw_lines<'b>(
    chart: &mut Chart<'b, 'b>,
    systems: &[System],
    columns: &[Option<&SummaryRow>],
    legend: SeriesLabelPosition,
) -> Result<(), String> {
    for &system in systems {
        let points: Vec<(f64, f64)> = columns
            .iter()
            .enumerate()
            .filter_map(|(i, row)| {
                let v = (*row)?.cells.get(&system)?.median;
                (v > 0.0).then_some((i as f64, v))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let c = color(system);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(system.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, c.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(legend)
        .draw()
        .map_err(|e| e.to_string())
}

/// Draws the throughput chart into `path`.
pub(crate) fn throughput(
    path: &Path,
    rows: &[SummaryRow],
    sizes: &[usize],
    systems: &[System],
    title: &str,
) -> Result<(), ChartError> {
    let err = |e: &dyn std::fmt::Display| ChartError {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let root = SVGBackend::new(path, (1600, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let panels = root.split_evenly((2, 4));
    for (area, scenario) in panels.iter().zip(PANELS) {
        let mine: Vec<&SummaryRow> = rows
            .iter()
            .filter(|r| r.scenario == scenario && r.metric == "msgs/s")
            .collect();
        let Some(y) = log_range(mine.iter().flat_map(|r| r.cells.values().map(|c| c.median)))
        else {
            continue;
        };
        let last = sizes.len().saturating_sub(1) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(scenario.label(), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.3f64..last + 0.3, y.log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_labels(sizes.len())
            .x_label_formatter(&|x| {
                tick(*x, sizes.len())
                    .map(|i| size_label(Some(sizes[i])))
                    .unwrap_or_default()
            })
            .y_desc("msgs/s (median)")
            .y_label_formatter(&|v| super::report::human(*v))
            .draw()
            .map_err(|e| err(&e))?;
        let columns: Vec<_> = sizes
            .iter()
            .map(|size| mine.iter().find(|r| r.size == Some(*size)).copied())
            .collect();
        draw_lines(
            &mut chart,
            systems,
            &columns,
            SeriesLabelPosition::LowerLeft,
        )
        .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

/// Draws the request/reply latency chart into `path`.
pub(crate) fn latency(
    path: &Path,
    rows: &[SummaryRow],
    systems: &[System],
    title: &str,
) -> Result<(), ChartError> {
    let err = |e: &dyn std::fmt::Display| ChartError {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let metrics = ["p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"];
    let mine: Vec<&SummaryRow> = rows
        .iter()
        .filter(|r| r.scenario == Scenario::ReqReply)
        .collect();
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let Some(y) = log_range(mine.iter().flat_map(|r| r.cells.values().map(|c| c.median))) else {
        return root.present().map_err(|e| err(&e));
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.3f64..(metrics.len() as f64 - 0.7), y.log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_labels(metrics.len())
        .x_label_formatter(&|x| {
            tick(*x, metrics.len())
                .map(|i| metrics[i].trim_end_matches(" µs").to_owned())
                .unwrap_or_default()
        })
        .y_desc("latency, µs (median of rounds)")
        .draw()
        .map_err(|e| err(&e))?;
    let columns: Vec<_> = metrics
        .iter()
        .map(|m| mine.iter().find(|r| r.metric == *m).copied())
        .collect();
    draw_lines(
        &mut chart,
        systems,
        &columns,
        SeriesLabelPosition::UpperLeft,
    )
    .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
