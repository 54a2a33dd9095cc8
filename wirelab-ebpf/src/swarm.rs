//! `swarm`: make one host look like many client machines.
//!
//! - `swarm_connect4` (cgroup/connect4): binds the socket to the caller's client address with
//!   port 0 (the kernel picks the port at connect time), so TCP and connected UDP leave from it.
//! - `swarm_sendmsg4` (cgroup/sendmsg4): sets the source address of unconnected UDP sends.
//! - `swarm_xdp` (XDP, ingress): frames addressed to a client MAC get the interface's own MAC
//!   as destination, so the stack does not drop them as PACKET_OTHERHOST.
//! - `swarm_arp` (tc ingress): frames to client MACs are marked PACKET_HOST (a veth sets the
//!   packet type before its XDP program runs); ARP requests for pool addresses are turned into replies carrying
//!   the client MAC and sent back out of the same interface with `bpf_redirect` (this goes
//!   through the normal transmit path, so a plain veth peer receives it, unlike XDP_TX).
//! - `swarm_egress` (tc egress): frames from pool addresses get the client MAC as source,
//!   including the sender hardware address of the kernel's own ARP packets.
//!
//! Who is which client: socket cookie first (`swarm connect` maps each socket it opens), then
//! the cgroup id (cgroup mode) or the TGID (process mode, handed out on first use).
use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::bpf_get_current_pid_tgid,
    macros::{cgroup_sock_addr, classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use wirelab_common::swarm::{derive_mac, stat, SwarmConfig, MODE_PROCESS, NUM_STATS};

use crate::{
    counter,
    error::{Error, Result},
    parse::{
        self, Frame, ARPHRD_ETHER, ARPOP_REPLY, ARPOP_REQUEST, ARP_SHA_OFF, ETH_ALEN, ETH_DEST_OFF,
        ETH_HLEN, ETH_PROTO_OFF, ETH_P_ARP, ETH_P_IP, ETH_SOURCE_OFF, IPV4_ALEN, IPV4_SADDR_OFF,
        VLAN_VID_MASK,
    },
    sys,
};

#[map]
static SWARM_CONFIG: Array<SwarmConfig> = Array::with_max_entries(1, 0);

/// cgroup id (cgroup mode) or TGID (process mode) -> client address (network order).
#[map]
static SWARM_IDS: HashMap<u64, u32> = HashMap::with_max_entries(1 << 17, 0);

/// socket cookie -> client address (network order), filled by `swarm connect` per socket.
#[map]
static SWARM_SOCKS: HashMap<u64, u32> = HashMap::with_max_entries(1 << 17, 0);

/// Process mode: pool index -> TGID that claimed it.
#[map]
static SWARM_CLAIMS: HashMap<u32, u64> = HashMap::with_max_entries(1 << 17, 0);

/// How many indices one connect tries before giving up (contention between processes).
const MAX_CLAIM_TRIES: u32 = 64;

/// Process mode: where the next claim starts looking (entry 0; a hint, not a lock).
#[map]
static SWARM_NEXT: Array<u64> = Array::with_max_entries(1, 0);

#[map]
static SWARM_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_STATS, 0);

/// What a cgroup sock_addr program returns: let the call proceed, or fail it with EPERM.
const SOCK_ALLOW: i32 = 1;
const SOCK_REFUSE: i32 = 0;

/// `skb->pkt_type` values (`PACKET_*` in linux/if_packet.h).
const PACKET_HOST: u32 = 0;
const PACKET_OTHERHOST: u32 = 3;

/// 127.0.0.0/8, the loopback network, by its first octet.
const LOOPBACK_NET: u32 = 127;

#[inline(always)]
fn bump(idx: u32) {
    counter::bump(&SWARM_STATS, idx);
}

#[inline(always)]
fn config() -> Option<&'static SwarmConfig> {
    SWARM_CONFIG.get(0)
}

/// Is `ip` (network order bytes) one of the pool's addresses?
#[inline(always)]
fn in_pool(cfg: &SwarmConfig, ip: [u8; 4]) -> bool {
    u32::from_be_bytes(ip).wrapping_sub(cfg.pool_first) < cfg.pool_count
}

/// Is `mac` a client MAC: the configured prefix, then an address of the pool?
#[inline(always)]
fn is_client_mac(cfg: &SwarmConfig, mac: &[u8; ETH_ALEN]) -> bool {
    mac[0] == cfg.mac_prefix[0]
        && mac[1] == cfg.mac_prefix[1]
        && in_pool(cfg, [mac[2], mac[3], mac[4], mac[5]])
}

/// The client address of the calling task, network order, if it has one. `Err` refuses the
/// call: `Map` (no `SWARM_NEXT` entry) or `Exhausted` (process mode, pool used up).
#[inline(always)]
fn identity(ctx: &SockAddrContext, cfg: &SwarmConfig) -> Result<Option<u32>> {
    // The address maps hold `u32`s (one word each, as `sys::hash_get` asks).
    if let Some(ip) = sys::hash_get(&SWARM_SOCKS, sys::socket_cookie(ctx)) {
        return Ok(Some(ip));
    }
    if cfg.mode != MODE_PROCESS {
        return Ok(sys::hash_get(&SWARM_IDS, sys::current_cgroup_id()));
    }
    let tgid = bpf_get_current_pid_tgid() >> 32;
    if let Some(ip) = sys::hash_get(&SWARM_IDS, tgid) {
        return Ok(Some(ip));
    }
    // First use by this process: claim the next free pool index. The claim is an insert with
    // BPF_NOEXIST into SWARM_CLAIMS, atomic in the kernel, so two processes never get the same
    // index; SWARM_NEXT is only a hint of where to start looking.
    let Some(next) = SWARM_NEXT.get_ptr_mut(0) else {
        return Err(Error::Map);
    };
    let limit = if cfg.process_limit < cfg.pool_count {
        cfg.process_limit
    } else {
        cfg.pool_count
    };
    // SAFETY: `next` points to entry 0 of an array map, aligned and allocated for the map's
    // lifetime. Other CPUs may write it meanwhile: it is a plain word read whole, and only a
    // hint (the claim below is what is atomic).
    let mut idx = unsafe { *next } as u32;
    let mut claimed = false;
    for _ in 0..MAX_CLAIM_TRIES {
        if idx >= limit {
            break;
        }
        if SWARM_CLAIMS.insert(idx, tgid, BPF_NOEXIST as u64).is_ok() {
            claimed = true;
            break;
        }
        idx += 1;
    }
    if !claimed {
        bump(stat::EXHAUSTED);
        return Err(Error::Exhausted);
    }
    // SAFETY: as for the read above; a concurrent writer's hint may win, which only moves
    // where the next claim starts looking.
    unsafe { *next = idx as u64 + 1 };
    let ip = (cfg.pool_first.wrapping_add(idx)).to_be();
    if SWARM_IDS.insert(tgid, ip, BPF_NOEXIST as u64).is_err() {
        // Another thread of the process won the race: give the index back, use its address.
        let _ = SWARM_CLAIMS.remove(idx);
        return Ok(sys::hash_get(&SWARM_IDS, tgid));
    }
    bump(stat::ASSIGNED);
    Ok(Some(ip))
}

#[inline(always)]
fn is_loopback(ip_be: u32) -> bool {
    u32::from_be(ip_be) >> 24 == LOOPBACK_NET
}

/// Returns `SOCK_ALLOW`, or `SOCK_REFUSE` when `identity` fails (process mode with the pool
/// used up).
#[cgroup_sock_addr(connect4)]
pub fn swarm_connect4(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return SOCK_ALLOW;
    };
    if is_loopback(sys::sock_user_ip4(&ctx)) {
        return SOCK_ALLOW;
    }
    let ip = match identity(&ctx, cfg) {
        Ok(Some(ip)) => ip,
        Ok(None) => return SOCK_ALLOW,
        Err(_) => return SOCK_REFUSE,
    };
    let r = sys::bind4(&ctx, ip);
    bump(if r == 0 {
        stat::BIND_OK
    } else {
        stat::BIND_FAIL
    });
    SOCK_ALLOW
}

/// Returns `SOCK_ALLOW`, or `SOCK_REFUSE` when `identity` fails, as `swarm_connect4`.
#[cgroup_sock_addr(sendmsg4)]
pub fn swarm_sendmsg4(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return SOCK_ALLOW;
    };
    if is_loopback(sys::sock_user_ip4(&ctx)) {
        return SOCK_ALLOW;
    }
    match identity(&ctx, cfg) {
        Ok(Some(ip)) => {
            sys::sock_set_msg_src_ip4(&ctx, ip);
            bump(stat::SENDMSG);
            SOCK_ALLOW
        }
        Ok(None) => SOCK_ALLOW,
        Err(_) => SOCK_REFUSE,
    }
}

/// Accept frames addressed to client MACs: rewrite the destination to the interface's MAC.
#[xdp]
pub fn swarm_xdp(ctx: XdpContext) -> u32 {
    let _ = try_swarm_xdp(&ctx);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn try_swarm_xdp(ctx: &XdpContext) -> Result<()> {
    let cfg = config().ok_or(Error::Map)?;
    let f = Frame::xdp(ctx);
    let dst = f.at::<[u8; ETH_ALEN]>(ETH_DEST_OFF)?;
    if !is_client_mac(cfg, &dst.get()) {
        return Ok(());
    }
    dst.set(cfg.iface_mac);
    bump(stat::DMAC);
    Ok(())
}

/// ARP for IPv4 over Ethernet, as on the wire (after the Ethernet header and any VLAN tags).
#[repr(C)]
#[derive(Clone, Copy)]
struct Arp {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    op: [u8; 2],
    sha: [u8; ETH_ALEN],
    spa: [u8; IPV4_ALEN],
    tha: [u8; ETH_ALEN],
    tpa: [u8; IPV4_ALEN],
}

impl Arp {
    /// Ethernet hardware, IPv4 protocol, 6- and 4-byte addresses.
    #[inline(always)]
    fn is_eth_ipv4(&self) -> bool {
        self.htype == ARPHRD_ETHER.to_be_bytes()
            && self.ptype == ETH_P_IP.to_be_bytes()
            && self.hlen as usize == ETH_ALEN
            && self.plen as usize == IPV4_ALEN
    }
}

const ARP_LEN: usize = core::mem::size_of::<Arp>();

/// `bpf_skb_load_bytes` of a `T` at `off` (any part of the packet, linear or not).
#[inline(always)]
fn skb_load<T>(ctx: &TcContext, off: usize) -> Result<T> {
    ctx.load(off).map_err(|_| Error::Skb)
}

/// `bpf_skb_store_bytes` of `v` at `off`.
#[inline(always)]
fn skb_store<T>(ctx: &TcContext, off: usize, v: &T) -> Result<()> {
    ctx.store(off, v, 0).map_err(|_| Error::Skb)
}

/// tc ingress: accept frames to client MACs; answer ARP requests for pool addresses with the
/// client MAC. Anything it cannot read or write goes on unchanged (`TC_ACT_UNSPEC`).
#[classifier]
pub fn swarm_arp(ctx: TcContext) -> i32 {
    try_swarm_arp(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

#[inline(always)]
fn try_swarm_arp(ctx: &TcContext) -> Result<i32> {
    let cfg = config().ok_or(Error::Map)?;
    // Frames to client MACs. XDP already rewrote the destination where it ran first, but a
    // veth classifies the frame (pkt_type) before its native XDP program runs, so the type is
    // fixed here; where XDP did not run (or saw another MAC) the rewrite happens here too.
    let dst: [u8; ETH_ALEN] = skb_load(ctx, ETH_DEST_OFF)?;
    let pkt_type = sys::skb_pkt_type(ctx);
    if is_client_mac(cfg, &dst) {
        skb_store(ctx, ETH_DEST_OFF, &cfg.iface_mac)?;
        let _ = ctx.change_type(PACKET_HOST);
        bump(stat::DMAC);
        return Ok(TC_ACT_UNSPEC);
    }
    if dst == cfg.iface_mac && pkt_type == PACKET_OTHERHOST {
        let _ = ctx.change_type(PACKET_HOST);
        return Ok(TC_ACT_UNSPEC);
    }
    let f = Frame::tc(ctx);
    // ARP inside VLAN-0 (priority) tags is ARP of the untagged network: the kernel pops those
    // tags and would answer the request itself, with the host's MAC. A tag the kernel already
    // took into the skb's metadata stays there, so the reply leaves tagged as the request
    // came. A tag with a VLAN ID is another network: left to the kernel (which drops it
    // without a VLAN device).
    let Ok(p) = parse::parse_arp_only(&f) else {
        // Not parseable, so not an ARP request this program answers: the kernel's business.
        return Ok(TC_ACT_UNSPEC);
    };
    let meta_vid = sys::skb_vlan_tci(ctx) & VLAN_VID_MASK as u32;
    if p.ethertype != ETH_P_ARP || p.arp_op != ARPOP_REQUEST || p.vlan_id_set || meta_vid != 0 {
        return Ok(TC_ACT_UNSPEC);
    }
    let mut a: Arp = skb_load(ctx, p.l3_off)?;
    if !a.is_eth_ipv4() || !in_pool(cfg, a.tpa) {
        return Ok(TC_ACT_UNSPEC);
    }
    let eth_src: [u8; ETH_ALEN] = skb_load(ctx, ETH_SOURCE_OFF)?;
    let mac = derive_mac(cfg.mac_prefix, a.tpa);
    let (req_mac, req_ip) = (a.sha, a.spa);
    a.op = ARPOP_REPLY.to_be_bytes();
    a.tha = req_mac;
    a.tpa = req_ip;
    a.sha = mac;
    a.spa = {
        let t = p.daddr;
        [t[0], t[1], t[2], t[3]]
    };
    // Ethernet addresses (swapped, the client MAC as source); VLAN tags stay as they are.
    let mut addrs = [0u8; 2 * ETH_ALEN];
    addrs[..ETH_ALEN].copy_from_slice(&eth_src);
    addrs[ETH_ALEN..].copy_from_slice(&mac);
    skb_store(ctx, ETH_DEST_OFF, &addrs)?;
    skb_store(ctx, p.l3_off, &a)?;
    bump(stat::ARP_REPLY);
    // Out of the interface it came in on, through the regular transmit path.
    Ok(sys::redirect(cfg.ifindex))
}

/// Give frames from pool addresses the client MAC as source (tc egress).
#[classifier]
pub fn swarm_egress(ctx: TcContext) -> i32 {
    let _ = try_swarm_egress(&ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn try_swarm_egress(ctx: &TcContext) -> Result<()> {
    let cfg = config().ok_or(Error::Map)?;
    let f = Frame::tc(ctx);
    let et = f.be16_at(ETH_PROTO_OFF)?;
    if et == ETH_P_IP {
        let src = f.raw32_at(ETH_HLEN + IPV4_SADDR_OFF)?;
        if in_pool(cfg, src) {
            let mac = derive_mac(cfg.mac_prefix, src);
            skb_store(ctx, ETH_SOURCE_OFF, &mac)?;
            bump(stat::SMAC);
        }
    } else if et == ETH_P_ARP {
        let a: Arp = skb_load(ctx, ETH_HLEN)?;
        if !a.is_eth_ipv4() {
            return Ok(());
        }
        if in_pool(cfg, a.spa) {
            let mac = derive_mac(cfg.mac_prefix, a.spa);
            skb_store(ctx, ETH_SOURCE_OFF, &mac)?;
            skb_store(ctx, ETH_HLEN + ARP_SHA_OFF, &mac)?;
            bump(stat::SMAC);
        }
    }
    Ok(())
}

const _: () = assert!(ARP_LEN == 28);
