//! `wirelab flows` records in the report: the rate and the running RTT of the busiest flows
//! over time, and the top talkers (addresses by bytes) and top flows of the whole run.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;

use super::{
    html::{esc, table},
    plot::{Chart, Series},
    Run, Source, Typed,
};
use crate::flows::{FinalLine, FlowReport, Interval};
use crate::record::Stamped;

/// Flows drawn in the time plots (the busiest by bytes).
const PLOTTED: usize = 8;
/// Rows of the top-talker and top-flow tables.
const TOP: usize = 10;

/// A flows source's lines, read back as the types `wirelab flows` wrote.
#[derive(Debug, Clone)]
pub struct FlowLines {
    pub intervals: Vec<Stamped<Interval>>,
    /// Every flow at the end, when the run finished.
    pub fin: Option<Box<FinalLine>>,
}

/// A flow's name in plots and tables.
pub fn flow_name(f: &FlowReport) -> String {
    format!("{} {} -> {}", f.proto, f.orig_addr, f.resp_addr)
}

/// One address over the whole run: what it sent and received in all its flows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Talker {
    pub addr: String,
    pub flows: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sent_pkts: u64,
    pub received_pkts: u64,
}

/// `ADDR:PORT` (or `[V6]:PORT`) without the port.
fn host(a: &str) -> &str {
    match a.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => {
            h.trim_start_matches('[').trim_end_matches(']')
        }
        _ => a,
    }
}

/// The final flows, or (an unfinished run) the last interval line's view of each flow seen.
fn flows(l: &FlowLines) -> Vec<FlowReport> {
    if let Some(f) = &l.fin {
        return f.flows.clone();
    }
    let mut last: BTreeMap<String, FlowReport> = BTreeMap::new();
    for i in &l.intervals {
        for f in &i.line.top {
            last.insert(flow_name(f), f.clone());
        }
    }
    last.into_values().collect()
}

/// Addresses by bytes sent and received, largest first.
pub fn talkers(l: &FlowLines) -> Vec<Talker> {
    let mut by: BTreeMap<String, Talker> = BTreeMap::new();
    for f in flows(l) {
        for (a, out, inn) in [
            (host(&f.orig_addr), &f.orig, &f.resp),
            (host(&f.resp_addr), &f.resp, &f.orig),
        ] {
            let t = by.entry(a.to_string()).or_insert_with(|| Talker {
                addr: a.to_string(),
                ..Talker::default()
            });
            t.flows += 1;
            t.sent_bytes += out.bytes;
            t.received_bytes += inn.bytes;
            t.sent_pkts += out.pkts;
            t.received_pkts += inn.pkts;
        }
    }
    let mut v: Vec<Talker> = by.into_values().collect();
    v.sort_by(|a, b| {
        (b.sent_bytes + b.received_bytes)
            .cmp(&(a.sent_bytes + a.received_bytes))
            .then(a.addr.cmp(&b.addr))
    });
    v
}

/// Flows by bytes (both directions), largest first.
pub fn top_flows(l: &FlowLines) -> Vec<FlowReport> {
    let mut v = flows(l);
    v.sort_by(|a, b| {
        (b.orig.bytes + b.resp.bytes)
            .cmp(&(a.orig.bytes + a.resp.bytes))
            .then(flow_name(a).cmp(&flow_name(b)))
    });
    v
}

/// The plots of a flows source: rate and running RTT over time of the busiest flows.
pub fn charts(src: &Source, t0: f64, p: &str) -> Vec<Chart> {
    let Typed::Flows(l) = &src.typed else {
        return vec![];
    };
    let names: Vec<String> = top_flows(l).iter().take(PLOTTED).map(flow_name).collect();
    let pick = |name: &str, f: &dyn Fn(&FlowReport) -> Option<f64>| {
        l.intervals
            .iter()
            .filter_map(|i| {
                let r = i.line.top.iter().find(|r| flow_name(r) == name)?;
                f(r).map(|y| (i.unix - t0, y))
            })
            .collect::<Vec<_>>()
    };
    let (mut rate, mut rtt) = (vec![], vec![]);
    for n in &names {
        rate.push(Series::new(
            format!("{p}{n}"),
            pick(n, &|r| Some(r.rate_bps / 1e6)),
        ));
        rtt.push(Series::new(
            format!("{p}{n} rtt>"),
            pick(n, &|r| r.orig.rtt_ms),
        ));
        rtt.push(Series::new(format!("{p}{n} rtt<"), pick(n, &|r| r.resp.rtt_ms)).dashed());
    }
    vec![
        Chart::lines(
            "flows-rate",
            "flows: rate of the busiest flows per interval (while in the interval's top rows)",
            "time (s)",
            "Mbit/s, both directions",
            rate,
        ),
        Chart::lines(
            "flows-rtt",
            "flows: running RTT per interval (median of TCP timestamp samples; rtt> to the responder, dashed rtt< to the originator)",
            "time (s)",
            "RTT (ms)",
            rtt,
        ),
    ]
}

/// The flows sources of a run with their lines.
fn sources(run: &Run) -> impl Iterator<Item = (&Source, &FlowLines)> {
    run.sources.iter().filter_map(|s| match &s.typed {
        Typed::Flows(l) => Some((s, &**l)),
        _ => None,
    })
}

const TALKER_HEADER: [&str; 6] = [
    "address",
    "flows",
    "sent B",
    "received B",
    "sent pkts",
    "received pkts",
];
const FLOW_HEADER: [&str; 8] = [
    "flow", "state", "bytes o", "bytes r", "hs ms", "rtt> ms", "retx o/r", "dur s",
];

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

fn talker_cells(t: &Talker) -> [String; 6] {
    [
        t.addr.clone(),
        t.flows.to_string(),
        t.sent_bytes.to_string(),
        t.received_bytes.to_string(),
        t.sent_pkts.to_string(),
        t.received_pkts.to_string(),
    ]
}

fn flow_cells(f: &FlowReport) -> [String; 8] {
    [
        flow_name(f),
        f.state.clone(),
        f.orig.bytes.to_string(),
        f.resp.bytes.to_string(),
        ms(f.handshake_rtt_ms),
        ms(f.orig.rtt_ms),
        format!("{}/{}", f.orig.retransmissions, f.resp.retransmissions),
        format!("{:.2}", f.duration_s),
    ]
}

/// One text table: the first column left-aligned, the others right-aligned.
fn text_table<const N: usize>(o: &mut String, head: [&str; N], rows: &[[String; N]]) {
    let mut w = head.map(str::len);
    for r in rows {
        for (w, c) in w.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut t = format!("  {:<1$}", cells[0], w[0]);
        for (c, w) in cells[1..].iter().zip(&w[1..]) {
            let _ = write!(t, "  {c:>w$}");
        }
        t
    };
    let _ = writeln!(o, "{}", line(&head.map(String::from)));
    for r in rows {
        let _ = writeln!(o, "{}", line(r));
    }
}

/// Top talkers and top flows, as text (`wirelab report` prints it).
pub fn text(run: &Run) -> String {
    let mut o = String::new();
    for (src, l) in sources(run) {
        let all = flows(l);
        let _ = writeln!(
            o,
            "{}: {} intervals, {} flows{}",
            src.name,
            l.intervals.len(),
            all.len(),
            l.fin
                .as_ref()
                .map(|f| format!(
                    ", {:.1}s, {} frames, {} lost",
                    f.duration_s, f.frames, f.lost
                ))
                .unwrap_or_else(
                    || " (unfinished: flows as last seen in the intervals' top rows)".into()
                )
        );
        let _ = writeln!(o, " top talkers");
        let rows: Vec<_> = talkers(l).iter().take(TOP).map(talker_cells).collect();
        text_table(&mut o, TALKER_HEADER, &rows);
        let _ = writeln!(o, " top flows");
        let rows: Vec<_> = top_flows(l).iter().take(TOP).map(flow_cells).collect();
        text_table(&mut o, FLOW_HEADER, &rows);
    }
    o
}

/// The HTML section of a run's flows sources (nothing without one).
pub fn html(h: &mut String, run: &Run, tag: &str) -> Result<()> {
    for (src, l) in sources(run) {
        writeln!(
            h,
            "<h2>{}Flows: {}</h2><p>Top talkers (bytes sent and received, all flows):</p>",
            esc(tag),
            esc(&src.name)
        )?;
        let rows: Vec<_> = talkers(l).iter().take(TOP).map(talker_cells).collect();
        table(
            h,
            &format!("flows-talkers-{}", src.name),
            TALKER_HEADER,
            &rows,
        )?;
        writeln!(h, "<p>Top flows by bytes:</p>")?;
        let rows: Vec<_> = top_flows(l).iter().take(TOP).map(flow_cells).collect();
        table(h, &format!("flows-top-{}", src.name), FLOW_HEADER, &rows)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::DirReport;

    fn flow(o: &str, r: &str, ob: u64, rb: u64) -> FlowReport {
        let d = |b| DirReport {
            pkts: b / 100,
            bytes: b,
            ..DirReport::default()
        };
        FlowReport {
            proto: "tcp".into(),
            orig_addr: o.into(),
            resp_addr: r.into(),
            state: "SF".into(),
            history: "ShADadFf".into(),
            orig: d(ob),
            resp: d(rb),
            handshake_rtt_ms: Some(40.0),
            start_s: 0.0,
            duration_s: 1.0,
            rate_bps: 0.0,
        }
    }

    #[test]
    fn talkers_add_both_sides_of_every_flow() {
        let l = FlowLines {
            intervals: vec![],
            fin: None,
        };
        assert!(talkers(&l).is_empty());
        let fs = [
            flow("198.18.0.1:40000", "198.18.0.2:5001", 5000, 300),
            flow("198.18.0.1:40001", "198.18.0.3:80", 100, 9000),
            flow("[2001:2::1]:40002", "[2001:2::2]:80", 10, 20),
        ];
        let mk = |fs: &[FlowReport]| Stamped {
            seq: 1,
            v: None,
            unix: 0.0,
            line: Interval {
                kind: crate::record::LineKind::Interval,
                seq: 1,
                iface: "eth0".into(),
                t: 1.0,
                interval_s: 1.0,
                flows: fs.len(),
                active: fs.len(),
                sort: crate::flows::SortBy::Bytes,
                top: fs.to_vec(),
            },
        };
        let l = FlowLines {
            intervals: vec![mk(&fs[..1]), mk(&fs)],
            fin: None,
        };
        let t = talkers(&l);
        assert_eq!(t[0].addr, "198.18.0.1");
        assert_eq!(
            (t[0].flows, t[0].sent_bytes, t[0].received_bytes),
            (2, 5100, 9300)
        );
        assert_eq!(t[1].addr, "198.18.0.3");
        assert_eq!((t[1].sent_bytes, t[1].received_bytes), (9000, 100));
        assert_eq!(t.last().map(|t| t.addr.as_str()), Some("2001:2::2"));
        let top = top_flows(&l);
        assert_eq!(flow_name(&top[0]), "tcp 198.18.0.1:40001 -> 198.18.0.3:80");
        assert_eq!(top.len(), 3);
    }
}
