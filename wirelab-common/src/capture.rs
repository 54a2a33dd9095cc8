//! `capture`: the kernel-side filter table, the event header every captured frame carries to
//! userspace, and the per-CPU statistics of the `capture_xdp` (ingress) and `capture_tc`
//! (egress) programs.
//!
//! The filter is a disjunction of up to [`MAX_TERMS`] terms, each a conjunction of up to
//! [`MAX_ATOMS`] atoms (tcpdump words, possibly negated), compiled in userspace
//! (`wirelab::capture::filter`). A frame no term matches is not copied.

/// Terms of the filter (entries of `CAPTURE_FILTER`).
pub const MAX_TERMS: u32 = 8;
/// Atoms per term.
pub const MAX_ATOMS: usize = 8;
/// Largest snapshot length; the perf output helper takes the length in 20 bits.
pub const MAX_SNAPLEN: u32 = 65535;

/// Direction of a captured frame, as pcapng's `epb_flags` write it (bits 0-1).
pub mod dir {
    pub const INGRESS: u32 = 1;
    pub const EGRESS: u32 = 2;
}

/// What an atom tests.
pub mod kind {
    /// Innermost ethertype (after `depth` VLAN tags) == `lo` (`ip`, `ip6`, `arp`).
    pub const ETHERTYPE: u8 = 1;
    /// IPv4 or IPv6 frame whose protocol (after extension headers) == `proto`; `family` 4 or
    /// 6 restricts it to one of them (`icmp` is IPv4 only, `icmp6` IPv6 only), 0 both.
    pub const IP_PROTO: u8 = 2;
    /// Address (`side`) within `addr`/`plen` of `family` (4: IPv4 and ARP, 6: IPv6).
    pub const HOST: u8 = 3;
    /// TCP or UDP (`proto` 0 both, or 6 / 17) port (`side`) within `lo..=hi`, first
    /// fragments and unfragmented packets only.
    pub const PORT: u8 = 4;
    /// A VLAN tag at position `depth`; with `lo != VLAN_ANY`, its VLAN ID == `lo`.
    pub const VLAN: u8 = 5;
    /// TCP with `flags & mask` compared to `value` (`cmp`).
    pub const TCP_FLAGS: u8 = 6;
}

/// Which address or port a HOST / PORT atom looks at.
pub mod side {
    pub const EITHER: u8 = 0;
    pub const SRC: u8 = 1;
    pub const DST: u8 = 2;
    /// `src and dst`.
    pub const BOTH: u8 = 3;
}

/// Comparisons of a TCP_FLAGS atom.
pub mod cmp {
    /// `flags & mask != 0`
    pub const ANY_SET: u8 = 0;
    /// `flags & mask == value`
    pub const EQ: u8 = 1;
}

/// `vlan` without an ID.
pub const VLAN_ANY: u16 = 0xffff;

/// One test of a term.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Atom {
    /// `kind::*`.
    pub kind: u8,
    /// 1: the atom matches when its test fails.
    pub negate: u8,
    /// `side::*` (HOST, PORT).
    pub side: u8,
    /// VLAN tags in front of the headers tested (tcpdump's `vlan` moves later words inside
    /// one more tag).
    pub depth: u8,
    /// IP protocol (IP_PROTO; PORT: 0 = TCP or UDP).
    pub proto: u8,
    /// Prefix length in bits (HOST).
    pub plen: u8,
    /// 4 or 6 (HOST, IP_PROTO), 0 = both.
    pub family: u8,
    /// `cmp::*` (TCP_FLAGS).
    pub cmp: u8,
    /// Ethertype, lowest port, VLAN ID.
    pub lo: u16,
    /// Highest port.
    pub hi: u16,
    /// TCP flags mask and value.
    pub mask: u8,
    pub value: u8,
    pub _pad: [u8; 2],
    /// Address (HOST): the 16 bytes of an address in network order (IPv4 in the first 4),
    /// masked to `plen`, as two words read in the machine's order; `addr_mask` is the
    /// prefix's mask in the same form. The kernel compares `(a & mask) ^ addr == 0` without
    /// a branch per byte.
    pub addr: [u64; 2],
    pub addr_mask: [u64; 2],
}

impl Atom {
    /// Set `addr`/`addr_mask`/`plen` from address bytes (network order) and a prefix length.
    pub fn set_prefix(&mut self, bytes: &[u8; 16], plen: u8) {
        let mut m = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            let bits = i * 8;
            let p = plen as usize;
            m[i] = if p >= bits + 8 {
                0xff
            } else if p <= bits {
                0
            } else {
                0xffu8 << (8 - (p - bits))
            };
            i += 1;
        }
        let mut a = [0u8; 16];
        i = 0;
        while i < 16 {
            a[i] = bytes[i] & m[i];
            i += 1;
        }
        self.plen = plen;
        self.addr = words(&a);
        self.addr_mask = words(&m);
    }
}

/// 16 bytes as two machine-order words.
#[inline(always)]
pub fn words(b: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
    ]
}

/// VLAN IDs kept per frame for `vlan ID` tests: tags deeper than this can be tested for
/// presence only (`vlan`), not for their ID.
pub const MAX_VLAN_ID_DEPTH: u8 = 5;

/// One conjunction: matches when all of its `natoms` atoms match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Term {
    pub natoms: u32,
    pub _pad: u32,
    pub atoms: [Atom; MAX_ATOMS],
}

/// `CAPTURE_CONF[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureConf {
    /// Bytes copied per frame (at most [`MAX_SNAPLEN`]).
    pub snaplen: u32,
    /// Terms in use; 0 = no filter (every frame matches).
    pub nterms: u32,
}

/// What precedes the frame's bytes in each perf sample.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// CLOCK_MONOTONIC, ns (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// Length of the frame on the wire.
    pub orig_len: u32,
    /// Bytes that follow (min(snaplen, orig_len)).
    pub cap_len: u32,
    pub ifindex: u32,
    /// `dir::*`.
    pub dir: u32,
    /// What fw decided about the frame when capture runs behind fw's tap (`tap::tool::NONE`
    /// from capture's own hooks).
    pub decision: crate::tap::Decision,
}

/// Bytes of [`EventHeader`].
pub const EVENT_HEADER_LEN: usize = core::mem::size_of::<EventHeader>();

/// Index of each counter in `CAPTURE_STATS` (per-CPU u64): `stat::X + dir_base(dir)`.
pub mod stat {
    /// Frames the program ran on.
    pub const SEEN: u32 = 0;
    /// Frames the filter matched.
    pub const MATCHED: u32 = 1;
    /// Matched frames lost because the CPU's perf buffer was full.
    pub const LOST: u32 = 2;
    /// Frames the parser refused (every filter atom is false on them).
    pub const MALFORMED: u32 = 3;
    /// Frames whose filter program could not be reached (tail call failed; never when
    /// userspace filled `CAPTURE_PROGS`).
    pub const NO_FILTER: u32 = 4;
    /// Counters per direction.
    pub const PER_DIR: u32 = 5;
    /// Entries of the map: ingress block, then egress block.
    pub const NUM: u32 = 2 * PER_DIR;
}

/// First counter of direction `d` (`dir::*`).
#[inline(always)]
pub fn dir_base(d: u32) -> u32 {
    if d == dir::EGRESS {
        stat::PER_DIR
    } else {
        0
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Term {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for CaptureConf {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for EventHeader {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_mask_their_host_bits() {
        let mut a = Atom::default();
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[198, 19, 255, 1]);
        a.set_prefix(&b, 15);
        let mut want = [0u8; 16];
        want[..2].copy_from_slice(&[198, 18]);
        assert_eq!(a.addr, words(&want));
        let mut m = [0u8; 16];
        m[..2].copy_from_slice(&[0xff, 0xfe]);
        assert_eq!(a.addr_mask, words(&m));
    }

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(core::mem::size_of::<Atom>(), 48);
        assert_eq!(core::mem::size_of::<Term>(), 8 + 48 * MAX_ATOMS);
        assert_eq!(EVENT_HEADER_LEN, 32);
    }
}
