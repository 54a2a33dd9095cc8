//! `lb`: an L4 load balancer (tc ingress) with Maglev hashing, connection tracking and
//! direct server return.
//!
//! Two entry points share one decision ([`balance`]): `lb` (tc ingress, the default, which
//! works with any peer) and `lb_xdp` (XDP, `XDP_TX`). Packet path: parse (the shared defensive parser) → not IP: pass (`NON_IP`) → not a
//! VIP:port/proto: pass (`NON_VIP`) → a fragment to a VIP address: drop (`DROP_FRAGMENT`) →
//! VIP hit: a tracked flow keeps its backend (unless the backend is down); a TCP SYN (without
//! ACK) or a miss hashes afresh through the service's Maglev table in the generation in force
//! and enters the flow in the LRU table → DSR: destination MAC = the backend's, source MAC =
//! the interface's, and back out of the same interface (tc: `bpf_redirect`, the normal
//! transmit path, so a plain veth peer receives it; XDP: `XDP_TX`).
//!
//! FIN and RST are forwarded along the tracked flow and marked in its entry (`tcp_flags`);
//! the entry is left to age out of the LRU table (a new SYN on the same tuple hashes afresh
//! anyway). Frames the parser cannot see through are passed to the stack (`MALFORMED`),
//! which judges them as it would without the balancer.
use core::num::NonZeroU32;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use wirelab_common::lb::{
    backend_flag, event, flow_hash, Backend, FlowKey, FlowValue, LbConf, LbCounter, ServiceMeta,
    VipKey, FAMILY_IPV4, FAMILY_IPV6, MAX_BACKENDS, MAX_FLOWS, MAX_SERVICES, MAX_TABLE_SIZE,
    TABLE_ENTRIES,
};

use crate::{
    counter,
    error::{Error, Result},
    parse::{
        self, Frame, ETH_DEST_OFF, ETH_P_IP, ETH_P_IPV6, ETH_SOURCE_OFF, IPPROTO_TCP, IPPROTO_UDP,
    },
    sys,
};

#[map]
static LB_CONF: Array<LbConf> = Array::with_max_entries(1, 0);
#[map]
static LB_GEN: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static LB_VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(2 * MAX_SERVICES, 0);
#[map]
static LB_SERVICES: Array<ServiceMeta> = Array::with_max_entries(2 * MAX_SERVICES, 0);
#[map]
static LB_BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);
#[map]
static LB_TABLE: Array<u32> = Array::with_max_entries(TABLE_ENTRIES, 0);
#[map]
static LB_FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
static LB_SVC_STATS: PerCpuArray<LbCounter> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);
#[map]
static LB_BACKEND_STATS: PerCpuArray<LbCounter> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);
#[map]
static LB_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event::COUNT, 0);

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// What the balancer decided; each entry point turns it into its own verdict.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// On to the stack (tc: the next program).
    Pass,
    Drop,
    /// MACs rewritten: send back out of the interface it came in on.
    Forward,
}

/// The tc path: `bpf_redirect` to the interface's own egress goes through the normal
/// transmit path, so a plain veth peer receives it.
#[classifier]
pub fn lb(ctx: TcContext) -> i32 {
    // The parser needs the whole IP packet in the linear area: pull the rest in when the skb
    // is not linear (large segments); if that fails, the parse says `Truncated`.
    let skb_len = ctx.len();
    if (Frame::tc(&ctx).len() as u32) < skb_len {
        let _ = ctx.pull_data(skb_len);
    }
    match balance(&Frame::tc(&ctx), skb_len as u64) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Forward => sys::redirect(sys::skb_ifindex(&ctx)),
    }
}

/// The XDP path: `XDP_TX`. Into a veth, the peer receives it only if it runs NAPI (an XDP
/// program or GRO on the peer): see docs/lb.md.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let f = Frame::xdp(&ctx);
    match balance(&f, f.len() as u64) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Forward => xdp_action::XDP_TX,
    }
}

#[inline(always)]
fn balance(f: &Frame, len: u64) -> Verdict {
    // Only a VIP packet that could not be forwarded gets an `Err` (a missing map entry): it
    // is counted and dropped, since the balancer host does not hold the VIP itself.
    try_balance(f, len).unwrap_or_else(|_| {
        counter::bump(&LB_EVENTS, event::DROP_ERROR);
        Verdict::Drop
    })
}

/// Count a drop of service `svc`'s packet by `reason`.
#[inline(always)]
fn drop_svc(svc: u32, reason: u32) -> Verdict {
    counter::bump(&LB_EVENTS, reason);
    counter::update(&LB_SVC_STATS, svc, |c| c.drops += 1);
    Verdict::Drop
}

#[inline(always)]
fn try_balance(f: &Frame, len: u64) -> Result<Verdict> {
    let Ok(p) = parse::parse(f) else {
        counter::bump(&LB_EVENTS, event::MALFORMED);
        return Ok(Verdict::Pass);
    };
    let family = match p.ethertype {
        ETH_P_IP => FAMILY_IPV4,
        ETH_P_IPV6 => FAMILY_IPV6,
        _ => {
            counter::bump(&LB_EVENTS, event::NON_IP);
            return Ok(Verdict::Pass);
        }
    };
    if p.fragment {
        // Ports are only in the first fragment: look the address up through its marker.
        let mark = VipKey {
            addr: p.daddr,
            port: 0,
            proto: 0,
            family,
        };
        if sys::hash_get(&LB_VIPS, mark).is_some() {
            counter::bump(&LB_EVENTS, event::DROP_FRAGMENT);
            return Ok(Verdict::Drop);
        }
        counter::bump(&LB_EVENTS, event::NON_VIP);
        return Ok(Verdict::Pass);
    }
    let l4 = p.has_l4 && (p.ip_proto == IPPROTO_TCP || p.ip_proto == IPPROTO_UDP);
    let vip = VipKey {
        addr: p.daddr,
        port: p.dport,
        proto: p.ip_proto,
        family,
    };
    let svc = if l4 {
        sys::hash_get(&LB_VIPS, vip)
    } else {
        None
    };
    let Some(svc) = svc.filter(|s| *s < MAX_SERVICES) else {
        counter::bump(&LB_EVENTS, event::NON_VIP);
        return Ok(Verdict::Pass);
    };
    if p.ip_options {
        counter::bump(&LB_EVENTS, event::IP_OPTIONS);
    }
    let gen = LB_GEN.get(0).copied().ok_or(Error::Map)? & 1;
    let meta = *LB_SERVICES
        .get(gen * MAX_SERVICES + svc)
        .ok_or(Error::Map)?;
    let conf = *LB_CONF.get(0).ok_or(Error::Map)?;
    // References all along: by-value copies of the key and values cost stack.
    let key = &FlowKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.ip_proto,
        family,
        _pad: [0; 2],
    };
    let flags = if p.ip_proto == IPPROTO_TCP {
        p.tcp_flags
    } else {
        0
    };
    let syn = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;

    // A tracked flow keeps its backend while that backend is up.
    let mut chosen: Option<(u32, Backend)> = None;
    if !syn {
        if let Some(v) = sys::lru_get(&LB_FLOWS, key) {
            let be = *LB_BACKENDS
                .get(v.backend % MAX_BACKENDS)
                .ok_or(Error::Map)?;
            if v.backend < MAX_BACKENDS && be.flags & backend_flag::UP != 0 {
                if flags & (TCP_FIN | TCP_RST) != 0 && v.tcp_flags & flags as u32 == 0 {
                    let nv = &FlowValue {
                        tcp_flags: v.tcp_flags | flags as u32,
                        ..v
                    };
                    let _ = LB_FLOWS.insert(key, nv, 0);
                }
                chosen = Some((v.backend, be));
            } else {
                counter::bump(&LB_EVENTS, event::REHASHED);
            }
        }
    }
    let mut new_flow = false;
    let (id, be) = match chosen {
        Some(c) => c,
        None => {
            // A SYN or a miss: hash afresh through the table in force.
            let Some(m) = NonZeroU32::new(meta.table_size) else {
                return Ok(drop_svc(svc, event::DROP_NO_BACKEND));
            };
            if meta.active == 0 || meta.table_size > MAX_TABLE_SIZE {
                return Ok(drop_svc(svc, event::DROP_NO_BACKEND));
            }
            let slot = flow_hash(key, meta.hash_seed) % m;
            let id = *LB_TABLE
                .get((gen * MAX_SERVICES + svc) * MAX_TABLE_SIZE + slot)
                .ok_or(Error::Map)?;
            if id >= MAX_BACKENDS {
                return Ok(drop_svc(svc, event::DROP_NO_BACKEND));
            }
            let be = *LB_BACKENDS.get(id).ok_or(Error::Map)?;
            if be.flags & backend_flag::UP == 0 {
                return Ok(drop_svc(svc, event::DROP_NO_BACKEND));
            }
            let v = &FlowValue {
                backend: id,
                service: svc,
                created_ns: sys::now_ns(),
                tcp_flags: flags as u32,
                _pad: 0,
            };
            // A full table evicts the least recently used flow; a failed insert only means
            // the next packet of the flow hashes again (to the same slot).
            let _ = LB_FLOWS.insert(key, v, 0);
            new_flow = true;
            (id, be)
        }
    };
    // DSR: the frame goes to the backend's MAC, from ours, out of the same interface.
    f.store(ETH_DEST_OFF, be.mac)?;
    f.store(ETH_SOURCE_OFF, conf.iface_mac)?;
    let bytes = len;
    let bump = |c: &mut LbCounter| {
        c.packets += 1;
        c.bytes += bytes;
        if new_flow {
            c.new_flows += 1;
        }
    };
    counter::update(&LB_SVC_STATS, svc, bump);
    counter::update(&LB_BACKEND_STATS, id, bump);
    counter::bump(&LB_EVENTS, event::FORWARDED);
    Ok(Verdict::Forward)
}
