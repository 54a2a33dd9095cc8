//! Defensive packet parser shared by every wirelab kernel program.
//!
//! Every access is bounds-checked against the end of the frame. The parser understands up to
//! `MAX_VLAN_TAGS` VLAN tags (802.1Q / 802.1ad, in any order), IPv4 options, IPv4 and IPv6
//! fragments, and up to `MAX_IPV6_EXT` IPv6 extension headers (hop-by-hop, routing, fragment,
//! destination options, AH). Frames that end before a header they announce are `Truncated`;
//! headers that contradict their own length rules (IHL < 5, TCP data offset < 5, IP total
//! length shorter than the header...) are `Invalid`. Non-first fragments carry no L4 header
//! and are reported with `has_l4 = false`.
//!
//! A frame the parser cannot see through is never reported as a clean non-IP frame: the kernel
//! strips any number of VLAN-0 (priority) tags and hands the inner packet to its IP stack, so
//! a frame still carrying a VLAN ethertype after `MAX_VLAN_TAGS` tags is `Invalid`. Callers
//! that judge frames (fw) must treat every `Err` as malformed, never as "not IP".
use core::{marker::PhantomData, mem::size_of};

use aya_ebpf::programs::{TcContext, XdpContext};

pub use crate::error::Error;

pub const ETH_HLEN: usize = 14;
/// Bytes of a MAC address.
pub const ETH_ALEN: usize = 6;
/// Ethernet header: destination MAC, source MAC, ethertype.
pub const ETH_DEST_OFF: usize = 0;
pub const ETH_SOURCE_OFF: usize = 6;
pub const ETH_PROTO_OFF: usize = 12;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

/// A VLAN tag: TCI (priority, DEI, VLAN ID), then the next ethertype.
pub const VLAN_HLEN: usize = 4;
const VLAN_PROTO_OFF: usize = 2;
pub const VLAN_VID_MASK: u16 = 0x0fff;

/// ARP: hardware type "Ethernet", the operations, and the field offsets of Ethernet/IPv4 ARP.
pub const ARPHRD_ETHER: u16 = 1;
pub const ARPOP_REQUEST: u16 = 1;
pub const ARPOP_REPLY: u16 = 2;
const ARP_PTYPE_OFF: usize = 2;
const ARP_HLEN_OFF: usize = 4;
const ARP_PLEN_OFF: usize = 5;
const ARP_OP_OFF: usize = 6;
pub const ARP_SHA_OFF: usize = 8;
const ARP_SPA_OFF: usize = 14;
const ARP_TPA_OFF: usize = 24;
/// Bytes of an IPv4 address.
pub const IPV4_ALEN: usize = 4;

/// IPv4 header: version/IHL byte, field offsets, fragment bits, minimum length.
pub const IPV4_VERSION: u8 = 4;
pub const IPV4_MIN_IHL: usize = 5;
const IPV4_TOT_LEN_OFF: usize = 2;
/// Identification: the fragments of one datagram share it.
pub const IPV4_ID_OFF: usize = 4;
pub const IPV4_FRAG_OFF: usize = 6;
const IP_MF: u16 = 0x2000;
/// IPv4 "don't fragment" (in the flags and fragment offset word).
pub const IP_DF: u16 = 0x4000;
pub const IP_OFFSET: u16 = 0x1fff;
pub const IPV4_PROTO_OFF: usize = 9;
pub const IPV4_CSUM_OFF: usize = 10;
pub const IPV4_SADDR_OFF: usize = 12;
pub const IPV4_DADDR_OFF: usize = 16;
/// Length of an IPv4 header without options.
pub const IPV4_HLEN: usize = 20;

/// IPv6 header: field offsets and length.
pub const IPV6_VERSION: u8 = 6;
const IPV6_PAYLOAD_LEN_OFF: usize = 4;
pub const IPV6_NEXTHDR_OFF: usize = 6;
pub const IPV6_SADDR_OFF: usize = 8;
pub const IPV6_DADDR_OFF: usize = 24;
pub const IPV6_HLEN: usize = 40;
/// Extension headers: hop-by-hop/routing/destination options count 8-byte units beyond the
/// first, AH 4-byte units beyond the first two; a fragment header is 8 bytes, its offset
/// field the top 13 bits of bytes 2-3.
const IPV6_OPT_UNIT: usize = 8;
const IPV6_AH_UNIT: usize = 4;
const IPV6_FRAG_HLEN: usize = 8;
const IPV6_FRAG_OFFSET_SHIFT: u16 = 3;

/// TCP header: data offset (top 4 bits) and flags bytes, checksum, minimum data offset.
const TCP_DOFF_OFF: usize = 12;
const TCP_FLAGS_OFF: usize = 13;
pub const TCP_CSUM_OFF: usize = 16;
const TCP_MIN_DOFF: usize = 5;
/// Length of a TCP header without options.
pub const TCP_HLEN: usize = 20;
/// UDP header: length field, checksum, header length.
const UDP_LEN_OFF: usize = 4;
pub const UDP_CSUM_OFF: usize = 6;
const UDP_HLEN: usize = 8;
/// Every ICMP / ICMPv6 message starts with at least this many header bytes.
pub const ICMP_HLEN: usize = 8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// IPv6 next-header values of the extension headers the parser walks, and "no next header".
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_AUTH: u8 = 51;
pub const NEXTHDR_NONE: u8 = 59;
pub const NEXTHDR_DEST: u8 = 60;

/// How many IPv6 extension headers are walked (a chain of exactly this many is parsed, one
/// more is `Invalid`), and how many VLAN tags (802.1Q or 802.1ad, stacked in any order): a
/// frame with more is `Invalid`, since the kernel would still deliver its inner packet to the
/// IP stack.
pub use wirelab_common::parse::{MAX_IPV6_EXT, MAX_VLAN_TAGS};

/// Repeat a block `$n` times in straight-line code (8 is the only count used). The header
/// walks are written out rather than looped: LLVM may lay a loop's back-edge out as a plain
/// fall-through, which verifiers before Linux ~6.4 reject ("back-edge from insn X to X+1"),
/// while straight-line code verifies on every kernel. The `const` checks keep the counts and
/// the limits in step.
macro_rules! unrolled {
    (MAX_VLAN_TAGS, $b:block) => {{
        const _: () = assert!(MAX_VLAN_TAGS == 8);
        unrolled!(@8 $b)
    }};
    (MAX_IPV6_EXT, $b:block) => {{
        const _: () = assert!(MAX_IPV6_EXT == 8);
        unrolled!(@8 $b)
    }};
    (@8 $b:block) => {{
        $b $b $b $b $b $b $b $b
    }};
}

/// Ethertypes the kernel treats as a VLAN tag (`eth_type_vlan`): it pops them on receive.
#[inline(always)]
pub fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

/// Plain data that may be copied out of, and into, packet memory.
///
/// # Safety
///
/// Every bit pattern of `size_of::<Self>()` bytes must be a valid `Self` (packet bytes are
/// arbitrary), and `Self` must hold no pointers or references. Values are copied with
/// unaligned accesses, so any alignment is fine.
pub unsafe trait Plain: Copy {}

// SAFETY: bytes and byte arrays are valid for every bit pattern and hold no pointers.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl<const N: usize> Plain for [u8; N] {}

/// A window over packet memory `[start, end)` handed to the program by the kernel. With
/// [`Field`], the only code that reads or writes packet bytes through raw pointers: every
/// access is checked against the window (the verifier insists on the same check), so the
/// accessors are safe. Values are copied in and out (`Plain` types only).
///
/// A frame is built from a context and must not outlive a helper that may move the packet
/// (`bpf_xdp_adjust_meta`, `bpf_skb_store_bytes`, ...): build a new one after such a call.
/// The verifier rejects a program that uses packet pointers a helper invalidated.
#[derive(Clone, Copy)]
pub struct Frame {
    start: usize,
    end: usize,
    /// The packet's length as the kernel counts it: the window's for XDP; for tc, `skb->len`,
    /// which includes paged data beyond the linear window. IP length fields are checked
    /// against it (a header must still lie inside the window to be read).
    wire: usize,
}

impl Frame {
    /// The frame of an XDP program's packet.
    #[inline(always)]
    pub fn xdp(ctx: &XdpContext) -> Self {
        let (start, end) = (ctx.data(), ctx.data_end());
        Self {
            start,
            end,
            wire: end - start,
        }
    }

    /// The XDP metadata area in front of the packet (`bpf_xdp_adjust_meta`).
    #[inline(always)]
    pub fn xdp_meta(ctx: &XdpContext) -> Self {
        let (start, end) = (ctx.metadata(), ctx.metadata_end());
        Self {
            start,
            end,
            wire: end - start,
        }
    }

    /// The linear data of a tc program's packet (the rest may be paged: see `wire`).
    #[inline(always)]
    pub fn tc(ctx: &TcContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
            wire: ctx.len() as usize,
        }
    }

    /// The packet's length as the kernel counts it (linear and paged data).
    #[inline(always)]
    pub fn wire_len(&self) -> usize {
        self.wire
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// The `T` at `off`, checked to lie inside the frame, or `Truncated`.
    ///
    /// Check once, then `get` and `set` as needed. A wide `T` read with `at(off)?.get()`
    /// lets LLVM load only the bytes used; returning it inside a `Result` (as `u8_at` and
    /// friends do for small values) makes it load them all.
    #[inline(always)]
    pub fn at<T: Plain>(&self, off: usize) -> Result<Field<'_, T>, Error> {
        let p = self.start + off;
        if p + size_of::<T>() > self.end {
            return Err(Error::Truncated);
        }
        Ok(Field {
            ptr: p as *mut T,
            _frame: PhantomData,
        })
    }

    /// Write `v` into the frame at `off`, or `Truncated` (nothing written) if it does not fit.
    #[inline(always)]
    pub fn store<T: Plain>(&self, off: usize, v: T) -> Result<(), Error> {
        self.at(off)?.set(v);
        Ok(())
    }

    #[inline(always)]
    pub fn u8_at(&self, off: usize) -> Result<u8, Error> {
        Ok(self.at(off)?.get())
    }

    #[inline(always)]
    pub fn be16_at(&self, off: usize) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.at(off)?.get()))
    }

    /// Four bytes as they are on the wire (network order kept).
    #[inline(always)]
    pub fn raw32_at(&self, off: usize) -> Result<[u8; 4], Error> {
        Ok(self.at(off)?.get())
    }

    #[inline(always)]
    pub fn raw128_at(&self, off: usize) -> Result<[u8; 16], Error> {
        Ok(self.at(off)?.get())
    }
}

/// A `T` inside a [`Frame`], bounds-checked when it was made (a "header pointer"): reads and
/// writes copy, so no Rust reference to packet memory ever exists.
#[derive(Clone, Copy)]
pub struct Field<'a, T> {
    ptr: *mut T,
    _frame: PhantomData<&'a Frame>,
}

impl<T: Plain> Field<'_, T> {
    #[inline(always)]
    pub fn get(self) -> T {
        // SAFETY: `Frame::at` checked that the `size_of::<T>()` bytes at `ptr` lie inside the
        // packet the kernel handed to this program; `T: Plain` is valid for any bytes, so the
        // bytes may be copied out in any chunks.
        unsafe { wide::load(self.ptr) }
    }

    #[inline(always)]
    pub fn set(self, v: T) {
        // SAFETY: as in `get`; XDP and tc programs may write their packet.
        unsafe { wide::store(self.ptr, v) }
    }
}

/// Packet loads and stores a word at a time.
///
/// Packet bytes have no alignment Rust could rely on, so `read_unaligned` is all safe Rust
/// offers, and the BPF target compiles it into one load per byte (a 4-byte address: 4 loads,
/// 3 shifts and 3 ors). The kernel allows unaligned packet access on the architectures that
/// have it cheap (x86-64, arm64: `CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS`; the verifier checks
/// packet alignment only under `BPF_F_STRICT_ALIGNMENT`, which wirelab never sets), so on
/// the BPF target a 2-, 4-, 8- or 16-byte value (and a 6-byte MAC) is moved with the
/// instructions of its width, written here in BPF assembly: the compiler cannot emit them
/// without an alignment it does not know. Other sizes, and the host build, copy unaligned.
mod wide {
    use super::Plain;

    /// Copy the `T` at `p` out of the packet.
    ///
    /// # Safety
    ///
    /// The `size_of::<T>()` bytes at `p` must be readable packet memory.
    #[inline(always)]
    pub(super) unsafe fn load<T: Plain>(p: *const T) -> T {
        #[cfg(target_arch = "bpf")]
        {
            let b = p as *const u8;
            // SAFETY (every arm): reads in chunks that stay inside the caller's bytes, each
            // integer kept in memory order (`to_ne_bytes`); the result has `T`'s size, and
            // `T: Plain` is valid for any bytes.
            unsafe {
                match size_of::<T>() {
                    2 => return core::mem::transmute_copy(&asm::ld16(b).to_ne_bytes()),
                    4 => return core::mem::transmute_copy(&asm::ld32(b).to_ne_bytes()),
                    6 => {
                        let (l, h) = (asm::ld32(b).to_ne_bytes(), asm::ld16(b.add(4)).to_ne_bytes());
                        return core::mem::transmute_copy(&[l[0], l[1], l[2], l[3], h[0], h[1]]);
                    }
                    8 => return core::mem::transmute_copy(&asm::ld64(b).to_ne_bytes()),
                    16 => {
                        let w = [asm::ld64(b).to_ne_bytes(), asm::ld64(b.add(8)).to_ne_bytes()];
                        return core::mem::transmute_copy(&w);
                    }
                    _ => {}
                }
            }
        }
        // SAFETY: the caller's bytes; `T: Plain` is valid for any bytes, read unaligned.
        unsafe { core::ptr::read_unaligned(p) }
    }

    /// Copy `v` into the packet at `p`.
    ///
    /// # Safety
    ///
    /// The `size_of::<T>()` bytes at `p` must be writable packet memory.
    #[inline(always)]
    pub(super) unsafe fn store<T: Plain>(p: *mut T, v: T) {
        #[cfg(target_arch = "bpf")]
        {
            let b = p as *mut u8;
            // SAFETY (every arm): `v`'s bytes (as many as `T` has) read as integers in memory
            // order, written in chunks that stay inside the caller's bytes.
            unsafe {
                match size_of::<T>() {
                    2 => return asm::st16(b, u16::from_ne_bytes(core::mem::transmute_copy(&v))),
                    4 => return asm::st32(b, u32::from_ne_bytes(core::mem::transmute_copy(&v))),
                    6 => {
                        let a: [u8; 6] = core::mem::transmute_copy(&v);
                        asm::st32(b, u32::from_ne_bytes([a[0], a[1], a[2], a[3]]));
                        return asm::st16(b.add(4), u16::from_ne_bytes([a[4], a[5]]));
                    }
                    8 => return asm::st64(b, u64::from_ne_bytes(core::mem::transmute_copy(&v))),
                    16 => {
                        let w: [[u8; 8]; 2] = core::mem::transmute_copy(&v);
                        asm::st64(b, u64::from_ne_bytes(w[0]));
                        return asm::st64(b.add(8), u64::from_ne_bytes(w[1]));
                    }
                    _ => {}
                }
            }
        }
        // SAFETY: the caller's bytes, written unaligned.
        unsafe { core::ptr::write_unaligned(p, v) }
    }

    /// One BPF load or store of a given width (`LDX`/`STX` with offset 0).
    ///
    /// # Safety
    ///
    /// `p` must point at as many readable (loads) or writable (stores) bytes as the width.
    #[cfg(target_arch = "bpf")]
    mod asm {
        use core::arch::asm;

        macro_rules! ld {
            ($name:ident, $t:ty, $w:literal) => {
                #[inline(always)]
                pub(super) unsafe fn $name(p: *const u8) -> $t {
                    let v: $t;
                    // SAFETY: the caller's readable bytes at `p`; only `v` is written.
                    unsafe {
                        asm!(
                            concat!("{v} = *(", $w, " *)({p} + 0)"),
                            p = in(reg) p,
                            v = lateout(reg) v,
                            options(pure, readonly, nostack, preserves_flags)
                        );
                    }
                    v
                }
            };
        }
        macro_rules! st {
            ($name:ident, $t:ty, $w:literal) => {
                #[inline(always)]
                pub(super) unsafe fn $name(p: *mut u8, v: $t) {
                    // SAFETY: the caller's writable bytes at `p`, and nothing else.
                    unsafe {
                        asm!(
                            concat!("*(", $w, " *)({p} + 0) = {v}"),
                            p = in(reg) p,
                            v = in(reg) v,
                            options(nostack, preserves_flags)
                        );
                    }
                }
            };
        }
        ld!(ld16, u16, "u16");
        ld!(ld32, u32, "u32");
        ld!(ld64, u64, "u64");
        st!(st16, u16, "u16");
        st!(st32, u32, "u32");
        st!(st64, u64, "u64");
    }
}

/// What the parser learned about a frame.
#[derive(Clone, Copy)]
pub struct Parsed {
    /// Innermost ethertype (host order).
    pub ethertype: u16,
    /// Number of VLAN tags skipped (0..=`MAX_VLAN_TAGS`).
    pub vlans: u8,
    /// True when a skipped tag has a VLAN ID other than 0. Tags with ID 0 (priority tags)
    /// mean the untagged network; the kernel pops them without a VLAN device.
    pub vlan_id_set: bool,
    /// Offset of the L3 header.
    pub l3_off: usize,
    /// IP protocol / IPv6 upper-layer header; 0 for non-IP frames.
    pub ip_proto: u8,
    /// True for IPv4 headers with options.
    pub ip_options: bool,
    /// True for any IPv4/IPv6 fragment.
    pub fragment: bool,
    /// The identification the fragments of one datagram share (IPv4: the header's 16 bits,
    /// read for every packet; IPv6: the fragment header's 32, else the header's first word).
    /// Meaningful only when `fragment`.
    pub frag_id: u32,
    /// True when the L4 header is present and was validated (not a non-first fragment).
    pub has_l4: bool,
    /// Offset of the L4 header (valid when `has_l4`).
    pub l4_off: usize,
    /// Where the IP packet ends by its own length (valid when `has_l4`): bytes after it
    /// (padding, a trailer) belong to no header.
    pub l3_end: usize,
    /// Source and destination address, network order; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Ports (host order) for TCP/UDP, 0 otherwise.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 ...).
    pub tcp_flags: u8,
    /// ICMP / ICMPv6 type and code.
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// ARP operation (1 request, 2 reply) for Ethernet/IPv4 ARP.
    pub arp_op: u16,
}

impl Parsed {
    #[inline(always)]
    const fn empty() -> Self {
        Self {
            ethertype: 0,
            vlans: 0,
            vlan_id_set: false,
            l3_off: ETH_HLEN,
            ip_proto: 0,
            ip_options: false,
            fragment: false,
            frag_id: 0,
            has_l4: false,
            l4_off: 0,
            l3_end: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 0,
            dport: 0,
            tcp_flags: 0,
            icmp_type: 0,
            icmp_code: 0,
            arp_op: 0,
        }
    }
}

/// Parse an Ethernet frame down to L4. Errors are `Truncated` or `Invalid` (module docs).
///
/// IP length fields are checked against the packet's whole length ([`Frame::wire_len`]): a tc
/// program's skb keeps a locally made packet's payload in pages, outside its linear data.
#[inline(always)]
pub fn parse(f: &Frame) -> Result<Parsed, Error> {
    let mut p = link(f)?;
    match p.ethertype {
        ETH_P_IP => parse_ipv4(f, &mut p)?,
        ETH_P_IPV6 => parse_ipv6(f, &mut p)?,
        ETH_P_ARP => parse_arp(f, &mut p)?,
        _ => {}
    }
    Ok(p)
}

/// [`parse`] for a program that answers ARP only: the link layer, and the ARP header if the
/// frame is ARP; IP is not walked (so not verified in that program either).
#[inline(always)]
pub fn parse_arp_only(f: &Frame) -> Result<Parsed, Error> {
    let mut p = link(f)?;
    if p.ethertype == ETH_P_ARP {
        parse_arp(f, &mut p)?;
    }
    Ok(p)
}

/// The Ethernet header and its VLAN tags: `ethertype`, `l3_off`, `vlans`, `vlan_id_set`.
#[inline(always)]
fn link(f: &Frame) -> Result<Parsed, Error> {
    let mut p = Parsed::empty();
    let mut ethertype = f.be16_at(ETH_PROTO_OFF)?;
    let mut off = ETH_HLEN;
    // Stacked VLAN tags (QinQ, priority tags). Each is 4 bytes: TCI, then the next ethertype.
    // Written out (`unrolled!`), not looped: see `unrolled!`.
    unrolled!(MAX_VLAN_TAGS, {
        if is_vlan(ethertype) {
            let tci = f.be16_at(off)?;
            ethertype = f.be16_at(off + VLAN_PROTO_OFF)?;
            off += VLAN_HLEN;
            p.vlans += 1;
            p.vlan_id_set |= tci & VLAN_VID_MASK != 0;
        }
    });
    if is_vlan(ethertype) {
        // Deeper than we walk: the kernel would still find IP inside, so never "non-IP".
        return Err(Error::Invalid);
    }
    p.ethertype = ethertype;
    p.l3_off = off;
    Ok(p)
}

#[inline(always)]
fn parse_arp(f: &Frame, p: &mut Parsed) -> Result<(), Error> {
    let off = p.l3_off;
    let htype = f.be16_at(off)?;
    let ptype = f.be16_at(off + ARP_PTYPE_OFF)?;
    let hlen = f.u8_at(off + ARP_HLEN_OFF)?;
    let plen = f.u8_at(off + ARP_PLEN_OFF)?;
    p.arp_op = f.be16_at(off + ARP_OP_OFF)?;
    if htype == ARPHRD_ETHER && ptype == ETH_P_IP {
        if hlen as usize != ETH_ALEN || plen as usize != IPV4_ALEN {
            return Err(Error::Invalid);
        }
        // sender hw(6) sender ip(4) target hw(6) target ip(4)
        let sip = f.raw32_at(off + ARP_SPA_OFF)?;
        let tip = f.raw32_at(off + ARP_TPA_OFF)?;
        p.saddr = v4_padded(sip);
        p.daddr = v4_padded(tip);
    }
    Ok(())
}

/// An IPv4 address in the 16 bytes `Parsed` keeps (its first 4, the rest zero), written as
/// one 16-byte value: zeroing the rest separately becomes a call to `memset` on the BPF
/// target (a byte loop, run for every IPv4 packet).
#[inline(always)]
fn v4_padded(a: [u8; 4]) -> [u8; 16] {
    (u32::from_le_bytes(a) as u128).to_le_bytes()
}

#[inline(always)]
fn parse_ipv4(f: &Frame, p: &mut Parsed) -> Result<(), Error> {
    let off = p.l3_off;
    let vihl = f.u8_at(off)?;
    if vihl >> 4 != IPV4_VERSION {
        return Err(Error::Invalid);
    }
    let ihl = (vihl & 0x0f) as usize;
    if ihl < IPV4_MIN_IHL {
        return Err(Error::Invalid);
    }
    let hlen = ihl * 4;
    // The whole header, options included, must be in the frame.
    f.u8_at(off + hlen - 1)?;
    let total = f.be16_at(off + IPV4_TOT_LEN_OFF)? as usize;
    if total < hlen {
        return Err(Error::Invalid);
    }
    if off + total > f.wire_len() {
        return Err(Error::Truncated);
    }
    p.ip_options = ihl > IPV4_MIN_IHL;
    let frag = f.be16_at(off + IPV4_FRAG_OFF)?;
    let more = frag & IP_MF != 0;
    let frag_off = frag & IP_OFFSET;
    p.fragment = more || frag_off != 0;
    // Read whatever the packet is (no branch for the verifier to follow twice).
    p.frag_id = f.be16_at(off + IPV4_ID_OFF)? as u32;
    p.ip_proto = f.u8_at(off + IPV4_PROTO_OFF)?;
    let s = f.raw32_at(off + IPV4_SADDR_OFF)?;
    let d = f.raw32_at(off + IPV4_DADDR_OFF)?;
    p.saddr = v4_padded(s);
    p.daddr = v4_padded(d);
    if frag_off != 0 {
        // Non-first fragment: no L4 header here. One that starts 8 bytes in would overwrite
        // the TCP flags of the first (the overlapping-fragment attack, RFC 1858): malformed.
        if frag_off == 1 && p.ip_proto == IPPROTO_TCP {
            return Err(Error::Invalid);
        }
        return Ok(());
    }
    p.l4_off = off + hlen;
    p.l3_end = off + total;
    parse_l4(f, p)
}

#[inline(always)]
fn parse_ipv6(f: &Frame, p: &mut Parsed) -> Result<(), Error> {
    let off = p.l3_off;
    let word = f.raw32_at(off)?;
    if word[0] >> 4 != IPV6_VERSION {
        return Err(Error::Invalid);
    }
    // Not a fragment identification (the fragment header's replaces it): a read value, so
    // the slot holds one on every path. A constant here and a read value after the walk's
    // fragment header would be two states for every later instruction on kernels that do
    // not prune across them (6.1 walked wan_xdp twice: 794,407 instructions, 416,763 so).
    p.frag_id = u32::from_be_bytes(word);
    let payload = f.be16_at(off + IPV6_PAYLOAD_LEN_OFF)? as usize;
    let mut next = f.u8_at(off + IPV6_NEXTHDR_OFF)?;
    p.saddr = f.raw128_at(off + IPV6_SADDR_OFF)?;
    p.daddr = f.raw128_at(off + IPV6_DADDR_OFF)?;
    let mut hoff = off + IPV6_HLEN;
    if hoff + payload > f.wire_len() {
        return Err(Error::Truncated);
    }
    // Up to MAX_IPV6_EXT extension headers, written out (`unrolled!`), then the upper layer.
    let mut done = false;
    unrolled!(MAX_IPV6_EXT, {
        if !done {
            match ext_header(f, p, &mut hoff, next)? {
                Ext::Upper => done = true,
                Ext::Next(n) => next = n,
                Ext::NonFirstFragment(n) => {
                    // The upper-layer header is in the first fragment.
                    p.ip_proto = n;
                    return Ok(());
                }
            }
        }
    });
    if !done && is_ext(next) {
        // One more extension header than we walk.
        return Err(Error::Invalid);
    }
    p.ip_proto = next;
    if next == NEXTHDR_NONE {
        // No next header.
        return Ok(());
    }
    p.l4_off = hoff;
    // A zero payload length is a jumbogram's (or BIG TCP's): the packet ends with the frame.
    p.l3_end = if payload == 0 {
        f.wire_len()
    } else {
        off + IPV6_HLEN + payload
    };
    parse_l4(f, p)
}

/// The upper layer of a quoted IPv6 packet (an ICMPv6 error's quote) whose fixed header
/// starts at `off` and names `next` as its next header: its extension headers walked as [`parse`] walks a packet's, the
/// protocol and the offset where its header starts. `None`: the quote is of a non-first
/// fragment (no ports in it), or its chain is longer than `MAX_IPV6_EXT`. `Err`: the quote
/// ends inside a header.
#[inline(always)]
pub fn ipv6_quote_upper(f: &Frame, off: usize, next: u8) -> Result<Option<(u8, usize)>, Error> {
    // The walk notes fragments in a parse result; the quote's are not kept.
    let mut scratch = Parsed::empty();
    let mut next = next;
    let mut hoff = off + IPV6_HLEN;
    let mut done = false;
    unrolled!(MAX_IPV6_EXT, {
        if !done {
            match ext_header(f, &mut scratch, &mut hoff, next)? {
                Ext::Upper => done = true,
                Ext::Next(n) => next = n,
                Ext::NonFirstFragment(_) => return Ok(None),
            }
        }
    });
    Ok(if done { Some((next, hoff)) } else { None })
}

/// What one IPv6 extension-header step found.
enum Ext {
    /// `next` is not an extension header: the upper layer starts at the offset.
    Upper,
    /// Walked one header; this is the next one's type.
    Next(u8),
    /// A fragment header of a non-first fragment, and the protocol it carries.
    NonFirstFragment(u8),
}

#[inline(always)]
fn is_ext(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT
    )
}

/// Walk the extension header of type `next` at `*hoff`.
#[inline(always)]
fn ext_header(f: &Frame, p: &mut Parsed, hoff: &mut usize, next: u8) -> Result<Ext, Error> {
    match next {
        // hop-by-hop, routing, destination options: (len + 1) * 8 bytes
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
            let nl = f.be16_at(*hoff)?;
            let len = ((nl & 0xff) as usize + 1) * IPV6_OPT_UNIT;
            f.u8_at(*hoff + len - 1)?;
            *hoff += len;
            Ok(Ext::Next((nl >> 8) as u8))
        }
        // authentication header: (len + 2) * 4 bytes
        NEXTHDR_AUTH => {
            let nl = f.be16_at(*hoff)?;
            let len = ((nl & 0xff) as usize + 2) * IPV6_AH_UNIT;
            f.u8_at(*hoff + len - 1)?;
            *hoff += len;
            Ok(Ext::Next((nl >> 8) as u8))
        }
        // fragment header: next header, reserved, offset and flags, identification
        NEXTHDR_FRAGMENT => {
            let fh = f.at::<[u8; IPV6_FRAG_HLEN]>(*hoff)?.get();
            let fo = u16::from_be_bytes([fh[2], fh[3]]);
            p.fragment = true;
            p.frag_id = u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]);
            *hoff += IPV6_FRAG_HLEN;
            if fo >> IPV6_FRAG_OFFSET_SHIFT != 0 {
                Ok(Ext::NonFirstFragment(fh[0]))
            } else {
                Ok(Ext::Next(fh[0]))
            }
        }
        _ => Ok(Ext::Upper),
    }
}

/// The L4 header at `p.l4_off`, which must end within the frame (else `Truncated`) and
/// within the IP packet, which ends at `p.l3_end` (else `Invalid`): bytes after the packet (a
/// frame's padding, a trailer) are not its header. So a first fragment too short to hold the
/// whole TCP header (RFC 1858's tiny fragment) is malformed, and never judged by flags read
/// from whatever follows it.
#[inline(always)]
fn parse_l4(f: &Frame, p: &mut Parsed) -> Result<(), Error> {
    let (off, end) = (p.l4_off, p.l3_end);
    match p.ip_proto {
        IPPROTO_TCP => {
            p.sport = f.be16_at(off)?;
            p.dport = f.be16_at(off + 2)?;
            let doff = (f.u8_at(off + TCP_DOFF_OFF)? >> 4) as usize;
            if doff < TCP_MIN_DOFF {
                return Err(Error::Invalid);
            }
            p.tcp_flags = f.u8_at(off + TCP_FLAGS_OFF)?;
            f.u8_at(off + doff * 4 - 1)?;
            if off + doff * 4 > end {
                return Err(Error::Invalid);
            }
            p.has_l4 = true;
        }
        IPPROTO_UDP => {
            p.sport = f.be16_at(off)?;
            p.dport = f.be16_at(off + 2)?;
            let ulen = f.be16_at(off + UDP_LEN_OFF)? as usize;
            if ulen != 0 && ulen < UDP_HLEN {
                return Err(Error::Invalid);
            }
            // (The checks against the packet's end after the reads: before them the compiler
            // merges the frame's bounds checks into a form the verifier does not follow.)
            if off + UDP_HLEN > end {
                return Err(Error::Invalid);
            }
            p.has_l4 = true;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Every ICMP/ICMPv6 message has at least 8 bytes of header. One 8-byte check
            // (not single-byte ones) keeps the bounds test in a form the verifier tracks.
            let h = f.at::<[u8; ICMP_HLEN]>(off)?.get();
            if off + ICMP_HLEN > end {
                return Err(Error::Invalid);
            }
            p.icmp_type = h[0];
            p.icmp_code = h[1];
            p.has_l4 = true;
        }
        _ => {}
    }
    Ok(())
}
