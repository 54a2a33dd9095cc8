//! The userspace timing engine: AF_XDP sockets on both interfaces sharing one UMEM, a
//! time-ordered queue per direction, and the impairments that need to hold or touch packets
//! (duplicate → corrupt → delay/jitter/reorder → rate → queue limit).
//!
//! Frames arrive already classified (class id in the XDP metadata) and already past the
//! kernel's loss and blackhole decisions. Each is released on the other interface's TX ring at
//! its departure time; its UMEM frame returns to the fill rings after TX completion.
use std::{cmp::Reverse, collections::BinaryHeap};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use rand::{rngs::StdRng, Rng as _, SeedableRng as _};
use wirelab_common::{
    tap::wan_what,
    wan::{Meta, META_MAGIC},
};

use super::{
    dist::{self, Table},
    spec::{JitterOrder, Limit, Spec},
    trace::{self, Trace},
};
use crate::runtime::xsk::{BindOptions, Desc, RingSizes, Socket, Umem};

pub const FRAME_SIZE: u64 = 4096;
/// Where copy-mode AF_XDP puts received data inside a chunk (XDP_PACKET_HEADROOM).
const DATA_OFFSET: u64 = 256;
const RING: u32 = 4096;
const BATCH: u32 = 64;

/// The engine's clock: CLOCK_MONOTONIC, the clock of the programs' timestamps.
pub use crate::util::mono_ns;

/// Everything the engine needs to impair one (direction, class).
#[derive(Clone)]
pub struct Profile {
    pub spec: Spec,
    pub table: Option<Table>,
    /// `rate trace FILE`: the validated trace.
    pub trace: Option<std::sync::Arc<Trace>>,
    /// Effective queue limit (after BDP sizing).
    pub limit_packets: u64,
    pub limit_bytes: u64,
    /// `limit N link`: (packets, bytes) waiting for the link; the limits above are then the
    /// engine's memory.
    pub link_limit: Option<(u64, u64)>,
}

impl Profile {
    pub fn new(spec: Spec, frames: u64) -> Result<Self> {
        let table = dist::builtin(&spec.distribution)?;
        let trace = match &spec.trace {
            Some(t) => {
                Some(Trace::load(&t.path).map_err(|e| anyhow::anyhow!("rate trace: {e:#}"))?)
            }
            None => None,
        };
        // A trace's mean rate sizes the queue as a `rate` would.
        let rate_bps = spec
            .rate
            .as_ref()
            .map(|r| r.bits_per_sec as f64)
            .or(trace.as_ref().map(|t| t.mean_bps()));
        let limit = |l: &Limit| match l {
            Limit::Packets(n) => (*n, u64::MAX),
            Limit::Bytes(b) => (u64::MAX, *b),
        };
        let link_limit = spec.limit.as_ref().filter(|_| spec.limit_link).map(limit);
        let (limit_packets, limit_bytes) = match spec.limit.as_ref().filter(|_| !spec.limit_link) {
            Some(l) => limit(l),
            None => match rate_bps.filter(|_| link_limit.is_none()) {
                // Unset with a rate: twice the bandwidth-delay product, at least 50 ms of
                // traffic at the rate and 64 KiB.
                Some(bps) => {
                    let hold = spec.delay.as_secs_f64() * 2.0 + spec.jitter.as_secs_f64() * 8.0;
                    let bdp = bps / 8.0 * hold.max(0.05);
                    (u64::MAX, (bdp as u64).max(64 * 1024))
                }
                // Unset without a rate: as much as the UMEM holds.
                // Unset without a rate: the frames the engine can hold beyond its fill rings,
                // so running out shows as queue drops rather than silent kernel drops.
                None => (
                    frames.saturating_sub(2 * RING as u64 + 256).max(256),
                    u64::MAX,
                ),
            },
        };
        Ok(Self {
            spec,
            table,
            trace,
            link_limit,
            limit_packets,
            limit_bytes,
        })
    }
}

/// Counters of one (direction, class) in the engine.
#[derive(Clone, Default)]
pub struct ClassStats {
    pub rx: u64,
    pub tx: u64,
    pub tx_bytes: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub reordered: u64,
    pub queue_drops: u64,
    /// Due while the out interface had no carrier: dropped, not sent.
    pub link_down_drops: u64,
    pub queue_depth: u64,
    pub queue_max: u64,
    /// Realised emulated delay (the delay/jitter stage: what `delay` configures) in
    /// microseconds, 1 us to 100 s, 3 significant digits, 32-bit counts (about 90 KiB,
    /// allocated only for classes that carry traffic).
    pub delay_hist: Option<Histogram<u32>>,
    /// Realised queueing delay after it: waiting for the `rate` link behind earlier frames.
    pub queue_hist: Option<Histogram<u32>>,
}

fn record(h: &mut Option<Histogram<u32>>, us: u64) {
    let h = h.get_or_insert_with(|| {
        Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
    });
    h.saturating_record(us.max(1));
}

impl ClassStats {
    /// One sent frame: `emulated` (arrival to the end of the delay stage) and `queued` (from
    /// there to leaving), in microseconds.
    fn record_delays(&mut self, emulated_us: u64, queued_us: u64) {
        record(&mut self.delay_hist, emulated_us);
        record(&mut self.queue_hist, queued_us);
    }
}

struct ClassState {
    rng: StdRng,
    /// `jitter-order keep`: the delay process's two latest knots (standard normal values)
    /// and when the first one was drawn.
    knots: Option<(u64, f64, f64)>,
    last_delay: u32,
    last_dup: u32,
    last_corrupt: u32,
    last_reorder: u32,
    reorder_counter: u64,
    link_free_ns: u64,
    /// `rate trace`: where the link is in its trace (started with the profile).
    cursor: Option<trace::Cursor>,
    /// `limit N link`: departure times and sizes of the frames waiting for the link.
    link_queue: std::collections::VecDeque<(u64, u64)>,
    link_queue_bytes: u64,
    /// When the delay stage last released a frame (the order rule's reference).
    last_departure_ns: u64,
    queued_packets: u64,
    queued_bytes: u64,
    max_seq_sent: u64,
    interval: ClassStats,
    total: ClassStats,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    due: u64,
    seq: u64,
    addr: u64,
    len: u32,
    class: u32,
    arrival: u64,
    /// When the delay stage (delay, jitter, order) released it; `due` adds the rate queue.
    delayed: u64,
    /// A duplicate the engine made (its drop is noted for the original only).
    copy: bool,
}

struct Side {
    sock: Socket,
    fill_outstanding: u32,
    tx_outstanding: u32,
    /// The interface is down (seen by the periodic link check, or ENETDOWN on a kick).
    down: bool,
}

pub struct Engine {
    // Sockets first: they are closed before the UMEM area is unmapped.
    sides: Vec<Side>,
    umem: Umem,
    free: Vec<u64>,
    heaps: [BinaryHeap<Reverse<Held>>; 2],
    /// [dir][class]
    /// Shared so a frame's stage takes a reference count, not a copy of the profile.
    pub profiles: [Vec<std::sync::Arc<Profile>>; 2],
    states: [Vec<ClassState>; 2],
    seq: u64,
    pub frames: u64,
    pub no_frame_drops: u64,
    pub bad_meta: u64,
    /// Frames due while their out interface was down.
    pub link_down_drops: u64,
    /// Set when the engine cannot go on (an interface was deleted).
    pub fatal: Option<String>,
    /// Tells a capture behind the tap which frames the engine dropped (see `capture::drops`).
    drop_notes: Option<crate::capture::drops::Notifier>,
}

/// Correlated uniform draw: with probability `rho` the previous value again, otherwise a fresh
/// one (uniform marginals, so configured probabilities and deviations are kept; see
/// `wirelab_common::wan::correlated`).
/// Knot spacing of the smooth delay process for jitter `sigma_ns`: ten jitters (at least
/// 10 ms), so the delay changes by far less than the time that passes (its slope is about
/// 0.16 · N(0,1)) and packets keep their order by themselves.
fn knot_spacing_ns(sigma_ns: f64) -> u64 {
    (10.0 * sigma_ns).max(10e6) as u64
}

/// Standard normal draw (Box-Muller).
fn std_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `jitter-order keep`: the uniform variate of the delay process at time `now`.
///
/// Independent standard normal knots z0, z1, z2… are drawn every `spacing` ns; between two
/// knots the process is z(f) = cos(πf/2)·z_k + sin(πf/2)·z_k+1 (f = fraction of the spacing),
/// whose variance is cos² + sin² = 1: at every instant z is exactly N(0, 1), so Φ(z) is exactly
/// uniform and the configured distribution's inverse CDF (the same table as netem's) gives
/// exactly the configured delay distribution, whatever the packet rate. The process is smooth
/// and slow (see [`knot_spacing_ns`]), so consecutive packets get nearly the same delay and
/// never need to overtake: keeping order no longer biases the delay upwards.
fn smooth_u32(
    rng: &mut StdRng,
    knots: &mut Option<(u64, f64, f64)>,
    now: u64,
    spacing: u64,
) -> u32 {
    let (mut t0, mut z0, mut z1) = knots.unwrap_or_else(|| (now, std_normal(rng), std_normal(rng)));
    let elapsed = now.saturating_sub(t0);
    if elapsed >= 2 * spacing {
        // Idle for more than a knot: start afresh (independent of the past).
        t0 = now - now.saturating_sub(t0) % spacing;
        z0 = std_normal(rng);
        z1 = std_normal(rng);
    } else if elapsed >= spacing {
        t0 += spacing;
        z0 = z1;
        z1 = std_normal(rng);
    }
    *knots = Some((t0, z0, z1));
    let f = (now.saturating_sub(t0) as f64 / spacing as f64).clamp(0.0, 1.0);
    let a = std::f64::consts::FRAC_PI_2 * f;
    let z = a.cos() * z0 + a.sin() * z1;
    (crate::util::normal_cdf(z) * u32::MAX as f64) as u32
}

/// The random stream of (direction, class) under `seed`.
fn class_rng(seed: u64, d: usize, c: usize) -> StdRng {
    StdRng::seed_from_u64(super::splitmix(
        seed ^ super::splitmix(((d as u64) << 32) | c as u64 | 1 << 63),
    ))
}

fn corr_u32(rng: &mut StdRng, last: &mut u32, rho: f64) -> u32 {
    if rho > 0.0 && rng.random::<f64>() < rho {
        return *last;
    }
    let r: u32 = rng.random();
    *last = r;
    r
}

fn chance(rng: &mut StdRng, last: &mut u32, p: f64, rho: f64) -> bool {
    if p <= 0.0 {
        return false;
    }
    if p >= 1.0 {
        return true;
    }
    (corr_u32(rng, last, rho) as f64) < p * u32::MAX as f64
}

impl Engine {
    /// Open sockets on `ifindex[0]` (A) and `ifindex[1]` (B), sharing one UMEM of `frames`.
    pub fn new(
        ifindex: [u32; 2],
        frames: u64,
        profiles: [Vec<Profile>; 2],
        seed: u64,
    ) -> Result<Self> {
        let umem = Umem::new(frames, FRAME_SIZE as u32)?;
        let sizes = RingSizes {
            fill: RING,
            completion: RING,
            rx: RING,
            tx: RING,
        };
        // A owns the UMEM (the kernel picks the mode: zero-copy where the driver has it, copy
        // on veth); B shares it with fill and completion rings of its own. Every ring is
        // mapped before bind() (see runtime::xsk).
        let a = Socket::owner(&umem, ifindex[0], 0, sizes, BindOptions::default())?;
        let b = Socket::shared(&a, ifindex[1], 0, sizes)?;
        let sides = [a, b]
            .into_iter()
            .map(|sock| Side {
                sock,
                fill_outstanding: 0,
                tx_outstanding: 0,
                down: false,
            })
            .collect();
        let mk_states = |d: usize, n: usize| -> Vec<ClassState> {
            (0..n)
                .map(|c| ClassState {
                    rng: class_rng(seed, d, c),
                    knots: None,
                    last_delay: 0,
                    last_dup: 0,
                    last_corrupt: 0,
                    last_reorder: 0,
                    reorder_counter: 0,
                    link_free_ns: 0,
                    cursor: None,
                    link_queue: Default::default(),
                    link_queue_bytes: 0,
                    last_departure_ns: 0,
                    queued_packets: 0,
                    queued_bytes: 0,
                    max_seq_sent: 0,
                    interval: ClassStats::default(),
                    total: ClassStats::default(),
                })
                .collect()
        };
        let states = [
            mk_states(0, profiles[0].len()),
            mk_states(1, profiles[1].len()),
        ];
        let mut e = Self {
            sides,
            umem,
            free: (0..frames).rev().map(|i| i * FRAME_SIZE).collect(),
            heaps: [BinaryHeap::new(), BinaryHeap::new()],
            profiles: profiles.map(|v| v.into_iter().map(std::sync::Arc::new).collect()),
            states,
            seq: 0,
            frames,
            no_frame_drops: 0,
            bad_meta: 0,
            link_down_drops: 0,
            fatal: None,
            drop_notes: None,
        };
        e.refill();
        Ok(e)
    }

    pub fn fds(&self) -> [i32; 2] {
        [self.sides[0].sock.fd(), self.sides[1].sock.fd()]
    }

    fn frame(&mut self, addr: u64, len: usize) -> &mut [u8] {
        self.umem.frame_mut(addr, len)
    }

    /// Keep both fill rings stocked with free frames.
    fn refill(&mut self) {
        let target = (RING / 2).min((self.free.len() / 2) as u32);
        for s in 0..2 {
            let want = target.saturating_sub(self.sides[s].fill_outstanding);
            if want == 0 || self.free.is_empty() {
                continue;
            }
            let n = want.min(self.free.len() as u32) as usize;
            let start = self.free.len() - n;
            let put = self.sides[s].sock.fill().produce(&self.free[start..]);
            // The ring took the first `put` of free[start..]; keep the rest.
            self.free.drain(start..start + put as usize);
            self.sides[s].fill_outstanding += put;
        }
    }

    fn reap_completions(&mut self) {
        for s in 0..2 {
            let n = self.sides[s].tx_outstanding;
            if n == 0 {
                continue;
            }
            let free = &mut self.free;
            let got = self.sides[s]
                .sock
                .completion()
                .consume(n, |a| free.push(a & !(FRAME_SIZE - 1)));
            self.sides[s].tx_outstanding -= got;
        }
    }

    /// Tell a capture on `ifaces[d]` (direction `d`'s in interface) of the frames dropped
    /// after the tap saw them.
    pub fn notify_drops(&mut self, ifaces: [&str; 2]) -> Result<()> {
        self.drop_notes = Some(crate::capture::drops::Notifier::new(ifaces)?);
        Ok(())
    }

    /// Notes of dropped frames let go because a listening capture did not take them in
    /// time: those frames keep the label `to the timing engine` in its file.
    pub fn drop_notes_lost(&self) -> u64 {
        self.drop_notes.as_ref().map_or(0, |n| n.lost)
    }

    /// Drop a frame (`frame`: its UMEM address, length and arrival) [`Engine::stage`] was
    /// taking in, or one due to leave by a down interface: counted for its class by `what`
    /// (`QUEUE_DROP`, or `LINK_ENDED` / `LINK_DOWN` among the link-down drops), its UMEM frame
    /// freed, and noted for a capture (a duplicate's drop is not: the capture saw only the
    /// original).
    fn drop_staged(
        &mut self,
        d: usize,
        class: usize,
        (addr, len, arrival): (u64, u32, u64),
        copy: bool,
        what: u8,
    ) {
        let st = &mut self.states[d][class];
        for c in [&mut st.interval, &mut st.total] {
            if what == wan_what::QUEUE_DROP {
                c.queue_drops += 1;
            } else {
                c.link_down_drops += 1;
            }
        }
        self.free.push(addr & !(FRAME_SIZE - 1));
        if !copy {
            self.note_drop(d, class, len, arrival, what);
        }
    }

    fn note_drop(&mut self, d: usize, class: usize, len: u32, arrival: u64, what: u8) {
        if let Some(n) = self.drop_notes.as_mut() {
            n.push(
                d,
                &crate::capture::drops::Note {
                    arrival_ns: arrival,
                    len,
                    class: class as u32,
                    what,
                },
            );
        }
    }

    /// Receive what is waiting; returns the number of frames taken in.
    pub fn receive(&mut self, now: u64) -> u32 {
        let mut total = 0;
        for d in 0..2 {
            let mut descs = [Desc::default(); BATCH as usize];
            let mut n = 0;
            self.sides[d].sock.rx().consume(BATCH, |desc| {
                descs[n] = desc;
                n += 1;
            });
            self.sides[d].fill_outstanding =
                self.sides[d].fill_outstanding.saturating_sub(n as u32);
            for desc in &descs[..n] {
                self.ingest(d, desc.addr, desc.len, now);
            }
            total += n as u32;
        }
        if total > 0 {
            self.refill();
        }
        if let Some(n) = self.drop_notes.as_mut() {
            n.flush();
        }
        total
    }

    /// The frame's class and arrival time from the metadata in front of it. A frame without
    /// valid metadata is class 0, arrived `now`; an arrival time not within the last second
    /// (a clock that is not the engine's) counts as `now` too.
    fn meta_of(&mut self, addr: u64, d: usize, now: u64) -> (usize, u64) {
        const LEN: usize = std::mem::size_of::<Meta>();
        if addr & (FRAME_SIZE - 1) < LEN as u64 {
            self.bad_meta += 1;
            return (0, now);
        }
        let m = self.frame(addr - LEN as u64, LEN);
        let word = |i: usize| u32::from_ne_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
        let (magic, class) = (word(0), word(4) as usize);
        let at = u64::from_ne_bytes(std::array::from_fn(|i| m[8 + i]));
        // Clear it: the next frame in this chunk must not inherit a stale class.
        m[0..4].fill(0);
        if magic != META_MAGIC || class >= self.profiles[d].len() {
            self.bad_meta += 1;
            return (0, now);
        }
        let arrival = if at <= now && now - at < 1_000_000_000 {
            at
        } else {
            now
        };
        (class, arrival)
    }

    /// Take in one frame. Its delay and its place on the link count from when it arrived (the
    /// XDP program's time), so a late wake-up of this thread neither adds to the emulated
    /// delay nor wastes the link's time: frames due meanwhile leave at once.
    fn ingest(&mut self, d: usize, addr: u64, len: u32, now: u64) {
        let (class, now) = self.meta_of(addr, d, now);
        self.states[d][class].interval.rx += 1;
        self.states[d][class].total.rx += 1;
        let p = &self.profiles[d][class];
        let (dup_p, dup_c) = (p.spec.duplicate, p.spec.duplicate_corr);
        let dup = {
            let st = &mut self.states[d][class];
            chance(&mut st.rng, &mut st.last_dup, dup_p, dup_c)
        };
        if dup {
            if let Some(copy) = self.free.pop() {
                let src: Vec<u8> = self.frame(addr, len as usize).to_vec();
                let dst_addr = copy + DATA_OFFSET;
                self.frame(dst_addr, len as usize).copy_from_slice(&src);
                self.states[d][class].interval.duplicated += 1;
                self.states[d][class].total.duplicated += 1;
                self.stage(d, class, dst_addr, len, now, true);
            } else {
                self.no_frame_drops += 1;
            }
        }
        self.stage(d, class, addr, len, now, false);
    }

    /// corrupt → delay/jitter/reorder → rate → queue limit → enqueue.
    /// `copy`: a duplicate, which no capture saw (its drop is not told).
    fn stage(&mut self, d: usize, class: usize, addr: u64, len: u32, now: u64, copy: bool) {
        let p = std::sync::Arc::clone(&self.profiles[d][class]);
        let s = &p.spec;
        let corrupt = {
            let st = &mut self.states[d][class];
            chance(&mut st.rng, &mut st.last_corrupt, s.corrupt, s.corrupt_corr)
        };
        if corrupt && len > 14 {
            let (off, bit) = {
                let st = &mut self.states[d][class];
                (
                    st.rng.random_range(14..len as usize),
                    st.rng.random_range(0..8u8),
                )
            };
            self.frame(addr, len as usize)[off] ^= 1 << bit;
            self.states[d][class].interval.corrupted += 1;
            self.states[d][class].total.corrupted += 1;
        }
        let st = &mut self.states[d][class];
        // Queue limit first: a full queue drops before the frame takes a place in it.
        if st.queued_packets + 1 > p.limit_packets || st.queued_bytes + len as u64 > p.limit_bytes {
            self.drop_staged(d, class, (addr, len, now), copy, wan_what::QUEUE_DROP);
            return;
        }
        // Reorder (netem semantics): after `gap - 1` delayed packets, the next one is sent at
        // once with probability `reorder`.
        let mut immediate = false;
        if s.reorder > 0.0 {
            if st.reorder_counter + 1 >= s.gap
                && chance(&mut st.rng, &mut st.last_reorder, s.reorder, s.reorder_corr)
            {
                immediate = true;
                st.reorder_counter = 0;
            } else {
                st.reorder_counter += 1;
            }
        }
        let mut due = now;
        if !immediate {
            let mut delay = s.delay.as_nanos() as f64;
            if !s.jitter.is_zero() {
                let sigma = s.jitter.as_nanos() as f64;
                let u = if s.jitter_order == JitterOrder::Keep {
                    smooth_u32(&mut st.rng, &mut st.knots, now, knot_spacing_ns(sigma))
                } else {
                    corr_u32(&mut st.rng, &mut st.last_delay, s.delay_corr)
                };
                let off = match &p.table {
                    Some(t) if s.jitter_order == JitterOrder::Keep => {
                        sigma * dist::lookup_lerp(t, u)
                    }
                    Some(t) => sigma * dist::lookup(t, u),
                    None => sigma * (2.0 * (u as f64 / u32::MAX as f64) - 1.0),
                };
                delay = (delay + off).max(0.0);
            }
            due = now + delay as u64;
            // `keep`: the smooth process almost never asks a packet to overtake; when a
            // heavy-tailed table does, it waits (order is the promise). `fifo`: always.
            if s.jitter_order != JitterOrder::Reorder {
                due = due.max(st.last_departure_ns);
            }
        }
        let delayed = due;
        // `limit N link`: drop-tail in front of the link, counted when the frame reaches it
        // (the frames ahead that will have left by then are not counted).
        if let (Some((lp, lb)), false) = (p.link_limit, immediate) {
            while let Some(&(t, l)) = st.link_queue.front() {
                if t > due {
                    break;
                }
                st.link_queue.pop_front();
                st.link_queue_bytes -= l;
            }
            if st.link_queue.len() as u64 + 1 > lp || st.link_queue_bytes + len as u64 > lb {
                self.drop_staged(d, class, (addr, len, now), copy, wan_what::QUEUE_DROP);
                return;
            }
        }
        // Reordered packets bypass the rate as well as the delay (netem's behaviour): otherwise
        // they would queue behind everything already waiting for the link.
        if let (Some(r), false) = (&s.rate, immediate) {
            let mut bytes = (len as i64 + r.packet_overhead).max(1) as u64;
            if r.cell_size > 0 {
                let cells = bytes.div_ceil(r.cell_size);
                bytes = (cells as i64 * (r.cell_size as i64 + r.cell_overhead)).max(1) as u64;
            }
            let tx_ns = (bytes as u128 * 8 * 1_000_000_000 / r.bits_per_sec as u128) as u64;
            let start = due.max(st.link_free_ns);
            due = start + tx_ns;
            st.link_free_ns = due;
        } else if let (Some(t), Some(c), false) = (&p.trace, &mut st.cursor, immediate) {
            // The trace's opportunities carry IP bytes (mm-link's accounting); the frame
            // waits behind the one ahead of it (FIFO link).
            let once = s.trace.as_ref().is_some_and(|t| t.once);
            let ip = (len as u64).saturating_sub(trace::ETH_HEADER);
            match c.depart(t, once, due.max(st.link_free_ns), ip) {
                Some(at) => {
                    due = at;
                    st.link_free_ns = at;
                }
                None => {
                    // A `once` trace has ended: the link is gone, as if it were down.
                    self.drop_staged(d, class, (addr, len, now), copy, wan_what::LINK_ENDED);
                    return;
                }
            }
        }
        if p.link_limit.is_some() && !immediate {
            st.link_queue.push_back((due, len as u64));
            st.link_queue_bytes += len as u64;
        }
        // The order rule holds at the delay stage; the rate stage after it is a FIFO link, so
        // frames still leave in order, and time spent waiting for the link counts as queueing,
        // not as emulated delay.
        if !immediate {
            st.last_departure_ns = st.last_departure_ns.max(delayed);
        }
        st.queued_packets += 1;
        st.queued_bytes += len as u64;
        st.interval.queue_max = st.interval.queue_max.max(st.queued_packets);
        st.total.queue_max = st.total.queue_max.max(st.queued_packets);
        self.seq += 1;
        self.heaps[d].push(Reverse(Held {
            due,
            seq: self.seq,
            addr,
            len,
            class: class as u32,
            arrival: now,
            delayed,
            copy,
        }));
    }

    /// Send everything due by `now`. Returns frames sent.
    pub fn transmit_due(&mut self, now: u64) -> u32 {
        self.transmit(now, false)
    }

    fn transmit(&mut self, now: u64, everything: bool) -> u32 {
        let mut sent = 0;
        for d in 0..2 {
            let out = 1 - d;
            let mut batch: Vec<Desc> = vec![];
            // The out interface is down: what is due is lost, as on a dead link, and counted
            // as dropped, never as sent.
            let down = self.sides[out].down;
            while let Some(Reverse(h)) = self.heaps[d].peek() {
                if (h.due > now && !everything) || batch.len() >= BATCH as usize {
                    break;
                }
                let Some(Reverse(h)) = self.heaps[d].pop() else {
                    break;
                };
                let st = &mut self.states[d][h.class as usize];
                st.queued_packets -= 1;
                st.queued_bytes -= h.len as u64;
                if down {
                    self.link_down_drops += 1;
                    let frame = (h.addr, h.len, h.arrival);
                    self.drop_staged(d, h.class as usize, frame, h.copy, wan_what::LINK_DOWN);
                    continue;
                }
                let released = h.delayed.min(now).max(h.arrival);
                let (emulated, queued) = (
                    (released - h.arrival) / 1000,
                    now.saturating_sub(released) / 1000,
                );
                for s in [&mut st.interval, &mut st.total] {
                    s.tx += 1;
                    s.tx_bytes += h.len as u64;
                    s.record_delays(emulated, queued);
                }
                if h.seq < st.max_seq_sent {
                    st.interval.reordered += 1;
                    st.total.reordered += 1;
                } else {
                    st.max_seq_sent = h.seq;
                }
                batch.push(Desc {
                    addr: h.addr,
                    len: h.len,
                    options: 0,
                });
            }
            if batch.is_empty() {
                continue;
            }
            let mut put = 0;
            if self.sides[out].down {
                // The out interface is down: what is due is lost, as on a dead link.
                for desc in &batch {
                    self.free.push(desc.addr & !(FRAME_SIZE - 1));
                }
                self.link_down_drops += batch.len() as u64;
                continue;
            }
            for _ in 0..8 {
                if put >= batch.len() {
                    break;
                }
                let n = self.sides[out].sock.tx().produce(&batch[put..]);
                put += n as usize;
                self.sides[out].tx_outstanding += n;
                let progress = self.kick(out);
                self.reap_completions();
                if n == 0 && !progress {
                    break;
                }
            }
            if put < batch.len() {
                // TX ring stuck: drop the rest rather than spin.
                for desc in &batch[put..] {
                    self.free.push(desc.addr & !(FRAME_SIZE - 1));
                    self.no_frame_drops += 1;
                }
            }
            sent += put as u32;
        }
        self.reap_completions();
        self.refill();
        if let Some(n) = self.drop_notes.as_mut() {
            n.flush();
        }
        sent
    }

    /// Copy-mode TX moves at most a few dozen frames per sendto: kick until the ring is empty
    /// or a kick moves nothing. Returns whether anything moved. A `sendto` error of ENETDOWN
    /// marks the interface down (its traffic is dropped until it comes back), ENXIO/ENODEV
    /// (interface deleted) is fatal.
    fn kick(&mut self, s: usize) -> bool {
        let mut moved = false;
        for _ in 0..64 {
            let before = self.sides[s].sock.tx_ref().pending();
            if before == 0 {
                break;
            }
            // EAGAIN, EBUSY, ENOBUFS: the kernel is busy; the next kick retries.
            if let Err(e) = self.sides[s].sock.kick() {
                match e.errno() {
                    Some(nix::errno::Errno::ENETDOWN) => {
                        self.sides[s].down = true;
                        return moved;
                    }
                    Some(nix::errno::Errno::ENXIO | nix::errno::Errno::ENODEV) => {
                        self.fatal = Some(format!(
                            "interface {} ({}) went away",
                            ["A", "B"][s],
                            self.sides[s].sock.iface()
                        ));
                        return moved;
                    }
                    _ => {}
                }
            }
            if self.sides[s].sock.tx_ref().pending() >= before {
                break;
            }
            moved = true;
        }
        moved
    }

    /// Record whether interface `side` (0 = A, 1 = B) is up and running; while it is not,
    /// frames due for it are dropped and counted (`link_down_drops`).
    pub fn set_link(&mut self, side: usize, up: bool) {
        if let Some(s) = self.sides.get_mut(side) {
            s.down = !up;
        }
    }

    /// Frames the kernel could not hand to the engine (no fill-ring frame or RX ring full).
    pub fn xsk_drops(&self) -> u64 {
        self.sides
            .iter()
            .filter_map(|s| s.sock.statistics().ok())
            .map(|st| st.rx_dropped + st.rx_ring_full)
            .sum()
    }

    pub fn next_due(&self) -> Option<u64> {
        self.heaps
            .iter()
            .filter_map(|h| h.peek().map(|Reverse(x)| x.due))
            .min()
    }

    pub fn queued(&self) -> usize {
        self.heaps[0].len() + self.heaps[1].len()
    }

    /// Interval stats of one (direction, class), reset for the next interval.
    pub fn take_interval(&mut self, d: usize, c: usize) -> ClassStats {
        let st = &mut self.states[d][c];
        let mut s = std::mem::take(&mut st.interval);
        s.queue_depth = st.queued_packets;
        st.interval.queue_max = st.queued_packets;
        s
    }

    pub fn total(&self, d: usize, c: usize) -> ClassStats {
        let st = &self.states[d][c];
        let mut s = st.total.clone();
        s.queue_depth = st.queued_packets;
        s
    }

    /// Restart one class's random decisions from `seed` (both directions), as if the
    /// emulator had started with it: a run that sends the same packets after a seeded
    /// `set` sees the same duplicate, corrupt, reorder and jitter decisions.
    pub fn reseed_class(&mut self, class: usize, seed: u64) {
        for d in 0..2 {
            if let Some(st) = self.states[d].get_mut(class) {
                st.rng = class_rng(seed, d, class);
                st.knots = None;
                st.last_delay = 0;
                st.last_dup = 0;
                st.last_corrupt = 0;
                st.last_reorder = 0;
                st.reorder_counter = 0;
            }
        }
    }

    /// Start the traces of every class now (the trace's 0 ms): called when the emulator starts
    /// forwarding, so the trace's seconds are the report's.
    pub fn start_traces(&mut self, now: u64) {
        for d in 0..2 {
            for (c, st) in self.states[d].iter_mut().enumerate() {
                st.cursor = self.profiles[d][c]
                    .trace
                    .as_ref()
                    .map(|_| trace::Cursor::new(now));
            }
        }
    }

    /// Swap in the profiles of one class (live `set`), both directions at once, between two
    /// packets. Queued frames keep their departure times. A trace starts from its beginning
    /// unless the same trace (same contents, same mode) was already playing.
    pub fn set_class(&mut self, class: usize, profiles: [Profile; 2]) -> Result<()> {
        if class >= self.profiles[0].len() {
            bail!("no class {class}");
        }
        let now = mono_ns();
        for (d, p) in profiles.iter().enumerate() {
            let old = &self.profiles[d][class];
            let same = p.trace.is_some()
                && p.trace == old.trace
                && p.spec.trace.as_ref().map(|t| t.once) == old.spec.trace.as_ref().map(|t| t.once);
            let st = &mut self.states[d][class];
            if !same {
                st.cursor = p.trace.as_ref().map(|_| trace::Cursor::new(now));
            }
        }
        let [a, b] = profiles;
        self.profiles[0][class] = std::sync::Arc::new(a);
        self.profiles[1][class] = std::sync::Arc::new(b);
        Ok(())
    }

    /// At exit: take in what is still in the RX rings, then send everything queued now,
    /// until the queues are empty or nothing moves.
    pub fn flush(&mut self) {
        self.receive(mono_ns());
        let mut idle = 0;
        while self.queued() > 0 && idle < 100 {
            if self.transmit(mono_ns(), true) == 0 {
                idle += 1;
            }
        }
    }
}

/// Context for errors on this platform (the error itself names the failing step and what the
/// kernel needs for it).
pub fn explain_xsk_error(e: anyhow::Error) -> anyhow::Error {
    e.context(format!(
        "AF_XDP setup failed on Linux {}",
        crate::kernel::release()
    ))
}

pub fn frames_hint(frames: u64) -> Result<u64> {
    // The UMEM is locked in memory: at most a quarter of the machine's RAM.
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(u64::MAX);
    let max = (ram / 4 / FRAME_SIZE).clamp(1024, 1 << 22);
    if !(1024..=max).contains(&frames) {
        bail!(
            "--frames must be between 1024 and {max} (4 KiB each, locked in memory; at most a quarter of RAM)"
        );
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smooth process's delays: (arrival ns, delay ns) for arrivals every `gap` ns over
    /// `n` packets, `delay 20ms 2ms distribution normal`.
    fn delays(gap: u64, n: u64, seed: u64) -> Vec<(u64, f64)> {
        let table = dist::builtin(&super::super::spec::Distribution::Normal)
            .unwrap()
            .unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut knots = None;
        let sigma = 2e6;
        (0..n)
            .map(|i| {
                let now = 1_000_000_000 + i * gap;
                let u = smooth_u32(&mut rng, &mut knots, now, knot_spacing_ns(sigma));
                (now, 20e6 + sigma * dist::lookup_lerp(&table, u))
            })
            .collect()
    }

    fn mean_sd(v: &[f64]) -> (f64, f64) {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
        (m, var.sqrt())
    }

    /// The realized distribution is the configured one at 100 and at 5,000 packets/s, and
    /// packets 0.2 ms apart do not need to overtake each other.
    #[test]
    fn keep_order_jitter_matches_the_configured_distribution_at_any_rate() {
        for (gap, n) in [(10_000_000u64, 60_000u64), (200_000, 300_000)] {
            let d = delays(gap, n, 7);
            let (m, sd) = mean_sd(&d.iter().map(|x| x.1).collect::<Vec<_>>());
            assert!((m - 20e6).abs() < 0.1e6, "gap {gap}: mean {m}");
            assert!((sd - 2e6).abs() < 0.1e6, "gap {gap}: sd {sd}");
            let overtakes = d
                .windows(2)
                .filter(|w| w[1].0 as f64 + w[1].1 < w[0].0 as f64 + w[0].1)
                .count();
            if gap == 200_000 {
                assert_eq!(overtakes, 0, "the delay changes slower than time passes");
            }
        }
    }
}
