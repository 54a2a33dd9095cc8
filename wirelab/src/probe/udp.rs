//! The UDP client: paced probes, one-way delays, loss, duplicates, reordering, corruption.
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::util::{mono_ns, Stop};

use super::{types::UdpInterval, wire::*};
use crate::record::LineKind;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct DelayStats {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub stddev: f64,
    /// The 10th percentile: with `p90`, the spread of the bulk of the delays, which a few
    /// packets held up by the host cannot move as they move `stddev`.
    #[serde(default)]
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

pub(super) struct DelayAcc {
    h: Histogram<u64>,
    n: u64,
    sum: f64,
    sumsq: f64,
    min: f64,
    max: f64,
}

impl DelayAcc {
    fn new() -> Self {
        Self {
            h: Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("bounds"),
            n: 0,
            sum: 0.0,
            sumsq: 0.0,
            min: f64::MAX,
            max: 0.0,
        }
    }
    fn add(&mut self, ns: i64) {
        let ms = ns as f64 / 1e6;
        self.n += 1;
        self.sum += ms;
        self.sumsq += ms * ms;
        self.min = self.min.min(ms);
        self.max = self.max.max(ms);
        let _ = self.h.record(ns.max(1) as u64);
    }
    fn hist_ms(&self) -> Vec<(f64, u64)> {
        self.h
            .iter_recorded()
            .map(|v| (v.value_iterated_to() as f64 / 1e6, v.count_at_value()))
            .collect()
    }
    fn stats(&self) -> DelayStats {
        if self.n == 0 {
            return DelayStats::default();
        }
        let mean = self.sum / self.n as f64;
        let var = (self.sumsq / self.n as f64 - mean * mean).max(0.0);
        let q = |p| self.h.value_at_quantile(p) as f64 / 1e6;
        DelayStats {
            count: self.n,
            min: self.min,
            mean,
            stddev: var.sqrt(),
            p10: q(0.1),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: self.max,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct DirStats {
    pub received: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub duplicates: u64,
    pub reordered: u64,
    pub corrupted: u64,
    /// Of `lost`, the datagrams the receiving probe socket itself dropped for want of buffer
    /// space (SO_RXQ_OVFL): the measuring host was too busy, the network did not lose them.
    #[serde(default)]
    pub socket_drops: u64,
    pub delay_ms: DelayStats,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Bursts {
    pub count: u64,
    pub mean_len: f64,
    pub max_len: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct UdpReport {
    pub mode: String,
    pub to: String,
    pub sent: u64,
    pub size: usize,
    pub rate_pps: f64,
    pub duration_s: f64,
    pub forward: DirStats,
    pub reverse: DirStats,
    /// Round trip (client send to echo arrival) less the server's turnaround.
    pub rtt_ms: DelayStats,
    /// Probes that arrived (as echoes) before a lower-numbered probe: the ones that overtook
    /// others, which is what netem's `reorder` produces. Measured on the round trip.
    pub overtaking: u64,
    /// Probes that got no echo (lost in either direction), with burst lengths over them.
    pub no_echo: u64,
    pub loss_bursts: Bursts,
    pub lost_seqs: Vec<u64>,
    pub server_stats: bool,
    /// The sender's own lateness (a busy host), which it did not make up in bursts.
    #[serde(default)]
    pub sender_behind: Behind,
    /// Delay histograms (value ms, count) forward and reverse, for `--record`.
    #[serde(skip)]
    pub delay_hist_ms: [Vec<(f64, u64)>; 2],
    /// Wall-clock time the first probe was sent.
    #[serde(skip)]
    pub send_start_unix: f64,
    /// Every echoed probe, in arrival order (only with [`ClientOptions::per_probe`]).
    #[serde(skip)]
    pub per_probe: Vec<ProbeSample>,
}

/// One echoed probe: when it was sent and its one-way delays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeSample {
    pub seq: u64,
    /// Wall-clock send time (the time the probe carries).
    pub sent_unix: f64,
    pub forward_ms: f64,
    pub reverse_ms: f64,
}

pub struct ClientOptions {
    pub to: SocketAddr,
    pub rate: f64,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub size: usize,
    pub wait: Duration,
    /// Keep every probe's send time and delays (`--per-probe FILE`).
    pub per_probe: bool,
}

impl ProbeSample {
    /// `--per-probe FILE`: one CSV line per echoed probe.
    /// Create `p` for [`write_csv`](Self::write_csv): before the run, so that a path that
    /// cannot be written costs no run.
    pub fn create_csv(p: &std::path::Path) -> Result<std::fs::File> {
        std::fs::File::create(p).map_err(|e| anyhow::anyhow!("--per-probe {}: {e}", p.display()))
    }

    pub fn write_csv(v: &[Self], f: std::fs::File) -> Result<()> {
        use std::io::Write as _;
        let mut w = std::io::BufWriter::new(f);
        writeln!(w, "seq,sent_unix,forward_ms,reverse_ms")?;
        for s in v {
            writeln!(
                w,
                "{},{:.6},{:.4},{:.4}",
                s.seq, s.sent_unix, s.forward_ms, s.reverse_ms
            )?;
        }
        w.flush()?;
        Ok(())
    }
}

/// Before measuring, exchange one message with the server so that neighbour (ARP) resolution
/// along the path is done: otherwise the first probes wait in neighbour queues and skew the
/// statistics.
pub(super) fn warm_up(sock: &UdpSocket, run: u64) -> Result<()> {
    let mut hello = [0u8; HDR];
    hello[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    hello[4] = KIND_FIN;
    put_u64(&mut hello, 8, run ^ 0x5741_524d);
    let mut buf = [0u8; 2048];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let _ = sock.send(&hello);
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            if let Ok(n) = sock.recv(&mut buf) {
                if n >= HDR && get_u32(&buf, 0) == MAGIC && buf[4] == KIND_FIN_ACK {
                    return Ok(());
                }
            }
        }
    }
    bail!(
        "no answer from a probe server at {:?} within 5 s",
        sock.peer_addr().ok()
    )
}

/// Called with each interval's line (`--record`), about every the given duration.
pub type IntervalSink<'a> = (Duration, &'a mut dyn FnMut(&UdpInterval));

/// Run UDP probes; returns the report.
pub fn udp_client(o: &ClientOptions, stop: &Stop) -> Result<UdpReport> {
    udp_client_with(o, stop, None)
}

/// Run UDP probes, reporting per-interval delay stats to `sink` as echoes arrive.
pub fn udp_client_with(
    o: &ClientOptions,
    stop: &Stop,
    mut sink: Option<IntervalSink<'_>>,
) -> Result<UdpReport> {
    let count = probe_count(o)?;
    let (sock, run) = open_socket(o)?;
    let rx_sock = sock.try_clone()?;
    let mut rx0 = Rx::new(count, sink.is_some());
    if o.per_probe {
        rx0.samples = Some(Vec::with_capacity(count.min(1 << 20) as usize));
    }
    let rx = Arc::new(Mutex::new(rx0));
    let done = Arc::new(AtomicBool::new(false));
    let reader = spawn_reader(rx_sock, rx.clone(), done.clone(), run, count);
    let mut pkt = probe_packet(o.size, run);
    let start = Instant::now();
    let send_start_unix = crate::util::unix_now();
    let pace = Pace {
        t0: mono_ns(),
        gap: 1e9 / o.rate,
        count,
    };
    let mut iv = Intervals {
        rx: &rx,
        start,
        last_iv: Instant::now(),
        sent_iv: 0,
    };
    let (sent, send_secs, behind) = send_probes(&sock, &mut pkt, pace, stop, &mut iv, &mut sink);
    if behind.resyncs > 0 {
        tracing::warn!(
            times = behind.resyncs,
            max_late_ms = behind.max_late_ms,
            "the probe sender fell behind its schedule (this host did not run it in time): \
             it went on from then instead of sending the missed probes at once"
        );
    }
    // Stragglers: wait, then ask the server for its side (a few tries).
    let wait_until = Instant::now() + o.wait;
    while Instant::now() < wait_until && !stop.requested() {
        iv.tick(sent, false, &mut sink);
        std::thread::sleep(Duration::from_millis(20));
    }
    iv.tick(sent, true, &mut sink);
    final_exchange(&sock, &rx, run);
    done.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let mut r = rx.lock().expect("lock");
    let mut rep = build_report(o, &mut r, sent, send_secs, send_start_unix);
    rep.sender_behind = behind;
    rep.per_probe = r
        .samples
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|(seq, ctx, fwd, rev)| ProbeSample {
            seq,
            // The probe carries its wall-clock send time.
            sent_unix: ctx as f64 / 1e9,
            forward_ms: fwd as f64 / 1e6,
            reverse_ms: rev as f64 / 1e6,
        })
        .collect();
    Ok(rep)
}

/// Check the options; returns how many probes to send.
fn probe_count(o: &ClientOptions) -> Result<u64> {
    if o.size < MIN_SIZE || o.size > 8900 {
        bail!("--size must be between {MIN_SIZE} and 8900 bytes");
    }
    if !(o.rate > 0.0 && o.rate <= 1_000_000.0) {
        bail!("--rate must be between 1 and 1000000 probes per second");
    }
    let count = match (o.count, o.duration) {
        (Some(c), _) => c,
        (None, Some(d)) => (d.as_secs_f64() * o.rate).ceil() as u64,
        (None, None) => (10.0 * o.rate) as u64,
    };
    if count == 0 {
        bail!("nothing to send (count 0)");
    }
    if count > 10_000_000 {
        bail!("at most 10,000,000 probes per run (asked for {count})");
    }
    Ok(count)
}

/// The client's socket, connected to the server and warmed up; returns it and the run id.
fn open_socket(o: &ClientOptions) -> Result<(UdpSocket, u64)> {
    let bind: SocketAddr = if o.to.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("literal");
    let sock = UdpSocket::bind(bind)?;
    prepare(&sock)?;
    sock.connect(o.to)?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let run = mono_ns() ^ ((std::process::id() as u64) << 32);
    warm_up(&sock, run)?;
    Ok((sock, run))
}

/// What the reader thread has seen so far.
#[derive(Default)]
struct Rx {
    got: Vec<u64>,
    fwd: Option<DelayAcc>,
    rev: Option<DelayAcc>,
    rtt: Option<DelayAcc>,
    dups: u64,
    reordered: u64,
    corrupt_rev: u64,
    corrupt_fwd: u64,
    max_seq: u64,
    max_echo: u64,
    echo_seen: std::collections::HashSet<u64>,
    order: Vec<u64>,
    fin: Option<[u64; FIN_FIELDS]>,
    /// The client socket's own drops so far (SO_RXQ_OVFL).
    socket_drops: u64,
    // This interval's echoes (for --record).
    ifwd: Option<DelayAcc>,
    irev: Option<DelayAcc>,
    ireord: u64,
    /// Every echo: (seq, client send ns (wall clock), forward ns, reverse ns), with
    /// `--per-probe`.
    samples: Option<Vec<(u64, u64, i64, i64)>>,
}

impl Rx {
    /// For `count` probes; `intervals`: keep per-interval delays too (for --record).
    fn new(count: u64, intervals: bool) -> Self {
        Self {
            got: vec![0; count.div_ceil(64) as usize],
            fwd: Some(DelayAcc::new()),
            rev: Some(DelayAcc::new()),
            rtt: Some(DelayAcc::new()),
            ifwd: intervals.then(DelayAcc::new),
            irev: intervals.then(DelayAcc::new),
            ..Default::default()
        }
    }

    /// One echo (`p`, of this run), received at `now`.
    fn echo(&mut self, p: &[u8], now: u64, count: u64) {
        if echo_csum(p) != get_u32(p, 60) {
            self.corrupt_rev += 1;
            return;
        }
        // Reverse path: duplicates and order of the server's echoes.
        let eseq = get_u64(p, ECHO_SEQ);
        if !self.echo_seen.insert(eseq) {
            self.dups += 1;
            return;
        }
        if eseq < self.max_echo {
            self.reordered += 1;
            self.ireord += 1;
        }
        self.max_echo = self.max_echo.max(eseq);
        if p[5] & FLAG_FWD_CORRUPT != 0 {
            self.corrupt_fwd += 1;
            return;
        }
        if p[5] & FLAG_DUP != 0 {
            // A forward duplicate: the server counted it.
            return;
        }
        let seq = get_u64(p, 16);
        if seq >= count {
            return;
        }
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if self.got[w] & (1 << b) != 0 {
            return;
        }
        self.got[w] |= 1 << b;
        self.order.push(seq);
        self.max_seq = self.max_seq.max(seq);
        let (ctx, srx, stx) = (get_u64(p, 24), get_u64(p, 32), get_u64(p, 40));
        if let Some(v) = self.samples.as_mut() {
            v.push((seq, ctx, srx as i64 - ctx as i64, now as i64 - stx as i64));
        }
        if let Some(a) = self.ifwd.as_mut() {
            a.add(srx as i64 - ctx as i64);
        }
        if let Some(a) = self.irev.as_mut() {
            a.add(now as i64 - stx as i64);
        }
        if let Some(a) = self.fwd.as_mut() {
            a.add(srx as i64 - ctx as i64);
        }
        if let Some(a) = self.rev.as_mut() {
            a.add(now as i64 - stx as i64);
        }
        // The round trip without the server's turnaround (its receive timestamp to its send
        // time), as TWAMP and irtt count it: how late the server's thread woke is the
        // measuring host's, not the path's.
        if let Some(a) = self.rtt.as_mut() {
            a.add((now as i64 - ctx as i64) - (stx as i64 - srx as i64).max(0));
        }
    }
}

/// The reader thread: echoes and the server's final answer of run `run`, until `done`.
fn spawn_reader(
    sock: UdpSocket,
    rx: Arc<Mutex<Rx>>,
    done: Arc<AtomicBool>,
    run: u64,
    count: u64,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !done.load(Ordering::Relaxed) {
            let Ok(Arrival {
                len: n,
                at: now,
                socket_drops,
                ..
            }) = recv_ts(&sock, &mut buf)
            else {
                continue;
            };
            if n < HDR || get_u32(&buf, 0) != MAGIC || get_u64(&buf, 8) != run {
                continue;
            }
            let p = &buf[..n];
            let mut r = rx.lock().expect("lock");
            r.socket_drops = r.socket_drops.max(socket_drops.unwrap_or(0) as u64);
            match p[4] {
                KIND_FIN_ACK => {
                    r.fin = Some(std::array::from_fn(|i| get_u64(p, 16 + 8 * i)));
                }
                KIND_ECHO => r.echo(p, now, count),
                _ => {}
            }
        }
    })
}

/// A probe of `size` bytes of run `run` (sequence, time and checksum are filled per send).
fn probe_packet(size: usize, run: u64) -> Vec<u8> {
    let mut pkt = vec![0u8; size];
    for (i, b) in pkt[HDR..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    pkt[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    pkt[4] = KIND_PROBE;
    put_u64(&mut pkt, 8, run);
    pkt
}

/// The send schedule: probe `i` is due at `t0 + i * gap` (ns), `count` probes.
#[derive(Clone, Copy)]
struct Pace {
    t0: u64,
    gap: f64,
    count: u64,
}

/// How often the sender fell behind its schedule by more than its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Behind {
    /// Times the schedule started again from "now" (the missed probes were sent later, not
    /// in a burst).
    pub resyncs: u64,
    /// The largest lateness found, ms.
    pub max_late_ms: f64,
}

/// Per-interval reporting (`--record`): emits one object per interval from the reader's
/// interval accumulators.
struct Intervals<'a> {
    rx: &'a Mutex<Rx>,
    start: Instant,
    last_iv: Instant,
    sent_iv: u64,
}

impl Intervals<'_> {
    /// Emit one interval object when the interval is over (or `force`).
    fn tick(&mut self, sent: u64, force: bool, sink: &mut Option<IntervalSink<'_>>) {
        let Some((every, f)) = sink.as_mut() else {
            return;
        };
        let el = self.last_iv.elapsed();
        if el < *every && !force {
            return;
        }
        self.last_iv = Instant::now();
        let mut r = self.rx.lock().expect("lock");
        let s = |a: &mut Option<DelayAcc>| {
            let x = a.replace(DelayAcc::new());
            x.filter(|x| x.n > 0).map(|x| x.stats())
        };
        let (forward, reverse) = (s(&mut r.ifwd), s(&mut r.irev));
        let reordered = std::mem::take(&mut r.ireord);
        drop(r);
        f(&UdpInterval {
            kind: LineKind::Interval,
            t: self.start.elapsed().as_secs_f64(),
            interval_s: el.as_secs_f64(),
            sent: sent - self.sent_iv,
            forward,
            reverse,
            reordered,
        });
        self.sent_iv = sent;
    }
}

/// Send the probes on schedule until all are sent or `stop`; returns how many were sent and
/// the seconds that took.
fn send_probes(
    sock: &UdpSocket,
    pkt: &mut [u8],
    pace: Pace,
    stop: &Stop,
    iv: &mut Intervals<'_>,
    sink: &mut Option<IntervalSink<'_>>,
) -> (u64, f64, Behind) {
    let Pace { mut t0, gap, count } = pace;
    // A sender the host left unscheduled longer than this starts its schedule again from
    // now instead of sending every missed probe at once: a burst would queue in the path
    // under test and be measured as its delay or loss.
    let late_limit = (4.0 * gap).max(2e6) as u64;
    let mut behind = Behind::default();
    let mut sent = 0u64;
    let mut bar = crate::progress::Progress::new(count, "probes sent");
    let mut last_bar = Instant::now();
    while sent < count && !stop.requested() {
        iv.tick(sent, false, sink);
        if last_bar.elapsed() >= Duration::from_millis(200) {
            last_bar = Instant::now();
            bar.set(sent, "");
        }
        let mut due = t0 + (sent as f64 * gap) as u64;
        let late = mono_ns().saturating_sub(due);
        if late > late_limit {
            t0 += late;
            due += late;
            behind.resyncs += 1;
            behind.max_late_ms = behind.max_late_ms.max(late as f64 / 1e6);
        }
        loop {
            let now = mono_ns();
            if now >= due {
                break;
            }
            let left = due - now;
            if left > 200_000 {
                std::thread::sleep(Duration::from_nanos(left - 100_000));
            } else {
                std::hint::spin_loop();
            }
        }
        put_u64(pkt, 16, sent);
        put_u64(pkt, 24, real_ns());
        let c = client_csum(pkt);
        pkt[56..60].copy_from_slice(&c.to_le_bytes());
        let _ = sock.send(pkt);
        sent += 1;
    }
    let send_secs = iv.start.elapsed().as_secs_f64();
    bar.finish();
    (sent, send_secs, behind)
}

/// Ask the server for its counts until it answers (at most 20 tries, 150 ms apart).
fn final_exchange(sock: &UdpSocket, rx: &Mutex<Rx>, run: u64) {
    let mut fin = [0u8; HDR];
    fin[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    fin[4] = KIND_FIN;
    put_u64(&mut fin, 8, run);
    for _ in 0..20 {
        if rx.lock().expect("lock").fin.is_some() {
            break;
        }
        let _ = sock.send(&fin);
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// The sequence numbers below `sent` that got no echo.
fn lost_seqs(got: &[u64], sent: u64) -> Vec<u64> {
    let mut lost_seqs = vec![];
    for seq in 0..sent {
        if got[(seq / 64) as usize] & (1 << (seq % 64)) == 0 {
            lost_seqs.push(seq);
        }
    }
    lost_seqs
}

/// Runs of consecutive sequence numbers in `lost_seqs` (ascending).
fn loss_bursts(lost_seqs: &[u64]) -> Bursts {
    let mut bursts = Bursts::default();
    let mut run_len = 0u64;
    let mut total_len = 0u64;
    let mut prev: Option<u64> = None;
    for s in lost_seqs {
        if prev.is_some_and(|p| p + 1 == *s) {
            run_len += 1;
        } else {
            if run_len > 0 {
                bursts.count += 1;
                total_len += run_len;
                bursts.max_len = bursts.max_len.max(run_len);
            }
            run_len = 1;
        }
        prev = Some(*s);
    }
    if run_len > 0 {
        bursts.count += 1;
        total_len += run_len;
        bursts.max_len = bursts.max_len.max(run_len);
    }
    if bursts.count > 0 {
        bursts.mean_len = total_len as f64 / bursts.count as f64;
    }
    bursts
}

/// Probes whose echo arrived before that of a lower-numbered probe (`order`: arrival order).
fn overtaking(order: &[u64]) -> u64 {
    let mut overtaking = 0u64;
    let mut min_after = u64::MAX;
    for s in order.iter().rev() {
        if *s > min_after {
            overtaking += 1;
        }
        min_after = min_after.min(*s);
    }
    overtaking
}

/// The report from what the reader saw and the server's final counts.
fn build_report(
    o: &ClientOptions,
    r: &mut Rx,
    sent: u64,
    send_secs: f64,
    send_start_unix: f64,
) -> UdpReport {
    let lost_seqs = lost_seqs(&r.got, sent);
    let bursts = loss_bursts(&lost_seqs);
    let echoed = sent - lost_seqs.len() as u64;
    let overtaking = overtaking(&r.order);
    let fwd_acc = r.fwd.take().expect("acc");
    let rev_acc = r.rev.take().expect("acc");
    let delay_hist_ms = [fwd_acc.hist_ms(), rev_acc.hist_ms()];
    let rtt_acc = r.rtt.take().expect("acc");
    let [server_rx, server_dup, server_reord, server_corrupt, server_drops] = match r.fin {
        Some(f) => f,
        None => {
            tracing::warn!(
                "the probe server did not answer the final exchange; forward counts are estimates"
            );
            [echoed, 0, 0, r.corrupt_fwd, 0]
        }
    };
    if server_drops + r.socket_drops > 0 {
        tracing::warn!(
            forward = server_drops,
            reverse = r.socket_drops,
            "the probe's own sockets dropped datagrams (this host was too busy to read them): \
             counted as lost, but not the network's loss"
        );
    }
    let pct = |lost: u64, of: u64| {
        if of == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / of as f64
        }
    };
    let fwd_lost = sent.saturating_sub(server_rx + server_corrupt);
    let rev_lost = server_rx.saturating_sub(echoed + r.corrupt_rev);
    UdpReport {
        mode: "udp".into(),
        to: o.to.to_string(),
        sent,
        size: o.size,
        rate_pps: o.rate,
        duration_s: send_secs,
        forward: DirStats {
            received: server_rx,
            lost: fwd_lost,
            loss_pct: pct(fwd_lost, sent),
            duplicates: server_dup,
            reordered: server_reord,
            corrupted: server_corrupt,
            socket_drops: server_drops.min(fwd_lost),
            delay_ms: fwd_acc.stats(),
        },
        reverse: DirStats {
            received: echoed,
            lost: rev_lost,
            loss_pct: pct(rev_lost, server_rx),
            duplicates: r.dups,
            reordered: r.reordered,
            corrupted: r.corrupt_rev,
            socket_drops: r.socket_drops.min(rev_lost),
            delay_ms: rev_acc.stats(),
        },
        rtt_ms: rtt_acc.stats(),
        overtaking,
        no_echo: lost_seqs.len() as u64,
        loss_bursts: bursts,
        lost_seqs,
        server_stats: r.fin.is_some(),
        sender_behind: Behind::default(),
        delay_hist_ms,
        send_start_unix,
        per_probe: vec![],
    }
}
