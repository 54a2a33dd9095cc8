//! `wirelab capture`: frames an interface receives (tc/TCX ingress by default; XDP behind
//! the tap of fw, lb or wan, or when asked) and sends (tc/TCX egress), matched in the kernel by a
//! tcpdump-style filter, written as pcapng.
//!
//! ```text
//! capture_tc_in | capture_xdp(_tap), capture_tc ─ filter ─> perf sample (EventHeader +
//!   snaplen bytes), per CPU, woken at a watermark (perf_ring.rs)
//!   │ one reader thread per CPU buffer (poll, drain, hand over)
//!   ▼
//! writer: merge by timestamp (held until every CPU has moved past it), monotonic -> wall
//! clock, EPB with epb_flags direction; at the end an ISB with the kernel's counters
//! ```
pub mod drops;
pub mod filter;
mod merge;
pub mod pcapng;
mod perf_ring;
pub mod tap;

use std::{
    collections::HashMap,
    fs::File,
    io::{BufWriter, Write},
    os::fd::AsFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::TcAttachType,
};
use serde::{Deserialize, Serialize};
use wirelab_common::{
    capture::{dir, dir_base, stat, CaptureConf, EventHeader, Term, EVENT_HEADER_LEN, MAX_SNAPLEN},
    maps,
    tap::{tool, wan_what, Decision},
};

use crate::{
    ebpf,
    runtime::bpf::{self, AttachMode, TcMode},
    util::Stop,
};

pub use filter::{compile, Filter, FilterError};
pub use tap::Decider;

/// Where the pcapng goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    File(PathBuf),
    Stdout,
}

pub struct Options {
    pub iface: String,
    /// tcpdump-style expression; empty: every frame.
    pub filter: String,
    pub snaplen: u32,
    /// Bytes of kernel ring per CPU (`None`: [`ring_bytes`]'s share of 32 MiB).
    pub ring_bytes: Option<usize>,
    /// Bytes drained frames may hold in memory while they wait for the writer (`None`:
    /// [`DEFAULT_BACKLOG_MIB`]); a drain that would go past it is dropped and counted.
    pub backlog_bytes: Option<u64>,
    /// Stop after this many frames written.
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub out: Output,
    /// Where ingress is taken.
    pub ingress: IngressChoice,
    /// XDP mode for ingress at XDP (`None`: native, falling back to skb).
    pub mode: Option<AttachMode>,
}

/// The hook asked for ingress (`--ingress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IngressChoice {
    /// tc/TCX ingress, or the tap of fw, lb (XDP path) or wan when one runs on the interface
    /// (it owns the XDP hook).
    #[default]
    Auto,
    /// tc/TCX ingress, even behind fw, lb or wan (then only what they pass to the stack,
    /// without their decisions).
    Tc,
    /// XDP: capture's own program, or the tap of fw, lb or wan when one runs there.
    Xdp,
}

/// The hook that took ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressHook {
    /// `capture_tc_in` at tc ingress (GRO kept: an aggregated skb is one frame).
    Tc(TcMode),
    /// `capture_xdp`, capture's own XDP program (stops GRO on a veth).
    Xdp(AttachMode),
    /// `capture_xdp_tap`, called by the XDP program of fw, lb or wan (in its mode), or
    /// `capture_tc_tap` (`None`), called by lb's tc program.
    Tap(tap::Decider, Option<AttachMode>),
}

impl std::fmt::Display for IngressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IngressHook::Tc(m) => write!(f, "tc ({m})"),
            IngressHook::Xdp(m) => write!(f, "xdp ({m})"),
            IngressHook::Tap(d, Some(m)) => write!(f, "{d} tap ({m} xdp)"),
            IngressHook::Tap(d, None) => write!(f, "{d} tap (tc)"),
        }
    }
}

impl IngressHook {
    /// The XDP mode, when ingress is at XDP.
    pub fn xdp_mode(&self) -> Option<AttachMode> {
        match *self {
            IngressHook::Tc(_) => None,
            IngressHook::Xdp(m) | IngressHook::Tap(_, Some(m)) => Some(m),
            IngressHook::Tap(_, None) => None,
        }
    }
}

/// Abstract socket `@wirelab-capture/IFACE` held while a capture runs.
pub const SOCKET_PREFIX: &str = "wirelab-capture/";

/// Interfaces with a capture running in the calling thread's namespace.
pub fn running() -> Vec<String> {
    crate::runtime::control::listening(SOCKET_PREFIX)
}

/// Default `--snaplen`: whole frames up to a jumbo MTU.
pub const DEFAULT_SNAPLEN: u32 = 9216;
/// Bytes of perf ring all CPUs share (each CPU's ring between [`RING_MIN`] and [`RING_MAX`]):
/// 16 MiB per CPU on a 2-CPU machine holds about 10,000 full-size frames, 100 ms at
/// 100,000 frames/s, for a reader the host leaves unscheduled a while.
const RING_TOTAL: usize = 32 << 20;
const RING_MIN: usize = 4 << 20;
const RING_MAX: usize = 16 << 20;

/// Bytes of each CPU's perf ring with `cpus` CPUs (unless `--buffer-size` says).
pub fn ring_bytes(cpus: usize) -> usize {
    (RING_TOTAL / cpus.max(1)).clamp(RING_MIN, RING_MAX)
}
/// The buffer a reader copies a drain's frames into grows by this much at a time: one
/// allocation for hundreds of frames.
const BATCH_BYTES: usize = 256 << 10;
/// How long a reader waits for its ring's watermark (a quarter full) before draining
/// anyway: the most a frame waits to be handed over. Busy or idle, a reader drains at most
/// every `POLL_MS` unless its ring fills faster: each wakeup (of the reader, and of the
/// writer it hands the batch to) costs microseconds, so a drain should collect many frames.
const POLL_MS: u8 = 20;
/// Frames drained and not yet written may hold this much memory by default (`--backlog`):
/// a writer that falls behind (a slow disk, a paused reader of `-w -`) costs no frame up to
/// it, and the capture's memory stays bounded past it.
pub const DEFAULT_BACKLOG_MIB: u32 = 512;

/// The memory a drained frame holds until it is written (its bytes and its description).
fn held(f: &Captured) -> u64 {
    (f.data.len() + std::mem::size_of::<Captured>()) as u64
}

/// Kernel counters of one direction.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirCounts {
    /// Frames the program ran on.
    pub seen: u64,
    /// Frames the filter matched.
    pub matched: u64,
    /// Matched frames lost: the CPU's buffer was full.
    pub lost: u64,
    /// Frames the parser refused (no filter word matches them; `not` words do).
    pub malformed: u64,
    /// Frames whose filter program could not be reached (never expected).
    pub no_filter: u64,
}

/// The final line (`--json`) / table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub r#type: String,
    pub iface: String,
    pub filter: String,
    pub snaplen: u32,
    /// Frames written to the file.
    pub written: u64,
    pub ingress: DirCounts,
    pub egress: DirCounts,
    /// Samples the perf buffers reported lost (the kernel's `lost` count cross-checks it).
    pub perf_lost: u64,
    /// Frames taken from the kernel's rings and dropped because the frames waiting for the
    /// writer already held `--backlog` MiB (the writer, or the reader of `-w -`, fell behind).
    #[serde(default)]
    pub backlog_dropped: u64,
    /// Matched frames not written because `--count` was reached first.
    pub beyond_count: u64,
    pub duration_s: f64,
    /// The hook that took ingress: `tc (tcx)`, `tc (clsact)`, `xdp (native)`, `xdp (skb)`,
    /// `fw tap (native xdp)`, `lb tap (...)`, `wan tap (...)`.
    pub ingress_hook: String,
    /// The egress hook's attachment.
    pub tc_mode: TcMode,
    /// fw, lb or wan when ingress was captured behind its tap (frames carry its decisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind: Option<Decider>,
    /// Behind wan: frames the timing engine dropped after the tap, so marked (its queue was
    /// full, its trace had ended, or the link out was down when the frame was due).
    #[serde(default)]
    pub engine_drops: u64,
    /// Behind wan: drops the engine noted too late to mark (at departure, behind a delay
    /// longer than the hold then was): later frames had been written already, so such a
    /// frame, if the filter took it, stays `to the timing engine` in the file.
    #[serde(default)]
    pub engine_drops_late: u64,
    pub file: String,
}

/// One captured frame on its way to the writer.
#[derive(Debug, PartialEq, Eq)]
struct Captured {
    /// CLOCK_MONOTONIC ns.
    ts: u64,
    /// Arrival order, to keep equal timestamps stable.
    seq: u64,
    orig_len: u32,
    dir: u32,
    decision: Decision,
    /// The captured bytes: a piece of its drain's one buffer (shared, counted).
    data: bytes::Bytes,
}

impl Ord for Captured {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // The oldest frame is the least.
        (self.ts, self.seq).cmp(&(o.ts, o.seq))
    }
}

impl PartialOrd for Captured {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// What a reader thread hands the writer.
enum Msg {
    /// One drain of a CPU's buffer: its frames in its order, the samples the kernel could
    /// not write (full buffer), and when the drain began (`mono_ns`): nothing stamped
    /// before that can still come from it. One message per drain: each wakes the writer.
    Drained {
        cpu: u32,
        frames: Vec<Captured>,
        lost: u64,
        /// Frames this drain took from the ring and dropped: the backlog was full.
        dropped: u64,
        mono_ns: u64,
    },
    /// wan's engine dropped these frames after the tap (see [`drops`]).
    Notes(Vec<drops::Note>),
}

fn clock_ns(c: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(c)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

use crate::util::mono_ns;

/// Decode one perf sample: header, then `cap_len` bytes, in two pieces where the sample
/// wraps around the ring's end. `None` for a sample too short for what its header announces
/// (never from our programs). The frame's bytes are copied once, onto `batch` (a drain's
/// buffer: one allocation for many frames), and split off it.
fn decode(head: &[u8], tail: &[u8], seq: u64, batch: &mut bytes::BytesMut) -> Option<Captured> {
    let at = |i: usize| match head.get(i) {
        Some(b) => Some(*b),
        None => tail.get(i - head.len()).copied(),
    };
    let mut b = [0u8; EVENT_HEADER_LEN];
    match head.get(..EVENT_HEADER_LEN) {
        Some(h) => b.copy_from_slice(h),
        // The header wraps around the ring's end (rare): byte by byte.
        None => {
            for (i, v) in b.iter_mut().enumerate() {
                *v = at(i)?;
            }
        }
    }
    // The header's fields in the machine's byte order (the kernel wrote them on this host).
    let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let h = EventHeader {
        ts_ns: u64::from(u32_at(0)) | (u64::from(u32_at(4)) << 32),
        orig_len: u32_at(8),
        cap_len: u32_at(12),
        ifindex: u32_at(16),
        dir: u32_at(20),
        decision: Decision {
            magic: b[24],
            tool: b[25],
            what: b[26],
            action: b[27],
            id: u32_at(28),
        },
    };
    let end = EVENT_HEADER_LEN.checked_add(h.cap_len as usize)?;
    if end > head.len() + tail.len() {
        return None;
    }
    batch.extend_from_slice(&head[EVENT_HEADER_LEN.min(head.len())..end.min(head.len())]);
    let (from, to) = (
        EVENT_HEADER_LEN.saturating_sub(head.len()),
        end.saturating_sub(head.len()),
    );
    batch.extend_from_slice(&tail[from..to]);
    let data = batch.split().freeze();
    Some(Captured {
        ts: h.ts_ns,
        seq,
        orig_len: h.orig_len,
        dir: h.dir,
        decision: h.decision,
        data,
    })
}

/// The interface's MAC address in this namespace (netlink, not /sys, which shows the
/// namespace sysfs was mounted in).
fn iface_mac(iface: &str) -> Option<[u8; 6]> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        if a.interface_name != iface {
            return None;
        }
        a.address?.as_link_addr()?.addr()
    })
}

fn read_counts(stats: &PerCpuArray<&MapData, u64>, d: u32) -> Result<DirCounts> {
    let b = dir_base(d);
    let get = |i: u32| bpf::sum(stats, b + i);
    Ok(DirCounts {
        seen: get(stat::SEEN)?,
        matched: get(stat::MATCHED)?,
        lost: get(stat::LOST)?,
        malformed: get(stat::MALFORMED)?,
        no_filter: get(stat::NO_FILTER)?,
    })
}

/// Write the configuration and the compiled filter into the object's maps.
pub fn configure(bpf: &mut aya::Ebpf, snaplen: u32, f: &Filter) -> Result<()> {
    let mut conf: Array<&mut MapData, CaptureConf> = Array::try_from(
        bpf.map_mut(maps::CAPTURE_CONF)
            .context("capture conf map missing")?,
    )?;
    conf.set(
        0,
        CaptureConf {
            snaplen,
            nterms: f.terms.len() as u32,
        },
        0,
    )?;
    let mut terms: Array<&mut MapData, Term> = Array::try_from(
        bpf.map_mut(maps::CAPTURE_FILTER)
            .context("capture filter map missing")?,
    )?;
    for (i, t) in f.terms.iter().enumerate() {
        terms.set(i as u32, *t, 0)?;
    }
    Ok(())
}

/// Load the filter half of `hook` and put it where that hook's entry programs tail-call it:
/// before any of them is attached. A capture loads the XDP half only when its ingress is at
/// XDP (its own program or a decider's XDP tap): the filter is the largest program the
/// verifier sees at start.
pub fn load_filter_program(bpf: &mut aya::Ebpf, hook: crate::runtime::bpf::Hook) -> Result<()> {
    use crate::runtime::bpf::{fill_tail_calls, Hook};
    let (prog, array) = match hook {
        Hook::Xdp => ("capture_xdp_filter", maps::CAPTURE_XDP_PROG),
        Hook::Tc => ("capture_tc_filter", maps::CAPTURE_TC_PROG),
    };
    fill_tail_calls(bpf, &[(prog, hook, array)])
}

/// Both filter halves (tests that run every entry program).
pub fn load_filter_programs(bpf: &mut aya::Ebpf) -> Result<()> {
    use crate::runtime::bpf::Hook;
    load_filter_program(bpf, Hook::Tc)?;
    load_filter_program(bpf, Hook::Xdp)
}

/// Sets the flag that stops [`stream`]'s threads when dropped.
struct QuitOnDrop(Arc<AtomicBool>);

impl Drop for QuitOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One frame in time order, as a [`Sink`] receives it.
pub struct Frame<'a> {
    /// Wall-clock time, ns since the Unix epoch.
    pub ts_ns: u64,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// Sent by the interface (tc egress) rather than received (tc ingress or XDP).
    pub egress: bool,
    /// The first `snaplen` bytes.
    pub data: &'a [u8],
    /// What wirelab's own programs decided about it (behind the tap of fw, lb or wan).
    pub comment: Option<&'a str>,
}

/// Where the time-ordered frames of [`stream`] go: capture's pcapng writer, or `flows`.
pub trait Sink {
    /// The next frame; frames come in timestamp order.
    fn frame(&mut self, f: &Frame<'_>) -> Result<()>;
    /// Called between frames at least every 20 ms (flushing, reporting).
    fn idle(&mut self) -> Result<()>;
    /// The programs are attached: frames may come from now on.
    fn attached(&mut self) -> Result<()> {
        Ok(())
    }
    /// Stop now (e.g. `--count` reached).
    fn done(&self) -> bool {
        false
    }
}

/// What [`stream`] measured, for the caller's summary.
pub struct Streamed {
    pub ingress: DirCounts,
    pub egress: DirCounts,
    pub perf_lost: u64,
    /// Frames dropped with the backlog full ([`Summary::backlog_dropped`]).
    pub backlog_dropped: u64,
    /// Wall-clock start and end, ns since the Unix epoch.
    pub start_ns: u64,
    pub end_ns: u64,
    pub duration_s: f64,
    pub ingress_hook: IngressHook,
    /// The egress hook's attachment.
    pub tc_mode: TcMode,
    /// fw, lb or wan when ingress was captured behind its tap.
    pub behind: Option<Decider>,
    /// Frames marked dropped by wan's engine (see [`drops`]).
    pub engine_drops: u64,
    /// Drops wan's engine noted after their frame had been written (see [`drops`]).
    pub engine_drops_late: u64,
}

/// The pcapng file as a [`Sink`].
struct PcapSink {
    w: pcapng::Writer<Box<dyn Write>>,
    count: Option<u64>,
    written: u64,
    beyond: u64,
    last_flush: Instant,
}

impl Sink for PcapSink {
    /// A reader of the file (`wirelab smb` live) sees the header once frames can come.
    fn attached(&mut self) -> Result<()> {
        self.w.flush()?;
        self.last_flush = Instant::now();
        Ok(())
    }

    fn frame(&mut self, f: &Frame<'_>) -> Result<()> {
        if self.count.is_some_and(|n| self.written >= n) {
            self.beyond += 1;
            return Ok(());
        }
        self.w.packet(&pcapng::Packet {
            interface_id: 0,
            ts_ns: f.ts_ns,
            orig_len: f.orig_len,
            data: f.data,
            direction: Some(if f.egress {
                pcapng::Direction::Outbound
            } else {
                pcapng::Direction::Inbound
            }),
            comment: f.comment,
        })?;
        self.written += 1;
        Ok(())
    }

    fn idle(&mut self) -> Result<()> {
        if self.last_flush.elapsed() > Duration::from_millis(100) {
            self.w.flush()?;
            self.last_flush = Instant::now();
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.count.is_some_and(|n| self.written >= n)
    }
}

/// Run a capture until `count`, `duration`, SIGINT or SIGTERM.
pub fn run(opts: &Options, stop: &Stop) -> Result<Summary> {
    let out: Box<dyn Write> = match &opts.out {
        Output::Stdout => Box::new(BufWriter::with_capacity(1 << 16, std::io::stdout())),
        Output::File(p) => Box::new(BufWriter::with_capacity(
            1 << 16,
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
    };
    let mut w = pcapng::Writer::new(
        out,
        &format!("wirelab {} capture", env!("CARGO_PKG_VERSION")),
    )?;
    w.interface(&pcapng::Interface {
        name: opts.iface.clone(),
        mac: iface_mac(&opts.iface),
        snaplen: opts.snaplen,
    })?;
    // The header reaches the reader once the programs are attached (see `attached`).
    let mut sink = PcapSink {
        w,
        count: opts.count,
        written: 0,
        beyond: 0,
        last_flush: Instant::now(),
    };
    let s = stream(opts, stop, &mut sink)?;
    let mut w = sink.w;
    w.stats(&pcapng::Stats {
        interface_id: 0,
        ts_ns: s.end_ns,
        start_ns: s.start_ns,
        end_ns: s.end_ns,
        ifrecv: s.ingress.seen + s.egress.seen,
        ifdrop: s.ingress.lost + s.egress.lost + s.backlog_dropped,
        filter_accept: s.ingress.matched + s.egress.matched,
    })?;
    w.into_inner()?.flush()?;
    tracing::info!(iface = %opts.iface, written = sink.written, "capture detached");
    Ok(Summary {
        r#type: "final".into(),
        iface: opts.iface.clone(),
        filter: opts.filter.clone(),
        snaplen: opts.snaplen,
        written: sink.written,
        ingress: s.ingress,
        egress: s.egress,
        perf_lost: s.perf_lost,
        backlog_dropped: s.backlog_dropped,
        beyond_count: sink.beyond,
        duration_s: s.duration_s,
        ingress_hook: s.ingress_hook.to_string(),
        tc_mode: s.tc_mode,
        behind: s.behind,
        engine_drops: s.engine_drops,
        engine_drops_late: s.engine_drops_late,
        file: match &opts.out {
            Output::Stdout => "-".into(),
            Output::File(p) => p.display().to_string(),
        },
    })
}

/// Attach the capture programs to `opts.iface` (filter `opts.filter`, `opts.snaplen` bytes
/// per frame) and hand every matched frame, in time order, to `sink` until `opts.duration`,
/// a stop request or `sink.done()`. (`opts.count` and `opts.out` are the sink's business.)
pub fn stream(opts: &Options, stop: &Stop, sink: &mut dyn Sink) -> Result<Streamed> {
    if opts.snaplen == 0 || opts.snaplen > MAX_SNAPLEN {
        bail!("--snaplen must be 1-{MAX_SNAPLEN}, not {}", opts.snaplen);
    }
    let filter = compile(&opts.filter)?;
    // Held for the whole run: tells `wirelab cleanup` a capture is alive in this namespace
    // (its clsact filter, before 6.6, is not a leftover), and refuses a second capture on
    // the same interface with a clear message.
    let _alive = crate::runtime::control::bind(
        &format!("{SOCKET_PREFIX}{}", opts.iface),
        &format!("a capture on {}", opts.iface),
    )?;
    let mut bpf = ebpf::load(ebpf::Object::Capture)?;
    configure(&mut bpf, opts.snaplen, &filter)?;
    // Egress is always at tc; the XDP half comes with an XDP ingress (below, or in the tap).
    load_filter_program(&mut bpf, bpf::Hook::Tc)?;
    let bufs = open_rings(&bpf, opts.ring_bytes)?;
    let cpus: Vec<u32> = bufs.iter().map(|(cpu, _)| *cpu).collect();
    let ring_kib = bufs.first().map_or(0, |(_, r)| r.bytes() / 1024);
    // The run starts here (its frames' wall-clock times count from this pair of clocks).
    let clocks = (mono_ns(), clock_ns(nix::time::ClockId::CLOCK_REALTIME));

    let (tx, rx) = mpsc::channel::<Msg>();
    let shared = Shared {
        tx,
        quit: Arc::new(AtomicBool::new(false)),
        backlog: Arc::new(AtomicU64::new(0)),
        backlog_cap: opts
            .backlog_bytes
            .unwrap_or(DEFAULT_BACKLOG_MIB as u64 * (1 << 20)),
    };
    // The threads stop however this function ends (an attach error included).
    let _quit_on_return = QuitOnDrop(shared.quit.clone());
    // fw, lb or wan owns the XDP hook when it runs here: XDP ingress goes behind its tap (the
    // frames then carry its decisions); lb on its tc path has a tap at tc; tc ingress (the
    // default elsewhere) keeps GRO on.
    let decider = tap::Decider::on(&opts.iface);
    let notes_reader = match (opts.ingress, decider) {
        (IngressChoice::Auto | IngressChoice::Xdp, Some(tap::Decider::Wan)) => {
            spawn_notes_reader(&opts.iface, &shared)
        }
        _ => None,
    };
    let (ingress_hook, mut tap) = attach_ingress(&mut bpf, opts, decider)?;
    // Frames wait for their notes (only behind wan's tap): HOLD_NS, longer once notes come
    // late (drops at departure, behind a delay).
    let mut notes = notes_reader
        .as_ref()
        .filter(|_| tap.is_some())
        .map(|_| drops::Matcher::default());
    let tc_mode = bpf::attach_tc(&mut bpf, "capture_tc", &opts.iface, TcAttachType::Egress)?;
    tracing::info!(iface = %opts.iface, ingress = %ingress_hook, egress = %tc_mode, filter = %opts.filter, ring_kib_per_cpu = ring_kib, "capture attached");
    sink.attached()?;

    let mut readers: Vec<_> = bufs
        .into_iter()
        .map(|(cpu, buf)| spawn_reader(cpu, buf, &shared))
        .collect();
    readers.extend(notes_reader);
    let Shared {
        tx,
        quit,
        backlog,
        backlog_cap,
    } = shared;
    drop(tx);

    let start = Instant::now();
    let mut queue = Queue::new(&cpus);
    let mut writer = Writer::new(backlog, clocks);
    loop {
        let finished =
            stop.requested() || opts.duration.is_some_and(|d| start.elapsed() >= d) || sink.done();
        if finished {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(msg) => queue.take(msg, &mut notes),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("every capture reader stopped"),
        }
        let hold = notes.as_ref().map_or(0, |m| m.hold_ns);
        while let Some(f) = queue.pop_written(hold) {
            writer.write(sink, &mut tap, &mut notes, f)?;
        }
        sink.idle()?;
    }
    let end_mono = mono_ns();
    // Detach first, so the counters below are final, then let the readers drain.
    let stats_map = bpf
        .take_map(maps::CAPTURE_STATS)
        .context("capture stats map missing")?;
    // The tap off (fw stops calling capture), kept for the names of the frames still queued.
    let behind = tap.as_ref().map(|t| t.decider);
    if let Some(t) = &mut tap {
        t.off();
    }
    drop(bpf);
    quit.store(true, Ordering::Relaxed);
    for msg in rx.iter() {
        queue.take(msg, &mut notes);
    }
    for r in readers {
        let _ = r.join();
    }
    while let Some(f) = queue.queued.pop() {
        writer.write(sink, &mut tap, &mut notes, f)?;
    }
    queue.warn(backlog_cap);
    writer.warn();
    let stats: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(&stats_map)?;
    Ok(Streamed {
        ingress: read_counts(&stats, dir::INGRESS)?,
        egress: read_counts(&stats, dir::EGRESS)?,
        perf_lost: queue.perf_lost,
        backlog_dropped: queue.backlog_dropped,
        start_ns: writer.real0,
        end_ns: writer.to_wall(end_mono),
        duration_s: start.elapsed().as_secs_f64(),
        ingress_hook,
        tc_mode,
        behind,
        engine_drops: notes.as_ref().map_or(0, |m| m.matched),
        engine_drops_late: notes.as_ref().map_or(0, |m| m.late),
    })
}

/// One perf buffer per CPU on the capture's events map (`ring` bytes each, `None`: the
/// default share), each to be drained by its own thread: a slow CPU's backlog does not hold
/// up the others, and draining keeps pace with the CPUs producing.
fn open_rings(bpf: &aya::Ebpf, ring: Option<usize>) -> Result<Vec<(u32, perf_ring::PerfRing)>> {
    let Some(Map::PerfEventArray(events)) = bpf.map(maps::CAPTURE_EVENTS) else {
        bail!("capture events map missing");
    };
    let cpus = aya::util::online_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    let ring = ring.unwrap_or_else(|| ring_bytes(cpus.len()));
    cpus.iter()
        .map(|&cpu| {
            Ok((
                cpu,
                perf_ring::PerfRing::open(events.fd().as_fd(), cpu, ring)?,
            ))
        })
        .collect()
}

/// What the reader threads share with the writer.
struct Shared {
    tx: mpsc::Sender<Msg>,
    quit: Arc<AtomicBool>,
    /// Bytes the drained frames not yet written hold (readers add, the writer subtracts).
    backlog: Arc<AtomicU64>,
    backlog_cap: u64,
}

/// Behind wan: the engine's drops come as notes (see `drops`), to a socket bound and read
/// before the tap is on, so every frame the tap hands over has a listener for its drop
/// (attaching the rest can take seconds while the wan is busy: the notes queue meanwhile).
fn spawn_notes_reader(iface: &str, shared: &Shared) -> Option<std::thread::JoinHandle<()>> {
    match drops::Listener::bind(iface) {
        Ok(l) => {
            let tx = shared.tx.clone();
            let quit = shared.quit.clone();
            Some(std::thread::spawn(move || {
                while !quit.load(Ordering::Relaxed) {
                    let n = l.recv();
                    if !n.is_empty() && tx.send(Msg::Notes(n)).is_err() {
                        return;
                    }
                }
            }))
        }
        Err(e) => {
            tracing::warn!("wan's queue drops will show as `to the timing engine`: {e:#}");
            None
        }
    }
}

/// Attach ingress: behind `decider`'s tap when one runs here (and `--ingress` allows), else
/// capture's own XDP or tc program. Returns the hook, and the tap when it went behind one.
fn attach_ingress(
    bpf: &mut aya::Ebpf,
    opts: &Options,
    decider: Option<tap::Decider>,
) -> Result<(IngressHook, Option<tap::Tap>)> {
    let behind = match (opts.ingress, decider) {
        (IngressChoice::Auto | IngressChoice::Xdp, Some(d)) => {
            match tap::Tap::attach(bpf, &opts.iface, d) {
                Ok(t) if t.mode.is_none() && opts.ingress == IngressChoice::Xdp => {
                    bail!(
                        "{d} runs on its tc path on {}: its decisions are captured at tc (--ingress auto), not at XDP",
                        opts.iface
                    )
                }
                Ok(t) => Some(t),
                // A tap that cannot be used: capture's own hooks, said plainly.
                Err(e) if opts.ingress == IngressChoice::Auto && d != tap::Decider::Fw => {
                    tracing::warn!(
                        "{d} runs on {}, but its decisions cannot be captured: {e:#}; \
                         capturing at tc ingress without them",
                        opts.iface
                    );
                    None
                }
                Err(e) => return Err(e),
            }
        }
        _ => None,
    };
    Ok(match (opts.ingress, behind) {
        (_, Some(t)) => (IngressHook::Tap(t.decider, t.mode), Some(t)),
        (IngressChoice::Xdp, None) => {
            load_filter_program(bpf, bpf::Hook::Xdp)?;
            let mode = bpf::attach_xdp(bpf, "capture_xdp", &opts.iface, opts.mode)?;
            (IngressHook::Xdp(mode), None)
        }
        (IngressChoice::Auto | IngressChoice::Tc, None) => {
            let mode = bpf::attach_tc(bpf, "capture_tc_in", &opts.iface, TcAttachType::Ingress)?;
            (IngressHook::Tc(mode), None)
        }
    })
}

/// The thread that drains CPU `cpu`'s buffer, one message per drain, until told to quit.
fn spawn_reader(
    cpu: u32,
    mut buf: perf_ring::PerfRing,
    shared: &Shared,
) -> std::thread::JoinHandle<()> {
    let tx = shared.tx.clone();
    let quit = shared.quit.clone();
    let backlog = shared.backlog.clone();
    let backlog_cap = shared.backlog_cap;
    std::thread::spawn(move || {
        let mut seq = 0u64;
        let mut last_count = 0;
        loop {
            let done = quit.load(Ordering::Relaxed);
            let mut frames = Vec::with_capacity(last_count);
            let mut lost = 0;
            let mut batch = bytes::BytesMut::new();
            // Read before the drain: every frame stamped earlier (less the margin for a
            // program between its timestamp and its output) is in the ring by now, so this
            // drain takes it. Read after, a drain that took long (or was preempted) would
            // vouch for frames output behind the ring's head it had read.
            let drained_at = mono_ns();
            buf.for_each(|e| match e {
                perf_ring::Record::Sample { head, tail } => {
                    seq += 1;
                    if batch.capacity() < MAX_SNAPLEN as usize {
                        batch.reserve(BATCH_BYTES);
                    }
                    if let Some(f) = decode(head, tail, seq, &mut batch) {
                        frames.push(f);
                    }
                }
                perf_ring::Record::Lost { count } => lost += count,
            });
            last_count = frames.len();
            // Past the backlog's bound the drain is dropped, not kept: the ring keeps being
            // drained (the writer's merge needs every reader's drains to go on), and memory
            // stays bounded whatever the writer's pace.
            let bytes: u64 = frames.iter().map(held).sum();
            let mut dropped = 0;
            if backlog.load(Ordering::Relaxed) + bytes > backlog_cap {
                dropped = frames.len() as u64;
                frames.clear();
            } else {
                backlog.fetch_add(bytes, Ordering::Relaxed);
            }
            let drained = Msg::Drained {
                cpu,
                frames,
                lost,
                dropped,
                mono_ns: drained_at,
            };
            if tx.send(drained).is_err() || done {
                return;
            }
            // The kernel wakes us only at the ring's watermark (a quarter full), not for
            // every frame: a drain takes a batch, and the timeout bounds how long a frame
            // waits on a quiet interface.
            let mut pfd = [nix::poll::PollFd::new(
                buf.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(POLL_MS));
        }
    })
}

/// A frame may be written once every CPU has been seen idle after it (less a margin for a
/// program between its timestamp and its output), so the file is in time order.
const MARGIN_NS: u64 = 2_000_000;

/// Frames drained from every CPU, merged in time order, and how far each CPU is known done.
struct Queue {
    queued: merge::Merge<Captured>,
    safe: HashMap<u32, u64>,
    perf_lost: u64,
    backlog_dropped: u64,
}

impl Queue {
    fn new(cpus: &[u32]) -> Self {
        Queue {
            queued: merge::Merge::default(),
            safe: cpus.iter().map(|c| (*c, 0)).collect(),
            perf_lost: 0,
            backlog_dropped: 0,
        }
    }

    /// A reader's message: a drain's frames (and losses), or wan's notes of engine drops.
    fn take(&mut self, msg: Msg, notes: &mut Option<drops::Matcher>) {
        match msg {
            Msg::Drained {
                cpu,
                frames,
                lost,
                dropped,
                mono_ns,
            } => {
                let s = self.safe.entry(cpu).or_default();
                *s = frames.iter().map(|f| f.ts).fold(*s, u64::max);
                self.queued.extend(cpu, frames);
                *s = (*s).max(mono_ns.saturating_sub(MARGIN_NS));
                self.perf_lost += lost;
                self.backlog_dropped += dropped;
            }
            Msg::Notes(n) => {
                if let Some(m) = notes.as_mut() {
                    m.add(n, mono_ns());
                }
            }
        }
    }

    /// The next frame every CPU is done with (and, behind wan, held `hold_ns` for its note).
    fn pop_written(&mut self, hold_ns: u64) -> Option<Captured> {
        let watermark = self
            .safe
            .values()
            .copied()
            .min()
            .unwrap_or(0)
            .saturating_sub(hold_ns);
        self.queued.pop_if(|f: &Captured| f.ts <= watermark)
    }

    fn warn(&self, backlog_cap: u64) {
        if self.backlog_dropped > 0 {
            tracing::warn!(
                frames = self.backlog_dropped,
                backlog_mib = backlog_cap >> 20,
                "frames dropped: the writer fell more than the backlog behind (--backlog)"
            );
        }
    }
}

/// Hands frames to the sink in order: with wan's drop notes applied, decisions named, wall
/// clock times, and their bytes given back to the backlog.
struct Writer {
    backlog: Arc<AtomicU64>,
    mono0: u64,
    real0: u64,
    written_ts: u64,
    out_of_order: u64,
    most_behind_ns: u64,
}

impl Writer {
    /// `(mono0, real0)`: the monotonic and wall clocks read at one instant.
    fn new(backlog: Arc<AtomicU64>, (mono0, real0): (u64, u64)) -> Self {
        Writer {
            backlog,
            mono0,
            real0,
            written_ts: 0,
            out_of_order: 0,
            most_behind_ns: 0,
        }
    }

    fn to_wall(&self, mono: u64) -> u64 {
        mono.wrapping_sub(self.mono0).wrapping_add(self.real0)
    }

    fn write(
        &mut self,
        sink: &mut dyn Sink,
        tap: &mut Option<tap::Tap>,
        notes: &mut Option<drops::Matcher>,
        mut f: Captured,
    ) -> Result<()> {
        let release = held(&f);
        if f.ts < self.written_ts {
            // Its CPU's program stalled between its timestamp and its output for longer than
            // the margin and the hold (a descheduled vCPU): the file is out of order here.
            self.out_of_order += 1;
            self.most_behind_ns = self.most_behind_ns.max(self.written_ts - f.ts);
        }
        self.written_ts = self.written_ts.max(f.ts);
        // A frame wan handed to its engine, which dropped it: the note says why.
        if let Some(m) = notes.as_mut() {
            if f.decision.tool == tool::WAN
                && f.decision.what == wan_what::ENGINE
                && f.dir == dir::INGRESS
            {
                if let Some(n) = m.take(f.ts, f.orig_len) {
                    f.decision.what = n.what;
                }
            }
        }
        let comment = tap.as_mut().and_then(|t| t.comment(&f.decision));
        let r = sink.frame(&Frame {
            ts_ns: self.to_wall(f.ts),
            orig_len: f.orig_len,
            egress: f.dir == dir::EGRESS,
            data: &f.data,
            comment: comment.as_deref(),
        });
        self.backlog.fetch_sub(release, Ordering::Relaxed);
        r
    }

    fn warn(&self) {
        if self.out_of_order > 0 {
            tracing::warn!(
                frames = self.out_of_order,
                most_behind_us = self.most_behind_ns / 1000,
                "frames came too late to be written in time order (their CPU stalled)"
            );
        }
    }
}

/// The summary as a table.
pub fn print_summary(s: &Summary, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "capture on {} (ingress: {}, egress: tc ({})) for {:.2}s -> {}",
        s.iface, s.ingress_hook, s.tc_mode, s.duration_s, s.file
    )?;
    if !s.filter.trim().is_empty() {
        writeln!(out, "  filter: {}", s.filter)?;
    }
    writeln!(
        out,
        "  {:<8} {:>10} {:>10} {:>8} {:>10}",
        "dir", "seen", "matched", "lost", "malformed"
    )?;
    for (n, c) in [("ingress", s.ingress), ("egress", s.egress)] {
        writeln!(
            out,
            "  {:<8} {:>10} {:>10} {:>8} {:>10}",
            n, c.seen, c.matched, c.lost, c.malformed
        )?;
    }
    writeln!(out, "  written: {} frames", s.written)?;
    if s.backlog_dropped > 0 {
        writeln!(
            out,
            "  dropped in userspace: {} frames (the writer fell --backlog MiB behind)",
            s.backlog_dropped
        )?;
    }
    if s.engine_drops > 0 {
        writeln!(
            out,
            "  marked dropped by wan's timing engine: {} frames",
            s.engine_drops
        )?;
    }
    if s.engine_drops_late > 0 {
        writeln!(
            out,
            "  noted by wan's timing engine too late to mark: {} drops",
            s.engine_drops_late
        )?;
    }
    if s.beyond_count > 0 {
        writeln!(out, "  not written (past --count): {}", s.beyond_count)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_share_a_budget_within_bounds() {
        assert_eq!(ring_bytes(1), RING_MAX);
        assert_eq!(ring_bytes(2), 16 << 20);
        assert_eq!(ring_bytes(4), 8 << 20);
        assert_eq!(ring_bytes(64), RING_MIN);
    }

    #[test]
    fn samples_decode_and_refuse_short_ones() {
        let h = EventHeader {
            ts_ns: 0x1_0000_0002,
            orig_len: 100,
            cap_len: 3,
            ifindex: 7,
            dir: dir::EGRESS,
            decision: Decision {
                magic: wirelab_common::tap::MAGIC,
                tool: wirelab_common::tap::tool::FW,
                what: 0,
                action: 1,
                id: 42,
            },
        };
        let mut b = vec![];
        b.extend_from_slice(&h.ts_ns.to_ne_bytes());
        for v in [h.orig_len, h.cap_len, h.ifindex, h.dir] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        let d = h.decision;
        b.extend_from_slice(&[d.magic, d.tool, d.what, d.action]);
        b.extend_from_slice(&d.id.to_ne_bytes());
        b.extend_from_slice(&[9, 8, 7, 0, 0]); // padding after the data

        // Wrapped around the ring's end anywhere: in the header, in the data, or not at all.
        for cut in 0..=b.len() {
            let (head, tail) = b.split_at(cut);
            let c = decode(head, tail, 1, &mut bytes::BytesMut::new()).unwrap();
            assert_eq!((c.ts, c.orig_len, c.dir), (0x1_0000_0002, 100, dir::EGRESS));
            assert_eq!(&c.data[..], [9, 8, 7], "split at {cut}");
            assert_eq!(c.decision, h.decision);
        }
        // Short: nothing decoded, nothing left on the batch.
        let mut batch = bytes::BytesMut::new();
        let h = EVENT_HEADER_LEN;
        for (head, tail) in [
            (&b[..h + 2], &[][..]),
            (&b[..h], &b[h..h + 2]),
            (&b[..5], &[][..]),
            (&b[..5], &b[5..9]),
        ] {
            assert!(decode(head, tail, 1, &mut batch).is_none());
        }
        assert!(batch.is_empty());
    }

    #[test]
    fn frames_merge_oldest_first() {
        let f = |ts, seq| Captured {
            ts,
            seq,
            orig_len: 0,
            dir: 1,
            decision: Decision::default(),
            data: bytes::Bytes::new(),
        };
        let mut m = merge::Merge::default();
        m.extend(0, [f(5, 1), f(3, 3)]);
        m.extend(1, [f(1, 2), f(1, 1)]);
        let order: Vec<_> = std::iter::from_fn(|| m.pop())
            .map(|c| (c.ts, c.seq))
            .collect();
        assert_eq!(order, [(1, 1), (1, 2), (3, 3), (5, 1)]);
    }
}
