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
    macros::{classifier, map, xdp},
    maps::lpm_trie::Key,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, ProgramArray, XskMap},
    programs::{TcContext, XdpContext},
};
use wirelab_common::tap::{self as tapdef, wan_what, Decision};
use wirelab_common::wan::{
    loss_step, ClassKey, KernelProfile, LossState, Meta, WanConfig, WanCounters, CLASSES_HOSTS,
    CLASSES_PREFIXES, CLASS_KEY_FIXED_BITS, DIR_A_TO_B, DIR_B_TO_A, META_MAGIC, PROFILE_FAST,
};

use crate::{
    counter::Slot,
    error::{Error, Result},
    parse::{self, Frame, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP},
    sys, tap,
};

/// Default sizes; userspace resizes the per-class maps to the configured class count.
const DEFAULT_CLASSES: u32 = 1;

/// Prefix length of a whole class key: the fixed (side, proto, port) bits and an IPv6 (or
/// v4-mapped) address.
const CLASS_KEY_FULL_BITS: u32 = CLASS_KEY_FIXED_BITS + 128;

/// Bytes 10-11 of a v4-mapped IPv6 address (`::ffff:a.b.c.d`), then the IPv4 address.
const V4_MAPPED_FFFF: usize = 10;
const V4_MAPPED_ADDR: usize = 12;

/// Receive queue the engine's AF_XDP sockets are bound to.
const XSK_QUEUE: u32 = 0;

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
/// The capture tap (`wirelab_common::tap`): `capture_xdp_tap` of a running capture, and the
/// ifindex of the interface it captures.
#[map]
static WAN_TAP: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static WAN_TAP_ON: Array<u32> = Array::with_max_entries(1, 0);

#[xdp]
pub fn wan_xdp(ctx: XdpContext) -> u32 {
    // Only map lookups (`Error::Map`) fail here, never in a configured emulator: keep traffic
    // moving.
    match try_wan_xdp(&ctx) {
        Ok(w) => tap::xdp(
            &ctx,
            &WAN_TAP_ON,
            &WAN_TAP,
            Decision {
                magic: tapdef::MAGIC,
                tool: tapdef::tool::WAN,
                what: w.what,
                action: w.action as u8,
                id: w.class,
            },
        ),
        Err(_) => xdp_action::XDP_PASS,
    }
}

/// What `wan_xdp` did with a frame: its verdict, and what the capture tap shows.
struct Decided {
    action: u32,
    /// `wan_what::*`.
    what: u8,
    class: u32,
}

/// One (side, proto, port) tier: the exact-address table first (an exact match is the longest
/// prefix anyway), then the trie; each only when it holds entries.
#[inline(always)]
fn lookup_class(key: &mut Key<ClassKey>, tables: u32) -> Option<u32> {
    if tables & CLASSES_HOSTS != 0 {
        // Class ids are `u32`s (one word, as `sys::hash_get` asks).
        if let Some(c) = sys::hash_get(&WAN_CLASS_HOSTS, key.data) {
            return Some(c);
        }
    }
    if tables & CLASSES_PREFIXES != 0 {
        key.prefix_len = CLASS_KEY_FULL_BITS;
        return WAN_CLASSES.get(&*key).copied();
    }
    None
}

/// `::ffff:a.b.c.d`, the form classes keep an IPv4 address in (`a`: the parser's 16 bytes,
/// the address in the first 4), built as one 16-byte value: zeroing the first ten bytes
/// apart becomes a call to `memset` on the BPF target (a byte loop, run for every packet).
#[inline(always)]
fn v4_mapped(a: &[u8; 16]) -> [u8; 16] {
    let v4 = u32::from_le_bytes([a[0], a[1], a[2], a[3]]) as u128;
    (0xffff_u128 << (8 * V4_MAPPED_FFFF) | v4 << (8 * V4_MAPPED_ADDR)).to_le_bytes()
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
    let v4 = p.ethertype == ETH_P_IP;
    if !v4 && p.ethertype != ETH_P_IPV6 {
        return 0;
    }
    // B-side address: destination for A->B frames, source for B->A.
    let (b, a) = if dir == DIR_A_TO_B {
        (&p.daddr, &p.saddr)
    } else {
        (&p.saddr, &p.daddr)
    };
    let bport = if dir == DIR_A_TO_B { p.dport } else { p.sport };
    let aport = if dir == DIR_A_TO_B { p.sport } else { p.dport };
    let (addr, other) = if v4 {
        (v4_mapped(b), v4_mapped(a))
    } else {
        (*b, *a)
    };
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
fn try_wan_xdp(ctx: &XdpContext) -> Result<Decided> {
    let cfg = WAN_CONFIG.get(0).ok_or(Error::Map)?;
    let ifindex = ctx.ingress_ifindex() as u32;
    let dir = if ifindex == cfg.ifindex[DIR_A_TO_B as usize] {
        DIR_A_TO_B
    } else {
        DIR_B_TO_A
    };
    let f = Frame::xdp(ctx);
    let len = f.len() as u64;
    let max = cfg.max_classes;
    let mut class = classify(&f, dir, cfg.class_tables);
    if class >= max {
        class = 0;
    }
    let decided = |action, what| Decided {
        action,
        what,
        class,
    };
    let idx = dir * max + class;
    let gen = cfg.gen & 1;
    let prof: &KernelProfile = WAN_PROFILES
        .get((gen * 2 + dir) * max + class)
        .ok_or(Error::Map)?;
    let cnt = Slot::get(&WAN_COUNTERS, idx).ok_or(Error::Map)?;
    cnt.update(|c| {
        c.rx_packets += 1;
        c.rx_bytes += len;
    });

    if prof.period_ns != 0 && prof.blackhole_ns != 0 {
        let now = sys::now_ns();
        let t = now.wrapping_sub(cfg.epoch_ns) % prof.period_ns;
        if t >= prof.period_ns - prof.blackhole_ns {
            cnt.update(|c| c.blackhole_drops += 1);
            return Ok(decided(xdp_action::XDP_DROP, wan_what::BLACKHOLE));
        }
    }
    if prof.loss_kind != 0 {
        let st = WAN_LOSS.get_ptr_mut(idx).ok_or(Error::Map)?;
        // SAFETY: `st` points to an entry of an array map, aligned and allocated for the map's
        // lifetime; the reference ends with the call. One program writer per direction: XDP
        // on a device's queue runs on one CPU at a time. Userspace rewrites an entry only when
        // its class's loss model changes; a packet racing that continues from a mix of old and
        // new state words (plain integers, any value valid), never touches invalid memory.
        if loss_step(prof, unsafe { &mut *st }) {
            cnt.update(|c| c.loss_drops += 1);
            return Ok(decided(xdp_action::XDP_DROP, wan_what::LOST));
        }
    }
    if prof.flags & PROFILE_FAST != 0 {
        cnt.update(|c| c.fast_packets += 1);
        return Ok(decided(xdp_action::XDP_PASS, wan_what::FAST));
    }
    // The engine's sockets are bound to queue 0: frames that arrive on other queues (multi-queue
    // NICs) cannot reach them and go the fast path unimpaired, counted as fallback.
    if ctx.rx_queue_index() != XSK_QUEUE {
        cnt.update(|c| c.xsk_fallback += 1);
        return Ok(decided(xdp_action::XDP_PASS, wan_what::FALLBACK));
    }
    // Tell the engine the class and the arrival time: 16 bytes of metadata in front of the
    // frame. Without them the engine could not tell the class: then the frame goes the fast
    // path, counted.
    let meta = Meta {
        magic: META_MAGIC,
        class,
        arrival_ns: sys::now_ns(),
    };
    let tagged = sys::xdp_adjust_meta(ctx, -(core::mem::size_of::<Meta>() as i32))
        && Frame::xdp_meta(ctx).store(0, meta).is_ok();
    if !tagged {
        cnt.update(|c| c.xsk_fallback += 1);
        return Ok(decided(xdp_action::XDP_PASS, wan_what::FALLBACK));
    }
    match WAN_XSKS.redirect(dir, 0) {
        Ok(a) => {
            cnt.update(|c| c.xsk_packets += 1);
            Ok(decided(a, wan_what::ENGINE))
        }
        Err(_) => {
            cnt.update(|c| c.xsk_fallback += 1);
            Ok(decided(xdp_action::XDP_PASS, wan_what::FALLBACK))
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
    let ifindex = sys::skb_ingress_ifindex(&ctx);
    let (a, b) = (DIR_A_TO_B as usize, DIR_B_TO_A as usize);
    let out = if ifindex == cfg.ifindex[a] {
        cfg.ifindex[b]
    } else if ifindex == cfg.ifindex[b] {
        cfg.ifindex[a]
    } else {
        return TC_ACT_OK;
    };
    // 0: that interface is not configured (yet): drop rather than loop the frame back.
    if out == 0 {
        return TC_ACT_SHOT;
    }
    sys::redirect(out)
}
