//! How an address table is searched: tuple space with controlled prefix expansion.
//!
//! The kernel's LPM trie walks a path whose length grows with the number of prefixes (about
//! log2(n) nodes). A hash lookup costs the same for 1 or 100,000 entries, but needs one probe
//! per prefix length in use. So the prefixes of a table are expanded to at most
//! [`MAX_PROBES`] lengths: a prefix becomes the 2^(t-l) prefixes of the shortest chosen length
//! `t` at or above its own length `l` (a /24 next to /25s becomes two /25s). The chosen
//! lengths minimise the number of entries for each probe count (dynamic programming over the
//! sorted distinct lengths); the fewest probes whose table fits the entry budget win. When
//! even [`MAX_PROBES`] lengths would need too many entries, the table stays an LPM trie.
//!
//! Every entry's bitmap is that of the longest original prefix covering it, which already
//! holds the bits of all shorter covering prefixes (see `rules::compile`), so the first hit
//! when probing longest first is the longest match, and a miss on all probes is the /0 entry.
use std::collections::HashMap;

use wirelab_common::fw::{lookup, MAX_PROBES, TRIE_ENTRIES};

/// The most entries one generation of a table may hold (both generations share a map).
pub const GEN_CAPACITY: usize = (TRIE_ENTRIES / 2) as usize;

/// What gets written for one address table of one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<const A: usize> {
    /// [`lookup`] method.
    pub mode: u8,
    /// Probed lengths, longest first (hash mode only).
    pub lengths: Vec<u8>,
    /// (prefix length, address, bitmap). Hash mode: the expanded prefixes; trie mode: the
    /// compiled prefixes including /0; any mode: nothing.
    pub entries: Vec<(u8, [u8; A], u64)>,
    /// Bitmap of the /0 entry: the answer when nothing longer matches.
    pub any: u64,
}

impl<const A: usize> Plan<A> {
    pub fn method(&self) -> super::types::TableMethod {
        use super::types::TableMethod;
        match self.mode {
            lookup::HASH => TableMethod::Hash,
            lookup::TRIE => TableMethod::Trie,
            _ => TableMethod::Empty,
        }
    }

    pub fn table_plan(&self) -> super::types::TablePlan {
        super::types::TablePlan {
            method: self.method(),
            lengths: self.lengths.clone(),
            entries: self.entries.len(),
        }
    }
}

/// Entry budget for `n` original prefixes: expansion may use up to 16 entries per prefix or
/// 4,096 in all, whichever is more, within the map's per-generation capacity. (A probe costs
/// ~20 ns per packet; an entry costs ~100 bytes and ~3 µs of reload time.)
pub fn budget(n: usize) -> usize {
    (16 * n).clamp(4_096, GEN_CAPACITY)
}

fn to_u128<const A: usize>(a: &[u8; A]) -> u128 {
    let mut b = [0u8; 16];
    b[16 - A..].copy_from_slice(a);
    u128::from_be_bytes(b)
}

fn from_u128<const A: usize>(v: u128) -> [u8; A] {
    let mut a = [0u8; A];
    a.copy_from_slice(&v.to_be_bytes()[16 - A..]);
    a
}

/// Entries of expanding `count` prefixes by `shift` bits, saturating far above any budget.
fn expanded(count: u128, shift: u32) -> u128 {
    if shift >= 64 {
        u128::MAX / 4
    } else {
        count.saturating_mul(1u128 << shift)
    }
}

/// Choose the lookup for `compiled` (the output of `rules::compile` for one table: a /0
/// entry plus the prefixes, bitmaps folded) within `budget` entries.
pub fn plan<const A: usize>(compiled: &[(u8, [u8; A], u64)], budget: usize) -> Plan<A> {
    let any = compiled.iter().find(|e| e.0 == 0).map(|e| e.2).unwrap_or(0);
    let mut counts: std::collections::BTreeMap<u8, u128> = Default::default();
    for e in compiled.iter().filter(|e| e.0 > 0) {
        *counts.entry(e.0).or_default() += 1;
    }
    let lens: Vec<(u8, u128)> = counts.into_iter().collect();
    let m = lens.len();
    if m == 0 {
        return Plan {
            mode: lookup::ANY,
            lengths: vec![],
            entries: vec![],
            any,
        };
    }
    // cost(a, b): entries when lengths a..=b are expanded to length b.
    let cost = |a: usize, b: usize| -> u128 {
        (a..=b).fold(0u128, |s, i| {
            s.saturating_add(expanded(lens[i].1, (lens[b].0 - lens[i].0) as u32))
        })
    };
    let kmax = MAX_PROBES.min(m);
    // best[k][b]: fewest entries covering lengths 0..=b with k+1 groups, the last ending at b.
    let mut best = vec![vec![u128::MAX; m]; kmax];
    let mut from = vec![vec![0usize; m]; kmax];
    for (b, v) in best[0].iter_mut().enumerate() {
        *v = cost(0, b);
    }
    for k in 1..kmax {
        for b in k..m {
            for a in k..=b {
                let c = best[k - 1][a - 1].saturating_add(cost(a, b));
                if c < best[k][b] {
                    best[k][b] = c;
                    from[k][b] = a;
                }
            }
        }
    }
    let Some(k) = (0..kmax).find(|&k| best[k][m - 1] <= budget as u128) else {
        return Plan {
            mode: lookup::TRIE,
            lengths: vec![],
            entries: compiled.to_vec(),
            any,
        };
    };
    // Group boundaries: each group's target is its longest length.
    let mut targets = vec![];
    let (mut kk, mut b) = (k, m - 1);
    loop {
        targets.push(lens[b].0);
        if kk == 0 {
            break;
        }
        b = from[kk][b] - 1;
        kk -= 1;
    }
    // targets is longest first. Expand, shortest originals first so that longer ones
    // (whose bitmaps include theirs) overwrite them.
    let bits = (A * 8) as u32;
    let target_of = |l: u8| -> u8 { *targets.iter().rev().find(|&&t| t >= l).unwrap_or(&l) };
    let mut orig: Vec<&(u8, [u8; A], u64)> = compiled.iter().filter(|e| e.0 > 0).collect();
    orig.sort_by_key(|e| e.0);
    let mut out: HashMap<(u8, u128), u64> = HashMap::new();
    for (l, a, v) in orig {
        let t = target_of(*l);
        let base = to_u128(a);
        let step = 1u128 << (bits - t as u32);
        for j in 0..(1u128 << (t - l)) {
            out.insert((t, base + j * step), *v);
        }
    }
    let mut entries: Vec<(u8, [u8; A], u64)> = out
        .into_iter()
        .map(|((t, a), v)| (t, from_u128::<A>(a), v))
        .collect();
    entries.sort_by_key(|e| (e.0, e.1));
    Plan {
        mode: lookup::HASH,
        lengths: targets,
        entries,
        any,
    }
}

/// Network-order mask of an IPv4 prefix length, as the program compares it.
pub fn mask4(len: u8) -> u32 {
    let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from_ne_bytes(m.to_be_bytes())
}

/// Network-order halves of an IPv6 prefix length's mask, as the program compares them.
pub fn mask6(len: u8) -> [u64; 2] {
    let m = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    let b = m.to_be_bytes();
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&b[..8]);
    lo.copy_from_slice(&b[8..]);
    [u64::from_ne_bytes(hi), u64::from_ne_bytes(lo)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the program computes for `addr` with `p` (`idx`: `p`'s entries by key).
    fn probe<const A: usize>(p: &Plan<A>, addr: [u8; A]) -> u64 {
        let idx: HashMap<(u8, [u8; A]), u64> =
            p.entries.iter().map(|e| ((e.0, e.1), e.2)).collect();
        probe_in(p, &idx, addr)
    }

    fn probe_in<const A: usize>(
        p: &Plan<A>,
        idx: &HashMap<(u8, [u8; A]), u64>,
        addr: [u8; A],
    ) -> u64 {
        let a = to_u128(&addr);
        let bits = (A * 8) as u32;
        match p.mode {
            lookup::HASH => {
                for &t in &p.lengths {
                    let m = (u128::MAX >> (128 - bits)) & !((1u128 << (bits - t as u32)) - 1);
                    if let Some(v) = idx.get(&(t, from_u128::<A>(a & m))) {
                        return *v;
                    }
                }
                p.any
            }
            _ => lpm(&p.entries, addr).unwrap_or(p.any),
        }
    }

    /// Longest-prefix match over `entries`, as the kernel's trie answers.
    fn lpm<const A: usize>(entries: &[(u8, [u8; A], u64)], addr: [u8; A]) -> Option<u64> {
        let a = to_u128(&addr);
        let bits = (A * 8) as u32;
        entries
            .iter()
            .filter(|e| {
                let shift = bits - e.0 as u32;
                e.0 == 0 || (a >> shift) == (to_u128(&e.1) >> shift)
            })
            .max_by_key(|e| e.0)
            .map(|e| e.2)
    }

    /// Folded entries as `rules::compile` builds them from (len, addr, own bits).
    fn fold<const A: usize>(own: &[(u8, [u8; A], u64)]) -> Vec<(u8, [u8; A], u64)> {
        let bits = (A * 8) as u32;
        let mut v: Vec<(u8, [u8; A], u64)> = own
            .iter()
            .map(|&(l, a, _)| {
                let mut b = 0;
                for &(l2, a2, o2) in own {
                    let shift = bits - l2 as u32;
                    if l2 <= l && (l2 == 0 || to_u128(&a) >> shift == to_u128(&a2) >> shift) {
                        b |= o2;
                    }
                }
                (l, a, b)
            })
            .collect();
        if !v.iter().any(|e| e.0 == 0) {
            v.push((0, [0; A], 0));
        }
        v
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn one_length_is_one_probe_without_expansion() {
        let c = fold(&[(25, [198, 18, 0, 128], 1), (25, [198, 18, 1, 0], 2)]);
        let p = plan(&c, budget(2));
        assert_eq!(p.mode, lookup::HASH);
        assert_eq!(p.lengths, vec![25]);
        assert_eq!(p.entries.len(), 2);
        assert_eq!(probe(&p, [198, 18, 0, 200]), 1);
        assert_eq!(probe(&p, [198, 18, 0, 100]), 0);
    }

    #[test]
    fn near_lengths_merge_into_one_probe() {
        // 782 /25s + 218 /24s: the /24s become two /25s each, one probe in all.
        let mut own = vec![];
        for i in 0..782u32 {
            own.push((25, (0xc612_0000u32 + (i << 7)).to_be_bytes(), 1));
        }
        for i in 0..218u32 {
            own.push((24, (0x0a00_0000u32 + (i << 8)).to_be_bytes(), 1));
        }
        own.push((0, [0; 4], 0));
        let p = plan(&own, budget(own.len() - 1));
        assert_eq!(p.lengths, vec![25]);
        assert_eq!(p.entries.len(), 782 + 2 * 218);
    }

    #[test]
    fn far_lengths_get_their_own_probe() {
        // 60,000 /32s and 40,000 /24s: merging would need 10 million entries.
        let mut own = vec![];
        for i in 0..60_000u32 {
            own.push((32, (0x0a00_0000u32 + i * 7).to_be_bytes(), 1));
        }
        for i in 0..40_000u32 {
            own.push((24, (0x0b00_0000u32 + (i << 8)).to_be_bytes(), 2));
        }
        // Disjoint prefixes: folding changes nothing, only the /0 entry is added.
        own.push((0, [0; 4], 0));
        let p = plan(&own, budget(own.len() - 1));
        assert_eq!(p.mode, lookup::HASH);
        assert_eq!(p.lengths, vec![32, 24]);
        assert_eq!(p.entries.len(), 100_000);
    }

    #[test]
    fn too_many_lengths_fall_back_to_the_trie() {
        // Seven lengths 4 bits apart: four probes need at least 1 + 3 x 17 = 52 entries.
        let own: Vec<(u8, [u8; 4], u64)> = [8u8, 12, 16, 20, 24, 28, 32]
            .iter()
            .enumerate()
            .map(|(i, &l)| (l, [10 + i as u8, 0, 0, 0], 1u64 << i))
            .collect();
        let p = plan(&fold(&own), 40);
        assert_eq!(plan(&fold(&own), 52).lengths, vec![32, 24, 16, 8]);
        assert_eq!(p.mode, lookup::TRIE);
        assert_eq!(probe(&p, [12, 0, 0, 1]), 4);
        assert_eq!(probe(&p, [9, 0, 0, 1]), 0);
    }

    #[test]
    fn expansion_answers_like_longest_prefix_match() {
        // Random nested prefix sets: every address must get the trie's answer, in hash mode
        // (various probe counts) and in trie mode.
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..120 {
            let n = 1 + (rng.next() % 40) as usize;
            let mut own: Vec<(u8, [u8; 4], u64)> = vec![];
            for i in 0..n {
                // Cluster addresses under 198.18.0.0/16 so that prefixes nest.
                let l = 8 + (rng.next() % 25) as u8;
                let a = 0xc612_0000u32 | (rng.next() as u32 & 0xffff);
                let a = if l == 32 { a } else { a & !(u32::MAX >> l) };
                own.push((l, a.to_be_bytes(), 1 << (i % 64)));
            }
            own.sort_by_key(|e| (e.0, e.1));
            own.dedup_by_key(|e| (e.0, e.1));
            if round % 3 == 0 {
                own.push((0, [0; 4], 1 << 63));
            }
            let c = fold(&own);
            for b in [16, 1_000, 20_000] {
                let p = plan(&c, b);
                assert!(p.entries.len() <= b.max(c.len()), "budget {b}");
                let idx = p.entries.iter().map(|e| ((e.0, e.1), e.2)).collect();
                for _ in 0..300 {
                    let a = if rng.next().is_multiple_of(4) {
                        rng.next() as u32
                    } else {
                        0xc612_0000u32 | (rng.next() as u32 & 0xffff)
                    };
                    let addr = a.to_be_bytes();
                    let want = lpm(&c, addr).unwrap_or(0);
                    assert_eq!(
                        probe_in(&p, &idx, addr),
                        want,
                        "round {round} budget {b} {addr:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn ipv6_expands_too() {
        let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let own = vec![
            (48u8, a("2001:2::"), 1u64),
            (64, a("2001:2:0:1::"), 2),
            (128, a("2001:2:0:1::5"), 4),
        ];
        let c = fold(&own);
        let p = plan(&c, budget(3));
        assert_eq!(p.mode, lookup::HASH);
        assert_eq!(p.lengths, vec![128, 64, 48]);
        assert_eq!(probe(&p, a("2001:2:0:1::5")), 7);
        assert_eq!(probe(&p, a("2001:2:0:1::6")), 3);
        assert_eq!(probe(&p, a("2001:2:0:2::6")), 1);
        assert_eq!(probe(&p, a("2001:3::")), 0);
    }

    #[test]
    fn masks_are_network_order() {
        assert_eq!(mask4(24).to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(mask4(32).to_ne_bytes(), [255; 4]);
        let m = mask6(72);
        assert_eq!(m[0].to_ne_bytes(), [255; 8]);
        assert_eq!(m[1].to_ne_bytes(), [255, 0, 0, 0, 0, 0, 0, 0]);
    }
}
