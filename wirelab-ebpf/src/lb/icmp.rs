//! ICMP errors about balanced flows: what a stateful NAT must do with them (RFC 5508,
//! section 4; Linux's `nf_nat_icmp_reply_translation`), and what a DSR balancer must do with
//! the ones sent to its VIP (Katran sends them to the flow's backend).
//!
//! An ICMP error (IPv4 destination unreachable, time exceeded, parameter problem; ICMPv6
//! types 1-4) quotes the start of the packet it is about. The quoted packet's tuple, turned
//! round, is the key of the flow the error belongs to:
//! - **In `LB_NAT`**: the error is about a packet the balancer sent to a backend (a NAT
//!   flow), sent back towards the client by the backend or a router between. The quoted
//!   destination (the backend) becomes the VIP again, and its port the service's when the
//!   backend listens on another; with SNAT the quoted source and port
//!   become the client's, and so does the error's destination. An error the backend itself
//!   sent gets the VIP as its source.
//! - **In `LB_FLOWS`**: the error is about a reply (VIP -> client), sent to the VIP by the
//!   client or a router on its side (say, "fragmentation needed" for a large reply). DSR:
//!   forwarded unchanged to the flow's backend, which holds the VIP. NAT: the VIP becomes the
//!   backend (the quoted source and the error's destination), the quoted source port the
//!   backend's when it listens on another; with SNAT the quoted
//!   destination and port become the SNAT address and port, and an error the client itself
//!   sent gets the SNAT address as its source.
//!
//! Every checksum the change touches is updated: the outer IPv4 header's, the ICMP message's
//! (ICMPv6's over the pseudo-header too), the quoted IPv4 header's, and the quoted TCP/UDP
//! checksum when the quote reaches it (a quoted UDP checksum of 0 stays 0). Everything is
//! computed from the packet first, into this CPU's [`LB_ICMP_PATCH`], then written by the
//! program (`lb_icmp` for tc, `lb_icmp_xdp`), which `lb` and `lb_xdp` reach by a tail call
//! for every ICMP error: the decision's stack has no room for this. Errors the balancer host's
//! own kernel sends about a NAT flow (a smaller MTU towards the backends) leave by the output
//! path: `lb_egress` (tc egress) hands them to `lb_icmp` the same way, `LB_NAT` only. An IPv6 quote's extension headers (up to 8, a
//! first fragment's header among them) are walked as the parser walks a packet's. Quotes of
//! non-first fragments (IPv4, or IPv6 by their fragment header) carry no ports: such errors
//! are passed on untranslated.
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, BPF_F_RECOMPUTE_CSUM, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    macros::{classifier, map, xdp},
    maps::PerCpuArray,
    programs::{TcContext, XdpContext},
};
use wirelab_common::csum;
use wirelab_common::lb::{
    event, mode, snat_index, which, FlowKey, FAMILY_IPV4, FAMILY_IPV6, MAX_BACKENDS, MAX_SERVICES,
};
use wirelab_common::tap::lb_what;

use super::{
    quad, same16, set16, tap_tc, tap_xdp, word32, xdp_forward, Pick, Verdict, AF_INET, AF_INET6,
    LB_BACKENDS, LB_CONF, LB_EVENTS, LB_FLOWS, LB_GEN, LB_ICMP_TC, LB_NAT, LB_SERVICES, OFF_MASK,
};
use crate::{
    counter,
    error::{Error, Result},
    parse::{
        self, Frame, Parsed, ETH_DEST_OFF, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, ETH_SOURCE_OFF,
        ICMP_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_CSUM_OFF,
        IPV4_DADDR_OFF, IPV4_FRAG_OFF, IPV4_HLEN, IPV4_MIN_IHL, IPV4_PROTO_OFF, IPV4_SADDR_OFF,
        IPV4_VERSION, IPV6_DADDR_OFF, IPV6_HLEN, IPV6_NEXTHDR_OFF, IPV6_SADDR_OFF, IPV6_VERSION,
        IP_OFFSET, TCP_CSUM_OFF, UDP_CSUM_OFF,
    },
    sys,
};

/// ICMP types that quote the packet they are about.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
/// ICMPv6 error types: destination unreachable, packet too big, time exceeded, parameter
/// problem.
const ICMPV6_ERROR_MAX: u8 = 4;
/// The ICMP checksum's offset in its header.
const ICMP_CSUM_OFF: usize = 2;
/// Bytes of the quoted transport header that hold both ports (and UDP's checksum).
const QUOTED_L4_MIN: usize = 8;
/// The longest quoted IP header: IPv4 with 40 bytes of options (IPv6's is 40).
const IPV4_MAX_HLEN: usize = 60;
/// A quoted TCP header up to its checksum and beyond: the most of it translation touches.
const QUOTED_TCP_MIN: usize = 20;

/// Is this ICMP (`v6`: ICMPv6) type an error that quotes a packet?
#[inline(always)]
pub(super) fn is_error(v6: bool, t: u8) -> bool {
    if v6 {
        (1..=ICMPV6_ERROR_MAX).contains(&t)
    } else {
        t == ICMP_DEST_UNREACH || t == ICMP_TIME_EXCEEDED || t == ICMP_PARAMETERPROB
    }
}

/// [`IcmpPatch::parts`]: which fields change.
const OUT_SRC: u8 = 1;
const OUT_DST: u8 = 2;
const IN_SRC: u8 = 4;
const IN_DST: u8 = 8;
const IN_SPORT: u8 = 16;
const IN_DPORT: u8 = 32;
/// The quoted TCP/UDP checksum is within the frame and in use (not a UDP/IPv4 zero).
const IN_L4C: u8 = 64;

/// One translated error: new fields and checksums, with their offsets; and the flow key it
/// was looked up by. Built here rather than on the stack.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct IcmpPatch {
    /// Set by the decision before the tail call: the outer packet's L3 and ICMP offsets, its
    /// family and addresses; `egress`: handed over by [`lb_egress`] (an error this host's
    /// kernel sends), which only `LB_NAT` flows are looked up for and which is not counted
    /// when passed.
    ol3: u16,
    ol4: u16,
    /// An IPv6 quote's upper-layer protocol and offset, on their way through the slot.
    q_proto: u8,
    q_l4: u16,
    /// Where the outer packet ends by its IP length: the quote ends there too.
    oend: u16,
    v6: bool,
    egress: bool,
    osrc: [u8; 16],
    odst: [u8; 16],
    key: FlowKey,
    parts: u8,
    /// Offsets (`OFF_MASK` bounds them when read back).
    out_src_off: u16,
    out_dst_off: u16,
    out_ipc_off: u16,
    icmp_c_off: u16,
    in_src_off: u16,
    in_dst_off: u16,
    in_ipc_off: u16,
    in_l4_off: u16,
    in_l4c_off: u16,
    out_src: [u8; 16],
    out_dst: [u8; 16],
    in_src: [u8; 16],
    in_dst: [u8; 16],
    in_sport: [u8; 2],
    in_dport: [u8; 2],
    /// Checksums, network order: outer IPv4 header, ICMP, quoted IPv4 header, quoted L4.
    out_ipc: [u8; 2],
    icmp_c: [u8; 2],
    in_ipc: [u8; 2],
    in_l4c: [u8; 2],
}

#[map]
static LB_ICMP_PATCH: PerCpuArray<IcmpPatch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's route lookup for [`to_client`] (a map value: the program's stack has no room).
#[map]
static LB_ICMP_FIB: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// `lo`'s interface index, the same in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// This CPU's patch.
#[inline(always)]
fn slot() -> Result<&'static mut IcmpPatch> {
    let s = LB_ICMP_PATCH.get_ptr_mut(0).ok_or(Error::Map)?;
    // SAFETY: this CPU's element of a per-CPU array, aligned, valid for the whole run of the
    // program and not shared with other CPUs; the decision fills it, then the entry point
    // reads it, never both at once.
    Ok(unsafe { &mut *s })
}

/// A 4- or 16-byte address at `off`, as a 16-byte key field (IPv4 in the first 4 bytes).
#[inline(always)]
fn addr_at(f: &Frame, off: usize, v6: bool) -> Result<[u8; 16]> {
    if v6 {
        f.raw128_at(off)
    } else {
        let a = f.raw32_at(off)?;
        Ok([a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    }
}

/// Running checksums while the patch is computed (host-order values).
struct Sums {
    out_ip: u16,
    icmp: u16,
    in_ip: u16,
    in_l4: u16,
}

/// The address at `off` becomes `new`: each checksum whose bit is in `covers` follows.
const C_OUT_IP: u8 = 1;
const C_ICMP: u8 = 2;
const C_IN_IP: u8 = 4;
const C_IN_L4: u8 = 8;

#[inline(always)]
fn sum_addr(
    f: &Frame,
    off: usize,
    new: &[u8; 16],
    v6: bool,
    covers: u8,
    s: &mut Sums,
) -> Result<()> {
    // Word by word, written out: as a loop over 1 or 4 words the compiler folds the bound
    // checks into one on `data_end + 1`, arithmetic the verifier refuses on that pointer.
    sum_word(f, off, new, 0, covers, s)?;
    if v6 {
        sum_word(f, off, new, 1, covers, s)?;
        sum_word(f, off, new, 2, covers, s)?;
        sum_word(f, off, new, 3, covers, s)?;
    }
    Ok(())
}

/// Word `i` of the address at `off` becomes word `i` of `new`, in the checksums `covers` names.
#[inline(always)]
fn sum_word(
    f: &Frame,
    off: usize,
    new: &[u8; 16],
    i: usize,
    covers: u8,
    s: &mut Sums,
) -> Result<()> {
    let (old, new) = (f.raw32_at(off + 4 * i)?, quad(new, i));
    if covers & C_OUT_IP != 0 {
        s.out_ip = csum::replace4(s.out_ip, old, new);
    }
    if covers & C_ICMP != 0 {
        s.icmp = csum::replace4(s.icmp, old, new);
    }
    if covers & C_IN_IP != 0 {
        s.in_ip = csum::replace4(s.in_ip, old, new);
    }
    if covers & C_IN_L4 != 0 {
        s.in_l4 = csum::replace4(s.in_l4, old, new);
    }
    Ok(())
}

/// An ICMP error (`p`: the parsed outer packet, `p.has_l4`) about a balanced flow: the patch
/// in [`LB_ICMP_PATCH`] and `Verdict::IcmpNat`, or the frame's MACs set for the backend and
/// `Verdict::Forward` (DSR); `Verdict::Pass` for any other error.
// The key is passed by reference on purpose: by value it would be copied to the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn try_icmp(f: &Frame, pick: &mut Pick) -> Result<Verdict> {
    let s = slot()?;
    let v6 = s.v6;
    let family = if v6 { FAMILY_IPV6 } else { FAMILY_IPV4 };
    let ol3 = s.ol3 as usize & OFF_MASK;
    let ol4 = s.ol4 as usize & OFF_MASK;
    let il3 = ol4 + ICMP_HLEN;
    // The Ethernet header at a constant offset first: the verifier then knows the MACs are
    // in the frame (a check at a variable offset further in does not tell it that).
    f.at::<[u8; ETH_HLEN]>(0)?;
    // The quoted header: TCP or UDP right behind it, and (IPv4) not a later fragment.
    // Whole-header reads: single-byte bounds checks at a variable offset compile to a test
    // the verifier does not take as one.
    let (proto, il4, isrc_off, idst_off) = if v6 {
        let h = f.at::<[u8; IPV6_HLEN]>(il3)?.get();
        if h[0] >> 4 != IPV6_VERSION {
            return Ok(Verdict::Pass);
        }
        // Through the quote's extension headers (a first fragment's included).
        let Some((proto, il4)) = parse::ipv6_quote_upper(f, il3, h[IPV6_NEXTHDR_OFF])? else {
            return Ok(Verdict::Pass);
        };
        // Through this CPU's slot: read back, one state for the rest whatever the walk
        // found (each chain length would otherwise be a state of its own there).
        s.q_proto = proto;
        s.q_l4 = il4 as u16;
        // SAFETY: reads of fields of this CPU's slot (`s`, a valid reference).
        let (proto, il4) = unsafe {
            (
                core::ptr::read_volatile(&s.q_proto),
                core::ptr::read_volatile(&s.q_l4) as usize,
            )
        };
        (proto, il4, il3 + IPV6_SADDR_OFF, il3 + IPV6_DADDR_OFF)
    } else {
        let h = f.at::<[u8; IPV4_HLEN]>(il3)?.get();
        let ihl = (h[0] & 0x0f) as usize;
        if h[0] >> 4 != IPV4_VERSION || ihl < IPV4_MIN_IHL {
            return Ok(Verdict::Pass);
        }
        let frag = u16::from_be_bytes([h[IPV4_FRAG_OFF], h[IPV4_FRAG_OFF + 1]]);
        if frag & IP_OFFSET != 0 {
            return Ok(Verdict::Pass);
        }
        (
            h[IPV4_PROTO_OFF],
            il3 + ihl * 4,
            il3 + IPV4_SADDR_OFF,
            il3 + IPV4_DADDR_OFF,
        )
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(Verdict::Pass);
    }
    let il4 = il4 & OFF_MASK;
    let ports = f.at::<[u8; QUOTED_L4_MIN]>(il4)?.get();
    // The quoted packet's tuple turned round: the direction the flow's tables are keyed by.
    s.key.saddr = addr_at(f, idst_off, v6)?;
    s.key.daddr = addr_at(f, isrc_off, v6)?;
    s.key.sport = u16::from_be_bytes([ports[2], ports[3]]);
    s.key.dport = u16::from_be_bytes([ports[0], ports[1]]);
    s.key.proto = proto;
    s.key.family = family;
    s.key._pad = [0; 2];
    s.parts = 0;
    let (osrc_off, odst_off) = if v6 {
        (ol3 + IPV6_SADDR_OFF, ol3 + IPV6_DADDR_OFF)
    } else {
        (ol3 + IPV4_SADDR_OFF, ol3 + IPV4_DADDR_OFF)
    };

    if let Some(n) = LB_NAT.get_ptr(&s.key) {
        // SAFETY: a successful lookup's pointer to the element's value, valid for this RCU
        // read-side section; the fields are copied out.
        let n = unsafe { &*n };
        // About a packet sent to a backend: back to what the client sent.
        s.parts = IN_DST;
        set16(&mut s.in_dst, &n.vip);
        if n.vport != s.key.sport {
            // The backend listens on another port: the quote's goes back to the service's.
            s.parts |= IN_DPORT;
            s.in_dport = n.vport.to_be_bytes();
        }
        if n.snat != 0 {
            s.parts |= IN_SRC | IN_SPORT | OUT_DST;
            set16(&mut s.in_src, &n.client);
            s.in_sport = n.client_port.to_be_bytes();
            set16(&mut s.out_dst, &n.client);
        }
        if same16(&s.osrc, &s.key.saddr) {
            s.parts |= OUT_SRC;
            set16(&mut s.out_src, &n.vip);
        }
        pick.picked(which::HASHED, lb_what::NAT_REPLY, n.backend);
    } else if s.egress {
        // Leaving this host: only errors about packets sent to a backend are ours.
        return Ok(Verdict::Pass);
    } else if let Some(v) = sys::lru_get(&LB_FLOWS, &s.key) {
        // About a reply, sent to the VIP.
        if !same16(&s.odst, &s.key.daddr) || v.backend >= MAX_BACKENDS || v.service >= MAX_SERVICES
        {
            return Ok(Verdict::Pass);
        }
        let gen = LB_GEN.get(0).copied().ok_or(Error::Map)? & 1;
        let meta = LB_SERVICES
            .get(gen * MAX_SERVICES + v.service)
            .ok_or(Error::Map)?;
        let be = LB_BACKENDS.get(v.backend).ok_or(Error::Map)?;
        pick.picked(which::TRACKED, lb_what::TRACKED, v.backend);
        if meta.mode != mode::NAT {
            let conf = LB_CONF.get(0).ok_or(Error::Map)?;
            f.store(ETH_DEST_OFF, be.mac)?;
            f.store(ETH_SOURCE_OFF, conf.iface_mac)?;
            counter::bump(&LB_EVENTS, event::ICMP_FORWARDED);
            return Ok(Verdict::Forward);
        }
        s.parts = IN_SRC | OUT_DST;
        set16(&mut s.in_src, &be.addr);
        set16(&mut s.out_dst, &be.addr);
        if be.port != s.key.dport {
            // The reply came from the port the backend listens on.
            s.parts |= IN_SPORT;
            s.in_sport = be.port.to_be_bytes();
        }
        if meta.snat != 0 && v.snat_port != 0 {
            s.parts |= IN_DST | IN_DPORT;
            let pool = &meta.snat_addrs[snat_index(v.snat_port)];
            set16(&mut s.in_dst, pool);
            s.in_dport = (v.snat_port as u16).to_be_bytes();
            if same16(&s.osrc, &s.key.saddr) {
                s.parts |= OUT_SRC;
                set16(&mut s.out_src, pool);
            }
        }
    } else {
        return Ok(Verdict::Pass);
    }

    // The checksums, from the packet's fields before any is written.
    let icmp_off = ol4 + ICMP_CSUM_OFF;
    let in_l4c_off = il4
        + if proto == IPPROTO_UDP {
            UDP_CSUM_OFF
        } else {
            TCP_CSUM_OFF
        };
    let mut sums = Sums {
        out_ip: if v6 {
            0
        } else {
            f.be16_at(ol3 + IPV4_CSUM_OFF)?
        },
        icmp: f.be16_at(icmp_off)?,
        in_ip: if v6 {
            0
        } else {
            f.be16_at(il3 + IPV4_CSUM_OFF)?
        },
        in_l4: 0,
    };
    // The quoted checksum counts when the quote reaches it (UDP's is in the 8 bytes every
    // error quotes; TCP's only in a longer quote) and it is in use. The quote ends with the
    // outer packet: bytes after it (padding, a trailer) are not the quoted checksum.
    let outer_end = s.oend as usize;
    let mut l4c = false;
    // (Tried as a read, not by comparing lengths: the verifier follows the pointer test.)
    if in_l4c_off + 2 > outer_end {
        // Not quoted.
    } else if let Ok(c) = f.at::<[u8; 2]>(in_l4c_off) {
        sums.in_l4 = u16::from_be_bytes(c.get());
        l4c = !(proto == IPPROTO_UDP && !v6 && sums.in_l4 == 0);
    }
    let old_in_ip = sums.in_ip;
    let old_in_l4 = sums.in_l4;
    // Outer addresses: the IPv4 header's checksum, or ICMPv6's pseudo-header.
    let outer = if v6 { C_ICMP } else { C_OUT_IP };
    let quoted = C_ICMP | C_IN_IP | if l4c { C_IN_L4 } else { 0 };
    if s.parts & OUT_SRC != 0 {
        sum_addr(f, osrc_off, &s.out_src, v6, outer, &mut sums)?;
    }
    if s.parts & OUT_DST != 0 {
        sum_addr(f, odst_off, &s.out_dst, v6, outer, &mut sums)?;
    }
    if s.parts & IN_SRC != 0 {
        sum_addr(f, isrc_off, &s.in_src, v6, quoted, &mut sums)?;
    }
    if s.parts & IN_DST != 0 {
        sum_addr(f, idst_off, &s.in_dst, v6, quoted, &mut sums)?;
    }
    if s.parts & IN_SPORT != 0 {
        let old = [ports[0], ports[1]];
        sums.icmp = csum::replace2(sums.icmp, old, s.in_sport);
        if l4c {
            sums.in_l4 = csum::replace2(sums.in_l4, old, s.in_sport);
        }
    }
    if s.parts & IN_DPORT != 0 {
        let old = [ports[2], ports[3]];
        sums.icmp = csum::replace2(sums.icmp, old, s.in_dport);
        if l4c {
            sums.in_l4 = csum::replace2(sums.in_l4, old, s.in_dport);
        }
    }
    if l4c {
        // A computed UDP checksum of 0 is sent as -0.
        if proto == IPPROTO_UDP && sums.in_l4 == 0 {
            sums.in_l4 = 0xffff;
        }
        s.parts |= IN_L4C;
    }
    // The quoted checksums are part of the ICMP message too.
    if !v6 {
        sums.icmp = csum::replace2(sums.icmp, old_in_ip.to_be_bytes(), sums.in_ip.to_be_bytes());
    }
    if l4c {
        sums.icmp = csum::replace2(sums.icmp, old_in_l4.to_be_bytes(), sums.in_l4.to_be_bytes());
    }
    s.out_src_off = osrc_off as u16;
    s.out_dst_off = odst_off as u16;
    s.out_ipc_off = (ol3 + IPV4_CSUM_OFF) as u16;
    s.icmp_c_off = icmp_off as u16;
    s.in_src_off = isrc_off as u16;
    s.in_dst_off = idst_off as u16;
    s.in_ipc_off = (il3 + IPV4_CSUM_OFF) as u16;
    s.in_l4_off = il4 as u16;
    s.in_l4c_off = in_l4c_off as u16;
    s.out_ipc = sums.out_ip.to_be_bytes();
    s.icmp_c = sums.icmp.to_be_bytes();
    s.in_ipc = sums.in_ip.to_be_bytes();
    s.in_l4c = sums.in_l4.to_be_bytes();
    counter::bump(&LB_EVENTS, event::ICMP_TRANSLATED);
    Ok(Verdict::IcmpNat)
}

/// Where a patch writes: the XDP frame directly, or the skb through `bpf_skb_store_bytes`
/// (which keeps a CHECKSUM_COMPLETE skb's sum right).
trait Put {
    fn put<const N: usize>(&mut self, off: u16, v: [u8; N]) -> Result<()>;
}

impl Put for &Frame {
    #[inline(always)]
    fn put<const N: usize>(&mut self, off: u16, v: [u8; N]) -> Result<()> {
        self.store(off as usize & OFF_MASK, v)
    }
}

struct Skb<'a>(&'a TcContext);

impl Put for Skb<'_> {
    #[inline(always)]
    fn put<const N: usize>(&mut self, off: u16, v: [u8; N]) -> Result<()> {
        self.0
            .store(off as usize & OFF_MASK, &v, BPF_F_RECOMPUTE_CSUM as u64)
            .map_err(|_| Error::Skb)
    }
}

#[inline(always)]
fn put_addr(w: &mut impl Put, v6: bool, off: u16, a: &[u8; 16]) -> Result<()> {
    if v6 {
        w.put(off, *a)
    } else {
        w.put(off, quad(a, 0))
    }
}

#[inline(always)]
fn apply(w: &mut impl Put) -> Result<()> {
    let s = slot()?;
    let v6 = s.v6;
    if s.parts & OUT_SRC != 0 {
        put_addr(w, v6, s.out_src_off, &s.out_src)?;
    }
    if s.parts & OUT_DST != 0 {
        put_addr(w, v6, s.out_dst_off, &s.out_dst)?;
    }
    if s.parts & IN_SRC != 0 {
        put_addr(w, v6, s.in_src_off, &s.in_src)?;
    }
    if s.parts & IN_DST != 0 {
        put_addr(w, v6, s.in_dst_off, &s.in_dst)?;
    }
    if s.parts & IN_SPORT != 0 {
        w.put(s.in_l4_off, s.in_sport)?;
    }
    if s.parts & IN_DPORT != 0 {
        w.put(s.in_l4_off + 2, s.in_dport)?;
    }
    if s.parts & IN_L4C != 0 {
        w.put(s.in_l4c_off, s.in_l4c)?;
    }
    if !v6 {
        w.put(s.out_ipc_off, s.out_ipc)?;
        w.put(s.in_ipc_off, s.in_ipc)?;
    }
    w.put(s.icmp_c_off, s.icmp_c)
}

/// The decision hands an ICMP error over: what its parse found, in this CPU's patch (the
/// tail call follows at once, on this CPU). `false`: the slot is missing.
#[inline(always)]
pub(super) fn hand_over(p: &Parsed, v6: bool, egress: bool) -> bool {
    // The quoted headers must end within `OFF_MASK`, so that masking their offsets for the
    // verifier changes none of them.
    if p.l4_off + ICMP_HLEN + IPV4_MAX_HLEN + QUOTED_TCP_MIN > OFF_MASK {
        return false;
    }
    let Ok(s) = slot() else {
        return false;
    };
    s.ol3 = p.l3_off as u16;
    s.ol4 = p.l4_off as u16;
    s.oend = p.l3_end.min(u16::MAX as usize) as u16;
    s.v6 = v6;
    s.egress = egress;
    s.osrc = p.saddr;
    s.odst = p.daddr;
    true
}

/// Decide from what the decision handed over; an error (a quote cut short, a map entry
/// missing) passes the frame on untranslated.
#[inline(always)]
fn decide(f: &Frame, pick: &mut Pick) -> Verdict {
    let v = try_icmp(f, pick).unwrap_or(Verdict::Pass);
    if v == Verdict::Pass && !egressing() {
        counter::bump(&LB_EVENTS, event::NON_VIP);
    }
    v
}

/// The decision's verdict for the capture tap, and a failed write counted as a drop.
#[inline(always)]
fn written(r: Result<()>, pick: &mut Pick) -> bool {
    if r.is_err() {
        counter::bump(&LB_EVENTS, event::DROP_ERROR);
        pick.dropped(event::DROP_ERROR);
    }
    r.is_ok()
}

/// Was this error handed over by [`lb_egress`]?
#[inline(always)]
fn egressing() -> bool {
    slot().is_ok_and(|s| s.egress)
}

/// `lb`'s and `lb_egress`'s tail call for ICMP errors (tc).
#[classifier]
pub fn lb_icmp(mut ctx: TcContext) -> i32 {
    let mut pick = Pick::NONE;
    let verdict = match decide(&Frame::tc(&ctx), &mut pick) {
        Verdict::IcmpNat => {
            if !written(apply(&mut Skb(&ctx)), &mut pick) {
                TC_ACT_SHOT
            } else if egressing() && sys::skb_ifindex(&ctx) == LOOPBACK_IFINDEX {
                to_client(&ctx)
            } else {
                TC_ACT_OK
            }
        }
        Verdict::Forward => sys::redirect(sys::skb_ifindex(&ctx)),
        _ => TC_ACT_UNSPEC,
    };
    if egressing() {
        // The capture tap shows ingress decisions; a capture sees this frame at its own
        // egress hook.
        return verdict;
    }
    tap_tc(&mut ctx, &pick, verdict)
}

/// An error this host's kernel sent to itself, now translated: one about an SNAT flow went to
/// the flow's SNAT address, this host's own, so it left through `lo` (where `lb_egress` also
/// sits); its destination is the client's now, so it goes out of the route to the client
/// (else, looped back to this host, it would be delivered here and dropped). Without a route
/// it is passed on as before.
#[inline(always)]
fn to_client(ctx: &TcContext) -> i32 {
    let Ok(s) = slot() else {
        return TC_ACT_OK;
    };
    let Some(fib) = LB_ICMP_FIB.get_ptr_mut(0) else {
        return TC_ACT_OK;
    };
    if s.parts & OUT_DST == 0 {
        return TC_ACT_OK;
    }
    // SAFETY: this CPU's element of a per-CPU array, aligned, valid for the whole run of the
    // program and used by this function only.
    let fib = unsafe { &mut *fib };
    // SAFETY: `bpf_fib_lookup` is plain data (integers and arrays of them): all zeroes is a
    // valid value.
    *fib = unsafe { core::mem::zeroed() };
    fib.ifindex = LOOPBACK_IFINDEX;
    let d = &s.out_dst;
    if s.v6 {
        fib.family = AF_INET6;
        fib.__bindgen_anon_4.ipv6_dst = [word32(d, 0), word32(d, 1), word32(d, 2), word32(d, 3)];
    } else {
        fib.family = AF_INET;
        fib.__bindgen_anon_4.ipv4_dst = word32(d, 0);
    }
    sys::redirect_by_route(ctx, fib).unwrap_or(TC_ACT_OK)
}

/// tc egress of the balancer's interfaces, for NAT services: ICMP errors this host's own
/// kernel sends about a NAT flow (its "fragmentation needed" / "packet too big" when the link
/// towards a backend has a smaller MTU, "time exceeded", an unreachable backend) quote the
/// packet as translated, the backend's address as its destination, which the client cannot
/// match to its connection (a PMTU black hole). They leave by the output path, which the
/// ingress programs do not see: here each such error goes to `lb_icmp` like one from a
/// backend, and its quote gets the VIP back. Everything else (the whole forwarded traffic)
/// is passed after a look at two header bytes (the parse only for what is not plain TCP or
/// UDP): no copy, no pull.
#[classifier]
pub fn lb_egress(ctx: TcContext) -> i32 {
    let f = Frame::tc(&ctx);
    // Nearly all that leaves is forwarded TCP or UDP without VLAN tags or IPv6 extension
    // headers: told by two header bytes, before any parse.
    if let Ok(h) = f.at::<[u8; ETH_HLEN + IPV4_PROTO_OFF + 1]>(0) {
        let h = h.get();
        let l4 = match u16::from_be_bytes([h[ETH_HLEN - 2], h[ETH_HLEN - 1]]) {
            ETH_P_IP => h[ETH_HLEN + IPV4_PROTO_OFF],
            ETH_P_IPV6 => h[ETH_HLEN + IPV6_NEXTHDR_OFF],
            _ => 0,
        };
        if l4 == IPPROTO_TCP || l4 == IPPROTO_UDP {
            return TC_ACT_UNSPEC;
        }
    }
    let Ok(p) = parse::parse(&f) else {
        return TC_ACT_UNSPEC;
    };
    let v6 = match p.ethertype {
        ETH_P_IP => false,
        ETH_P_IPV6 => true,
        _ => return TC_ACT_UNSPEC,
    };
    let icmp_proto = if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
    if p.fragment || !p.has_l4 || p.ip_proto != icmp_proto || !is_error(v6, p.icmp_type) {
        return TC_ACT_UNSPEC;
    }
    if hand_over(&p, v6, true) {
        // SAFETY: `ctx` is this tc program's context and the array holds tc programs only;
        // on success the call does not return. On failure nothing changed.
        unsafe {
            LB_ICMP_TC.tail_call(&ctx, 0);
        }
    }
    TC_ACT_UNSPEC
}

/// `lb_xdp`'s tail call for ICMP errors.
#[xdp]
pub fn lb_icmp_xdp(ctx: XdpContext) -> u32 {
    let f = Frame::xdp(&ctx);
    let mut pick = Pick::NONE;
    let action = match decide(&f, &mut pick) {
        Verdict::IcmpNat => {
            if written(apply(&mut { &f }), &mut pick) {
                xdp_action::XDP_PASS
            } else {
                xdp_action::XDP_DROP
            }
        }
        Verdict::Forward => xdp_forward(&ctx),
        _ => xdp_action::XDP_PASS,
    };
    tap_xdp(&ctx, &pick, action)
}
