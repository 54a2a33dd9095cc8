//! The sweep file: axes over wan SPEC clauses crossed into cells, the workloads run in each
//! cell, repetitions, seeds and order. Everything is validated (every cell's SPEC parsed,
//! every workload checked) before a lab exists; a bad file names the field.
use std::{path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};
use rand::{seq::SliceRandom as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

use crate::wan::{spec, splitmix, DirSpecs};

/// The TOML file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// Master seed: each run's seed is derived from it and the run's (cell, repetition).
    #[serde(default = "one")]
    pub seed: u64,
    /// Runs per cell.
    #[serde(default = "three")]
    pub repetitions: u32,
    /// `random` (default: the whole run list shuffled with the master seed) or `sequential`.
    #[serde(default)]
    pub order: Order,
    /// Pause between runs (e.g. "500ms").
    #[serde(default, with = "opt_pause")]
    pub pause: Option<Duration>,
    /// A cell whose primary metric varies more than this (coefficient of variation) across
    /// its repetitions is flagged unstable.
    #[serde(default = "cv_default")]
    pub unstable_cv: f64,
    /// Start a fresh emulator for every run (seeded with the run's seed) instead of changing
    /// one emulator live between runs.
    #[serde(default)]
    pub fresh_wan: bool,
    /// The SPEC every cell starts from (for both directions, or each).
    #[serde(default)]
    pub base: DirSpecs,
    #[serde(default, rename = "axis")]
    pub axes: Vec<Axis>,
    #[serde(default, rename = "workload")]
    pub workloads: Vec<Workload>,
    /// Commands run before and after every run (in the client host), e.g. to reset a
    /// product under test. A failing hook fails the run.
    #[serde(default)]
    pub hooks: Hooks,
    /// A wan timeline file (relative to the sweep file) played from the start of every
    /// run's workloads, over the cell's SPECs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<String>,
}

fn one() -> u64 {
    1
}
fn three() -> u32 {
    3
}
fn cv_default() -> f64 {
    0.10
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        named(d, "duration")
    }

    /// The value of field `field` (named in the error: a workload's fields reach serde
    /// through its `kind` tag, which loses their names).
    pub fn named<'de, D: Deserializer<'de>>(
        d: D,
        field: &str,
    ) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            crate::util::parse_duration(&s)
                .map_err(|e| serde::de::Error::custom(format!("{field}: {e}")))
        })
        .transpose()
    }
}

/// [`opt_duration`] for a field of another name (the name is in its errors).
macro_rules! opt_duration_named {
    ($module:ident, $field:literal) => {
        mod $module {
            use std::time::Duration;

            use serde::Deserializer;

            pub use super::opt_duration::serialize;

            pub fn deserialize<'de, D: Deserializer<'de>>(
                d: D,
            ) -> Result<Option<Duration>, D::Error> {
                super::opt_duration::named(d, $field)
            }
        }
    };
}
opt_duration_named!(opt_timeout, "timeout");
opt_duration_named!(opt_pause, "pause");

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Random,
    Sequential,
}

/// Which direction an axis changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    #[default]
    Both,
    AToB,
    BToA,
}

/// One axis. `kind = "spec"` (default): its values are SPEC clauses (e.g. "delay 20ms",
/// "loss 1%", "" for none); a clause replaces the base's clause of the same keyword.
/// `kind = "class"`: its values are class rules ([`ClassRule`]), which traffic the cell's
/// SPEC applies to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Axis {
    pub name: String,
    #[serde(default)]
    pub kind: AxisKind,
    pub values: Vec<AxisValue>,
    #[serde(default)]
    pub dir: Dir,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AxisKind {
    #[default]
    Spec,
    Class,
}

/// An axis value: a SPEC clause (a string) or a class rule (a table).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum AxisValue {
    Clause(String),
    Class(ClassRule),
}

impl std::fmt::Display for AxisValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AxisValue::Clause(c) => f.write_str(c),
            AxisValue::Class(r) => f.write_str(&r.name),
        }
    }
}

impl AxisValue {
    fn clause(&self) -> &str {
        match self {
            AxisValue::Clause(c) => c,
            AxisValue::Class(_) => "",
        }
    }
}

/// A class axis value: the traffic the cell's SPEC applies to, matched as a wan `[[class]]`
/// is (docs/wan.md), with the sweep server's address (`198.18.0.2`, side `b`) as the default
/// `net`. A rule without `side`, `net`, `proto` and `port` selects all traffic (the default
/// class and the measured class, as without a class axis); otherwise only the matching
/// traffic is impaired and everything else is not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClassRule {
    /// The value's name in labels and records.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// A wider type than the port so that a bad one is refused naming the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

impl ClassRule {
    /// Whether the rule narrows the impaired traffic (any match field given).
    pub fn narrows(&self) -> bool {
        self.side.is_some() || self.net.is_some() || self.proto.is_some() || self.port.is_some()
    }

    /// The wan class this rule makes, with `a_to_b`/`b_to_a` as its SPECs (the port must
    /// have been checked: see `validate`).
    pub fn class_cfg(&self, name: &str, a_to_b: &str, b_to_a: &str) -> crate::wan::ClassCfg {
        crate::wan::ClassCfg {
            name: name.into(),
            side: self.side.clone(),
            net: self
                .net
                .clone()
                .unwrap_or_else(|| format!("{}/32", super::run::SERVER)),
            proto: self.proto.clone(),
            port: self.port.and_then(|p| u16::try_from(p).ok()),
            both: None,
            a_to_b: Some(a_to_b.into()),
            b_to_a: Some(b_to_a.into()),
        }
    }
}

/// What runs in each cell, against the lab's server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Workload {
    /// `wirelab probe client`: one-way delay, loss, jitter.
    Udp {
        /// Probes per second.
        #[serde(default = "udp_rate")]
        rate: f64,
        /// Probes per run.
        #[serde(default = "udp_count")]
        count: u64,
        /// UDP payload bytes of each probe.
        #[serde(default = "udp_size")]
        size: usize,
    },
    /// TCP goodput over `duration` with `flows` parallel connections.
    Tcp {
        #[serde(with = "opt_duration", default)]
        duration: Option<Duration>,
        #[serde(default = "one_flow")]
        flows: u32,
    },
    /// iperf3 against an iperf3 server the sweep starts in the server host.
    Iperf3 {
        #[serde(with = "opt_duration", default)]
        duration: Option<Duration>,
        /// `tcp` (default) or `udp` (then `bitrate` applies, e.g. "20M").
        #[serde(default)]
        udp: bool,
        #[serde(default)]
        bitrate: Option<String>,
    },
    /// Any command, run in the client host: its metrics are its exit status (1 success, 0
    /// failure) and, with `number`, a number it prints: `last` (the last number on stdout)
    /// or `json:KEY.PATH` (stdout is JSON).
    Command {
        name: String,
        argv: Vec<String>,
        #[serde(default)]
        number: Option<String>,
        #[serde(with = "opt_timeout", default)]
        timeout: Option<Duration>,
    },
}

fn udp_rate() -> f64 {
    100.0
}
fn udp_count() -> u64 {
    300
}
fn udp_size() -> usize {
    256
}
fn one_flow() -> u32 {
    1
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    #[serde(default)]
    pub pre: Option<Vec<String>>,
    #[serde(default)]
    pub post: Option<Vec<String>>,
}

/// One cell of the grid: a value index per axis and the SPEC per direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub index: usize,
    /// Value index per axis.
    pub at: Vec<usize>,
    /// "delay=delay 20ms, loss=loss 1%".
    pub label: String,
    pub a_to_b: String,
    pub b_to_a: String,
    /// The class axis's value: which traffic the SPECs apply to (none: all of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<ClassRule>,
}

impl Cell {
    /// The class match the emulator needs for this cell (None: all traffic). A cell whose
    /// match differs from the running emulator's needs a new emulator.
    pub fn class_match(&self) -> Option<ClassRule> {
        self.rule
            .as_ref()
            .filter(|r| r.narrows())
            .map(|r| ClassRule {
                name: String::new(),
                ..r.clone()
            })
    }
}

/// One run: a cell, a repetition, its seed, its place in the order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    /// cell * repetitions + repetition: stable across orders and resumes.
    pub id: usize,
    pub cell: usize,
    pub rep: u32,
    pub seed: u64,
}

/// The validated sweep: cells and the runs in the order they run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub file: SweepFile,
    pub cells: Vec<Cell>,
    pub runs: Vec<RunPlan>,
    /// The `timeline` file's contents, checked against every cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<crate::wan::timeline::Timeline>,
}

/// Most cells a sweep may have (a typo in an axis should not start a week-long sweep).
pub const MAX_CELLS: usize = 10_000;

impl SweepFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::util::read_user_file(path, crate::util::limit::CONFIG)?;
        let f: SweepFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim()))?;
        Ok(f)
    }
}

/// The keyword a clause starts with ("" for an empty clause).
fn keyword(clause: &str) -> &str {
    clause.split_whitespace().next().unwrap_or("")
}

/// Split a SPEC into its clauses (each starts with a keyword).
/// A SPEC's clauses: each keyword with its values (`distribution` and `gap` stay with the
/// clause before them).
pub fn clauses(text: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for w in text.split_whitespace() {
        // `distribution` and `gap` belong to the clause before them (delay, reorder).
        if spec::KEYWORDS.contains(&w) && w != "distribution" && w != "gap" || out.is_empty() {
            out.push(w.to_string());
        } else if let Some(last) = out.last_mut() {
            last.push(' ');
            last.push_str(w);
        }
    }
    out
}

/// `base` with each clause of `changes` replacing the base clause of its keyword.
pub fn apply(base: &str, changes: &[&str]) -> String {
    let set: Vec<&str> = changes.iter().map(|c| keyword(c)).collect();
    let mut out: Vec<String> = clauses(base)
        .into_iter()
        .filter(|c| !set.contains(&keyword(c)))
        .collect();
    out.extend(
        changes
            .iter()
            .filter(|c| !c.trim().is_empty())
            .map(|c| c.trim().to_string()),
    );
    out.join(" ")
}

/// The run seed of (cell, rep) under `master`.
pub fn run_seed(master: u64, cell: usize, rep: u32) -> u64 {
    splitmix(master ^ splitmix(((cell as u64) << 20) ^ rep as u64 ^ 0x5eed_0000_0000_0000))
}

impl Plan {
    /// Validate `file` fully and lay out cells and runs.
    pub fn new(file: SweepFile) -> Result<Self> {
        validate(&file)?;
        let dims: Vec<usize> = file.axes.iter().map(|a| a.values.len()).collect();
        let n: usize = dims.iter().product();
        let base_ab = file
            .base
            .a_to_b
            .clone()
            .or(file.base.both.clone())
            .unwrap_or_default();
        let base_ba = file
            .base
            .b_to_a
            .clone()
            .or(file.base.both.clone())
            .unwrap_or_default();
        let mut cells = vec![];
        for index in 0..n {
            // Mixed radix, the last axis fastest.
            let mut at = vec![0; dims.len()];
            let mut rest = index;
            for (k, d) in dims.iter().enumerate().rev() {
                at[k] = rest % d;
                rest /= d;
            }
            let pick = |dir: Dir| -> Vec<&str> {
                file.axes
                    .iter()
                    .zip(&at)
                    .filter(|(a, _)| {
                        a.kind == AxisKind::Spec && (a.dir == Dir::Both || a.dir == dir)
                    })
                    .map(|(a, i)| a.values[*i].clause())
                    .collect()
            };
            let a_to_b = apply(&base_ab, &pick(Dir::AToB));
            let b_to_a = apply(&base_ba, &pick(Dir::BToA));
            let label = file
                .axes
                .iter()
                .zip(&at)
                .map(|(a, i)| format!("{}={}", a.name, a.values[*i]))
                .collect::<Vec<_>>()
                .join(", ");
            for (d, text) in [("a_to_b", &a_to_b), ("b_to_a", &b_to_a)] {
                spec::parse(text).map_err(|e| {
                    anyhow::anyhow!("cell {index} ({label}): {d} SPEC {text:?}: {e}")
                })?;
            }
            let rule = file
                .axes
                .iter()
                .zip(&at)
                .find_map(|(a, i)| match &a.values[*i] {
                    AxisValue::Class(r) => Some(r.clone()),
                    AxisValue::Clause(_) => None,
                });
            cells.push(Cell {
                index,
                at,
                label,
                a_to_b,
                b_to_a,
                rule,
            });
        }
        let mut runs: Vec<RunPlan> = (0..n)
            .flat_map(|cell| {
                (0..file.repetitions).map(move |rep| RunPlan {
                    id: cell * file.repetitions as usize + rep as usize,
                    cell,
                    rep,
                    seed: 0,
                })
            })
            .collect();
        for r in &mut runs {
            r.seed = run_seed(file.seed, r.cell, r.rep);
        }
        match file.order {
            // Repetition-major: every cell once, then every cell again.
            Order::Sequential => runs.sort_by_key(|r| (r.rep, r.cell)),
            Order::Random => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(splitmix(file.seed ^ 0x04de_5eed));
                runs.shuffle(&mut rng);
            }
        }
        Ok(Self {
            file,
            cells,
            runs,
            timeline: None,
        })
    }
}

fn validate(f: &SweepFile) -> Result<()> {
    if f.repetitions == 0 || f.repetitions > 1000 {
        bail!("repetitions: {} (must be 1 to 1000)", f.repetitions);
    }
    if !(f.unstable_cv.is_finite() && f.unstable_cv > 0.0) {
        bail!("unstable_cv: {} (must be a positive number)", f.unstable_cv);
    }
    if f.pause.is_some_and(|p| p > Duration::from_secs(3600)) {
        bail!("pause: at most 1h");
    }
    if f.workloads.is_empty() {
        bail!("workload: a sweep needs at least one [[workload]]");
    }
    let mut cells = 1usize;
    for (i, a) in f.axes.iter().enumerate() {
        let at = format!("axis[{i}] ({})", a.name);
        check_name(&format!("{at}.name"), &a.name)?;
        if f.axes[..i].iter().any(|b| b.name == a.name) {
            bail!("{at}.name: {:?} given twice", a.name);
        }
        if a.values.is_empty() {
            bail!("{at}.values: empty");
        }
        if a.kind == AxisKind::Class {
            if f.axes[..i].iter().any(|b| b.kind == AxisKind::Class) {
                bail!("{at}.kind: only one class axis per sweep");
            }
            if a.dir != Dir::Both {
                bail!("{at}.dir: a class axis has no direction (its rule matches both)");
            }
            if f.timeline.is_some() {
                bail!("{at}.kind: a class axis with a timeline is not supported yet");
            }
            for (j, v) in a.values.iter().enumerate() {
                let at = format!("{at}.values[{j}]");
                let AxisValue::Class(r) = v else {
                    bail!("{at}: {:?}: a class axis takes tables ({{ name = \"udp7000\", proto = \"udp\", port = 7000 }})", v.to_string());
                };
                check_name(&format!("{at}.name"), &r.name)?;
                if a.values[..j].iter().any(|o| o.to_string() == r.name) {
                    bail!("{at}.name: {:?} given twice", r.name);
                }
                if let Some(p) = r.port {
                    if !(1..=65535).contains(&p) {
                        bail!("{at}.port: {p} (1 to 65535)");
                    }
                }
                crate::wan::class_key(&r.class_cfg("", "", ""), &at)?;
            }
            cells = cells.saturating_mul(a.values.len());
            continue;
        }
        for (j, v) in a.values.iter().enumerate() {
            let AxisValue::Clause(v) = v else {
                bail!("{at}.values[{j}]: a table is a class rule: give the axis kind = \"class\"");
            };
            let k = keyword(v);
            if !k.is_empty() && clauses(v).len() != 1 {
                bail!("{at}.values[{j}]: {v:?} is more than one clause (one keyword per value)");
            }
            if !k.is_empty() && !spec::KEYWORDS.contains(&k) {
                bail!(
                    "{at}.values[{j}]: {v:?} does not start with a SPEC keyword ({})",
                    spec::KEYWORDS.join(", ")
                );
            }
        }
        cells = cells.saturating_mul(a.values.len());
    }
    if cells > MAX_CELLS {
        bail!("axis: {cells} cells (at most {MAX_CELLS})");
    }
    for (i, w) in f.workloads.iter().enumerate() {
        let at = format!("workload[{i}]");
        match w {
            Workload::Udp { rate, count, size } => {
                if *size < crate::probe::MIN_SIZE || *size > 8900 {
                    bail!(
                        "{at}.size: {size} ({} to 8900 bytes)",
                        crate::probe::MIN_SIZE
                    );
                }
                if !(rate.is_finite() && *rate > 0.0 && *rate <= 100_000.0) {
                    bail!("{at}.rate: {rate} (1 to 100000 probes/s)");
                }
                if *count == 0 || *count > 10_000_000 {
                    bail!("{at}.count: {count} (1 to 10000000)");
                }
            }
            Workload::Tcp { duration, flows } => {
                check_duration(&at, *duration)?;
                if *flows == 0 || *flows > 64 {
                    bail!("{at}.flows: {flows} (1 to 64)");
                }
            }
            Workload::Iperf3 {
                duration,
                bitrate,
                udp,
            } => {
                check_duration(&at, *duration)?;
                if bitrate.is_some() && !udp {
                    bail!("{at}.bitrate: only with udp = true");
                }
            }
            Workload::Command {
                name,
                argv,
                number,
                timeout,
            } => {
                if name.is_empty()
                    || f.workloads[..i]
                        .iter()
                        .any(|o| matches!(o, Workload::Command { name: n, .. } if n == name))
                {
                    bail!("{at}.name: {name:?} (non-empty and unique)");
                }
                if argv.is_empty() {
                    bail!("{at}.argv: empty");
                }
                if let Some(n) = number {
                    if n != "last" && !n.starts_with("json:") {
                        bail!("{at}.number: {n:?} (last or json:KEY.PATH)");
                    }
                }
                check_duration(&at, *timeout)?;
            }
        }
    }
    for (k, h) in [("hooks.pre", &f.hooks.pre), ("hooks.post", &f.hooks.post)] {
        if h.as_ref().is_some_and(|v| v.is_empty()) {
            bail!("{k}: empty command");
        }
    }
    Ok(())
}

fn check_name(at: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!("{at}: {name:?} (letters, digits, - and _)");
    }
    Ok(())
}

fn check_duration(at: &str, d: Option<Duration>) -> Result<()> {
    if let Some(d) = d {
        if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
            bail!("{at}.duration/timeout: {d:?} (100ms to 1h)");
        }
    }
    Ok(())
}

/// The plan for a file.
pub fn load(path: &Path) -> Result<Plan> {
    let mut plan =
        Plan::new(SweepFile::load(path)?).with_context(|| format!("{}", path.display()))?;
    plan.attach_timeline(path)?;
    Ok(plan)
}

impl Plan {
    /// Read the file's `timeline` (relative to the sweep file at `path`) and check it
    /// against every cell.
    pub fn attach_timeline(&mut self, path: &Path) -> Result<()> {
        let Some(t) = &self.file.timeline else {
            return Ok(());
        };
        let p = path.parent().unwrap_or(Path::new(".")).join(t);
        let tl = crate::wan::timeline::load(&p)
            .with_context(|| format!("{}: timeline", path.display()))?;
        for c in &self.cells {
            crate::wan::timeline::expand(
                &tl,
                &timeline_classes(c),
                &TIMELINE_CLASSES.map(String::from),
            )
            .with_context(|| {
                format!(
                    "{}: timeline {}: cell {} ({})",
                    path.display(),
                    p.display(),
                    c.index,
                    c.label
                )
            })?;
        }
        self.timeline = Some(tl);
        Ok(())
    }
}

/// The classes a sweep's timeline changes: the emulator's default class and the class the
/// measured traffic runs in.
pub const TIMELINE_CLASSES: [&str; 2] = ["default", super::run::MEASURED_CLASS];

/// A cell's SPECs per class, as a timeline starts from them.
pub fn timeline_classes(c: &Cell) -> std::collections::BTreeMap<String, [String; 2]> {
    TIMELINE_CLASSES
        .iter()
        .map(|n| (n.to_string(), [c.a_to_b.clone(), c.b_to_a.clone()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<Plan> {
        Plan::new(toml::from_str(text)?)
    }

    const GRID: &str = include_str!("../../tests/data/sweep-plan-unit.toml");

    #[test]
    fn cells_cross_the_axes_and_replace_base_clauses() {
        let p = file(GRID).unwrap();
        assert_eq!(p.cells.len(), 8);
        assert_eq!(p.runs.len(), 24);
        let c = &p.cells[0b111];
        assert_eq!(
            c.a_to_b,
            "delay 30ms 2ms distribution normal loss 2% rate 20mbit"
        );
        assert_eq!(c.b_to_a, "delay 30ms 2ms distribution normal loss 2%");
        assert_eq!(p.cells[0].a_to_b, "delay 10ms loss 0%");
        assert!(
            p.cells[5].label.contains("delay=delay 30ms"),
            "{}",
            p.cells[5].label
        );
    }

    #[test]
    fn every_run_once_seeds_stable_order_shuffled_reproducibly() {
        let p = file(GRID).unwrap();
        let mut ids: Vec<usize> = p.runs.iter().map(|r| r.id).collect();
        ids.sort();
        assert_eq!(ids, (0..24).collect::<Vec<_>>());
        let q = file(GRID).unwrap();
        assert_eq!(p.runs, q.runs, "same file, same order and seeds");
        assert_ne!(
            p.runs.iter().map(|r| r.id).collect::<Vec<_>>(),
            (0..24).collect::<Vec<_>>(),
            "random order"
        );
        let seeds: std::collections::BTreeSet<u64> = p.runs.iter().map(|r| r.seed).collect();
        assert_eq!(seeds.len(), 24, "distinct seeds");
        let other = file(&GRID.replace("seed = 7", "seed = 8")).unwrap();
        assert_ne!(
            p.runs[0].seed,
            other
                .runs
                .iter()
                .find(|r| r.id == p.runs[0].id)
                .unwrap()
                .seed
        );
        let seq = file(&format!("order = \"sequential\"\n{GRID}")).unwrap();
        assert_eq!(seq.runs[0].cell, 0);
        assert_eq!(seq.runs[1].cell, 1);
        assert_eq!(seq.runs[8].rep, 1);
    }

    #[test]
    fn bad_files_name_the_field() {
        let grid = [
            (
                GRID.replace("repetitions = 3", "repetitions = 0"),
                "repetitions",
            ),
            (
                GRID.replace("\"loss 2%\"", "\"loss 200%\""),
                "cell 2 (delay=delay 10ms, loss=loss 200%",
            ),
            (
                GRID.replace("\"loss 2%\"", "\"lose 2%\""),
                "axis[1] (loss).values[1]",
            ),
            (
                GRID.replace("\"loss 2%\"", "\"loss 2% delay 3ms\""),
                "more than one clause",
            ),
            (GRID.replace("[[workload]]\nkind = \"udp\"", ""), "workload"),
            (
                GRID.replace("kind = \"udp\"", "kind = \"udp\"\nrate = 0"),
                "workload[0].rate",
            ),
            (
                GRID.replace("kind = \"udp\"", "kind = \"tcp\"\nflows = 100"),
                "workload[0].flows",
            ),
            (
                GRID.replace("name = \"rate\"", "name = \"loss\""),
                "given twice",
            ),
            (
                format!("{GRID}\n[[workload]]\nkind = \"command\"\nname = \"x\"\nargv = []\n"),
                "workload[1].argv",
            ),
            (format!("bogus = 1\n{GRID}"), "unknown field"),
        ]
        .map(|(t, want)| (t, want.to_string()));
        // Class axes: (replace, by, the error names after `axis[1] (scope).`).
        let scope = [
            ("port = 7000", "port = 70000", "values[1].port: 70000"),
            (
                "proto = \"udp\", ",
                "",
                "values[1].port: a port needs proto",
            ),
            ("proto = \"udp\"", "proto = \"udq\"", "values[1].proto"),
            (
                "port = 7000",
                "port = 7000, net = \"198.18.0.0/33\"",
                "values[1].net",
            ),
            (
                "\"udp7000\"",
                "\"all\"",
                "values[1].name: \"all\" given twice",
            ),
            (
                "{ name = \"all\" }",
                "\"delay 5ms\"",
                "values[0]: \"delay 5ms\": a class axis takes tables",
            ),
            (
                "kind = \"class\"\n",
                "",
                "values[0]: a table is a class rule",
            ),
            (
                "kind = \"class\"\n",
                "kind = \"class\"\ndir = \"a_to_b\"\n",
                "dir",
            ),
            (
                "[base]",
                "timeline = \"t.toml\"\n[base]",
                "kind: a class axis with a timeline",
            ),
        ]
        .map(|(a, b, want)| (SCOPE.replace(a, b), format!("axis[1] (scope).{want}")));
        for (text, want) in grid.into_iter().chain(scope) {
            let e = format!("{:#}", file(&text).unwrap_err());
            assert!(e.contains(&want), "{want:?} not in {e}");
        }
    }

    const SCOPE: &str = "repetitions = 1\n[base]\nboth = \"rate 20mbit\"\n\
        [[axis]]\nname = \"delay\"\nvalues = [\"delay 10ms\", \"delay 40ms\"]\n\
        [[axis]]\nname = \"scope\"\nkind = \"class\"\n\
        values = [{ name = \"all\" }, { name = \"udp7000\", proto = \"udp\", port = 7000 }]\n\
        [[workload]]\nkind = \"udp\"\n";

    #[test]
    fn a_class_axis_selects_the_traffic_of_each_cell() {
        let p = file(SCOPE).unwrap();
        assert_eq!(p.cells.len(), 4);
        let c = &p.cells[3];
        assert_eq!(c.label, "delay=delay 40ms, scope=udp7000");
        // The class axis changes no SPEC clause.
        assert_eq!(c.a_to_b, "rate 20mbit delay 40ms");
        assert_eq!(c.b_to_a, c.a_to_b);
        assert!(p.cells[0].class_match().is_none(), "`all` narrows nothing");
        let m = c.class_match().unwrap();
        assert_eq!((m.proto.as_deref(), m.port), (Some("udp"), Some(7000)));
        // The rule's wan class defaults to the server's address.
        assert_eq!(m.class_cfg("measured", "", "").net, "198.18.0.2/32");
        // --dry-run says which runs restart the emulator.
        let mut out = vec![];
        super::super::print_runs(&mut out, &super::super::listing(&p)).unwrap();
        let out = String::from_utf8(out).unwrap();
        let restarts = out.matches("restarts the emulator").count();
        assert!((1..=3).contains(&restarts), "{out}");
    }

    #[test]
    fn a_timeline_is_checked_against_every_cell() {
        let d = crate::util::test_dir("wirelab-sweep-tl");
        let sweep = d.join("sweep.toml");
        std::fs::write(&sweep, format!("timeline = \"tl.toml\"\n{GRID}")).unwrap();
        let tl = d.join("tl.toml");
        std::fs::write(
            &tl,
            "[[steps]]\nat = \"1s\"\nkind = \"ramp\"\nparam = \"jitter\"\nfrom = \"1ms\"\nto = \"3ms\"\nover = \"1s\"\nevery = \"500ms\"\n",
        )
        .unwrap();
        let p = load(&sweep).unwrap();
        assert_eq!(p.timeline.as_ref().map(|t| t.steps.len()), Some(1));
        // A value no cell can take is refused before a lab exists, naming the step and cell.
        std::fs::write(
            &tl,
            "[[steps]]\nat = \"1s\"\nkind = \"set\"\nclass = \"measured\"\nboth = \"delay 1ms\"\n[[steps]]\nat = \"2s\"\nkind = \"flap\"\ndown = \"1s\"\nevery = \"1s\"\ncount = 1\n",
        )
        .unwrap();
        let e = format!("{:#}", load(&sweep).unwrap_err());
        assert!(e.contains("timeline.steps[1].down"), "{e}");
    }
}
