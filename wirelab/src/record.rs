//! Run records: `--record DIR` on every long-running command.
//!
//! A run directory holds one or more *sources* (one per recording command: `wan`, `probe-udp`,
//! `probe-tcp`, `inspect`, `swarm-run`, ...). Each source writes
//!
//! - `NAME.config.json`: the exact configuration in force at the start, plus host facts;
//! - `NAME.series.jsonl`: one JSON object per reporting interval (the tool's own interval
//!   object with `seq` and `unix` added);
//! - `NAME.changes.jsonl`: live changes (wan `set`), time-stamped;
//! - `NAME.final.json`: the tool's final object, its configured and measured quantities.
//!
//! After every finished source, `summary.json` is rebuilt from all finished sources in the
//! directory (under a lock), so a wan run and a probe run recording into one directory give
//! one summary with configured-vs-measured comparisons. The format is in
//! `docs/record-format.md`; [`VERSION`] changes when it changes incompatibly.
use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::util::unix_now;

pub const FORMAT: &str = "wirelab-record";
pub const VERSION: u32 = 1;

/// One configured or measured number.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Quantity {
    /// Stable name: `delay_ms`, `delay_stddev_ms`, `loss_pct`, `reorder_pct`,
    /// `duplicate_pct`, `corrupt_pct`, `rate_mbit`, ...
    pub quantity: String,
    /// `a_to_b` / `b_to_a` (wan's directions; probe's forward is matched to `a_to_b`), or "".
    pub direction: String,
    pub value: f64,
    pub unit: String,
    /// Samples behind a measured value (for statistical tolerances).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// What exactly was measured ("one-way delay p50 of UDP probes", ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub what: String,
}

impl Quantity {
    pub fn new(quantity: &str, direction: &str, value: f64, unit: &str, what: &str) -> Self {
        Self {
            quantity: quantity.into(),
            direction: direction.into(),
            value,
            unit: unit.into(),
            samples: None,
            what: what.into(),
        }
    }
    pub fn samples(mut self, n: u64) -> Self {
        self.samples = Some(n);
        self
    }
}

/// Facts about where a run happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostFacts {
    pub hostname: String,
    /// `uname -r`.
    pub kernel: String,
    /// `uname -v`.
    pub kernel_version: String,
    pub wirelab_version: String,
    pub pid: u32,
}

impl HostFacts {
    /// This host, now.
    pub fn here() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        Self {
            hostname: read("/proc/sys/kernel/hostname"),
            kernel: read("/proc/sys/kernel/osrelease"),
            kernel_version: read("/proc/sys/kernel/version"),
            wirelab_version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
        }
    }
}

/// `NAME.config.json`: what one source was asked to do, where and when. `C` is the tool's
/// own configuration type (read generically as a JSON value).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigDoc<C = Value> {
    pub format: String,
    pub version: u32,
    pub source: String,
    pub tool: String,
    pub started_unix: f64,
    pub argv: Vec<String>,
    pub host: HostFacts,
    pub config: C,
}

/// One stretch of a run with one configuration (from the start or a live change to the next).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Epoch {
    pub from_unix: f64,
    pub to_unix: f64,
    pub configured: Vec<Quantity>,
}

/// `NAME.final.json`: how one source ended. `R` is the tool's final result type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinalDoc<R = Value> {
    pub format: String,
    pub version: u32,
    /// Which source, when, and how many lines it wrote (as `summary.json` lists it).
    #[serde(flatten)]
    pub run: SourceLine,
    /// The configuration in force at the end.
    pub configured: Vec<Quantity>,
    #[serde(default)]
    pub configured_epochs: Vec<Epoch>,
    pub measured: Vec<Quantity>,
    pub result: R,
}

/// One source in `summary.json` (and the head of its final document).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceLine {
    pub source: String,
    pub tool: String,
    pub started_unix: f64,
    pub ended_unix: f64,
    pub duration_s: f64,
    /// Lines written to `NAME.series.jsonl` / `NAME.changes.jsonl`.
    pub intervals: u64,
    pub changes: u64,
}

/// A configured or measured quantity with the source that gave it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourcedQuantity {
    pub source: String,
    #[serde(flatten)]
    pub quantity: Quantity,
}

/// `summary.json`: every finished source, and each measurement compared with the
/// configuration in force while it was measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub format: String,
    pub version: u32,
    pub written_unix: f64,
    /// `None` while no source has finished.
    pub started_unix: Option<f64>,
    pub ended_unix: f64,
    pub host: HostFacts,
    pub sources: Vec<SourceLine>,
    /// Sources with a config but no final document (killed or still running).
    pub unfinished: Vec<String>,
    pub configured: Vec<SourcedQuantity>,
    pub measured: Vec<SourcedQuantity>,
    pub comparisons: Vec<Comparison>,
    /// Comparisons outside their tolerance.
    pub deviations: usize,
}

/// Writes one source's files. Create it before the run starts; call [`Recorder::finish`] at
/// the end (a source without `NAME.final.json` is reported as unfinished).
pub struct Recorder {
    dir: PathBuf,
    name: String,
    tool: String,
    start: Instant,
    started_unix: f64,
    series: BufWriter<File>,
    changes: Option<BufWriter<File>>,
    seq: u64,
    nchanges: u64,
    /// Configured quantities with the wall-clock time they took effect.
    epochs: Vec<(f64, Vec<Quantity>)>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Recorder {
    /// Start recording source `kind` (e.g. `wan`, `probe-udp`) into `dir` with its full
    /// configuration. A second source of the same kind in the same directory is `kind-2`, ...
    pub fn create(
        dir: &Path,
        kind: &str,
        tool: &str,
        config: &impl serde::Serialize,
    ) -> Result<Self> {
        if !valid_name(kind) {
            bail!("record: bad source name {kind:?}");
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--record: creating {}", dir.display()))?;
        let started_unix = unix_now();
        for i in 1..1000 {
            let argv: Vec<String> = std::env::args().collect();
            let name = if i == 1 {
                kind.to_string()
            } else {
                format!("{kind}-{i}")
            };
            let p = dir.join(format!("{name}.config.json"));
            let f = match OpenOptions::new().write(true).create_new(true).open(&p) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
            };
            let doc = ConfigDoc {
                format: FORMAT.into(),
                version: VERSION,
                source: name.clone(),
                tool: tool.into(),
                started_unix,
                argv,
                host: HostFacts::here(),
                config,
            };
            let mut w = BufWriter::new(f);
            serde_json::to_writer_pretty(&mut w, &doc)?;
            w.write_all(b"\n")?;
            w.flush()?;
            let sp = dir.join(format!("{name}.series.jsonl"));
            let series = BufWriter::new(
                File::create(&sp).with_context(|| format!("creating {}", sp.display()))?,
            );
            tracing::info!(dir = %dir.display(), source = %name, "recording");
            return Ok(Self {
                dir: dir.to_path_buf(),
                name,
                tool: tool.into(),
                start: Instant::now(),
                started_unix,
                series,
                changes: None,
                seq: 0,
                nchanges: 0,
                epochs: vec![],
            });
        }
        bail!("{}: too many {kind} sources", dir.display())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stamp(&self, v: &Value, seq: u64) -> Value {
        let mut m = match v {
            Value::Object(m) => m.clone(),
            other => {
                let mut m = serde_json::Map::new();
                m.insert("value".into(), other.clone());
                m
            }
        };
        m.insert("seq".into(), json!(seq));
        m.insert("v".into(), json!(VERSION));
        if !m.contains_key("unix") {
            m.insert("unix".into(), json!(unix_now()));
        }
        if !m.contains_key("t") {
            m.insert("t".into(), json!(self.start.elapsed().as_secs_f64()));
        }
        Value::Object(m)
    }

    /// One interval's stats (the tool's interval object). Written and flushed at once, so a
    /// killed run keeps every interval it reported.
    pub fn interval(&mut self, v: &impl serde::Serialize) -> Result<()> {
        self.seq += 1;
        let line = self.stamp(&serde_json::to_value(v)?, self.seq);
        writeln!(self.series, "{line}")?;
        self.series.flush()?;
        Ok(())
    }

    /// An interval line stamped with the wall-clock time it describes (`unix`), for a tool
    /// that learns its intervals only at the end (the TCP probe's receiver slots).
    pub fn interval_at(&mut self, unix: f64, v: &impl serde::Serialize) -> Result<()> {
        let mut v = serde_json::to_value(v)?;
        if let Value::Object(m) = &mut v {
            m.insert("unix".into(), json!(unix));
        }
        self.interval(&v)
    }

    /// A live configuration change (what was asked, what is now in force).
    pub fn change(&mut self, v: &impl serde::Serialize) -> Result<()> {
        let v = serde_json::to_value(v)?;
        if self.changes.is_none() {
            let p = self.dir.join(format!("{}.changes.jsonl", self.name));
            self.changes = Some(BufWriter::new(
                File::create(&p).with_context(|| format!("creating {}", p.display()))?,
            ));
        }
        self.nchanges += 1;
        let line = self.stamp(&v, self.nchanges);
        if let Some(w) = self.changes.as_mut() {
            writeln!(w, "{line}")?;
            w.flush()?;
        }
        Ok(())
    }

    /// The configured quantities in force from now on (call at the start and after each
    /// live change): measurements are compared with the configuration of their own time.
    pub fn set_configured(&mut self, q: Vec<Quantity>) {
        let now = if self.epochs.is_empty() {
            self.started_unix
        } else {
            unix_now()
        };
        self.epochs.push((now, q));
    }

    /// Write the final object and rebuild `summary.json`. Returns the summary's path.
    /// `configured` is used when [`Recorder::set_configured`] was never called.
    pub fn finish(
        mut self,
        result: &impl serde::Serialize,
        configured: Vec<Quantity>,
        measured: Vec<Quantity>,
    ) -> Result<PathBuf> {
        self.series.flush()?;
        let ended = unix_now();
        if self.epochs.is_empty() {
            self.epochs.push((self.started_unix, configured));
        }
        let epochs: Vec<Epoch> = self
            .epochs
            .iter()
            .enumerate()
            .map(|(i, (from, q))| Epoch {
                from_unix: *from,
                to_unix: self.epochs.get(i + 1).map(|e| e.0).unwrap_or(ended),
                configured: q.clone(),
            })
            .collect();
        let configured = self.epochs.last().map(|e| e.1.clone()).unwrap_or_default();
        let doc = FinalDoc {
            format: FORMAT.into(),
            version: VERSION,
            run: SourceLine {
                source: self.name.clone(),
                tool: self.tool.clone(),
                started_unix: self.started_unix,
                ended_unix: ended,
                duration_s: self.start.elapsed().as_secs_f64(),
                intervals: self.seq,
                changes: self.nchanges,
            },
            configured,
            configured_epochs: epochs,
            measured,
            result,
        };
        let p = self.dir.join(format!("{}.final.json", self.name));
        write_atomic(&p, &serde_json::to_vec_pretty(&doc)?)?;
        let s = rebuild_summary(&self.dir)?;
        tracing::info!(summary = %s.display(), "record written");
        Ok(s)
    }
}

fn write_atomic(p: &Path, data: &[u8]) -> Result<()> {
    let tmp = p.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(data)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, p).with_context(|| format!("renaming to {}", p.display()))?;
    Ok(())
}

/// One row of the configured-vs-measured table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub quantity: String,
    pub direction: String,
    pub unit: String,
    pub configured: f64,
    pub configured_by: String,
    pub measured: f64,
    pub measured_by: String,
    pub what: String,
    pub deviation: f64,
    pub deviation_pct: Option<f64>,
    /// How far off is still fine, in the quantity's unit (see docs/record-format.md).
    pub tolerance: f64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Compare one configured value with one measured value of the same quantity/direction.
pub fn compare(c: &Quantity, m: &Quantity, c_by: &str, m_by: &str) -> Comparison {
    let dev = m.value - c.value;
    let stat = |p_pct: f64| {
        // Three binomial standard deviations of the measured proportion, plus 0.2 points.
        let p = (p_pct / 100.0).clamp(0.0, 1.0);
        let n = m.samples.unwrap_or(0).max(1) as f64;
        3.0 * (p * (1.0 - p) / n).sqrt() * 100.0 + 0.2
    };
    let (tol, ok, note) = match c.quantity.as_str() {
        "delay_ms" => {
            let t = (c.value * 0.05).max(2.0);
            (t, dev.abs() <= t, String::new())
        }
        "delay_stddev_ms" => {
            let t = (c.value * 0.25).max(1.0);
            (t, dev.abs() <= t, String::new())
        }
        "rate_mbit" => {
            let t = c.value * 0.02;
            (
                t,
                m.value <= c.value + t,
                "upper bound: goodput must not exceed the configured rate".into(),
            )
        }
        q if q.ends_with("_pct") => {
            let t = stat(c.value);
            (t, dev.abs() <= t, String::new())
        }
        _ => {
            let t = (c.value.abs() * 0.05).max(1e-9);
            (t, dev.abs() <= t, String::new())
        }
    };
    Comparison {
        quantity: c.quantity.clone(),
        direction: c.direction.clone(),
        unit: c.unit.clone(),
        configured: c.value,
        configured_by: c_by.into(),
        measured: m.value,
        measured_by: m_by.into(),
        what: m.what.clone(),
        deviation: dev,
        deviation_pct: (c.value != 0.0).then(|| dev / c.value * 100.0),
        tolerance: tol,
        ok,
        note,
    }
}

/// Read a record document (config, final or summary) strictly: JSON syntax errors name the
/// line and column, a foreign or newer format says so, and a field of the wrong type or a
/// missing one names it.
pub fn read_doc<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T> {
    let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let v: Value = serde_json::from_str(&t).map_err(|e| {
        anyhow!(
            "{}: line {} column {}: {e} (file damaged or truncated)",
            p.display(),
            e.line(),
            e.column()
        )
    })?;
    #[derive(Deserialize)]
    struct Header {
        format: Option<String>,
        version: Option<u64>,
    }
    let h = Header::deserialize(&v).unwrap_or(Header {
        format: None,
        version: None,
    });
    if h.format.as_deref() != Some(FORMAT) {
        bail!(
            "{}: line 1: not a wirelab record (format {:?}, want {FORMAT:?})",
            p.display(),
            h.format.unwrap_or_default()
        );
    }
    let ver = h.version.unwrap_or(0);
    if ver != VERSION as u64 {
        bail!(
            "{}: record format version {ver}; this wirelab reads version {VERSION}",
            p.display()
        );
    }
    T::deserialize(&v).map_err(|e| {
        let ty = std::any::type_name::<T>();
        let ty = ty.split('<').next().unwrap_or(ty);
        anyhow!(
            "{}: not a {}: {e}",
            p.display(),
            ty.rsplit("::").next().unwrap_or(ty)
        )
    })
}

/// The finished sources' final documents in `dir`, by source name (sorted).
fn finals(dir: &Path) -> Result<Vec<FinalDoc>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".final.json"))
        })
        .collect();
    names.sort();
    names.iter().map(|p| read_doc(p)).collect()
}

/// Build the summary document from the final documents of all sources.
pub fn summary_of<F: std::borrow::Borrow<FinalDoc<R>>, R>(
    finals: &[F],
    unfinished: &[String],
) -> Summary {
    struct Window<'a> {
        source: &'a str,
        from: f64,
        to: f64,
        q: &'a [Quantity],
    }
    let mut sources = vec![];
    let mut configured = vec![];
    let mut measured: Vec<(&str, &Quantity, f64, f64)> = vec![];
    let mut epochs: Vec<Window<'_>> = vec![];
    let (mut start, mut end) = (f64::MAX, 0.0f64);
    for f in finals {
        let f = f.borrow();
        let (s0, s1) = (f.run.started_unix, f.run.ended_unix);
        if f.configured_epochs.is_empty() {
            epochs.push(Window {
                source: &f.run.source,
                from: s0,
                to: s1,
                q: &f.configured,
            });
        }
        epochs.extend(f.configured_epochs.iter().map(|e| Window {
            source: &f.run.source,
            from: e.from_unix,
            to: e.to_unix,
            q: &e.configured,
        }));
        start = start.min(s0);
        end = end.max(s1);
        sources.push(f.run.clone());
        configured.extend(f.configured.iter().map(|q| SourcedQuantity {
            source: f.run.source.clone(),
            quantity: q.clone(),
        }));
        measured.extend(
            f.measured
                .iter()
                .map(|q| (f.run.source.as_str(), q, s0, s1)),
        );
    }
    // Each measurement is compared with the configuration in force while it was measured:
    // the epoch of each configuring source that overlaps the measurement's time window most.
    let mut comparisons = vec![];
    let mut configurers: Vec<&str> = epochs.iter().map(|e| e.source).collect();
    configurers.dedup();
    for cb in configurers {
        for &(mb, m, m0, m1) in &measured {
            let overl: Vec<(&Window<'_>, f64)> = epochs
                .iter()
                .filter(|e| e.source == cb)
                .map(|e| (e, (e.to.min(m1) - e.from.max(m0)).max(0.0)))
                .filter(|(_, o)| *o > 0.0)
                .collect();
            let Some((e, _)) = overl.iter().max_by(|a, b| a.1.total_cmp(&b.1)) else {
                continue;
            };
            let Some(c) =
                e.q.iter()
                    .find(|c| c.quantity == m.quantity && c.direction == m.direction)
            else {
                continue;
            };
            let mut row = compare(c, m, cb, mb);
            if overl.len() > 1 {
                row.note = format!(
                    "{}{}the configuration changed {} time(s) while this was measured; compared with the one in force longest",
                    row.note,
                    if row.note.is_empty() { "" } else { "; " },
                    overl.len() - 1
                );
            }
            comparisons.push(row);
        }
    }
    let measured = measured
        .into_iter()
        .map(|(s, q, _, _)| SourcedQuantity {
            source: s.into(),
            quantity: q.clone(),
        })
        .collect();
    Summary {
        format: FORMAT.into(),
        version: VERSION,
        written_unix: unix_now(),
        started_unix: (start != f64::MAX).then_some(start),
        ended_unix: end,
        host: HostFacts::here(),
        sources,
        unfinished: unfinished.to_vec(),
        configured,
        measured,
        deviations: comparisons.iter().filter(|c| !c.ok).count(),
        comparisons,
    }
}

/// Rebuild `DIR/summary.json` from every finished source, under an exclusive lock so two
/// tools finishing at once do not lose each other's part.
pub fn rebuild_summary(dir: &Path) -> Result<PathBuf> {
    let lock = File::create(dir.join(".summary.lock"))?;
    let _l = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("locking the run directory: {e}"))?;
    let fin = finals(dir)?;
    let mut unfinished = vec![];
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if let Some(s) = n.strip_suffix(".config.json") {
            if !fin.iter().any(|d| d.run.source == s) {
                unfinished.push(s.to_string());
            }
        }
    }
    unfinished.sort();
    let s = summary_of(&fin, &unfinished);
    let p = dir.join("summary.json");
    write_atomic(&p, &serde_json::to_vec_pretty(&s)?)?;
    Ok(p)
}

/// What a stats line is: one interval, or the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineKind {
    Interval,
    Final,
}

/// A series or change line as written: the tool's own typed line with the record's stamps.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Stamped<T> {
    /// 1, 2, 3… per file, without gaps.
    pub seq: u64,
    /// The record format version the line was written in (absent before it was stamped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u32>,
    /// Wall-clock time of the line (seconds since the epoch).
    pub unix: f64,
    #[serde(flatten)]
    pub line: T,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_tolerances() {
        let c = Quantity::new("delay_ms", "a_to_b", 40.0, "ms", "");
        let m = Quantity::new("delay_ms", "a_to_b", 40.9, "ms", "p50");
        assert!(compare(&c, &m, "wan", "probe").ok);
        let m = Quantity::new("delay_ms", "a_to_b", 45.0, "ms", "p50");
        assert!(!compare(&c, &m, "wan", "probe").ok);
        let c = Quantity::new("loss_pct", "a_to_b", 0.5, "%", "");
        let m = Quantity::new("loss_pct", "a_to_b", 0.7, "%", "").samples(1000);
        assert!(compare(&c, &m, "wan", "probe").ok);
        let m = Quantity::new("loss_pct", "a_to_b", 5.0, "%", "").samples(1000);
        assert!(!compare(&c, &m, "wan", "probe").ok);
        let c = Quantity::new("rate_mbit", "a_to_b", 20.0, "Mbit/s", "");
        let m = Quantity::new("rate_mbit", "a_to_b", 3.0, "Mbit/s", "");
        assert!(compare(&c, &m, "wan", "probe").ok);
    }

    #[test]
    fn record_and_summary() {
        let d = crate::util::test_dir("wl-rec");
        let mut a = Recorder::create(&d, "wan", "wan", &json!({"x": 1})).unwrap();
        let mut b = Recorder::create(&d, "wan", "wan", &json!({"x": 2})).unwrap();
        assert_eq!(b.name(), "wan-2");
        a.interval(&json!({"type": "interval", "v": 1})).unwrap();
        a.change(&json!({"applied": "x"})).unwrap();
        b.interval(&json!({"v": 2})).unwrap();
        a.finish(
            &json!({}),
            vec![Quantity::new("delay_ms", "a_to_b", 40.0, "ms", "")],
            vec![],
        )
        .unwrap();
        let s: Summary = read_doc(&d.join("summary.json")).unwrap();
        assert_eq!(s.unfinished, ["wan-2"]);
        b.finish(
            &json!({}),
            vec![],
            vec![Quantity::new("delay_ms", "a_to_b", 40.5, "ms", "")],
        )
        .unwrap();
        let s: Summary = read_doc(&d.join("summary.json")).unwrap();
        assert!(s.unfinished.is_empty());
        assert_eq!(s.comparisons.len(), 1);
        assert!(s.comparisons[0].ok);
    }
}
