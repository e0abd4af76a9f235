//! SVG figures of a reproduction run (plotters): routing and alignment matrices as heatmaps, learning curves.
//!
//! Figures render into memory and are written atomically, like every other output of a run.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use mhr_train::TrainError;

/// Pixels per heatmap cell side, and the room kept for labels around a panel.
const CELL: u32 = 14;
const LABEL_ROOM: u32 = 110;
const CAPTION_ROOM: u32 = 40;

/// One matrix to draw: `values[row][col]`, coloured from white (the panel's minimum) to dark blue (its maximum).
pub struct Heatmap<'a> {
    pub title: &'a str,
    pub row_labels: &'a [String],
    pub col_labels: &'a [String],
    pub values: &'a [Vec<f64>],
}

impl Heatmap<'_> {
    fn range(&self) -> (f64, f64) {
        let finite = self.values.iter().flatten().copied().filter(|v| v.is_finite());
        finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
    }

    fn size(&self) -> (u32, u32) {
        let cols = self.col_labels.len() as u32;
        let rows = self.row_labels.len() as u32;
        (
            cols * CELL + LABEL_ROOM + 20,
            rows * CELL + LABEL_ROOM + CAPTION_ROOM,
        )
    }
}

/// White → dark blue for `t` in [0, 1]; grey for values that are not finite.
pub fn cell_colour(value: f64, (lo, hi): (f64, f64)) -> RGBColor {
    if !value.is_finite() {
        return RGBColor(160, 160, 160);
    }
    let t = if hi > lo {
        ((value - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let mix = |from: f64, to: f64| (from + (to - from) * t).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Config(format!("{}: drawing the figure failed: {e}", path.display()))
}

/// Heatmap panels side by side in one SVG at `path`.
pub fn write_heatmaps(path: &Path, panels: &[Heatmap<'_>]) -> Result<(), TrainError> {
    for panel in panels {
        if panel.values.len() != panel.row_labels.len()
            || panel.values.iter().any(|row| row.len() != panel.col_labels.len())
        {
            return Err(TrainError::Config(format!(
                "{}: heatmap `{}` is not {}×{}",
                path.display(),
                panel.title,
                panel.row_labels.len(),
                panel.col_labels.len()
            )));
        }
    }
    let width = panels.iter().map(|p| p.size().0).sum::<u32>().max(1);
    let height = panels.iter().map(|p| p.size().1).max().unwrap_or(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
        let mut rest = root;
        for panel in panels {
            let (left, right) = rest.split_horizontally(panel.size().0);
            draw_heatmap(&left, panel).map_err(|e| plot_error(path, e))?;
            rest = right;
        }
    }
    mhr_core::io::write_atomic(path, svg.as_bytes()).map_err(TrainError::from)
}

fn draw_heatmap(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    panel: &Heatmap<'_>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (rows, cols) = (panel.row_labels.len(), panel.col_labels.len());
    let range = panel.range();
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(LABEL_ROOM * 2 / 3)
        .y_label_area_size(LABEL_ROOM / 2 + 20)
        .build_cartesian_2d(0..cols.max(1), 0..rows.max(1))?;
    // Labels sit at cell centres; row 0 at the top, as matrices are read.
    let col_label = |x: &usize| panel.col_labels.get(*x).cloned().unwrap_or_default();
    let row_label = |y: &usize| {
        rows.checked_sub(y + 1)
            .and_then(|r| panel.row_labels.get(r).cloned())
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(cols)
        .y_labels(rows)
        .x_label_formatter(&col_label)
        .y_label_formatter(&row_label)
        // Column labels read upwards, so that a long name takes one cell's width.
        .x_label_style(("sans-serif", 9).into_font().transform(FontTransform::Rotate270))
        .y_label_style(("sans-serif", 9))
        .draw()?;
    chart.draw_series(panel.values.iter().enumerate().flat_map(|(r, row)| {
        let y = rows - 1 - r;
        row.iter()
            .enumerate()
            .map(move |(c, &v)| Rectangle::new([(c, y), (c + 1, y + 1)], cell_colour(v, range).filled()))
    }))?;
    Ok(())
}

/// One marked line per series of `(step, value)` points; non-finite values are left out.
pub fn write_line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[(String, Vec<(usize, f64)>)],
) -> Result<(), TrainError> {
    let points: Vec<(usize, f64)> = series
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .filter(|(_, v)| v.is_finite())
        .collect();
    let x_max = points.iter().map(|p| p.0).max().unwrap_or(1).max(1);
    let (lo, hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let (lo, hi) = if lo < hi { (lo, hi) } else { (0.0, 1.0) };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        draw_lines(&root, title, y_label, series, x_max, (lo, hi)).map_err(|e| plot_error(path, e))?;
    }
    mhr_core::io::write_atomic(path, svg.as_bytes()).map_err(TrainError::from)
}

fn draw_lines(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    y_label: &str,
    series: &[(String, Vec<(usize, f64)>)],
    x_max: usize,
    (lo, hi): (f64, f64),
) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0..x_max, lo..hi)?;
    chart.configure_mesh().x_desc("step").y_desc(y_label).draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        // Markers as well as the line: a curve logged once is a single point.
        chart.draw_series(
            points
                .iter()
                .filter(|(_, v)| v.is_finite())
                .map(|&p| Circle::new(p, 2, colour.filled())),
        )?;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied().filter(|(_, v)| v.is_finite()),
                colour.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn colours_span_white_to_dark_blue() {
        assert_eq!(cell_colour(0.0, (0.0, 2.0)), RGBColor(255, 255, 255));
        assert_eq!(cell_colour(2.0, (0.0, 2.0)), RGBColor(8, 48, 107));
        // Halfway: (255 + 8) / 2 = 131.5 → 132, (255 + 48) / 2 = 151.5 → 152, (255 + 107) / 2 = 181.
        assert_eq!(cell_colour(1.0, (0.0, 2.0)), RGBColor(132, 152, 181));
        assert_eq!(cell_colour(f64::NAN, (0.0, 2.0)), RGBColor(160, 160, 160));
    }

    #[test]
    fn heatmap_draws_one_cell_per_value_in_its_colour() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.svg");
        let values = vec![vec![0.0, 1.0, 2.0], vec![2.0, 2.0, f64::NAN]];
        let (rows, cols) = (labels("task", 2), labels("skill", 3));
        let panel = Heatmap {
            title: "routing",
            row_labels: &rows,
            col_labels: &cols,
            values: &values,
        };
        write_heatmaps(&path, &[panel]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        let count = |colour: &str| svg.matches(&format!("fill=\"{colour}\"")).count();
        assert_eq!(count("#08306B"), 3, "the three cells holding the maximum");
        assert_eq!(count("#8498B5"), 1, "the cell holding 1.0, the midpoint");
        assert_eq!(count("#A0A0A0"), 1, "the NaN cell");
        for label in ["task0", "task1", "skill0", "skill2", "routing"] {
            assert!(svg.contains(label), "{label} is written");
        }
    }

    #[test]
    fn heatmap_of_the_wrong_shape_is_an_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.svg");
        let (rows, cols) = (labels("r", 2), labels("c", 2));
        let values = vec![vec![0.0, 1.0]];
        let err = write_heatmaps(
            &path,
            &[Heatmap {
                title: "bad",
                row_labels: &rows,
                col_labels: &cols,
                values: &values,
            }],
        )
        .unwrap_err();
        assert!(err.to_string().contains("`bad` is not 2×2"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn line_chart_has_one_line_and_legend_entry_per_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.svg");
        let series = vec![
            ("mhr".to_string(), vec![(0, 3.0), (10, 2.0), (20, 1.0)]),
            ("lora".to_string(), vec![(0, 3.0), (10, f64::NAN), (20, 1.5)]),
        ];
        write_line_chart(&path, "pre-training loss", "loss", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        // Per series, in its palette colour: the data line (NaN points left out) and the legend sample.
        let point_counts = |stroke: &str| -> Vec<usize> {
            svg.lines()
                .filter(|l| l.starts_with("<polyline") && l.contains(&format!("stroke=\"{stroke}\"")))
                .map(|l| l.split("points=\"").nth(1).unwrap().split_whitespace().count() - 1)
                .collect()
        };
        assert_eq!(point_counts("#E6194B"), [3, 2]);
        assert_eq!(point_counts("#3CB44B"), [2, 2]);
        assert!(
            svg.contains("\nmhr\n") && svg.contains("\nlora\n"),
            "legend labels"
        );
    }
}
