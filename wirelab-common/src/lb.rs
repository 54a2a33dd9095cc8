//! `lb`: the L4 load balancer's map layouts, shared by the kernel program and userspace.
//!
//! - `LB_VIPS` maps a [`VipKey`] (address, port, protocol) to a service index. Each VIP
//!   address also has a marker entry with port 0 and protocol 0 (value [`VIP_ADDR_MARK`]), so
//!   fragments to a VIP address are recognised without their ports.
//! - `LB_VIP_BLOOM` holds, per generation, a bit for each service's [`VipKey`]
//!   ([`vip_bloom_bit`]): a packet whose bit is clear is no service's, and is not looked up
//!   further. A tracked flow's packet (its bit set) finds its service through its
//!   `LB_FLOWS` entry and [`ServiceMeta::vip`], without an `LB_VIPS` lookup.
//! - `LB_GEN[0]` names the generation (0 or 1) in force. The program reads it once per
//!   packet; `LB_SERVICES` and `LB_TABLE` hold both generations side by side, so userspace
//!   fills the idle generation and flips `LB_GEN` in one write: no packet sees a half-written
//!   table.
//! - `LB_BACKENDS` is indexed by a backend id that stays the same across generations, so a
//!   tracked flow ([`FlowValue::backend`]) keeps its backend when the tables change.
//! - `LB_TABLE` is the Maglev lookup table: slot `h % M` of service `s` in generation `g` is
//!   at `(g * MAX_SERVICES + s) * MAX_TABLE_SIZE + h % M` and holds a backend id, or
//!   [`NO_BACKEND`].

/// Services (VIP:port/proto) per balancer.
pub const MAX_SERVICES: u32 = 16;
/// Backends over all services (ids `0..MAX_BACKENDS`).
pub const MAX_BACKENDS: u32 = 256;
/// Largest Maglev table size M (a prime); each service's stride in `LB_TABLE`.
pub const MAX_TABLE_SIZE: u32 = 65537;
/// Entries of `LB_TABLE`: two generations of `MAX_SERVICES` tables.
pub const TABLE_ENTRIES: u32 = 2 * MAX_SERVICES * MAX_TABLE_SIZE;
/// Entries of the connection-tracking LRU table.
pub const MAX_FLOWS: u32 = 65536;
/// A table slot (or flow) without a backend.
pub const NO_BACKEND: u32 = u32::MAX;
/// Value of the per-address marker entries of `LB_VIPS` (port 0, protocol 0).
pub const VIP_ADDR_MARK: u32 = u32::MAX;
/// 64-bit words of one generation's `LB_VIP_BLOOM` (a power of two): with at most
/// [`MAX_SERVICES`] keys set among 8,192 bits, a non-service packet finds its bit set about
/// once in 500.
pub const VIP_BLOOM_WORDS: u32 = 128;

/// Address family values of [`VipKey::family`] and [`FlowKey::family`].
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// [`ServiceMeta::mode`].
pub mod mode {
    /// Direct server return: rewrite the MACs, send back out of the interface.
    pub const DSR: u32 = 0;
    /// DNAT to the backend's address, handed to the kernel's routing; replies (which route
    /// back through the balancer) get the VIP back as their source (`LB_NAT`). With SNAT
    /// ([`ServiceMeta::snat`]) the source becomes the balancer's SNAT address too, so replies
    /// come back to it whatever the backends' routes.
    pub const NAT: u32 = 1;
}

/// [`LbConf::xdp_out`].
pub mod xdp_out {
    /// `XDP_TX`: a NIC's own transmit ring.
    pub const TX: u8 = 0;
    /// `bpf_redirect` to the interface it came in on. On a veth this is the one that works
    /// with a peer running NAPI through GRO only: the veth kicks the peer's NAPI after a
    /// redirect, but after `XDP_TX` only when the peer has an XDP program.
    pub const REDIRECT: u8 = 1;
}

/// [`Backend::flags`].
pub mod backend_flag {
    /// The backend may receive packets (tracked flows to a backend without it hash afresh).
    pub const UP: u32 = 1;
}

/// Indices of `LB_EVENTS`: what happened to frames outside the per-service counters, and
/// drops by reason.
pub mod event {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed.
    pub const NON_IP: u32 = 0;
    /// IP but not to a VIP:port/proto: passed.
    pub const NON_VIP: u32 = 1;
    /// The parser could not see through it (truncated, bad header lengths): passed to the
    /// stack, which judges it as it would without the balancer.
    pub const MALFORMED: u32 = 2;
    /// A later IPv4/IPv6 fragment to a VIP address whose first fragment was not forwarded to
    /// a backend (it comes first, the first was dropped, or the first was not TCP/UDP to a
    /// VIP:port and was passed as any such packet is; the ports are only in the first):
    /// dropped.
    pub const DROP_FRAGMENT: u32 = 3;
    /// A VIP packet whose service has no backend with weight > 0: dropped.
    pub const DROP_NO_BACKEND: u32 = 4;
    /// A VIP packet the program could not forward (a map entry missing, the frame could not
    /// be made linear): dropped.
    pub const DROP_ERROR: u32 = 5;
    /// Frames sent to a backend.
    pub const FORWARDED: u32 = 6;
    /// A tracked flow whose backend was down or gone, hashed afresh.
    pub const REHASHED: u32 = 7;
    /// IPv4 packets with options to a VIP (forwarded like any other; counted).
    pub const IP_OPTIONS: u32 = 8;
    /// Replies from NAT backends whose source was translated back to the VIP.
    pub const NAT_REPLIES: u32 = 9;
    /// UDP flows idle past their service's timeout, hashed afresh.
    pub const UDP_EXPIRED: u32 = 10;
    /// New DSR flows over the new-flow limit: forwarded by their hash, not tracked.
    pub const UNTRACKED: u32 = 11;
    /// New NAT flows over the new-flow limit: dropped (a NAT flow cannot go untracked: its
    /// replies need the entry), so a flood cannot evict the tracked flows; the client's
    /// retransmission gets in when the rate allows.
    pub const DROP_FLOW_LIMIT: u32 = 12;
    /// New SNAT flows for which no source port was free towards their backend (the client's
    /// own and the flow's alternatives all taken by other clients): dropped.
    pub const DROP_SNAT_PORT: u32 = 13;
    /// ICMP errors about NAT flows translated (the quoted packet, addresses and checksums):
    /// towards the client, or to the backend when sent to the VIP.
    pub const ICMP_TRANSLATED: u32 = 14;
    /// ICMP errors sent to a VIP about a DSR flow's reply, forwarded to its backend.
    pub const ICMP_FORWARDED: u32 = 15;
    /// Tracked NAT flows whose reply entry had been evicted from `LB_NAT` (the two tables
    /// are LRU and evicted independently): entered again under the same tuple.
    pub const NAT_REENTERED: u32 = 16;
    /// Later fragments of NAT replies translated (by the entry their first fragment left in
    /// `LB_FRAGS`; the first counts in `NAT_REPLIES`).
    pub const NAT_FRAGMENTS: u32 = 17;
    /// Later fragments of datagrams to a VIP sent where their first went (by the decision it
    /// left in `LB_VIP_FRAGS`; the first counts as any packet of its flow).
    pub const VIP_FRAGMENTS: u32 = 18;
    /// NAT replies (no SNAT) too big for the link towards their client (IPv4 with DF, or
    /// IPv6): passed on untranslated, so that the kernel's "fragmentation needed" / "packet
    /// too big" goes to the backend, quoting the reply as the backend sent it.
    pub const NAT_TOO_BIG: u32 = 19;
    /// Entries of `LB_EVENTS`.
    pub const COUNT: u32 = 20;
    /// Names, by index (the JSON and table keys).
    pub const NAMES: [&str; COUNT as usize] = [
        "non_ip",
        "non_vip",
        "malformed",
        "drop_fragment",
        "drop_no_backend",
        "drop_error",
        "forwarded",
        "rehashed",
        "ip_options",
        "nat_replies",
        "udp_expired",
        "untracked",
        "drop_flow_limit",
        "drop_snat_port",
        "icmp_translated",
        "icmp_forwarded",
        "nat_reentered",
        "nat_fragments",
        "vip_fragments",
        "nat_too_big",
    ];
}

/// What `lb_which` (the decision run through BPF_PROG_TEST_RUN without effects) returns: an
/// outcome in the high bits, and for `TRACKED`/`HASHED` the backend id in `BACKEND_MASK`.
pub mod which {
    /// The backend id's bits of the answer.
    pub const BACKEND_MASK: u32 = 0xffff;
    /// A tracked flow keeps its backend.
    pub const TRACKED: u32 = 1 << 16;
    /// Hashed through the service's Maglev table (a SYN, an untracked flow, or a tracked one
    /// whose backend is down).
    pub const HASHED: u32 = 2 << 16;
    /// Dropped: the service has no backend up with weight, or the frame is a fragment.
    pub const DROPPED: u32 = 3 << 16;
    /// Not a service's packet: passed to the stack.
    pub const NOT_SERVICE: u32 = 4 << 16;
    /// A map entry the decision needs is missing.
    pub const ERROR: u32 = 5 << 16;
    /// The outcome's bits.
    pub const HOW_MASK: u32 = 0xffff << 16;
}

/// Key of `LB_VIPS`: a service's VIP, destination port (host order) and IP protocol. IPv4
/// addresses use the first 4 bytes of `addr`, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
}

/// The bit of `LB_VIP_BLOOM` (`0..VIP_BLOOM_WORDS * 64`, within a generation's words) that
/// says `k` may be a service's. Only the address's first and last 4 bytes are mixed in (all
/// of an IPv4 address; an IPv6 address's interface part): a false positive costs only the
/// lookups it would have cost without the filter.
#[inline(always)]
pub fn vip_bloom_bit(k: &VipKey) -> u32 {
    let a = &k.addr;
    let first = u32::from_le_bytes([a[0], a[1], a[2], a[3]]);
    let last = u32::from_le_bytes([a[12], a[13], a[14], a[15]]);
    let rest = ((k.port as u32) << 16) | ((k.proto as u32) << 8) | k.family as u32;
    let x = (first ^ last.rotate_left(16)).wrapping_mul(0x9E37_79B1) ^ rest;
    let x = (x ^ (x >> 15)).wrapping_mul(0x85EB_CA6B);
    (x ^ (x >> 13)) & (VIP_BLOOM_WORDS * 64 - 1)
}

/// Per-generation description of a service (`LB_SERVICES[gen * MAX_SERVICES + svc]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceMeta {
    /// Maglev table size M (prime, ≤ [`MAX_TABLE_SIZE`]); 0: the service is not in this
    /// generation (its packets are dropped as `DROP_NO_BACKEND`).
    pub table_size: u32,
    /// [`mode`].
    pub mode: u32,
    /// Seed of the flow hash (the same config and seed pick the same backend).
    pub hash_seed: u32,
    /// Backends with weight > 0 in this generation (0: every packet is `DROP_NO_BACKEND`).
    pub active: u32,
    /// UDP: a tracked flow idle longer than this (ms) is forgotten; its next packet hashes
    /// afresh (`UDP_EXPIRED`). 0: no idle timeout (LRU only).
    pub udp_idle_ms: u32,
    /// NAT: how many addresses of [`ServiceMeta::snat_addrs`] new flows get as their source
    /// (SNAT, for backends whose replies do not route through the balancer; 1 to
    /// [`SNAT_POOL_MAX`], each flow one of them by [`snat_pick`]); 0: the client's address
    /// stays.
    pub snat: u32,
    /// The service's own key: a tracked flow's packet is the service's only if it matches
    /// (the service index in its `LB_FLOWS` entry may since have gone to another service).
    pub vip: VipKey,
    /// The SNAT source addresses (IPv4: first 4 bytes), the first `snat` of them.
    pub snat_addrs: [[u8; 16]; SNAT_POOL_MAX],
}

/// A backend (`LB_BACKENDS[id]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub mac: [u8; 6],
    /// Port the backend listens on (host order): NAT rewrites the service port to it (and
    /// back on replies) when they differ; DSR: the service port.
    pub port: u16,
    /// IPv4 (first 4 bytes) or IPv6 address (informational in DSR mode).
    pub addr: [u8; 16],
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    pub _pad: [u8; 3],
    /// [`backend_flag`] bits.
    pub flags: u32,
}

/// Key of the connection-tracking table: the client's 5-tuple as it arrives (ports host
/// order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Key of `LB_FRAGS` and `LB_VIP_FRAGS`: a fragmented NAT reply as the backend sends it, or a
/// fragmented datagram to a VIP as the client sends it (addresses network order), by the
/// identification its fragments share.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Entries of `LB_FRAGS` and `LB_VIP_FRAGS`: fragmented NAT replies, and datagrams to a VIP,
/// whose later fragments may still come.
pub const MAX_FRAGS: u32 = 8192;

/// Value of the connection-tracking table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Backend id the flow goes to.
    pub backend: u32,
    /// Service index.
    pub service: u32,
    /// When the entry was made or last rehashed (CLOCK_MONOTONIC ns).
    pub created_ns: u64,
    /// TCP flags seen on the flow so far (ORed: FIN 0x01, SYN 0x02, RST 0x04 ...).
    pub tcp_flags: u32,
    /// SNAT services: the source port the flow has towards its backend (host order, the low
    /// 16 bits; often the client's own) and, above them, which address of the service's SNAT
    /// pool it has ([`snat_index`]); 0: no SNAT.
    pub snat_port: u32,
    /// UDP: when a packet of the flow was last seen (CLOCK_MONOTONIC ns), refreshed at most
    /// every quarter of the idle timeout.
    pub seen_ns: u64,
}

/// Value of `LB_NAT`, keyed by a NAT flow's reply 5-tuple as the backend sends it (source =
/// backend address and the port it listens on; destination = the client's address and port,
/// or with SNAT the SNAT address and the flow's SNAT port): what to put back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatValue {
    /// The VIP (IPv4: first 4 bytes): the reply's source again.
    pub vip: [u8; 16],
    pub service: u32,
    pub backend: u32,
    /// SNAT: the client's address and port (host order), the reply's destination again.
    pub client: [u8; 16],
    pub client_port: u16,
    /// 1: an SNAT flow (`client`, `client_port` set); 0: only the source changes.
    pub snat: u16,
    /// The service port (host order): the reply's source port again, when the backend
    /// listens on another.
    pub vport: u16,
    pub _pad: [u8; 2],
}

/// Counters of a service (`LB_SVC_STATS`, per CPU) or of a backend (`LB_BACKEND_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbCounter {
    /// Packets and bytes forwarded.
    pub packets: u64,
    pub bytes: u64,
    /// Flows entered into the tracking table (SYNs and misses hashed afresh).
    pub new_flows: u64,
    /// Packets to this service dropped (no backend, fragments, errors).
    pub drops: u64,
}

impl LbCounter {
    pub fn add(&mut self, o: &LbCounter) {
        self.packets = self.packets.wrapping_add(o.packets);
        self.bytes = self.bytes.wrapping_add(o.bytes);
        self.new_flows = self.new_flows.wrapping_add(o.new_flows);
        self.drops = self.drops.wrapping_add(o.drops);
    }
}

/// The balancer's configuration (`LB_CONF[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConf {
    /// MAC of the interface the program runs on: the source MAC of forwarded frames.
    pub iface_mac: [u8; 6],
    /// How the XDP entry point sends DSR frames back out ([`xdp_out`]).
    pub xdp_out: u8,
    pub _pad: u8,
    /// Number of services configured.
    pub services: u32,
    /// New flows entered into the tracking table per second and CPU (0: no limit). Above
    /// it, new DSR flows are forwarded by their hash but not entered (`UNTRACKED`), so a SYN
    /// flood cannot evict the established flows.
    pub new_flow_limit: u32,
    /// NAT replies longer than this (IP length, bytes) are checked against the route to their
    /// client, which may not carry them (0: never): the smallest MTU of this namespace's
    /// interfaces, so that where every link carries what any link does, no reply is checked.
    pub reply_check_len: u32,
}

/// State of the per-CPU new-flow limit (`LB_RATE[0]`): the theoretical arrival time of the
/// next flow (GCRA): a flow may enter while it is at most one second ahead of now.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    pub tat_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for ServiceMeta {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for LbCounter {}
    unsafe impl aya::Pod for LbConf {}
    unsafe impl aya::Pod for NatValue {}
    unsafe impl aya::Pod for RateState {}
}

/// Source ports a new SNAT flow tries towards its backend ([`snat_port_try`]).
pub const SNAT_TRIES: u32 = 4;

/// Addresses an SNAT pool may hold ([`ServiceMeta::snat_addrs`]; a power of two, so the
/// program can mask an index into it).
pub const SNAT_POOL_MAX: usize = 8;

/// Which of a service's `n` SNAT addresses a new flow with hash `hash` ([`flow_hash`]) gets:
/// the hash scaled into 0..n (multiply and shift, no division), so flows spread evenly over
/// the pool and a retransmitted SYN gets the same address. `n` 0 gives 0.
#[inline(always)]
pub const fn snat_pick(hash: u32, n: u32) -> u32 {
    ((hash as u64 * n as u64) >> 32) as u32
}

/// A flow's SNAT port and pool address as kept in [`FlowValue::snat_port`]: the port in the
/// low 16 bits, the address's index above them.
#[inline(always)]
pub const fn snat_port_with(port: u16, index: u32) -> u32 {
    port as u32 | (index << 16)
}

/// The pool index kept in a flow's `snat_port` ([`snat_port_with`]), masked into the pool.
#[inline(always)]
pub const fn snat_index(snat_port: u32) -> usize {
    (snat_port >> 16) as usize & (SNAT_POOL_MAX - 1)
}

/// The source port a new SNAT flow tries at attempt `i`: first the client's own (`sport`),
/// then alternatives in 1024..=65535 derived from the flow's hash (`flow_hash` with the
/// service's seed), so a retransmitted SYN tries the same ones.
#[inline(always)]
pub const fn snat_port_try(sport: u16, hash: u32, i: u32) -> u16 {
    if i == 0 {
        sport
    } else {
        (1024 + (hash.rotate_right(8 * i).wrapping_add(i) % 64512)) as u16
    }
}

/// One MurmurHash3 (x86, 32-bit) block step.
#[inline(always)]
const fn mix(h: u32, w: u32) -> u32 {
    let k = w
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]])
}

/// The flow hash that picks a Maglev slot: MurmurHash3 of the 5-tuple with the service's
/// seed, written out without loops (the kernel program computes it, and userspace can predict
/// it). Slot = `flow_hash(key, seed) % M`.
#[inline(always)]
pub const fn flow_hash(k: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, word(&k.saddr, 0));
    h = mix(h, word(&k.saddr, 4));
    h = mix(h, word(&k.saddr, 8));
    h = mix(h, word(&k.saddr, 12));
    h = mix(h, word(&k.daddr, 0));
    h = mix(h, word(&k.daddr, 4));
    h = mix(h, word(&k.daddr, 8));
    h = mix(h, word(&k.daddr, 12));
    h = mix(h, ((k.sport as u32) << 16) | k.dport as u32);
    h = mix(h, ((k.proto as u32) << 8) | k.family as u32);
    // Length, then the finaliser.
    h ^= 40;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
