//! `wirelab flows`: a live, top-like table of bidirectional flows on one interface, with TCP
//! health (Zeek's conn_state and history, handshake and running RTT, retransmissions,
//! out-of-order segments, zero windows, resets by side).
//!
//! ```text
//! capture's programs (XDP ingress + tc egress, capture's filter) ─ first SNAPLEN bytes
//!   ─> capture::stream (per-CPU readers, merged by time) ─> FlowSink (this module):
//!      tcp::parse (etherparse) ─> flow table (Key -> tcp::Flow) ─> each interval: the top N
//!      rows (table | --json line | --record series); at the end every flow (final)
//! ```
//! Design and limits: docs/flows.md.
mod metrics;
pub mod tcp;

use std::{collections::HashMap, io::Write, time::Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    capture::{self, Frame, Sink},
    record::LineKind,
    runtime::{
        bpf::{AttachMode, TcMode},
        observe::Observer,
        Reporting,
    },
    util::Stop,
};
use tcp::{Flow, Key};

/// Bytes kept of each frame: Ethernet, two VLAN tags, IPv6 with a few extension headers or
/// IPv4 with options, and TCP with options.
pub const SNAPLEN: u32 = 192;
/// Flows kept; past it the least recently seen flow is forgotten (counted in `evicted`).
pub const MAX_FLOWS: usize = 65536;

/// How the table is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SortBy {
    /// Bytes so far, both directions.
    Bytes,
    /// Bytes in the last interval.
    Rate,
    /// Packets so far, both directions.
    Pkts,
}

pub struct Options {
    pub iface: String,
    /// tcpdump-style filter (capture's words), evaluated in the kernel.
    pub filter: String,
    pub sort: SortBy,
    /// Rows per interval table / line.
    pub top: usize,
    pub mode: Option<AttachMode>,
    pub report: Reporting,
}

/// What one direction of a flow sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DirReport {
    pub pkts: u64,
    /// Frame bytes on the wire.
    pub bytes: u64,
    /// TCP payload bytes.
    pub payload_bytes: u64,
    pub retransmissions: u64,
    pub out_of_order: u64,
    /// Segments advertising a zero window (not SYN, FIN or RST).
    pub zero_windows: u64,
    pub resets: u64,
    /// Median running RTT (ms) from this side's TCP timestamps echoed by the other side: the
    /// path from the capture point to the other side and back. Over the interval in interval
    /// lines, over the whole flow in the final line.
    pub rtt_ms: Option<f64>,
    /// RTT samples behind `rtt_ms`.
    pub rtt_samples: u64,
}

/// One flow, as a row of the table and an element of the JSON lines.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowReport {
    /// `tcp`, `udp`, `icmp`, `icmp6` or the IP protocol number.
    pub proto: String,
    /// The originator (the first SYN's sender) and the responder, `ADDR:PORT`.
    pub orig_addr: String,
    pub resp_addr: String,
    /// Zeek's conn_state: S0, S1, SF, REJ, S2, S3, RSTO, RSTR, RSTOS0, RSTRH, SH, SHR, OTH.
    pub state: String,
    /// Zeek-style history letters (upper case: originator).
    pub history: String,
    pub orig: DirReport,
    pub resp: DirReport,
    /// The latest SYN to the ACK of the SYN/ACK (ms, tshark's `initial_rtt`), when the
    /// handshake was seen.
    pub handshake_rtt_ms: Option<f64>,
    /// First packet, seconds since flows started.
    pub start_s: f64,
    /// First to last packet, seconds.
    pub duration_s: f64,
    /// Both directions, bits per second, over the last interval (final: over the flow).
    pub rate_bps: f64,
}

/// `{"type":"interval", …}`: the top flows of one interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interval {
    #[serde(rename = "type")]
    pub kind: LineKind,
    #[serde(default)]
    pub seq: u64,
    pub iface: String,
    pub t: f64,
    pub interval_s: f64,
    /// Flows in the table.
    pub flows: usize,
    /// Flows with a packet in this interval.
    pub active: usize,
    pub sort: SortBy,
    /// The first `--top` flows in `sort` order.
    pub top: Vec<FlowReport>,
}

/// `{"type":"final", …}`: every flow, sorted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinalLine {
    #[serde(rename = "type")]
    pub kind: LineKind,
    pub iface: String,
    pub filter: String,
    pub duration_s: f64,
    /// Packets the capture handed over (an egress GSO packet is one, counted in the flows
    /// as the segments it is sent as); those that were not IP (ARP, …).
    pub frames: u64,
    pub non_ip: u64,
    /// Frames the capture lost (its buffers were full): the counters then undercount.
    pub lost: u64,
    /// Flows forgotten to stay under the table's limit.
    pub evicted: u64,
    pub xdp_mode: AttachMode,
    pub tc_mode: TcMode,
    pub sort: SortBy,
    pub flows: Vec<FlowReport>,
}

/// The configuration recorded with `--record`.
#[derive(Serialize)]
struct RecordConfig<'a> {
    iface: &'a str,
    filter: &'a str,
    sort: SortBy,
    top: usize,
    interval_s: f64,
    duration_s: Option<f64>,
    snaplen: u32,
}

/// A flow with what the previous interval line saw of it.
struct Entry {
    flow: Flow,
    /// Bytes and RTT sample counts (orig, resp) at the previous tick.
    bytes_at_tick: u64,
    rtt_at_tick: (u64, u64),
    rate_bps: f64,
}

/// The flow table.
#[derive(Default)]
pub struct Table {
    flows: HashMap<Key, Entry>,
    pub frames: u64,
    pub non_ip: u64,
    pub evicted: u64,
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmp6".into(),
        n => n.to_string(),
    }
}

fn dir_report(s: &tcp::Side, rtt: Option<f64>, samples: u64) -> DirReport {
    DirReport {
        pkts: s.pkts,
        bytes: s.bytes,
        payload_bytes: s.payload,
        retransmissions: s.retrans,
        out_of_order: s.ooo,
        zero_windows: s.zero_window,
        resets: s.rsts,
        rtt_ms: rtt,
        rtt_samples: samples,
    }
}

impl Table {
    /// Account one frame (`data`: its first bytes).
    pub fn add(&mut self, data: &[u8], wire_len: u32, t_ns: u64) {
        self.frames += 1;
        let Some(s) = tcp::parse(data, wire_len, t_ns) else {
            self.non_ip += 1;
            return;
        };
        let key = Key::of(&s);
        if !self.flows.contains_key(&key) && self.flows.len() >= MAX_FLOWS {
            if let Some(old) = self
                .flows
                .iter()
                .min_by_key(|(_, e)| e.flow.last_ns)
                .map(|(k, _)| *k)
            {
                self.flows.remove(&old);
                self.evicted += 1;
            }
        }
        let flow = &mut self
            .flows
            .entry(key)
            .or_insert_with(|| Entry {
                flow: Flow::new(&s),
                bytes_at_tick: 0,
                rtt_at_tick: (0, 0),
                rate_bps: 0.0,
            })
            .flow;
        for seg in tcp::segments(&s, flow.mss_towards(&s)) {
            flow.add(&seg);
        }
    }

    /// Close an interval of `secs`: rates and RTTs of the interval; returns the active count
    /// and the rows (interval RTTs).
    fn tick(&mut self, secs: f64, t0_ns: u64) -> (usize, Vec<FlowReport>) {
        let mut active = 0;
        let mut rows = vec![];
        for e in self.flows.values_mut() {
            let f = &e.flow;
            let bytes = f.orig.bytes + f.resp.bytes;
            let new = bytes - e.bytes_at_tick;
            active += usize::from(new > 0);
            e.rate_bps = if secs > 0.0 {
                new as f64 * 8.0 / secs
            } else {
                0.0
            };
            let (no, nr) = (
                f.orig.rtt_count - e.rtt_at_tick.0,
                f.resp.rtt_count - e.rtt_at_tick.1,
            );
            rows.push(report(
                f,
                t0_ns,
                e.rate_bps,
                (f.orig.rtt_median_last(no as usize), no),
                (f.resp.rtt_median_last(nr as usize), nr),
            ));
            e.bytes_at_tick = bytes;
            e.rtt_at_tick = (f.orig.rtt_count, f.resp.rtt_count);
        }
        (active, rows)
    }

    /// Every flow over its whole life.
    fn totals(&self, t0_ns: u64) -> Vec<FlowReport> {
        self.flows
            .values()
            .map(|e| {
                let f = &e.flow;
                let secs = (f.last_ns - f.first_ns) as f64 / 1e9;
                let bytes = (f.orig.bytes + f.resp.bytes) as f64;
                let rate = if secs > 0.0 { bytes * 8.0 / secs } else { 0.0 };
                report(
                    f,
                    t0_ns,
                    rate,
                    (f.orig.rtt_median(), f.orig.rtt_count),
                    (f.resp.rtt_median(), f.resp.rtt_count),
                )
            })
            .collect()
    }
}

fn report(
    f: &Flow,
    t0_ns: u64,
    rate_bps: f64,
    orig_rtt: (Option<f64>, u64),
    resp_rtt: (Option<f64>, u64),
) -> FlowReport {
    FlowReport {
        proto: proto_name(f.proto),
        orig_addr: f.orig_ep.to_string(),
        resp_addr: f.resp_ep.to_string(),
        state: f.state().into(),
        history: f.history.clone(),
        orig: dir_report(&f.orig, orig_rtt.0, orig_rtt.1),
        resp: dir_report(&f.resp, resp_rtt.0, resp_rtt.1),
        handshake_rtt_ms: f.handshake_ms(),
        start_s: f.first_ns.saturating_sub(t0_ns) as f64 / 1e9,
        duration_s: (f.last_ns - f.first_ns) as f64 / 1e9,
        rate_bps,
    }
}

/// Sort rows by `by`, largest first (ties: older first).
pub fn sort(rows: &mut [FlowReport], by: SortBy) {
    let key = |r: &FlowReport| match by {
        SortBy::Bytes => (r.orig.bytes + r.resp.bytes) as f64,
        SortBy::Rate => r.rate_bps,
        SortBy::Pkts => (r.orig.pkts + r.resp.pkts) as f64,
    };
    rows.sort_by(|a, b| {
        key(b)
            .total_cmp(&key(a))
            .then(a.start_s.total_cmp(&b.start_s))
    });
}

fn pair(a: u64, b: u64) -> String {
    format!("{a}/{b}")
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn rate(bps: f64) -> String {
    if bps >= 1e6 {
        format!("{:.1}M", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.1}k", bps / 1e3)
    } else {
        format!("{bps:.0}")
    }
}

/// The table: a title line, then one row per flow.
pub fn print_table(out: &mut dyn Write, title: &str, rows: &[FlowReport]) -> std::io::Result<()> {
    writeln!(out, "{title}")?;
    writeln!(
        out,
        "  {:<5} {:<44} {:<6} {:<10} {:>11} {:>17} {:>7} {:>6} {:>6} {:>6} {:>5} {:>5} {:>5} {:>5} {:>6}",
        "proto",
        "orig -> resp",
        "state",
        "history",
        "pkts o/r",
        "bytes o/r",
        "bit/s",
        "hs ms",
        "rtt>",
        "rtt<",
        "retx",
        "ooo",
        "zwin",
        "rst",
        "dur s"
    )?;
    for r in rows {
        writeln!(
            out,
            "  {:<5} {:<44} {:<6} {:<10} {:>11} {:>17} {:>7} {:>6} {:>6} {:>6} {:>5} {:>5} {:>5} {:>5} {:>6.2}",
            r.proto,
            format!("{} -> {}", r.orig_addr, r.resp_addr),
            r.state,
            r.history,
            pair(r.orig.pkts, r.resp.pkts),
            pair(r.orig.bytes, r.resp.bytes),
            rate(r.rate_bps),
            ms(r.handshake_rtt_ms),
            ms(r.orig.rtt_ms),
            ms(r.resp.rtt_ms),
            pair(r.orig.retransmissions, r.resp.retransmissions),
            pair(r.orig.out_of_order, r.resp.out_of_order),
            pair(r.orig.zero_windows, r.resp.zero_windows),
            pair(r.orig.resets, r.resp.resets),
            r.duration_s
        )?;
    }
    Ok(())
}

/// The frames' sink: the flow table and the interval reports.
struct FlowSink<'a> {
    table: Table,
    opts: &'a Options,
    obs: Option<Observer>,
    /// Wall-clock ns when flows started (frames carry wall-clock times).
    t0_ns: u64,
    start: Instant,
    last_tick: Instant,
    seq: u64,
    clear: bool,
    metrics: Option<metrics::FlowsMetrics>,
}

impl FlowSink<'_> {
    fn interval(&mut self) -> Result<()> {
        let secs = self.last_tick.elapsed().as_secs_f64();
        self.last_tick = Instant::now();
        self.seq += 1;
        let (active, mut rows) = self.table.tick(secs, self.t0_ns);
        let flows = rows.len();
        sort(&mut rows, self.opts.sort);
        rows.truncate(self.opts.top);
        let line = Interval {
            kind: LineKind::Interval,
            seq: self.seq,
            iface: self.opts.iface.clone(),
            t: self.start.elapsed().as_secs_f64(),
            interval_s: secs,
            flows,
            active,
            sort: self.opts.sort,
            top: rows,
        };
        let title = format!(
            "{}flows on {} at {:.1}s: {} flows, {} active (top {} by {})",
            if self.clear { "\x1b[H\x1b[2J" } else { "" },
            line.iface,
            line.t,
            flows,
            active,
            self.opts.top,
            sort_word(self.opts.sort)
        );
        if let Some(m) = self.metrics.as_mut() {
            m.publish(&line, &self.table);
        }
        if let Some(obs) = self.obs.as_mut() {
            obs.interval(&line, |o| print_table(o, &title, &line.top))?;
        }
        Ok(())
    }
}

fn sort_word(s: SortBy) -> &'static str {
    match s {
        SortBy::Bytes => "bytes",
        SortBy::Rate => "rate",
        SortBy::Pkts => "pkts",
    }
}

impl Sink for FlowSink<'_> {
    fn attached(&mut self) -> Result<()> {
        self.start = Instant::now();
        self.last_tick = self.start;
        self.t0_ns = (crate::util::unix_now() * 1e9) as u64;
        Ok(())
    }

    fn frame(&mut self, f: &Frame<'_>) -> Result<()> {
        self.table.add(f.data, f.orig_len, f.ts_ns);
        Ok(())
    }

    fn idle(&mut self) -> Result<()> {
        if self.last_tick.elapsed() >= self.opts.report.interval {
            self.interval()?;
        }
        Ok(())
    }
}

/// Run until `--duration`, SIGINT or SIGTERM; returns the final line (also printed).
pub fn run(opts: &Options, stop: &Stop) -> Result<FinalLine> {
    capture::compile(&opts.filter)?;
    let (interval_s, duration_s) = opts.report.seconds();
    let obs = opts.report.observer(
        "flows",
        &RecordConfig {
            iface: &opts.iface,
            filter: &opts.filter,
            sort: opts.sort,
            top: opts.top,
            interval_s,
            duration_s,
            snaplen: SNAPLEN,
        },
    )?;
    let mut sink = FlowSink {
        table: Table::default(),
        opts,
        obs: Some(obs),
        t0_ns: (crate::util::unix_now() * 1e9) as u64,
        start: Instant::now(),
        last_tick: Instant::now(),
        seq: 0,
        clear: !opts.report.json && std::io::IsTerminal::is_terminal(&std::io::stdout()),
        metrics: opts
            .report
            .metrics
            .as_ref()
            .map(|ep| metrics::FlowsMetrics::serve("flows", ep))
            .transpose()?,
    };
    let copts = capture::Options {
        iface: opts.iface.clone(),
        filter: opts.filter.clone(),
        snaplen: SNAPLEN,
        ring_bytes: None,
        backlog_bytes: None,
        count: None,
        duration: opts.report.duration,
        out: capture::Output::Stdout,
        // XDP: received frames before GRO, one per wire frame (see docs/flows.md).
        ingress: capture::IngressChoice::Xdp,
        mode: opts.mode,
    };
    let s = capture::stream(&copts, stop, &mut sink)?;
    let lost = s.ingress.lost + s.egress.lost + s.backlog_dropped;
    if lost > 0 || s.perf_lost > 0 {
        tracing::warn!(
            lost,
            perf_lost = s.perf_lost,
            "the capture lost frames: counters undercount"
        );
    }
    let mut flows = sink.table.totals(sink.t0_ns);
    sort(&mut flows, opts.sort);
    let fin = FinalLine {
        kind: LineKind::Final,
        iface: opts.iface.clone(),
        filter: opts.filter.clone(),
        duration_s: s.duration_s,
        frames: sink.table.frames,
        non_ip: sink.table.non_ip,
        lost: lost.max(s.perf_lost),
        evicted: sink.table.evicted,
        xdp_mode: s.ingress_hook.xdp_mode().unwrap_or(AttachMode::Native),
        tc_mode: s.tc_mode,
        sort: opts.sort,
        flows,
    };
    let title = format!(
        "flows on {} for {:.1}s: {} flows, {} packets captured ({} not IP, {} lost)",
        fin.iface,
        fin.duration_s,
        fin.flows.len(),
        fin.frames,
        fin.non_ip,
        fin.lost
    );
    if let Some(obs) = sink.obs.take() {
        obs.finish(&fin, vec![], |o| print_table(o, &title, &fin.flows))?;
    }
    tracing::info!(iface = %opts.iface, flows = fin.flows.len(), "flows detached");
    Ok(fin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(bytes: u64, rate: f64, pkts: u64, start: f64) -> FlowReport {
        FlowReport {
            proto: "tcp".into(),
            orig_addr: "198.18.0.1:1".into(),
            resp_addr: "198.18.0.2:2".into(),
            state: "S1".into(),
            history: String::new(),
            orig: DirReport {
                bytes,
                pkts,
                ..Default::default()
            },
            resp: DirReport::default(),
            handshake_rtt_ms: None,
            start_s: start,
            duration_s: 0.0,
            rate_bps: rate,
        }
    }

    #[test]
    fn rows_sort_by_the_chosen_column() {
        let mut v = vec![
            row(10, 5.0, 3, 0.0),
            row(30, 1.0, 1, 1.0),
            row(20, 9.0, 2, 2.0),
        ];
        let order = |v: &[FlowReport]| v.iter().map(|r| r.orig.bytes).collect::<Vec<_>>();
        sort(&mut v, SortBy::Bytes);
        assert_eq!(order(&v), [30, 20, 10]);
        sort(&mut v, SortBy::Rate);
        assert_eq!(order(&v), [20, 10, 30]);
        sort(&mut v, SortBy::Pkts);
        assert_eq!(order(&v), [10, 20, 30]);
    }

    #[test]
    fn the_table_keeps_flows_apart_and_counts_non_ip() {
        use etherparse::PacketBuilder;
        let mut t = Table::default();
        for (sport, n) in [(1000u16, 3), (1001, 2)] {
            for _ in 0..n {
                let mut f = vec![];
                PacketBuilder::ethernet2([2; 6], [4; 6])
                    .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
                    .udp(sport, 53)
                    .write(&mut f, &[0; 10])
                    .unwrap();
                t.add(&f, f.len() as u32, 1);
            }
        }
        t.add(&[0; 20], 60, 1);
        let (active, rows) = t.tick(1.0, 0);
        assert_eq!((active, rows.len(), t.frames, t.non_ip), (2, 2, 6, 1));
        let mut rows = rows;
        sort(&mut rows, SortBy::Pkts);
        assert_eq!(rows[0].orig.pkts, 3);
        assert_eq!(rows[0].state, "S0");
        assert_eq!(rows[0].rate_bps, 3.0 * 52.0 * 8.0);
        // Nothing new in the next interval: no longer active.
        assert_eq!(t.tick(1.0, 0).0, 0);
    }
}
