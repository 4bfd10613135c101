//! `--chart FILE`: the run drawn second by second as an SVG with `plotters` — p50 and p99
//! latency above, the achieved send rate (and answers and sales) below.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use thiserror::Error;

use super::timeline::SecondPoint;

/// Why the chart could not be written.
#[derive(Debug, Error)]
pub enum ChartError {
    #[error("cannot draw the chart: {0}")]
    Draw(String),
    #[error("cannot write the chart to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 680;
const P50: RGBColor = RGBColor(47, 111, 223);
const P99: RGBColor = RGBColor(214, 69, 69);
const SENT: RGBColor = RGBColor(31, 157, 85);
const ANSWERED: RGBColor = RGBColor(201, 138, 0);

/// One line of a panel: its legend and its values per second.
struct Series {
    name: &'static str,
    color: RGBColor,
    values: Vec<(f64, f64)>,
}

/// Draws `points` (one per second of the run) as an SVG document titled after `title`.
pub fn render_svg(points: &[SecondPoint], title: &str) -> Result<String, ChartError> {
    let mut svg = String::new();
    draw(&mut svg, points, title).map_err(|e| ChartError::Draw(e.to_string()))?;
    Ok(svg)
}

/// Writes the chart of `points` to `path`.
pub fn write_svg(path: &Path, points: &[SecondPoint], title: &str) -> Result<(), ChartError> {
    let svg = render_svg(points, title)?;
    std::fs::write(path, svg).map_err(|source| ChartError::Write {
        path: path.to_owned(),
        source,
    })
}

fn series(
    name: &'static str,
    color: RGBColor,
    points: &[SecondPoint],
    value: fn(&SecondPoint) -> f64,
) -> Series {
    Series {
        name,
        color,
        values: points.iter().map(|p| (p.second as f64, value(p))).collect(),
    }
}

fn draw(
    svg: &mut String,
    points: &[SecondPoint],
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (top, bottom) = root.split_vertically((HEIGHT - 30) / 2);
    let seconds = points.len().max(2) as f64 - 1.0;
    panel(
        &top,
        "latency per second, by answer time",
        "latency (ms)",
        seconds,
        &[
            series("p99", P99, points, |p| p.p99_ms),
            series("p50", P50, points, |p| p.p50_ms),
        ],
    )?;
    panel(
        &bottom,
        "rate per second",
        "per second",
        seconds,
        &[
            series("answered", ANSWERED, points, |p| p.answered as f64),
            series("sent (achieved rate)", SENT, points, |p| p.sent as f64),
        ],
    )?;
    root.present()?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    seconds: f64,
    lines: &[Series],
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let highest = lines
        .iter()
        .flat_map(|s| s.values.iter().map(|&(_, y)| y))
        .fold(0.0_f64, f64::max);
    let y_max = if highest > 0.0 { highest * 1.1 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(14)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..seconds, 0.0..y_max)?;
    let y_decimals = if y_max > 10.0 { 0 } else { 1 };
    chart
        .configure_mesh()
        .x_desc("second of the run")
        .y_desc(y_desc)
        .x_labels((seconds as usize + 1).clamp(2, 13))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.y_decimals$}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    // Later lines are drawn thinner on top of earlier ones, so equal series stay visible.
    for (i, line) in lines.iter().enumerate() {
        let color = line.color;
        let width = if i == 0 { 4 } else { 2 };
        chart
            .draw_series(LineSeries::new(
                line.values.iter().copied(),
                color.stroke_width(width),
            ))?
            .label(line.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(second: u64, p50_ms: f64, p99_ms: f64, sent: u64) -> SecondPoint {
        SecondPoint {
            second,
            sent,
            answered: sent,
            tickets_sold: sent,
            errors: 0,
            p50_ms,
            p99_ms,
        }
    }

    #[test]
    fn the_svg_has_a_line_and_a_legend_per_series() {
        let svg = render_svg(
            &[point(0, 1.0, 4.0, 10), point(1, 2.0, 9.0, 12)],
            "load on x",
        )
        .expect("drawn");
        assert!(svg.starts_with("<svg"), "{svg}");
        // Each series is a line in its colour, and so is its legend's sample.
        for color in ["#2F6FDF", "#D64545", "#1F9D55", "#C98A00"] {
            let lines = svg
                .lines()
                .filter(|l| l.starts_with("<polyline") && l.contains(color))
                .count();
            assert_eq!(lines, 2, "{color} in {svg}");
        }
        for label in [
            "p50",
            "p99",
            "sent (achieved rate)",
            "answered",
            "load on x",
        ] {
            assert!(svg.contains(label), "no {label}");
        }
    }

    #[test]
    fn an_empty_run_still_draws_its_axes() {
        let svg = render_svg(&[], "nothing").expect("drawn");
        assert!(svg.contains("latency (ms)"), "{svg}");
    }
}
