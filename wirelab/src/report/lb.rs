//! `wirelab lb` records in the report: each backend's share of the new flows (next to its
//! share of the Maglev slots) and of the packets per interval, new flows per second, the
//! health transitions and reloads as markers on every time plot, and a table per backend.
use std::fmt::Write as _;

use anyhow::Result;

use super::{
    html::{esc, table},
    plot::{Chart, Series},
    Run, Source, Typed,
};
use crate::lb::{pct, BackendStats, Change, FinalLine, Health, IntervalLine, ServiceStats};
use crate::record::Stamped;

/// An lb source's lines, read back as the types `wirelab lb` wrote.
#[derive(Debug, Clone)]
pub struct LbLines {
    pub intervals: Vec<Stamped<IntervalLine>>,
    pub changes: Vec<Stamped<Change>>,
    /// The final counters, when the balancer finished.
    pub fin: Option<Box<FinalLine>>,
}

/// One backend of one service over the whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendRow {
    pub service: String,
    pub backend: String,
    /// Weight at the end, and its share of the service's weights (%).
    pub weight: u32,
    pub weight_pct: f64,
    /// Share of the Maglev slots at the end (%; 0 while down).
    pub slots_pct: f64,
    /// Totals (the final counters; the intervals' sums when the run did not finish).
    pub new_flows: u64,
    pub new_flows_pct: f64,
    pub packets: u64,
    pub packets_pct: f64,
    pub bytes: u64,
    /// The same counters summed over the recorded intervals (the plots' data): equal to the
    /// totals unless traffic flowed in the sliver after the last full interval.
    pub series_new_flows: u64,
    pub series_packets: u64,
    /// Health at the end: `up`, `down` or `unchecked`.
    pub health: Health,
    /// Health transitions to down and back up during the run.
    pub went_down: u32,
    pub came_up: u32,
}

/// The columns of the table per backend (text and HTML).
const HEADER: [&str; 11] = [
    "service/backend",
    "weight",
    "weight%",
    "slots%",
    "new flows",
    "flows%",
    "packets",
    "packets%",
    "bytes",
    "health",
    "down/up",
];
/// Text widths of the columns after the first.
const WIDTHS: [usize; 10] = [6, 8, 7, 10, 7, 10, 8, 11, 9, 9];

/// One row of the table per backend as its cells.
fn cells(r: &BackendRow) -> [String; 11] {
    [
        format!("{}/{}", r.service, r.backend),
        r.weight.to_string(),
        format!("{:.1}", r.weight_pct),
        format!("{:.1}", r.slots_pct),
        r.new_flows.to_string(),
        format!("{:.1}", r.new_flows_pct),
        r.packets.to_string(),
        format!("{:.1}", r.packets_pct),
        r.bytes.to_string(),
        r.health.to_string(),
        format!("{}/{}", r.went_down, r.came_up),
    ]
}

/// The per-backend table of an lb source.
pub fn rows(l: &LbLines) -> Vec<BackendRow> {
    // The last state (weights, slots, health) and the totals.
    let last: Option<&[ServiceStats]> = l
        .fin
        .as_ref()
        .map(|f| f.stats.services.as_slice())
        .or_else(|| l.intervals.last().map(|i| i.line.stats.services.as_slice()));
    let Some(services) = last else {
        return vec![];
    };
    let mut out = vec![];
    for s in services {
        let series = |b: &str, f: fn(&BackendStats) -> u64| -> u64 {
            l.intervals
                .iter()
                .flat_map(|i| &i.line.stats.services)
                .filter(|x| x.name == s.name)
                .flat_map(|x| &x.backends)
                .filter(|x| x.name == b)
                .map(f)
                .sum()
        };
        let total = |f: fn(&BackendStats) -> u64| -> u64 {
            if l.fin.is_some() {
                s.backends.iter().map(f).sum()
            } else {
                s.backends.iter().map(|b| series(&b.name, f)).sum()
            }
        };
        let (flows, packets) = (total(|b| b.count.new_flows), total(|b| b.count.packets));
        let weights: u64 = s.backends.iter().map(|b| u64::from(b.weight)).sum();
        let slots: u64 = s.backends.iter().map(|b| u64::from(b.slots)).sum();
        for b in &s.backends {
            let (sf, sp) = (
                series(&b.name, |x| x.count.new_flows),
                series(&b.name, |x| x.count.packets),
            );
            let (nf, np, nb) = if l.fin.is_some() {
                (b.count.new_flows, b.count.packets, b.count.bytes)
            } else {
                (sf, sp, series(&b.name, |x| x.count.bytes))
            };
            let turns = |to: Health| {
                l.changes
                    .iter()
                    .filter(|c| {
                        matches!(&c.line, Change::Health(t)
                            if t.service == s.name && t.backend == b.name && t.state == to)
                    })
                    .count() as u32
            };
            out.push(BackendRow {
                service: s.name.clone(),
                backend: b.name.clone(),
                weight: b.weight,
                weight_pct: pct(u64::from(b.weight), weights),
                slots_pct: pct(u64::from(b.slots), slots),
                new_flows: nf,
                new_flows_pct: pct(nf, flows),
                packets: np,
                packets_pct: pct(np, packets),
                bytes: nb,
                series_new_flows: sf,
                series_packets: sp,
                health: b.health,
                went_down: turns(Health::Down),
                came_up: turns(Health::Up),
            });
        }
    }
    out
}

/// The plots of an lb source.
pub fn charts(src: &Source, t0: f64, p: &str) -> Vec<Chart> {
    let Typed::Lb(l) = &src.typed else {
        return vec![];
    };
    // Every service/backend in the order first seen (reloads may add some).
    let mut keys: Vec<(String, String)> = vec![];
    for i in &l.intervals {
        for s in &i.line.stats.services {
            for b in &s.backends {
                let k = (s.name.clone(), b.name.clone());
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
    }
    // (time, service, backend) of every interval line, for one value per backend.
    let pick =
        |svc: &str, be: &str, f: &dyn Fn(&ServiceStats, &BackendStats, f64) -> Option<f64>| {
            l.intervals
                .iter()
                .filter_map(|i| {
                    let s = i.line.stats.services.iter().find(|s| s.name == svc)?;
                    let b = s.backends.iter().find(|b| b.name == be)?;
                    f(s, b, i.line.interval_s.max(1e-3)).map(|y| (i.unix - t0, y))
                })
                .collect::<Vec<_>>()
        };
    let share = |part: u64, s: &ServiceStats, whole: fn(&BackendStats) -> u64| {
        let w: u64 = s.backends.iter().map(whole).sum();
        (w > 0).then(|| pct(part, w))
    };
    let (mut flows, mut packets, mut rate) = (vec![], vec![], vec![]);
    for (svc, be) in &keys {
        let name = format!("{p}{svc}/{be}");
        flows.push(Series::new(
            format!("{name} new flows"),
            pick(svc, be, &|s, b, _| {
                share(b.count.new_flows, s, |x| x.count.new_flows)
            }),
        ));
        flows.push(
            Series::new(
                format!("{name} table slots"),
                pick(svc, be, &|s, b, _| {
                    share(u64::from(b.slots), s, |x| u64::from(x.slots))
                }),
            )
            .dashed(),
        );
        packets.push(Series::new(
            name.clone(),
            pick(svc, be, &|s, b, _| {
                share(b.count.packets, s, |x| x.count.packets)
            }),
        ));
        rate.push(Series::new(
            name,
            pick(svc, be, &|_, b, dt| Some(b.count.new_flows as f64 / dt)),
        ));
    }
    let mut services: Vec<&str> = vec![];
    for (s, _) in &keys {
        if !services.contains(&s.as_str()) {
            services.push(s);
        }
    }
    for svc in services {
        let pts = l
            .intervals
            .iter()
            .filter_map(|i| {
                let s = i.line.stats.services.iter().find(|s| s.name == svc)?;
                let n: u64 = s.backends.iter().map(|b| b.count.new_flows).sum();
                Some((i.unix - t0, n as f64 / i.line.interval_s.max(1e-3)))
            })
            .collect();
        rate.push(Series::new(format!("{p}{svc} (all backends)"), pts).dashed());
    }
    vec![
        Chart::lines(
            "lb-flow-share",
            "lb: each backend's share of its service's new flows per interval (dashed: its share of the Maglev table)",
            "time (s)",
            "% of the service",
            flows,
        ),
        Chart::lines(
            "lb-packet-share",
            "lb: each backend's share of its service's packets per interval",
            "time (s)",
            "% of the service's packets",
            packets,
        ),
        Chart::lines(
            "lb-new-flows",
            "lb: new flows per second, per backend and per service",
            "time (s)",
            "new flows/s",
            rate,
        ),
    ]
}

/// What a change line marks on the time plots.
pub fn change_label(c: &Change) -> String {
    match c {
        Change::Health(t) => format!("{}/{} {}", t.service, t.backend, t.state),
        Change::Reload(r) => format!("reload (generation {})", r.report.generation),
    }
}

/// The health transitions and reloads of a run's lb sources as time-plot markers.
pub fn markers(run: &Run, t0: f64, prefix: &str) -> Vec<(f64, String)> {
    sources(run)
        .flat_map(|(_, l)| &l.changes)
        .map(|c| (c.unix - t0, format!("{prefix}{}", change_label(&c.line))))
        .collect()
}

/// The lb sources of a run with their lines.
fn sources(run: &Run) -> impl Iterator<Item = (&Source, &LbLines)> {
    run.sources.iter().filter_map(|s| match &s.typed {
        Typed::Lb(l) => Some((s, &**l)),
        _ => None,
    })
}

/// The per-backend tables and the events, as text (`wirelab report` prints it).
pub fn text(run: &Run) -> String {
    let mut o = String::new();
    for (src, l) in sources(run) {
        let _ = writeln!(
            o,
            "{}: {} intervals{}",
            src.name,
            l.intervals.len(),
            l.fin
                .as_ref()
                .map(|f| format!(
                    ", {:.1}s, {} reloads, {} health changes",
                    f.duration_s, f.reloads, f.health_changes
                ))
                .unwrap_or_else(|| " (unfinished: totals are the intervals' sums)".into())
        );
        let line = |cells: &[String]| {
            let mut t = format!("  {:<20}", cells[0]);
            for (c, w) in cells[1..].iter().zip(WIDTHS) {
                let _ = write!(t, " {c:>w$}");
            }
            t
        };
        let _ = writeln!(o, "{}", line(&HEADER.map(String::from)));
        for r in rows(l) {
            let _ = writeln!(o, "{}", line(&cells(&r)));
        }
        for c in &l.changes {
            let _ = writeln!(
                o,
                "  [{:>7.2}s] {}",
                change_t(&c.line),
                change_label(&c.line)
            );
        }
    }
    o
}

fn change_t(c: &Change) -> f64 {
    match c {
        Change::Health(t) => t.t,
        Change::Reload(r) => r.t,
    }
}

/// The HTML section of a run's lb sources (nothing without one).
pub fn html(h: &mut String, run: &Run, tag: &str) -> Result<()> {
    for (src, l) in sources(run) {
        writeln!(h, "<h2>{}Load balancer: {}</h2>", esc(tag), esc(&src.name))?;
        let rows: Vec<_> = rows(l).iter().map(cells).collect();
        table(h, &format!("lb-backends-{}", src.name), HEADER, &rows)?;
        if l.changes.is_empty() {
            writeln!(h, "<p class=meta>No health transitions or reloads.</p>")?;
            continue;
        }
        writeln!(
            h,
            "<p>Health transitions and reloads (marked on the time plots):</p><table id=\"lb-events-{}\"><tr><th>time (s)</th><th>event</th><th>details</th></tr>",
            esc(&src.name)
        )?;
        for c in &l.changes {
            let details = match &c.line {
                Change::Health(t) => format!(
                    "{} after {} probes; {} of {} up{}",
                    t.addr,
                    t.probes,
                    t.up,
                    t.backends,
                    t.reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
                Change::Reload(r) => r
                    .report
                    .services
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {}: +{:?} -{:?} reweighted {:?}, {:.1}% of slots moved",
                            s.name, s.change, s.added, s.removed, s.reweighted, s.slots_moved_pct
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            writeln!(
                h,
                "<tr><td class=n>{:.2}</td><td>{}</td><td class=meta>{}</td></tr>",
                change_t(&c.line),
                esc(&change_label(&c.line)),
                esc(&details)
            )?;
        }
        writeln!(h, "</table>")?;
    }
    Ok(())
}
