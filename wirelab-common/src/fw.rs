//! `fw`: the XDP firewall's map layouts, shared by the kernel program and userspace.
//!
//! Two generations (0 and 1) of every rule table live side by side; `FW_GEN[0]` names the
//! one in force. The program reads it once per packet, so a packet is judged entirely by one
//! generation. Userspace fills the idle generation, then flips `FW_GEN` in one write.
//!
//! Each match field maps a packet value to a `u64` bitmap of the rules it satisfies (bit i =
//! rule i of the generation). The rule that fires is the lowest bit of the AND of all fields.

/// Rules per generation (bits of the `u64` bitmaps).
pub const MAX_RULES: u32 = 64;
/// Counter slots for rules: two generations' worth, so a reload never reuses a live slot.
pub const RULE_SLOTS: u32 = 128;
/// Counter slot of the default policy.
pub const SLOT_DEFAULT: u32 = 128;
/// Counter slot of frames that failed to parse (the `malformed` policy).
pub const SLOT_MALFORMED: u32 = 129;
/// Counter slot of frames that are neither IPv4 nor IPv6 (the `non_ip` policy).
pub const SLOT_NON_IP: u32 = 130;
/// Entries of `FW_COUNTERS`.
pub const NUM_COUNTERS: u32 = 131;

/// Per-generation entries of the port tables: 65,536 ports + "no port".
pub const PORT_ENTRIES: u32 = 65537;
/// Index used for packets without ports (not TCP/UDP, or a non-first fragment).
pub const PORT_NONE: u32 = 65536;
/// Per-generation entries of the TCP-flags and ICMP-type tables: 256 values + "none".
pub const SMALL_ENTRIES: u32 = 257;
/// Index used for packets that are not TCP (flags) / not ICMP (type), or carry no L4 header.
pub const SMALL_NONE: u32 = 256;
/// Per-generation entries of the protocol table.
pub const PROTO_ENTRIES: u32 = 256;

/// Size of the per-source rate-limit LRU table.
pub const BUCKETS: u32 = 65536;
/// Entries per address table (LPM trie or prefix hash), both generations together.
pub const TRIE_ENTRIES: u32 = 262144;
/// Most prefix lengths probed in a prefix hash per packet (see [`FwConf::probe_len`]).
pub const MAX_PROBES: usize = 4;

/// How an address table is searched (`FwConf::mode`).
pub mod lookup {
    /// No prefix but /0: `FwConf::any` is the answer, no map is read.
    pub const ANY: u8 = 0;
    /// Prefix hash: probe `FwConf::probe_len` lengths, longest first; a miss on all is `any`.
    pub const HASH: u8 = 1;
    /// LPM trie (too many distinct prefix lengths to expand within the entry budget).
    pub const TRIE: u8 = 2;
}

/// Token-bucket fixed point: one packet (or byte) is this many units.
pub const TOKEN_UNIT: u64 = 1_000_000_000;

pub mod action {
    pub const ALLOW: u32 = 0;
    pub const DENY: u32 = 1;
    pub const RATE_LIMIT: u32 = 2;
    /// Record a sampled header, then allow.
    pub const LOG: u32 = 3;
}

/// Indices of the four address tables in [`FwConf`]'s per-table arrays.
pub mod table {
    pub const SRC4: usize = 0;
    pub const DST4: usize = 1;
    pub const SRC6: usize = 2;
    pub const DST6: usize = 3;
}

/// Address family values of [`BucketKey::family`] and [`LogEvent::family`].
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Per-generation policies and how each address table is searched.
///
/// The four address tables are, by index: 0 = IPv4 source, 1 = IPv4 destination,
/// 2 = IPv6 source, 3 = IPv6 destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwConf {
    pub default_action: u32,
    pub malformed_action: u32,
    pub non_ip_action: u32,
    pub nrules: u32,
    /// [`lookup`] method per table.
    pub mode: [u8; 4],
    /// Number of prefix lengths probed per table (hash mode).
    pub nprobes: [u8; 4],
    /// Probed prefix lengths per table, longest first (hash mode). Userspace expands every
    /// prefix to the shortest probed length at or above its own, so a hit on the first probed
    /// length that has one is the longest match.
    pub probe_len: [[u8; MAX_PROBES]; 4],
    /// Network-order masks of the probed lengths, IPv4 tables.
    pub mask4: [[u32; MAX_PROBES]; 2],
    /// Masks of the probed lengths, IPv6 tables (two network-order halves each).
    pub mask6: [[[u64; 2]; MAX_PROBES]; 2],
    /// Bitmaps of the /0 entries (rules without that field, and /0 prefixes), per table.
    pub any: [u64; 4],
}

/// What rule `i` of a generation does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleMeta {
    pub action: u32,
    /// Counter slot (stable across reloads while the rule keeps its name).
    pub slot: u32,
    /// Rate-limit bucket id (stable across reloads while the rule keeps its name).
    pub id: u32,
    /// Log every Nth matching packet; 0 = never.
    pub log_every: u32,
    /// Token rates, per second (0 = no limit of that kind).
    pub pps: u64,
    pub bps: u64,
    /// Bucket depths in TOKEN_UNITs.
    pub burst_pkts: u64,
    pub burst_bytes: u64,
    /// Time after which each bucket is full whatever its level (caps its refill arithmetic).
    pub fill_pkts_ns: u64,
    pub fill_bytes_ns: u64,
}

/// Counter of one slot (per CPU in the map; userspace sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounter {
    /// Packets and bytes that reached this rule / policy.
    pub packets: u64,
    pub bytes: u64,
    /// Of those, how many were dropped (deny, or over a rate limit).
    pub dropped: u64,
    /// Of those, how many were sent to the log ring.
    pub logged: u64,
}

impl RuleCounter {
    pub fn add(&mut self, o: &RuleCounter) {
        self.packets = self.packets.wrapping_add(o.packets);
        self.bytes = self.bytes.wrapping_add(o.bytes);
        self.dropped = self.dropped.wrapping_add(o.dropped);
        self.logged = self.logged.wrapping_add(o.logged);
    }
}

/// Key of the per-source token buckets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketKey {
    pub id: u32,
    /// 4 or 6.
    pub family: u32,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub last_ns: u64,
    pub pkts: u64,
    pub bytes: u64,
}

/// A sampled header sent to userspace through the `FW_LOG` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogEvent {
    pub ts_ns: u64,
    pub slot: u32,
    /// Frame length.
    pub len: u32,
    /// 1 = dropped, 0 = passed.
    pub dropped: u8,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub vlans: u8,
    pub fragment: u8,
    pub _pad: u8,
    pub sport: u16,
    pub dport: u16,
    pub _pad2: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Data of an IPv4 trie key: generation byte, then the address.
pub type Key4 = [u8; 5];
/// Data of an IPv6 trie key: generation byte, then the address.
pub type Key6 = [u8; 17];
/// Bits of the generation byte in front of every trie key: a prefix of `n` address bits
/// has trie prefix length `KEY_GEN_BITS + n`.
pub const KEY_GEN_BITS: u32 = 8;
/// Trie prefix length of a whole IPv4 / IPv6 address (the lookup key of a packet).
pub const KEY4_FULL_BITS: u32 = KEY_GEN_BITS + 32;
pub const KEY6_FULL_BITS: u32 = KEY_GEN_BITS + 128;
const _: () = assert!(KEY4_FULL_BITS as usize == 8 * core::mem::size_of::<Key4>());
const _: () = assert!(KEY6_FULL_BITS as usize == 8 * core::mem::size_of::<Key6>());
/// IPv4 prefix-hash key: generation, prefix length, masked address.
pub type HKey4 = [u8; 6];
/// IPv6 prefix-hash key: generation, prefix length, masked address.
pub type HKey6 = [u8; 18];

/// Configuration of the `gen_tx` generator program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConf {
    /// First source address (host order; IPv6: its low 32 bits) and how many consecutive
    /// ones to cycle through.
    pub src_base: u32,
    pub flows: u32,
    /// Offset of the IPv4 header and of the L4 header in the template frame.
    pub l3_off: u32,
    /// IP protocol of the template (17 or 6).
    pub proto: u32,
    /// 4 or 6. For IPv6, `src_base` is the low 32 bits of the source address and the
    /// transport checksum is updated incrementally (it is mandatory there).
    pub family: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for FwConf {}
    unsafe impl aya::Pod for RuleMeta {}
    unsafe impl aya::Pod for RuleCounter {}
    unsafe impl aya::Pod for BucketKey {}
    unsafe impl aya::Pod for Bucket {}
    unsafe impl aya::Pod for LogEvent {}
    unsafe impl aya::Pod for GenConf {}
}
