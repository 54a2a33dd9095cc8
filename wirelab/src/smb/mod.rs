//! `wirelab smb`: what SMB2/3 clients do on a link, per client address: dialect, sessions,
//! tree connects (live and in total), opens, commands and their latency by MessageId,
//! errors by NTSTATUS, encrypted sessions; and the server-wide count of live tree connects
//! over time. See docs/smb.md.
//!
//! ```text
//! wirelab capture (XDP + tc, `tcp port 445` in the kernel) ─ pcapng ─> reader thread
//!   ─> TCP segment (etherparse) ─> per direction: in order by sequence number (stream.rs)
//!   ─> NetBIOS session messages ─> SMB2 headers (proto.rs) ─> the view (view.rs)
//!   ─> interval lines and the final tables (or --json)
//! ```
//! Live, it runs `wirelab capture … -w -` itself and reads its output; `--read FILE` (or
//! `-` for standard input) reads a capture written before: pcapng (wirelab capture,
//! dumpcap) or pcap (tcpdump -w), Ethernet.
mod metrics;
pub mod proto;
pub mod stream;
pub mod view;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::{
    pcap::PcapReader,
    pcapng::{blocks::interface_description::InterfaceDescriptionOption, Block, PcapNgReader},
    DataLink,
};
use serde::{Deserialize, Serialize};

pub use view::{ClientReport, CommandReport, Segment, ShareReport, Totals, View};

use crate::{runtime::observe::Observer, util::Stop};

/// Where the frames come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A pcapng file; `-`: standard input.
    File(PathBuf),
    /// Capture on an interface (of the namespace `netns`), for `duration` or until stopped.
    Live {
        iface: String,
        netns: Option<String>,
        duration: Option<Duration>,
    },
}

pub struct Options {
    pub source: Source,
    /// The servers' TCP port.
    pub port: u16,
    /// Print the server-wide figures this often (live: wall clock; a file: its timestamps).
    pub interval: Option<Duration>,
    pub json: bool,
    /// Clients in the final table, most commands first.
    pub top: usize,
    /// `--record DIR`: the interval lines and the final line as a run record.
    pub record: Option<PathBuf>,
    /// `--metrics ADDR:PORT`: the server-wide figures and live tree connects per share,
    /// updated every interval.
    pub metrics: Option<crate::metrics::Endpoint>,
}

/// One `--json` interval line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IntervalLine {
    #[serde(rename = "type")]
    pub kind: LineKind,
    /// Seconds since the start (live) or the first SMB segment (a file).
    pub t: f64,
    #[serde(flatten)]
    pub totals: Totals,
    /// Requests in this interval, per second.
    pub commands_per_s: f64,
    /// Tree connects live now per share (path).
    #[serde(default)]
    pub shares_live: std::collections::BTreeMap<String, u64>,
}

/// The final `--json` line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FinalLine {
    #[serde(rename = "type")]
    pub kind: LineKind,
    pub duration_s: f64,
    /// The server-wide figures at the end.
    pub totals: Totals,
    /// The most tree connects live at once, and when (s).
    pub trees_live_max: u64,
    pub trees_live_max_t: f64,
    pub clients: Vec<ClientReport>,
    /// Per share: tree connects live and in total, the most at once.
    #[serde(default)]
    pub shares: Vec<ShareReport>,
    pub commands: Vec<CommandReport>,
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Frames read, TCP segments to or from the port, SMB messages parsed.
    pub frames: u64,
    pub segments: u64,
    pub messages: u64,
    /// Frames that were not Ethernet/IP/TCP.
    pub other_frames: u64,
    /// Stream bytes skipped (gaps, connections joined midway).
    pub skipped_bytes: u64,
}

pub use crate::record::LineKind;

/// The configuration recorded with `--record`.
#[derive(Serialize)]
struct RecordConfig<'a> {
    /// The interface (live) or the file read.
    iface: Option<&'a str>,
    netns: Option<&'a str>,
    read: Option<String>,
    port: u16,
    interval_s: f64,
    duration_s: Option<f64>,
}

/// The interval when `--record` is given without `--interval`.
const RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// How long a live view waits for its capture to attach.
const ATTACH_WAIT: Duration = Duration::from_secs(60);

/// A frame from the reader thread: time (ns) and bytes.
type Frame = (u64, Vec<u8>);

/// Read a capture (pcapng, or classic pcap as tcpdump writes it) from `r` and send its
/// Ethernet frames.
/// `ready` is set once the input's first bytes (or its end) arrived: a live capture writes
/// them once its programs are attached. `empty` names an input that may not be empty (a file
/// or a pipe the user gave); a live capture stopped before it wrote anything is (None).
fn read_capture(
    mut r: impl Read,
    tx: mpsc::SyncSender<Frame>,
    ready: Arc<AtomicBool>,
    empty: Option<String>,
) -> Result<()> {
    let mut magic = [0u8; 4];
    let got = r.read_exact(&mut magic);
    ready.store(true, Ordering::Release);
    if got.is_err() {
        return match empty {
            Some(what) => Err(anyhow::anyhow!(
                "{what}: no capture in it (empty, or shorter than a pcap or pcapng header)"
            )),
            None => Ok(()),
        };
    }
    let r = std::io::Cursor::new(magic).chain(r);
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        read_pcapng(r, tx)
    } else {
        read_pcap(r, tx)
    }
}

fn read_pcap(r: impl Read, tx: mpsc::SyncSender<Frame>) -> Result<()> {
    let mut rd = PcapReader::new(r).context("reading the input: neither pcapng nor pcap")?;
    if rd.header().datalink != DataLink::ETHERNET {
        bail!(
            "the capture's link type is {:?}, not Ethernet",
            rd.header().datalink
        );
    }
    while let Some(p) = until_error(rd.next_packet(), "pcap") {
        if tx
            .send((p.timestamp.as_nanos() as u64, p.data.into_owned()))
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

/// A reader's next packet or block, or None at the end of the input or at its first error (a
/// writer killed mid-record: what came before stands), with a warning naming the format.
fn until_error<T, E: std::fmt::Display>(next: Option<Result<T, E>>, what: &str) -> Option<T> {
    match next? {
        Ok(x) => Some(x),
        Err(e) => {
            tracing::warn!("{what} ends early: {e}");
            None
        }
    }
}

/// Read pcapng blocks from `r` and send the Ethernet frames; ends at the end of the input.
fn read_pcapng(r: impl Read, tx: mpsc::SyncSender<Frame>) -> Result<()> {
    let mut rd = PcapNgReader::new(r).context("reading pcapng (a section header first)")?;
    // Per interface: Ethernet or not, and nanoseconds per timestamp unit (if_tsresol).
    let mut ifaces: Vec<(bool, f64)> = Vec::new();
    while let Some(b) = until_error(rd.next_block(), "pcapng") {
        match b {
            Block::InterfaceDescription(idb) => {
                let res = idb
                    .options
                    .iter()
                    .find_map(|o| match o {
                        InterfaceDescriptionOption::IfTsResol(v) => Some(*v),
                        _ => None,
                    })
                    .unwrap_or(6);
                let unit_s = if res & 0x80 == 0 {
                    10f64.powi(-(res as i32))
                } else {
                    2f64.powi(-((res & 0x7f) as i32))
                };
                ifaces.push((idb.linktype == DataLink::ETHERNET, unit_s * 1e9));
            }
            Block::EnhancedPacket(epb) => {
                let Some(&(eth, ns_per_unit)) = ifaces.get(epb.interface_id as usize) else {
                    continue;
                };
                if !eth {
                    continue;
                }
                // pcap-file hands the raw 64-bit timestamp over as nanoseconds.
                let raw = epb.timestamp.as_nanos() as f64;
                let t = (raw * ns_per_unit) as u64;
                if tx.send((t, epb.data.into_owned())).is_err() {
                    break;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The TCP segment in an Ethernet frame, if it is one.
fn segment(t_ns: u64, f: &[u8]) -> Option<Segment<'_>> {
    let p = SlicedPacket::from_ethernet(f).ok()?;
    let (src, dst): (IpAddr, IpAddr) = match p.net? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Arp(_) => return None,
    };
    let TransportSlice::Tcp(tcp) = p.transport? else {
        return None;
    };
    Some(Segment {
        t_ns,
        src: SocketAddr::new(src, tcp.source_port()),
        dst: SocketAddr::new(dst, tcp.destination_port()),
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        end: tcp.fin() || tcp.rst(),
        payload: tcp.payload(),
    })
}

/// Start `wirelab capture` on the interface, pcapng on its stdout.
fn spawn_capture(
    iface: &str,
    netns: Option<&str>,
    port: u16,
    duration: Option<Duration>,
) -> Result<Child> {
    let exe = std::env::current_exe().context("finding the wirelab binary")?;
    let mut c = Command::new(exe);
    // Ingress at XDP: wire frames, each whole within capture's snaplen; at tc ingress GRO
    // merges a client's large writes into frames up to 64 KiB, cut at the snaplen.
    c.args(["capture", "--ingress", "xdp", "--iface", iface, "--filter"])
        .arg(format!("tcp port {port}"))
        .args(["-w", "-"]);
    if let Some(ns) = netns {
        c.args(["--netns", ns]);
    }
    if let Some(d) = duration {
        c.arg("--duration")
            .arg(format!("{}ms", d.as_millis().max(1)));
    }
    c.stdout(Stdio::piped())
        .spawn()
        .context("starting wirelab capture")
}

/// Read frames until the input ends (or, live, until `stop`), feeding the view; prints
/// (and records) the interval lines and the final line, and returns the final line.
pub fn run(o: &Options, stop: &Stop) -> Result<FinalLine> {
    let interval = o
        .interval
        .or((o.record.is_some() || o.metrics.is_some()).then_some(RECORD_INTERVAL));
    let metrics = o
        .metrics
        .as_ref()
        .map(|ep| metrics::SmbMetrics::serve("smb", ep))
        .transpose()?;
    let mut obs = observer(o, interval)?;
    let (tx, rx) = mpsc::sync_channel::<Frame>(4096);
    let live = matches!(o.source, Source::Live { .. });
    let ready = Arc::new(AtomicBool::new(false));
    let (reader, child) = start_reader(o, tx, ready.clone())?;
    let mut v = View::new(o.port);
    if live {
        wait_attached(&ready, &reader, stop);
        // wirelab capture stamps frames with the wall clock.
        v.set_origin((crate::util::unix_now() * 1e9) as u64);
    }
    let (mut frames, mut other) = (0u64, 0u64);
    let started = Instant::now();
    let mut next_tick = interval;
    let mut last_requests = 0u64;
    let mut emit = |v: &View, t: f64, dt: f64| -> Result<()> {
        let l = IntervalLine {
            kind: LineKind::Interval,
            t,
            totals: v.totals(),
            commands_per_s: (v.requests - last_requests) as f64 / dt.max(1e-9),
            shares_live: v.shares_live(),
        };
        last_requests = v.requests;
        if let Some(m) = &metrics {
            m.publish(v);
        }
        obs.interval(&l, |out| print_interval(&l, out))
    };
    let mut stopping = false;
    loop {
        if live && stop.requested() && !stopping {
            // Ctrl-C reached the capture too (same process group); SIGTERM may not have.
            stopping = true;
            if let Some(c) = &child {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let wait = Duration::from_millis(100);
        match rx.recv_timeout(wait) {
            Ok((t, f)) => {
                frames += 1;
                match segment(t, &f) {
                    Some(s) => v.segment(&s),
                    None => other += 1,
                }
                if let (false, Some(iv), Some(tick)) = (live, interval, next_tick) {
                    let el = v.elapsed_s(v.last_ns());
                    if el >= tick.as_secs_f64() {
                        emit(&v, tick.as_secs_f64(), iv.as_secs_f64())?;
                        next_tick = Some(tick + iv);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let (true, Some(iv), Some(tick)) = (live, interval, next_tick) {
            if started.elapsed() >= tick {
                emit(&v, tick.as_secs_f64(), iv.as_secs_f64())?;
                next_tick = Some(tick + iv);
            }
        }
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the pcapng reader panicked"))??;
    if let Some(mut c) = child {
        let st = c.wait().context("waiting for wirelab capture")?;
        if !st.success() && !stopping {
            bail!("wirelab capture failed ({st}); its message is above");
        }
    }
    let duration_s = if live {
        started.elapsed().as_secs_f64()
    } else {
        v.elapsed_s(v.last_ns())
    };
    let f = final_line(&v, duration_s, frames, other);
    obs.finish(&f, vec![], |out| print_final(&f, o.top, out))?;
    Ok(f)
}

/// The whole capture's figures, clients by commands (most first).
fn final_line(v: &View, duration_s: f64, frames: u64, other: u64) -> FinalLine {
    let (trees_max, trees_max_t) = v.trees_max();
    let mut clients = v.clients(duration_s);
    clients.sort_by(|a, b| b.commands.cmp(&a.commands).then(a.client.cmp(&b.client)));
    FinalLine {
        kind: LineKind::Final,
        duration_s,
        totals: v.totals(),
        trees_live_max: trees_max,
        trees_live_max_t: trees_max_t,
        clients,
        shares: v.shares(),
        commands: v.commands(),
        errors: v.errors_by_status(),
        frames,
        segments: v.segments,
        messages: v.messages,
        other_frames: other,
        skipped_bytes: v.skipped(),
    }
}

/// The `--record`/`--json` observer, with the run's configuration.
fn observer(o: &Options, interval: Option<Duration>) -> Result<Observer> {
    let (iface, netns, read, duration) = match &o.source {
        Source::File(p) => (None, None, Some(p.display().to_string()), None),
        Source::Live {
            iface,
            netns,
            duration,
        } => (Some(iface.as_str()), netns.as_deref(), None, *duration),
    };
    Observer::new(
        o.json,
        o.record.as_deref(),
        "smb",
        &RecordConfig {
            iface,
            netns,
            read,
            port: o.port,
            interval_s: interval.unwrap_or(RECORD_INTERVAL).as_secs_f64(),
            duration_s: duration.map(|d| d.as_secs_f64()),
        },
    )
}

/// The thread reading the pcapng (a file, standard input, or a `wirelab capture` started
/// here, returned too) into `tx`; `ready` is raised when its header has come.
fn start_reader(
    o: &Options,
    tx: mpsc::SyncSender<Frame>,
    r: Arc<AtomicBool>,
) -> Result<(
    std::thread::JoinHandle<Result<()>>,
    Option<std::process::Child>,
)> {
    let mut child = None;
    let reader = match &o.source {
        Source::File(p) if p.as_os_str() == "-" => std::thread::spawn(move || {
            read_capture(
                std::io::stdin().lock(),
                tx,
                r,
                Some("standard input".into()),
            )
        }),
        Source::File(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let what = p.display().to_string();
            std::thread::spawn(move || read_capture(std::io::BufReader::new(f), tx, r, Some(what)))
        }
        Source::Live {
            iface,
            netns,
            duration,
        } => {
            let mut c = spawn_capture(iface, netns.as_deref(), o.port, *duration)?;
            let Some(stdout) = c.stdout.take() else {
                bail!("wirelab capture has no stdout");
            };
            child = Some(c);
            std::thread::spawn(move || read_capture(stdout, tx, r, None))
        }
    };
    Ok((reader, child))
}

/// Live: the clock starts when the capture is attached (its pcapng header arrives then).
fn wait_attached(ready: &AtomicBool, reader: &std::thread::JoinHandle<Result<()>>, stop: &Stop) {
    let t0 = Instant::now();
    while !ready.load(Ordering::Acquire)
        && !reader.is_finished()
        && !stop.requested()
        && t0.elapsed() < ATTACH_WAIT
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn print_interval(l: &IntervalLine, out: &mut dyn Write) -> std::io::Result<()> {
    let t = &l.totals;
    writeln!(
        out,
        "{:>7.1}s  clients {:>5}  connections {:>5}  sessions {:>5}  trees {:>5}  opens {:>5}  {:>8.1} cmd/s  errors so far {}",
        l.t, t.clients, t.connections_live, t.sessions_live, t.trees_live, t.opens_live, l.commands_per_s, t.errors
    )
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// The final tables: clients (the `top` with most commands), commands with latency, errors.
pub fn print_final(f: &FinalLine, top: usize, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "SMB on the link for {:.1}s: {} clients, {} requests, {} errors; tree connects live now {}, at most {} (at {:.1}s)",
        f.duration_s, f.totals.clients, f.totals.requests, f.totals.errors, f.totals.trees_live, f.trees_live_max, f.trees_live_max_t
    )?;
    writeln!(
        out,
        "  {:<40} {:>7} {:>5} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6}  enc",
        "client", "dialect", "conns", "sessions", "trees", "opens", "cmds", "cmd/s", "errors"
    )?;
    for c in f.clients.iter().take(top) {
        let errors: u64 = c.errors.values().sum();
        writeln!(
            out,
            "  {:<40} {:>7} {:>5} {:>9} {:>9} {:>9} {:>8} {:>8.1} {:>6}  {}",
            c.client.to_string(),
            c.dialect.as_deref().unwrap_or("-"),
            c.connections,
            format!("{}/{}", c.sessions_live, c.sessions_total),
            format!("{}/{}", c.trees_live, c.trees_total),
            format!("{}/{}", c.opens_live, c.opens_total),
            c.commands,
            c.commands_per_s,
            errors,
            if c.encrypted { "yes" } else { "no" }
        )?;
    }
    if f.clients.len() > top {
        writeln!(
            out,
            "  … {} more clients (--top, or --json for all)",
            f.clients.len() - top
        )?;
    }
    writeln!(out, "  (sessions, trees, opens: live now / in total)")?;
    writeln!(
        out,
        "  {:<40} {:>10} {:>11} {:>8} {:>7}",
        "share", "trees live", "trees total", "at most", "clients"
    )?;
    for s in &f.shares {
        writeln!(
            out,
            "  {:<40} {:>10} {:>11} {:>8} {:>7}",
            s.share, s.trees_live, s.trees_total, s.trees_live_max, s.clients
        )?;
    }
    writeln!(
        out,
        "  {:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "command", "requests", "responses", "mean ms", "p50 ms", "p99 ms", "max ms"
    )?;
    for c in &f.commands {
        writeln!(
            out,
            "  {:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            c.command,
            c.requests,
            c.responses,
            opt_ms(c.mean_ms),
            opt_ms(c.p50_ms),
            opt_ms(c.p99_ms),
            opt_ms(c.max_ms)
        )?;
    }
    if f.errors.is_empty() {
        writeln!(out, "  errors: none")?;
    } else {
        let e: Vec<String> = f.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(out, "  errors: {}", e.join(", "))?;
    }
    if f.skipped_bytes > 0 {
        writeln!(
            out,
            "  {} stream bytes skipped (capture gaps, or connections joined midway)",
            f.skipped_bytes
        )?;
    }
    Ok(())
}
