//! The per-flow analysis of `wirelab flows`, pure userspace on parsed header snapshots (unit
//! tested on crafted segment sequences): counters per direction, Zeek's `conn_state` and
//! history letters, the handshake RTT, the running RTT from TCP timestamps (pping's method)
//! and tshark-style sequence analysis (retransmissions, out-of-order segments, zero windows).
use std::{collections::VecDeque, net::IpAddr};

use etherparse::{LaxNetSlice, LaxSlicedPacket, TcpOptionElement, TransportSlice};

/// TCP flag bits as in the header's 13th byte.
pub mod flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// One endpoint of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    /// 0 for protocols without ports.
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// The TCP header fields the analysis uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tcp {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Payload bytes, from the IP length (the snapshot holds headers only).
    pub payload: u32,
    /// Timestamps option: (TSval, TSecr).
    pub ts: Option<(u32, u32)>,
    /// MSS option (SYNs).
    pub mss: Option<u16>,
    /// TCP header length (options included).
    pub hdr_len: u16,
}

/// A parsed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// ns (any clock; differences are what counts).
    pub t_ns: u64,
    /// Bytes on the wire (the frame's length).
    pub wire_len: u32,
    /// IP protocol number.
    pub proto: u8,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub tcp: Option<Tcp>,
}

/// Parse a frame's first bytes (Ethernet, VLANs, IPv4/IPv6, TCP/UDP). `None` for frames that
/// are not IP (ARP) or too short for their IP header.
pub fn parse(data: &[u8], wire_len: u32, t_ns: u64) -> Option<Segment> {
    let p = LaxSlicedPacket::from_ethernet(data).ok()?;
    let (src, dst, ip_payload_len, proto) = match p.net.as_ref()? {
        LaxNetSlice::Ipv4(v4) => {
            let h = v4.header();
            let len = u32::from(h.total_len()).saturating_sub(u32::from(h.ihl()) * 4);
            (
                IpAddr::from(h.source_addr()),
                IpAddr::from(h.destination_addr()),
                len,
                h.protocol().0,
            )
        }
        LaxNetSlice::Ipv6(v6) => {
            let h = v6.header();
            let ext = v6.extensions().slice().len() as u32;
            let len = u32::from(h.payload_length()).saturating_sub(ext);
            let proto = v6.payload().ip_number.0;
            (
                IpAddr::from(h.source_addr()),
                IpAddr::from(h.destination_addr()),
                len,
                proto,
            )
        }
        _ => return None,
    };
    let (sport, dport, tcp) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let (mut ts, mut mss) = (None, None);
            for o in t.options_iterator().flatten() {
                match o {
                    TcpOptionElement::Timestamp(v, e) => ts = Some((v, e)),
                    TcpOptionElement::MaximumSegmentSize(m) => mss = Some(m),
                    _ => {}
                }
            }
            let flags = (u8::from(t.fin()))
                | (u8::from(t.syn()) << 1)
                | (u8::from(t.rst()) << 2)
                | (u8::from(t.psh()) << 3)
                | (u8::from(t.ack()) << 4);
            (
                t.source_port(),
                t.destination_port(),
                Some(Tcp {
                    seq: t.sequence_number(),
                    ack: t.acknowledgment_number(),
                    flags,
                    window: t.window_size(),
                    payload: ip_payload_len.saturating_sub(u32::from(t.data_offset()) * 4),
                    ts,
                    mss,
                    hdr_len: u16::from(t.data_offset()) * 4,
                }),
            )
        }
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port(), None),
        _ => (0, 0, None),
    };
    Some(Segment {
        t_ns,
        wire_len,
        proto,
        src: Endpoint {
            addr: src,
            port: sport,
        },
        dst: Endpoint {
            addr: dst,
            port: dport,
        },
        tcp,
    })
}

/// The segments a TCP packet goes on the wire as. tc sees a locally made packet before GSO
/// splits it: a packet with more payload than one segment (`seg_payload`: the receiver's MSS
/// option less our TCP options) becomes that many segments, as the kernel will send them
/// (same headers; FIN and PSH on the last one only).
pub fn segments(s: &Segment, mss: u16) -> Vec<Segment> {
    let Some(t) = s.tcp else {
        return vec![*s];
    };
    let size = u32::from(mss).saturating_sub(u32::from(t.hdr_len).saturating_sub(20));
    if size == 0 || t.payload <= size || t.flags & (flag::SYN | flag::RST) != 0 {
        return vec![*s];
    }
    let hdrs = s.wire_len.saturating_sub(t.payload);
    let n = t.payload.div_ceil(size);
    (0..n)
        .map(|i| {
            let len = size.min(t.payload - i * size);
            let last = i + 1 == n;
            let mut flags = t.flags;
            if !last {
                flags &= !(flag::FIN | flag::PSH);
            }
            Segment {
                wire_len: hdrs + len,
                tcp: Some(Tcp {
                    seq: t.seq.wrapping_add(i * size),
                    flags,
                    payload: len,
                    ..t
                }),
                ..*s
            }
        })
        .collect()
}

/// `a < b` in sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Pending TSvals kept per direction (oldest dropped first).
const MAX_PENDING_TS: usize = 4096;
/// RTT samples kept per direction for the median (oldest dropped first).
const MAX_RTT_SAMPLES: usize = 65536;
/// tshark's out-of-order window before the handshake RTT is known.
const OOO_DEFAULT_NS: u64 = 3_000_000;

/// What one direction of a flow sent.
#[derive(Debug, Clone, Default)]
pub struct Side {
    pub pkts: u64,
    pub bytes: u64,
    /// TCP payload bytes.
    pub payload: u64,
    pub syns: u64,
    pub fins: u64,
    pub rsts: u64,
    pub retrans: u64,
    pub ooo: u64,
    pub zero_window: u64,
    /// The MSS option of this side's SYN.
    pub mss: Option<u16>,
    /// The end of the highest sequence number sent (SYN and FIN count one).
    max_end: Option<u32>,
    /// When `max_end` last advanced.
    last_advance_ns: u64,
    last_ack: Option<u32>,
    last_window: u16,
    dup_acks: u32,
    /// TSvals sent, oldest first, with the time each was first seen.
    pending_ts: VecDeque<(u32, u64)>,
    /// RTT samples (ms) of the path from the capture point to the *other* side and back:
    /// this side's TSvals echoed by the other side.
    pub rtt_ms: VecDeque<f64>,
    /// All samples ever taken (`rtt_ms` keeps the last 65536).
    pub rtt_count: u64,
    /// History letters already given (bit per letter).
    letters: u32,
}

impl Side {
    /// Median of the kept RTT samples.
    pub fn rtt_median(&self) -> Option<f64> {
        median(self.rtt_ms.iter().copied())
    }

    /// Median of the last `n` samples.
    pub fn rtt_median_last(&self, n: usize) -> Option<f64> {
        median(self.rtt_ms.iter().rev().take(n).copied())
    }
}

/// The median of `v` (None when empty).
pub fn median(v: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = v.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// One bidirectional flow. The originator is the sender of the first SYN (or of the first
/// packet when no SYN is seen; a flow first seen with a SYN/ACK is flipped, `^`).
#[derive(Debug, Clone)]
pub struct Flow {
    pub proto: u8,
    pub orig_ep: Endpoint,
    pub resp_ep: Endpoint,
    pub first_ns: u64,
    pub last_ns: u64,
    pub orig: Side,
    pub resp: Side,
    pub history: String,
    /// The latest SYN before the handshake completed (a SYN sent again restarts the
    /// handshake, as tshark's most recent SYN does), the first SYN/ACK and the ACK completing
    /// the handshake.
    pub syn_ns: Option<u64>,
    pub synack_ns: Option<u64>,
    pub ack_ns: Option<u64>,
    /// Which side sent the first RST (true: originator).
    first_rst_orig: Option<bool>,
}

/// History letters in Zeek's sense (upper case: originator, lower: responder).
const LETTERS: &[u8] = b"shadfrtw";

impl Flow {
    /// A flow whose first packet is `s`.
    pub fn new(s: &Segment) -> Self {
        let flipped = s
            .tcp
            .is_some_and(|t| t.flags & (flag::SYN | flag::ACK) == flag::SYN | flag::ACK);
        let (orig_ep, resp_ep) = if flipped {
            (s.dst, s.src)
        } else {
            (s.src, s.dst)
        };
        Self {
            proto: s.proto,
            orig_ep,
            resp_ep,
            first_ns: s.t_ns,
            last_ns: s.t_ns,
            orig: Side::default(),
            resp: Side::default(),
            history: if flipped { "^".into() } else { String::new() },
            syn_ns: None,
            synack_ns: None,
            ack_ns: None,
            first_rst_orig: None,
        }
    }

    fn letter(&mut self, from_orig: bool, l: u8) {
        let Some(bit) = LETTERS.iter().position(|c| *c == l) else {
            return;
        };
        let side = if from_orig {
            &mut self.orig
        } else {
            &mut self.resp
        };
        if side.letters & (1 << bit) == 0 {
            side.letters |= 1 << bit;
            self.history.push(if from_orig {
                l.to_ascii_uppercase() as char
            } else {
                l as char
            });
        }
    }

    /// Account one segment of this flow.
    pub fn add(&mut self, s: &Segment) {
        let from_orig = s.src == self.orig_ep;
        self.last_ns = self.last_ns.max(s.t_ns);
        let (me, other) = if from_orig {
            (&mut self.orig, &mut self.resp)
        } else {
            (&mut self.resp, &mut self.orig)
        };
        me.pkts += 1;
        me.bytes += u64::from(s.wire_len);
        let Some(t) = s.tcp else {
            self.letter(from_orig, b'd');
            return;
        };
        let syn = t.flags & flag::SYN != 0;
        let ack = t.flags & flag::ACK != 0;
        let fin = t.flags & flag::FIN != 0;
        let rst = t.flags & flag::RST != 0;
        me.payload += u64::from(t.payload);
        me.syns += u64::from(syn);
        me.fins += u64::from(fin);
        me.rsts += u64::from(rst);
        if syn && t.mss.is_some() {
            me.mss = t.mss;
        }
        let zero_window = t.window == 0 && !(syn || fin || rst);
        me.zero_window += u64::from(zero_window);

        // Sequence analysis, as tshark's tcp.analysis flags it.
        let seglen = t.payload + u32::from(syn) + u32::from(fin);
        let mut retrans = false;
        if seglen > 0 {
            if let Some(end) = me.max_end {
                let keepalive = seglen <= 1 && t.seq == end.wrapping_sub(1) && !(syn || fin || rst);
                if seq_lt(t.seq, end) && !keepalive {
                    let fast = other.dup_acks >= 2 && other.last_ack == Some(t.seq);
                    let thresh = match (self.syn_ns, self.ack_ns) {
                        (Some(a), Some(b)) if b > a => b - a,
                        _ => OOO_DEFAULT_NS,
                    };
                    let since = s.t_ns.saturating_sub(me.last_advance_ns);
                    if !fast && since < thresh && end != t.seq.wrapping_add(seglen) {
                        me.ooo += 1;
                    } else {
                        me.retrans += 1;
                        retrans = true;
                    }
                }
            }
            let new_end = t.seq.wrapping_add(seglen);
            if me.max_end.is_none_or(|e| seq_lt(e, new_end)) {
                me.max_end = Some(new_end);
                me.last_advance_ns = s.t_ns;
            }
        }
        if ack {
            if seglen == 0 && !rst && me.last_ack == Some(t.ack) && me.last_window == t.window {
                me.dup_acks += 1;
            } else if me.last_ack != Some(t.ack) {
                me.dup_acks = 0;
            }
            me.last_ack = Some(t.ack);
            me.last_window = t.window;
        }

        // Running RTT (pping): the first time each TSval is seen, matched by the first TSecr
        // of the other direction that echoes it.
        if let Some((tsval, tsecr)) = t.ts {
            if me.pending_ts.back().is_none_or(|&(v, _)| seq_lt(v, tsval)) {
                if me.pending_ts.len() == MAX_PENDING_TS {
                    me.pending_ts.pop_front();
                }
                me.pending_ts.push_back((tsval, s.t_ns));
            }
            if ack && tsecr != 0 {
                while other
                    .pending_ts
                    .front()
                    .is_some_and(|&(v, _)| seq_lt(v, tsecr))
                {
                    other.pending_ts.pop_front();
                }
                if let Some(&(v, t0)) = other.pending_ts.front() {
                    if v == tsecr {
                        other.pending_ts.pop_front();
                        if other.rtt_ms.len() == MAX_RTT_SAMPLES {
                            other.rtt_ms.pop_front();
                        }
                        other
                            .rtt_ms
                            .push_back(s.t_ns.saturating_sub(t0) as f64 / 1e6);
                        other.rtt_count += 1;
                    }
                }
            }
        }

        // Handshake.
        if syn && !ack && from_orig && self.ack_ns.is_none() {
            self.syn_ns = Some(s.t_ns);
        }
        if syn && ack && !from_orig && self.synack_ns.is_none() {
            self.synack_ns = Some(s.t_ns);
        }
        if !syn && ack && from_orig && self.synack_ns.is_some() && self.ack_ns.is_none() {
            self.ack_ns = Some(s.t_ns);
        }
        if rst && self.first_rst_orig.is_none() {
            self.first_rst_orig = Some(from_orig);
        }

        // History.
        if syn {
            self.letter(from_orig, if ack { b'h' } else { b's' });
        }
        if t.payload > 0 {
            self.letter(from_orig, b'd');
        }
        if fin {
            self.letter(from_orig, b'f');
        }
        if rst {
            self.letter(from_orig, b'r');
        }
        if ack && !syn && !fin && !rst && t.payload == 0 {
            self.letter(from_orig, b'a');
        }
        if retrans {
            self.letter(from_orig, b't');
        }
        if zero_window {
            self.letter(from_orig, b'w');
        }
    }

    /// The handshake RTT: the latest SYN to the ACK of the SYN/ACK (tshark's `initial_rtt`),
    /// ms. A lost SYN's timeout is not part of it: the SYN sent again starts the measurement.
    pub fn handshake_ms(&self) -> Option<f64> {
        let (a, b) = (self.syn_ns?, self.ack_ns?);
        (b >= a).then(|| (b - a) as f64 / 1e6)
    }

    /// Zeek's `conn_state`.
    pub fn state(&self) -> &'static str {
        if self.proto != 6 {
            return if self.resp.pkts > 0 { "SF" } else { "S0" };
        }
        let syn = self.orig.syns > 0;
        let synack = self.synack_ns.is_some();
        let (o, r) = (&self.orig, &self.resp);
        match (syn, synack) {
            (true, true) => match self.first_rst_orig {
                Some(true) => "RSTO",
                Some(false) => "RSTR",
                None => match (o.fins > 0, r.fins > 0) {
                    (true, true) => "SF",
                    (true, false) => "S2",
                    (false, true) => "S3",
                    (false, false) => "S1",
                },
            },
            (true, false) => {
                if r.rsts > 0 {
                    "REJ"
                } else if o.rsts > 0 {
                    "RSTOS0"
                } else if o.fins > 0 {
                    "SH"
                } else {
                    "S0"
                }
            }
            (false, true) => {
                if r.rsts > 0 {
                    "RSTRH"
                } else if r.fins > 0 {
                    "SHR"
                } else {
                    "OTH"
                }
            }
            (false, false) => "OTH",
        }
    }

    /// The MSS the receiver of `s` asked for (its SYN's option; else 1460, Ethernet's).
    pub fn mss_towards(&self, s: &Segment) -> u16 {
        let to_orig = s.src != self.orig_ep;
        let side = if to_orig { &self.orig } else { &self.resp };
        side.mss.unwrap_or(1460)
    }

    /// Whether the flow has ended (both FINs, or a RST).
    pub fn closed(&self) -> bool {
        self.orig.rsts + self.resp.rsts > 0 || (self.orig.fins > 0 && self.resp.fins > 0)
    }
}

/// A flow's key: the two endpoints in a fixed order, and the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub proto: u8,
    pub a: Endpoint,
    pub b: Endpoint,
}

impl Key {
    pub fn of(s: &Segment) -> Self {
        let (a, b) = if s.src <= s.dst {
            (s.src, s.dst)
        } else {
            (s.dst, s.src)
        };
        Self {
            proto: s.proto,
            a,
            b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "198.18.0.1";
    const S: &str = "198.18.0.2";

    /// A crafted segment: `from_client`, at `ms`, flags, (seq, ack), payload, window, ts.
    fn seg(
        from_client: bool,
        ms: f64,
        flags: u8,
        (seq, ack): (u32, u32),
        payload: u32,
        window: u16,
        ts: Option<(u32, u32)>,
    ) -> Segment {
        let c = Endpoint {
            addr: C.parse().unwrap(),
            port: 40000,
        };
        let s = Endpoint {
            addr: S.parse().unwrap(),
            port: 80,
        };
        let (src, dst) = if from_client { (c, s) } else { (s, c) };
        Segment {
            t_ns: (ms * 1e6) as u64,
            wire_len: 66 + payload,
            proto: 6,
            src,
            dst,
            tcp: Some(Tcp {
                seq,
                ack,
                flags,
                window,
                payload,
                ts,
                mss: None,
                hdr_len: 20 + if ts.is_some() { 12 } else { 0 },
            }),
        }
    }

    use flag::*;

    fn run(segs: &[Segment]) -> Flow {
        let mut f = Flow::new(&segs[0]);
        for s in segs {
            f.add(s);
        }
        f
    }

    /// The handshake, 40 ms away: client 1000, server 5000.
    fn handshake() -> Vec<Segment> {
        vec![
            seg(true, 0.0, SYN, (1000, 0), 0, 64240, Some((100, 0))),
            seg(
                false,
                40.0,
                SYN | ACK,
                (5000, 1001),
                0,
                65160,
                Some((900, 100)),
            ),
            seg(true, 40.1, ACK, (1001, 5001), 0, 502, Some((140, 900))),
        ]
    }

    #[test]
    fn a_clean_transfer_is_sf_with_rtts_and_history() {
        let mut v = handshake();
        v.extend([
            seg(
                true,
                41.0,
                ACK | PSH,
                (1001, 5001),
                100,
                502,
                Some((141, 900)),
            ),
            seg(false, 81.0, ACK, (5001, 1101), 0, 509, Some((941, 141))),
            seg(
                false,
                82.0,
                ACK | PSH,
                (5001, 1101),
                1000,
                509,
                Some((942, 141)),
            ),
            seg(true, 82.2, ACK, (1101, 6001), 0, 502, Some((182, 942))),
            seg(
                true,
                83.0,
                ACK | FIN,
                (1101, 6001),
                0,
                502,
                Some((183, 942)),
            ),
            seg(
                false,
                123.0,
                ACK | FIN,
                (6001, 1102),
                0,
                509,
                Some((983, 183)),
            ),
            seg(true, 123.1, ACK, (1102, 6002), 0, 502, Some((223, 983))),
        ]);
        let f = run(&v);
        assert_eq!(f.state(), "SF");
        assert_eq!(f.history, "ShADadFf");
        assert_eq!((f.orig.pkts, f.resp.pkts), (6, 4));
        assert_eq!((f.orig.payload, f.resp.payload), (100, 1000));
        assert_eq!(f.orig.bytes, 6 * 66 + 100);
        let hs = f.handshake_ms().unwrap();
        assert!((hs - 40.1).abs() < 1e-9, "{hs}");
        // Client TSvals 100, 141, 183 echoed by the server 40 ms later.
        let r: Vec<f64> = f.orig.rtt_ms.iter().copied().collect();
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(r.iter().all(|x| (x - 40.0).abs() < 1e-6), "{r:?}");
        // Server TSvals echoed by the client at once.
        assert!(f.resp.rtt_ms.iter().all(|x| *x < 1.0));
        assert_eq!(f.orig.retrans + f.resp.retrans + f.orig.ooo + f.resp.ooo, 0);
        assert!(f.closed());
    }

    #[test]
    fn a_closed_port_is_rej_and_no_answer_is_s0() {
        let f = run(&[
            seg(true, 0.0, SYN, (1, 0), 0, 64240, None),
            seg(false, 0.1, RST | ACK, (0, 2), 0, 0, None),
        ]);
        assert_eq!((f.state(), f.history.as_str()), ("REJ", "Sr"));
        assert_eq!((f.orig.rsts, f.resp.rsts), (0, 1));
        // A RST carries window 0 without being a zero window.
        assert_eq!(f.resp.zero_window, 0);
        let f = run(&[
            seg(true, 0.0, SYN, (1, 0), 0, 64240, None),
            seg(true, 1000.0, SYN, (1, 0), 0, 64240, None),
        ]);
        assert_eq!((f.state(), f.history.as_str()), ("S0", "ST"));
        assert_eq!(f.orig.retrans, 1, "a repeated SYN is a retransmission");
        assert_eq!(f.handshake_ms(), None);
    }

    #[test]
    fn a_lost_syn_leaves_its_timeout_out_of_the_handshake_rtt() {
        // The first SYN is lost; the one sent again a second later is answered 40 ms on.
        let mut v = vec![seg(true, 0.0, SYN, (1000, 0), 0, 64240, Some((0, 0)))];
        v.extend(handshake().into_iter().map(|mut s| {
            s.t_ns += 1_000_000_000;
            s
        }));
        let f = run(&v);
        let hs = f.handshake_ms().unwrap();
        assert!((hs - 40.1).abs() < 1e-9, "{hs}");
        assert_eq!((f.state(), f.orig.retrans), ("S1", 1), "{f:?}");
    }

    #[test]
    fn retransmission_out_of_order_and_fast_retransmission() {
        let mut v = handshake();
        v.extend([
            seg(true, 50.0, ACK, (1001, 5001), 1000, 502, None),
            seg(true, 50.1, ACK, (2001, 5001), 1000, 502, None),
            // 1001 again, 300 ms later: a retransmission (RTO).
            seg(true, 350.0, ACK, (1001, 5001), 1000, 502, None),
            // Sent 1 ms after the highest: out of order (within the 40 ms handshake RTT) and
            // not ending where the highest did.
            seg(true, 350.5, ACK, (3001, 5001), 1000, 502, None),
            seg(true, 351.0, ACK, (2501, 5001), 100, 502, None),
        ]);
        let f = run(&v);
        assert_eq!((f.orig.retrans, f.orig.ooo), (1, 1), "{f:?}");
        assert!(f.history.contains('T'), "{}", f.history);
        // Fast retransmission: two duplicate ACKs of 4001, then 4001 resent at once.
        let mut v = handshake();
        v.extend([
            seg(true, 50.0, ACK, (1001, 5001), 1000, 502, None),
            seg(true, 50.1, ACK, (2001, 5001), 1000, 502, None),
            seg(false, 90.0, ACK, (5001, 2001), 0, 509, None),
            seg(false, 90.1, ACK, (5001, 2001), 0, 509, None),
            seg(false, 90.2, ACK, (5001, 2001), 0, 509, None),
            seg(true, 90.3, ACK, (2001, 5001), 1000, 502, None),
        ]);
        let f = run(&v);
        assert_eq!((f.orig.retrans, f.orig.ooo), (1, 0), "{f:?}");
    }

    #[test]
    fn zero_windows_resets_and_keepalives() {
        let mut v = handshake();
        v.extend([
            seg(false, 50.0, ACK, (5001, 1001), 1000, 509, None),
            seg(true, 50.1, ACK, (1001, 6001), 0, 0, None),
            // The server's probe: one byte before the next, no payload (Linux's kind).
            seg(false, 300.0, ACK, (6000, 1001), 0, 509, None),
            seg(true, 300.1, ACK, (1001, 6001), 0, 0, None),
            // A keep-alive with one byte of garbage is not a retransmission.
            seg(false, 600.0, ACK, (6000, 1001), 1, 509, None),
            seg(true, 700.0, RST | ACK, (1001, 6001), 0, 0, None),
        ]);
        let f = run(&v);
        assert_eq!(f.orig.zero_window, 2);
        assert_eq!(f.resp.retrans, 0);
        assert_eq!((f.orig.rsts, f.resp.rsts), (1, 0));
        assert_eq!(f.state(), "RSTO");
        assert_eq!(f.history, "ShAdWaR");
    }

    #[test]
    fn midstream_and_flipped_flows() {
        let f = run(&[
            seg(true, 0.0, ACK, (1, 1), 10, 100, None),
            seg(false, 1.0, ACK, (1, 11), 0, 100, None),
        ]);
        assert_eq!((f.state(), f.history.as_str()), ("OTH", "Da"));
        // First seen: the SYN/ACK; the client is still the originator.
        let f = run(&handshake()[1..]);
        assert_eq!(f.orig_ep.port, 40000);
        assert_eq!(f.state(), "OTH");
        assert!(f.history.starts_with("^h"), "{}", f.history);
        let f = run(&[
            seg(true, 0.0, SYN, (1, 0), 0, 100, None),
            seg(false, 40.0, SYN | ACK, (9, 2), 0, 100, None),
            seg(true, 40.1, ACK, (2, 10), 0, 100, None),
            seg(true, 41.0, ACK | FIN, (2, 10), 0, 100, None),
        ]);
        assert_eq!(f.state(), "S2");
    }

    #[test]
    fn pping_matches_only_the_first_echo_of_each_tsval() {
        let mut v = handshake();
        // Three segments share TSval 150; the server echoes 150 twice: one sample, from the
        // first segment's time; a stale TSecr (120) matches nothing.
        v.extend([
            seg(true, 50.0, ACK, (1001, 5001), 100, 502, Some((150, 900))),
            seg(true, 50.4, ACK, (1101, 5001), 100, 502, Some((150, 900))),
            seg(true, 50.8, ACK, (1201, 5001), 100, 502, Some((150, 900))),
            seg(false, 90.0, ACK, (5001, 1201), 0, 509, Some((950, 150))),
            seg(false, 90.8, ACK, (5001, 1301), 0, 509, Some((951, 150))),
            seg(false, 91.0, ACK, (5001, 1301), 0, 509, Some((952, 120))),
        ]);
        let f = run(&v);
        // Samples: the handshake's (SYN TSval 100 echoed by the SYN/ACK: 40 ms) and 150's.
        let r: Vec<f64> = f.orig.rtt_ms.iter().copied().collect();
        assert_eq!(r, [40.0, 40.0]);
        assert_eq!(f.rtt_median_or_none(), Some(40.0));
    }

    impl Flow {
        fn rtt_median_or_none(&self) -> Option<f64> {
            self.orig.rtt_median()
        }
    }

    #[test]
    fn a_gso_packet_counts_as_the_segments_on_the_wire() {
        // 3000 bytes with timestamps against MSS 1460: 1448 + 1448 + 104, FIN on the last.
        let s = seg(
            true,
            1.0,
            ACK | PSH | FIN,
            (1000, 1),
            3000,
            500,
            Some((5, 6)),
        );
        let v = segments(&s, 1460);
        let got: Vec<_> = v
            .iter()
            .map(|x| {
                let t = x.tcp.unwrap();
                (t.seq, t.payload, t.flags, x.wire_len)
            })
            .collect();
        assert_eq!(
            got,
            [
                (1000, 1448, ACK, 66 + 1448),
                (2448, 1448, ACK, 66 + 1448),
                (3896, 104, ACK | PSH | FIN, 66 + 104)
            ]
        );
        assert_eq!(segments(&s, 9000), [s]);
        // The flow learns the MSS from each side's SYN.
        let mut h = handshake();
        h[1].tcp.as_mut().unwrap().mss = Some(1400);
        let f = run(&h);
        assert_eq!(f.mss_towards(&s), 1400);
        assert_eq!(f.mss_towards(&h[1]), 1460);
    }

    #[test]
    fn frames_parse_with_lengths_from_the_ip_header() {
        use etherparse::PacketBuilder;
        let b = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
            .tcp(40000, 80, 7, 5000)
            .syn()
            .options(&[TcpOptionElement::Timestamp(11, 22)])
            .unwrap();
        let payload = [0u8; 300];
        let mut frame = vec![];
        b.write(&mut frame, &payload).unwrap();
        // Snapshot of the first 80 bytes only; the payload still counts.
        let s = parse(&frame[..80], frame.len() as u32, 5).unwrap();
        let t = s.tcp.unwrap();
        assert_eq!((t.seq, t.flags, t.window, t.payload), (7, SYN, 5000, 300));
        assert_eq!(t.ts, Some((11, 22)));
        assert_eq!(
            (s.src.port, s.dst.port, s.proto, s.wire_len),
            (40000, 80, 6, frame.len() as u32)
        );
        let b = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv6(
                [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .udp(5, 6);
        let mut frame = vec![];
        b.write(&mut frame, &[1, 2, 3]).unwrap();
        let s = parse(&frame, frame.len() as u32, 5).unwrap();
        assert_eq!((s.proto, s.src.port, s.dst.port, s.tcp), (17, 5, 6, None));
        assert_eq!(s.src.to_string(), "[2001:2::1]:5");
        // ARP is not a flow.
        let mut arp = vec![0xff; 12];
        arp.extend([0x08, 0x06]);
        arp.extend([0; 28]);
        assert!(parse(&arp, 42, 0).is_none());
    }
}
