//! `wirelab report DIR [DIR2]`: one self-contained HTML file (inline SVG, CSS and a few lines
//! of JS; nothing fetched) from a run directory written by `--record`, plus each plot as SVG
//! and PNG beside it. With two directories: the same plots overlaid and a table of
//! differences.
//!
//! Every file is validated first: a line that is not JSON, a truncated last line, a gap in
//! the `seq` numbers, a series shorter than its final document says, or a source that never
//! finished is an error naming the file and line — unless `--allow-partial`, which still
//! reports it in a banner at the top of the report.
pub mod flows;
pub mod html;
pub mod lb;
pub mod plot;
pub mod smb;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::record;
use crate::{probe, swarm, wan};
use plot::{Chart, Kind, Series};

/// One recording command's files.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub tool: String,
    pub config: record::ConfigDoc,
    /// The interval lines as written (the generic plots of tools without their own read
    /// any numeric field), and the stamp every line has.
    pub series: Vec<Value>,
    pub stamps: Vec<LineStamp>,
    /// The series read back as the tool's own line type (tools that have one).
    pub typed: Typed,
    pub changes: Vec<Value>,
    pub fin: Option<record::FinalDoc>,
}

/// What every record line carries whatever its tool: its number, its time and (interval
/// lines) the interval's length.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct LineStamp {
    pub seq: u64,
    pub unix: f64,
    #[serde(default)]
    pub interval_s: Option<f64>,
}

/// A series decoded into the type its tool wrote: a line of another shape is an error
/// naming the file and line, never a silent zero in a plot.
#[derive(Debug, Clone)]
pub enum Typed {
    /// The emulator's lines, and its live changes (applied and refused; each has its own
    /// `unix`, the time it was applied, which the record's stamp keeps; the n-th is `seq` n).
    Wan(
        Vec<record::Stamped<crate::wan::Line>>,
        Vec<crate::wan::ChangeEntry>,
    ),
    /// The firewall's intervals, and its reloads.
    Fw(
        Vec<record::Stamped<crate::fw::Interval>>,
        Vec<record::Stamped<crate::fw::ReloadChange>>,
    ),
    /// The UDP probe's intervals, and its final result when the run finished.
    ProbeUdp(
        Vec<record::Stamped<probe::UdpInterval>>,
        Option<Box<probe::UdpRecord>>,
    ),
    ProbeTcp(Vec<record::Stamped<probe::TcpInterval>>),
    Inspect(Vec<record::Stamped<crate::inspect::Interval>>),
    SwarmRun(
        Vec<record::Stamped<swarm::run::Sample>>,
        Option<Box<swarm::run::RunRecord>>,
    ),
    SwarmConnect(
        Vec<record::Stamped<swarm::connect::ConnectSample>>,
        Option<Box<swarm::connect::ConnectSummary>>,
    ),
    /// The balancer's intervals, health transitions and reloads, and final counters.
    Lb(Box<lb::LbLines>),
    /// The flow table's intervals (top rows) and every flow at the end.
    Flows(Box<flows::FlowLines>),
    /// The SMB view's server-wide intervals and its final line.
    Smb(Box<smb::SmbLines>),
    /// Tools whose plots read the lines generically.
    Other,
}

impl Typed {
    fn decode(
        tool: &str,
        path: &Path,
        series: &[Value],
        changes: &[Value],
        fin: Option<&record::FinalDoc>,
    ) -> Result<Self> {
        fn all<T: serde::de::DeserializeOwned>(path: &Path, series: &[Value]) -> Result<Vec<T>> {
            series
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    T::deserialize(l).with_context(|| {
                        format!(
                            "{} line {}: not a {} line",
                            path.display(),
                            i + 1,
                            std::any::type_name::<T>()
                        )
                    })
                })
                .collect()
        }
        /// The final document's `result`, as the tool's own type.
        fn result<T: serde::de::DeserializeOwned>(
            path: &Path,
            fin: Option<&record::FinalDoc>,
        ) -> Result<Option<Box<T>>> {
            fin.map(|f| {
                T::deserialize(&f.result).map(Box::new).with_context(|| {
                    format!(
                        "{}: the final result is not a {}",
                        path.with_extension("")
                            .with_extension("final.json")
                            .display(),
                        std::any::type_name::<T>()
                    )
                })
            })
            .transpose()
        }
        let changes_path = path.with_extension("").with_extension("changes.jsonl");
        Ok(match tool {
            "wan" => Typed::Wan(all(path, series)?, all(&changes_path, changes)?),
            "fw" => Typed::Fw(all(path, series)?, all(&changes_path, changes)?),
            "probe-udp" => Typed::ProbeUdp(all(path, series)?, result(path, fin)?),
            "probe-tcp" => Typed::ProbeTcp(all(path, series)?),
            "inspect" => Typed::Inspect(all(path, series)?),
            "swarm-run" => Typed::SwarmRun(all(path, series)?, result(path, fin)?),
            "swarm-connect" => Typed::SwarmConnect(all(path, series)?, result(path, fin)?),
            "lb" => Typed::Lb(Box::new(lb::LbLines {
                intervals: all(path, series)?,
                changes: all(&changes_path, changes)?,
                fin: result(path, fin)?,
            })),
            "flows" => Typed::Flows(Box::new(flows::FlowLines {
                intervals: all(path, series)?,
                fin: result(path, fin)?,
            })),
            "smb" => Typed::Smb(Box::new(smb::SmbLines {
                intervals: all(path, series)?,
                fin: result(path, fin)?,
            })),
            _ => Typed::Other,
        })
    }
}

impl Source {
    pub fn started(&self) -> f64 {
        self.config.started_unix
    }
}

#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub sources: Vec<Source>,
    /// summary.json as recomputed from the finished sources.
    pub summary: record::Summary,
    /// What is missing or damaged (only non-empty with `allow_partial`).
    pub problems: Vec<String>,
}

impl Run {
    pub fn t0(&self) -> f64 {
        self.sources
            .iter()
            .map(|s| s.started())
            .fold(f64::MAX, f64::min)
    }
}

/// The good lines of a JSON-lines file with their stamps, and the first problem (if any).
type Lines = (Vec<Value>, Vec<LineStamp>, Option<String>);

/// Read a JSON-lines file strictly: every line whole, valid, stamped and numbered in order.
fn read_jsonl(p: &Path) -> Result<Lines> {
    if !p.exists() {
        return Ok((vec![], vec![], None));
    }
    let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let (mut out, mut stamps) = (vec![], vec![]);
    let n_lines = t.lines().count();
    for (i, line) in t.lines().enumerate() {
        let ln = i + 1;
        if ln == n_lines && !t.ends_with('\n') {
            return Ok((
                out,
                stamps,
                Some(format!(
                    "{}: line {ln}: truncated (the last line has no newline: the file was cut while being written)",
                    p.display()
                )),
            ));
        }
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return Ok((
                    out,
                    stamps,
                    Some(format!(
                        "{}: line {ln} column {}: not valid JSON: {e}",
                        p.display(),
                        e.column()
                    )),
                ))
            }
        };
        let stamp = match LineStamp::deserialize(&v) {
            Ok(s) => s,
            Err(e) => {
                return Ok((
                    out,
                    stamps,
                    Some(format!(
                        "{}: line {ln}: not a record line: {e}",
                        p.display()
                    )),
                ))
            }
        };
        let want = out.len() as u64 + 1;
        if stamp.seq != want {
            return Ok((
                out,
                stamps,
                Some(format!(
                    "{}: line {ln}: seq {} where {want} was expected (lines missing, repeated or out of order)",
                    p.display(),
                    stamp.seq
                )),
            ));
        }
        out.push(v);
        stamps.push(stamp);
    }
    Ok((out, stamps, None))
}

/// Load and validate a run directory.
pub fn load(dir: &Path, allow_partial: bool) -> Result<Run> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "{}: a file, not a run directory (give the DIR a command's --record wrote)",
            dir.display()
        );
    }
    if !dir.is_dir() {
        bail!("{}: no such run directory", dir.display());
    }
    let mut names = vec![];
    for e in std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let n = e.file_name().to_string_lossy().to_string();
        if let Some(s) = n.strip_suffix(".config.json") {
            names.push(s.to_string());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!(
            "{}: not a run directory (no NAME.config.json: record one with --record {})",
            dir.display(),
            dir.display()
        );
    }
    let mut problems = vec![];
    let mut sources = vec![];
    for name in names {
        let cp = dir.join(format!("{name}.config.json"));
        let config: record::ConfigDoc = record::read_doc(&cp)?;
        let sp = dir.join(format!("{name}.series.jsonl"));
        let (series, stamps, prob) = read_jsonl(&sp)?;
        if let Some(p) = prob {
            problems.push(p);
        }
        let (changes, _, prob) = read_jsonl(&dir.join(format!("{name}.changes.jsonl")))?;
        if let Some(p) = prob {
            problems.push(p);
        }
        let fp = dir.join(format!("{name}.final.json"));
        let fin = if fp.exists() {
            let f: record::FinalDoc = record::read_doc(&fp)?;
            let n = f.run.intervals;
            if n != series.len() as u64 {
                problems.push(format!(
                    "{}: {} good interval lines, but {} says {n} were written (line {} onwards missing or damaged)",
                    sp.display(),
                    series.len(),
                    fp.display(),
                    series.len() + 1
                ));
            }
            let nc = f.run.changes;
            if nc != changes.len() as u64 {
                problems.push(format!(
                    "{name}.changes.jsonl: {} good change lines, but {} says {nc}",
                    changes.len(),
                    fp.display()
                ));
            }
            Some(f)
        } else {
            problems.push(format!(
                "{}: missing: source {name} never finished (killed or still running); its series has {} intervals",
                fp.display(),
                series.len()
            ));
            None
        };
        let tool = config.tool.clone();
        let typed = Typed::decode(&tool, &sp, &series, &changes, fin.as_ref())?;
        sources.push(Source {
            name,
            tool,
            config,
            series,
            stamps,
            typed,
            changes,
            fin,
        });
    }
    problems.dedup();
    if !problems.is_empty() && !allow_partial {
        bail!(
            "{} is incomplete or damaged:\n  {}\n(use --allow-partial to report what is there, marked as partial)",
            dir.display(),
            problems.join("\n  ")
        );
    }
    let sp = dir.join("summary.json");
    if sp.exists() {
        record::read_doc::<record::Summary>(&sp)?;
    } else if sources.iter().any(|s| s.fin.is_some()) {
        let m = format!("{}: missing", sp.display());
        if !allow_partial {
            bail!("{m} (use --allow-partial to report anyway)");
        }
        problems.push(m);
    }
    let finals: Vec<&record::FinalDoc> = sources.iter().filter_map(|s| s.fin.as_ref()).collect();
    let unfinished: Vec<String> = sources
        .iter()
        .filter(|s| s.fin.is_none())
        .map(|s| s.name.clone())
        .collect();
    let summary = record::summary_of(&finals, &unfinished);
    Ok(Run {
        dir: dir.to_path_buf(),
        sources,
        summary,
        problems,
    })
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// x = seconds since the run's first start, from each line's wall-clock stamp.
fn xs(src: &Source, t0: f64) -> Vec<f64> {
    src.stamps.iter().map(|s| s.unix - t0).collect()
}

/// (time, value) points of one numeric field of every series line (`field` picks it out of
/// a line); lines without it are skipped.
fn points(src: &Source, x: &[f64], field: impl Fn(&Value) -> &Value) -> Vec<(f64, f64)> {
    src.series
        .iter()
        .enumerate()
        .filter_map(|(i, l)| num(field(l)).map(|y| (x[i], y)))
        .collect()
}

fn dts(src: &Source) -> Vec<f64> {
    let mut prev = src.started();
    src.stamps
        .iter()
        .map(|s| {
            let d = s.interval_s.unwrap_or(s.unix - prev);
            prev = s.unix;
            d.max(1e-3)
        })
        .collect()
}

/// A counter of a wan class row.
type Field = fn(&wan::ClassReport) -> u64;

fn wan_charts(src: &Source, t0: f64, p: &str) -> Vec<Chart> {
    let Typed::Wan(lines, _) = &src.typed else {
        return vec![];
    };
    let x = xs(src, t0);
    let dt = dts(src);
    let mut delay = vec![];
    let mut tput = vec![];
    let mut drops = vec![];
    let mut queue = vec![];
    for d in wan::DIRS {
        type Pick<'a> = &'a dyn Fn(&[&wan::ClassReport], f64) -> Option<f64>;
        let pick = |f: Pick<'_>| -> Vec<(f64, f64)> {
            lines
                .iter()
                .enumerate()
                .filter_map(|(i, l)| {
                    let r: Vec<&wan::ClassReport> =
                        l.line.classes.iter().filter(|r| r.dir == d).collect();
                    f(&r, dt[i]).map(|y| (x[i], y))
                })
                .collect()
        };
        let def = |r: &[&wan::ClassReport], k: fn(&wan::ClassReport) -> Option<f64>| {
            r.iter().find(|r| r.class == "default").and_then(|r| k(r))
        };
        let sum =
            |r: &[&wan::ClassReport], k: Field| -> f64 { r.iter().map(|r| k(r) as f64).sum() };
        delay.push(Series::new(
            format!("{p}{d} p50"),
            pick(&|r, _| def(r, |c| c.delay_p50_ms)),
        ));
        delay.push(
            Series::new(
                format!("{p}{d} p99"),
                pick(&|r, _| def(r, |c| c.delay_p99_ms)),
            )
            .dashed(),
        );
        let q = pick(&|r, _| def(r, |c| c.queue_delay_p50_ms));
        if q.iter().any(|(_, y)| *y > 0.0) {
            delay.push(Series::new(format!("{p}{d} rate queue p50"), q).dashed());
        }
        tput.push(Series::new(
            format!("{p}{d} in"),
            pick(&|r, dt| Some(sum(r, |c| c.rx_bytes) * 8.0 / dt / 1e6)),
        ));
        let causes: [(Field, &str); 4] = [
            (|c| c.drops_loss, "loss"),
            (|c| c.drops_queue, "queue"),
            (|c| c.drops_blackhole, "blackhole"),
            (|c| c.drops_link_down, "link down"),
        ];
        for (k, cause) in causes {
            let s = pick(&|r, _| Some(sum(r, k)));
            if s.iter().any(|(_, y)| *y > 0.0) {
                drops.push(Series::new(format!("{p}{d} {cause}"), s));
            }
        }
        let rd = pick(&|r, _| Some(sum(r, |c| c.reordered)));
        if rd.iter().any(|(_, y)| *y > 0.0) {
            drops.push(Series::new(format!("{p}{d} reordered"), rd).dashed());
        }
        queue.push(Series::new(
            format!("{p}{d} now"),
            pick(&|r, _| Some(sum(r, |c| c.queue_now))),
        ));
        queue.push(
            Series::new(
                format!("{p}{d} max"),
                pick(&|r, _| Some(sum(r, |c| c.queue_max))),
            )
            .dashed(),
        );
    }
    if drops.is_empty() {
        // Keep the plot (and its meaning: none) rather than drop it silently.
        drops.push(Series::new(
            format!("{p}drops (none)"),
            x.iter().map(|x| (*x, 0.0)).collect(),
        ));
    }
    vec![
        Chart::lines(
            "wan-delay",
            "wan: emulated delay (and the rate queue) per interval, default class",
            "time (s)",
            "delay (ms)",
            delay,
        ),
        Chart::lines(
            "wan-throughput",
            "wan: throughput into the emulator",
            "time (s)",
            "Mbit/s",
            tput,
        ),
        Chart::lines(
            "wan-drops",
            "wan: drops and reordering per interval",
            "time (s)",
            "packets",
            drops,
        ),
        Chart::lines(
            "wan-queue",
            "wan: queue depth",
            "time (s)",
            "packets queued",
            queue,
        ),
    ]
}

/// A histogram's (value, count) points sorted by value as a CDF: (value, % at or below).
pub(crate) fn cdf(h: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let total: f64 = h.iter().map(|(_, c)| c).sum();
    if total <= 0.0 {
        return vec![];
    }
    let mut acc = 0.0;
    h.iter()
        .map(|(v, c)| {
            acc += c;
            (*v, acc / total * 100.0)
        })
        .collect()
}

fn binned(h: &[(f64, f64)], bins: usize) -> Vec<(f64, f64)> {
    let total: f64 = h.iter().map(|(_, c)| c).sum();
    if h.is_empty() || total <= 0.0 {
        return vec![];
    }
    // Bin between the 0.1st and 99.9th percentiles so one straggler does not flatten it.
    let c = cdf(h);
    let lo = c
        .iter()
        .find(|(_, q)| *q >= 0.1)
        .map(|x| x.0)
        .unwrap_or(h[0].0);
    let hi = c
        .iter()
        .find(|(_, q)| *q >= 99.9)
        .map(|x| x.0)
        .unwrap_or(h[h.len() - 1].0);
    let width = ((hi - lo) / bins as f64).max(1e-3);
    let mut out = vec![0.0; bins];
    for (v, n) in h {
        let i = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
        out[i] += n;
    }
    out.iter()
        .enumerate()
        .map(|(i, n)| (lo + (i as f64 + 0.5) * width, n / total * 100.0))
        .collect()
}

fn probe_udp_charts(src: &Source, t0: f64, p: &str) -> Vec<Chart> {
    let Typed::ProbeUdp(lines, fin) = &src.typed else {
        return vec![];
    };
    let x = |l: &record::Stamped<probe::UdpInterval>| l.unix - t0;
    let mut delay = vec![];
    type Pick = fn(&probe::UdpInterval) -> Option<&probe::DelayStats>;
    let dirs: [(Pick, &str); 2] = [
        (|l| l.forward.as_ref(), "a_to_b (forward)"),
        (|l| l.reverse.as_ref(), "b_to_a (reverse)"),
    ];
    for (pick, label) in dirs {
        let get = |q: fn(&probe::DelayStats) -> f64| -> Vec<(f64, f64)> {
            lines
                .iter()
                .filter_map(|l| pick(&l.line).map(|d| (x(l), q(d))))
                .collect()
        };
        delay.push(Series::new(format!("{p}{label} p50"), get(|d| d.p50)));
        delay.push(Series::new(format!("{p}{label} p99"), get(|d| d.p99)).dashed());
    }
    let mut charts = vec![Chart::lines(
        "probe-delay",
        "probe: one-way delay per interval",
        "time (s)",
        "one-way delay (ms)",
        delay,
    )];
    let Some(f) = fin else {
        return charts;
    };
    let mut c = vec![];
    let mut h = vec![];
    for (hist, label) in [
        (&f.delay_hist_ms.forward, "a_to_b (forward)"),
        (&f.delay_hist_ms.reverse, "b_to_a (reverse)"),
    ] {
        let pts: Vec<(f64, f64)> = hist.iter().map(|&(v, n)| (v, n as f64)).collect();
        c.push(Series::new(format!("{p}{label}"), cdf(&pts)));
        h.push(Series::new(format!("{p}{label}"), binned(&pts, 50)));
    }
    charts.push(Chart::lines(
        "probe-cdf",
        "probe: one-way delay CDF",
        "one-way delay (ms)",
        "% of probes at or below",
        c,
    ));
    charts.push(Chart::lines(
        "probe-histogram",
        "probe: one-way delay histogram",
        "one-way delay (ms)",
        "% of probes",
        h,
    ));
    // Loss over time: each probe without an echo, placed at its send time.
    let r = &f.report;
    let bucket = src
        .config
        .config
        .get("interval_s")
        .and_then(Value::as_f64)
        .unwrap_or(1.0)
        .max(0.01);
    if r.rate_pps > 0.0 {
        let rate = r.rate_pps;
        let nb = ((r.sent as f64 / rate) / bucket).ceil().max(1.0) as usize;
        let mut lost = vec![0.0; nb];
        for &s in &r.lost_seqs {
            let i = ((s as f64 / rate) / bucket) as usize;
            if i < nb {
                lost[i] += 1.0;
            }
        }
        let per = rate * bucket;
        let lp: Vec<(f64, f64)> = lost
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let t = f.send_start_unix - t0 + (i as f64 + 0.5) * bucket;
                (t, n / per * 100.0)
            })
            .collect();
        let reord: Vec<(f64, f64)> = lines
            .iter()
            .filter_map(|l| {
                let n = l.line.reverse.as_ref()?.count.max(1) as f64;
                Some((x(l), l.line.reordered as f64 / n * 100.0))
            })
            .collect();
        charts.push(Chart::lines(
            "probe-loss",
            "probe: loss and reordering over time",
            "time (s)",
            "% of probes",
            vec![
                Series::new(format!("{p}no echo (lost either way)"), lp),
                Series::new(format!("{p}arrived out of order"), reord).dashed(),
            ],
        ));
    }
    charts
}

/// `y` of every line, at its time since `t0`.
fn over_time<T>(lines: &[record::Stamped<T>], t0: f64, y: impl Fn(&T) -> f64) -> Vec<(f64, f64)> {
    lines.iter().map(|l| (l.unix - t0, y(&l.line))).collect()
}

fn probe_tcp_charts(src: &Source, t0: f64, p: &str) -> Vec<Chart> {
    let Typed::ProbeTcp(lines) = &src.typed else {
        return vec![];
    };
    let pts = over_time(lines, t0, |l| l.goodput_mbps);
    vec![Chart::lines(
        "tcp-goodput",
        "probe: TCP goodput per second (receiver)",
        "time (s)",
        "Mbit/s",
        vec![Series::new(format!("{p}goodput"), pts)],
    )]
}

fn inspect_charts(src: &Source, t0: f64, p: &str) -> Vec<Chart> {
    let Typed::Inspect(lines) = &src.typed else {
        return vec![];
    };
    // Every class that saw a frame (total when none did), in the order first seen.
    let mut classes: Vec<&str> = vec![];
    for l in lines {
        for (k, c) in &l.line.counts {
            if c.packets > 0 && !classes.contains(&k.as_str()) {
                classes.push(k);
            }
        }
    }
    if classes.is_empty() {
        classes.push("total");
    }
    let series = classes
        .iter()
        .map(|c| {
            let pts = lines
                .iter()
                .filter_map(|l| {
                    let n = l.line.counts.get(*c)?.packets as f64;
                    Some((l.unix - t0, n / l.line.interval_s.max(1e-3)))
                })
                .collect();
            Series::new(format!("{p}{c}"), pts)
        })
        .collect();
    vec![Chart::lines(
        "inspect-rate",
        "inspect: packets per second by class",
        "time (s)",
        "packets/s",
        series,
    )]
}

fn swarm_charts(src: &Source, t0: f64, p: &str) -> Vec<Chart> {
    let mut charts = vec![];
    // Outcomes: ok, then each failure reason.
    let outcomes = match &src.typed {
        Typed::SwarmRun(_, Some(r)) => Some((r.summary.succeeded, &r.summary.failures)),
        Typed::SwarmConnect(_, Some(s)) => Some((s.connected, &s.failures)),
        _ => None,
    };
    if let Some((ok, failures)) = outcomes {
        let mut cats = vec!["ok".to_string()];
        let mut vals = vec![f64::from(ok)];
        for (k, v) in failures {
            cats.push(k.clone());
            vals.push(f64::from(*v));
        }
        charts.push(Chart {
            id: "swarm-outcomes".into(),
            title: "swarm: client outcomes".into(),
            x: "outcome".into(),
            y: "clients".into(),
            kind: Kind::Bars {
                categories: cats,
                groups: vec![(format!("{p}clients"), vals)],
            },
            markers: vec![],
        });
    }
    match &src.typed {
        Typed::SwarmRun(lines, fin) => {
            if let Some(r) = fin {
                let mut d: Vec<f64> = r.clients.iter().map(|c| c.duration_s).collect();
                d.sort_by(|a, b| a.total_cmp(b));
                let n = d.len().max(1) as f64;
                let pts = d
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (*v, (i + 1) as f64 / n * 100.0))
                    .collect();
                charts.push(Chart::lines(
                    "swarm-durations",
                    "swarm: client duration distribution",
                    "duration (s)",
                    "% of clients done within",
                    vec![Series::new(format!("{p}clients"), pts)],
                ));
            }
            let line = |f: fn(&swarm::run::Sample) -> u32| over_time(lines, t0, |l| f(l).into());
            if !lines.is_empty() {
                charts.push(Chart::lines(
                    "swarm-concurrency",
                    "swarm: clients running and done over time",
                    "time (s)",
                    "clients",
                    vec![
                        Series::new(format!("{p}running"), line(|l| l.running)),
                        Series::new(format!("{p}done"), line(|l| l.done)).dashed(),
                    ],
                ));
            }
        }
        Typed::SwarmConnect(lines, _) if !lines.is_empty() => {
            let line = |f: fn(&swarm::connect::ConnectSample) -> u32| {
                over_time(lines, t0, |l| f(l).into())
            };
            charts.push(Chart::lines(
                "swarm-connections",
                "swarm connect: connections over time",
                "time (s)",
                "connections",
                vec![
                    Series::new(format!("{p}open"), line(|l| l.open)),
                    Series::new(format!("{p}established"), line(|l| l.established)).dashed(),
                    Series::new(format!("{p}failed"), line(|l| l.failed)).dashed(),
                ],
            ));
        }
        _ => {}
    }
    charts
}

/// fw: passes vs drops per interval, and each rule's hits over time.
fn fw_charts(src: &Source, t0: f64, p: &str) -> Vec<Chart> {
    let Typed::Fw(lines, _) = &src.typed else {
        return vec![];
    };
    let x = xs(src, t0);
    let line = |f: fn(&crate::fw::Interval) -> u64| -> Vec<(f64, f64)> {
        lines
            .iter()
            .zip(&x)
            .map(|(l, x)| (*x, f(&l.line) as f64))
            .collect()
    };
    let mut rules: Vec<String> = vec![];
    for l in lines {
        for k in l.line.hits.keys() {
            if !rules.contains(k) {
                rules.push(k.clone());
            }
        }
    }
    let hits = rules
        .iter()
        .map(|r| {
            Series::new(
                format!("{p}{r}"),
                lines
                    .iter()
                    .zip(&x)
                    .filter_map(|(l, x)| l.line.hits.get(r).map(|h| (*x, *h as f64)))
                    .collect(),
            )
        })
        .collect();
    vec![
        Chart::lines(
            &format!("{}-verdicts", src.name),
            &format!("{}: passed and dropped packets per interval", src.name),
            "time (s)",
            "packets",
            vec![
                Series::new(format!("{p}passed"), line(|l| l.passed)),
                Series::new(format!("{p}dropped"), line(|l| l.dropped)),
            ],
        ),
        Chart::lines(
            &format!("{}-hits", src.name),
            &format!("{}: hits per rule per interval", src.name),
            "time (s)",
            "packets",
            hits,
        ),
    ]
}

/// Tools without their own plots (fw and later ones start here): every numeric top-level
/// field of the interval objects over time.
fn generic_charts(src: &Source, t0: f64, p: &str) -> Vec<Chart> {
    let x = xs(src, t0);
    let mut keys: Vec<String> = vec![];
    for l in &src.series {
        if let Some(m) = l.as_object() {
            for (k, v) in m {
                if v.is_number()
                    && !["seq", "unix", "t", "interval_s"].contains(&k.as_str())
                    && !keys.contains(k)
                {
                    keys.push(k.clone());
                }
            }
        }
    }
    let series = keys
        .iter()
        .map(|k| Series::new(format!("{p}{k}"), points(src, &x, |l| &l[k])))
        .collect();
    vec![Chart::lines(
        &format!("{}-series", src.name),
        &format!("{}: interval values", src.name),
        "time (s)",
        "value",
        series,
    )]
}

/// The plots that fit a source's tool. `prefix` labels series in compare mode.
pub fn charts_for(src: &Source, t0: f64, prefix: &str) -> Vec<Chart> {
    let mut v = match src.tool.as_str() {
        "wan" => wan_charts(src, t0, prefix),
        "probe-udp" => probe_udp_charts(src, t0, prefix),
        "probe-tcp" => probe_tcp_charts(src, t0, prefix),
        "inspect" => inspect_charts(src, t0, prefix),
        "swarm-run" | "swarm-connect" => swarm_charts(src, t0, prefix),
        "fw" => fw_charts(src, t0, prefix),
        "lb" => lb::charts(src, t0, prefix),
        "flows" => flows::charts(src, t0, prefix),
        "smb" => smb::charts(src, t0, prefix),
        _ => generic_charts(src, t0, prefix),
    };
    // Two sources of one tool in a run (probe-udp, probe-udp-2): keep ids unique.
    let kind = src.tool.as_str();
    if src.name != kind {
        for c in &mut v {
            c.id = format!("{}-{}", src.name, c.id);
            c.title = format!("{} ({})", c.title, src.name);
        }
    }
    v.retain(|c| !c.is_empty());
    v
}

pub struct Output {
    pub html: PathBuf,
    pub plots: Vec<PathBuf>,
    /// Where the plots are (made even when there are none).
    pub plot_dir: PathBuf,
    pub png_note: Option<String>,
}

/// The live changes of a run's wan sources as time-plot markers (x from `t0`): the timeline
/// step or the `wan set` SPEC as label. Refused changes are not marked (the report's table of
/// live changes lists them). An lb's health transitions and reloads are marked too.
pub fn markers(run: &Run, t0: f64, prefix: &str) -> Vec<(f64, String)> {
    let mut v = lb::markers(run, t0, prefix);
    for s in &run.sources {
        let Typed::Wan(_, changes) = &s.typed else {
            continue;
        };
        for c in changes {
            if c.kind == wan::ChangeOutcome::Refused {
                continue;
            }
            let text = c.label.as_deref().unwrap_or(&c.applied);
            let mut label: String = format!("{prefix}{text}");
            if label.chars().count() > 40 {
                label = label.chars().take(39).collect::<String>() + "…";
            }
            v.push((c.unix - t0, label));
        }
    }
    v
}

/// Write the report for one run, or two runs compared.
pub fn write(runs: &[Run], out: &Path) -> Result<Output> {
    let mut charts: Vec<Chart> = vec![];
    let labels = ["A: ", "B: "];
    for (ri, run) in runs.iter().enumerate() {
        let t0 = run.t0();
        let prefix = if runs.len() > 1 { labels[ri] } else { "" };
        let marks = markers(run, t0, prefix);
        for s in &run.sources {
            for mut c in charts_for(s, t0, prefix) {
                if c.x == "time (s)" {
                    c.markers.clone_from(&marks);
                }
                if let Some(have) = charts.iter_mut().find(|h| h.id == c.id) {
                    have.merge(c);
                } else {
                    charts.push(c);
                }
            }
        }
    }
    let stem = out
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("report")
        .to_string();
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let plot_dir = parent.join(format!("{stem}-plots"));
    std::fs::create_dir_all(&plot_dir)
        .with_context(|| format!("creating {}", plot_dir.display()))?;
    let mut svgs = vec![];
    let mut plots = vec![];
    let mut png_note = None;
    for c in &charts {
        let s = plot::svg(c).with_context(|| format!("plot {}", c.id))?;
        let p = plot_dir.join(format!("{}.svg", c.id));
        std::fs::write(&p, &s).with_context(|| format!("writing {}", p.display()))?;
        plots.push(p);
        match plot::png(c) {
            Ok(b) => {
                let p = plot_dir.join(format!("{}.png", c.id));
                std::fs::write(&p, b).with_context(|| format!("writing {}", p.display()))?;
                plots.push(p);
            }
            Err(e) => png_note = Some(format!("PNG plots not written: {e:#}")),
        }
        svgs.push((c.clone(), s));
    }
    let doc = html::render(runs, &svgs, &plot_dir)?;
    std::fs::write(out, doc).with_context(|| format!("writing {}", out.display()))?;
    Ok(Output {
        html: out.to_path_buf(),
        plots,
        plot_dir,
        png_note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A series line of the right tool but the wrong shape (a renamed or retyped field) is
    /// an error naming the file and line, not zeros in a plot.
    #[test]
    fn a_mistyped_series_line_is_named() {
        let dir = crate::util::test_dir("wirelab-report-unit");
        let mut rec = record::Recorder::create(&dir, "wan", "wan", &serde_json::json!({})).unwrap();
        let row = crate::wan::ClassReport {
            dir: crate::wan::Direction::AToB,
            class: "default".into(),
            rx: 5,
            ..Default::default()
        };
        let good = crate::wan::Line {
            kind: crate::wan::LineKind::Interval,
            t: 1.0,
            classes: vec![row],
            engine: None,
            seed: None,
            changes: None,
        };
        rec.interval(&good).unwrap();
        let mut bad = serde_json::to_value(&good).unwrap();
        bad["classes"][0]["rx"] = serde_json::json!("five");
        rec.interval(&bad).unwrap();
        rec.finish(&good, vec![], vec![]).unwrap();
        let e = format!("{:#}", load(&dir, true).unwrap_err());
        assert!(e.contains("wan.series.jsonl line 2"), "{e}");
    }
}
