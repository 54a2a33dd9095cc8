//! `wan`: the kernel half of the WAN emulator.
//!
//! `wan_xdp` runs on both interfaces. Per frame it classifies (exact-address hash and LPM class
//! tables), counts, applies
//! the blackhole schedule and the loss model, then either
//! - passes the frame on (`XDP_PASS`) to `wan_fwd`, a tc ingress program that redirects it to
//!   the other interface's egress (the in-kernel fast path, for classes with nothing to hold), or
//! - hands it to the userspace timing engine through an AF_XDP socket (XSKMAP), with the class
//!   id in the XDP metadata, for classes that delay, rate-limit, duplicate, corrupt or reorder.
use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_xdp_adjust_meta},
    macros::{classifier, map, xdp},
    maps::lpm_trie::Key,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, XskMap},
    programs::{TcContext, XdpContext},
};
use wirelab_common::wan::{
    loss_step, ClassKey, KernelProfile, LossState, Meta, WanConfig, WanCounters, CLASSES_HOSTS,
    CLASSES_PREFIXES, CLASS_KEY_FIXED_BITS, META_MAGIC, PROFILE_FAST,
};

use crate::parse::{self, Frame, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP};

/// Default sizes; userspace resizes the per-class maps to the configured class count.
const DEFAULT_CLASSES: u32 = 1;

#[map]
static WAN_CONFIG: Array<WanConfig> = Array::with_max_entries(1, 0);

/// Index: (gen * 2 + dir) * max_classes + class.
#[map]
static WAN_PROFILES: Array<KernelProfile> = Array::with_max_entries(4 * DEFAULT_CLASSES, 0);

/// Index: dir * max_classes + class.
#[map]
static WAN_LOSS: Array<LossState> = Array::with_max_entries(2 * DEFAULT_CLASSES, 0);

#[map]
static WAN_COUNTERS: PerCpuArray<WanCounters> =
    PerCpuArray::with_max_entries(2 * DEFAULT_CLASSES, 0);

/// Single-address classes (/32, /128): exact key, value = class id.
#[map]
static WAN_CLASS_HOSTS: HashMap<ClassKey, u32> = HashMap::with_max_entries(1, 0);

/// Prefix classes; value = class id. BPF_F_NO_PREALLOC (required for LPM tries).
#[map]
static WAN_CLASSES: LpmTrie<ClassKey, u32> = LpmTrie::with_max_entries(1, 1);

/// Key = direction (the socket bound to the interface the frame arrived on).
#[map]
static WAN_XSKS: XskMap = XskMap::with_max_entries(2, 0);

#[xdp]
pub fn wan_xdp(ctx: XdpContext) -> u32 {
    match try_wan_xdp(&ctx) {
        Ok(a) => a,
        // Only map lookups can fail here (never in a configured emulator): keep traffic moving.
        Err(()) => xdp_action::XDP_PASS,
    }
}

/// One (side, proto, port) tier: the exact-address table first (an exact match is the longest
/// prefix anyway), then the trie; each only when it holds entries.
#[inline(always)]
fn lookup_class(key: &mut Key<ClassKey>, tables: u32) -> Option<u32> {
    if tables & CLASSES_HOSTS != 0 {
        if let Some(c) = unsafe { WAN_CLASS_HOSTS.get(key.data) } {
            return Some(*c);
        }
    }
    if tables & CLASSES_PREFIXES != 0 {
        key.prefix_len = CLASS_KEY_FIXED_BITS + 128;
        return WAN_CLASSES.get(&*key).copied();
    }
    None
}

/// Class of a frame: B-side address first, then A-side; within a side (proto, port),
/// (proto, any port), (any) — constant work however many classes exist.
#[inline(always)]
fn classify(f: &Frame, dir: u32, tables: u32) -> u32 {
    if tables == 0 {
        return 0;
    }
    let Ok(p) = parse::parse(f) else {
        return 0;
    };
    let mut addr = [0u8; 16];
    let mut other = [0u8; 16];
    let v4 = p.ethertype == ETH_P_IP;
    if !v4 && p.ethertype != ETH_P_IPV6 {
        return 0;
    }
    // B-side address: destination for A->B frames, source for B->A.
    let (b, a) = if dir == 0 {
        (&p.daddr, &p.saddr)
    } else {
        (&p.saddr, &p.daddr)
    };
    let bport = if dir == 0 { p.dport } else { p.sport };
    let aport = if dir == 0 { p.sport } else { p.dport };
    if v4 {
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..16].copy_from_slice(&b[..4]);
        other[10] = 0xff;
        other[11] = 0xff;
        other[12..16].copy_from_slice(&a[..4]);
    } else {
        addr = *b;
        other = *a;
    }
    let has_ports = p.has_l4 && (p.ip_proto == IPPROTO_TCP || p.ip_proto == IPPROTO_UDP);
    let mut key = Key::new(
        0,
        ClassKey {
            side: 0,
            proto: 0,
            port: [0; 2],
            addr,
        },
    );
    for side in 0..2u8 {
        key.data.side = side;
        if side == 1 {
            key.data.addr = other;
        }
        let port = if side == 0 { bport } else { aport };
        if has_ports {
            key.data.proto = p.ip_proto;
            key.data.port = port.to_be_bytes();
            if let Some(c) = lookup_class(&mut key, tables) {
                return c;
            }
        }
        key.data.proto = p.ip_proto;
        key.data.port = [0; 2];
        if let Some(c) = lookup_class(&mut key, tables) {
            return c;
        }
        key.data.proto = 0;
        if let Some(c) = lookup_class(&mut key, tables) {
            return c;
        }
    }
    0
}

#[inline(always)]
fn try_wan_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let cfg = WAN_CONFIG.get(0).ok_or(())?;
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let dir = if ifindex == cfg.ifindex[0] {
        0u32
    } else {
        1u32
    };
    let f = Frame::new(ctx.data(), ctx.data_end());
    let len = f.len() as u64;
    let max = cfg.max_classes;
    let mut class = classify(&f, dir, cfg.class_tables);
    if class >= max {
        class = 0;
    }
    let idx = dir * max + class;
    let gen = cfg.gen & 1;
    let prof: &KernelProfile = WAN_PROFILES.get((gen * 2 + dir) * max + class).ok_or(())?;
    let cnt = WAN_COUNTERS.get_ptr_mut(idx).ok_or(())?;
    let cnt = unsafe { &mut *cnt };
    cnt.rx_packets += 1;
    cnt.rx_bytes += len;

    if prof.period_ns != 0 && prof.blackhole_ns != 0 {
        let now = unsafe { bpf_ktime_get_ns() };
        let t = now.wrapping_sub(cfg.epoch_ns) % prof.period_ns;
        if t >= prof.period_ns - prof.blackhole_ns {
            cnt.blackhole_drops += 1;
            return Ok(xdp_action::XDP_DROP);
        }
    }
    if prof.loss_kind != 0 {
        let st = WAN_LOSS.get_ptr_mut(idx).ok_or(())?;
        // One writer per direction: XDP on a device's queue runs on one CPU at a time.
        if loss_step(prof, unsafe { &mut *st }) {
            cnt.loss_drops += 1;
            return Ok(xdp_action::XDP_DROP);
        }
    }
    if prof.flags & PROFILE_FAST != 0 {
        cnt.fast_packets += 1;
        return Ok(xdp_action::XDP_PASS);
    }
    // The engine's sockets are bound to queue 0: frames that arrive on other queues (multi-queue
    // NICs) cannot reach them and go the fast path unimpaired, counted as fallback.
    if ctx.rx_queue_index() != 0 {
        cnt.xsk_fallback += 1;
        return Ok(xdp_action::XDP_PASS);
    }
    // Tell the engine the class: 8 bytes of metadata in front of the frame. Without it the
    // engine could not tell the class: then the frame goes the fast path, counted.
    let mut tagged = false;
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(core::mem::size_of::<Meta>() as i32)) } == 0 {
        let meta = ctx.metadata();
        let data = ctx.data();
        if meta + core::mem::size_of::<Meta>() <= data {
            let m = meta as *mut Meta;
            unsafe {
                (*m).magic = META_MAGIC;
                (*m).class = class;
            }
            tagged = true;
        }
    }
    if !tagged {
        cnt.xsk_fallback += 1;
        return Ok(xdp_action::XDP_PASS);
    }
    match WAN_XSKS.redirect(dir, 0) {
        Ok(a) => {
            cnt.xsk_packets += 1;
            Ok(a)
        }
        Err(_) => {
            cnt.xsk_fallback += 1;
            Ok(xdp_action::XDP_PASS)
        }
    }
}

/// The fast path: whatever `wan_xdp` passed goes out of the other interface, through its
/// normal transmit path (so plain veth peers receive it).
#[classifier]
pub fn wan_fwd(ctx: TcContext) -> i32 {
    let Some(cfg) = WAN_CONFIG.get(0) else {
        return TC_ACT_OK;
    };
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let out = if ifindex == cfg.ifindex[0] {
        cfg.ifindex[1]
    } else if ifindex == cfg.ifindex[1] {
        cfg.ifindex[0]
    } else {
        return TC_ACT_OK;
    };
    if out == 0 {
        return TC_ACT_SHOT;
    }
    unsafe { bpf_redirect(out, 0) as i32 }
}
