//! `lb`: an L4 load balancer (tc ingress) with Maglev hashing, connection tracking and
//! direct server return.
//!
//! Three entry points share one decision ([`try_balance`]): `lb` (tc ingress, the default,
//! which works with any peer), `lb_xdp` (XDP, `XDP_TX`) and `lb_which` (the decision with its
//! effects off, run by `lb which` through BPF_PROG_TEST_RUN, never attached). Packet path: parse (the shared defensive parser) → not IP: pass (`NON_IP`) → not a
//! VIP:port/proto: pass (`NON_VIP`) → a fragment to a VIP address: drop (`DROP_FRAGMENT`) →
//! VIP hit: a tracked flow keeps its backend (unless the backend is down); a TCP SYN (without
//! ACK) or a miss hashes afresh through the service's Maglev table in the generation in force
//! and enters the flow in the LRU table → DSR: destination MAC = the backend's, source MAC =
//! the interface's, and back out of the same interface (tc: `bpf_redirect`, the normal
//! transmit path, so a plain veth peer receives it; XDP: `XDP_TX`).
//!
//! NAT services (`mode::NAT`, tc only): the destination address becomes the backend's and the
//! packet goes on to the kernel's routing (`TC_ACT_OK`); a new flow also enters its reply
//! 5-tuple in `LB_NAT`, so the backend's replies (routed back through the balancer, on any
//! interface the program watches) get the VIP back as their source. Checksums are updated
//! incrementally with the kernel's helpers (IPv4 header; TCP/UDP through the pseudo-header).
//! The XDP entry point does not translate: NAT packets there are dropped as `DROP_ERROR`.
//!
//! FIN and RST are forwarded along the tracked flow and marked in its entry (`tcp_flags`);
//! the entry is left to age out of the LRU table (a new SYN on the same tuple hashes afresh
//! anyway). Frames the parser cannot see through are passed to the stack (`MALFORMED`),
//! which judges them as it would without the balancer.
use core::num::NonZeroU32;

use aya_ebpf::{
    bindings::{
        xdp_action, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use wirelab_common::csum;
use wirelab_common::lb::{
    backend_flag, event, flow_hash, mode, which, xdp_out, Backend, FlowKey, FlowValue, LbConf,
    LbCounter, NatValue, RateState, ServiceMeta, VipKey, FAMILY_IPV4, FAMILY_IPV6, MAX_BACKENDS,
    MAX_FLOWS, MAX_SERVICES, MAX_TABLE_SIZE, TABLE_ENTRIES,
};
use wirelab_common::tap::{self as tapdef, lb_what, Decision};

use crate::{
    counter,
    error::{Error, Result},
    parse::{
        self, Frame, ETH_DEST_OFF, ETH_P_IP, ETH_P_IPV6, ETH_SOURCE_OFF, IPPROTO_TCP, IPPROTO_UDP,
    },
    sys, tap,
};

#[map]
static LB_CONF: Array<LbConf> = Array::with_max_entries(1, 0);
#[map]
static LB_GEN: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static LB_VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(2 * MAX_SERVICES, 0);
#[map]
static LB_SERVICES: Array<ServiceMeta> = Array::with_max_entries(2 * MAX_SERVICES, 0);
#[map]
static LB_BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);
#[map]
static LB_TABLE: Array<u32> = Array::with_max_entries(TABLE_ENTRIES, 0);
#[map]
static LB_FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
static LB_SVC_STATS: PerCpuArray<LbCounter> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);
#[map]
static LB_BACKEND_STATS: PerCpuArray<LbCounter> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);
#[map]
static LB_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event::COUNT, 0);
/// NAT flows by their reply 5-tuple (backend → client): the VIP to restore as the source.
#[map]
static LB_NAT: LruHashMap<FlowKey, NatValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
/// Per-CPU state of the new-flow limit.
#[map]
static LB_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);
/// The capture tap (`wirelab_common::tap`): `capture_xdp_tap` of a running capture, and the
/// flag that says it is there (the XDP path only).
#[map]
static LB_TAP: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static LB_TAP_ON: Array<u32> = Array::with_max_entries(1, 0);
/// This CPU's NAT rewrite on its way from the decision to [`nat_xdp`] (the XDP path). Going
/// through a map value is deliberate: read back, the rewrite is unknown to the verifier, so
/// it checks the rewrite and what follows once, instead of once for every path through the
/// decision (that had taken `lb_xdp` to 0.78-0.99 of its limit of a million instructions).
#[map]
static LB_XDP_NAT: PerCpuArray<Rewrite> = PerCpuArray::with_max_entries(1, 0);

/// May one more flow enter the tracking table on this CPU (at most `limit` per second, with
/// a burst of one second's worth)? GCRA: each flow moves the theoretical arrival time on by
/// 1/limit s; a flow is refused while that time is more than a second ahead of now.
///
/// Inlined, never a BPF-to-BPF call: before Linux 6.4 the verifier's precision tracking gives
/// up at a call and marks every scalar precise, which stops its pruning; `lb` then ran past
/// the limit of a million instructions on 5.10 and 6.1.
#[inline(always)]
fn flow_allowed(limit: u32) -> bool {
    if limit == 0 {
        return true;
    }
    let Some(st) = LB_RATE.get_ptr_mut(0) else {
        return true;
    };
    let now = sys::now_ns();
    // SAFETY: the pointer is this CPU's element of a per-CPU array, valid for the whole run
    // of the program and not shared with other CPUs; read and written in place.
    let tat = unsafe { (*st).tat_ns };
    if tat > now + 1_000_000_000 {
        return false;
    }
    let step = 1_000_000_000 / limit as u64;
    // SAFETY: as above.
    unsafe { (*st).tat_ns = if tat > now { tat } else { now } + step };
    true
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// What the balancer decided; each entry point turns it into its own verdict.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// On to the stack (tc: the next program).
    Pass,
    Drop,
    /// MACs rewritten: send back out of the interface it came in on.
    Forward,
    /// NAT: replace one address (and the checksums), then on to the kernel's routing.
    Nat(Rewrite),
}

/// One address replaced in an IP packet: the destination (a NAT flow to its backend) or the
/// source (a backend's reply, back to the VIP).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
struct Rewrite {
    /// Offset of the address in the frame.
    addr_off: usize,
    /// Offset of the IPv4 header checksum; 0 for IPv6 (no header checksum).
    ip_csum_off: usize,
    /// Offset of the TCP/UDP checksum (it covers the address through the pseudo-header).
    l4_csum_off: usize,
    udp: bool,
    v6: bool,
    old: [u8; 16],
    new: [u8; 16],
}

#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u64 {
    let i = i & 3;
    u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]) as u64
}

/// Apply `r` with the kernel's checksum helpers, which also keep the skb's checksum state
/// right (CHECKSUM_PARTIAL from a local sender, CHECKSUM_COMPLETE from a NIC): the IPv4 header
/// checksum, and the TCP/UDP checksum through the pseudo-header, updated incrementally 32
/// bits at a time (one word for IPv4, four for IPv6); a UDP checksum of 0 (none, IPv4) stays
/// 0.
#[inline(always)]
fn nat_tc(ctx: &TcContext, r: &Rewrite) -> core::result::Result<(), i64> {
    let l4 = BPF_F_PSEUDO_HDR as u64
        | 4
        | if r.udp {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
    let words = if r.v6 { 4 } else { 1 };
    for i in 0..4 {
        if i >= words {
            break;
        }
        let (from, to) = (word(&r.old, i), word(&r.new, i));
        if r.ip_csum_off != 0 {
            ctx.l3_csum_replace(r.ip_csum_off, from, to, 4)?;
        }
        ctx.l4_csum_replace(r.l4_csum_off, from, to, l4)?;
    }
    if r.v6 {
        ctx.store(r.addr_off, &r.new, 0)?;
    } else {
        let a: [u8; 4] = [r.new[0], r.new[1], r.new[2], r.new[3]];
        ctx.store(r.addr_off, &a, 0)?;
    }
    Ok(())
}

/// The tc path: `bpf_redirect` to the interface's own egress goes through the normal
/// transmit path, so a plain veth peer receives it.
#[classifier]
pub fn lb(ctx: TcContext) -> i32 {
    // The parser needs the whole IP packet in the linear area: pull the rest in when the skb
    // is not linear (large segments); if that fails, the parse says `Truncated`.
    let skb_len = ctx.len();
    if (Frame::tc(&ctx).len() as u32) < skb_len {
        let _ = ctx.pull_data(skb_len);
    }
    let mut pick = Pick::NONE;
    match balance(&Frame::tc(&ctx), skb_len as u64, &mut pick) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Forward => sys::redirect(sys::skb_ifindex(&ctx)),
        // Translated: the kernel routes it (to the backend, or back to the client).
        Verdict::Nat(r) => match nat_tc(&ctx, &r) {
            Ok(()) => TC_ACT_OK,
            Err(_) => {
                counter::bump(&LB_EVENTS, event::DROP_ERROR);
                TC_ACT_SHOT
            }
        },
    }
}

/// The XDP path: DSR frames bounced with `XDP_TX` (into a veth, the peer receives them only
/// if it runs NAPI: an XDP program or GRO on the peer, see docs/lb.md); NAT packets
/// translated here and passed to the kernel's routing.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let f = Frame::xdp(&ctx);
    let mut pick = Pick::NONE;
    let action = match balance(&f, f.len() as u64, &mut pick) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Forward => match LB_CONF.get(0) {
            Some(c) if c.xdp_out == xdp_out::REDIRECT => {
                sys::redirect(sys::xdp_ifindex(&ctx)) as u32
            }
            _ => xdp_action::XDP_TX,
        },
        Verdict::Nat(r) => match nat_xdp_funnelled(&f, &r) {
            Ok(()) => xdp_action::XDP_PASS,
            Err(_) => {
                counter::bump(&LB_EVENTS, event::DROP_ERROR);
                pick.dropped(event::DROP_ERROR);
                xdp_action::XDP_DROP
            }
        },
    };
    // Copied, never compared: the verifier need not tell the paths apart by them.
    let d = Decision {
        magic: tapdef::MAGIC,
        tool: tapdef::tool::LB,
        what: pick.what,
        action: action as u8,
        id: pick.id,
    };
    tap::xdp(&ctx, &LB_TAP_ON, &LB_TAP, d)
}

/// `lb which`: the running balancer asks its own loaded decision code, through
/// BPF_PROG_TEST_RUN on a crafted frame, which backend that flow would get. The same
/// [`try_balance`] as the attached entry points, with `LIVE = false`: no flow is entered, no
/// counter moves, the frame is not sent anywhere. Returns `which::HOW | backend id`.
#[xdp]
pub fn lb_which(ctx: XdpContext) -> u32 {
    let f = Frame::xdp(&ctx);
    let mut pick = Pick::NONE;
    match try_balance::<false>(&f, 0, &mut pick) {
        Ok(Verdict::Forward | Verdict::Nat(_)) => pick.how | (pick.backend & which::BACKEND_MASK),
        Ok(Verdict::Drop) => which::DROPPED,
        Ok(Verdict::Pass) => which::NOT_SERVICE,
        Err(_) => which::ERROR,
    }
}

/// Four bytes of a 16-byte address: word `i` (0..4).
#[inline(always)]
fn quad(a: &[u8; 16], i: usize) -> [u8; 4] {
    let i = i & 3;
    [a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]
}

/// A UDP checksum of 0 means "none" (IPv4); a computed 0 is sent as one's complement -0.
const UDP_CSUM_ZERO: u16 = 0xffff;

/// [`nat_xdp`] after a round trip of `r` through [`LB_XDP_NAT`].
#[inline(always)]
fn nat_xdp_funnelled(f: &Frame, r: &Rewrite) -> Result<()> {
    let p = LB_XDP_NAT.get_ptr_mut(0).ok_or(Error::Map)?;
    // SAFETY: `p` is this CPU's element of a per-CPU array, aligned, valid for the whole run
    // of the program and not shared with other CPUs.
    unsafe { p.write(*r) };
    // Looked up again (a second helper call): the compiler cannot know it is the same
    // element, so it reads what the map holds instead of reusing `r` (and nothing is copied
    // to the stack, which is full).
    let r = LB_XDP_NAT.get(0).ok_or(Error::Map)?;
    nat_xdp(f, r)
}

/// Offsets read back from [`LB_XDP_NAT`] are bounded for the verifier (headers end far
/// below 1 KiB: the parser's limits).
const OFF_MASK: usize = 0x3ff;

/// Apply `r` in XDP, where there is no skb checksum state: the IPv4 header checksum and the
/// TCP/UDP checksum (through the pseudo-header) are updated incrementally (RFC 1624) over the
/// changed address words only, taking the frame's checksums as complete, as a NIC delivers
/// them (a veth sender with TX checksum offload on hands over unfinished ones: docs/lb.md).
#[inline(always)]
fn nat_xdp(f: &Frame, r: &Rewrite) -> Result<()> {
    let words = if r.v6 { 4 } else { 1 };
    // Each checksum is read, updated and written within one block, its packet pointer never
    // kept past it: 5.10 and 6.1 lose a pointer held in an `Option` across branches (a
    // spilled pointer whose `Some` they no longer connect to its flag).
    let l4 = f.at::<[u8; 2]>(r.l4_csum_off & OFF_MASK)?;
    let mut l4c = u16::from_be_bytes(l4.get());
    // IPv4 UDP without a checksum stays without one.
    if !(r.udp && !r.v6 && l4c == 0) {
        for i in 0..4 {
            if i >= words {
                break;
            }
            l4c = csum::replace4(l4c, quad(&r.old, i), quad(&r.new, i));
        }
        if r.udp && l4c == 0 {
            l4c = UDP_CSUM_ZERO;
        }
        l4.set(l4c.to_be_bytes());
    }
    if r.ip_csum_off != 0 {
        let ip = f.at::<[u8; 2]>(r.ip_csum_off & OFF_MASK)?;
        let mut ipc = u16::from_be_bytes(ip.get());
        for i in 0..4 {
            if i >= words {
                break;
            }
            ipc = csum::replace4(ipc, quad(&r.old, i), quad(&r.new, i));
        }
        ip.set(ipc.to_be_bytes());
    }
    if r.v6 {
        f.store(r.addr_off & OFF_MASK, r.new)?;
    } else {
        f.store(r.addr_off & OFF_MASK, quad(&r.new, 0))?;
    }
    Ok(())
}

#[inline(always)]
fn balance(f: &Frame, len: u64, pick: &mut Pick) -> Verdict {
    // Only a VIP packet that could not be forwarded gets an `Err` (a missing map entry): it
    // is counted and dropped, since the balancer host does not hold the VIP itself.
    try_balance::<true>(f, len, pick).unwrap_or_else(|_| {
        counter::bump(&LB_EVENTS, event::DROP_ERROR);
        pick.dropped(event::DROP_ERROR);
        Verdict::Drop
    })
}

/// Count a drop of service `svc`'s packet by `reason`.
#[inline(always)]
fn drop_svc<const LIVE: bool>(pick: &mut Pick, svc: u32, reason: u32) -> Verdict {
    pick.dropped(reason);
    if LIVE {
        counter::bump(&LB_EVENTS, reason);
        counter::update(&LB_SVC_STATS, svc, |c| c.drops += 1);
    }
    Verdict::Drop
}

/// Count event `e`, on the live path only (`lb_which` asks without effects).
#[inline(always)]
fn ev<const LIVE: bool>(e: u32) {
    if LIVE {
        counter::bump(&LB_EVENTS, e);
    }
}

/// The backend a decision picked and how (`which::TRACKED` or `which::HASHED`): what
/// `lb_which` answers; and what the capture tap shows (`what`, `id`: `lb_what::*` with the
/// backend id, or the drop's reason `event::*`), set where the decision is made so the
/// entry point copies it without comparing.
#[derive(Clone, Copy)]
struct Pick {
    how: u32,
    backend: u32,
    what: u8,
    id: u32,
}

impl Pick {
    const NONE: Pick = Pick {
        how: which::NOT_SERVICE,
        backend: 0,
        what: lb_what::NOT_SERVICE,
        id: 0,
    };

    #[inline(always)]
    fn picked(&mut self, how: u32, what: u8, backend: u32) {
        self.how = how;
        self.backend = backend;
        self.what = what;
        self.id = backend;
    }

    #[inline(always)]
    fn dropped(&mut self, reason: u32) {
        self.what = lb_what::DROPPED;
        self.id = reason;
    }
}

/// The balancer's decision. `LIVE`: the attached entry points, which enter flows and count;
/// `lb_which` runs the same code with `LIVE = false`, which changes no map.
#[inline(always)]
fn try_balance<const LIVE: bool>(f: &Frame, len: u64, pick: &mut Pick) -> Result<Verdict> {
    let Ok(p) = parse::parse(f) else {
        ev::<LIVE>(event::MALFORMED);
        return Ok(Verdict::Pass);
    };
    let family = match p.ethertype {
        ETH_P_IP => FAMILY_IPV4,
        ETH_P_IPV6 => FAMILY_IPV6,
        _ => {
            ev::<LIVE>(event::NON_IP);
            return Ok(Verdict::Pass);
        }
    };
    if p.fragment {
        // Ports are only in the first fragment: look the address up through its marker.
        let mark = VipKey {
            addr: p.daddr,
            port: 0,
            proto: 0,
            family,
        };
        if sys::hash_get(&LB_VIPS, mark).is_some() {
            ev::<LIVE>(event::DROP_FRAGMENT);
            pick.dropped(event::DROP_FRAGMENT);
            return Ok(Verdict::Drop);
        }
        ev::<LIVE>(event::NON_VIP);
        return Ok(Verdict::Pass);
    }
    let l4 = p.has_l4 && (p.ip_proto == IPPROTO_TCP || p.ip_proto == IPPROTO_UDP);
    let vip = VipKey {
        addr: p.daddr,
        port: p.dport,
        proto: p.ip_proto,
        family,
    };
    let svc = if l4 {
        sys::hash_get(&LB_VIPS, vip)
    } else {
        None
    };
    // References all along: by-value copies of the key and values cost stack.
    let key = &FlowKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.ip_proto,
        family,
        _pad: [0; 2],
    };
    let v6 = family == FAMILY_IPV6;
    let udp = p.ip_proto == IPPROTO_UDP;
    let l4_csum_off = p.l4_off + if udp { 6 } else { 16 };
    let Some(svc) = svc.filter(|s| *s < MAX_SERVICES) else {
        // A reply of a NAT flow: the source goes back to the VIP.
        if l4 {
            if let Some(n) = sys::lru_get(&LB_NAT, key) {
                ev::<LIVE>(event::NAT_REPLIES);
                pick.what = lb_what::NAT_REPLY;
                pick.id = n.backend;
                return Ok(Verdict::Nat(Rewrite {
                    addr_off: p.l3_off + if v6 { 8 } else { 12 },
                    ip_csum_off: if v6 { 0 } else { p.l3_off + 10 },
                    l4_csum_off,
                    udp,
                    v6,
                    old: p.saddr,
                    new: n.vip,
                }));
            }
        }
        ev::<LIVE>(event::NON_VIP);
        return Ok(Verdict::Pass);
    };
    if p.ip_options {
        ev::<LIVE>(event::IP_OPTIONS);
    }
    let gen = LB_GEN.get(0).copied().ok_or(Error::Map)? & 1;
    let meta = *LB_SERVICES
        .get(gen * MAX_SERVICES + svc)
        .ok_or(Error::Map)?;
    let conf = *LB_CONF.get(0).ok_or(Error::Map)?;
    let flags = if p.ip_proto == IPPROTO_TCP {
        p.tcp_flags
    } else {
        0
    };
    let syn = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;

    // A tracked flow keeps its backend while that backend is up (and, UDP, while it is not
    // idle past the service's timeout).
    let mut chosen: Option<(u32, Backend)> = None;
    let idle_ns = if udp {
        meta.udp_idle_ms as u64 * 1_000_000
    } else {
        0
    };
    let now = if idle_ns != 0 { sys::now_ns() } else { 0 };
    if !syn {
        if let Some(v) = sys::lru_get(&LB_FLOWS, key) {
            let be = *LB_BACKENDS
                .get(v.backend % MAX_BACKENDS)
                .ok_or(Error::Map)?;
            let idle = now.saturating_sub(v.seen_ns);
            if idle_ns != 0 && idle > idle_ns {
                ev::<LIVE>(event::UDP_EXPIRED);
            } else if v.backend < MAX_BACKENDS && be.flags & backend_flag::UP != 0 {
                if LIVE && idle_ns != 0 && idle > idle_ns / 4 {
                    let nv = &FlowValue { seen_ns: now, ..v };
                    let _ = LB_FLOWS.insert(key, nv, 0);
                }
                if LIVE && flags & (TCP_FIN | TCP_RST) != 0 && v.tcp_flags & flags as u32 == 0 {
                    let nv = &FlowValue {
                        tcp_flags: v.tcp_flags | flags as u32,
                        ..v
                    };
                    let _ = LB_FLOWS.insert(key, nv, 0);
                }
                chosen = Some((v.backend, be));
                pick.picked(which::TRACKED, lb_what::TRACKED, v.backend);
            } else {
                ev::<LIVE>(event::REHASHED);
            }
        }
    }
    let mut new_flow = false;
    let (id, be) = match chosen {
        Some(c) => c,
        None => {
            // A SYN or a miss: hash afresh through the table in force.
            let Some(m) = NonZeroU32::new(meta.table_size) else {
                return Ok(drop_svc::<LIVE>(pick, svc, event::DROP_NO_BACKEND));
            };
            if meta.active == 0 || meta.table_size > MAX_TABLE_SIZE {
                return Ok(drop_svc::<LIVE>(pick, svc, event::DROP_NO_BACKEND));
            }
            let slot = flow_hash(key, meta.hash_seed) % m;
            let id = *LB_TABLE
                .get((gen * MAX_SERVICES + svc) * MAX_TABLE_SIZE + slot)
                .ok_or(Error::Map)?;
            if id >= MAX_BACKENDS {
                return Ok(drop_svc::<LIVE>(pick, svc, event::DROP_NO_BACKEND));
            }
            let be = *LB_BACKENDS.get(id).ok_or(Error::Map)?;
            if be.flags & backend_flag::UP == 0 {
                return Ok(drop_svc::<LIVE>(pick, svc, event::DROP_NO_BACKEND));
            }
            let v = &FlowValue {
                backend: id,
                service: svc,
                created_ns: sys::now_ns(),
                tcp_flags: flags as u32,
                _pad: 0,
                seen_ns: now,
            };
            // A full table evicts the least recently used flow; a failed insert only means
            // the next packet of the flow hashes again (to the same slot). Over the new-flow
            // limit a DSR flow is not entered (its packets keep hashing to the same slot
            // while the table stays); a NAT flow cannot go without its entry (its replies
            // need it), so it is dropped: the client retransmits its SYN.
            pick.picked(which::HASHED, lb_what::HASHED, id);
            if !LIVE {
                // `lb_which`: the decision is made; nothing is entered or counted.
            } else if flow_allowed(conf.new_flow_limit) {
                let _ = LB_FLOWS.insert(key, v, 0);
            } else if meta.mode == mode::NAT {
                return Ok(drop_svc::<LIVE>(pick, svc, event::DROP_FLOW_LIMIT));
            } else {
                ev::<LIVE>(event::UNTRACKED);
            }
            new_flow = true;
            (id, be)
        }
    };
    let nat = meta.mode == mode::NAT;
    if LIVE && nat && new_flow {
        // The reply direction, as the backend will send it, finds the VIP here.
        let rk = &FlowKey {
            saddr: be.addr,
            daddr: p.saddr,
            sport: p.dport,
            dport: p.sport,
            proto: p.ip_proto,
            family,
            _pad: [0; 2],
        };
        let nv = &NatValue {
            vip: p.daddr,
            service: svc,
            backend: id,
        };
        if LB_NAT.insert(rk, nv, 0).is_err() {
            return Ok(drop_svc::<LIVE>(pick, svc, event::DROP_ERROR));
        }
    }
    if !nat {
        // DSR: the frame goes to the backend's MAC, from ours, out of the same interface.
        f.store(ETH_DEST_OFF, be.mac)?;
        f.store(ETH_SOURCE_OFF, conf.iface_mac)?;
    }
    let bytes = len;
    let bump = |c: &mut LbCounter| {
        c.packets += 1;
        c.bytes += bytes;
        if new_flow {
            c.new_flows += 1;
        }
    };
    if LIVE {
        counter::update(&LB_SVC_STATS, svc, bump);
        counter::update(&LB_BACKEND_STATS, id, bump);
    }
    ev::<LIVE>(event::FORWARDED);
    if nat {
        return Ok(Verdict::Nat(Rewrite {
            addr_off: p.l3_off + if v6 { 24 } else { 16 },
            ip_csum_off: if v6 { 0 } else { p.l3_off + 10 },
            l4_csum_off,
            udp,
            v6,
            old: p.daddr,
            new: be.addr,
        }));
    }
    Ok(Verdict::Forward)
}
