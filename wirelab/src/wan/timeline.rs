//! `wan --timeline FILE`: timed live changes — `set`, `ramp`, `flap`, `handover`, `loop` —
//! expanded into a schedule of whole-SPEC changes per class, validated in full before anything
//! is attached, and played through the same live-change path as `wan set`.
//!
//! The file (`[[steps]]`, every time an offset from the start):
//!
//! ```toml
//! [[steps]]
//! at = "1s"
//! kind = "ramp"          # delay, jitter, loss or rate from `from` to `to` over `over`
//! param = "delay"
//! from = "20ms"
//! to = "80ms"
//! over = "6s"
//! every = "500ms"        # or step = "5ms" (the value's increment)
//! ```
//!
//! Expansion: each step becomes edits of a (class, direction)'s SPEC at given times — a
//! clause replaced (`delay 40ms`), or an overlay on the loss clause for an outage (`loss
//! 100%`) or a loss burst, removed when it ends. Loops repeat their section of those edits.
//! Folding the edits in time order from the SPECs in force gives one whole SPEC per class and
//! direction at each instant something changes: the schedule.
use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use super::spec;

/// At most this many changes in an expanded schedule.
pub const MAX_CHANGES: usize = 100_000;
/// At most this long, loops included.
pub const MAX_LENGTH: Duration = Duration::from_secs(24 * 3600);

/// The TOML file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Timeline {
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// One step. Which fields apply depends on `kind`; the others must be absent.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Offset from the start ("2s", "1500ms").
    pub at: String,
    /// set, ramp, flap, handover or loop.
    pub kind: String,
    /// The class it changes (default: the default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// ramp, flap, handover: both (default), a_to_b or b_to_a.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// set: the SPECs, as `wan set` takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub both: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a_to_b: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b_to_a: Option<String>,
    /// ramp: delay, jitter, loss or rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// ramp: first and last value ("20ms", "1%", "10mbit").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// ramp: how long from `from` to `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over: Option<String>,
    /// ramp: the value's increment per step (or `every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// ramp: time between steps; flap: the period of the outages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// flap: how long each outage lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
    /// flap: how many outages; loop: how many times the section plays in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// flap: no outage starts at or after this offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// handover: the new delay and rate (permanent), the loss during the burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    /// handover: how long the loss burst lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<String>,
    /// loop: where its section starts (default 0s); the section ends at `at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
}

/// One change of the schedule: a class's whole SPECs from `at` on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Change {
    /// Offset from the start, seconds.
    pub at_s: f64,
    pub class: String,
    pub a_to_b: String,
    pub b_to_a: String,
    /// What asked for it: "steps[1] ramp delay 25ms (1/12)", ...
    pub label: String,
}

/// The expanded timeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Schedule {
    pub changes: Vec<Change>,
    /// When the last step ends (seconds).
    pub length_s: f64,
}

/// Read and parse a timeline file (structure only; [`expand`] checks the rest).
pub fn load(p: &Path) -> Result<Timeline> {
    let t = crate::util::read_user_file(p, crate::util::limit::CONFIG)?;
    toml::from_str(&t).map_err(|e| anyhow!("{}: {}", p.display(), e.to_string().trim()))
}

/// A time of the schedule: as in a SPEC (`500ms`, `1.5s`), or with minutes and hours
/// (`2m`, `1h30m`), as on the command line; a bare number needs its unit.
fn time(at: &str, v: &str) -> Result<Duration> {
    let v = v.trim();
    spec::parse_time(v).or_else(|e| match humantime::parse_duration(v) {
        Ok(d) if d <= crate::util::MAX_DURATION => Ok(d),
        _ => Err(anyhow!(
            "{at}: {e} (a timeline also takes m and h: 2m, 1h30m)"
        )),
    })
}

/// Directions a step changes: [a_to_b, b_to_a].
fn dirs(at: &str, d: Option<&str>) -> Result<[bool; 2]> {
    Ok(match d {
        None | Some("both") => [true, true],
        Some("a_to_b") => [true, false],
        Some("b_to_a") => [false, true],
        Some(o) => bail!("{at}.dir: {o:?}: use both, a_to_b or b_to_a"),
    })
}

/// A ramped quantity and how its values read and print.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Param {
    Delay,
    Jitter,
    Loss,
    Rate,
}

impl Param {
    fn parse(at: &str, v: &str) -> Result<Self> {
        Ok(match v {
            "delay" => Self::Delay,
            "jitter" => Self::Jitter,
            "loss" => Self::Loss,
            "rate" => Self::Rate,
            o => bail!("{at}.param: {o:?}: use delay, jitter, loss or rate"),
        })
    }
    /// A value in the param's base unit (seconds, fraction, bits/s).
    fn value(self, at: &str, v: &str) -> Result<f64> {
        let r = match self {
            Self::Delay | Self::Jitter => spec::parse_time(v.trim()).map(|d| d.as_secs_f64()),
            Self::Loss => spec::parse_percent(v.trim()),
            Self::Rate => spec::parse_rate(v.trim()).map(|b| b as f64),
        };
        r.map_err(|e| anyhow!("{at}: {e}"))
    }
    fn word(self, x: f64) -> String {
        match self {
            Self::Delay | Self::Jitter => ms(x),
            Self::Loss => format!("{}%", round(x * 100.0, 4)),
            Self::Rate => {
                let bits = x.round();
                if bits % 1e6 == 0.0 {
                    format!("{}mbit", bits / 1e6)
                } else if bits % 1e3 == 0.0 {
                    format!("{}kbit", bits / 1e3)
                } else {
                    format!("{bits}bit")
                }
            }
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Delay => "delay",
            Self::Jitter => "jitter",
            Self::Loss => "loss",
            Self::Rate => "rate",
        }
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn ms(secs: f64) -> String {
    format!("{}ms", round(secs * 1e3, 3))
}

/// What an edit does to a (class, direction)'s SPEC.
#[derive(Clone, Debug, PartialEq)]
enum Op {
    /// The whole SPEC.
    Set(String),
    /// One value of a clause (`delay`'s time, its jitter, `loss`, `rate`'s rate).
    Value(Param, f64),
    /// The loss clause is overridden (`loss 100%` for an outage, a burst's loss) until the
    /// matching `Restore`.
    Overlay(String),
    Restore,
}

#[derive(Clone, Debug)]
struct Edit {
    t: Duration,
    /// Order among edits at the same time: the file's order.
    seq: usize,
    class: String,
    dirs: [bool; 2],
    op: Op,
    label: String,
    /// The step it came from (loops check that no step crosses their ends).
    step: usize,
}

/// A step's span (first and last edit time), for the loop check.
fn span(edits: &[Edit], step: usize) -> Option<(Duration, Duration)> {
    let ts: Vec<Duration> = edits
        .iter()
        .filter(|e| e.step == step)
        .map(|e| e.t)
        .collect();
    Some((*ts.iter().min()?, *ts.iter().max()?))
}

/// Check every step and turn it into edits; `classes` are the classes the emulator has,
/// `unclassed` the ones a step without `class` changes.
fn edits(tl: &Timeline, classes: &[String], unclassed: &[String]) -> Result<Vec<Edit>> {
    let mut out = vec![];
    let mut seq = 0usize;
    if tl.steps.is_empty() {
        bail!("timeline.steps: no steps");
    }
    for (i, s) in tl.steps.iter().enumerate() {
        let at = format!("timeline.steps[{i}]");
        let t0 = time(&format!("{at}.at"), &s.at)?;
        let kind = s.kind.as_str();
        // Fields that do not belong to the step's kind are refused (a typo'd kind would
        // otherwise silently ignore them).
        let allowed: &[&str] = match kind {
            "set" => &["class", "both", "a_to_b", "b_to_a"],
            "ramp" => &[
                "class", "dir", "param", "from", "to", "over", "step", "every",
            ],
            "flap" => &["class", "dir", "down", "every", "count", "until"],
            "handover" => &["class", "dir", "delay", "rate", "loss", "burst"],
            "loop" => &["start", "count"],
            o => bail!("{at}.kind: {o:?}: use set, ramp, flap, handover or loop"),
        };
        let given: [(&str, bool); 18] = [
            ("class", s.class.is_some()),
            ("dir", s.dir.is_some()),
            ("both", s.both.is_some()),
            ("a_to_b", s.a_to_b.is_some()),
            ("b_to_a", s.b_to_a.is_some()),
            ("param", s.param.is_some()),
            ("from", s.from.is_some()),
            ("to", s.to.is_some()),
            ("over", s.over.is_some()),
            ("step", s.step.is_some()),
            ("every", s.every.is_some()),
            ("down", s.down.is_some()),
            ("count", s.count.is_some()),
            ("until", s.until.is_some()),
            ("delay", s.delay.is_some()),
            ("rate", s.rate.is_some()),
            ("loss", s.loss.is_some()),
            ("burst", s.burst.is_some()),
        ];
        for (f, g) in given {
            if g && !allowed.contains(&f) {
                bail!(
                    "{at}.{f}: not a field of a {kind} step (it takes at, kind, {})",
                    allowed.join(", ")
                );
            }
        }
        if s.start.is_some() && kind != "loop" {
            bail!("{at}.start: only a loop step has a start");
        }
        let targets: Vec<String> = match &s.class {
            Some(c) if classes.contains(c) => vec![c.clone()],
            Some(c) => bail!(
                "{at}.class: no class {c:?} (classes: {})",
                classes.join(", ")
            ),
            None => unclassed.to_vec(),
        };
        let need = |f: &str, v: &Option<String>| -> Result<String> {
            v.clone()
                .ok_or_else(|| anyhow!("{at}.{f}: required for a {kind} step"))
        };
        let mut push = |t: Duration, dirs: [bool; 2], op: Op, label: String| {
            for c in &targets {
                out.push(Edit {
                    t,
                    seq,
                    class: c.clone(),
                    dirs,
                    op: op.clone(),
                    label: format!("steps[{i}] {label}"),
                    step: i,
                });
                seq += 1;
            }
        };
        match kind {
            "set" => {
                let d = super::DirSpecs {
                    both: s.both.clone(),
                    a_to_b: s.a_to_b.clone(),
                    b_to_a: s.b_to_a.clone(),
                };
                if d.both.is_none() && d.a_to_b.is_none() && d.b_to_a.is_none() {
                    bail!("{at}.both: a set step needs both, a_to_b or b_to_a");
                }
                let specs = super::dir_specs(&d, &at)?;
                for (k, given) in [
                    d.both.is_some() || d.a_to_b.is_some(),
                    d.both.is_some() || d.b_to_a.is_some(),
                ]
                .into_iter()
                .enumerate()
                {
                    if given {
                        let mut dirs = [false; 2];
                        dirs[k] = true;
                        let text = specs[k].text.clone();
                        push(t0, dirs, Op::Set(text.clone()), format!("set \"{text}\""));
                    }
                }
            }
            "ramp" => {
                let dirs = dirs(&at, s.dir.as_deref())?;
                let p = Param::parse(&at, &need("param", &s.param)?)?;
                let from = p.value(&format!("{at}.from"), &need("from", &s.from)?)?;
                let to = p.value(&format!("{at}.to"), &need("to", &s.to)?)?;
                let over = time(&format!("{at}.over"), &need("over", &s.over)?)?;
                if over.is_zero() {
                    bail!("{at}.over: must be longer than 0 (a jump is a set step)");
                }
                let n = match (&s.every, &s.step) {
                    (Some(_), Some(_)) => bail!("{at}.step: give every or step, not both"),
                    (None, None) => bail!("{at}.every: a ramp needs every (time between steps) or step (the value's increment)"),
                    (Some(e), None) => {
                        let e = time(&format!("{at}.every"), e)?;
                        if e < Duration::from_millis(1) || e > over {
                            bail!("{at}.every: {e:?} must be at least 1ms and at most `over` ({over:?})");
                        }
                        (over.as_secs_f64() / e.as_secs_f64()).round().max(1.0) as u64
                    }
                    (None, Some(st)) => {
                        let st = p.value(&format!("{at}.step"), st)?;
                        if st <= 0.0 {
                            bail!("{at}.step: must be more than 0");
                        }
                        ((to - from).abs() / st).ceil().max(1.0) as u64
                    }
                };
                if n > MAX_CHANGES as u64 {
                    bail!("{at}: {n} steps (at most {MAX_CHANGES})");
                }
                if over.as_secs_f64() / (n as f64) < 1e-3 {
                    bail!(
                        "{at}.over: steps would be less than 1ms apart ({n} steps over {over:?})"
                    );
                }
                for k in 0..=n {
                    let f = k as f64 / n as f64;
                    let v = from + (to - from) * f;
                    let t = t0 + over.mul_f64(f);
                    push(
                        t,
                        dirs,
                        Op::Value(p, v),
                        format!("ramp {} {} ({k}/{n})", p.name(), p.word(v)),
                    );
                }
            }
            "flap" => {
                let dirs = dirs(&at, s.dir.as_deref())?;
                let down = time(&format!("{at}.down"), &need("down", &s.down)?)?;
                let every = time(&format!("{at}.every"), &need("every", &s.every)?)?;
                if down.is_zero() || down >= every {
                    bail!("{at}.down: {down:?} must be longer than 0 and shorter than every ({every:?})");
                }
                let count = match (s.count, &s.until) {
                    (Some(_), Some(_)) => bail!("{at}.until: give count or until, not both"),
                    (None, None) => bail!("{at}.count: a flap needs count or until"),
                    (Some(0), None) => bail!("{at}.count: at least 1"),
                    (Some(c), None) => c,
                    (None, Some(u)) => {
                        let u = time(&format!("{at}.until"), u)?;
                        if u <= t0 {
                            bail!("{at}.until: {u:?} is not after at ({t0:?})");
                        }
                        ((u - t0).as_secs_f64() / every.as_secs_f64()).ceil() as u64
                    }
                };
                if count > MAX_CHANGES as u64 / 2 {
                    bail!("{at}.count: {count} (at most {})", MAX_CHANGES / 2);
                }
                for k in 0..count {
                    let t = t0 + every * k as u32;
                    let n = k + 1;
                    push(
                        t,
                        dirs,
                        Op::Overlay("loss 100%".into()),
                        format!("flap {n}/{count} down"),
                    );
                    push(t + down, dirs, Op::Restore, format!("flap {n}/{count} up"));
                }
            }
            "handover" => {
                let dirs = dirs(&at, s.dir.as_deref())?;
                if s.delay.is_none() && s.rate.is_none() && s.burst.is_none() {
                    bail!("{at}: a handover needs delay, rate or burst (or all three)");
                }
                for (p, given) in [(Param::Delay, &s.delay), (Param::Rate, &s.rate)] {
                    if let Some(text) = given {
                        let v = p.value(&format!("{at}.{}", p.name()), text)?;
                        let label = format!("handover {} {}", p.name(), p.word(v));
                        push(t0, dirs, Op::Value(p, v), label);
                    }
                }
                match (&s.burst, &s.loss) {
                    (Some(b), l) => {
                        let b = time(&format!("{at}.burst"), b)?;
                        if b.is_zero() {
                            bail!("{at}.burst: must be longer than 0");
                        }
                        let p = match l {
                            Some(l) => Param::Loss.value(&format!("{at}.loss"), l)?,
                            None => 1.0,
                        };
                        let clause = format!("loss {}", Param::Loss.word(p));
                        push(
                            t0,
                            dirs,
                            Op::Overlay(clause.clone()),
                            format!("handover burst {clause} for {}", ms(b.as_secs_f64())),
                        );
                        push(t0 + b, dirs, Op::Restore, "handover burst over".into());
                    }
                    (None, Some(_)) => {
                        bail!("{at}.loss: the loss of a burst needs burst (its length)")
                    }
                    (None, None) => {}
                }
            }
            _ => {
                // loop: checked and applied in `expand`.
                let start = match &s.start {
                    Some(v) => time(&format!("{at}.start"), v)?,
                    None => Duration::ZERO,
                };
                if start >= t0 {
                    bail!(
                        "{at}.start: {start:?} must be before at ({t0:?}), where the section ends"
                    );
                }
                match s.count {
                    None => bail!("{at}.count: a loop needs count (how many times its section plays, at least 2)"),
                    Some(c) if !(2..=100_000).contains(&c) => {
                        bail!("{at}.count: {c} (2 to 100000)")
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(out)
}

/// The loops, latest section first: (step index, start, end, count).
fn loops(tl: &Timeline) -> Result<Vec<(usize, Duration, Duration, u64)>> {
    let mut v = vec![];
    for (i, s) in tl
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == "loop")
    {
        let at = format!("timeline.steps[{i}]");
        let end = time(&format!("{at}.at"), &s.at)?;
        let start = match &s.start {
            Some(x) => time(&format!("{at}.start"), x)?,
            None => Duration::ZERO,
        };
        v.push((i, start, end, s.count.unwrap_or(2)));
    }
    v.sort_by_key(|l| std::cmp::Reverse(l.1));
    for w in v.windows(2) {
        let (later, earlier) = (w[0], w[1]);
        if earlier.2 > later.1 {
            bail!(
                "timeline.steps[{}]: its section overlaps the loop of steps[{}] (loops may not nest or overlap)",
                later.0,
                earlier.0
            );
        }
    }
    Ok(v)
}

/// Expand `tl` against the emulator's classes and the SPECs in force (`initial`: class name →
/// [a_to_b, b_to_a] texts). Steps without `class` change each class in `unclassed`. Every
/// SPEC of the schedule is parsed here; an error names the step and field.
pub fn expand(
    tl: &Timeline,
    initial: &BTreeMap<String, [String; 2]>,
    unclassed: &[String],
) -> Result<Schedule> {
    let classes: Vec<String> = initial.keys().cloned().collect();
    let mut ed = edits(tl, &classes, unclassed)?;
    // Loops: the latest section first, so an earlier loop also shifts what a later one made.
    for (li, start, end, count) in loops(tl)? {
        let len = end - start;
        for (si, _) in tl.steps.iter().enumerate() {
            if let Some((a, b)) = span(&ed, si) {
                let inside = |t: Duration| t >= start && t < end;
                if (inside(a) && !(inside(b) || b == end)) || (a < start && b > start) {
                    bail!(
                        "timeline.steps[{si}]: it runs from {a:?} to {b:?}, across an end of the loop of steps[{li}] ({start:?} to {end:?})"
                    );
                }
            }
        }
        let extra = (count - 1) as u32;
        let mut more = vec![];
        for e in &mut ed {
            if e.t >= start && e.t < end {
                for k in 1..=extra {
                    let mut c = e.clone();
                    c.t = e.t + len * k;
                    c.label = format!("{} (loop {}/{count})", e.label, k + 1);
                    more.push(c);
                }
            } else if e.t >= end {
                e.t += len * extra;
            }
        }
        ed.extend(more);
        if ed.len() > MAX_CHANGES * 2 {
            bail!("timeline.steps[{li}].count: more than {MAX_CHANGES} changes");
        }
    }
    ed.sort_by_key(|e| (e.t, e.seq));
    let length = ed.last().map(|e| e.t).unwrap_or_default();
    if length > MAX_LENGTH {
        bail!("timeline: {length:?} long (at most 24h, loops included)");
    }
    // Fold: per (class, direction) the base SPEC and an overlay on its loss clause.
    struct State {
        base: String,
        overlay: Option<String>,
    }
    let mut st: BTreeMap<(String, usize), State> = BTreeMap::new();
    for (c, s) in initial {
        for (d, text) in s.iter().enumerate() {
            st.insert(
                (c.clone(), d),
                State {
                    base: text.clone(),
                    overlay: None,
                },
            );
        }
    }
    let effective = |s: &State| match &s.overlay {
        Some(o) => crate::sweep::plan::apply(&s.base, &[o]),
        None => s.base.clone(),
    };
    let mut last: BTreeMap<String, [String; 2]> = initial.clone();
    let mut changes = vec![];
    let mut i = 0;
    while i < ed.len() {
        let t = ed[i].t;
        let mut j = i;
        let mut labels: BTreeMap<String, Vec<String>> = BTreeMap::new();
        while j < ed.len() && ed[j].t == t {
            let e = &ed[j];
            let step_at = format!("timeline.steps[{}]", e.step);
            for d in 0..2 {
                if !e.dirs[d] {
                    continue;
                }
                let s = st
                    .get_mut(&(e.class.clone(), d))
                    .expect("every class has a state");
                match &e.op {
                    Op::Set(text) => s.base = text.clone(),
                    Op::Value(p, v) => {
                        s.base = with_value(&s.base, *p, *v).map_err(|m| {
                            anyhow!("{step_at}: class {} {}: {m}", e.class, super::DIRS[d])
                        })?;
                    }
                    Op::Overlay(o) => s.overlay = Some(o.clone()),
                    Op::Restore => s.overlay = None,
                }
            }
            let l = labels.entry(e.class.clone()).or_default();
            if !l.contains(&e.label) {
                l.push(e.label.clone());
            }
            j += 1;
        }
        for (class, labels) in labels {
            let now = [
                effective(&st[&(class.clone(), 0)]),
                effective(&st[&(class.clone(), 1)]),
            ];
            if last.get(&class) == Some(&now) {
                continue;
            }
            for (d, text) in now.iter().enumerate() {
                spec::parse(text).map_err(|e| {
                    anyhow!(
                        "{}: class {class} {}: SPEC {text:?}: {e}",
                        labels.join(", "),
                        super::DIRS[d]
                    )
                })?;
            }
            changes.push(Change {
                at_s: t.as_secs_f64(),
                class: class.clone(),
                a_to_b: now[0].clone(),
                b_to_a: now[1].clone(),
                label: join_labels(&labels),
            });
            last.insert(class, now);
        }
        i = j;
    }
    if changes.len() > MAX_CHANGES {
        bail!(
            "timeline: {} changes (at most {MAX_CHANGES})",
            changes.len()
        );
    }
    Ok(Schedule {
        changes,
        length_s: length.as_secs_f64(),
    })
}

/// Labels of one change, a step's parts together: "steps[0] handover delay 60ms, rate 5mbit".
fn join_labels(labels: &[String]) -> String {
    let mut out = String::new();
    let mut head = "";
    for l in labels {
        // "steps[0] handover" and the rest.
        let cut = l.match_indices(' ').nth(1).map_or(l.len(), |(i, _)| i);
        let (h, rest) = l.split_at(cut);
        if h == head && !rest.is_empty() {
            out += &format!(",{rest}");
        } else {
            if !out.is_empty() {
                out += "; ";
            }
            out += l;
            head = h;
        }
    }
    out
}

/// `base` with one value replaced: the delay's time or jitter, the loss, the rate.
fn with_value(base: &str, p: Param, v: f64) -> std::result::Result<String, String> {
    let clause = |kw: &str| -> Option<Vec<String>> {
        crate::sweep::plan::clauses(base)
            .into_iter()
            .find(|c| c.split_whitespace().next() == Some(kw))
            .map(|c| c.split_whitespace().map(str::to_string).collect())
    };
    let word = p.word(v);
    let new = match p {
        Param::Delay => match clause("delay") {
            Some(mut c) => {
                c[1] = word;
                c.join(" ")
            }
            None => format!("delay {word}"),
        },
        Param::Jitter => match clause("delay") {
            Some(mut c) => {
                let has_jitter = c
                    .get(2)
                    .is_some_and(|w| w.starts_with(|ch: char| ch.is_ascii_digit() || ch == '.'));
                if has_jitter {
                    c[2] = word;
                } else {
                    c.insert(2.min(c.len()), word);
                }
                c.join(" ")
            }
            None => return Err("a jitter ramp needs a delay in the SPEC".into()),
        },
        Param::Loss => format!("loss {word}"),
        Param::Rate => match clause("rate") {
            Some(mut c) => {
                c[1] = word;
                c.join(" ")
            }
            None => format!("rate {word}"),
        },
    };
    Ok(replace_clause(base, &new))
}

/// `base` with the clause of `new`'s keyword replaced where it stands (or `new` appended).
fn replace_clause(base: &str, new: &str) -> String {
    let kw = new.split_whitespace().next().unwrap_or("");
    let mut cs = crate::sweep::plan::clauses(base);
    match cs
        .iter_mut()
        .find(|c| c.split_whitespace().next() == Some(kw))
    {
        Some(c) => *c = new.to_string(),
        None => cs.push(new.to_string()),
    }
    cs.join(" ")
}

/// The schedule as text (`wan --check`).
pub fn describe(s: &Schedule) -> String {
    let mut t = format!(
        "timeline: {} changes over {:.3}s",
        s.changes.len(),
        s.length_s
    );
    for c in &s.changes {
        t += &format!(
            "\n  {:>9.3}s {:<10} a_to_b \"{}\" b_to_a \"{}\"  <- {}",
            c.at_s, c.class, c.a_to_b, c.b_to_a, c.label
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initial(spec: &str) -> BTreeMap<String, [String; 2]> {
        BTreeMap::from([("default".to_string(), [spec.to_string(), spec.to_string()])])
    }

    fn run(toml_text: &str, spec: &str) -> Result<Schedule> {
        let tl: Timeline = toml::from_str(toml_text)?;
        expand(&tl, &initial(spec), &["default".to_string()])
    }

    #[test]
    fn ramp_steps_evenly_and_keeps_the_other_clauses() {
        let s = run(
            "[[steps]]\nat = \"1s\"\nkind = \"ramp\"\nparam = \"delay\"\nfrom = \"20ms\"\nto = \"80ms\"\nover = \"6s\"\nevery = \"500ms\"\n",
            "delay 10ms 1ms loss 1%",
        )
        .unwrap();
        assert_eq!(s.changes.len(), 13);
        assert_eq!(s.changes[0].at_s, 1.0);
        assert_eq!(s.changes[0].a_to_b, "delay 20ms 1ms loss 1%");
        assert_eq!(s.changes[1].a_to_b, "delay 25ms 1ms loss 1%");
        assert_eq!(s.changes[12].at_s, 7.0);
        assert_eq!(s.changes[12].b_to_a, "delay 80ms 1ms loss 1%");
        // By increment: 15 ms steps from 20 to 80 ms are 4 steps.
        let s = run(
            "[[steps]]\nat = \"0s\"\nkind = \"ramp\"\nparam = \"delay\"\nfrom = \"20ms\"\nto = \"80ms\"\nover = \"2s\"\nstep = \"15ms\"\n",
            "",
        )
        .unwrap();
        assert_eq!(s.changes.len(), 5);
        assert_eq!(s.changes[4].a_to_b, "delay 80ms");
    }

    #[test]
    fn flap_overlays_loss_and_restores_it() {
        let s = run(
            "[[steps]]\nat = \"1s\"\nkind = \"flap\"\ndown = \"200ms\"\nevery = \"1s\"\ncount = 2\ndir = \"a_to_b\"\n",
            "delay 5ms loss 1%",
        )
        .unwrap();
        let v: Vec<(f64, &str, &str)> = s
            .changes
            .iter()
            .map(|c| (c.at_s, c.a_to_b.as_str(), c.b_to_a.as_str()))
            .collect();
        assert_eq!(
            v,
            [
                (1.0, "delay 5ms loss 100%", "delay 5ms loss 1%"),
                (1.2, "delay 5ms loss 1%", "delay 5ms loss 1%"),
                (2.0, "delay 5ms loss 100%", "delay 5ms loss 1%"),
                (2.2, "delay 5ms loss 1%", "delay 5ms loss 1%"),
            ]
        );
    }

    #[test]
    fn handover_and_loop() {
        let s = run(
            "[[steps]]\nat = \"1s\"\nkind = \"handover\"\ndelay = \"60ms\"\nrate = \"5mbit\"\nburst = \"150ms\"\n\
             [[steps]]\nat = \"2s\"\nkind = \"set\"\nboth = \"delay 20ms\"\n\
             [[steps]]\nat = \"3s\"\nkind = \"loop\"\nstart = \"1s\"\ncount = 3\n",
            "delay 20ms",
        )
        .unwrap();
        assert_eq!(
            s.changes[0].label,
            "steps[0] handover delay 60ms, rate 5mbit, burst loss 100% for 150ms"
        );
        let v: Vec<(f64, &str)> = s
            .changes
            .iter()
            .map(|c| ((c.at_s * 1000.0).round() / 1000.0, c.a_to_b.as_str()))
            .collect();
        assert_eq!(
            v,
            [
                (1.0, "delay 60ms rate 5mbit loss 100%"),
                (1.15, "delay 60ms rate 5mbit"),
                (2.0, "delay 20ms"),
                (3.0, "delay 60ms rate 5mbit loss 100%"),
                (3.15, "delay 60ms rate 5mbit"),
                (4.0, "delay 20ms"),
                (5.0, "delay 60ms rate 5mbit loss 100%"),
                (5.15, "delay 60ms rate 5mbit"),
                (6.0, "delay 20ms"),
            ]
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (text, field) in [
            ("[[steps]]\nat = \"1s\"\nkind = \"ramp\"\nparam = \"delay\"\nfrom = \"20ms\"\nto = \"fast\"\nover = \"6s\"\nevery = \"1s\"\n", "timeline.steps[0].to"),
            ("[[steps]]\nat = \"1\"\nkind = \"set\"\nboth = \"delay 1ms\"\n", "timeline.steps[0].at"),
            ("[[steps]]\nat = \"1s\"\nkind = \"jump\"\n", "timeline.steps[0].kind"),
            ("[[steps]]\nat = \"1s\"\nkind = \"flap\"\ndown = \"2s\"\nevery = \"1s\"\ncount = 1\n", "timeline.steps[0].down"),
            ("[[steps]]\nat = \"1s\"\nkind = \"set\"\nboth = \"loss 120%\"\n", "timeline.steps[0].both"),
            ("[[steps]]\nat = \"1s\"\nkind = \"set\"\nclass = \"voip\"\nboth = \"delay 1ms\"\n", "timeline.steps[0].class"),
            ("[[steps]]\nat = \"1s\"\nkind = \"flap\"\ndown = \"20ms\"\nevery = \"1s\"\ncount = 3\nrate = \"1mbit\"\n", "timeline.steps[0].rate"),
            ("[[steps]]\nat = \"1s\"\nkind = \"set\"\nboth = \"delay 1ms\"\n[[steps]]\nat = \"3s\"\nkind = \"loop\"\ncount = 1\n", "timeline.steps[1].count"),
            ("[[steps]]\nat = \"1s\"\nkind = \"ramp\"\nparam = \"delay\"\nfrom = \"1ms\"\nto = \"2ms\"\nover = \"4s\"\nevery = \"1s\"\n[[steps]]\nat = \"3s\"\nkind = \"loop\"\ncount = 2\n", "timeline.steps[0]"),
        ] {
            let e = format!("{:#}", run(text, "delay 5ms").unwrap_err());
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }
}
