//! `inspect`: per-class packet counters filled by the `inspect` XDP program.
//!
//! A frame is counted in every class that applies to it: an ICMP echo request in a VLAN tag
//! counts in `total`, `vlan`, `ipv4` and `icmp`. A frame that cannot be parsed counts in
//! `total` and `malformed` only.

/// Index of each class in the `INSPECT_COUNTERS` per-CPU array.
pub mod class {
    pub const TOTAL: u32 = 0;
    pub const ARP: u32 = 1;
    pub const IPV4: u32 = 2;
    pub const IPV6: u32 = 3;
    pub const ICMP: u32 = 4;
    pub const ICMPV6: u32 = 5;
    pub const TCP: u32 = 6;
    pub const UDP: u32 = 7;
    /// Ethertype other than ARP/IPv4/IPv6, or an IP protocol other than ICMP/ICMPv6/TCP/UDP.
    pub const OTHER: u32 = 8;
    /// Truncated frames and headers that violate their own length rules.
    pub const MALFORMED: u32 = 9;
    /// Frames carrying at least one 802.1Q/802.1ad tag.
    pub const VLAN: u32 = 10;
    /// IPv4 or IPv6 fragments (first and later ones).
    pub const FRAGMENT: u32 = 11;
    /// IPv4 headers with options (IHL > 5).
    pub const IP_OPTIONS: u32 = 12;
}

/// Number of entries in the counter array.
pub const NUM_CLASSES: u32 = 13;

/// Class names in index order, as printed by `wirelab inspect`.
pub const CLASS_NAMES: [&str; NUM_CLASSES as usize] = [
    "total",
    "arp",
    "ipv4",
    "ipv6",
    "icmp",
    "icmpv6",
    "tcp",
    "udp",
    "other",
    "malformed",
    "vlan",
    "fragment",
    "ip_options",
];
