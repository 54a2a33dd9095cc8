//! `swarm`: many client machines from one host. Shared by the swarm kernel programs and
//! `wirelab swarm`.
//!
//! A client address is `pool_first + i` for `i < pool_count` (host byte order in the config).
//! Its MAC is `mac_prefix[0]:mac_prefix[1]:a:b:c:d` for the address `a.b.c.d`, so a capture on
//! the server maps back to the client without any table.

/// Identity keyed by the cgroup v2 id of the calling task (one cgroup per client).
pub const MODE_CGROUP: u8 = 0;
/// Identity keyed by the calling process (TGID); addresses handed out on first use.
pub const MODE_PROCESS: u8 = 1;

/// The single entry of the `SWARM_CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwarmConfig {
    /// First client address, host byte order.
    pub pool_first: u32,
    /// Number of client addresses (the pool's host addresses).
    pub pool_count: u32,
    /// In process mode, how many addresses may be handed out (the `--clients` value).
    pub process_limit: u32,
    /// Interface the XDP/tc programs sit on and its MAC.
    pub ifindex: u32,
    pub iface_mac: [u8; 6],
    /// First two bytes of every derived MAC (locally administered, unicast).
    pub mac_prefix: [u8; 2],
    /// `MODE_CGROUP` or `MODE_PROCESS`.
    pub mode: u8,
    pub _pad: [u8; 7],
}

/// Indices of the `SWARM_STATS` per-CPU counters.
pub mod stat {
    /// connect4 calls that were bound to a client address.
    pub const BIND_OK: u32 = 0;
    /// connect4 calls whose bpf_bind failed (socket already bound, address not local...).
    pub const BIND_FAIL: u32 = 1;
    /// sendmsg4 calls whose source address was rewritten.
    pub const SENDMSG: u32 = 2;
    /// ARP requests for pool addresses answered by the tc ingress program.
    pub const ARP_REPLY: u32 = 3;
    /// Frames to a client MAC whose destination MAC was rewritten by XDP.
    pub const DMAC: u32 = 4;
    /// Frames from a pool address whose source MAC was set on egress (IPv4 and ARP).
    pub const SMAC: u32 = 5;
    /// Process mode: connects or sends refused because the pool was used up.
    pub const EXHAUSTED: u32 = 6;
    /// Process mode: addresses handed out.
    pub const ASSIGNED: u32 = 7;
}

pub const NUM_STATS: u32 = 8;

pub const STAT_NAMES: [&str; NUM_STATS as usize] = [
    "bind_ok",
    "bind_fail",
    "sendmsg_rewrites",
    "arp_replies",
    "dst_mac_rewrites",
    "src_mac_rewrites",
    "pool_exhausted",
    "process_assigned",
];

/// The MAC of client address `ip` (network order bytes) under `prefix`.
pub const fn derive_mac(prefix: [u8; 2], ip: [u8; 4]) -> [u8; 6] {
    [prefix[0], prefix[1], ip[0], ip[1], ip[2], ip[3]]
}

/// Default MAC prefix: `02` (locally administered, unicast) and `57` ("W").
pub const DEFAULT_MAC_PREFIX: [u8; 2] = [0x02, 0x57];

#[cfg(feature = "user")]
unsafe impl aya::Pod for SwarmConfig {}
