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
use aya_ebpf::bindings::xdp_action;
use aya_ebpf::{
    bindings::{sockaddr, BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::{
        bpf_bind, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_socket_cookie,
        bpf_redirect,
    },
    macros::{cgroup_sock_addr, classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use wirelab_common::swarm::{derive_mac, stat, SwarmConfig, MODE_PROCESS, NUM_STATS};

use crate::parse::{self, Frame, ETH_HLEN, ETH_P_ARP, ETH_P_IP};

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

const AF_INET: u16 = 2;

#[inline(always)]
fn bump(idx: u32) {
    if let Some(c) = SWARM_STATS.get_ptr_mut(idx) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *c += 1 };
    }
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

/// The client address of the calling task, network order, if it has one.
#[inline(always)]
fn identity(ctx: &SockAddrContext, cfg: &SwarmConfig) -> Result<Option<u32>, ()> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    if let Some(ip) = unsafe { SWARM_SOCKS.get(cookie) } {
        return Ok(Some(*ip));
    }
    if cfg.mode != MODE_PROCESS {
        let cg = unsafe { bpf_get_current_cgroup_id() };
        return Ok(unsafe { SWARM_IDS.get(cg) }.copied());
    }
    let tgid = bpf_get_current_pid_tgid() >> 32;
    if let Some(ip) = unsafe { SWARM_IDS.get(tgid) } {
        return Ok(Some(*ip));
    }
    // First use by this process: claim the next free pool index. The claim is an insert with
    // BPF_NOEXIST into SWARM_CLAIMS, atomic in the kernel, so two processes never get the same
    // index; SWARM_NEXT is only a hint of where to start looking.
    let Some(next) = SWARM_NEXT.get_ptr_mut(0) else {
        return Err(());
    };
    let limit = if cfg.process_limit < cfg.pool_count {
        cfg.process_limit
    } else {
        cfg.pool_count
    };
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
        return Err(());
    }
    unsafe { *next = idx as u64 + 1 };
    let ip = (cfg.pool_first.wrapping_add(idx)).to_be();
    if SWARM_IDS.insert(tgid, ip, BPF_NOEXIST as u64).is_err() {
        // Another thread of the process won the race: give the index back, use its address.
        let _ = SWARM_CLAIMS.remove(idx);
        return Ok(unsafe { SWARM_IDS.get(tgid) }.copied());
    }
    bump(stat::ASSIGNED);
    Ok(Some(ip))
}

#[inline(always)]
fn is_loopback(ip_be: u32) -> bool {
    u32::from_be(ip_be) >> 24 == 127
}

#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

/// Returns 1 (allow) or 0 (refuse: process mode with the pool used up).
#[cgroup_sock_addr(connect4)]
pub fn swarm_connect4(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return 1;
    };
    let dst = unsafe { (*ctx.sock_addr).user_ip4 };
    if is_loopback(dst) {
        return 1;
    }
    let ip = match identity(&ctx, cfg) {
        Ok(Some(ip)) => ip,
        Ok(None) => return 1,
        Err(()) => return 0,
    };
    let mut sa = SockaddrIn {
        family: AF_INET,
        port: 0,
        addr: ip,
        zero: [0; 8],
    };
    let r = unsafe {
        bpf_bind(
            ctx.sock_addr,
            &mut sa as *mut SockaddrIn as *mut sockaddr,
            core::mem::size_of::<SockaddrIn>() as i32,
        )
    };
    bump(if r == 0 {
        stat::BIND_OK
    } else {
        stat::BIND_FAIL
    });
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn swarm_sendmsg4(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else {
        return 1;
    };
    let dst = unsafe { (*ctx.sock_addr).user_ip4 };
    if is_loopback(dst) {
        return 1;
    }
    match identity(&ctx, cfg) {
        Ok(Some(ip)) => {
            unsafe { (*ctx.sock_addr).msg_src_ip4 = ip };
            bump(stat::SENDMSG);
            1
        }
        Ok(None) => 1,
        Err(()) => 0,
    }
}

/// Accept frames addressed to client MACs: rewrite the destination to the interface's MAC.
#[xdp]
pub fn swarm_xdp(ctx: XdpContext) -> u32 {
    let _ = try_swarm_xdp(&ctx);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn try_swarm_xdp(ctx: &XdpContext) -> Result<(), ()> {
    let cfg = config().ok_or(())?;
    let f = Frame::new(ctx.data(), ctx.data_end());
    let p = f.ptr::<[u8; 6]>(0).map_err(|_| ())?;
    let dst = unsafe { core::ptr::read_unaligned(p) };
    if dst[0] != cfg.mac_prefix[0] || dst[1] != cfg.mac_prefix[1] {
        return Ok(());
    }
    if !in_pool(cfg, [dst[2], dst[3], dst[4], dst[5]]) {
        return Ok(());
    }
    unsafe { core::ptr::write_unaligned(p as *mut [u8; 6], cfg.iface_mac) };
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
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

impl Arp {
    /// Ethernet hardware, IPv4 protocol, 6- and 4-byte addresses.
    #[inline(always)]
    fn is_eth_ipv4(&self) -> bool {
        self.htype == [0, 1] && self.ptype == [0x08, 0x00] && self.hlen == 6 && self.plen == 4
    }
}

const ARP_LEN: usize = core::mem::size_of::<Arp>();

/// tc ingress: accept frames to client MACs; answer ARP requests for pool addresses with the
/// client MAC.
#[classifier]
pub fn swarm_arp(ctx: TcContext) -> i32 {
    try_swarm_arp(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

const PACKET_HOST: u32 = 0;
const PACKET_OTHERHOST: u32 = 3;

#[inline(always)]
fn try_swarm_arp(ctx: &TcContext) -> Result<i32, ()> {
    let cfg = config().ok_or(())?;
    // Frames to client MACs. XDP already rewrote the destination where it ran first, but a
    // veth classifies the frame (pkt_type) before its native XDP program runs, so the type is
    // fixed here; where XDP did not run (or saw another MAC) the rewrite happens here too.
    let dst: [u8; 6] = ctx.load(0).map_err(|_| ())?;
    let pkt_type = unsafe { (*ctx.skb.skb).pkt_type };
    if dst[0] == cfg.mac_prefix[0]
        && dst[1] == cfg.mac_prefix[1]
        && in_pool(cfg, [dst[2], dst[3], dst[4], dst[5]])
    {
        ctx.store(0, &cfg.iface_mac, 0).map_err(|_| ())?;
        let _ = ctx.change_type(PACKET_HOST);
        bump(stat::DMAC);
        return Ok(TC_ACT_UNSPEC);
    }
    if dst == cfg.iface_mac && pkt_type == PACKET_OTHERHOST {
        let _ = ctx.change_type(PACKET_HOST);
        return Ok(TC_ACT_UNSPEC);
    }
    let f = Frame::new(ctx.data(), ctx.data_end());
    // ARP inside VLAN-0 (priority) tags is ARP of the untagged network: the kernel pops those
    // tags and would answer the request itself, with the host's MAC. A tag the kernel already
    // took into the skb's metadata stays there, so the reply leaves tagged as the request
    // came. A tag with a VLAN ID is another network: left to the kernel (which drops it
    // without a VLAN device).
    let p = parse::parse(&f).map_err(|_| ())?;
    let meta_vid = unsafe { (*ctx.skb.skb).vlan_tci } & 0x0fff;
    if p.ethertype != ETH_P_ARP || p.arp_op != 1 || p.vlan_id_set || meta_vid != 0 {
        return Ok(TC_ACT_UNSPEC);
    }
    let mut a: Arp = ctx.load(p.l3_off).map_err(|_| ())?;
    if !a.is_eth_ipv4() || !in_pool(cfg, a.tpa) {
        return Ok(TC_ACT_UNSPEC);
    }
    let eth_src: [u8; 6] = ctx.load(6).map_err(|_| ())?;
    let mac = derive_mac(cfg.mac_prefix, a.tpa);
    let (req_mac, req_ip) = (a.sha, a.spa);
    a.op = [0, 2];
    a.tha = req_mac;
    a.tpa = req_ip;
    a.sha = mac;
    a.spa = {
        let t = p.daddr;
        [t[0], t[1], t[2], t[3]]
    };
    // Ethernet addresses (swapped, the client MAC as source); VLAN tags stay as they are.
    let mut addrs = [0u8; 12];
    addrs[..6].copy_from_slice(&eth_src);
    addrs[6..].copy_from_slice(&mac);
    ctx.store(0, &addrs, 0).map_err(|_| ())?;
    ctx.store(p.l3_off, &a, 0).map_err(|_| ())?;
    bump(stat::ARP_REPLY);
    // Out of the interface it came in on, through the regular transmit path.
    let r = unsafe { bpf_redirect(cfg.ifindex, 0) };
    Ok(r as i32)
}

/// Give frames from pool addresses the client MAC as source (tc egress).
#[classifier]
pub fn swarm_egress(ctx: TcContext) -> i32 {
    let _ = try_swarm_egress(&ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn try_swarm_egress(ctx: &TcContext) -> Result<(), ()> {
    let cfg = config().ok_or(())?;
    let f = Frame::new(ctx.data(), ctx.data_end());
    let et = f.be16_at(12).map_err(|_| ())?;
    if et == ETH_P_IP {
        let src = f.raw32_at(ETH_HLEN + 12).map_err(|_| ())?;
        if in_pool(cfg, src) {
            let mac = derive_mac(cfg.mac_prefix, src);
            ctx.store(6, &mac, 0).map_err(|_| ())?;
            bump(stat::SMAC);
        }
    } else if et == ETH_P_ARP {
        let a: Arp = ctx.load(ETH_HLEN).map_err(|_| ())?;
        if !a.is_eth_ipv4() {
            return Ok(());
        }
        if in_pool(cfg, a.spa) {
            let mac = derive_mac(cfg.mac_prefix, a.spa);
            ctx.store(6, &mac, 0).map_err(|_| ())?;
            ctx.store(ETH_HLEN + 8, &mac, 0).map_err(|_| ())?;
            bump(stat::SMAC);
        }
    }
    Ok(())
}

const _: () = assert!(ARP_LEN == 28);
