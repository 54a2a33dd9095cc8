//! `capture`: copy the frames an interface receives (tc/TCX ingress, `capture_tc_in`, or XDP,
//! `capture_xdp` / `capture_xdp_tap` behind fw, lb or wan, `capture_tc_tap` behind lb's tc
//! program) and sends (tc/TCX egress, `capture_tc`) to
//! userspace, through a per-CPU perf buffer, when the compiled filter matches. The programs
//! always let the packet go on (XDP_PASS, TC_ACT_UNSPEC) or return the deciding program's
//! verdict (behind a tap).
//!
//! The filter (`CAPTURE_FILTER`, `CAPTURE_CONF.nterms` terms) is evaluated on what `parse.rs`
//! learned, so an unmatched frame costs a parse and no copy. A matched frame goes out as one
//! perf sample: an `EventHeader`, then up to `snaplen` bytes the kernel copies from the packet
//! itself (`bpf_perf_event_output` with the length in its flags). A sample the full buffer
//! refuses counts in `stat::LOST`.
use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray, PerfEventArray, ProgramArray},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use wirelab_common::capture::{
    cmp, dir, dir_base, kind, side, stat, words, Atom, CaptureConf, EventHeader, Term, MAX_ATOMS,
    MAX_SNAPLEN, MAX_TERMS, MAX_VLAN_ID_DEPTH, VLAN_ANY,
};
use wirelab_common::tap::{self as tapdef, wan_what, Decision, DECISION_LEN};
use wirelab_common::wan::{Meta, META_MAGIC};

use crate::{
    counter,
    parse::{
        self, is_vlan, Frame, ETH_HLEN, ETH_PROTO_OFF, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6,
        IPPROTO_TCP, IPPROTO_UDP, VLAN_HLEN, VLAN_VID_MASK,
    },
    sys, tap,
};

#[map]
static CAPTURE_CONF: Array<CaptureConf> = Array::with_max_entries(1, 0);
#[map]
static CAPTURE_FILTER: Array<Term> = Array::with_max_entries(MAX_TERMS, 0);
#[map]
static CAPTURE_EVENTS: PerfEventArray<EventHeader> = PerfEventArray::new(0);
#[map]
static CAPTURE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::NUM, 0);
/// This CPU's `Facts` of the frame being filtered. Going through a map value is deliberate:
/// the filter then starts from one verifier state whatever path the parser took (values read
/// from a map are unknown to it), instead of being verified again for each of them.
/// The filter programs, reached by tail call (a program array holds one program type: one
/// array per direction, entry 0).
#[map]
static CAPTURE_XDP_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static CAPTURE_TC_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static CAPTURE_SCRATCH: PerCpuArray<Facts> = PerCpuArray::with_max_entries(1, 0);

/// No deciding program: capture's own hooks.
const UNDECIDED: Decision = Decision {
    magic: 0,
    tool: tapdef::tool::NONE,
    what: 0,
    action: xdp_action::XDP_PASS as u8,
    id: 0,
};

/// Ingress: every frame the interface receives, before the stack sees it.
#[xdp]
pub fn capture_xdp(ctx: XdpContext) -> u32 {
    ingress(&ctx, UNDECIDED)
}

/// Ingress behind a deciding program (fw): reached by its tail call with its `Decision` in
/// the XDP metadata (`wirelab_common::tap`); returns that program's verdict.
#[xdp]
pub fn capture_xdp_tap(ctx: XdpContext) -> u32 {
    let Ok(d) = Frame::xdp_meta(&ctx).at::<Decision>(0).map(|f| f.get()) else {
        // The deciding program always writes the decision before its tail call: unreachable.
        // Its verdict is unknown, so fail closed.
        return xdp_action::XDP_ABORTED;
    };
    if d.magic != tapdef::MAGIC {
        return xdp_action::XDP_ABORTED;
    }
    // The frame goes on without the metadata, as it would without a capture.
    if !sys::xdp_adjust_meta(&ctx, DECISION_LEN as i32) {
        return xdp_action::XDP_ABORTED;
    }
    ingress(&ctx, d)
}

#[inline(always)]
fn ingress(ctx: &XdpContext, d: Decision) -> u32 {
    let f = Frame::xdp(ctx);
    let ifindex = sys::xdp_ingress_ifindex(ctx);
    let at = Stamp {
        ifindex,
        dir: dir::INGRESS,
        ts_ns: arrival(ctx, &d),
    };
    if entry(ctx, &f, f.len() as u32, at, d) {
        // SAFETY: `ctx` is this XDP program's context and CAPTURE_XDP_PROG[0] holds an XDP
        // program (userspace puts `capture_xdp_filter` there); on success the
        // call does not return, on failure nothing changed and the frame passes uncaptured.
        unsafe { CAPTURE_XDP_PROG.tail_call(ctx, 0) };
        counter::bump(&CAPTURE_STATS, dir_base(dir::INGRESS) + stat::NO_FILTER);
    }
    d.action as u32
}

/// The frame's timestamp: now; but behind wan's tap, a frame going to the timing engine
/// carries wan's `Meta` (the metadata left once the tap's `Decision` is taken off), and its
/// arrival time is the frame's timestamp, so a note of the engine dropping it
/// (`capture::drops`, userspace) names the frame exactly, however long the CPU was away
/// between the two programs.
///
/// Read on every path (never a constant on some): 6.1's verifier walked everything after a
/// "0: take the time later" twice, once for the constant and once for a read value
/// (capture_xdp_tap 238,231 instructions without this function, 492,899 with that form).
#[inline(always)]
fn arrival(ctx: &XdpContext, d: &Decision) -> u64 {
    if d.tool == tapdef::tool::WAN && d.what == wan_what::ENGINE {
        if let Ok(m) = Frame::xdp_meta(ctx).at::<Meta>(0).map(|m| m.get()) {
            if m.magic == META_MAGIC {
                return m.arrival_ns;
            }
        }
    }
    sys::now_ns()
}

/// Where and when a frame was seen: its interface, direction and timestamp (taken on entry,
/// [`arrival`]).
#[derive(Clone, Copy)]
struct Stamp {
    ifindex: u32,
    dir: u32,
    ts_ns: u64,
}

/// Ingress, second half (tail call): the filter, then the copy. Returns the verdict the
/// first half was given (`XDP_PASS` from capture's own hook).
#[xdp]
pub fn capture_xdp_filter(ctx: XdpContext) -> u32 {
    let len = Frame::xdp(&ctx).len() as u32;
    let ifindex = sys::xdp_ingress_ifindex(&ctx);
    filter_and_emit(&ctx, len, ifindex).map_or(xdp_action::XDP_ABORTED, |d| d.action as u32)
}

/// Egress: every frame the interface sends. `TC_ACT_UNSPEC` (= `TCX_NEXT`) lets the next
/// program or filter on the hook decide.
#[classifier]
pub fn capture_tc(ctx: TcContext) -> i32 {
    tc_entry(&ctx, dir::EGRESS, UNDECIDED)
}

/// Ingress at tc/TCX: every frame the interface receives, as the stack gets it (after GRO,
/// so one skb can be several wire frames, as tcpdump sees them). An XDP program on a veth
/// stops GRO there; this hook leaves it on.
#[classifier]
pub fn capture_tc_in(ctx: TcContext) -> i32 {
    tc_entry(&ctx, dir::INGRESS, UNDECIDED)
}

/// Ingress at tc behind a deciding program (lb on its tc path): reached by its tail call with
/// its `Decision` in the skb's control block (`wirelab_common::tap`); returns that
/// program's verdict.
#[classifier]
pub fn capture_tc_tap(ctx: TcContext) -> i32 {
    let Some(d) = tap::tc_decision(&ctx) else {
        // The deciding program always writes the decision before its tail call: unreachable.
        // Its verdict is unknown, so fail closed.
        return TC_ACT_SHOT;
    };
    tc_entry(&ctx, dir::INGRESS, d)
}

/// What a tc hook returns: the deciding program's verdict behind a tap (`MAGIC_TC`: the
/// verdict as a byte), else `TC_ACT_UNSPEC` (the next program or filter decides).
#[inline(always)]
fn tc_verdict(d: &Decision) -> i32 {
    if d.magic == tapdef::MAGIC_TC {
        d.action as i8 as i32
    } else {
        TC_ACT_UNSPEC
    }
}

#[inline(always)]
fn tc_entry(ctx: &TcContext, d: u32, decision: Decision) -> i32 {
    let len = ctx.len();
    // Headers are normally linear; pull them in when they are not, so the filter sees them
    // (the copy itself reads paged data too).
    let want = if len < PULL { len } else { PULL };
    if Frame::tc(ctx).len() < want as usize {
        let _ = ctx.pull_data(want);
    }
    let f = Frame::tc(ctx);
    let at = Stamp {
        ifindex: sys::skb_ifindex(ctx),
        dir: d,
        ts_ns: sys::now_ns(),
    };
    if entry(ctx, &f, len, at, decision) {
        // SAFETY: as in `capture_xdp`, with the tc program `capture_tc_filter` at
        // CAPTURE_TC_PROG[0] (it reads the direction and decision from CAPTURE_SCRATCH).
        unsafe { CAPTURE_TC_PROG.tail_call(ctx, 0) };
        counter::bump(&CAPTURE_STATS, dir_base(d) + stat::NO_FILTER);
    }
    tc_verdict(&decision)
}

/// tc, second half (tail call from `capture_tc` or `capture_tc_in`: the direction is in
/// the scratch `Facts`).
#[classifier]
pub fn capture_tc_filter(ctx: TcContext) -> i32 {
    let len = ctx.len();
    match filter_and_emit(&ctx, len, sys::skb_ifindex(&ctx)) {
        Some(d) => tc_verdict(&d),
        // No scratch entry (never): behind a tap the verdict is still in the control block.
        None => tap::tc_decision(&ctx).map_or(TC_ACT_UNSPEC, |d| tc_verdict(&d)),
    }
}

/// Bytes of an skb made linear for the filter when they are not already.
const PULL: u32 = 256;

/// Count the frame, parse it into this CPU's `CAPTURE_SCRATCH`, and copy it out at once when
/// there is no filter. True when the filter program must run (tail call).
///
/// The filter runs in a program of its own, reached by a tail call, so the verifier checks
/// it once, starting from one state, instead of once for every path through the parser.
#[inline(always)]
fn entry<C: EbpfContext>(ctx: &C, f: &Frame, len: u32, at: Stamp, decision: Decision) -> bool {
    let base = dir_base(at.dir);
    counter::bump(&CAPTURE_STATS, base + stat::SEEN);
    let Some(conf) = CAPTURE_CONF.get(0) else {
        return false;
    };
    let snaplen = conf.snaplen;
    let nterms = conf.nterms;
    if nterms == 0 {
        if parse::parse(f).is_err() {
            counter::bump(&CAPTURE_STATS, base + stat::MALFORMED);
        }
        emit(ctx, len, snaplen, at, decision);
        return false;
    }
    let mut facts = facts(f);
    facts.decision = decision;
    facts.dir = at.dir as u8;
    facts.ts_ns = at.ts_ns;
    if !facts.ok {
        counter::bump(&CAPTURE_STATS, base + stat::MALFORMED);
    }
    let Some(slot) = counter::Slot::get(&CAPTURE_SCRATCH, 0) else {
        return false;
    };
    slot.update(|s| *s = facts);
    true
}

/// The decision the first half stored (`None`: no scratch entry, never). The direction is
/// the first half's too (tc ingress and egress share the filter program).
#[inline(always)]
fn filter_and_emit<C: EbpfContext>(ctx: &C, len: u32, ifindex: u32) -> Option<Decision> {
    let scratch = CAPTURE_SCRATCH.get(0)?;
    let decision = scratch.decision;
    let d = if u32::from(scratch.dir) == dir::EGRESS {
        dir::EGRESS
    } else {
        dir::INGRESS
    };
    let at = Stamp {
        ifindex,
        dir: d,
        ts_ns: scratch.ts_ns,
    };
    let conf = CAPTURE_CONF.get(0)?;
    let snaplen = conf.snaplen;
    if filter(conf.nterms) {
        emit(ctx, len, snaplen, at, decision);
    }
    Some(decision)
}

/// Copy the frame out: header, then min(len, snaplen) bytes.
#[inline(always)]
fn emit<C: EbpfContext>(ctx: &C, len: u32, snaplen: u32, at: Stamp, decision: Decision) {
    let base = dir_base(at.dir);
    counter::bump(&CAPTURE_STATS, base + stat::MATCHED);
    let mut cap = if len < snaplen { len } else { snaplen };
    if cap > MAX_SNAPLEN {
        cap = MAX_SNAPLEN;
    }
    let hdr = EventHeader {
        ts_ns: at.ts_ns,
        orig_len: len,
        cap_len: cap,
        ifindex: at.ifindex,
        dir: at.dir,
        decision,
    };
    if !sys::perf_output_with_packet(ctx, &CAPTURE_EVENTS, &hdr, cap) {
        counter::bump(&CAPTURE_STATS, base + stat::LOST);
    }
}

/// What the atoms test, gathered once per frame.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Facts {
    /// The parser accepted the frame; when false every atom's test fails.
    ok: bool,
    vlans: u8,
    ethertype: u16,
    ip_proto: u8,
    has_l4: bool,
    tcp_flags: u8,
    sport: u16,
    dport: u16,
    /// VLAN ID of each of the first `MAX_VLAN_ID_DEPTH` tags, 12 bits each, outermost in
    /// the low bits.
    vids: u64,
    saddr: [u64; 2],
    daddr: [u64; 2],
    /// The deciding program's verdict (ingress behind fw's tap), for the second half.
    decision: Decision,
    /// `dir::INGRESS` or `dir::EGRESS`, for the second half.
    dir: u8,
    /// The frame's timestamp ([`Stamp`]), for the second half.
    ts_ns: u64,
}

#[inline(always)]
fn facts(f: &Frame) -> Facts {
    let mut x = Facts {
        ok: false,
        vlans: 0,
        ethertype: 0,
        ip_proto: 0,
        has_l4: false,
        tcp_flags: 0,
        sport: 0,
        dport: 0,
        vids: 0,
        saddr: [0; 2],
        daddr: [0; 2],
        decision: UNDECIDED,
        dir: 0,
        ts_ns: 0,
    };
    let Ok(p) = parse::parse(f) else {
        return x;
    };
    x.ok = true;
    x.vlans = p.vlans;
    x.ethertype = p.ethertype;
    x.ip_proto = p.ip_proto;
    x.has_l4 = p.has_l4;
    x.tcp_flags = p.tcp_flags;
    x.sport = p.sport;
    x.dport = p.dport;
    x.saddr = words(&p.saddr);
    x.daddr = words(&p.daddr);
    // The parser walked the tags already: read their IDs (the TCI of tag i is at 14 + 4i).
    if let Ok(et) = f.be16_at(ETH_PROTO_OFF) {
        if is_vlan(et) {
            let mut i = 0;
            while i < MAX_VLAN_ID_DEPTH as usize {
                if i >= p.vlans as usize {
                    break;
                }
                if let Ok(tci) = f.be16_at(ETH_HLEN + i * VLAN_HLEN) {
                    x.vids |= u64::from(tci & VLAN_VID_MASK) << (12 * i);
                }
                i += 1;
            }
        }
    }
    x
}

/// True when one of the first `nterms` terms matches the facts in `CAPTURE_SCRATCH`.
#[inline(always)]
fn filter(nterms: u32) -> bool {
    let Some(p) = CAPTURE_SCRATCH.get_ptr(0) else {
        return false;
    };
    // SAFETY: a successful lookup in a per-CPU array points to this CPU's copy of entry 0,
    // aligned for `Facts` and allocated while the program runs; only capture's first halves
    // write it, on this CPU, with a complete `Facts`, right before their tail call to this
    // program (no other program runs in between), and nothing writes it while this shared
    // reference lives (this program does not return to the kernel before it is done).
    let x = unsafe { &*p };
    let mut t = 0;
    while t < MAX_TERMS {
        if t >= nterms {
            break;
        }
        if let Some(term) = CAPTURE_FILTER.get(t) {
            if term_matches(x, term) {
                return true;
            }
        }
        t += 1;
    }
    false
}

#[inline(never)]
fn term_matches(x: &Facts, term: &Term) -> bool {
    let n = term.natoms as usize;
    let mut i = 0;
    while i < MAX_ATOMS {
        if i >= n {
            break;
        }
        let a = &term.atoms[i];
        if atom_test(x, a) == (a.negate != 0) {
            return false;
        }
        i += 1;
    }
    true
}

/// The atom's test, before its negation.
#[inline(always)]
fn atom_test(x: &Facts, a: &Atom) -> bool {
    if !x.ok {
        return false;
    }
    if a.kind == kind::VLAN {
        let d = a.depth;
        if d >= x.vlans {
            return false;
        }
        let d = (d & 7) as u64;
        return a.lo == VLAN_ANY || (x.vids >> (12 * d)) & 0xfff == a.lo as u64;
    }
    // Every other word looks at the headers after exactly `depth` tags.
    if x.vlans != a.depth {
        return false;
    }
    match a.kind {
        kind::ETHERTYPE => x.ethertype == a.lo,
        kind::IP_PROTO => {
            let fam_ok = match a.family {
                4 => x.ethertype == ETH_P_IP,
                6 => x.ethertype == ETH_P_IPV6,
                _ => x.ethertype == ETH_P_IP || x.ethertype == ETH_P_IPV6,
            };
            fam_ok && x.ip_proto == a.proto
        }
        kind::HOST => {
            let fam_ok = if a.family == 6 {
                x.ethertype == ETH_P_IPV6
            } else {
                x.ethertype == ETH_P_IP || x.ethertype == ETH_P_ARP
            };
            if !fam_ok {
                return false;
            }
            side_match(a.side, prefix(&x.saddr, a), prefix(&x.daddr, a))
        }
        kind::PORT => {
            let is_l4 = x.ip_proto == IPPROTO_TCP || x.ip_proto == IPPROTO_UDP;
            let proto_ok = a.proto == 0 || a.proto == x.ip_proto;
            if !(x.has_l4 && is_l4 && proto_ok)
                || (x.ethertype != ETH_P_IP && x.ethertype != ETH_P_IPV6)
            {
                return false;
            }
            side_match(
                a.side,
                a.lo <= x.sport && x.sport <= a.hi,
                a.lo <= x.dport && x.dport <= a.hi,
            )
        }
        kind::TCP_FLAGS => {
            // IPv4 only, as tcpdump's `tcp[...]` (libpcap refuses IPv6 there).
            if !(x.has_l4 && x.ip_proto == IPPROTO_TCP && x.ethertype == ETH_P_IP) {
                return false;
            }
            let v = x.tcp_flags & a.mask;
            if a.cmp == cmp::EQ {
                v == a.value
            } else {
                v != 0
            }
        }
        _ => false,
    }
}

#[inline(always)]
fn side_match(s: u8, src: bool, dst: bool) -> bool {
    match s {
        side::SRC => src,
        side::DST => dst,
        side::BOTH => src && dst,
        _ => src || dst,
    }
}

/// `addr` within the atom's prefix (its mask and masked address precomputed): no branch per
/// byte, so the verifier walks one path.
#[inline(always)]
fn prefix(addr: &[u64; 2], a: &Atom) -> bool {
    ((addr[0] & a.addr_mask[0]) ^ a.addr[0]) | ((addr[1] & a.addr_mask[1]) ^ a.addr[1]) == 0
}
