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
    // next[i]: how far along its permutation backend i is.
    let mut next = vec![0u64; entries.len()];
    let mut filled = 0u32;
    while filled < m {
        for (i, e) in entries.iter().enumerate() {
            if left[i] == 0 {
                continue;
            }
            // Walk backend i's permutation to its next free slot (one exists: quotas add up
            // to M, and this backend still has some left).
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
            if filled == m {
                break;
            }
        }
    }
    Ok(table)
}

/// The table for named, weighted backends with `seed`: `(name, weight)` in config order.
pub fn build(m: u32, seed: u64, backends: &[(&str, u32)]) -> Result<Vec<Option<u32>>> {
    if !is_prime(m) {
        bail!("table size {m} is not prime");
    }
    let entries: Vec<Entry> = backends
        .iter()
        .map(|(name, weight)| {
            let (offset, skip) = offset_skip(name, seed, m);
            Entry {
                offset,
                skip,
                weight: *weight,
            }
        })
        .collect();
    populate(m, &entries)
}

/// Slots per backend index (`n` backends).
pub fn shares(table: &[Option<u32>], n: usize) -> Vec<u32> {
    let mut s = vec![0u32; n];
    for i in table.iter().flatten() {
        s[*i as usize] += 1;
    }
    s
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
            let s = shares(&t, bs.len());
            let total: u64 = weights.iter().map(|w| *w as u64).sum();
            for (i, w) in weights.iter().enumerate() {
                let exact = m as u64 * *w as u64;
                let (lo, hi) = (exact / total, exact.div_ceil(total));
                assert!(
                    (lo..=hi).contains(&(s[i] as u64)),
                    "M={m} weights {weights:?}: backend {i} has {} slots, expected {lo}..={hi}",
                    s[i]
                );
            }
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
                let rest: Vec<(&str, u32)> = all
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != gone)
                    .map(|(_, b)| *b)
                    .collect();
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
}
