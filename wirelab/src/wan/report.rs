//! What a wan run reports: the stats [`Line`] per interval and at the end (kernel counters
//! merged with the engine's), the record's configuration and live changes, configured vs
//! measured quantities, and the `--metrics` families. The engine loop sends [`ReportMsg`]s;
//! [`reporter`] (its own thread) turns them into lines for the runtime's [`Observer`].
use std::{
    collections::BTreeMap,
    io::{self, Write},
    path::Path,
    sync::mpsc::Receiver,
    time::Duration,
};

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use serde::{Deserialize, Serialize};
use wirelab_common::wan::WanCounters;

use super::{
    engine::{ClassStats, Engine},
    spec::{self, Loss, Spec},
    Config, DirSpecs, Direction, Options, Plan, DIRS,
};
use crate::{
    record::LineKind,
    runtime::{bpf::AttachMode, observe::Observer},
};

pub(super) enum ReportMsg {
    Interval(f64, Vec<(usize, usize, ClassStats)>, EngineHealth),
    /// A live change: its record entry and the specs now in force (none when refused).
    Change(ChangeEntry, Option<[Vec<Spec>; 2]>),
    Final(
        f64,
        Vec<(usize, usize, ClassStats)>,
        u64,
        [Vec<Spec>; 2],
        EngineHealth,
    ),
}

fn read_counters(
    m: &PerCpuArray<MapData, WanCounters>,
    max: u32,
    d: usize,
    c: usize,
) -> WanCounters {
    crate::runtime::bpf::sum(m, d as u32 * max + c as u32).unwrap_or_default()
}

/// Merge the engine's stats with the kernel's counters into one [`Line`] per interval and
/// hand it to the observer (table or `--json` line, `--record` series, `--metrics`); returns
/// the final rows.
pub(super) fn reporter(
    counters: PerCpuArray<MapData, WanCounters>,
    names: Vec<String>,
    max: u32,
    rx: Receiver<ReportMsg>,
    mut obs: Observer,
    mets: Option<WanMetrics>,
) -> Result<Vec<ClassReport>> {
    let mut prev: Vec<Vec<WanCounters>> = vec![vec![WanCounters::default(); max as usize]; 2];
    let mut rows_of = |eng: Vec<(usize, usize, ClassStats)>, total: bool| {
        let mut by: BTreeMap<(usize, usize), ClassStats> =
            eng.into_iter().map(|(d, c, s)| ((d, c), s)).collect();
        let mut rows = vec![];
        for (d, prev) in prev.iter_mut().enumerate() {
            for (c, prev) in prev.iter_mut().enumerate() {
                let k = read_counters(&counters, max, d, c);
                let shown = if total { k } else { minus(&k, prev) };
                *prev = k;
                let e = by.remove(&(d, c)).unwrap_or_default();
                if c == 0 || shown.rx_packets > 0 || e.rx > 0 || e.tx > 0 || e.queue_depth > 0 {
                    rows.push(report(d, &names[c], &shown, &e));
                }
            }
        }
        if let Some(m) = &mets {
            m.update(&rows);
        }
        rows
    };
    let mut stats = ChangeStats::default();
    let mut latencies = vec![];
    for msg in rx {
        match msg {
            ReportMsg::Change(entry, specs) => {
                obs.change(&entry)?;
                match (&specs, entry.latency_ms) {
                    (Some(specs), lat) => {
                        obs.set_configured(configured(specs));
                        stats.applied += 1;
                        if entry.source == ChangeSource::Timeline {
                            stats.timeline += 1;
                            latencies.extend(lat);
                        }
                        if let Some(m) = &mets {
                            m.changes.get_or_create(&vec![]).inc();
                        }
                    }
                    (None, _) => stats.refused += 1,
                }
            }
            ReportMsg::Interval(t, eng, health) => {
                let line = Line {
                    kind: LineKind::Interval,
                    t,
                    classes: rows_of(eng, false),
                    engine: Some(health),
                    seed: None,
                    changes: None,
                };
                obs.interval(&line, |out| table(&line, out))?;
            }
            ReportMsg::Final(t, eng, seed, specs, health) => {
                let rows = rows_of(eng, true);
                let measured = measured(&rows, &specs);
                latencies.sort_by(f64::total_cmp);
                stats.latency_p50_ms = latencies.get(latencies.len() / 2).copied();
                stats.latency_max_ms = latencies.last().copied();
                let fin = Line {
                    kind: LineKind::Final,
                    t,
                    classes: rows,
                    engine: Some(health),
                    seed: Some(seed),
                    changes: (stats.applied + stats.refused > 0).then_some(stats),
                };
                obs.finish(&fin, measured, |out| table(&fin, out))?;
                return Ok(fin.classes);
            }
        }
    }
    Ok(vec![])
}

/// One stats line: on stdout (`--json`, with `engine`), in the record's series (interval)
/// and its final document (with `seed`). The report reads the record back as this type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    #[serde(rename = "type")]
    pub kind: LineKind,
    /// Seconds since start.
    pub t: f64,
    pub classes: Vec<ClassReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The final line: live changes applied and refused, and how late the timeline's were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangeStats>,
}

/// Live changes over a run (the final line), with the timeline's apply latency: from the
/// time a change was due to the time the engine switched to it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ChangeStats {
    pub applied: u64,
    /// Of them, from the timeline.
    pub timeline: u64,
    pub refused: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
}

/// One class's configuration in a record (`classes` of the config and of each change).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassConfig {
    pub name: String,
    pub a_to_b: String,
    pub b_to_a: String,
    pub a_to_b_parsed: Spec,
    pub b_to_a_parsed: Spec,
}

named_enum! {
    /// Whether a live change was put in force.
    #[derive(Default)]
    pub enum ChangeOutcome {
        /// (Also every line written before `type` existed: only applied changes were.)
        #[default]
        Applied = "applied",
        Refused = "refused",
    }
}

named_enum! {
    /// Who asked for a live change.
    #[derive(Default)]
    pub enum ChangeSource {
        /// The control socket: `wan set`, a sweep (and every line written before `source`
        /// existed).
        #[default]
        Set = "set",
        Timeline = "timeline",
    }
}

/// A live change in the record (`wan.changes.jsonl`): one line per change asked for, applied
/// or refused, with the time it was asked for (a timeline's: its scheduled time), the time
/// the engine switched to it, and every class now in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeEntry {
    /// Lines written before `type` and `source` existed have neither (docs/record-format.md).
    #[serde(rename = "type", default)]
    pub kind: ChangeOutcome,
    #[serde(default)]
    pub source: ChangeSource,
    /// The timeline step(s) behind it: "steps[1] ramp delay 25ms (1/12)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Seconds since start when it was asked for (scheduled, for a timeline).
    pub requested_t: Option<f64>,
    /// From asked for to applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall-clock time it was applied (or refused).
    pub unix: f64,
    /// The class's SPECs now in force, as text (empty when refused).
    pub applied: String,
    /// Seconds since start when it was applied (or refused).
    pub t: f64,
    pub classes: Vec<ClassConfig>,
}

/// One line of stats for a (direction, class).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ClassReport {
    pub dir: Direction,
    pub class: String,
    /// Frames (and bytes) that entered the emulator.
    pub rx: u64,
    pub rx_bytes: u64,
    /// Frames sent on: by the engine, the kernel fast path, or bypassing the engine.
    pub tx: u64,
    /// Frames dropped, by cause: the loss model, a full queue (`limit`), a blackhole.
    pub drops_loss: u64,
    pub drops_queue: u64,
    pub drops_blackhole: u64,
    /// Due while the out interface had no carrier.
    pub drops_link_down: u64,
    /// Extra copies sent (`duplicate`).
    pub duplicated: u64,
    /// Frames sent with one bit flipped (`corrupt`).
    pub corrupted: u64,
    /// Frames sent ahead of earlier ones (`reorder`, or jitter with `jitter-order reorder`).
    pub reordered: u64,
    /// Forwarded by the kernel alone (a class with nothing for the engine to do).
    pub fast_path: u64,
    /// Meant for the engine but forwarded unimpaired (no socket yet, a queue other than 0,
    /// no room for metadata).
    pub engine_bypassed: u64,
    /// Frames held by the engine at the end of the interval, and at most during it.
    pub queue_now: u64,
    pub queue_max: u64,
    /// The emulated delay (the delay/jitter stage, what `delay` configures).
    pub delay_p50_ms: Option<f64>,
    pub delay_p99_ms: Option<f64>,
    pub delay_max_ms: Option<f64>,
    /// Queueing after it: waiting for the `rate` link behind earlier frames (0 without rate).
    #[serde(default)]
    pub queue_delay_p50_ms: Option<f64>,
    #[serde(default)]
    pub queue_delay_p99_ms: Option<f64>,
}

fn report(d: usize, name: &str, k: &WanCounters, e: &ClassStats) -> ClassReport {
    let q = |p: f64| {
        e.delay_hist
            .as_ref()
            .map(|h| h.value_at_quantile(p) as f64 / 1000.0)
    };
    // Recorded in whole microseconds from 1 up: below 2 us is "no queueing".
    let qq = |p: f64| {
        e.queue_hist.as_ref().map(|h| {
            let us = h.value_at_quantile(p);
            if us <= 1 {
                0.0
            } else {
                us as f64 / 1000.0
            }
        })
    };
    ClassReport {
        dir: DIRS[d],
        class: name.into(),
        rx: k.rx_packets,
        rx_bytes: k.rx_bytes,
        tx: e.tx + k.fast_packets + k.xsk_fallback,
        drops_loss: k.loss_drops,
        drops_queue: e.queue_drops,
        drops_blackhole: k.blackhole_drops,
        drops_link_down: e.link_down_drops,
        duplicated: e.duplicated,
        corrupted: e.corrupted,
        reordered: e.reordered,
        fast_path: k.fast_packets,
        engine_bypassed: k.xsk_fallback,
        queue_now: e.queue_depth,
        queue_max: e.queue_max,
        delay_p50_ms: q(0.5),
        delay_p99_ms: q(0.99),
        delay_max_ms: e.delay_hist.as_ref().map(|h| h.max() as f64 / 1000.0),
        queue_delay_p50_ms: qq(0.5),
        queue_delay_p99_ms: qq(0.99),
    }
}

fn minus(a: &WanCounters, b: &WanCounters) -> WanCounters {
    WanCounters {
        rx_packets: a.rx_packets - b.rx_packets,
        rx_bytes: a.rx_bytes - b.rx_bytes,
        loss_drops: a.loss_drops - b.loss_drops,
        blackhole_drops: a.blackhole_drops - b.blackhole_drops,
        fast_packets: a.fast_packets - b.fast_packets,
        xsk_packets: a.xsk_packets - b.xsk_packets,
        xsk_fallback: a.xsk_fallback - b.xsk_fallback,
    }
}

/// The engine's own losses so far: frames it could not take in, hold or send.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct EngineHealth {
    /// Dropped by the kernel before the engine saw them (no fill-ring frame, RX ring full).
    pub xsk_rx_dropped: u64,
    /// Dropped for lack of UMEM frames (duplicates) or a stuck TX ring.
    pub no_frame: u64,
    /// Due while the out interface was down.
    pub link_down: u64,
    /// Without class metadata (counted, sent with the default class).
    pub bad_meta: u64,
    /// Notes of dropped frames a capture on the interface did not take in time (its socket
    /// and the engine's backlog of 2,048 were full): those frames stay labelled `to the
    /// timing engine` in its file.
    #[serde(default)]
    pub drop_notes_lost: u64,
}

impl EngineHealth {
    pub(super) fn of(e: &Engine) -> Self {
        Self {
            xsk_rx_dropped: e.xsk_drops(),
            no_frame: e.no_frame_drops,
            link_down: e.link_down_drops,
            bad_meta: e.bad_meta,
            drop_notes_lost: e.drop_notes_lost(),
        }
    }

    fn any(&self) -> bool {
        self.xsk_rx_dropped + self.no_frame + self.link_down + self.bad_meta + self.drop_notes_lost
            > 0
    }
}

/// A stats line as text: the engine's own losses (if any), then one row per class.
fn table(line: &Line, out: &mut dyn Write) -> io::Result<()> {
    let t = line.t;
    if let Some(c) = &line.changes {
        let ms = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "[{t:>7.2}s] live changes: {} applied ({} from the timeline), {} refused; timeline apply latency ms p50 {} max {}",
            c.applied, c.timeline, c.refused, ms(c.latency_p50_ms), ms(c.latency_max_ms)
        )?;
    }
    if let Some(health) = line.engine.filter(EngineHealth::any) {
        writeln!(
            out,
            "[{t:>7.2}s] engine losses so far: kernel rx drops {} no frame {} link down {} no metadata {}{}",
            health.xsk_rx_dropped,
            health.no_frame,
            health.link_down,
            health.bad_meta,
            match health.drop_notes_lost {
                0 => String::new(),
                n => format!(" (drop notes a capture missed: {n})"),
            }
        )?;
    }
    for r in &line.classes {
        let ms = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "[{t:>7.2}s] {:<6} {:<10} rx {:>7} tx {:>7} drop loss/queue/bh/down {}/{}/{}/{} dup {} corrupt {} reord {} queue {} (max {}) delay ms p50 {} p99 {} max {} rate queue ms p50 {} p99 {}",
            r.dir, r.class, r.rx, r.tx, r.drops_loss, r.drops_queue, r.drops_blackhole,
            r.drops_link_down, r.duplicated, r.corrupted, r.reordered, r.queue_now, r.queue_max,
            ms(r.delay_p50_ms), ms(r.delay_p99_ms), ms(r.delay_max_ms),
            ms(r.queue_delay_p50_ms), ms(r.queue_delay_p99_ms)
        )?;
    }
    Ok(())
}

pub(super) fn class_configs(names: &[String], specs: &[Vec<Spec>; 2]) -> Vec<ClassConfig> {
    names
        .iter()
        .enumerate()
        .map(|(c, n)| ClassConfig {
            name: n.clone(),
            a_to_b: specs[0][c].text.clone(),
            b_to_a: specs[1][c].text.clone(),
            a_to_b_parsed: specs[0][c].clone(),
            b_to_a_parsed: specs[1][c].clone(),
        })
        .collect()
}

/// The configuration in a run record (`wan.config.json`).
#[derive(Serialize)]
struct RecordConfig<'a> {
    between: [&'a str; 2],
    netns: Option<&'a str>,
    command_line: &'a DirSpecs,
    config_file: Option<&'a Path>,
    config: &'a Config,
    seed: u64,
    interval_s: f64,
    duration_s: Option<f64>,
    frames: u64,
    realtime: bool,
    xdp_modes: &'a [AttachMode],
    classes: Vec<ClassConfig>,
}

/// The observer of a wan run: stdout (table or `--json`) and the `--record` source `wan`
/// with its configuration and configured quantities.
pub(super) fn observer(
    opts: &Options,
    cfg: &Config,
    plan: &Plan,
    modes: &[AttachMode],
) -> Result<Observer> {
    let (interval_s, duration_s) = opts.report.seconds();
    let config = RecordConfig {
        between: [&opts.iface_a, &opts.iface_b],
        netns: opts.netns.as_deref(),
        command_line: &opts.specs,
        config_file: opts.config.as_deref(),
        config: cfg,
        seed: plan.seed,
        interval_s,
        duration_s,
        frames: opts.frames,
        realtime: opts.realtime,
        xdp_modes: modes,
        classes: class_configs(&plan.names, &plan.specs),
    };
    let mut obs = opts.report.observer("wan", &config)?;
    obs.set_configured(configured(&plan.specs));
    Ok(obs)
}

/// The default class's configured numbers (the class probes go through unless a class
/// matches them), for the configured-vs-measured table.
pub fn configured(specs: &[Vec<Spec>; 2]) -> Vec<crate::record::Quantity> {
    use crate::record::Quantity as Q;
    let mut v = vec![];
    for (d, dir) in DIRS.iter().enumerate() {
        let dir = dir.as_str();
        let Some(s) = specs[d].first() else { continue };
        let ms = |x: Duration| x.as_secs_f64() * 1000.0;
        v.push(Q::new("delay_ms", dir, ms(s.delay), "ms", &s.text));
        match s.distribution {
            spec::Distribution::Normal => v.push(Q::new(
                "delay_stddev_ms",
                dir,
                ms(s.jitter),
                "ms",
                "jitter (normal)",
            )),
            spec::Distribution::Uniform => v.push(Q::new(
                "delay_stddev_ms",
                dir,
                ms(s.jitter) / 3f64.sqrt(),
                "ms",
                "jitter / sqrt(3) (uniform)",
            )),
            _ => {}
        }
        match &s.loss {
            None => v.push(Q::new("loss_pct", dir, 0.0, "%", "")),
            Some(Loss::Random { p, .. }) => v.push(Q::new("loss_pct", dir, p * 100.0, "%", "")),
            Some(_) => {}
        }
        v.push(Q::new("duplicate_pct", dir, s.duplicate * 100.0, "%", ""));
        v.push(Q::new("corrupt_pct", dir, s.corrupt * 100.0, "%", ""));
        if let Some(r) = &s.rate {
            v.push(Q::new(
                "rate_mbit",
                dir,
                r.bits_per_sec as f64 / 1e6,
                "Mbit/s",
                "",
            ));
        }
    }
    v
}

/// What the emulator itself realized (default class).
pub fn measured(rows: &[ClassReport], specs: &[Vec<Spec>; 2]) -> Vec<crate::record::Quantity> {
    use crate::record::Quantity as Q;
    let mut v = vec![];
    for r in rows.iter().filter(|r| r.class == "default") {
        let d = r.dir.index();
        // Like with like: the delay stage's own realised delay against the configured delay;
        // the queue a rate builds (TCP fills it) is reported beside it, not inside it.
        if let Some(p50) = r.delay_p50_ms {
            v.push(
                Q::new(
                    "delay_ms",
                    r.dir.as_str(),
                    p50,
                    "ms",
                    "emulated delay p50 (wan engine, before the rate queue)",
                )
                .samples(r.tx),
            );
        }
        if specs[d]
            .first()
            .is_some_and(|s| s.rate.is_some() || s.trace.is_some())
        {
            if let Some(q50) = r.queue_delay_p50_ms {
                v.push(
                    Q::new(
                        "queue_delay_ms",
                        r.dir.as_str(),
                        q50,
                        "ms",
                        "queueing delay p50 in front of the rate (no configured value)",
                    )
                    .samples(r.tx),
                );
            }
        }
        if r.rx > 0 {
            v.push(
                Q::new(
                    "loss_pct",
                    r.dir.as_str(),
                    r.drops_loss as f64 * 100.0 / r.rx as f64,
                    "%",
                    "frames dropped by the loss model (wan)",
                )
                .samples(r.rx),
            );
        }
    }
    v
}

crate::metrics::families! {
    /// The wan's Prometheus metrics (names in docs/metrics.md).
    pub(super) struct WanMetrics {
        rx: counter("wirelab_wan_received_packets", "Frames that entered the emulator"),
        rx_bytes: counter("wirelab_wan_received_bytes", "Bytes that entered the emulator"),
        tx: counter("wirelab_wan_sent_packets", "Frames the emulator sent on"),
        drops: counter(
            "wirelab_wan_dropped_packets",
            "Frames dropped, by cause (loss, queue, blackhole)"
        ),
        dup: counter("wirelab_wan_duplicated_packets", "Extra copies made by duplicate"),
        corrupt: counter("wirelab_wan_corrupted_packets", "Frames with a flipped bit"),
        reord: counter("wirelab_wan_reordered_packets", "Frames sent ahead of earlier ones"),
        queue: gauge(
            "wirelab_wan_queue_packets",
            "Frames held in the emulator at the end of the last interval"
        ),
        delay: gauge(
            "wirelab_wan_delay_seconds",
            "Added delay over the last interval, by quantile (0.5, 0.99)"
        ),
        changes: counter(
            "wirelab_wan_live_changes",
            "Live changes applied (wan set, timeline steps)"
        ),
        ;
    }
}

impl WanMetrics {
    fn update(&self, rows: &[ClassReport]) {
        use crate::metrics::labels;
        for r in rows {
            let l = labels(&[("direction", r.dir.as_str()), ("class", &r.class)]);
            self.rx.get_or_create(&l).inc_by(r.rx);
            self.rx_bytes.get_or_create(&l).inc_by(r.rx_bytes);
            self.tx.get_or_create(&l).inc_by(r.tx);
            self.dup.get_or_create(&l).inc_by(r.duplicated);
            self.corrupt.get_or_create(&l).inc_by(r.corrupted);
            self.reord.get_or_create(&l).inc_by(r.reordered);
            for (cause, n) in [
                ("loss", r.drops_loss),
                ("queue", r.drops_queue),
                ("blackhole", r.drops_blackhole),
                ("link_down", r.drops_link_down),
            ] {
                self.drops
                    .get_or_create(&labels(&[
                        ("direction", r.dir.as_str()),
                        ("class", &r.class),
                        ("cause", cause),
                    ]))
                    .inc_by(n);
            }
            self.queue.get_or_create(&l).set(r.queue_now as f64);
            for (q, v) in [("0.5", r.delay_p50_ms), ("0.99", r.delay_p99_ms)] {
                if let Some(ms) = v {
                    self.delay
                        .get_or_create(&labels(&[
                            ("direction", r.dir.as_str()),
                            ("class", &r.class),
                            ("quantile", q),
                        ]))
                        .set(ms / 1000.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/record-format.md: lines written before `type` and `source` existed have only
    /// `applied`, `t` and `classes` (and the record's stamp); readers take them as applied.
    #[test]
    fn a_change_line_from_before_type_and_source_reads_as_applied_by_set() {
        let old =
            r#"{"seq":1,"v":1,"unix":1700000000.5,"applied":"delay 20ms","t":3.25,"classes":[]}"#;
        let c: ChangeEntry = serde_json::from_str(old).expect("an old change line");
        assert_eq!(
            (c.kind, c.source, c.applied.as_str(), c.t),
            (
                ChangeOutcome::Applied,
                ChangeSource::Set,
                "delay 20ms",
                3.25
            )
        );
        let refused = r#"{"type":"refused","source":"timeline","error":"no","unix":1.0,"applied":"","t":1.0,"classes":[]}"#;
        let c: ChangeEntry = serde_json::from_str(refused).expect("a refused change line");
        assert_eq!(
            (c.kind, c.source),
            (ChangeOutcome::Refused, ChangeSource::Timeline)
        );
    }
}
