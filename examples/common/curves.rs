//! `curves.svg` in a run folder: training and validation bits per byte against steps and against
//! wall-clock time, redrawn from `metrics.jsonl` after every evaluation (resumed runs included).

use super::plot_err;
use altup_moe::train::EvalRecord;
use plotters::prelude::*;
use std::path::Path;

/// The records of `dir/metrics.jsonl` (none if it does not exist yet).
///
/// # Errors
/// [`altup_moe::Error::Io`] / [`altup_moe::Error::Json`] naming the file and the line.
pub fn read_metrics(dir: &Path) -> altup_moe::Result<Vec<EvalRecord>> {
    let path = dir.join("metrics.jsonl");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| altup_moe::Error::io(&path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| altup_moe::Error::Json {
                context: format!("{} line {}", path.display(), i + 1),
                source,
            })
        })
        .collect()
}

/// Training bits per byte of a record: the training loss (nats per token) over ln 2 and over the
/// bytes per token of the validation split (`val_loss / ln 2 / val_bpb`; training and validation
/// text have nearly the same bytes per token).
fn train_bpb(r: &EvalRecord) -> f64 {
    let bytes_per_token = r.val_loss / std::f64::consts::LN_2 / r.val_bpb;
    r.train_loss / std::f64::consts::LN_2 / bytes_per_token
}

/// Draws `dir/curves.svg` from `dir/metrics.jsonl`: two panels (against steps, against wall-clock
/// seconds), each with the training and the validation bits per byte. Nothing is drawn before the
/// first evaluation.
///
/// # Errors
/// As [`read_metrics`]; plotting errors.
pub fn write_curves(dir: &Path) -> altup_moe::Result<()> {
    let records = read_metrics(dir)?;
    if records.is_empty() {
        return Ok(());
    }
    let path = dir.join("curves.svg");
    let root = SVGBackend::new(&path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let panels = root.split_evenly((1, 2));
    let values: Vec<f64> = records.iter().flat_map(|r| [r.val_bpb, train_bpb(r)]).filter(|v| v.is_finite()).collect();
    let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (lo, hi) = (lo - 0.05 * (hi - lo).max(0.1), hi + 0.05 * (hi - lo).max(0.1));
    let x_of: [(&str, fn(&EvalRecord) -> f64); 2] =
        [("step", |r| r.step as f64), ("wall-clock seconds", |r| r.elapsed_s)];
    for (panel, (x_desc, x)) in panels.iter().zip(x_of) {
        let x_max = records.iter().map(x).fold(0.0, f64::max).max(1.0);
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("bits per byte against {x_desc}"), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..x_max * 1.02, lo..hi)
            .map_err(plot_err)?;
        chart.configure_mesh().x_desc(x_desc).y_desc("bits per byte").draw().map_err(plot_err)?;
        let series: [(&str, RGBColor, fn(&EvalRecord) -> f64); 2] =
            [("train", BLUE, train_bpb), ("validation", RED, |r| r.val_bpb)];
        for (name, color, y) in series {
            let points: Vec<(f64, f64)> = records.iter().map(|r| (x(r), y(r))).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 2, color.filled()))).map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)
}
