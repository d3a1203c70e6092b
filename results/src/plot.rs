//! Figures of a sweep, as PNG and SVG, drawn with plotters in pure Rust. Text is laid out with
//! DejaVu Sans, bundled as bytes by the `dejavu` crate, so drawing needs no system font library.
//!
//! Figures (each skipped when it has no data):
//! - learning_curves: the level trained (the lab's curve, N) against epoch, mean with a ±sem band
//!   per condition, one panel per task (the study's main figure).
//! - learning_measures: per condition, the lab's max_N, the area under that curve and the epochs
//!   to reach half the task's largest max_N, seeds as dots, mean and ±sem as bars; one row per
//!   task.
//! - freeze_points: the level trained against epoch per regime and freeze point, one panel per
//!   task and architecture; only when the sweep has more than one regime or freeze point.
//! - ablation: per checkpoint level, mean ± sem, the accuracy with the module on, off and off
//!   with the readout retrained (`ABLATION_ACCURACY_METRICS`), and the accuracy lost without the
//!   module, before and after the readout's retraining (`ABLATION_LOSS_METRICS`).
//! - dimensionality: `DIMENSIONALITY_METRICS` per level, one line per condition and population.
//! - timescales: `TIMESCALE_METRICS` per level, one line per condition and population.
//!
//! Curves and measures are the lab's of stats.parquet (`crate::measures`: levels trained,
//! carried forward to the epoch budget), so a figure can be set beside the paper's. Every file is
//! drawn under a temporary name and then renamed.

use crate::conditions::{by_condition, namer};
use crate::measures::{Measure, TrialCurve, half_max, trial_curves};
use crate::source::TrialRow;
use crate::summary::Summary;
use cbsweep_common::{AnalysisRecord, EpochRecord, Task, TrialId};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const LEARNING_CURVES: &str = "learning_curves";
pub const LEARNING_MEASURES: &str = "learning_measures";
pub const FREEZE_POINTS: &str = "freeze_points";
pub const ABLATION: &str = "ablation";
pub const DIMENSIONALITY: &str = "dimensionality";
pub const TIMESCALES: &str = "timescales";

/// The ablation's drop, the accuracy lost with the module off (the dashboard's ablation line).
pub const ABLATION_METRIC: &str = "ablation_drop";
/// The ablation figure's accuracies, one line each in one row of panels: module on, off, and
/// off with the readout retrained (the readout recovery).
pub const ABLATION_ACCURACY_METRICS: [&str; 3] = ["accuracy_cb_on", "accuracy_cb_off", "recovery_accuracy"];
/// The ablation figure's accuracy lost, one line each in a second row: the drop with the module
/// off, and the gap left after the readout's retraining.
pub const ABLATION_LOSS_METRICS: [&str; 2] = [ABLATION_METRIC, "recovery_gap"];
/// The analysis metrics of the dimensionality figure, one row of panels each when present (the
/// component counts d90 and d95 stay in analyses.parquet: the fractions compare populations).
pub const DIMENSIONALITY_METRICS: [&str; 3] = ["participation_ratio", "d95_fraction", "d90_fraction"];
/// The analysis metrics of the timescales figure, one row of panels each when present.
pub const TIMESCALE_METRICS: [&str; 3] = ["timescale_median_steps", "population_lag_1e_steps", "timescale_mean_steps"];

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot write {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot draw {}: {source}", path.display())]
    Draw { path: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("the bundled DejaVu Sans font cannot be loaded")]
    Font,
}

/// Draws every figure with data into `out_dir` (created if missing), each as NAME.png and
/// NAME.svg; returns the files written.
pub fn plot(
    trials: &[TrialRow],
    curves: &[(TrialId, EpochRecord)],
    analyses: &[(TrialId, AnalysisRecord)],
    out_dir: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    register_font()?;
    std::fs::create_dir_all(out_dir).map_err(|source| PlotError::Io { path: out_dir.to_owned(), source })?;
    let mut written = Vec::new();
    for fig in figures(trials, curves, analyses) {
        written.extend(render(&fig, out_dir)?);
    }
    Ok(written)
}

/// A figure before drawing: panels in rows of `cols`.
struct Figure {
    name: &'static str,
    title: String,
    cols: usize,
    panels: Vec<Panel>,
    /// Series names and styles, drawn once in a column right of the panels (none for strips).
    legend: Vec<(String, Style)>,
}

struct Panel {
    title: String,
    x_desc: String,
    y_desc: String,
    content: Content,
}

enum Content {
    /// Mean lines with ±sem bands.
    Lines(Vec<Line>),
    /// One column of dots (one per trial) per category, with mean and ±sem.
    Strips(Vec<Strip>),
}

struct Line {
    style: Style,
    /// (x, mean, sem); a NaN sem draws no band.
    points: Vec<(f64, f64, f64)>,
}

/// How a series looks: its colour and its dash pattern (an index into `DASHES`).
#[derive(Clone, Copy)]
struct Style {
    color: RGBColor,
    dash: usize,
}

struct Strip {
    label: String,
    color: RGBColor,
    values: Vec<f64>,
    summary: Summary,
}

const PANEL_SIZE: (u32, u32) = (600, 420);
const TITLE_HEIGHT: u32 = 40;
const LEGEND_WIDTH: u32 = 280;
const FONT: &str = "sans-serif";
/// Matplotlib's tab10, so the figures read like the study's.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// Dash patterns (dash, gap) in pixels; the first is a solid line.
const DASHES: [Option<(i32, i32)>; 5] = [None, Some((9, 5)), Some((2, 4)), Some((16, 4)), Some((5, 10))];
/// The order populations are listed in (others follow, by name).
const POPULATIONS: [&str; 5] = ["network", "hidden", "granule", "purkinje", "cb_output"];

fn register_font() -> Result<(), PlotError> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    if ok { Ok(()) } else { Err(PlotError::Font) }
}

/// Names conditions for people and gives each series one style across a figure's panels.
struct Legend {
    name: Box<dyn Fn(&str) -> String>,
    /// Distinct colours handed out, by key.
    colors: Vec<String>,
    /// Distinct dash patterns handed out, by key.
    dashes: Vec<String>,
    entries: Vec<(String, Style)>,
}

impl Legend {
    /// Names for `conditions` without the task (panels are per task) and without the parts they
    /// all share.
    fn new<'a>(conditions: impl Iterator<Item = &'a str>) -> Legend {
        let name = namer(conditions, &["task"]);
        Legend { name: Box::new(move |c: &str| name(c).join(" ")), colors: Vec::new(), dashes: Vec::new(), entries: Vec::new() }
    }

    /// The style of the series `label`: one colour per `color_key`, one dash pattern per
    /// `dash_key` (solid when all series share one).
    fn style(&mut self, label: &str, color_key: &str, dash_key: &str) -> Style {
        let index = |seen: &mut Vec<String>, key: &str| match seen.iter().position(|k| k == key) {
            Some(i) => i,
            None => {
                seen.push(key.to_string());
                seen.len() - 1
            }
        };
        let style = Style {
            color: PALETTE[index(&mut self.colors, color_key) % PALETTE.len()],
            dash: index(&mut self.dashes, dash_key) % DASHES.len(),
        };
        if !self.entries.iter().any(|(l, _)| l == label) {
            self.entries.push((label.to_string(), style));
        }
        style
    }

    /// A line per condition, coloured by condition.
    fn condition_line(&mut self, condition: &str, group: &[&TrialCurve]) -> Line {
        let label = (self.name)(condition);
        level_line(group, self.style(&label, &label, ""))
    }
}

fn figures(trials: &[TrialRow], curves: &[(TrialId, EpochRecord)], analyses: &[(TrialId, AnalysisRecord)]) -> Vec<Figure> {
    let tc = trial_curves(trials, curves);
    let groups = by_condition(&tc, |t| t.trial.condition.as_str());
    let mut tasks: Vec<Task> = Vec::new();
    for t in trials {
        if !tasks.contains(&t.spec.task) {
            tasks.push(t.spec.task);
        }
    }
    let mut figs = Vec::new();
    if !groups.is_empty() {
        figs.push(learning_curves(&groups, &tasks));
        figs.push(learning_measures(&groups, &tasks));
        let mut regimes: Vec<_> = tc.iter().map(|t| t.trial.spec.regime).collect();
        regimes.sort();
        regimes.dedup();
        if regimes.len() > 1 {
            figs.push(freeze_points(&groups, &tasks));
        }
    }
    let by_id: HashMap<&TrialId, &TrialRow> = trials.iter().map(|t| (&t.id, t)).collect();
    let records: Vec<(&TrialRow, &AnalysisRecord)> = analyses.iter().filter_map(|(id, a)| by_id.get(id).map(|t| (*t, a))).collect();
    let present = |metrics: &[&str]| -> Vec<String> {
        metrics.iter().map(|m| m.to_string()).filter(|m| records.iter().any(|(_, a)| &a.metric == m)).collect()
    };
    // a row per metric, titled by it
    let one_each = |metrics: &[&str]| -> Vec<MetricRow> {
        present(metrics).into_iter().map(|m| MetricRow { title: m.clone(), metrics: vec![m] }).collect()
    };
    // the ablation's rows only when it has a drop (a sweep of plain models has accuracies alone)
    let ablation = if present(&[ABLATION_METRIC]).is_empty() {
        Vec::new()
    } else {
        vec![
            MetricRow { title: "accuracy".into(), metrics: present(&ABLATION_ACCURACY_METRICS) },
            MetricRow { title: "accuracy lost".into(), metrics: present(&ABLATION_LOSS_METRICS) },
        ]
    };
    let analysis_figures: [(&'static str, &str, Vec<MetricRow>); 3] = [
        (ABLATION, "Ablation: the module's output off, and the readout retrained without it, per level", ablation),
        (DIMENSIONALITY, "Dimensionality per level and population", one_each(&DIMENSIONALITY_METRICS)),
        (TIMESCALES, "Timescales per level and population", one_each(&TIMESCALE_METRICS)),
    ];
    for (name, title, rows) in analysis_figures {
        if !rows.is_empty() {
            figs.push(analysis_figure(name, title, &rows, &records, &tasks));
        }
    }
    figs
}

/// A row of panels of an analysis figure: its title and the metrics it draws.
struct MetricRow {
    title: String,
    metrics: Vec<String>,
}

type Groups<'g, 'a> = [(&'a str, Vec<&'g TrialCurve<'a>>)];

/// Mean ± sem of the level trained at each epoch over `group` (the lab's curve).
fn level_line(group: &[&TrialCurve], style: Style) -> Line {
    let epochs = group.iter().map(|t| t.trained.len()).max().unwrap_or(0);
    let points = (0..epochs)
        .map(|e| {
            let v: Vec<f64> = group.iter().filter_map(|t| t.trained.get(e)).map(|&r| r as f64).collect();
            let s = Summary::of(&v);
            ((e + 1) as f64, s.mean, s.sem)
        })
        .collect();
    Line { style, points }
}

fn learning_curves(groups: &Groups, tasks: &[Task]) -> Figure {
    let mut legend = Legend::new(groups.iter().map(|(c, _)| *c));
    let panels = tasks
        .iter()
        .map(|task| {
            let lines = in_task(groups, task).map(|(c, g)| legend.condition_line(c, g)).collect();
            Panel { title: task.to_string(), x_desc: "epoch".into(), y_desc: "level trained N".into(), content: Content::Lines(lines) }
        })
        .collect();
    Figure {
        name: LEARNING_CURVES,
        title: "Level trained N (mean ± sem across seeds)".into(),
        cols: tasks.len().min(3),
        panels,
        legend: legend.entries,
    }
}

fn learning_measures(groups: &Groups, tasks: &[Task]) -> Figure {
    let mut legend = Legend::new(groups.iter().map(|(c, _)| *c));
    let mut panels = Vec::new();
    for task in tasks {
        let half = half_max(Measure::EpochsToHalfMaxN, in_task(groups, task).flat_map(|(_, g)| g.iter().copied()));
        for (m, y_desc) in [
            (Measure::MaxN, "max_N (highest level trained)".to_string()),
            (Measure::AreaN, "area under N curve (level x epochs)".to_string()),
            (Measure::EpochsToHalfMaxN, format!("epochs to reach N >= {half}")),
        ] {
            let strips = in_task(groups, task)
                .map(|(c, g)| {
                    let label = (legend.name)(c);
                    let values: Vec<f64> = g.iter().map(|t| t.value(m, half)).filter(|v| v.is_finite()).collect();
                    Strip { color: legend.style(&label, &label, "").color, label, summary: Summary::of(&values), values }
                })
                .collect();
            panels.push(Panel { title: format!("{task}: {}", m.name()), x_desc: String::new(), y_desc, content: Content::Strips(strips) });
        }
    }
    Figure {
        name: LEARNING_MEASURES,
        title: "Learning measures per condition, the lab's (dots: seeds; bars: mean ± sem)".into(),
        cols: 3,
        panels,
        legend: Vec::new(),
    }
}

fn freeze_points(groups: &Groups, tasks: &[Task]) -> Figure {
    let mut legend = Legend::new(groups.iter().map(|(c, _)| *c));
    let mut archs: Vec<_> = groups.iter().map(|(_, g)| g[0].trial.spec.arch).collect();
    archs.sort();
    archs.dedup();
    let mut panels = Vec::new();
    for task in tasks {
        for arch in archs.iter().rev() {
            let lines: Vec<Line> =
                in_task(groups, task).filter(|(_, g)| g[0].trial.spec.arch == *arch).map(|(c, g)| legend.condition_line(c, g)).collect();
            if !lines.is_empty() {
                panels.push(Panel {
                    title: format!("{task}, {arch}"),
                    x_desc: "epoch".into(),
                    y_desc: "level trained N".into(),
                    content: Content::Lines(lines),
                });
            }
        }
    }
    Figure {
        name: FREEZE_POINTS,
        title: "Level trained N per regime and freeze point (mean ± sem)".into(),
        cols: archs.len(),
        panels,
        legend: legend.entries,
    }
}

/// One row of panels per `MetricRow`, one column per task; a line per condition, population and
/// metric of the row, coloured by population (by metric in a row of several) and dashed by
/// condition (coloured by condition when the figure has only one population and metric per row).
fn analysis_figure(
    name: &'static str,
    title: &str,
    rows: &[MetricRow],
    records: &[(&TrialRow, &AnalysisRecord)],
    tasks: &[Task],
) -> Figure {
    let population_rank = |p: &str| POPULATIONS.iter().position(|x| *x == p).unwrap_or(POPULATIONS.len());
    let mut conditions: Vec<&str> = Vec::new();
    let mut condition_index: HashMap<&str, usize> = HashMap::new();
    // Indices of (row, task, condition, metric in the row), population rank, population.
    type Series<'r> = (usize, usize, usize, usize, usize, &'r str);
    // Series -> level -> values, in one pass.
    let mut series: BTreeMap<Series, BTreeMap<u32, Vec<f64>>> = BTreeMap::new();
    let place = |metric: &str| rows.iter().enumerate().find_map(|(ri, r)| r.metrics.iter().position(|m| m == metric).map(|mi| (ri, mi)));
    for (t, a) in records {
        let (Some((ri, mi)), Some(ti)) = (place(&a.metric), tasks.iter().position(|x| *x == t.spec.task)) else {
            continue;
        };
        if !a.value.is_finite() {
            continue;
        }
        let ci = *condition_index.entry(&t.condition).or_insert_with(|| {
            conditions.push(&t.condition);
            conditions.len() - 1
        });
        series
            .entry((ri, ti, ci, mi, population_rank(&a.population), &a.population))
            .or_default()
            .entry(a.level)
            .or_default()
            .push(a.value);
    }
    let mut legend = Legend::new(conditions.iter().copied());
    let mut populations: Vec<&str> = series.keys().map(|k| k.5).collect();
    populations.sort();
    populations.dedup();
    // What tells a condition's lines apart: the population, the metric in a row of several, both
    // or (one population, one metric per row) nothing, and then lines are coloured by condition.
    let kind = |ri: usize, mi: usize, population: &str| {
        let metric = (rows[ri].metrics.len() > 1).then(|| rows[ri].metrics[mi].as_str());
        let population = (populations.len() > 1).then_some(population);
        population.into_iter().chain(metric).collect::<Vec<_>>().join(" ")
    };
    let mut panels = Vec::new();
    for (ri, row) in rows.iter().enumerate() {
        for (ti, task) in tasks.iter().enumerate() {
            let lines = series
                .range((ri, ti, 0, 0, 0, "")..(ri, ti + 1, 0, 0, 0, ""))
                .map(|(&(_, _, ci, mi, _, population), levels)| {
                    let condition = (legend.name)(conditions[ci]);
                    let kind = kind(ri, mi, population);
                    let style = if kind.is_empty() {
                        legend.style(&condition, &condition, "")
                    } else {
                        legend.style(&format!("{condition} {kind}"), &kind, &condition)
                    };
                    let points = levels
                        .iter()
                        .map(|(&level, v)| {
                            let s = Summary::of(v);
                            (level as f64, s.mean, s.sem)
                        })
                        .collect();
                    Line { style, points }
                })
                .collect();
            panels.push(Panel {
                title: format!("{task}: {}", row.title),
                x_desc: "level N".into(),
                y_desc: row.title.clone(),
                content: Content::Lines(lines),
            });
        }
    }
    Figure { name, title: format!("{title} (mean ± sem across seeds)"), cols: tasks.len(), panels, legend: legend.entries }
}

fn in_task<'s, 'g, 'a>(groups: &'s Groups<'g, 'a>, task: &Task) -> impl Iterator<Item = (&'a str, &'s [&'g TrialCurve<'a>])> + 's {
    let task = *task;
    groups.iter().filter(move |(_, g)| g[0].trial.spec.task == task).map(|(c, g)| (*c, g.as_slice()))
}

/// Draws `fig` as NAME.png and NAME.svg in `dir`.
fn render(fig: &Figure, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let cols = fig.cols.max(1);
    let rows = fig.panels.len().div_ceil(cols).max(1);
    let legend_width = if fig.legend.is_empty() { 0 } else { LEGEND_WIDTH };
    let size = (PANEL_SIZE.0 * cols as u32 + legend_width, PANEL_SIZE.1 * rows as u32 + TITLE_HEIGHT);
    let mut written = Vec::new();
    for ext in ["png", "svg"] {
        let path = dir.join(format!("{}.{ext}", fig.name));
        // The temporary keeps the extension: the PNG encoder picks the format from it.
        let tmp = dir.join(format!(".{}.partial.{ext}", fig.name));
        let drawn = if ext == "png" {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            draw(&root, fig, (rows, cols)).and_then(|()| root.present()).map_err(|e| e.to_string())
        } else {
            let root = SVGBackend::new(&tmp, size).into_drawing_area();
            draw(&root, fig, (rows, cols)).and_then(|()| root.present()).map_err(|e| e.to_string())
        };
        drawn.map_err(|e| PlotError::Draw { path: path.clone(), source: e.into() })?;
        std::fs::rename(&tmp, &path).map_err(|source| PlotError::Io { path: path.clone(), source })?;
        written.push(path);
    }
    Ok(written)
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure, grid: (usize, usize)) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let body = root.titled(&fig.title, (FONT, 22))?;
    let (panels, legend) = body.split_horizontally(PANEL_SIZE.0 * grid.1 as u32);
    for (area, panel) in panels.split_evenly(grid).iter().zip(&fig.panels) {
        match &panel.content {
            Content::Lines(lines) => draw_lines(area, panel, lines)?,
            Content::Strips(strips) => draw_strips(area, panel, strips)?,
        }
    }
    for (i, (label, style)) in (0..).zip(&fig.legend) {
        let y = 40 + 20 * i;
        let sample = vec![(8, y), (38, y)];
        let stroke = style.color.stroke_width(2);
        match DASHES[style.dash] {
            None => legend.draw(&PathElement::new(sample, stroke))?,
            Some((dash, gap)) => legend.draw(&DashedPathElement::new(sample, dash, gap, stroke))?,
        }
        legend.draw(&Text::new(label.as_str(), (46, y - 7), (FONT, 13)))?;
    }
    Ok(())
}

fn draw_lines<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel, lines: &[Line]) -> DrawResult<DB> {
    let band = |p: &(f64, f64, f64)| if p.2.is_finite() { p.2 } else { 0.0 };
    let x = span(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)));
    let y = span(lines.iter().flat_map(|l| l.points.iter().flat_map(|p| [p.1 - band(p), p.1 + band(p)])));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_desc)
        .y_desc(&panel.y_desc)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .max_light_lines(2)
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    for line in lines {
        let c = line.style.color;
        let pts = line.points.iter().filter(|p| p.1.is_finite());
        let outline: Vec<(f64, f64)> =
            pts.clone().map(|p| (p.0, p.1 + band(p))).chain(pts.clone().rev().map(|p| (p.0, p.1 - band(p)))).collect();
        chart.draw_series(std::iter::once(Polygon::new(outline, c.mix(0.18).filled())))?;
        let means: Vec<(f64, f64)> = pts.clone().map(|p| (p.0, p.1)).collect();
        match DASHES[line.style.dash] {
            None => chart.draw_series(LineSeries::new(means, c.stroke_width(2)))?,
            Some((dash, gap)) => chart.draw_series(DashedLineSeries::new(means, dash, gap, c.stroke_width(2)))?,
        };
        if line.points.len() <= 60 {
            chart.draw_series(pts.map(|p| Circle::new((p.0, p.1), 3, c.filled())))?;
        }
    }
    Ok(())
}

fn draw_strips<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel, strips: &[Strip]) -> DrawResult<DB> {
    let k = strips.len() as i32;
    let y =
        span(strips.iter().flat_map(|s| s.values.iter().copied().chain([s.summary.mean - s.summary.sem, s.summary.mean + s.summary.sem])));
    let labels: Vec<&str> = strips.iter().map(|s| s.label.as_str()).collect();
    let label_of = |i: &i32| usize::try_from(*i).ok().and_then(|i| labels.get(i)).map(|s| s.to_string()).unwrap_or_default();
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(-1..k, y.0..y.1)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(strips.len() + 2)
        .x_label_formatter(&label_of)
        .y_label_formatter(&tick)
        .x_desc(&panel.x_desc)
        .y_desc(&panel.y_desc)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .max_light_lines(2)
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    for (i, s) in (0..).zip(strips) {
        let (c, n) = (s.color, s.values.len() as f64);
        // Seeds spread sideways in pixels so equal values stay visible.
        chart.draw_series(s.values.iter().enumerate().map(|(j, &v)| {
            let dx = (((j as f64 + 0.5) / n) - 0.5) * 30.0;
            EmptyElement::at((i, v)) + Circle::new((dx as i32, 0), 4, c.mix(0.75).filled())
        }))?;
        let (mean, sem) = (s.summary.mean, s.summary.sem);
        if mean.is_finite() {
            chart.draw_series(std::iter::once(
                EmptyElement::at((i, mean)) + PathElement::new(vec![(-20, 0), (20, 0)], BLACK.stroke_width(2)),
            ))?;
        }
        if sem.is_finite() {
            chart.draw_series(std::iter::once(PathElement::new(vec![(i, mean - sem), (i, mean + sem)], BLACK.stroke_width(1))))?;
        }
    }
    Ok(())
}

/// An axis tick without trailing zeros.
fn tick(v: &f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// The padded range of the finite values, (0, 1) when there are none.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 1.0 };
    (lo - pad, hi + pad)
}
