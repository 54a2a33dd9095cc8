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
use core::mem::size_of;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ParseError {
    /// The frame ends before a header it announces.
    Truncated,
    /// A header contradicts its own rules.
    Invalid,
}

/// A window over packet memory `[start, end)`.
#[derive(Clone, Copy)]
pub struct Frame {
    pub start: usize,
    pub end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Pointer to a `T` at `off`, or `Truncated` if it does not fit in the frame.
    #[inline(always)]
    pub fn ptr<T>(&self, off: usize) -> Result<*const T, ParseError> {
        let p = self.start + off;
        if p + size_of::<T>() > self.end {
            return Err(ParseError::Truncated);
        }
        Ok(p as *const T)
    }

    #[inline(always)]
    pub fn u8_at(&self, off: usize) -> Result<u8, ParseError> {
        let p = self.ptr::<u8>(off)?;
        // SAFETY: `ptr` checked that the byte lies inside the frame.
        Ok(unsafe { *p })
    }

    #[inline(always)]
    pub fn be16_at(&self, off: usize) -> Result<u16, ParseError> {
        let p = self.ptr::<[u8; 2]>(off)?;
        // SAFETY: `ptr` checked that both bytes lie inside the frame.
        Ok(u16::from_be_bytes(unsafe { core::ptr::read_unaligned(p) }))
    }

    /// Four bytes as they are on the wire (network order kept).
    #[inline(always)]
    pub fn raw32_at(&self, off: usize) -> Result<[u8; 4], ParseError> {
        let p = self.ptr::<[u8; 4]>(off)?;
        // SAFETY: `ptr` checked that the 4 bytes lie inside the frame.
        Ok(unsafe { core::ptr::read_unaligned(p) })
    }

    #[inline(always)]
    pub fn raw128_at(&self, off: usize) -> Result<[u8; 16], ParseError> {
        let p = self.ptr::<[u8; 16]>(off)?;
        // SAFETY: `ptr` checked that the 16 bytes lie inside the frame.
        Ok(unsafe { core::ptr::read_unaligned(p) })
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
    /// True when the L4 header is present and was validated (not a non-first fragment).
    pub has_l4: bool,
    /// Offset of the L4 header (valid when `has_l4`).
    pub l4_off: usize,
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
            has_l4: false,
            l4_off: 0,
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

/// Parse an Ethernet frame down to L4.
#[inline(always)]
pub fn parse(f: &Frame) -> Result<Parsed, ParseError> {
    let mut p = Parsed::empty();
    let mut ethertype = f.be16_at(12)?;
    let mut off = ETH_HLEN;
    // Stacked VLAN tags (QinQ, priority tags). Each is 4 bytes: TCI, then the next ethertype.
    // Written out (`unrolled!`), not looped: see `unrolled!`.
    unrolled!(MAX_VLAN_TAGS, {
        if is_vlan(ethertype) {
            let tci = f.be16_at(off)?;
            ethertype = f.be16_at(off + 2)?;
            off += 4;
            p.vlans += 1;
            p.vlan_id_set |= tci & 0x0fff != 0;
        }
    });
    if is_vlan(ethertype) {
        // Deeper than we walk: the kernel would still find IP inside, so never "non-IP".
        return Err(ParseError::Invalid);
    }
    p.ethertype = ethertype;
    p.l3_off = off;
    match ethertype {
        ETH_P_IP => parse_ipv4(f, &mut p)?,
        ETH_P_IPV6 => parse_ipv6(f, &mut p)?,
        ETH_P_ARP => parse_arp(f, &mut p)?,
        _ => {}
    }
    Ok(p)
}

#[inline(always)]
fn parse_arp(f: &Frame, p: &mut Parsed) -> Result<(), ParseError> {
    let off = p.l3_off;
    let htype = f.be16_at(off)?;
    let ptype = f.be16_at(off + 2)?;
    let hlen = f.u8_at(off + 4)?;
    let plen = f.u8_at(off + 5)?;
    p.arp_op = f.be16_at(off + 6)?;
    if htype == 1 && ptype == ETH_P_IP {
        if hlen != 6 || plen != 4 {
            return Err(ParseError::Invalid);
        }
        // sender hw(6) sender ip(4) target hw(6) target ip(4)
        let sip = f.raw32_at(off + 14)?;
        let tip = f.raw32_at(off + 24)?;
        p.saddr[..4].copy_from_slice(&sip);
        p.daddr[..4].copy_from_slice(&tip);
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv4(f: &Frame, p: &mut Parsed) -> Result<(), ParseError> {
    let off = p.l3_off;
    let vihl = f.u8_at(off)?;
    if vihl >> 4 != 4 {
        return Err(ParseError::Invalid);
    }
    let ihl = (vihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(ParseError::Invalid);
    }
    let hlen = ihl * 4;
    // The whole header, options included, must be in the frame.
    f.u8_at(off + hlen - 1)?;
    let total = f.be16_at(off + 2)? as usize;
    if total < hlen {
        return Err(ParseError::Invalid);
    }
    if off + total > f.len() {
        return Err(ParseError::Truncated);
    }
    p.ip_options = ihl > 5;
    let frag = f.be16_at(off + 6)?;
    let more = frag & 0x2000 != 0;
    let frag_off = frag & 0x1fff;
    p.fragment = more || frag_off != 0;
    p.ip_proto = f.u8_at(off + 9)?;
    let s = f.raw32_at(off + 12)?;
    let d = f.raw32_at(off + 16)?;
    p.saddr[..4].copy_from_slice(&s);
    p.daddr[..4].copy_from_slice(&d);
    if frag_off != 0 {
        // Non-first fragment: no L4 header here.
        return Ok(());
    }
    p.l4_off = off + hlen;
    parse_l4(f, p)
}

#[inline(always)]
fn parse_ipv6(f: &Frame, p: &mut Parsed) -> Result<(), ParseError> {
    let off = p.l3_off;
    let v = f.u8_at(off)?;
    if v >> 4 != 6 {
        return Err(ParseError::Invalid);
    }
    let payload = f.be16_at(off + 4)? as usize;
    let mut next = f.u8_at(off + 6)?;
    p.saddr = f.raw128_at(off + 8)?;
    p.daddr = f.raw128_at(off + 24)?;
    let mut hoff = off + 40;
    if hoff + payload > f.len() {
        return Err(ParseError::Truncated);
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
        return Err(ParseError::Invalid);
    }
    p.ip_proto = next;
    if next == NEXTHDR_NONE {
        // No next header.
        return Ok(());
    }
    p.l4_off = hoff;
    parse_l4(f, p)
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
fn ext_header(f: &Frame, p: &mut Parsed, hoff: &mut usize, next: u8) -> Result<Ext, ParseError> {
    match next {
        // hop-by-hop, routing, destination options: (len + 1) * 8 bytes
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
            let nl = f.be16_at(*hoff)?;
            let len = ((nl & 0xff) as usize + 1) * 8;
            f.u8_at(*hoff + len - 1)?;
            *hoff += len;
            Ok(Ext::Next((nl >> 8) as u8))
        }
        // authentication header: (len + 2) * 4 bytes
        NEXTHDR_AUTH => {
            let nl = f.be16_at(*hoff)?;
            let len = ((nl & 0xff) as usize + 2) * 4;
            f.u8_at(*hoff + len - 1)?;
            *hoff += len;
            Ok(Ext::Next((nl >> 8) as u8))
        }
        // fragment header: 8 bytes
        NEXTHDR_FRAGMENT => {
            let fh = f.ptr::<[u8; 8]>(*hoff)?;
            // SAFETY: `ptr` checked that all 8 bytes lie inside the frame.
            let fh = unsafe { core::ptr::read_unaligned(fh) };
            let fo = u16::from_be_bytes([fh[2], fh[3]]);
            p.fragment = true;
            *hoff += 8;
            if fo >> 3 != 0 {
                Ok(Ext::NonFirstFragment(fh[0]))
            } else {
                Ok(Ext::Next(fh[0]))
            }
        }
        _ => Ok(Ext::Upper),
    }
}

#[inline(always)]
fn parse_l4(f: &Frame, p: &mut Parsed) -> Result<(), ParseError> {
    let off = p.l4_off;
    match p.ip_proto {
        IPPROTO_TCP => {
            p.sport = f.be16_at(off)?;
            p.dport = f.be16_at(off + 2)?;
            let doff = (f.u8_at(off + 12)? >> 4) as usize;
            if doff < 5 {
                return Err(ParseError::Invalid);
            }
            p.tcp_flags = f.u8_at(off + 13)?;
            f.u8_at(off + doff * 4 - 1)?;
            p.has_l4 = true;
        }
        IPPROTO_UDP => {
            p.sport = f.be16_at(off)?;
            p.dport = f.be16_at(off + 2)?;
            let ulen = f.be16_at(off + 4)? as usize;
            if ulen != 0 && ulen < 8 {
                return Err(ParseError::Invalid);
            }
            p.has_l4 = true;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Every ICMP/ICMPv6 message has at least 8 bytes of header. One 8-byte check
            // (not single-byte ones) keeps the bounds test in a form the verifier tracks.
            let h = f.ptr::<[u8; 8]>(off)?;
            // SAFETY: `ptr` checked that the 8 bytes lie inside the frame.
            let h = unsafe { core::ptr::read_unaligned(h) };
            p.icmp_type = h[0];
            p.icmp_code = h[1];
            p.has_l4 = true;
        }
        _ => {}
    }
    Ok(())
}
