//! Weighted Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI '16, section 3.4).
//!
//! Each backend has a permutation of the M table slots, `(offset + j * skip) mod M`, with
//! `offset` and `skip` derived from its name and the seed (M prime, so every skip in
//! `1..M` walks all slots). Backends take turns claiming their next preferred free slot until
//! the table is full. Weights: each backend is given a quota of `M * w / W` slots, rounded
//! down, and the slots left over go one each to the backends with the largest remainders
//! (ties to the lower index), so backend i gets ⌊M·wᵢ/W⌋ or ⌈M·wᵢ/W⌉ slots; a backend stops
//! taking turns once it holds its quota. With equal weights that is the paper's algorithm.
use anyhow::{bail, Result};

/// Default table size (the paper's): a prime.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Whether `n` is prime (trial division; table sizes are at most a few hundred thousand).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u64;
    while d * d <= n as u64 {
        if (n as u64).is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// FNV-1a (64-bit) of `parts`, then the splitmix64 finaliser: stable across builds and
/// platforms (unlike `std`'s hasher), so two balancers with the same config agree.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate the parts so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The permutation parameters of a backend: `(offset, skip)` with `offset < m` and
/// `1 <= skip < m`.
pub fn offset_skip(name: &str, seed: u64, m: u32) -> (u32, u32) {
    let s = seed.to_le_bytes();
    let h1 = stable_hash(&[&s, b"offset", name.as_bytes()]);
    let h2 = stable_hash(&[&s, b"skip", name.as_bytes()]);
    let offset = (h1 % m as u64) as u32;
    let skip = (h2 % (m as u64 - 1)) as u32 + 1;
    (offset, skip)
}

/// One backend as the table builder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub offset: u32,
    pub skip: u32,
    pub weight: u32,
}

/// Slot quotas: ⌊M·wᵢ/W⌋, plus one for the backends with the largest remainders until the
/// quotas add up to M.
pub fn quotas(m: u32, weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|w| *w as u64).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let mut q: Vec<u32> = weights
        .iter()
        .map(|w| (m as u64 * *w as u64 / total) as u32)
        .collect();
    let given: u64 = q.iter().map(|v| *v as u64).sum();
    let mut order: Vec<usize> = (0..weights.len()).filter(|i| weights[*i] > 0).collect();
    // Largest remainder first; ties to the lower index (a stable sort keeps index order).
    order.sort_by_key(|i| std::cmp::Reverse(m as u64 * weights[*i] as u64 % total));
    for i in order.into_iter().take((m as u64 - given) as usize) {
        q[i] += 1;
    }
    q
}

/// Fill a table of `m` slots from explicit permutations (`offset`, `skip`) and weights.
/// Returns, for each slot, the index of its backend in `entries`, or `None` when no entry
/// has a weight above 0.
pub fn populate(m: u32, entries: &[Entry]) -> Result<Vec<Option<u32>>> {
    if !is_prime(m) {
        bail!("table size {m} is not prime");
    }
    for (i, e) in entries.iter().enumerate() {
        if e.offset >= m || e.skip == 0 || e.skip >= m {
            bail!(
                "backend {i}: offset {} / skip {} out of range for M = {m}",
                e.offset,
                e.skip
            );
        }
    }
    let mut table: Vec<Option<u32>> = vec![None; m as usize];
    let weights: Vec<u32> = entries.iter().map(|e| e.weight).collect();
    let mut left = quotas(m, &weights);
    if left.iter().all(|q| *q == 0) {
        return Ok(table);
    }
    fill(m, entries, &mut table, &mut left, m);
    Ok(table)
}

/// Backends take turns (in index order) claiming the next free slot of `table` along their
/// permutations until `count` slots are claimed; backend i takes at most `left[i]` of them.
/// The caller guarantees that the free slots number at least `count` and that the `left`
/// quotas add up to at least `count`.
fn fill(m: u32, entries: &[Entry], table: &mut [Option<u32>], left: &mut [u32], count: u32) {
    // next[i]: how far along its permutation backend i is.
    let mut next = vec![0u64; entries.len()];
    let mut filled = 0u32;
    while filled < count {
        let before = filled;
        for (i, e) in entries.iter().enumerate() {
            if left[i] == 0 {
                continue;
            }
            // Walk backend i's permutation to its next free slot (one exists: fewer than
            // `count` are claimed, and the permutation visits every slot).
            loop {
                let c = ((e.offset as u64 + next[i] * e.skip as u64) % m as u64) as usize;
                next[i] += 1;
                if table[c].is_none() {
                    table[c] = Some(i as u32);
                    break;
                }
            }
            left[i] -= 1;
            filled += 1;
            if filled == count {
                break;
            }
        }
        if filled == before {
            // Quotas exhausted before `count` (a caller's error): stop rather than spin.
            debug_assert!(false, "maglev fill: quotas add up to less than {count}");
            break;
        }
    }
}

fn entries(m: u32, seed: u64, backends: &[(&str, u32)]) -> Vec<Entry> {
    backends
        .iter()
        .map(|(name, weight)| {
            let (offset, skip) = offset_skip(name, seed, m);
            Entry {
                offset,
                skip,
                weight: *weight,
            }
        })
        .collect()
}

/// The table for named, weighted backends with `seed`: `(name, weight)` in config order.
pub fn build(m: u32, seed: u64, backends: &[(&str, u32)]) -> Result<Vec<Option<u32>>> {
    if !is_prime(m) {
        bail!("table size {m} is not prime");
    }
    populate(m, &entries(m, seed, backends))
}

/// The table with the backends `down` names (by index) out of it, changing only their slots.
///
/// Rebuilding the table without a backend (what [`build`] does for a smaller set, and what a
/// fresh start from a smaller config does) moves its slots and, as the other backends' turns
/// shift, some more: 1.6/N of the slots for N = 100 at M = 65,537. A backend that fails its
/// health checks (or, in a running balancer, one removed by a reload: a departed place of
/// `ServiceConf::layout_after`) has its slots handed on instead: the table is built for every
/// configured backend, then the slots of those down are cleared and refilled by the backends
/// up, taking turns along their own permutations (Maglev's fill, over the freed slots only),
/// each up to its weighted share of the whole table (⌊M·wᵢ/W⌋ or ⌈M·wᵢ/W⌉ of it, W the up
/// backends' weights). So one backend going down moves exactly its own slots (1/N with equal
/// weights) and coming back up moves them back; a second one going down moves its own slots
/// and may shuffle the first one's among the rest. Deterministic: the same config and the
/// same down set give the same table.
pub fn build_with_down(
    m: u32,
    seed: u64,
    backends: &[(&str, u32)],
    down: &dyn Fn(usize) -> bool,
) -> Result<Vec<Option<u32>>> {
    if !is_prime(m) {
        bail!("table size {m} is not prime");
    }
    let entries = entries(m, seed, backends);
    let mut table = populate(m, &entries)?;
    let is_down: Vec<bool> = (0..backends.len()).map(down).collect();
    if !is_down.iter().any(|d| *d) {
        return Ok(table);
    }
    let up: Vec<u32> = backends
        .iter()
        .zip(&is_down)
        .map(|((_, w), d)| if *d { 0 } else { *w })
        .collect();
    let mut freed = 0u32;
    for slot in table.iter_mut() {
        if slot.is_some_and(|i| is_down[i as usize]) {
            *slot = None;
            freed += 1;
        }
    }
    if freed == 0 || up.iter().all(|w| *w == 0) {
        // Nothing to hand on, or nobody up to take it: the freed slots stay empty.
        return Ok(table);
    }
    let have = shares(&table, backends.len());
    // Each up backend takes what it lacks of its share of the whole table. Rounding can
    // leave one backend a slot over its share (it keeps it: no slot of an up backend moves),
    // so these add up to at least `freed`.
    let mut left: Vec<u32> = quotas(m, &up)
        .iter()
        .zip(&have)
        .map(|(q, h)| q.saturating_sub(*h))
        .collect();
    fill(m, &entries, &mut table, &mut left, freed);
    Ok(table)
}

/// Slots per backend index (`n` backends).
pub fn shares(table: &[Option<u32>], n: usize) -> Vec<u32> {
    let mut s = vec![0u32; n];
    for i in table.iter().flatten() {
        s[*i as usize] += 1;
    }
    s
}

/// How well Maglev spreads and keeps flows, next to a plain `hash mod N` (nftables'
/// `jhash … mod N` with its map renumbered when a backend goes): one row of
/// `cargo xtask bench lb`'s Maglev quality table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Quality {
    /// Backends (equal weights) and table size.
    pub n: u32,
    pub m: u32,
    /// Median time to build the table of `n` backends (5 builds).
    pub build_ms: f64,
    /// Share of the slots that point elsewhere when backend `n / 2` is removed from the
    /// config and the table rebuilt (the ideal is 1/N: only its own).
    pub slots_moved: f64,
    /// Share of the sample flows that go elsewhere then: Maglev, and hash mod N.
    pub flows_moved: f64,
    pub modn_flows_moved: f64,
    /// The same when backend `n / 2` goes down (fails its health checks) instead: its slots
    /// handed on ([`build_with_down`]); slots and sample flows.
    pub down_slots_moved: f64,
    pub down_flows_moved: f64,
    /// Most slots any up backend holds over the average (M/(N-1)) with backend `n / 2` down.
    pub down_slot_max_avg: f64,
    /// Most slots any backend holds over the average (M/N).
    pub slot_max_avg: f64,
    /// Most sample flows any backend gets over the average: Maglev, and hash mod N.
    pub flow_max_avg: f64,
    pub modn_flow_max_avg: f64,
    /// Sample flows (distinct TCP 5-tuples to one VIP:port, hashed with the program's flow
    /// hash).
    pub flows: u32,
}

/// `backends` without the one at index `gone`.
pub fn without<'a>(backends: &[(&'a str, u32)], gone: usize) -> Vec<(&'a str, u32)> {
    backends
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != gone)
        .map(|(_, b)| *b)
        .collect()
}

/// Measure [`Quality`] for `n` equal backends and a table of `m` slots over `flows` sample
/// flows. Both schemes use the flow hash the program uses: Maglev takes `hash % M` into the
/// table, hash mod N takes `hash % N` into the backend list (`hash % (N-1)` once one is gone).
pub fn quality(n: u32, m: u32, seed: u64, flows: u32) -> Result<Quality> {
    use wirelab_common::lb::{flow_hash, FlowKey, FAMILY_IPV4};
    if n < 2 || n > m {
        bail!("quality: need 2 <= N <= M (N = {n}, M = {m})");
    }
    let names: Vec<String> = (0..n).map(|i| format!("backend-{i}")).collect();
    let all: Vec<(&str, u32)> = names.iter().map(|s| (s.as_str(), 1)).collect();
    let gone = (n / 2) as usize;
    let rest = without(&all, gone);
    let mut times = vec![];
    let mut before = vec![];
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        before = build(m, seed, &all)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let after = build(m, seed, &rest)?;
    let down = build_with_down(m, seed, &all, &|i| i == gone)?;
    // Slots and flows are compared by backend name: indices shift after the removed one.
    let name_before = |s: usize| before[s].map(|i| all[i as usize].0);
    let name_after = |s: usize| after[s].map(|i| rest[i as usize].0);
    let share = |moved: &dyn Fn(usize) -> bool| {
        (0..m as usize).filter(|s| moved(*s)).count() as f64 / m as f64
    };
    let slots_moved = share(&|s| name_before(s) != name_after(s));
    let down_slots_moved = share(&|s| before[s] != down[s]);
    let slot_max = shares(&before, n as usize).into_iter().max().unwrap_or(0);
    let down_max = shares(&down, n as usize).into_iter().max().unwrap_or(0);
    let (mut moved, mut modn_moved, mut down_moved) = (0u64, 0u64, 0u64);
    let (mut per, mut modn_per) = (vec![0u32; n as usize], vec![0u32; n as usize]);
    for i in 0..flows {
        let mut k = FlowKey {
            sport: 1024 + (i % 64000) as u16,
            dport: 80,
            proto: 6,
            family: FAMILY_IPV4,
            ..Default::default()
        };
        // Clients 198.18.0.0/15, 64,000 ports each; the VIP 198.18.1.100.
        k.saddr[..4].copy_from_slice(&(0xc612_0000u32 + i / 64000).to_be_bytes());
        k.daddr[..4].copy_from_slice(&[198, 18, 1, 100]);
        let h = flow_hash(&k, seed as u32);
        let slot = (h % m) as usize;
        if let Some(b) = before[slot] {
            per[b as usize] += 1;
        }
        if name_before(slot) != name_after(slot) {
            moved += 1;
        }
        if before[slot] != down[slot] {
            down_moved += 1;
        }
        let b = (h % n) as usize;
        modn_per[b] += 1;
        if all[b].0 != rest[(h % (n - 1)) as usize].0 {
            modn_moved += 1;
        }
    }
    let avg = flows as f64 / n as f64;
    let max_avg = |v: &[u32]| v.iter().copied().max().unwrap_or(0) as f64 / avg;
    Ok(Quality {
        n,
        m,
        build_ms: times[times.len() / 2],
        slots_moved,
        flows_moved: moved as f64 / flows.max(1) as f64,
        modn_flows_moved: modn_moved as f64 / flows.max(1) as f64,
        down_slots_moved,
        down_flows_moved: down_moved as f64 / flows.max(1) as f64,
        down_slot_max_avg: down_max as f64 / (m as f64 / (n - 1) as f64),
        slot_max_avg: slot_max as f64 / (m as f64 / n as f64),
        flow_max_avg: max_avg(&per),
        modn_flow_max_avg: max_avg(&modn_per),
        flows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("backend-{i}")).collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(7) && is_prime(65537) && is_prime(251) && is_prime(2));
        assert!(!is_prime(1) && !is_prime(65536) && !is_prime(9) && !is_prime(0));
        assert!(build(65536, 1, &[("a", 1)]).is_err());
    }

    /// The paper's Table 1: M = 7, B0 (offset 3, skip 4), B1 (0, 2), B2 (3, 1). Lookup table
    /// B1 B0 B1 B0 B2 B2 B0; after B1 is removed, B0 B0 B0 B0 B2 B2 B2.
    #[test]
    fn the_papers_worked_example() {
        let b = |offset, skip| Entry {
            offset,
            skip,
            weight: 1,
        };
        let t = populate(7, &[b(3, 4), b(0, 2), b(3, 1)]).unwrap();
        let t: Vec<u32> = t.into_iter().map(Option::unwrap).collect();
        assert_eq!(t, [1, 0, 1, 0, 2, 2, 0]);
        // B1 removed: B0 and B2 remain (indices 0 and 1 here).
        let t = populate(7, &[b(3, 4), b(3, 1)]).unwrap();
        let t: Vec<u32> = t.into_iter().map(Option::unwrap).collect();
        assert_eq!(t, [0, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn every_backend_gets_its_weighted_share() {
        for (m, weights) in [
            (65537u32, vec![1u32, 1, 1]),
            (65537, vec![1, 2, 3, 4]),
            (251, vec![5, 1, 1, 0, 3]),
            (16381, vec![1; 10]),
            (7, vec![1, 1, 1]),
        ] {
            let ns = names(weights.len());
            let bs: Vec<(&str, u32)> = ns.iter().map(|n| n.as_str()).zip(weights.clone()).collect();
            let t = build(m, 42, &bs).unwrap();
            assert!(t.iter().all(Option::is_some), "every slot filled");
            let what = format!("M={m} weights {weights:?}");
            assert_weighted(m, &weights, &shares(&t, bs.len()), 0, &what);
        }
    }

    /// Backend i holds ⌊M·wᵢ/W⌋..=⌈M·wᵢ/W⌉ slots, widened by `slack` on each side.
    fn assert_weighted(m: u32, weights: &[u32], s: &[u32], slack: u64, what: &str) {
        let total: u64 = weights.iter().map(|w| *w as u64).sum();
        for (i, w) in weights.iter().enumerate() {
            let exact = m as u64 * *w as u64;
            let (lo, hi) = (
                (exact / total).saturating_sub(slack),
                exact.div_ceil(total) + slack,
            );
            assert!(
                (lo..=hi).contains(&(s[i] as u64)),
                "{what}: backend {i} has {} slots, expected {lo}..={hi}",
                s[i]
            );
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let ns = names(5);
        let bs: Vec<(&str, u32)> = ns.iter().map(|n| (n.as_str(), 1)).collect();
        let a = build(65537, 7, &bs).unwrap();
        assert_eq!(a, build(65537, 7, &bs).unwrap());
        let b = build(65537, 8, &bs).unwrap();
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(
            differ > 65537 / 2,
            "another seed, another table ({differ} slots differ)"
        );
        // Pinned: a change of the hash would silently move every flow of a running fleet.
        assert_eq!(
            offset_skip("backend-0", 7, 65537),
            offset_skip("backend-0", 7, 65537)
        );
    }

    #[test]
    fn no_weight_no_slots() {
        let t = build(251, 1, &[("a", 0), ("b", 0)]).unwrap();
        assert!(t.iter().all(Option::is_none));
        let t = build(251, 1, &[("a", 0), ("b", 2)]).unwrap();
        assert!(t.iter().all(|s| *s == Some(1)));
    }

    /// Removing 1 of N backends moves the removed backend's slots (1/N) plus a little more.
    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        for n in [3usize, 10, 20] {
            let ns = names(n);
            let all: Vec<(&str, u32)> = ns.iter().map(|n| (n.as_str(), 1)).collect();
            let before = build(65537, 3, &all).unwrap();
            for gone in [0, n / 2, n - 1] {
                let rest = without(&all, gone);
                let after = build(65537, 3, &rest).unwrap();
                // Compare by name: indices shift after the removed one.
                let moved = before
                    .iter()
                    .zip(&after)
                    .filter(|(b, a)| rest[a.unwrap() as usize].0 != all[b.unwrap() as usize].0)
                    .count();
                let frac = moved as f64 / 65537.0;
                let limit = 1.2 / n as f64;
                assert!(
                    frac <= limit,
                    "N={n}, removed {gone}: {frac:.4} of slots moved, limit {limit:.4}"
                );
                assert!(
                    frac >= 1.0 / n as f64 - 0.01,
                    "at least the removed share moves"
                );
            }
        }
    }

    /// A backend going down hands on exactly its own slots: every other slot keeps its
    /// backend, the ones up end at their weighted share of the whole table (within one
    /// slot of ⌊M·wᵢ/W⌋..⌈M·wᵢ/W⌉, W the weights up), and back up the table is the full one.
    #[test]
    fn a_backend_going_down_moves_only_its_own_slots() {
        for (m, weights) in [
            (65537u32, vec![1u32; 3]),
            (65537, vec![1; 10]),
            (65537, vec![1; 100]),
            (16381, vec![1, 2, 3, 4, 0, 5]),
            (251, vec![5, 1, 1, 3]),
        ] {
            let ns = names(weights.len());
            let bs: Vec<(&str, u32)> = ns.iter().map(|n| n.as_str()).zip(weights.clone()).collect();
            let full = build(m, 9, &bs).unwrap();
            assert_eq!(build_with_down(m, 9, &bs, &|_| false).unwrap(), full);
            for gone in [0, bs.len() / 2, bs.len() - 1] {
                let t = build_with_down(m, 9, &bs, &|i| i == gone).unwrap();
                let changed: Vec<usize> = (0..m as usize).filter(|s| t[*s] != full[*s]).collect();
                assert!(
                    changed.iter().all(|s| full[*s] == Some(gone as u32)),
                    "M={m} {weights:?}, {gone} down: only its slots change"
                );
                assert_eq!(
                    changed.len(),
                    shares(&full, bs.len())[gone] as usize,
                    "all of its slots change"
                );
                assert!(t.iter().all(Option::is_some), "every slot has a backend up");
                let mut up = weights.clone();
                up[gone] = 0;
                let what = format!("M={m} {weights:?}, {gone} down");
                assert_weighted(m, &up, &shares(&t, bs.len()), 1, &what);
            }
        }
    }

    /// A second backend down: the slots of the backends still up in the full table stay
    /// theirs; all down: no slot has a backend.
    #[test]
    fn more_backends_down() {
        let ns = names(10);
        let bs: Vec<(&str, u32)> = ns.iter().map(|n| (n.as_str(), 1)).collect();
        let full = build(16381, 4, &bs).unwrap();
        let one = build_with_down(16381, 4, &bs, &|i| i == 3).unwrap();
        let two = build_with_down(16381, 4, &bs, &|i| i == 3 || i == 7).unwrap();
        for s in 0..16381 {
            let owner = full[s].unwrap();
            if owner != 3 && owner != 7 {
                assert_eq!(two[s], Some(owner), "slot {s} of a backend up moved");
            }
            assert!(two[s] != Some(3) && two[s] != Some(7));
        }
        let moved = (0..16381).filter(|s| one[*s] != two[*s]).count();
        assert!(
            (1638..2 * 1639 + 200).contains(&moved),
            "the second down moves its own slots and a little of the first one's: {moved}"
        );
        let none = build_with_down(251, 4, &bs[..3], &|_| true).unwrap();
        assert!(none.iter().all(Option::is_none));
    }

    /// The goals for the Maglev quality table where they hold: the table's max/avg
    /// load is at most 1.01 whenever M >= 100·N; a backend going down moves 1/N of the slots
    /// and leaves max/avg at most 1.01; removing 1 of N from the config moves at most 1.1/N
    /// for N <= 10 (for N = 100 it moves 1.6–2.3/N: docs/benchmarks-lb.md); hash mod N moves
    /// most flows.
    #[test]
    fn quality_meets_the_goals_when_m_is_at_least_100_n() {
        for (n, m) in [
            (3u32, 251u32),
            (10, 16381),
            (100, 16381),
            (3, 65537),
            (10, 65537),
            (100, 65537),
        ] {
            let q = quality(n, m, 1, 20_000).unwrap();
            assert!(
                q.slot_max_avg <= 1.01,
                "N={n} M={m}: max/avg {}",
                q.slot_max_avg
            );
            assert!(q.slots_moved >= 1.0 / n as f64 - 1.0 / m as f64, "{q:?}");
            // A backend down hands on its own slots only, at any N.
            assert!(
                (q.down_slots_moved - 1.0 / n as f64).abs() <= 1.0 / m as f64,
                "N={n} M={m}: {:.4} of slots moved with one down",
                q.down_slots_moved
            );
            assert!(q.down_slot_max_avg <= 1.01, "{q:?}");
            if n <= 10 {
                assert!(
                    q.slots_moved <= 1.1 / n as f64,
                    "N={n} M={m}: {:.4} of slots moved, limit {:.4}",
                    q.slots_moved,
                    1.1 / n as f64
                );
            }
            assert!(
                q.modn_flows_moved > 0.5,
                "hash mod N moves most flows: {q:?}"
            );
        }
        assert!(quality(1, 251, 1, 10).is_err() && quality(300, 251, 1, 10).is_err());
    }
}
