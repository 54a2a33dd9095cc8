//! `fw`: a first-match XDP firewall whose cost does not grow with rules or prefixes.
//!
//! Every match field maps the packet's value to a bitmap of the rules it satisfies: LPM tries
//! for source/destination prefixes (IPv4 and IPv6), arrays for protocol, ports, TCP flags and
//! ICMP type. The AND of the bitmaps holds the rules matching on every field; the lowest set
//! bit is the first matching rule. About ten map lookups per packet, whatever the rule set.
//!
//! Address prefixes are looked up in a "prefix hash" (tuple space with controlled prefix
//! expansion): userspace expands each prefix to one of at most `MAX_PROBES` lengths, chosen
//! to keep the table small, and the program probes those lengths longest first — one hash
//! lookup per probed length, whatever the number of prefixes (1,000 /24s and /25s, or
//! 100,000 /32s, are one probe). Only a list with too many distinct lengths to expand within
//! the entry budget falls back to the kernel's LPM trie, whose cost grows with its depth.
use core::num::NonZeroU64;

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_NO_PREALLOC},
    macros::{map, xdp},
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf,
    },
    programs::XdpContext,
};
use wirelab_common::fw::{
    action, lookup as method, table, Bucket, BucketKey, FwConf, HKey4, HKey6, Key4, Key6, LogEvent,
    RuleCounter, RuleMeta, BUCKETS, FAMILY_IPV4, FAMILY_IPV6, KEY4_FULL_BITS, KEY6_FULL_BITS,
    MAX_PROBES, MAX_RULES, NUM_COUNTERS, PORT_ENTRIES, PORT_NONE, PROTO_ENTRIES, SLOT_DEFAULT,
    SLOT_MALFORMED, SLOT_NON_IP, SMALL_ENTRIES, SMALL_NONE, TOKEN_UNIT, TRIE_ENTRIES,
};

use wirelab_common::tap::{self as tapdef, fw_what, Decision};

use crate::{
    counter,
    error::{Error, Result},
    parse::{
        self, Frame, Parsed, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, IPV4_ALEN,
    },
    sys, tap,
};

#[map]
static FW_GEN: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static FW_CONF: Array<FwConf> = Array::with_max_entries(2, 0);
#[map]
static FW_META: Array<RuleMeta> = Array::with_max_entries(2 * MAX_RULES, 0);
#[map]
static FW_SRC4: LpmTrie<Key4, u64> = LpmTrie::with_max_entries(TRIE_ENTRIES, 0);
#[map]
static FW_DST4: LpmTrie<Key4, u64> = LpmTrie::with_max_entries(TRIE_ENTRIES, 0);
#[map]
static FW_SRC6: LpmTrie<Key6, u64> = LpmTrie::with_max_entries(TRIE_ENTRIES, 0);
#[map]
static FW_DST6: LpmTrie<Key6, u64> = LpmTrie::with_max_entries(TRIE_ENTRIES, 0);
#[map]
static FW_HSRC4: HashMap<HKey4, u64> = HashMap::with_max_entries(TRIE_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static FW_HDST4: HashMap<HKey4, u64> = HashMap::with_max_entries(TRIE_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static FW_HSRC6: HashMap<HKey6, u64> = HashMap::with_max_entries(TRIE_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static FW_HDST6: HashMap<HKey6, u64> = HashMap::with_max_entries(TRIE_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static FW_PROTO: Array<u64> = Array::with_max_entries(2 * PROTO_ENTRIES, 0);
#[map]
static FW_SPORT: Array<u64> = Array::with_max_entries(2 * PORT_ENTRIES, 0);
#[map]
static FW_DPORT: Array<u64> = Array::with_max_entries(2 * PORT_ENTRIES, 0);
#[map]
static FW_FLAGS: Array<u64> = Array::with_max_entries(2 * SMALL_ENTRIES, 0);
#[map]
static FW_ICMP: Array<u64> = Array::with_max_entries(2 * SMALL_ENTRIES, 0);
#[map]
static FW_COUNTERS: PerCpuArray<RuleCounter> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);
#[map]
static FW_BUCKETS: LruHashMap<BucketKey, Bucket> = LruHashMap::with_max_entries(BUCKETS, 0);
#[map]
static FW_LOG: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
/// The capture tap (`wirelab_common::tap`): `capture_xdp_tap` of a running capture, and the
/// flag that says it is there.
#[map]
static FW_TAP: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static FW_TAP_ON: Array<u32> = Array::with_max_entries(1, 0);

#[xdp]
pub fn fw(ctx: XdpContext) -> u32 {
    match try_fw(&ctx) {
        Ok(d) => tap::xdp(&ctx, &FW_TAP_ON, &FW_TAP, d),
        // Only a missing map entry (`Error::Map`) gets here, which userspace never allows:
        // fail closed.
        Err(_) => xdp_action::XDP_ABORTED,
    }
}

/// The verdict `v` with what it came from.
#[inline(always)]
fn decided(v: u32, what: u8, id: u32) -> Decision {
    Decision {
        magic: tapdef::MAGIC,
        tool: tapdef::tool::FW,
        what,
        action: v as u8,
        id,
    }
}

#[inline(always)]
fn verdict(a: u32) -> u32 {
    if a == action::DENY {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Count a frame in `slot`; returns the packets count before this one (for log sampling).
#[inline(always)]
fn count(slot: u32, bytes: u64, dropped: bool) -> u64 {
    counter::update(&FW_COUNTERS, slot, |c| {
        let before = c.packets;
        c.packets = before + 1;
        c.bytes += bytes;
        if dropped {
            c.dropped += 1;
        }
        before
    })
    .unwrap_or(0)
}

#[inline(always)]
fn lookup(a: &Array<u64>, idx: u32) -> u64 {
    a.get(idx).copied().unwrap_or(0)
}

/// Rule bitmap of an IPv4 address in table `t` (`table::SRC4` or `table::DST4`).
#[inline(always)]
fn addr4(
    conf: &FwConf,
    t: usize,
    hash: &HashMap<HKey4, u64>,
    trie: &LpmTrie<Key4, u64>,
    gen: u8,
    a: &[u8],
) -> u64 {
    let mut ab = [0u8; IPV4_ALEN];
    ab.copy_from_slice(&a[..IPV4_ALEN]);
    match conf.mode[t] {
        method::HASH => {
            let ai = u32::from_ne_bytes(ab);
            let n = conf.nprobes[t] as usize;
            let mut k: HKey4 = [0; 6];
            k[0] = gen;
            for i in 0..MAX_PROBES {
                if i >= n {
                    break;
                }
                k[1] = conf.probe_len[t][i];
                k[2..6].copy_from_slice(&(ai & conf.mask4[t & 1][i]).to_ne_bytes());
                // Keys carry the generation, and userspace writes only the idle one.
                if let Some(v) = sys::hash_get(hash, k) {
                    return v;
                }
            }
            conf.any[t]
        }
        method::TRIE => {
            let mut k: Key4 = [0; 5];
            k[0] = gen;
            k[1..5].copy_from_slice(&ab);
            trie.get(Key::new(KEY4_FULL_BITS, k)).copied().unwrap_or(0)
        }
        _ => conf.any[t],
    }
}

/// Rule bitmap of an IPv6 address in table `t` (`table::SRC6` or `table::DST6`).
#[inline(always)]
fn addr6(
    conf: &FwConf,
    t: usize,
    hash: &HashMap<HKey6, u64>,
    trie: &LpmTrie<Key6, u64>,
    gen: u8,
    a: &[u8; 16],
) -> u64 {
    match conf.mode[t] {
        method::HASH => {
            let mut hi = [0u8; 8];
            let mut lo = [0u8; 8];
            hi.copy_from_slice(&a[..8]);
            lo.copy_from_slice(&a[8..]);
            let (hi, lo) = (u64::from_ne_bytes(hi), u64::from_ne_bytes(lo));
            let n = conf.nprobes[t] as usize;
            let mut k: HKey6 = [0; 18];
            k[0] = gen;
            for i in 0..MAX_PROBES {
                if i >= n {
                    break;
                }
                let m = conf.mask6[t & 1][i];
                k[1] = conf.probe_len[t][i];
                k[2..10].copy_from_slice(&(hi & m[0]).to_ne_bytes());
                k[10..18].copy_from_slice(&(lo & m[1]).to_ne_bytes());
                // Keys carry the generation, and userspace writes only the idle one.
                if let Some(v) = sys::hash_get(hash, k) {
                    return v;
                }
            }
            conf.any[t]
        }
        method::TRIE => {
            let mut k: Key6 = [0; 17];
            k[0] = gen;
            k[1..17].copy_from_slice(a);
            trie.get(Key::new(KEY6_FULL_BITS, k)).copied().unwrap_or(0)
        }
        _ => conf.any[t],
    }
}

#[inline(always)]
fn try_fw(ctx: &XdpContext) -> Result<Decision> {
    let f = Frame::xdp(ctx);
    let len = f.len() as u64;
    let gen = FW_GEN.get(0).copied().ok_or(Error::Map)? & 1;
    let conf = FW_CONF.get(gen).ok_or(Error::Map)?;
    // Every frame the parser cannot see through is malformed, never non-IP: the kernel would
    // still find an IP packet in some of them (e.g. behind more VLAN-0 tags than are walked).
    let Ok(p) = parse::parse(&f) else {
        let v = verdict(conf.malformed_action);
        count(SLOT_MALFORMED, len, v == xdp_action::XDP_DROP);
        return Ok(decided(v, fw_what::MALFORMED, 0));
    };
    let g = gen as u8;
    let (s, d) = match p.ethertype {
        ETH_P_IP => {
            let s = addr4(conf, table::SRC4, &FW_HSRC4, &FW_SRC4, g, &p.saddr);
            let d = if s == 0 {
                0
            } else {
                addr4(conf, table::DST4, &FW_HDST4, &FW_DST4, g, &p.daddr)
            };
            (s, d)
        }
        ETH_P_IPV6 => {
            let s = addr6(conf, table::SRC6, &FW_HSRC6, &FW_SRC6, g, &p.saddr);
            let d = if s == 0 {
                0
            } else {
                addr6(conf, table::DST6, &FW_HDST6, &FW_DST6, g, &p.daddr)
            };
            (s, d)
        }
        // Only ethertypes the kernel never hands to its IP stack (ARP, LLDP, ...) get here.
        _ => {
            let v = verdict(conf.non_ip_action);
            count(SLOT_NON_IP, len, v == xdp_action::XDP_DROP);
            return Ok(decided(v, fw_what::NON_IP, 0));
        }
    };
    let mut bits = s & d;
    if bits != 0 {
        bits &= lookup(&FW_PROTO, gen * PROTO_ENTRIES + p.ip_proto as u32);
    }
    if bits != 0 {
        let ports = p.has_l4 && (p.ip_proto == IPPROTO_TCP || p.ip_proto == IPPROTO_UDP);
        let (sp, dp) = if ports {
            (p.sport as u32, p.dport as u32)
        } else {
            (PORT_NONE, PORT_NONE)
        };
        bits &= lookup(&FW_SPORT, gen * PORT_ENTRIES + sp);
        bits &= lookup(&FW_DPORT, gen * PORT_ENTRIES + dp);
    }
    if bits != 0 {
        let fl = if p.has_l4 && p.ip_proto == IPPROTO_TCP {
            p.tcp_flags as u32
        } else {
            SMALL_NONE
        };
        let it = if p.has_l4 && (p.ip_proto == IPPROTO_ICMP || p.ip_proto == IPPROTO_ICMPV6) {
            p.icmp_type as u32
        } else {
            SMALL_NONE
        };
        bits &= lookup(&FW_FLAGS, gen * SMALL_ENTRIES + fl);
        bits &= lookup(&FW_ICMP, gen * SMALL_ENTRIES + it);
    }
    if bits == 0 {
        let v = verdict(conf.default_action);
        count(SLOT_DEFAULT, len, v == xdp_action::XDP_DROP);
        return Ok(decided(v, fw_what::DEFAULT, 0));
    }
    let idx = bits.trailing_zeros();
    let meta = *FW_META
        .get(gen * MAX_RULES + (idx & (MAX_RULES - 1)))
        .ok_or(Error::Map)?;
    let pass = match meta.action {
        action::DENY => false,
        action::RATE_LIMIT => conforms(&meta, &p, len),
        _ => true,
    };
    let before = count(meta.slot, len, !pass);
    // `NonZeroU64`: the remainder needs no divide-by-zero check (a panic path the verifier
    // would have to prove dead).
    if let Some(every) = NonZeroU64::new(meta.log_every as u64) {
        if before % every == 0 {
            log(&meta, &p, len, !pass);
        }
    }
    Ok(if pass {
        decided(xdp_action::XDP_PASS, fw_what::RULE, meta.id)
    } else if meta.action == action::RATE_LIMIT {
        decided(xdp_action::XDP_DROP, fw_what::RATE_LIMITED, meta.id)
    } else {
        decided(xdp_action::XDP_DROP, fw_what::RULE, meta.id)
    })
}

/// Token bucket per (rule, source address). Per-CPU races on one bucket can let a few extra
/// packets through when several CPUs receive the same source at once; they never block one.
#[inline(always)]
fn conforms(m: &RuleMeta, p: &Parsed, len: u64) -> bool {
    let key = BucketKey {
        id: m.id,
        family: family(p) as u32,
        addr: p.saddr,
    };
    let now = sys::now_ns();
    let need_b = len * TOKEN_UNIT;
    match FW_BUCKETS.get_ptr_mut(key) {
        // SAFETY: a successful lookup points to the bucket's value, aligned and kept
        // allocated (RCU) for this run even if the LRU evicts it meanwhile. CPUs receiving the
        // same source at once may interleave their updates of these plain words: the race
        // documented above (a few extra packets through), never an invalid access.
        Some(b) => unsafe {
            let el = now.saturating_sub((*b).last_ns);
            (*b).last_ns = now;
            // Each bucket's refill is capped by its own fill time, so the product stays
            // below its depth plus one second's rate: no overflow (a cap shared by both let
            // the faster bucket's product pass 64 bits).
            let mut pk = (*b).pkts + el.min(m.fill_pkts_ns) * m.pps;
            if pk > m.burst_pkts {
                pk = m.burst_pkts;
            }
            let mut by = (*b).bytes + el.min(m.fill_bytes_ns) * m.bps;
            if by > m.burst_bytes {
                by = m.burst_bytes;
            }
            let ok_p = m.pps == 0 || pk >= TOKEN_UNIT;
            let ok_b = m.bps == 0 || by >= need_b;
            let ok = ok_p && ok_b;
            if ok {
                if m.pps != 0 {
                    pk -= TOKEN_UNIT;
                }
                if m.bps != 0 {
                    by -= need_b;
                }
            }
            (*b).pkts = pk;
            (*b).bytes = by;
            ok
        },
        None => {
            // A new source starts with a full bucket and spends this packet from it.
            let ok_b = m.bps == 0 || m.burst_bytes >= need_b;
            let nb = Bucket {
                last_ns: now,
                pkts: m.burst_pkts.saturating_sub(TOKEN_UNIT),
                bytes: if ok_b {
                    m.burst_bytes - need_b
                } else {
                    m.burst_bytes
                },
            };
            let _ = FW_BUCKETS.insert(key, nb, 0);
            (m.pps == 0 || m.burst_pkts >= TOKEN_UNIT) && ok_b
        }
    }
}

/// `FAMILY_IPV4` or `FAMILY_IPV6` of an IP frame.
#[inline(always)]
fn family(p: &Parsed) -> u8 {
    if p.ethertype == ETH_P_IP {
        FAMILY_IPV4
    } else {
        FAMILY_IPV6
    }
}

#[inline(always)]
fn log(m: &RuleMeta, p: &Parsed, len: u64, dropped: bool) {
    if let Some(mut e) = FW_LOG.reserve::<LogEvent>(0) {
        let ev = LogEvent {
            ts_ns: sys::now_ns(),
            slot: m.slot,
            len: len as u32,
            dropped: dropped as u8,
            family: family(p),
            proto: p.ip_proto,
            tcp_flags: p.tcp_flags,
            icmp_type: p.icmp_type,
            vlans: p.vlans,
            fragment: p.fragment as u8,
            _pad: 0,
            sport: p.sport,
            dport: p.dport,
            _pad2: 0,
            saddr: p.saddr,
            daddr: p.daddr,
        };
        e.write(ev);
        e.submit(0);
        counter::update(&FW_COUNTERS, m.slot, |c| c.logged += 1);
    }
}
