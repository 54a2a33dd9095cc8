//! Charts for `wirelab report`, drawn with plotters: SVG (inline in the HTML and as files)
//! and PNG (bitmap backend, text with a system TrueType font).
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};
use plotters::{coord::Shift, prelude::*};

pub const W: u32 = 860;
pub const H: u32 = 380;

#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

impl Series {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: label.into(),
            points: points
                .into_iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect(),
            dashed: false,
        }
    }
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    Lines(Vec<Series>),
    /// Categories on x; one bar per (group, category).
    Bars {
        categories: Vec<String>,
        groups: Vec<(String, Vec<f64>)>,
    },
}

#[derive(Debug, Clone)]
pub struct Chart {
    /// File-name-safe id, also the HTML element id (`plot-ID`).
    pub id: String,
    pub title: String,
    pub x: String,
    pub y: String,
    pub kind: Kind,
    /// Vertical markers on a time axis (x, label): the live changes of the run.
    pub markers: Vec<(f64, String)>,
}

impl Chart {
    pub fn lines(id: &str, title: &str, x: &str, y: &str, series: Vec<Series>) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            x: x.into(),
            y: y.into(),
            kind: Kind::Lines(
                series
                    .into_iter()
                    .filter(|s| !s.points.is_empty())
                    .collect(),
            ),
            markers: vec![],
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.kind {
            Kind::Lines(s) => s.is_empty(),
            Kind::Bars { categories, .. } => categories.is_empty(),
        }
    }

    /// Overlay: add `other`'s series (compare mode).
    pub fn merge(&mut self, other: Chart) {
        self.markers.extend(other.markers);
        match (&mut self.kind, other.kind) {
            (Kind::Lines(a), Kind::Lines(b)) => a.extend(b),
            (
                Kind::Bars { categories, groups },
                Kind::Bars {
                    categories: c2,
                    groups: g2,
                },
            ) => {
                // Union of categories; missing values are 0.
                let mut cats = categories.clone();
                for c in &c2 {
                    if !cats.contains(c) {
                        cats.push(c.clone());
                    }
                }
                let remap = |cs: &[String], vals: &[f64]| -> Vec<f64> {
                    cats.iter()
                        .map(|c| {
                            cs.iter()
                                .position(|x| x == c)
                                .and_then(|i| vals.get(i).copied())
                                .unwrap_or(0.0)
                        })
                        .collect()
                };
                let mut ng: Vec<(String, Vec<f64>)> = groups
                    .iter()
                    .map(|(n, v)| (n.clone(), remap(categories, v)))
                    .collect();
                ng.extend(g2.iter().map(|(n, v)| (n.clone(), remap(&c2, v))));
                *categories = cats;
                *groups = ng;
            }
            _ => {}
        }
    }
}

static FONT: OnceLock<Result<(), String>> = OnceLock::new();

/// Register a TrueType font for chart text (plotters needs one for layout, also for SVG).
pub fn ensure_font() -> Result<()> {
    let r = FONT.get_or_init(|| {
        let mut candidates: Vec<std::path::PathBuf> = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        ]
        .iter()
        .map(Into::into)
        .collect();
        if let Ok(rd) = std::fs::read_dir("/usr/share/fonts/truetype") {
            for d in rd.flatten() {
                if let Ok(files) = std::fs::read_dir(d.path()) {
                    for f in files.flatten() {
                        if f.path().extension().is_some_and(|e| e == "ttf") {
                            candidates.push(f.path());
                        }
                    }
                }
            }
        }
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err("no TrueType font found under /usr/share/fonts (install fonts-dejavu-core)".into())
    });
    r.clone().map_err(|e| anyhow!(e))
}

fn e<E: std::fmt::Debug>(x: E) -> anyhow::Error {
    anyhow!("drawing: {x:?}")
}

/// The series legend, top right, the same on every chart.
fn legend<'a, DB, CT>(ch: &mut ChartContext<'a, DB, CT>) -> Result<()>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    ch.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(e)
}

fn bounds(series: &[Series]) -> (f64, f64, f64, f64) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0f64, f64::MIN);
    for s in series {
        for (x, y) in &s.points {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
            y0 = y0.min(*y);
            y1 = y1.max(*y);
        }
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    (x0, x1, y0, y1 + (y1 - y0) * 0.08)
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &Chart) -> Result<()> {
    root.fill(&WHITE).map_err(e)?;
    match &c.kind {
        Kind::Lines(series) => {
            let (x0, x1, y0, y1) = bounds(series);
            let mut ch = ChartBuilder::on(root)
                .caption(&c.title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(64)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(e)?;
            ch.configure_mesh()
                .x_desc(&c.x)
                .y_desc(&c.y)
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(e)?;
            for (i, s) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let style = color.stroke_width(2);
                let pts = s.points.clone();
                let anno = if s.dashed {
                    ch.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
                        .map_err(e)?
                } else {
                    ch.draw_series(LineSeries::new(pts.clone(), style))
                        .map_err(e)?
                };
                anno.label(&s.label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
                if pts.len() <= 30 {
                    ch.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                        .map_err(e)?;
                }
            }
            // Live changes: a thin vertical line each; labels on at most ~12 of them (every
            // k-th), staggered in height so neighbours do not overlap.
            let shown: Vec<&(f64, String)> = c
                .markers
                .iter()
                .filter(|(x, _)| *x >= x0 && *x <= x1)
                .collect();
            let every = shown.len().div_ceil(12).max(1);
            let grey = RGBColor(120, 120, 120);
            for (i, (x, label)) in shown.iter().enumerate() {
                ch.draw_series(DashedLineSeries::new(
                    [(*x, y0), (*x, y1)],
                    3,
                    3,
                    grey.stroke_width(1),
                ))
                .map_err(e)?;
                if i % every == 0 {
                    let row = (i / every) % 3;
                    let y = y1 - (y1 - y0) * (0.03 + 0.06 * row as f64);
                    ch.draw_series(std::iter::once(Text::new(
                        label.clone(),
                        (*x, y),
                        ("sans-serif", 11).into_font().color(&grey),
                    )))
                    .map_err(e)?;
                }
            }
            legend(&mut ch)?;
        }
        Kind::Bars { categories, groups } => {
            let n = categories.len();
            let ymax = groups
                .iter()
                .flat_map(|(_, v)| v.iter().copied())
                .fold(0.0f64, f64::max)
                .max(1.0)
                * 1.1;
            let mut ch = ChartBuilder::on(root)
                .caption(&c.title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(64)
                .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0.0..ymax)
                .map_err(e)?;
            let fmt = |x: &f64| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    categories.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            };
            ch.configure_mesh()
                .x_desc(&c.x)
                .y_desc(&c.y)
                .x_labels(n.max(1) + 1)
                .x_label_formatter(&fmt)
                .disable_x_mesh()
                .draw()
                .map_err(e)?;
            let g = groups.len().max(1) as f64;
            let width = 0.8 / g;
            for (gi, (name, vals)) in groups.iter().enumerate() {
                let color = Palette99::pick(gi).to_rgba();
                let left = -0.4 + gi as f64 * width;
                ch.draw_series(vals.iter().enumerate().map(|(i, v)| {
                    let x = i as f64 + left;
                    Rectangle::new([(x, 0.0), (x + width * 0.95, *v)], color.filled())
                }))
                .map_err(e)?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            }
            legend(&mut ch)?;
        }
    }
    root.present().map_err(e)?;
    Ok(())
}

pub fn svg(c: &Chart) -> Result<String> {
    ensure_font()?;
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (W, H)).into_drawing_area();
        draw(&root, c)?;
    }
    if !s.contains("<svg") {
        bail!("chart {}: no SVG produced", c.id);
    }
    Ok(s)
}

pub fn png(c: &Chart) -> Result<Vec<u8>> {
    ensure_font()?;
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        draw(&root, c)?;
    }
    let mut out = vec![];
    {
        let mut enc = png::Encoder::new(&mut out, W, H);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&buf)?;
    }
    Ok(out)
}
