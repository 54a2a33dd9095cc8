//! Drops that happen after the tap: wan's userspace engine drops a frame when its queue is
//! full or a `once` trace has ended, or when the interface it was to leave by is down when it
//! is due, after `wan_xdp` (and the capture behind its tap) saw the frame go "to the timing
//! engine". The engine tells a capture on the interface the frame came in by, through an
//! abstract datagram socket per interface and network namespace; the capture holds the frames
//! it saw go to the engine for [`HOLD_NS`] and relabels the one a note names, so the drop's
//! reason stands next to the packet. A drop at departure comes as late as the frame's delay:
//! a note later than the hold finds its frame written already (counted as late), and the hold
//! grows to cover such notes from then on, up to [`MAX_HOLD_NS`].
//!
//! A note names the frame by its arrival time (`wan_xdp`'s `bpf_ktime_get_ns`, which the
//! capture behind wan's tap takes as that frame's timestamp from wan's metadata) and its
//! length: the match is exact, and a note is late exactly when the capture has written a
//! frame at or past its time. The engine sends the notes of one intake batch as one datagram and never blocks
//! on it: without a listening capture a send fails and the engine tries again 50 ms later;
//! a capture that falls behind loses notes (its frames keep "to the timing engine"), never the
//! engine's time. The capture reads them on a thread of its own (an AF_UNIX datagram queue
//! holds only `net.unix.max_dgram_qlen` datagrams, 10 by default).
use std::{
    collections::VecDeque,
    io::ErrorKind,
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use wirelab_common::tap::wan_what;

/// Abstract socket name prefix; the interface name follows.
pub const PREFIX: &str = "wirelab-wan-drops/";

/// How long a capture behind wan holds frames before writing them, waiting for a note: the
/// engine drops a frame when it takes it in, within milliseconds of its arrival even on a
/// busy host.
pub const HOLD_NS: u64 = 50_000_000;

/// The longest the hold grows to for notes that come late (drops at departure, after the
/// frame's emulated delay): frames wait in memory that long.
pub const MAX_HOLD_NS: u64 = 1_000_000_000;

const NOTE_LEN: usize = 24;
const MAGIC: u32 = 0x5744_524e; // "WDRN"

/// One dropped frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note {
    /// When the frame arrived (CLOCK_MONOTONIC ns, from `wan_xdp`).
    pub arrival_ns: u64,
    /// Its length on the wire.
    pub len: u32,
    /// Its wan class id.
    pub class: u32,
    /// Why (`wan_what::QUEUE_DROP`, `LINK_ENDED` or `LINK_DOWN`).
    pub what: u8,
}

impl Note {
    fn encode(&self) -> [u8; NOTE_LEN] {
        let mut b = [0u8; NOTE_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = self.what;
        b[8..16].copy_from_slice(&self.arrival_ns.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..24].copy_from_slice(&self.class.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; NOTE_LEN] = b.try_into().ok()?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        if u32_at(0) != MAGIC
            || !matches!(
                b[4],
                wan_what::QUEUE_DROP | wan_what::LINK_ENDED | wan_what::LINK_DOWN
            )
        {
            return None;
        }
        Some(Self {
            what: b[4],
            arrival_ns: u64::from_le_bytes(b[8..16].try_into().ok()?),
            len: u32_at(16),
            class: u32_at(20),
        })
    }
}

fn address(iface: &str) -> Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("{PREFIX}{iface}"))
        .with_context(|| format!("socket address for {iface}"))
}

/// Notes per datagram at most (24 bytes each).
const NOTES_PER_DATAGRAM: usize = 128;

/// Notes kept per direction while the capture's socket is full (its reader not scheduled
/// yet): beyond this many the oldest are let go.
const BACKLOG: usize = 16 * NOTES_PER_DATAGRAM;

/// How long the engine keeps no notes after finding nobody listening.
const QUIET: Duration = Duration::from_millis(50);

/// The engine's side: one unbound, non-blocking socket; per direction the address of the
/// interface frames of that direction came in by, and the notes not sent yet.
pub struct Notifier {
    sock: UnixDatagram,
    to: [SocketAddr; 2],
    /// Encoded notes, oldest first (a ring: a full backlog lets its oldest note go without
    /// moving the rest).
    backlog: [VecDeque<u8>; 2],
    /// Per direction: nobody listened at the last try; try again from then on.
    quiet_until: [Option<Instant>; 2],
    /// Notes sent.
    pub sent: u64,
    /// Notes let go (backlog full).
    pub lost: u64,
}

impl Notifier {
    /// `ifaces[d]`: the interface frames of direction `d` arrive on.
    pub fn new(ifaces: [&str; 2]) -> Result<Self> {
        let sock = UnixDatagram::unbound().context("drop-note socket")?;
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock,
            to: [address(ifaces[0])?, address(ifaces[1])?],
            backlog: [VecDeque::new(), VecDeque::new()],
            quiet_until: [None; 2],
            sent: 0,
            lost: 0,
        })
    }

    /// Note a drop of direction `d`, sent at the next [`Notifier::flush`]. Nothing is kept
    /// while nobody listens.
    pub fn push(&mut self, d: usize, note: &Note) {
        if self.quiet_until[d].is_some_and(|t| Instant::now() < t) {
            return;
        }
        let b = &mut self.backlog[d];
        if b.len() >= BACKLOG * NOTE_LEN {
            b.drain(..NOTE_LEN);
            self.lost += 1;
        }
        b.extend(note.encode());
    }

    /// Send what is noted, up to [`NOTES_PER_DATAGRAM`] per datagram, until the capture's
    /// socket is full (the rest waits for the next call).
    pub fn flush(&mut self) {
        for d in 0..2 {
            while !self.backlog[d].is_empty() {
                let n = self.backlog[d].len().min(NOTES_PER_DATAGRAM * NOTE_LEN);
                let pending = self.backlog[d].make_contiguous();
                match self.sock.send_to_addr(&pending[..n], &self.to[d]) {
                    Ok(_) => {
                        self.backlog[d].drain(..n);
                        self.sent += (n / NOTE_LEN) as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // Nobody listens (or the socket went away): look again a little later
                    // (a failed send costs a syscall; a capture that starts meanwhile misses
                    // the notes of this pause).
                    Err(_) => {
                        self.backlog[d].clear();
                        self.quiet_until[d] = Some(Instant::now() + QUIET);
                    }
                }
            }
        }
    }
}

/// The capture's side: bound to its interface's name.
pub struct Listener {
    sock: UnixDatagram,
}

impl Listener {
    pub fn bind(iface: &str) -> Result<Self> {
        let sock = UnixDatagram::bind_addr(&address(iface)?)
            .with_context(|| format!("binding @{PREFIX}{iface}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(Self { sock })
    }

    /// The notes of the next datagram; empty after 50 ms without one.
    pub fn recv(&self) -> Vec<Note> {
        let mut b = vec![0u8; NOTES_PER_DATAGRAM * NOTE_LEN];
        match self.sock.recv(&mut b) {
            Ok(n) => b[..n].chunks(NOTE_LEN).filter_map(Note::decode).collect(),
            Err(_) => vec![],
        }
    }
}

/// Notes waiting for their frame, as the capture writes frames in time order.
pub struct Matcher {
    /// Notes not yet matched to a frame.
    pending: Vec<Note>,
    /// Frames a note matched.
    pub matched: u64,
    /// Notes that came after the capture had written frames up to or past their arrival
    /// time: their frame (if the filter took it) keeps "to the timing engine".
    pub late: u64,
    /// How long frames wait for their notes now: [`HOLD_NS`], more once notes came late.
    pub hold_ns: u64,
    /// The timestamp of the last frame offered to [`Matcher::take`].
    last_ts: u64,
}

impl Default for Matcher {
    fn default() -> Self {
        Self {
            pending: vec![],
            matched: 0,
            late: 0,
            hold_ns: HOLD_NS,
            last_ts: 0,
        }
    }
}

impl Matcher {
    /// Notes received at `now_ns` (CLOCK_MONOTONIC). One whose frame's time has been written
    /// (frames are written in time order) is late and let go: the hold grows to its lag and
    /// [`HOLD_NS`] more, up to [`MAX_HOLD_NS`].
    pub fn add(&mut self, notes: Vec<Note>, now_ns: u64) {
        for n in notes {
            if n.arrival_ns <= self.last_ts {
                self.late += 1;
                let lag = now_ns.saturating_sub(n.arrival_ns);
                self.hold_ns = self.hold_ns.max(lag + HOLD_NS).min(MAX_HOLD_NS);
            } else {
                self.pending.push(n);
            }
        }
    }

    /// The note for the frame going to wan's engine captured at `ts_ns` (its arrival time)
    /// with length `len`, if one names it (the note is used up). Frames come in time order,
    /// so a note older than `ts_ns` by more than the hold can no longer match one, and is
    /// forgotten (its frame was not captured: the filter or a full buffer). Younger ones stay:
    /// a frame held up on its CPU for longer than the hold (a stalled vCPU) is written behind
    /// later ones, and still finds its note.
    pub fn take(&mut self, ts_ns: u64, len: u32) -> Option<Note> {
        self.last_ts = self.last_ts.max(ts_ns);
        let oldest = self.last_ts.saturating_sub(self.hold_ns);
        self.pending.retain(|n| n.arrival_ns >= oldest);
        let i = self
            .pending
            .iter()
            .position(|n| n.arrival_ns == ts_ns && n.len == len)?;
        self.matched += 1;
        Some(self.pending.swap_remove(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(at: u64, len: u32) -> Note {
        Note {
            arrival_ns: at,
            len,
            class: 1,
            what: wan_what::QUEUE_DROP,
        }
    }

    #[test]
    fn notes_round_trip_and_refuse_others() {
        let n = Note {
            arrival_ns: 123_456_789_012,
            len: 1514,
            class: 3,
            what: wan_what::QUEUE_DROP,
        };
        assert_eq!(Note::decode(&n.encode()), Some(n));
        let mut bad = n.encode();
        bad[0] ^= 1;
        assert_eq!(Note::decode(&bad), None, "wrong magic");
        let mut bad = n.encode();
        bad[4] = wan_what::ENGINE;
        assert_eq!(Note::decode(&bad), None, "not a drop");
        assert_eq!(Note::decode(&n.encode()[..20]), None, "short");
    }

    #[test]
    fn an_engine_note_reaches_the_listening_capture_and_matches_its_frame() {
        let iface = format!("unit{}", std::process::id());
        let l = Listener::bind(&iface).unwrap();
        let mut tx = Notifier::new([&iface, "nobody-listens"]).unwrap();
        // More notes than a datagram holds, and more datagrams than the socket queues (10):
        // the batch is sent as it fills.
        for i in 0..200u64 {
            tx.push(0, &note(1_000_000_000 + i * 1000, 100));
        }
        tx.push(1, &note(1_000_000_000, 100));
        tx.flush();
        assert_eq!(tx.sent, 200, "direction 1 has no capture");
        assert!(tx.quiet_until[1].is_some());
        let mut m = Matcher::default();
        let (a, b) = (l.recv(), l.recv());
        assert_eq!(
            (a.len(), b.len()),
            (NOTES_PER_DATAGRAM, 200 - NOTES_PER_DATAGRAM)
        );
        assert!(l.recv().is_empty(), "nothing more");
        m.add(a, 1_000_300_000);
        m.add(b, 1_000_300_000);
        // The note of the frame's time and length; another length or time: none.
        assert_eq!(m.take(1_000_000_000, 60), None);
        assert_eq!(m.take(1_000_000_000, 100), Some(note(1_000_000_000, 100)));
        assert_eq!(m.take(1_000_000_300, 100), None, "no note of that time");
        assert_eq!(m.take(1_000_001_000, 100), Some(note(1_000_001_000, 100)));
        // A frame at 150 us; then one at 2 us, written behind it (its CPU stalled): it still
        // finds its note.
        assert_eq!(m.take(1_000_150_000, 100), Some(note(1_000_150_000, 100)));
        assert_eq!(m.take(1_000_002_000, 100), Some(note(1_000_002_000, 100)));
        // A frame a hold later: the notes of frames more than a hold before it can no longer
        // match (not captured) and are forgotten.
        let later = 1_000_200_000 + HOLD_NS;
        assert_eq!(m.take(later, 100), None, "past the last note");
        assert!(m.pending.is_empty(), "{:?}", m.pending);
        assert_eq!(m.matched, 4);
        // A full socket (it queues `net.unix.max_dgram_qlen` datagrams) keeps the rest in the
        // backlog for the next flush; beyond the backlog the oldest go.
        for i in 0..(BACKLOG + 5) as u64 {
            tx.push(0, &note(i, 60));
        }
        assert_eq!(tx.lost, 5);
        let mut got = vec![];
        for _ in 0..100 {
            tx.flush();
            loop {
                let n = l.recv();
                if n.is_empty() {
                    break;
                }
                got.extend(n);
            }
            if tx.backlog[0].is_empty() {
                break;
            }
        }
        assert_eq!(got.len(), BACKLOG);
        assert_eq!(
            (got[0].arrival_ns, got[BACKLOG - 1].arrival_ns),
            (5, BACKLOG as u64 + 4)
        );
        assert!(m.pending.is_empty());
        assert_eq!((m.late, m.hold_ns), (0, HOLD_NS), "no note came late");
    }

    /// A drop at departure is noted as late as the frame's delay: a note for a time already
    /// written past is counted late, and the hold grows to cover the next ones (not past
    /// its limit).
    #[test]
    fn late_notes_are_counted_and_lengthen_the_hold() {
        let ms = 1_000_000u64;
        let mut m = Matcher::default();
        // Frames written up to 1,000 ms; notes of frames that arrived at 900 ms and 1,000 ms
        // (the last one written) come at 1,050 ms (150 ms after the first arrival).
        assert_eq!(m.take(1000 * ms, 100), None);
        m.add(vec![note(900 * ms, 100), note(1000 * ms, 100)], 1050 * ms);
        assert_eq!(m.late, 2, "both frames were written before their notes");
        assert!(m.pending.is_empty(), "late notes are let go");
        assert_eq!(m.hold_ns, 150 * ms + HOLD_NS);
        // A note ahead of what is written (by 1 ns) is not late, and still matches.
        m.add(vec![note(1000 * ms + 1, 100)], 1250 * ms);
        assert_eq!(m.late, 2);
        assert_eq!(m.take(1000 * ms + 1, 100), Some(note(1000 * ms + 1, 100)));
        // The hold never grows past MAX_HOLD_NS.
        m.add(vec![note(10 * ms, 100)], 5000 * ms);
        assert_eq!((m.late, m.hold_ns), (3, MAX_HOLD_NS));
    }
}
