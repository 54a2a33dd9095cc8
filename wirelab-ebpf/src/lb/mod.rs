//! `lb`: an L4 load balancer (tc ingress) with Maglev hashing, connection tracking and
//! direct server return.
//!
//! Three entry points share one decision ([`try_balance`]): `lb` (tc ingress, the default,
//! which works with any peer), `lb_xdp` (XDP, `XDP_TX`) and `lb_which` (the decision with its
//! effects off, run by `lb which` through BPF_PROG_TEST_RUN, never attached). Packet path: parse (the shared defensive parser) → not IP: pass (`NON_IP`) → not a
//! VIP:port/proto: pass (`NON_VIP`) → a later fragment to a VIP address: where its first
//! fragment went (`LB_VIP_FRAGS`, [`vip_fragment`]), else drop (`DROP_FRAGMENT`) →
//! VIP hit (a first fragment too, which leaves its decision for the later ones): a tracked flow keeps its backend (unless the backend is down); a TCP SYN (without
//! ACK) or a miss hashes afresh through the service's Maglev table in the generation in force
//! and enters the flow in the LRU table → DSR: destination MAC = the backend's, source MAC =
//! the interface's, and back out of the same interface (tc: `bpf_redirect`, the normal
//! transmit path, so a plain veth peer receives it; XDP: `XDP_TX`).
//!
//! NAT services (`mode::NAT`, tc only): the destination address becomes the backend's and the
//! packet goes on to the kernel's routing (`TC_ACT_OK`); a new flow also enters its reply
//! 5-tuple in `LB_NAT`, so the backend's replies (routed back through the balancer, on any
//! interface the program watches) get the VIP back as their source. With SNAT
//! (`ServiceMeta::snat`) the source becomes the balancer's SNAT address and a port free
//! towards that backend ([`nat_enter`]: the client's own, or an alternative), kept in the
//! flow's entry; the reply is entered under that tuple and gets the VIP as its source and the
//! client's address and port as its destination. Checksums are updated incrementally: in tc
//! with the kernel's helpers (IPv4 header; TCP/UDP through the pseudo-header), in XDP by RFC
//! 1624 ([`nat_xdp`]).
//!
//! FIN and RST are forwarded along the tracked flow and marked in its entry (`tcp_flags`);
//! the entry is left to age out of the LRU table (a new SYN on the same tuple hashes afresh
//! anyway). Frames the parser cannot see through are passed to the stack (`MALFORMED`),
//! which judges them as it would without the balancer.
use core::num::NonZeroU32;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_F_MARK_MANGLED_0,
        BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use wirelab_common::csum;
use wirelab_common::lb::{
    backend_flag, event, flow_hash, mode, snat_index, snat_pick, snat_port_try, snat_port_with,
    vip_bloom_bit, which, xdp_out, Backend, FlowKey, FlowValue, FragKey, LbConf, LbCounter,
    NatValue, RateState, ServiceMeta, VipKey, FAMILY_IPV4, FAMILY_IPV6, MAX_BACKENDS, MAX_FLOWS,
    MAX_FRAGS, MAX_SERVICES, MAX_TABLE_SIZE, SNAT_POOL_MAX, SNAT_TRIES, TABLE_ENTRIES,
    VIP_BLOOM_WORDS,
};
use wirelab_common::tap::{self as tapdef, lb_what, Decision};

use crate::{
    counter,
    error::{Error, Result},
    parse::{
        self, Frame, ETH_DEST_OFF, ETH_P_IP, ETH_P_IPV6, ETH_SOURCE_OFF, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    },
    sys, tap,
};

mod icmp;

#[map]
static LB_CONF: Array<LbConf> = Array::with_max_entries(1, 0);
#[map]
static LB_GEN: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static LB_VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(2 * MAX_SERVICES, 0);
/// Per generation, a bit for each service's key ([`vip_bloom_bit`]).
#[map]
static LB_VIP_BLOOM: Array<u64> = Array::with_max_entries(2 * VIP_BLOOM_WORDS, 0);
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
/// Fragmented NAT replies by their identification: the first fragment (which holds the ports,
/// so it finds its flow in `LB_NAT`) leaves its flow's entry here for the later ones.
#[map]
static LB_FRAGS: LruHashMap<FragKey, NatValue> = LruHashMap::with_max_entries(MAX_FRAGS, 0);
/// Fragmented datagrams to a VIP by their identification: the first fragment (which holds the
/// ports, so it is balanced as any packet) leaves its flow's decision here for the later ones.
#[map]
static LB_VIP_FRAGS: LruHashMap<FragKey, FlowValue> = LruHashMap::with_max_entries(MAX_FRAGS, 0);
/// Per-CPU state of the new-flow limit.
#[map]
static LB_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);
/// The capture tap (`wirelab_common::tap`): `capture_xdp_tap` of a running capture, and the
/// flag that says it is there (the ifindex captured).
#[map]
static LB_TAP: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static LB_TAP_ON: Array<u32> = Array::with_max_entries(1, 0);
/// The capture tap of the tc path: `capture_tc_tap` (a program array holds one program type,
/// so the tc path has its own; the flag `LB_TAP_ON` is shared).
#[map]
static LB_TC_TAP: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// `lb_icmp` (tc) and `lb_icmp_xdp`, for ICMP errors: entered by userspace at load.
#[map]
static LB_ICMP_TC: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static LB_ICMP_XDP: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// This CPU's NAT rewrite on its way from the decision to [`nat_tc`] or [`nat_xdp`]. Going
/// through a map value is deliberate: built in place, it costs no stack (which the decision
/// fills); read back by the entry point, it is unknown to the verifier, so it checks the
/// rewrite and what follows once, instead of once for every path through the decision (that
/// had taken `lb_xdp` to 0.78-0.99 of its limit of a million instructions).
#[map]
static LB_NAT_REWRITE: PerCpuArray<Rewrite> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's route lookup for a NAT reply that may be too big for the way to its client
/// ([`reply_too_big`]): built here rather than on the stack.
#[map]
static LB_REPLY_FIB: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

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
    /// NAT: apply this CPU's [`LB_NAT_REWRITE`] (addresses, ports and the checksums), then on
    /// to the kernel's routing.
    Nat,
    /// An ICMP error: on to `lb_icmp` / `lb_icmp_xdp` ([`icmp`]), by a tail call (passed
    /// when that is not possible).
    Icmp,
    /// `lb_icmp`: an ICMP error about a NAT flow; apply this CPU's ICMP patch, then on to the
    /// kernel's routing.
    IcmpNat,
}

/// [`Rewrite::parts`]: which fields of the packet change.
const RW_SRC: u8 = 1;
const RW_DST: u8 = 2;
const RW_SPORT: u8 = 4;
const RW_DPORT: u8 = 8;

/// Fields of an IP packet replaced by NAT: the destination address (a NAT flow to its
/// backend), with SNAT also the source address and port; or, on a backend's reply, the
/// source address (back to the VIP), with SNAT also the destination address and port (back
/// to the client). The old values are read from the packet when the rewrite is applied.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
struct Rewrite {
    l3_off: u16,
    l4_off: u16,
    /// `RW_*` bits.
    parts: u8,
    udp: bool,
    v6: bool,
    /// The TCP/UDP header is in this packet (false: a later fragment, where only the
    /// addresses change and only the IPv4 header checksum covers them).
    l4: bool,
    /// A reply (no SNAT) longer than `LbConf::reply_check_len`: checked against the route to
    /// its client before it is translated ([`reply_too_big`]).
    check: bool,
    /// The IP packet's length by its header.
    ip_len: u16,
    /// New ports, network order.
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    /// The flow's SNAT pool index on its way to `src` ([`pool_addr`]).
    pool: u32,
}

impl Rewrite {
    /// This CPU's [`LB_NAT_REWRITE`], set for packet `p` with nothing to change yet.
    #[inline(always)]
    fn slot(p: &parse::Parsed) -> Result<&'static mut Rewrite> {
        // Headers deeper than `OFF_MASK` (a chain of long IPv6 extension headers) cannot be
        // rewritten: dropped as an error rather than written at a masked offset.
        if p.l4_off > OFF_MASK {
            return Err(Error::Invalid);
        }
        let r = LB_NAT_REWRITE.get_ptr_mut(0).ok_or(Error::Map)?;
        // SAFETY: this CPU's element of a per-CPU array, aligned, valid for the whole run of
        // the program and not shared with other CPUs; the decision fills it, then the entry
        // point reads it, never both at once.
        let r = unsafe { &mut *r };
        r.l3_off = p.l3_off as u16;
        r.l4_off = p.l4_off as u16;
        r.parts = 0;
        r.udp = p.ip_proto == IPPROTO_UDP;
        r.v6 = is_v6(p);
        r.l4 = p.has_l4;
        r.check = false;
        r.ip_len = p.l3_end.saturating_sub(p.l3_off) as u16;
        Ok(r)
    }

    /// Offsets (bounded for the verifier: headers end far below 1 KiB, the parser's limits).
    #[inline(always)]
    fn l3(&self) -> usize {
        self.l3_off as usize & OFF_MASK
    }
    #[inline(always)]
    fn l4(&self) -> usize {
        self.l4_off as usize & OFF_MASK
    }
    #[inline(always)]
    fn src_off(&self) -> usize {
        self.l3() + if self.v6 { 8 } else { 12 }
    }
    #[inline(always)]
    fn dst_off(&self) -> usize {
        self.l3() + if self.v6 { 24 } else { 16 }
    }
    /// The IPv4 header checksum (IPv6 has none).
    #[inline(always)]
    fn ip_csum_off(&self) -> usize {
        self.l3() + 10
    }
    /// The TCP/UDP checksum (it covers the addresses through the pseudo-header).
    #[inline(always)]
    fn l4_csum_off(&self) -> usize {
        self.l4() + if self.udp { 6 } else { 16 }
    }
    #[inline(always)]
    fn words(&self) -> usize {
        if self.v6 {
            4
        } else {
            1
        }
    }
}

#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u64 {
    let i = i & 3;
    u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]) as u64
}

/// Apply `r` with the kernel's checksum helpers, which also keep the skb's checksum state
/// right (CHECKSUM_PARTIAL from a local sender, CHECKSUM_COMPLETE from a NIC): the IPv4 header
/// checksum, and the TCP/UDP checksum (addresses through the pseudo-header), updated
/// incrementally 32 bits at a time (one word for IPv4, four for IPv6) and 16 for a port; a
/// UDP checksum of 0 (none, IPv4) stays 0.
#[inline(always)]
fn nat_tc(ctx: &TcContext, r: &Rewrite) -> core::result::Result<(), i64> {
    if r.parts & RW_SRC != 0 {
        addr_tc(ctx, r, r.src_off(), &r.src)?;
    }
    if r.parts & RW_DST != 0 {
        addr_tc(ctx, r, r.dst_off(), &r.dst)?;
    }
    if r.parts & RW_SPORT != 0 {
        port_tc(ctx, r, r.l4(), r.sport)?;
    }
    if r.parts & RW_DPORT != 0 {
        port_tc(ctx, r, r.l4() + 2, r.dport)?;
    }
    Ok(())
}

#[inline(always)]
fn mangled_0(r: &Rewrite) -> u64 {
    if r.udp {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    }
}

/// One address of `r` (at `off`) becomes `new`, checksums first.
#[inline(always)]
fn addr_tc(
    ctx: &TcContext,
    r: &Rewrite,
    off: usize,
    new: &[u8; 16],
) -> core::result::Result<(), i64> {
    let l4 = BPF_F_PSEUDO_HDR as u64 | 4 | mangled_0(r);
    for i in 0..4 {
        if i >= r.words() {
            break;
        }
        let from = u32::from_ne_bytes(ctx.load::<[u8; 4]>(off + 4 * i)?) as u64;
        let to = word(new, i);
        if !r.v6 {
            ctx.l3_csum_replace(r.ip_csum_off(), from, to, 4)?;
        }
        if r.l4 {
            ctx.l4_csum_replace(r.l4_csum_off(), from, to, l4)?;
        }
    }
    if r.v6 {
        ctx.store(off, new, 0)
    } else {
        ctx.store(off, &quad(new, 0), 0)
    }
}

/// A port of `r` (at `off`) becomes `new`: only the TCP/UDP checksum covers it.
#[inline(always)]
fn port_tc(
    ctx: &TcContext,
    r: &Rewrite,
    off: usize,
    new: [u8; 2],
) -> core::result::Result<(), i64> {
    let from = u16::from_ne_bytes(ctx.load::<[u8; 2]>(off)?) as u64;
    let to = u16::from_ne_bytes(new) as u64;
    ctx.l4_csum_replace(r.l4_csum_off(), from, to, 2 | mangled_0(r))?;
    ctx.store(off, &new, 0)
}

/// The tc path: `bpf_redirect` to the interface's own egress goes through the normal
/// transmit path, so a plain veth peer receives it.
#[classifier]
// Inlined into the entry point the macro wraps it in: left to itself, the compiler made it a
// BPF-to-BPF call, a call and a second prologue on every packet.
#[inline(always)]
pub fn lb(mut ctx: TcContext) -> i32 {
    // The parser needs the whole IP packet in the linear area: pull the rest in when the skb
    // is not linear (large segments); if that fails, the parse says `Truncated`.
    let skb_len = ctx.len();
    if (Frame::tc(&ctx).len() as u32) < skb_len {
        let _ = ctx.pull_data(skb_len);
    }
    let mut pick = Pick::NONE;
    let verdict = match balance(&Frame::tc(&ctx), skb_len as u64, &mut pick) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Forward => sys::redirect(sys::skb_ifindex(&ctx)),
        // A reply the link to its client cannot carry: untranslated, the kernel's error about
        // it goes to the backend.
        Verdict::Nat
            if reply_too_big(&Frame::tc(&ctx), sys::skb_ifindex(&ctx), |fib| {
                sys::fib_lookup_tc(&ctx, fib)
            }) =>
        {
            counter::bump(&LB_EVENTS, event::NAT_TOO_BIG);
            TC_ACT_UNSPEC
        }
        // Translated: the kernel routes it (to the backend, or back to the client).
        Verdict::Nat => match LB_NAT_REWRITE.get(0).map(|r| nat_tc(&ctx, r)) {
            Some(Ok(())) => TC_ACT_OK,
            _ => {
                counter::bump(&LB_EVENTS, event::DROP_ERROR);
                pick.dropped(event::DROP_ERROR);
                TC_ACT_SHOT
            }
        },
        Verdict::Icmp | Verdict::IcmpNat => {
            // SAFETY: `ctx` is this tc program's context and the array holds tc programs
            // only; on success the call does not return. On failure nothing changed.
            unsafe {
                LB_ICMP_TC.tail_call(&ctx, 0);
            }
            TC_ACT_UNSPEC
        }
    };
    tap_tc(&mut ctx, &pick, verdict)
}

/// The decision in `pick` and the tc verdict to the capture tap (when one is on here);
/// returns the verdict.
#[inline(always)]
fn tap_tc(ctx: &mut TcContext, pick: &Pick, verdict: i32) -> i32 {
    let d = Decision {
        magic: tapdef::MAGIC_TC,
        tool: tapdef::tool::LB,
        what: pick.what,
        action: verdict as u8,
        id: pick.id,
    };
    tap::tc(ctx, &LB_TAP_ON, &LB_TC_TAP, d, verdict)
}

/// The XDP action sending a DSR frame back out: `XDP_TX`, or on a veth a redirect to itself.
#[inline(always)]
fn xdp_forward(ctx: &XdpContext) -> u32 {
    match LB_CONF.get(0) {
        Some(c) if c.xdp_out == xdp_out::REDIRECT => sys::redirect(sys::xdp_ifindex(ctx)) as u32,
        _ => xdp_action::XDP_TX,
    }
}

/// The decision in `pick` and the XDP action to the capture tap (when one is on here);
/// returns the action.
#[inline(always)]
fn tap_xdp(ctx: &XdpContext, pick: &Pick, action: u32) -> u32 {
    // Copied, never compared: the verifier need not tell the paths apart by them.
    let d = Decision {
        magic: tapdef::MAGIC,
        tool: tapdef::tool::LB,
        what: pick.what,
        action: action as u8,
        id: pick.id,
    };
    tap::xdp(ctx, &LB_TAP_ON, &LB_TAP, d)
}

/// The XDP path: DSR frames bounced with `XDP_TX` (into a veth, the peer receives them only
/// if it runs NAPI: an XDP program or GRO on the peer, see docs/lb.md); NAT packets
/// translated here and passed to the kernel's routing.
#[xdp]
// Inlined, as `lb`.
#[inline(always)]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let f = Frame::xdp(&ctx);
    let mut pick = Pick::NONE;
    let action = match balance(&f, f.len() as u64, &mut pick) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Forward => xdp_forward(&ctx),
        Verdict::Nat
            if reply_too_big(&f, sys::xdp_ifindex(&ctx), |fib| {
                sys::fib_lookup_xdp(&ctx, fib)
            }) =>
        {
            counter::bump(&LB_EVENTS, event::NAT_TOO_BIG);
            xdp_action::XDP_PASS
        }
        Verdict::Nat => match LB_NAT_REWRITE
            .get(0)
            .ok_or(Error::Map)
            .and_then(|r| nat_xdp(&f, r))
        {
            Ok(()) => xdp_action::XDP_PASS,
            Err(_) => {
                counter::bump(&LB_EVENTS, event::DROP_ERROR);
                pick.dropped(event::DROP_ERROR);
                xdp_action::XDP_DROP
            }
        },
        Verdict::Icmp | Verdict::IcmpNat => {
            // SAFETY: as in `lb`, for an XDP context and an array of XDP programs.
            unsafe {
                LB_ICMP_XDP.tail_call(&ctx, 0);
            }
            xdp_action::XDP_PASS
        }
    };
    tap_xdp(&ctx, &pick, action)
}

/// Address families of `bpf_fib_lookup::family`.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Word `i` (0-3) of a 16-byte address, in memory order.
#[inline(always)]
fn word32(a: &[u8; 16], i: usize) -> u32 {
    let i = i & 3;
    u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
}

/// Whether the NAT reply this CPU's rewrite describes (marked `check`) is too big for the
/// route to its client: IPv4 with DF, or IPv6 (routers do not fragment it), longer than the
/// MTU there (`lookup`: `bpf_fib_lookup` from the interface it came in on, `ifindex`). A
/// reply whose route cannot be looked up is not held back.
#[inline(always)]
fn reply_too_big(f: &Frame, ifindex: u32, lookup: impl FnOnce(&mut bpf_fib_lookup) -> i64) -> bool {
    let Some(r) = LB_NAT_REWRITE.get(0) else {
        return false;
    };
    if !r.check {
        return false;
    }
    if !r.v6 && f.be16_at(r.l3() + parse::IPV4_FRAG_OFF).unwrap_or(0) & parse::IP_DF == 0 {
        // The kernel fragments it on the way: nothing to tell the backend.
        return false;
    }
    let Some(fib) = LB_REPLY_FIB.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's element of a per-CPU array, aligned, valid for the whole run of the
    // program and used by this function only.
    let fib = unsafe { &mut *fib };
    // SAFETY: `bpf_fib_lookup` is plain data (integers and arrays of them): all zeroes is a
    // valid value.
    *fib = unsafe { core::mem::zeroed() };
    fib.ifindex = ifindex;
    fib.__bindgen_anon_1.tot_len = r.ip_len;
    if r.v6 {
        let (Ok(s), Ok(d)) = (f.raw128_at(r.src_off()), f.raw128_at(r.dst_off())) else {
            return false;
        };
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src =
            [word32(&s, 0), word32(&s, 1), word32(&s, 2), word32(&s, 3)];
        fib.__bindgen_anon_4.ipv6_dst =
            [word32(&d, 0), word32(&d, 1), word32(&d, 2), word32(&d, 3)];
    } else {
        let (Ok(s), Ok(d)) = (f.raw32_at(r.src_off()), f.raw32_at(r.dst_off())) else {
            return false;
        };
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(s);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(d);
    }
    lookup(fib) == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64
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
        Ok(Verdict::Forward | Verdict::Nat) => pick.how | (pick.backend & which::BACKEND_MASK),
        Ok(Verdict::Drop) => which::DROPPED,
        Ok(Verdict::Pass | Verdict::Icmp | Verdict::IcmpNat) => which::NOT_SERVICE,
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

/// Offsets in a [`Rewrite`] are bounded for the verifier once read back from
/// [`LB_NAT_REWRITE`]: the mask is exact, since a packet whose L4 header starts beyond it is
/// not rewritten (`Rewrite::slot`) nor handed to `lb_icmp` (`icmp::hand_over`).
const OFF_MASK: usize = 0x3ff;

/// Apply `r` in XDP, where there is no skb checksum state: the IPv4 header checksum and the
/// TCP/UDP checksum (addresses through the pseudo-header) are updated incrementally (RFC
/// 1624) over the changed words only, taking the frame's checksums as complete, as a NIC
/// delivers them (a veth sender with TX checksum offload on hands over unfinished ones:
/// docs/lb.md). The new checksums are computed from the old fields first, then everything is
/// written.
#[inline(always)]
fn nat_xdp(f: &Frame, r: &Rewrite) -> Result<()> {
    // Checksums are kept as values, never as packet pointers across branches: 5.10 and 6.1
    // lose a pointer held in an `Option` across branches (a spilled pointer whose `Some` they
    // no longer connect to its flag).
    let mut l4c = if r.l4 { f.be16_at(r.l4_csum_off())? } else { 0 };
    // IPv4 UDP without a checksum stays without one; a later fragment has none.
    let no_l4c = !r.l4 || (r.udp && !r.v6 && l4c == 0);
    let mut ipc = if r.v6 { 0 } else { f.be16_at(r.ip_csum_off())? };
    if r.parts & RW_SRC != 0 {
        sum_addr(f, r, r.src_off(), &r.src, &mut l4c, &mut ipc)?;
    }
    if r.parts & RW_DST != 0 {
        sum_addr(f, r, r.dst_off(), &r.dst, &mut l4c, &mut ipc)?;
    }
    if r.parts & RW_SPORT != 0 {
        l4c = csum::replace2(l4c, f.at::<[u8; 2]>(r.l4())?.get(), r.sport);
    }
    if r.parts & RW_DPORT != 0 {
        l4c = csum::replace2(l4c, f.at::<[u8; 2]>(r.l4() + 2)?.get(), r.dport);
    }
    // A computed UDP checksum of 0 is sent as -0.
    if !no_l4c {
        if r.udp && l4c == 0 {
            l4c = UDP_CSUM_ZERO;
        }
        f.store(r.l4_csum_off(), l4c.to_be_bytes())?;
    }
    if !r.v6 {
        f.store(r.ip_csum_off(), ipc.to_be_bytes())?;
    }
    if r.parts & RW_SRC != 0 {
        store_addr(f, r, r.src_off(), &r.src)?;
    }
    if r.parts & RW_DST != 0 {
        store_addr(f, r, r.dst_off(), &r.dst)?;
    }
    if r.parts & RW_SPORT != 0 {
        f.store(r.l4(), r.sport)?;
    }
    if r.parts & RW_DPORT != 0 {
        f.store(r.l4() + 2, r.dport)?;
    }
    Ok(())
}

/// The checksums `l4c` and (IPv4) `ipc` once the address at `off` becomes `new`.
#[inline(always)]
fn sum_addr(
    f: &Frame,
    r: &Rewrite,
    off: usize,
    new: &[u8; 16],
    l4c: &mut u16,
    ipc: &mut u16,
) -> Result<()> {
    for i in 0..4 {
        if i >= r.words() {
            break;
        }
        let (old, new) = (f.raw32_at(off + 4 * i)?, quad(new, i));
        *l4c = csum::replace4(*l4c, old, new);
        *ipc = csum::replace4(*ipc, old, new);
    }
    Ok(())
}

#[inline(always)]
fn store_addr(f: &Frame, r: &Rewrite, off: usize, new: &[u8; 16]) -> Result<()> {
    if r.v6 {
        f.store(off, *new)
    } else {
        f.store(off, quad(new, 0))
    }
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

/// May `vip` be a service's key in generation `gen`? (Its bit in `LB_VIP_BLOOM`; a clear
/// bit is a sure no.)
#[inline(always)]
fn vip_maybe(gen: u32, vip: &VipKey) -> bool {
    let bit = vip_bloom_bit(vip);
    LB_VIP_BLOOM
        .get(gen * VIP_BLOOM_WORDS + bit / 64)
        .is_some_and(|w| (*w >> (bit % 64)) & 1 != 0)
}

/// Is service `svc` in generation `gen` the one with key `vip`? (A tracked flow's entry names
/// its service by index: a reload may since have removed it, or given its index to another.)
#[inline(always)]
fn serves(gen: u32, svc: u32, vip: &VipKey) -> bool {
    let Some(m) = LB_SERVICES.get(gen * MAX_SERVICES + svc % MAX_SERVICES) else {
        return false;
    };
    m.table_size != 0
        && same16(&m.vip.addr, &vip.addr)
        && m.vip.port == vip.port
        && m.vip.proto == vip.proto
        && m.vip.family == vip.family
        && svc < MAX_SERVICES
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

/// A new NAT flow's `LB_NAT` key and value, built here rather than on the stack (which the
/// decision fills).
#[repr(C)]
#[derive(Clone, Copy)]
struct NatEntry {
    key: FlowKey,
    val: NatValue,
    /// A fragment's `LB_FRAGS` or `LB_VIP_FRAGS` key ([`frag_scratch`]).
    frag: FragKey,
    /// A first fragment's decision, for its `LB_VIP_FRAGS` entry.
    decided: FlowValue,
    /// 1 while a first fragment to a VIP is being balanced (its key in `frag`): the decision
    /// enters it in `LB_VIP_FRAGS` when it forwards. Kept here, not in the parse result, so
    /// that the verifier walks the decision once for fragments and whole packets alike (a
    /// flag on the stack had it walk `lb_which` twice). One left set by a first fragment
    /// that was dropped is taken by the next forwarded packet: an entry for a datagram
    /// whose first fragment is gone, so its later fragments cannot be reassembled anyway.
    first_fragment: u32,
    /// An SNAT pool index on its way to an address ([`pool_addr`]).
    pool: u32,
}

/// Address `index` of SNAT pool `addrs`, the index passed through `slot` (this CPU's map
/// memory) first: read back, it is an unknown to the verifier, which checks the pool read
/// once, instead of marking the flow's hash or SNAT port precise (an index into a map value
/// must be) and keeping apart every path that differs in them.
#[inline(always)]
fn pool_addr(dst: &mut [u8; 16], addrs: &[[u8; 16]; SNAT_POOL_MAX], slot: &mut u32, index: usize) {
    *slot = index as u32;
    // SAFETY: `slot` is a valid, aligned `u32` (a field of this CPU's scratch element).
    let i = unsafe { core::ptr::read_volatile(slot) } as usize;
    set16(dst, &addrs[i & (SNAT_POOL_MAX - 1)]);
}

#[map]
static LB_NAT_SCRATCH: PerCpuArray<NatEntry> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch `LB_NAT` entry filled for flow `k` to backend `id` of service `svc`:
/// the reply 5-tuple as the backend sends it (backend:port -> client:port, or with SNAT ->
/// the pool's SNAT address `pool`, its port left for the caller) and what the reply gets
/// back.
// The keys and values are passed by reference on purpose: by value they would be copied to
// the stack, which the decision fills.
#[inline(always)]
fn nat_entry(
    k: &FlowKey,
    be: &Backend,
    meta: &ServiceMeta,
    svc: u32,
    id: u32,
    pool: usize,
) -> core::result::Result<&'static mut NatEntry, u32> {
    let e = LB_NAT_SCRATCH.get_ptr_mut(0).ok_or(event::DROP_ERROR)?;
    // SAFETY: `e` is this CPU's element of a per-CPU array, aligned, valid for the whole run
    // of the program and not shared with other CPUs; `nat_enter`, `nat_keep` and
    // `nat_fragment` use it, one at a time (a packet takes one of their paths).
    let e = unsafe { &mut *e };
    let snat = meta.snat != 0;
    // Field by field: a whole struct would be built on the stack first.
    set16(&mut e.key.saddr, &be.addr);
    if snat {
        pool_addr(&mut e.key.daddr, &meta.snat_addrs, &mut e.pool, pool);
    } else {
        set16(&mut e.key.daddr, &k.saddr);
    }
    e.key.sport = be.port;
    e.key.dport = k.sport;
    e.key.proto = k.proto;
    e.key.family = k.family;
    e.key._pad = [0; 2];
    e.val.vip = k.daddr;
    e.val.service = svc;
    e.val.backend = id;
    e.val.client = k.saddr;
    e.val.client_port = k.sport;
    e.val.snat = snat as u16;
    e.val.vport = k.dport;
    e.val._pad = [0; 2];
    Ok(e)
}

/// Does `LB_NAT` value `o` belong to the flow `k` (the same client address and port, to the
/// same VIP)?
#[inline(always)]
fn nat_owned(o: &NatValue, k: &FlowKey) -> bool {
    o.client_port == k.sport && same16(&o.client, &k.saddr) && same16(&o.vip, &k.daddr)
}

/// Enter a new NAT flow's reply 5-tuple, as its backend will send it, in `LB_NAT`. Without
/// SNAT that is backend:port -> client:port (the port the backend listens on), and the
/// answer is 0. With SNAT it is
/// backend:port -> SNAT address:port, the address the flow's hash picks from the service's
/// pool ([`snat_pick`]), and the answer is the port with the address's index
/// ([`snat_port_with`]): the client's own port when no other flow holds it towards this
/// backend from that address, else one of `SNAT_TRIES - 1` alternatives ([`snat_port_try`]);
/// an entry of this same client address, port and VIP is taken over (the client reconnects
/// with its port). `Err`: the drop's reason (`DROP_SNAT_PORT`: every try is held by another
/// flow).
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn nat_enter(
    k: &FlowKey,
    be: &Backend,
    meta: &ServiceMeta,
    svc: u32,
    id: u32,
    hash: u32,
) -> core::result::Result<u32, u32> {
    let pool = snat_pick(hash, meta.snat);
    let e = nat_entry(k, be, meta, svc, id, pool as usize)?;
    if meta.snat == 0 {
        return match LB_NAT.insert(&e.key, &e.val, 0) {
            Ok(()) => Ok(0),
            Err(_) => Err(event::DROP_ERROR),
        };
    }
    for i in 0..SNAT_TRIES {
        e.key.dport = snat_port_try(k.sport, hash, i);
        if LB_NAT.insert(&e.key, &e.val, BPF_NOEXIST as u64).is_ok() {
            return Ok(snat_port_with(e.key.dport, pool));
        }
        if let Some(o) = LB_NAT.get_ptr(&e.key) {
            // SAFETY: a successful lookup's pointer to the element's value, valid for this
            // RCU read-side section; only read here.
            if nat_owned(unsafe { &*o }, k) {
                let _ = LB_NAT.insert(&e.key, &e.val, 0);
                return Ok(snat_port_with(e.key.dport, pool));
            }
        }
    }
    Err(event::DROP_SNAT_PORT)
}

/// A tracked NAT flow's packet: its reply entry in `LB_NAT` is looked up, which also keeps it
/// recent in that LRU table as long as the flow sends (the two tables are evicted
/// independently), and entered again if it was evicted (`NAT_REENTERED`), under the SNAT
/// address and port the flow holds (`snat_port`, [`snat_port_with`]). `Err`: the drop's reason: with SNAT, another flow has
/// been given that port towards this backend since (`DROP_SNAT_PORT`; forwarding this
/// flow's packets under it would mix them into the other flow).
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn nat_keep(
    k: &FlowKey,
    be: &Backend,
    meta: &ServiceMeta,
    svc: u32,
    id: u32,
    snat_port: u32,
) -> core::result::Result<(), u32> {
    let e = nat_entry(k, be, meta, svc, id, snat_index(snat_port))?;
    let snat = meta.snat != 0;
    if snat {
        e.key.dport = snat_port as u16;
    }
    if let Some(o) = LB_NAT.get_ptr(&e.key) {
        // SAFETY: a successful lookup's pointer to the element's value, valid for this RCU
        // read-side section; only read here.
        return if !snat || nat_owned(unsafe { &*o }, k) {
            Ok(())
        } else {
            Err(event::DROP_SNAT_PORT)
        };
    }
    counter::bump(&LB_EVENTS, event::NAT_REENTERED);
    // With SNAT only if the port is still free (another CPU may be entering a flow under it).
    let flags = if snat { BPF_NOEXIST as u64 } else { 0 };
    match LB_NAT.insert(&e.key, &e.val, flags) {
        Ok(()) => Ok(()),
        Err(_) if snat => Err(event::DROP_SNAT_PORT),
        Err(_) => Err(event::DROP_ERROR),
    }
}

/// Two addresses equal, word by word (no `memcmp` in a kernel program).
#[inline(always)]
fn same16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    word(a, 0) == word(b, 0)
        && word(a, 1) == word(b, 1)
        && word(a, 2) == word(b, 2)
        && word(a, 3) == word(b, 3)
}

/// `*dst = *src` for an address copied between two map values, as the BPF target's inline
/// copy: a plain assignment there can become a call to `memmove` (a byte loop), since the
/// compiler cannot tell two map pointers apart.
#[inline(always)]
fn set16(dst: &mut [u8; 16], src: &[u8; 16]) {
    // SAFETY: `dst` is a unique reference and `src` a shared one, so the 16 bytes of each are
    // valid and do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), 16) }
}

/// A NAT flow's reply (`n`, its `LB_NAT` entry) goes back from the VIP and the service
/// port, with SNAT to the client's address and port: this CPU's rewrite set for packet `p`.
/// A later fragment (no L4 header) gets the addresses only, and counts as a fragment.
#[inline(always)]
fn reply_rewrite<const LIVE: bool>(p: &parse::Parsed, n: &NatValue, pick: &mut Pick) -> Result<()> {
    let l4 = p.has_l4;
    ev::<LIVE>(if l4 {
        event::NAT_REPLIES
    } else {
        event::NAT_FRAGMENTS
    });
    pick.what = lb_what::NAT_REPLY;
    pick.id = n.backend;
    let r = Rewrite::slot(p)?;
    r.parts = RW_SRC;
    set16(&mut r.src, &n.vip);
    // Too big for the link to the client, the kernel would send its error to the VIP (which
    // this host does not hold) about the translated reply; untranslated, it goes to the
    // backend, which learns the path's MTU (only without SNAT: with it the reply's
    // destination is this host's own address until translated).
    r.check = LIVE
        && n.snat == 0
        && l4
        && !p.fragment
        && LB_CONF
            .get(0)
            .is_some_and(|c| c.reply_check_len != 0 && r.ip_len as u32 > c.reply_check_len);
    if l4 && n.vport != p.sport {
        // The backend listens on another port than the service's.
        r.parts |= RW_SPORT;
        r.sport = n.vport.to_be_bytes();
    }
    if n.snat != 0 {
        r.parts |= RW_DST;
        set16(&mut r.dst, &n.client);
        if l4 {
            r.parts |= RW_DPORT;
            r.dport = n.client_port.to_be_bytes();
        }
    }
    Ok(())
}

#[inline(always)]
fn is_v6(p: &parse::Parsed) -> bool {
    p.ethertype == ETH_P_IPV6
}

/// This CPU's scratch entry with fragment `p`'s key (addresses, protocol, identification)
/// filled in `frag`: the key of `LB_FRAGS` and `LB_VIP_FRAGS`, built in place (no stack).
#[inline(always)]
fn frag_scratch(p: &parse::Parsed, family: u8) -> Result<&'static mut NatEntry> {
    let e = LB_NAT_SCRATCH.get_ptr_mut(0).ok_or(Error::Map)?;
    // SAFETY: this CPU's element of a per-CPU array, aligned, valid for the whole run of the
    // program and not shared with other CPUs; its users (`nat_entry`'s and these) take it one
    // at a time, each filling what it reads.
    let e = unsafe { &mut *e };
    e.frag.saddr = p.saddr;
    e.frag.daddr = p.daddr;
    e.frag.id = p.frag_id;
    e.frag.proto = p.ip_proto;
    e.frag.family = family;
    e.frag._pad = [0; 2];
    Ok(e)
}

/// A later fragment of a datagram to a VIP: sent where its first fragment went (the decision
/// that one left in `LB_VIP_FRAGS`), addresses only. One whose first has not come (or went
/// nowhere) is dropped (`DROP_FRAGMENT`).
// The keys are passed by reference on purpose: by value they would be copied to the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn vip_fragment<const LIVE: bool>(
    f: &Frame,
    p: &parse::Parsed,
    family: u8,
    len: u64,
    pick: &mut Pick,
) -> Result<Verdict> {
    let e = frag_scratch(p, family)?;
    let Some(v) = LB_VIP_FRAGS.get_ptr(&e.frag) else {
        ev::<LIVE>(event::DROP_FRAGMENT);
        pick.dropped(event::DROP_FRAGMENT);
        return Ok(Verdict::Drop);
    };
    // SAFETY: a successful lookup's pointer to the element's value, valid for this RCU
    // read-side section; only read.
    let v = unsafe { &*v };
    let (svc, id, snat_port) = (v.service, v.backend, v.snat_port);
    if svc >= MAX_SERVICES || id >= MAX_BACKENDS {
        return Err(Error::Map);
    }
    // The map values by reference (no stack: the decision's copies hold it).
    let gen = LB_GEN.get(0).copied().ok_or(Error::Map)? & 1;
    let meta = LB_SERVICES
        .get(gen * MAX_SERVICES + svc)
        .ok_or(Error::Map)?;
    let conf = LB_CONF.get(0).ok_or(Error::Map)?;
    let be = LB_BACKENDS.get(id).ok_or(Error::Map)?;
    if be.flags & backend_flag::UP == 0 {
        return Ok(drop_svc::<LIVE>(pick, svc, event::DROP_NO_BACKEND));
    }
    ev::<LIVE>(event::VIP_FRAGMENTS);
    pick.picked(which::TRACKED, lb_what::TRACKED, id);
    let to = Chosen {
        svc,
        id,
        snat_port,
        new_flow: false,
    };
    forward::<LIVE>(f, p, &to, be, meta, conf, len)
}

/// A fragment of a NAT backend's reply (too large for the path: a big UDP answer). The
/// first fragment holds the ports: found in `LB_NAT`, it is translated as any reply (its
/// TCP/UDP checksum covers the whole datagram, so the incremental update holds) and leaves
/// its flow's entry in `LB_FRAGS` under the datagram's addresses and identification; a later
/// fragment found there gets the same addresses (only the IPv4 header checksum covers them
/// there). A later fragment that comes before its first is not translated. Returns whether
/// the fragment is to be translated (this CPU's rewrite set).
// The keys are passed by reference on purpose: by value they would be copied to the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn nat_fragment(p: &parse::Parsed, family: u8, pick: &mut Pick) -> Result<bool> {
    let e = frag_scratch(p, family)?;
    if p.has_l4 {
        if p.ip_proto != IPPROTO_TCP && p.ip_proto != IPPROTO_UDP {
            return Ok(false);
        }
        e.key.saddr = p.saddr;
        e.key.daddr = p.daddr;
        e.key.sport = p.sport;
        e.key.dport = p.dport;
        e.key.proto = p.ip_proto;
        e.key.family = family;
        e.key._pad = [0; 2];
        let Some(n) = LB_NAT.get_ptr(&e.key) else {
            return Ok(false);
        };
        // SAFETY: a successful lookup's pointer to the element's value, valid for this RCU
        // read-side section; only read.
        let n = unsafe { &*n };
        reply_rewrite::<true>(p, n, pick)?;
        let _ = LB_FRAGS.insert(&e.frag, n, 0);
        return Ok(true);
    }
    let Some(n) = LB_FRAGS.get_ptr(&e.frag) else {
        return Ok(false);
    };
    // SAFETY: as above.
    reply_rewrite::<true>(p, unsafe { &*n }, pick)?;
    Ok(true)
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
        if sys::hash_get(&LB_VIPS, mark).is_none() {
            if LIVE && nat_fragment(&p, family, pick)? {
                return Ok(Verdict::Nat);
            }
            ev::<LIVE>(event::NON_VIP);
            return Ok(Verdict::Pass);
        }
        if !p.has_l4 {
            return vip_fragment::<LIVE>(f, &p, family, len, pick);
        }
        // The first fragment has the ports: balanced below as any packet, its decision left
        // for the later fragments (`LB_VIP_FRAGS`).
        if LIVE {
            frag_scratch(&p, family)?.first_fragment = 1;
        }
    }
    let l4 = p.has_l4 && (p.ip_proto == IPPROTO_TCP || p.ip_proto == IPPROTO_UDP);
    let vip = &VipKey {
        addr: p.daddr,
        port: p.dport,
        proto: p.ip_proto,
        family,
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
    let flags = if p.ip_proto == IPPROTO_TCP {
        p.tcp_flags
    } else {
        0
    };
    let syn = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
    let gen = LB_GEN.get(0).copied().ok_or(Error::Map)? & 1;
    // The service: none if the key's bit in this generation's filter is clear; a tracked
    // flow's through its entry, if its service still has this key (one hash lookup, not
    // two); else through `LB_VIPS`.
    // The entry's copy, and where it lies (its FIN/RST marks and UDP refreshes are written
    // there in place: a second insert would take a fresh LRU element, a third per flow).
    let mut tracked: Option<(FlowValue, *mut FlowValue)> = None;
    let mut stale = false;
    let mut svc = None;
    if l4 && vip_maybe(gen, vip) {
        if !syn {
            if let Some(e) = LB_FLOWS.get_ptr_mut(key) {
                // SAFETY: a successful lookup's pointer to the element's value, aligned and
                // valid for this RCU read-side section; copied out at once (another CPU may
                // write its flags meanwhile: statistics-grade fields).
                let v = unsafe { core::ptr::read(e) };
                if serves(gen, v.service, vip) {
                    svc = Some(v.service);
                    tracked = Some((v, e));
                } else {
                    stale = true;
                }
            }
        }
        if svc.is_none() {
            svc = sys::hash_get(&LB_VIPS, vip);
        }
    }
    let Some(svc) = svc.filter(|s| *s < MAX_SERVICES) else {
        // A reply of a NAT flow: the source goes back to the VIP.
        if l4 {
            if let Some(n) = LB_NAT.get_ptr(key) {
                // SAFETY: a successful lookup's pointer to the element's value, valid for
                // this RCU read-side section; only read.
                reply_rewrite::<LIVE>(&p, unsafe { &*n }, pick)?;
                return Ok(Verdict::Nat);
            }
        }
        // An ICMP error: whether it is about a balanced flow is for `lb_icmp` to say (a
        // program of its own, reached by a tail call: its stack is not the decision's).
        let icmp_proto = if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
        if p.has_l4
            && p.ip_proto == icmp_proto
            && icmp::is_error(v6, p.icmp_type)
            && (!LIVE || icmp::hand_over(&p, v6, false))
        {
            return Ok(Verdict::Icmp);
        }
        ev::<LIVE>(event::NON_VIP);
        return Ok(Verdict::Pass);
    };
    if p.ip_options {
        ev::<LIVE>(event::IP_OPTIONS);
    }
    // By reference: the service's description (with its SNAT pool) is too large for the
    // stack the decision fills.
    let meta = LB_SERVICES
        .get(gen * MAX_SERVICES + svc)
        .ok_or(Error::Map)?;
    let conf = *LB_CONF.get(0).ok_or(Error::Map)?;

    // A tracked flow keeps its backend while that backend is up (and, UDP, while it is not
    // idle past the service's timeout).
    let mut chosen: Option<(u32, Backend)> = None;
    let mut snat_port: u32 = 0;
    let idle_ns = if udp {
        meta.udp_idle_ms as u64 * 1_000_000
    } else {
        0
    };
    let now = if idle_ns != 0 { sys::now_ns() } else { 0 };
    if let Some((v, e)) = tracked {
        let be = *LB_BACKENDS
            .get(v.backend % MAX_BACKENDS)
            .ok_or(Error::Map)?;
        let idle = now.saturating_sub(v.seen_ns);
        if idle_ns != 0 && idle > idle_ns {
            ev::<LIVE>(event::UDP_EXPIRED);
        } else if v.backend < MAX_BACKENDS && be.flags & backend_flag::UP != 0 {
            if LIVE && idle_ns != 0 && idle > idle_ns / 4 {
                // SAFETY: `e` as above; one aligned word written in place (two CPUs writing
                // it at once both write a time of now).
                unsafe { (*e).seen_ns = now };
            }
            if LIVE && flags & (TCP_FIN | TCP_RST) != 0 && v.tcp_flags & flags as u32 == 0 {
                // SAFETY: `e` as above; one aligned word written in place (a mark another
                // CPU sets at the same instant may be lost: the flow's next FIN or RST sets
                // it again, and the count of active flows is statistics-grade).
                unsafe { (*e).tcp_flags = v.tcp_flags | flags as u32 };
            }
            chosen = Some((v.backend, be));
            snat_port = v.snat_port;
            pick.picked(which::TRACKED, lb_what::TRACKED, v.backend);
        } else {
            ev::<LIVE>(event::REHASHED);
        }
    } else if stale {
        // (A flow entered for another service, whose index a reload has since given to this
        // one, hashes afresh.)
        ev::<LIVE>(event::REHASHED);
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
            let hash = flow_hash(key, meta.hash_seed);
            let slot = hash % m;
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
            // A full table evicts the least recently used flow; a failed insert only means
            // the next packet of the flow hashes again (to the same slot). Over the new-flow
            // limit a DSR flow is not entered (its packets keep hashing to the same slot
            // while the table stays); a NAT flow cannot go without its entry (its replies
            // need it), so it is dropped: the client retransmits its SYN.
            pick.picked(which::HASHED, lb_what::HASHED, id);
            if !LIVE {
                // `lb_which`: the decision is made; nothing is entered or counted.
            } else if flow_allowed(conf.new_flow_limit) {
                if meta.mode == mode::NAT {
                    // The reply direction, as the backend will send it, is entered now.
                    match nat_enter(key, &be, meta, svc, id, hash) {
                        Ok(port) => snat_port = port,
                        Err(reason) => return Ok(drop_svc::<LIVE>(pick, svc, reason)),
                    }
                }
                let v = &FlowValue {
                    backend: id,
                    service: svc,
                    created_ns: sys::now_ns(),
                    tcp_flags: flags as u32,
                    snat_port,
                    seen_ns: now,
                };
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
    if LIVE && meta.mode == mode::NAT && !new_flow {
        if let Err(reason) = nat_keep(key, &be, meta, svc, id, snat_port) {
            return Ok(drop_svc::<LIVE>(pick, svc, reason));
        }
    }
    if LIVE {
        first_fragment_decided(id, svc, snat_port)?;
    }
    let to = Chosen {
        svc,
        id,
        snat_port,
        new_flow,
    };
    forward::<LIVE>(f, &p, &to, &be, meta, &conf, len)
}

/// When a first fragment to a VIP is being forwarded (this CPU's scratch says so), its
/// decision goes into `LB_VIP_FRAGS` for the later fragments.
// The key and value are passed by reference on purpose: by value they would be copied to the
// stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn first_fragment_decided(id: u32, svc: u32, snat_port: u32) -> Result<()> {
    let e = LB_NAT_SCRATCH.get_ptr_mut(0).ok_or(Error::Map)?;
    // SAFETY: as in `frag_scratch`.
    let e = unsafe { &mut *e };
    if e.first_fragment != 0 {
        e.first_fragment = 0;
        e.decided = FlowValue {
            backend: id,
            service: svc,
            created_ns: 0,
            tcp_flags: 0,
            snat_port,
            seen_ns: 0,
        };
        let _ = LB_VIP_FRAGS.insert(&e.frag, &e.decided, 0);
    }
    Ok(())
}

/// Where a VIP packet goes: service `svc`'s backend `id`, with its SNAT port (0: none), and
/// whether it is a new flow (counted).
struct Chosen {
    svc: u32,
    id: u32,
    snat_port: u32,
    new_flow: bool,
}

/// Send VIP packet `p` to its chosen backend `be`: counted per service and backend; DSR: the
/// frame to the backend's MAC; NAT: this CPU's rewrite set (the backend's address and port,
/// with SNAT the source's; a later fragment, which has no ports, the addresses only).
// The values are passed by reference on purpose: by value they would be copied to the stack.
#[inline(always)]
fn forward<const LIVE: bool>(
    f: &Frame,
    p: &parse::Parsed,
    to: &Chosen,
    be: &Backend,
    meta: &ServiceMeta,
    conf: &LbConf,
    len: u64,
) -> Result<Verdict> {
    let nat = meta.mode == mode::NAT;
    if !nat {
        // DSR: the frame goes to the backend's MAC, from ours, out of the same interface.
        f.store(ETH_DEST_OFF, be.mac)?;
        f.store(ETH_SOURCE_OFF, conf.iface_mac)?;
    }
    let new_flow = to.new_flow;
    let bump = |c: &mut LbCounter| {
        c.packets += 1;
        c.bytes += len;
        if new_flow {
            c.new_flows += 1;
        }
    };
    if LIVE {
        counter::update(&LB_SVC_STATS, to.svc, bump);
        counter::update(&LB_BACKEND_STATS, to.id, bump);
    }
    ev::<LIVE>(event::FORWARDED);
    if nat {
        let r = Rewrite::slot(p)?;
        let l4 = p.has_l4;
        r.parts = RW_DST;
        set16(&mut r.dst, &be.addr);
        if l4 && be.port != p.dport {
            r.parts |= RW_DPORT;
            r.dport = be.port.to_be_bytes();
        }
        let snat_port = to.snat_port;
        if meta.snat != 0 && snat_port != 0 {
            r.parts |= RW_SRC;
            pool_addr(
                &mut r.src,
                &meta.snat_addrs,
                &mut r.pool,
                snat_index(snat_port),
            );
            if l4 && snat_port as u16 != p.sport {
                r.parts |= RW_SPORT;
                r.sport = (snat_port as u16).to_be_bytes();
            }
        }
        return Ok(Verdict::Nat);
    }
    Ok(Verdict::Forward)
}
