//! One self-contained HTML page per sweep (inline SVG, no scripts, nothing fetched): per
//! metric a heatmap over two axes (one panel per combination of the other axes), the median
//! and its 95 % CI in each cell; box plots of every cell's runs; each cell's one-way delay
//! CDF over all its repetitions (from the runs' probe records); throughput against delay
//! when both were measured; the table of figures with unstable and drifting cells marked.
//! With two sweeps of the same grid: a difference heatmap (B − A) marking the cells whose
//! CIs do not overlap.
use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{bail, Result};

use super::{
    run::{self, Manifest, RunResult},
    stats::Figures,
    summarize, CellSummary, Summary,
};
use crate::report::html::esc;

/// A sweep directory read back: its manifest, results and summary (recomputed), and each
/// cell's delay CDF from its runs' records.
pub struct Loaded {
    pub manifest: Manifest,
    pub results: Vec<RunResult>,
    pub summary: Summary,
    pub cdfs: Vec<CellCdf>,
}

/// One cell's forward one-way delay CDF: the UDP probe's delay histograms of all its
/// finished runs merged, as (ms, % of probes at or below).
pub struct CellCdf {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Every cell's CDF (cells without a recorded UDP probe have none).
fn cell_cdfs(dir: &Path, s: &Summary, results: &[RunResult]) -> Vec<CellCdf> {
    let mut out = vec![];
    for c in &s.cells {
        let mut hist: Vec<(f64, f64)> = vec![];
        for r in results.iter().filter(|r| r.cell == c.cell.index && r.ok) {
            // A run whose record cannot be read adds nothing (its figures still come from
            // results.jsonl); the report stays whole.
            let Ok(run) = crate::report::load(&dir.join(&r.record), true) else {
                continue;
            };
            for src in &run.sources {
                if let crate::report::Typed::ProbeUdp(_, Some(f)) = &src.typed {
                    hist.extend(f.delay_hist_ms.forward.iter().map(|&(v, n)| (v, n as f64)));
                }
            }
        }
        hist.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Runs share the histogram's bucket values: one point per value.
        let mut merged: Vec<(f64, f64)> = vec![];
        for (v, n) in hist {
            match merged.last_mut() {
                Some(last) if last.0 == v => last.1 += n,
                _ => merged.push((v, n)),
            }
        }
        let points = crate::report::cdf(&merged);
        if !points.is_empty() {
            out.push(CellCdf {
                label: c.cell.label.clone(),
                points,
            });
        }
    }
    out
}

/// All cells' CDFs in one chart.
fn cdf_chart(cdfs: &[CellCdf]) -> String {
    use crate::report::plot::{self, Chart, Series};
    if cdfs.is_empty() {
        return String::new();
    }
    let chart = Chart::lines(
        "sweep-cdf",
        "one-way delay CDF per cell (forward, all repetitions)",
        "one-way delay (ms)",
        "% of probes at or below",
        cdfs.iter()
            .map(|c| Series::new(c.label.clone(), c.points.clone()))
            .collect(),
    );
    match plot::svg(&chart) {
        Ok(svg) => format!("<h2>One-way delay CDF per cell</h2><figure>{svg}</figure>"),
        Err(e) => format!(
            "<h2>One-way delay CDF per cell</h2><p class=\"note\">not drawn: {}</p>",
            esc(&format!("{e:#}"))
        ),
    }
}

pub fn is_sweep(dir: &Path) -> bool {
    dir.join(run::MANIFEST).is_file()
}

pub fn load(dir: &Path) -> Result<Loaded> {
    let manifest = run::read_manifest(dir)?;
    let results = run::read_results(dir)?;
    let summary = summarize(&manifest.plan, &results);
    let cdfs = cell_cdfs(dir, &summary, &results);
    Ok(Loaded {
        manifest,
        results,
        summary,
        cdfs,
    })
}

/// Viridis-like colour for t in 0..=1.
fn colour(t: f64) -> String {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let m = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    format!("rgb({},{},{})", m(a.0, b.0), m(a.1, b.1), m(a.2, b.2))
}

/// Diverging colour for a difference: blue below 0, red above, white at 0.
fn diverging(t: f64) -> String {
    let t = if t.is_finite() {
        t.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let w = |x: f64| (255.0 - 155.0 * x).round() as u8;
    if t >= 0.0 {
        format!("rgb(255,{},{})", w(t), w(t))
    } else {
        format!("rgb({},{},255)", w(-t), w(-t))
    }
}

/// How the report prints a figure (3 significant digits or so).
pub fn fmt(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The (row axis, column axis) of the heatmaps, and the panels (value indices of the other
/// axes) — every cell belongs to exactly one panel.
struct Layout {
    rows: Option<usize>,
    cols: Option<usize>,
    panels: Vec<Vec<(usize, usize)>>,
}

fn layout(s: &Summary, axes: &[super::plan::Axis]) -> Layout {
    let rows = (!axes.is_empty()).then_some(0);
    let cols = (axes.len() > 1).then_some(1);
    let mut panels: BTreeMap<Vec<(usize, usize)>, ()> = BTreeMap::new();
    for c in &s.cells {
        let key: Vec<(usize, usize)> = c
            .cell
            .at
            .iter()
            .enumerate()
            .filter(|(k, _)| Some(*k) != rows && Some(*k) != cols)
            .map(|(k, v)| (k, *v))
            .collect();
        panels.insert(key, ());
    }
    Layout {
        rows,
        cols,
        panels: panels.into_keys().collect(),
    }
}

fn in_panel(c: &CellSummary, panel: &[(usize, usize)]) -> bool {
    panel.iter().all(|(k, v)| c.cell.at.get(*k) == Some(v))
}

/// One heatmap panel as SVG: `value` gives (fill, text lines) per cell.
fn heatmap_svg(
    s: &Summary,
    axes: &[super::plan::Axis],
    lay: &Layout,
    panel: &[(usize, usize)],
    value: &dyn Fn(&CellSummary) -> (String, Vec<String>),
) -> String {
    let nr = lay.rows.map_or(1, |r| axes[r].values.len());
    let nc = lay.cols.map_or(1, |c| axes[c].values.len());
    let (cw, ch, left, top) = (150.0, 56.0, 150.0, 28.0);
    let (w, h) = (left + cw * nc as f64 + 10.0, top + ch * nr as f64 + 10.0);
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let label = |a: usize, i: usize| -> String {
        let v = axes[a].values[i].to_string();
        if v.is_empty() {
            "(none)".into()
        } else {
            v
        }
    };
    let corner = match (lay.rows, lay.cols) {
        (Some(r), Some(c)) => format!("{} ↓  {} →", axes[r].name, axes[c].name),
        (Some(r), None) => format!("{} ↓", axes[r].name),
        _ => String::new(),
    };
    let _ = write!(
        o,
        "<text x=\"{}\" y=\"18\" text-anchor=\"end\" fill=\"#555\">{}</text>",
        left - 6.0,
        esc(&corner)
    );
    for j in 0..nc {
        let t = lay.cols.map_or(String::new(), |c| label(c, j));
        let _ = write!(
            o,
            "<text x=\"{}\" y=\"18\" text-anchor=\"middle\">{}</text>",
            left + cw * (j as f64 + 0.5),
            esc(&t)
        );
    }
    for i in 0..nr {
        let t = lay.rows.map_or(String::new(), |r| label(r, i));
        let _ = write!(
            o,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            top + ch * (i as f64 + 0.5) + 4.0,
            esc(&t)
        );
    }
    for c in s.cells.iter().filter(|c| in_panel(c, panel)) {
        let i = lay.rows.map_or(0, |r| c.cell.at[r]);
        let j = lay.cols.map_or(0, |k| c.cell.at[k]);
        let (fill, lines) = value(c);
        let (x, y) = (left + cw * j as f64, top + ch * i as f64);
        let _ = write!(
            o,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{cw}\" height=\"{ch}\" fill=\"{fill}\" stroke=\"#fff\"><title>{}</title></rect>",
            esc(&c.cell.label)
        );
        for (k, l) in lines.iter().enumerate() {
            let _ = write!(
                o,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#000\" stroke=\"#fff\" stroke-width=\"3\" paint-order=\"stroke\"{}>{}</text>",
                x + cw / 2.0,
                y + 22.0 + 16.0 * k as f64,
                if k == 0 { " font-weight=\"bold\"" } else { "" },
                esc(l)
            );
        }
    }
    o.push_str("</svg>");
    o
}

fn panel_title(axes: &[super::plan::Axis], panel: &[(usize, usize)]) -> String {
    panel
        .iter()
        .map(|(k, v)| format!("{} = {}", axes[*k].name, axes[*k].values[*v]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Heatmaps of one metric (median, CI in each cell).
fn heatmaps(s: &Summary, axes: &[super::plan::Axis], metric: &str) -> String {
    let lay = layout(s, axes);
    let vals: Vec<f64> = s
        .cells
        .iter()
        .filter_map(|c| c.metrics.get(metric).map(|f| f.median))
        .filter(|x| x.is_finite())
        .collect();
    let (lo, hi) = vals
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    let mut out = String::new();
    for p in &lay.panels {
        let svg = heatmap_svg(s, axes, &lay, p, &|c| match c.metrics.get(metric) {
            Some(f) => (
                colour(if hi > lo {
                    (f.median - lo) / (hi - lo)
                } else {
                    0.5
                }),
                vec![
                    format!("{}{}", fmt(f.median), if c.unstable { " !" } else { "" }),
                    format!("[{}, {}]", fmt(f.ci_low), fmt(f.ci_high)),
                ],
            ),
            None => ("#eee".into(), vec!["no data".into()]),
        });
        let _ = write!(
            out,
            "<figure><figcaption>{}</figcaption>{svg}</figure>",
            esc(&panel_title(axes, p))
        );
    }
    out
}

/// Box plot of one metric over every cell.
fn boxes(s: &Summary, results: &[RunResult], metric: &str) -> String {
    let per: Vec<(&CellSummary, Vec<f64>)> = s
        .cells
        .iter()
        .map(|c| {
            let v: Vec<f64> = results
                .iter()
                .filter(|r| r.cell == c.cell.index && r.ok)
                .filter_map(|r| r.metrics.get(metric).copied())
                .collect();
            (c, v)
        })
        .collect();
    let all: Vec<f64> = per.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    if all.is_empty() {
        return String::new();
    }
    let (lo, hi) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let (row, left, width) = (22.0, 330.0, 420.0);
    let h = row * per.len() as f64 + 30.0;
    let x = |v: f64| left + (v - lo) / span * width;
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">",
        left + width + 20.0
    );
    for (i, (c, v)) in per.iter().enumerate() {
        let y = 10.0 + row * i as f64;
        let _ = write!(
            o,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 8.0,
            y + 12.0,
            esc(&c.cell.label)
        );
        if let Some(f) = c.metrics.get(metric) {
            let (mn, mx) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
            let _ = write!(
                o,
                "<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#555\"/>\
                 <rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"14\" fill=\"#9ecae1\" stroke=\"#3182bd\"/>\
                 <line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#08306b\" stroke-width=\"2\"/>",
                x(mn),
                x(mx),
                y + 8.0,
                y + 8.0,
                x(f.q1),
                y + 1.0,
                (x(f.q3) - x(f.q1)).max(1.0),
                x(f.median),
                x(f.median),
                y,
                y + 16.0
            );
            for p in v {
                let _ = write!(
                    o,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"2\" fill=\"#d62728\"/>",
                    x(*p),
                    y + 8.0
                );
            }
        }
    }
    let _ = write!(
        o,
        "<text x=\"{left}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text></svg>",
        h - 4.0,
        fmt(lo),
        left + width,
        h - 4.0,
        fmt(hi)
    );
    o
}

/// Throughput against delay (one point per run) when a sweep measured both.
fn scatter(results: &[RunResult]) -> String {
    let pts: Vec<(f64, f64)> = results
        .iter()
        .filter(|r| r.ok)
        .filter_map(|r| {
            let t = r
                .metrics
                .get("tcp.goodput_mbps")
                .or(r.metrics.get("iperf3.tcp_mbps"))?;
            let d = r.metrics.get("udp.fwd_delay_p99_ms")?;
            Some((*d, *t))
        })
        .collect();
    if pts.is_empty() {
        return String::new();
    }
    let mx = pts.iter().fold(0.0f64, |a, p| a.max(p.0)).max(1e-9);
    let my = pts.iter().fold(0.0f64, |a, p| a.max(p.1)).max(1e-9);
    let (w, h, l, b) = (520.0, 320.0, 50.0, 30.0);
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\
         <line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#000\"/><line x1=\"{l}\" y1=\"10\" x2=\"{l}\" y2=\"{}\" stroke=\"#000\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">one-way delay p99 (ms), max {}</text>\
         <text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">goodput (Mbit/s), max {}</text>",
        h - b,
        w - 10.0,
        h - b,
        h - b,
        (w + l) / 2.0,
        h - 6.0,
        fmt(mx),
        h / 2.0,
        h / 2.0,
        fmt(my)
    );
    for (d, t) in pts {
        let _ = write!(
            o,
            "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"#3182bd\"/>",
            l + d / mx * (w - l - 20.0),
            h - b - t / my * (h - b - 20.0)
        );
    }
    o.push_str("</svg>");
    o
}

fn figures_table(s: &Summary) -> String {
    let mut o = String::from(
        "<table><tr><th>cell</th><th>runs ok</th><th>metric</th><th>median</th><th>95% CI</th><th>IQR</th><th>CV</th><th>drift p</th><th>configured delay (ms)</th></tr>",
    );
    for c in &s.cells {
        for (k, f) in &c.metrics {
            let mark = if k == &s.primary && c.unstable {
                " class=\"bad\""
            } else {
                ""
            };
            let _ = write!(
                o,
                "<tr{mark}><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>[{}, {}]</td><td>{}</td><td>{:.3}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.cell.label),
                c.runs - c.failed,
                c.runs,
                esc(k),
                fmt(f.median),
                fmt(f.ci_low),
                fmt(f.ci_high),
                fmt(f.iqr),
                f.cv,
                if f.trend_p < 0.05 {
                    format!("<b>{:.3}</b>", f.trend_p)
                } else {
                    format!("{:.3}", f.trend_p)
                },
                c.configured_delay_ms.map_or("–".into(), fmt)
            );
        }
    }
    o.push_str("</table>");
    o
}

fn metrics_of(s: &Summary) -> Vec<String> {
    let mut m: Vec<String> = s
        .cells
        .iter()
        .flat_map(|c| c.metrics.keys().cloned())
        .collect();
    m.sort();
    m.dedup();
    // The primary metric first.
    if let Some(i) = m.iter().position(|x| *x == s.primary) {
        let p = m.remove(i);
        m.insert(0, p);
    }
    m
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1200px}figure{display:inline-block;margin:0 1em 1em 0}figcaption{font-size:12px;color:#444}table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child,td:nth-child(3){text-align:left}tr.bad{background:#fdd}.note{color:#555;font-size:13px}";

/// The report of one sweep.
pub fn render(l: &Loaded) -> String {
    let s = &l.summary;
    let axes = &l.manifest.plan.file.axes;
    let mut o = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>wirelab sweep</title><style>{STYLE}</style></head><body><h1>wirelab sweep</h1>\
         <p class=\"note\">{} cells × {} repetitions; {} runs recorded ({} failed); master seed {}; order {:?}; kernel {}, {} CPUs. \
         Cells marked ! vary more than CV {} in the primary metric ({}); drift p &lt; 0.05 (Mann-Kendall over the repetitions in run order) is bold.</p>",
        l.manifest.plan.cells.len(),
        l.manifest.plan.file.repetitions,
        s.runs,
        s.failed,
        l.manifest.plan.file.seed,
        l.manifest.plan.file.order,
        esc(&l.manifest.host.kernel),
        l.manifest.host.cpus,
        l.manifest.plan.file.unstable_cv,
        esc(&s.primary)
    );
    for m in metrics_of(s) {
        let _ = write!(
            o,
            "<h2>{}</h2><p class=\"note\">median of the repetitions, [95% bootstrap CI]</p>{}<div>{}</div>",
            esc(&m),
            heatmaps(s, axes, &m),
            boxes(s, &l.results, &m)
        );
    }
    o.push_str(&cdf_chart(&l.cdfs));
    let sc = scatter(&l.results);
    if !sc.is_empty() {
        let _ = write!(o, "<h2>Goodput against delay (one point per run)</h2>{sc}");
    }
    let _ = write!(
        o,
        "<h2>Figures</h2>{}<h2>Sweep file</h2><pre>{}</pre></body></html>",
        figures_table(s),
        esc(&l.manifest.file_text)
    );
    o
}

/// Whether two CIs overlap.
fn overlap(a: &Figures, b: &Figures) -> bool {
    a.ci_low <= b.ci_high && b.ci_low <= a.ci_high
}

/// Two sweeps of the same grid: per metric, B − A in each cell, cells whose CIs do not
/// overlap marked ≠.
pub fn render_diff(a: &Loaded, b: &Loaded) -> Result<String> {
    let (sa, sb) = (&a.summary, &b.summary);
    let la: Vec<&str> = sa.cells.iter().map(|c| c.cell.label.as_str()).collect();
    let lb: Vec<&str> = sb.cells.iter().map(|c| c.cell.label.as_str()).collect();
    if la != lb {
        bail!("the two sweeps have different grids (cells {la:?} vs {lb:?})");
    }
    let axes = &a.manifest.plan.file.axes;
    let mut o = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>wirelab sweep comparison</title><style>{STYLE}</style></head><body><h1>wirelab sweep: B − A</h1>\
         <p class=\"note\">Each cell: median(B) − median(A); ≠ marks cells whose 95% CIs do not overlap. A: {} runs, B: {} runs.</p>",
        sa.runs, sb.runs
    );
    for m in metrics_of(sa) {
        let diffs: Vec<f64> = sa
            .cells
            .iter()
            .zip(&sb.cells)
            .filter_map(|(x, y)| Some(y.metrics.get(&m)?.median - x.metrics.get(&m)?.median))
            .collect();
        let span = diffs.iter().fold(0.0f64, |a, d| a.max(d.abs())).max(1e-12);
        let lay = layout(sa, axes);
        let _ = write!(o, "<h2>{}</h2>", esc(&m));
        for p in &lay.panels {
            let svg = heatmap_svg(sa, axes, &lay, p, &|c| {
                let other = sb.cells.iter().find(|y| y.cell.index == c.cell.index);
                match (c.metrics.get(&m), other.and_then(|y| y.metrics.get(&m))) {
                    (Some(x), Some(y)) => {
                        let d = y.median - x.median;
                        (
                            diverging(d / span),
                            vec![
                                format!("{}{}", fmt(d), if overlap(x, y) { "" } else { " ≠" }),
                                format!("{} → {}", fmt(x.median), fmt(y.median)),
                            ],
                        )
                    }
                    _ => ("#eee".into(), vec!["no data".into()]),
                }
            });
            let _ = write!(
                o,
                "<figure><figcaption>{}</figcaption>{svg}</figure>",
                esc(&panel_title(axes, p))
            );
        }
    }
    o.push_str("</body></html>");
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_span_the_scale() {
        assert_eq!(colour(0.0), "rgb(68,1,84)");
        assert_eq!(colour(1.0), "rgb(253,231,37)");
        assert_eq!(diverging(0.0), "rgb(255,255,255)");
        assert_eq!(diverging(1.0), "rgb(255,100,100)");
        assert_eq!(diverging(-1.0), "rgb(100,100,255)");
        assert_eq!(colour(f64::NAN), colour(0.0));
    }
}
