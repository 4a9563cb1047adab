//! The experiment's outputs from its cells: `report.md` (mean ± standard deviation of accuracy
//! and macro-F1 per size and condition, the best condition of each size in bold, as the EDA
//! paper's tables) and `learning-curve.png` (accuracy against training-set size on a log
//! axis, one line per condition, error bars of one standard deviation).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// One line of results.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// A number, or "full".
    pub size: String,
    /// Training rows actually used (the subsample, or the whole file for "full").
    pub rows: usize,
    pub condition: String,
    pub seed: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub epochs: u64,
    pub seconds: f64,
}

/// Accuracy and macro-F1 (mean, standard deviation, in %) and the number of seeds.
type Stats = ((f64, f64), (f64, f64), usize);

/// Mean and (sample) standard deviation.
fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n.max(1.0);
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// (size, condition) → the cells of every seed, sizes in increasing row count.
struct Table<'a> {
    sizes: Vec<(String, usize)>,
    conditions: Vec<String>,
    cells: BTreeMap<(String, String), Vec<&'a Cell>>,
}

fn table<'a>(cells: &'a [Cell], conditions: &[String]) -> Table<'a> {
    let mut sizes: Vec<(String, usize)> = Vec::new();
    let mut grouped: BTreeMap<(String, String), Vec<&Cell>> = BTreeMap::new();
    for c in cells {
        if !sizes.iter().any(|(s, _)| *s == c.size) {
            sizes.push((c.size.clone(), c.rows));
        }
        grouped
            .entry((c.size.clone(), c.condition.clone()))
            .or_default()
            .push(c);
    }
    sizes.sort_by_key(|(_, rows)| *rows);
    Table {
        sizes,
        conditions: conditions.to_vec(),
        cells: grouped,
    }
}

/// The markdown report.
/// The markdown report; `notes` (why some cells are missing) follow the table.
pub fn markdown(cells: &[Cell], conditions: &[String], title: &str, notes: &[String]) -> String {
    let t = table(cells, conditions);
    let mut out = format!(
        "# {title}\n\nTest accuracy / macro-F1 (%), mean ± standard deviation over seeds; the best \
         condition of each size (by mean accuracy) in bold.\n\n| size | "
    );
    out.push_str(&t.conditions.join(" | "));
    out.push_str(" |\n| --- |");
    out.push_str(&" --- |".repeat(t.conditions.len()));
    out.push('\n');
    for (size, rows) in &t.sizes {
        let stats: Vec<Option<Stats>> = t
            .conditions
            .iter()
            .map(|cond| {
                t.cells.get(&(size.clone(), cond.clone())).map(|cs| {
                    let acc: Vec<f64> = cs.iter().map(|c| 100.0 * c.accuracy).collect();
                    let f1: Vec<f64> = cs.iter().map(|c| 100.0 * c.macro_f1).collect();
                    (mean_std(&acc), mean_std(&f1), cs.len())
                })
            })
            .collect();
        let best = stats
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s.0 .0)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i);
        let _ = write!(out, "| {size} ({rows} rows) |");
        for (i, s) in stats.iter().enumerate() {
            let text = match s {
                Some(((am, asd), (fm, fsd), n)) => {
                    format!("{am:.1} ± {asd:.1} / {fm:.1} ± {fsd:.1} (n={n})")
                }
                None => "–".into(),
            };
            if Some(i) == best {
                let _ = write!(out, " **{text}** |");
            } else {
                let _ = write!(out, " {text} |");
            }
        }
        out.push('\n');
    }
    for note in notes {
        let _ = writeln!(out, "\nNote: {note}.");
    }
    out
}

static FONT: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");

/// Draws `learning-curve.png` at `path`.
pub fn plot(cells: &[Cell], conditions: &[String], title: &str, path: &Path) -> Result<()> {
    // Registering twice (a second plot in one process) is harmless.
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the bundled font does not load"))?;
    let t = table(cells, conditions);
    if t.sizes.is_empty() {
        return Ok(());
    }
    let x_min = t.sizes.first().map_or(1, |s| s.1).max(1) as f64;
    let x_max = t.sizes.last().map_or(1, |s| s.1).max(2) as f64;
    let mut series = Vec::new();
    let (mut y_min, mut y_max) = (100.0f64, 0.0f64);
    for cond in &t.conditions {
        let mut points = Vec::new();
        for (size, rows) in &t.sizes {
            if let Some(cs) = t.cells.get(&(size.clone(), cond.clone())) {
                let acc: Vec<f64> = cs.iter().map(|c| 100.0 * c.accuracy).collect();
                let (m, sd) = mean_std(&acc);
                y_min = y_min.min(m - sd);
                y_max = y_max.max(m + sd);
                points.push((*rows as f64, m, sd));
            }
        }
        series.push((cond.clone(), points));
    }
    let pad = ((y_max - y_min) * 0.1).max(1.0);
    let tmp = path.with_extension("png.tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("drawing: {e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 26))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (x_min * 0.8..x_max * 1.25).log_scale(),
                (y_min - pad).max(0.0)..(y_max + pad).min(100.0),
            )
            .map_err(|e| anyhow!("drawing: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("training examples (log scale)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("test accuracy (%)")
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(|e| anyhow!("drawing: {e}"))?;
        for (i, (cond, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|&(x, y, _)| (x, y)),
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow!("drawing: {e}"))?
                .label(cond.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&(x, y, sd)| {
                    ErrorBar::new_vertical(x, y - sd, y, y + sd, color.filled(), 8)
                }))
                .map_err(|e| anyhow!("drawing: {e}"))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("drawing: {e}"))?;
        root.present().map_err(|e| anyhow!("drawing: {e}"))?;
    }
    let bytes = std::fs::read(&tmp).with_context(|| format!("reading {}", tmp.display()))?;
    let _ = std::fs::remove_file(&tmp);
    common::fsutil::write_atomic(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(size: &str, rows: usize, condition: &str, seed: u64, accuracy: f64) -> Cell {
        Cell {
            size: size.into(),
            rows,
            condition: condition.into(),
            seed,
            accuracy,
            macro_f1: accuracy - 0.1,
            epochs: 5,
            seconds: 1.0,
        }
    }

    #[test]
    fn the_table_bolds_the_best_condition_of_each_size_and_the_plot_is_a_png() {
        let cells = vec![
            cell("100", 100, "baseline", 0, 0.50),
            cell("100", 100, "baseline", 1, 0.60),
            cell("100", 100, "eda", 0, 0.70),
            cell("100", 100, "eda", 1, 0.72),
            cell("full", 1000, "baseline", 0, 0.80),
            cell("full", 1000, "eda", 0, 0.78),
        ];
        let conds = vec!["baseline".to_string(), "eda".to_string()];
        let md = markdown(&cells, &conds, "test", &[]);
        assert!(md.contains("| 100 (100 rows) | 55.0 ± 7.1 / 45.0 ± 7.1 (n=2) | **71.0 ± 1.4"));
        assert!(md.contains("| full (1000 rows) | **80.0 ± 0.0"));
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("curve.png");
        plot(&cells, &conds, "test", &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}
