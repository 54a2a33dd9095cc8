//! The firewall in the kernel's maps: installing a rule set (two generations, swapped
//! atomically), reading counters, draining log samples.
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};
use wirelab_common::maps;

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap as BpfHash, MapData, PerCpuArray, PerCpuValues, RingBuf,
};
use wirelab_common::fw::{
    lookup, FwConf, HKey4, HKey6, Key4, Key6, LogEvent, RuleCounter, RuleMeta, MAX_RULES,
    PORT_ENTRIES, PROTO_ENTRIES, RULE_SLOTS, SLOT_DEFAULT, SLOT_MALFORMED, SLOT_NON_IP,
    SMALL_ENTRIES,
};

use super::*;
use crate::runtime::bpf::{self};
use rules::{action_name, RuleSet, Tables};

/// A rule as installed: where its counters and buckets live.
#[derive(Debug, Clone)]
pub(super) struct Installed {
    name: String,
    action: u32,
    slot: u32,
    id: u32,
}

/// The maps of the `fw` program, owned by userspace.
pub struct FwMaps {
    gen: Array<MapData, u32>,
    conf: Array<MapData, FwConf>,
    meta: Array<MapData, RuleMeta>,
    src4: LpmTrie<MapData, Key4, u64>,
    dst4: LpmTrie<MapData, Key4, u64>,
    src6: LpmTrie<MapData, Key6, u64>,
    dst6: LpmTrie<MapData, Key6, u64>,
    hsrc4: BpfHash<MapData, HKey4, u64>,
    hdst4: BpfHash<MapData, HKey4, u64>,
    hsrc6: BpfHash<MapData, HKey6, u64>,
    hdst6: BpfHash<MapData, HKey6, u64>,
    proto: Array<MapData, u64>,
    sport: Array<MapData, u64>,
    dport: Array<MapData, u64>,
    flags: Array<MapData, u64>,
    icmp: Array<MapData, u64>,
    counters: PerCpuArray<MapData, RuleCounter>,
    log: RingBuf<MapData>,
}

pub(super) fn take<T: TryFrom<aya::maps::Map>>(bpf: &mut aya::Ebpf, name: &str) -> Result<T>
where
    <T as TryFrom<aya::maps::Map>>::Error: std::error::Error + Send + Sync + 'static,
{
    let m = bpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the object"))?;
    T::try_from(m).with_context(|| format!("map {name}"))
}

/// The firewall's state in userspace: maps, what each generation holds, rule bookkeeping.
pub struct Firewall {
    maps: FwMaps,
    active: u32,
    /// What the array tables of each generation hold (to write only differences).
    shadow: [Tables; 2],
    /// What the address tables of each generation hold (to remove it again).
    written: [Written; 2],
    /// How the address tables of the generation in force are searched (for `stats`).
    lookup: Lookup,
    rules: Vec<Installed>,
    set: Option<RuleSet>,
    next_id: u32,
    pub reloads: u64,
    log_ring: VecDeque<LogLine>,
}

impl Firewall {
    /// Take the fw maps from a loaded object and install `rs` as generation 0.
    pub fn new(bpf: &mut aya::Ebpf, rs: &RuleSet) -> Result<Self> {
        let maps = FwMaps {
            gen: take(bpf, maps::FW_GEN)?,
            conf: take(bpf, maps::FW_CONF)?,
            meta: take(bpf, maps::FW_META)?,
            src4: take(bpf, maps::FW_SRC4)?,
            dst4: take(bpf, maps::FW_DST4)?,
            src6: take(bpf, maps::FW_SRC6)?,
            dst6: take(bpf, maps::FW_DST6)?,
            hsrc4: take(bpf, maps::FW_HSRC4)?,
            hdst4: take(bpf, maps::FW_HDST4)?,
            hsrc6: take(bpf, maps::FW_HSRC6)?,
            hdst6: take(bpf, maps::FW_HDST6)?,
            proto: take(bpf, maps::FW_PROTO)?,
            sport: take(bpf, maps::FW_SPORT)?,
            dport: take(bpf, maps::FW_DPORT)?,
            flags: take(bpf, maps::FW_FLAGS)?,
            icmp: take(bpf, maps::FW_ICMP)?,
            counters: take(bpf, maps::FW_COUNTERS)?,
            log: take(bpf, maps::FW_LOG)?,
        };
        let empty = || Tables {
            proto: vec![0; PROTO_ENTRIES as usize],
            sport: vec![0; PORT_ENTRIES as usize],
            dport: vec![0; PORT_ENTRIES as usize],
            flags: vec![0; SMALL_ENTRIES as usize],
            icmp: vec![0; SMALL_ENTRIES as usize],
            ..Default::default()
        };
        let mut fw = Self {
            maps,
            active: 1,
            shadow: [empty(), empty()],
            written: Default::default(),
            lookup: Lookup::default(),
            rules: vec![],
            set: None,
            next_id: 1,
            reloads: 0,
            log_ring: VecDeque::new(),
        };
        fw.install(rs)?;
        fw.reloads = 0;
        Ok(fw)
    }

    pub fn generation(&self) -> u32 {
        self.active
    }

    /// Write `rs` into the idle generation, flip to it, then clear the old one. Counters and
    /// rate-limit buckets of rules that keep their name carry over. On an error before the
    /// flip, the idle generation's prefixes are removed again and the old set stays in force.
    pub fn install(&mut self, rs: &RuleSet) -> Result<InstallReport> {
        let g = 1 - self.active;
        match self.install_inner(rs) {
            Ok(v) => Ok(v),
            Err(e) => {
                if self.active == 1 - g {
                    let _ = self.clear_tries(g);
                }
                Err(e)
            }
        }
    }

    fn install_inner(&mut self, rs: &RuleSet) -> Result<InstallReport> {
        let t0 = Instant::now();
        let g = 1 - self.active;
        let tables = rules::compile(rs);
        let (installed, kept, added) = self.assign_slots(rs)?;
        let removed: Vec<String> = self
            .rules
            .iter()
            .filter(|o| !rs.rules.iter().any(|r| r.name == o.name))
            .map(|o| o.name.clone())
            .collect();
        // Generation g: arrays (differences only), tries, metadata, policies.
        self.write_arrays(g, &tables)?;
        let (conf, lookup) = self.write_addresses(g, &tables, rs)?;
        self.write_meta(g, rs, &installed)?;
        let m = &mut self.maps;
        m.conf.set(g, conf, 0)?;
        // The switch: one 4-byte array write.
        m.gen.set(0, g, 0)?;
        let old_gen = self.active;
        self.active = g;
        // Packets already being judged by the old generation finish within microseconds
        // (XDP runs to completion under RCU); give them ample time before clearing it.
        std::thread::sleep(Duration::from_millis(20));
        self.clear_tries(old_gen)?;
        self.rules = installed;
        self.lookup = lookup.clone();
        self.set = Some(rs.clone());
        self.reloads += 1;
        Ok(InstallReport {
            generation: g,
            rules: rs.rules.len(),
            prefixes: rs.prefixes(),
            kept,
            added,
            removed,
            install_ms: t0.elapsed().as_secs_f64() * 1e3,
            lookup,
        })
    }

    /// Each rule's counter slot and id: kept by name, free slots (zeroed) for new rules.
    /// Returns the rules as installed, and the names kept and added.
    fn assign_slots(&mut self, rs: &RuleSet) -> Result<(Vec<Installed>, Vec<String>, Vec<String>)> {
        let old: HashMap<&str, &Installed> =
            self.rules.iter().map(|r| (r.name.as_str(), r)).collect();
        let mut used: Vec<bool> = vec![false; RULE_SLOTS as usize];
        for r in &self.rules {
            used[r.slot as usize] = true;
        }
        let mut installed = vec![];
        let (mut kept, mut added) = (vec![], vec![]);
        for r in &rs.rules {
            if let Some(o) = old.get(r.name.as_str()) {
                installed.push(Installed {
                    name: r.name.clone(),
                    action: r.action,
                    slot: o.slot,
                    id: o.id,
                });
                kept.push(r.name.clone());
            } else {
                let slot =
                    used.iter()
                        .position(|u| !*u)
                        .ok_or_else(|| anyhow!("no free counter slot"))? as u32;
                used[slot as usize] = true;
                let zeros = PerCpuValues::try_from(vec![
                    RuleCounter::default();
                    aya::util::nr_cpus()
                        .map_err(|(_, e)| e)?
                ])?;
                self.maps.counters.set(slot, zeros, 0)?;
                installed.push(Installed {
                    name: r.name.clone(),
                    action: r.action,
                    slot,
                    id: self.next_id,
                });
                self.next_id += 1;
                added.push(r.name.clone());
            }
        }
        Ok((installed, kept, added))
    }

    /// Generation `g`'s match arrays, written where they differ from what it holds.
    fn write_arrays(&mut self, g: u32, tables: &Tables) -> Result<()> {
        let m = &mut self.maps;
        let sh = &mut self.shadow[g as usize];
        for (arr, new, old, per) in [
            (&mut m.proto, &tables.proto, &mut sh.proto, PROTO_ENTRIES),
            (&mut m.sport, &tables.sport, &mut sh.sport, PORT_ENTRIES),
            (&mut m.dport, &tables.dport, &mut sh.dport, PORT_ENTRIES),
            (&mut m.flags, &tables.flags, &mut sh.flags, SMALL_ENTRIES),
            (&mut m.icmp, &tables.icmp, &mut sh.icmp, SMALL_ENTRIES),
        ] {
            for (i, (n, o)) in new.iter().zip(old.iter_mut()).enumerate() {
                if n != o {
                    arr.set(g * per + i as u32, *n, 0)?;
                    *o = *n;
                }
            }
        }
        Ok(())
    }

    /// Generation `g`'s address tables: the configuration saying how each is searched, and
    /// the lookup plan.
    fn write_addresses(
        &mut self,
        g: u32,
        tables: &Tables,
        rs: &RuleSet,
    ) -> Result<(FwConf, Lookup)> {
        let m = &mut self.maps;
        // Address tables: plan each (prefix hash or trie), record what is written before
        // writing it, so a failure part-way can remove it.
        let (p4, p6) = plans(tables);
        let w = &mut self.written[g as usize];
        let mut conf = FwConf {
            default_action: rs.default_action,
            malformed_action: rs.malformed_action,
            non_ip_action: rs.non_ip_action,
            nrules: rs.rules.len() as u32,
            ..Default::default()
        };
        for (t, (p, trie, hash)) in [
            (&p4[0], &mut m.src4, &mut m.hsrc4),
            (&p4[1], &mut m.dst4, &mut m.hdst4),
        ]
        .into_iter()
        .enumerate()
        {
            w.v4[t].0 = p.mode;
            write_table(g as u8, p, trie, hash, &mut w.v4[t].1)?;
            conf_table(&mut conf, t, p);
            for (i, l) in p.lengths.iter().enumerate() {
                conf.mask4[t][i] = plan::mask4(*l);
            }
        }
        for (t, (p, trie, hash)) in [
            (&p6[0], &mut m.src6, &mut m.hsrc6),
            (&p6[1], &mut m.dst6, &mut m.hdst6),
        ]
        .into_iter()
        .enumerate()
        {
            w.v6[t].0 = p.mode;
            write_table(g as u8, p, trie, hash, &mut w.v6[t].1)?;
            conf_table(&mut conf, 2 + t, p);
            for (i, l) in p.lengths.iter().enumerate() {
                conf.mask6[t][i] = plan::mask6(*l);
            }
        }
        Ok((conf, lookup_of(&p4, &p6)))
    }

    /// Generation `g`'s per-rule metadata: action, counter slot, id, log and rate limits.
    fn write_meta(&mut self, g: u32, rs: &RuleSet, installed: &[Installed]) -> Result<()> {
        let m = &mut self.maps;
        for (i, (r, ins)) in rs.rules.iter().zip(installed.iter()).enumerate() {
            // Nanoseconds for an empty bucket to fill (0 where there is no such limit).
            let fill = |burst: u64, rate: u64| burst.checked_div(rate).map_or(0, |t| t + 1);
            let meta = RuleMeta {
                action: r.action,
                slot: ins.slot,
                id: ins.id,
                log_every: r.log_every,
                pps: r.pps,
                bps: r.bps,
                burst_pkts: r.burst_pkts,
                burst_bytes: r.burst_bytes,
                fill_pkts_ns: fill(r.burst_pkts, r.pps),
                fill_bytes_ns: fill(r.burst_bytes, r.bps),
            };
            m.meta.set(g * MAX_RULES + i as u32, meta, 0)?;
        }
        Ok(())
    }

    /// Remove generation `g`'s prefixes from the address tables.
    fn clear_tries(&mut self, g: u32) -> Result<()> {
        let w = std::mem::take(&mut self.written[g as usize]);
        let m = &mut self.maps;
        for ((mode, entries), trie, hash) in
            w.v4.into_iter()
                .zip([(&mut m.src4, &mut m.hsrc4), (&mut m.dst4, &mut m.hdst4)])
                .map(|(a, (t, h))| (a, t, h))
        {
            clear_table(g as u8, mode, &entries, trie, hash);
        }
        for ((mode, entries), trie, hash) in
            w.v6.into_iter()
                .zip([(&mut m.src6, &mut m.hsrc6), (&mut m.dst6, &mut m.hdst6)])
                .map(|(a, (t, h))| (a, t, h))
        {
            clear_table(g as u8, mode, &entries, trie, hash);
        }
        Ok(())
    }

    fn counter(&self, slot: u32) -> Result<RuleCounter> {
        bpf::sum(&self.maps.counters, slot)
    }

    /// Counters of every rule in force plus the three policies.
    pub fn stats(&self) -> Result<Stats> {
        let set = self
            .set
            .as_ref()
            .ok_or_else(|| anyhow!("no rules installed"))?;
        let policy = |slot: u32, action: u32| -> Result<PolicyStats> {
            Ok(PolicyStats {
                action: action_name(action).to_string(),
                counters: self.counter(slot)?.into(),
            })
        };
        let rules = self
            .rules
            .iter()
            .map(|r| {
                Ok(RuleStats {
                    name: r.name.clone(),
                    id: r.id,
                    action: action_name(r.action).to_string(),
                    counters: self.counter(r.slot)?.into(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Stats {
            iface: None,
            mode: None,
            duration_s: None,
            generation: self.active,
            reloads: self.reloads,
            prefixes: set.prefixes(),
            lookup: self.lookup.clone(),
            rules,
            default: policy(SLOT_DEFAULT, set.default_action)?,
            malformed: policy(SLOT_MALFORMED, set.malformed_action)?,
            non_ip: policy(SLOT_NON_IP, set.non_ip_action)?,
            recent_log: self.log_ring.iter().cloned().collect(),
            program: None,
        })
    }

    fn rule_name(&self, slot: u32) -> String {
        self.rules
            .iter()
            .find(|r| r.slot == slot)
            .map(|r| r.name.clone())
            .unwrap_or_else(|| format!("slot{slot}"))
    }

    /// Drain the log ring; returns the events.
    pub fn drain_log(&mut self) -> Vec<LogLine> {
        let mut raw = vec![];
        while let Some(item) = self.maps.log.next() {
            if item.len() >= std::mem::size_of::<LogEvent>() {
                // SAFETY: LogEvent is plain old data and the item is at least its size.
                let e: LogEvent =
                    unsafe { std::ptr::read_unaligned(item.as_ptr() as *const LogEvent) };
                raw.push(e);
            }
        }
        let mut out = vec![];
        for e in raw {
            let v = log_line(&e, &self.rule_name(e.slot));
            self.log_ring.push_back(v.clone());
            while self.log_ring.len() > 32 {
                self.log_ring.pop_front();
            }
            out.push(v);
        }
        out
    }
}

/// Lookup plans of the four address tables: (IPv4 source, destination), (IPv6 ...).
pub(super) fn plans(t: &Tables) -> ([plan::Plan<4>; 2], [plan::Plan<16>; 2]) {
    (
        [&t.src4, &t.dst4].map(|c| plan::plan(c, plan::budget(c.len()))),
        [&t.src6, &t.dst6].map(|c| plan::plan(c, plan::budget(c.len()))),
    )
}

pub(super) fn lookup_of(p4: &[plan::Plan<4>; 2], p6: &[plan::Plan<16>; 2]) -> Lookup {
    Lookup {
        src4: p4[0].table_plan(),
        dst4: p4[1].table_plan(),
        src6: p6[0].table_plan(),
        dst6: p6[1].table_plan(),
    }
}

/// How a rule set's address tables would be searched (what `fw check` shows), without
/// touching the kernel.
pub fn lookup_plan(rs: &RuleSet) -> Lookup {
    let (p4, p6) = plans(&rules::compile(rs));
    lookup_of(&p4, &p6)
}

/// One address table's entries of one generation: lookup method, (length, address) each.
type TableEntries<const A: usize> = (u8, Vec<(u8, [u8; A])>);

/// Address-table entries written for one generation (source, destination per family).
#[derive(Default)]
pub(super) struct Written {
    v4: [TableEntries<4>; 2],
    v6: [TableEntries<16>; 2],
}

pub(super) fn trie_key<const A: usize, const K: usize>(
    gen: u8,
    len: u8,
    a: &[u8; A],
) -> Key<[u8; K]> {
    let mut k = [0u8; K];
    k[0] = gen;
    k[1..].copy_from_slice(a);
    Key::new(8 + len as u32, k)
}

pub(super) fn hash_key<const A: usize, const H: usize>(gen: u8, len: u8, a: &[u8; A]) -> [u8; H] {
    let mut k = [0u8; H];
    k[0] = gen;
    k[1] = len;
    k[2..].copy_from_slice(a);
    k
}

/// Write one address table (`A` address bytes) of generation `gen` as `p` says, recording
/// each entry in `written` before it is inserted.
pub(super) fn write_table<const A: usize, const K: usize, const H: usize>(
    gen: u8,
    p: &plan::Plan<A>,
    trie: &mut LpmTrie<MapData, [u8; K], u64>,
    hash: &mut BpfHash<MapData, [u8; H], u64>,
    written: &mut Vec<(u8, [u8; A])>,
) -> Result<()> {
    let family = if A == 4 { "IPv4" } else { "IPv6" };
    for (len, a, v) in &p.entries {
        written.push((*len, *a));
        match p.mode {
            lookup::HASH => hash.insert(hash_key::<A, H>(gen, *len, a), v, 0),
            _ => trie.insert(&trie_key::<A, K>(gen, *len, a), v, 0),
        }
        .with_context(|| format!("inserting an {family} prefix"))?;
    }
    Ok(())
}

/// Remove what `write_table` wrote (missing entries are fine).
pub(super) fn clear_table<const A: usize, const K: usize, const H: usize>(
    gen: u8,
    mode: u8,
    entries: &[(u8, [u8; A])],
    trie: &mut LpmTrie<MapData, [u8; K], u64>,
    hash: &mut BpfHash<MapData, [u8; H], u64>,
) {
    for (len, a) in entries {
        let _ = match mode {
            lookup::HASH => hash.remove(&hash_key::<A, H>(gen, *len, a)),
            _ => trie.remove(&trie_key::<A, K>(gen, *len, a)),
        };
    }
}

/// Fill table `t`'s lookup fields of `conf` (masks are per family, set by the caller).
pub(super) fn conf_table<const A: usize>(conf: &mut FwConf, t: usize, p: &plan::Plan<A>) {
    conf.mode[t] = p.mode;
    conf.nprobes[t] = p.lengths.len() as u8;
    for (i, l) in p.lengths.iter().enumerate() {
        conf.probe_len[t][i] = *l;
    }
    conf.any[t] = p.any;
}
