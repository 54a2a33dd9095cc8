//! `wan`: types shared by the WAN emulator's XDP/tc programs and its userspace engine, and the
//! loss models, which run in the kernel (decided per packet before anything is queued) and are
//! unit-tested in userspace from this one implementation.

/// Direction index: 0 = frames arriving on interface A (leaving on B), 1 = the reverse.
pub const DIR_A_TO_B: u32 = 0;
pub const DIR_B_TO_A: u32 = 1;

/// Metadata the XDP program puts in front of frames it hands to the AF_XDP engine.
pub const META_MAGIC: u32 = 0x574c_414e; // "WLAN"

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Meta {
    pub magic: u32,
    pub class: u32,
    /// When the frame arrived (CLOCK_MONOTONIC ns, taken by the XDP program): the engine counts
    /// delay and link time from here, not from when its thread got to the frame.
    pub arrival_ns: u64,
}

/// Global configuration (array map, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WanConfig {
    /// ifindex of interface A and B.
    pub ifindex: [u32; 2],
    /// Number of classes per direction (index stride in the per-class maps).
    pub max_classes: u32,
    /// Active profile generation (0 or 1): `set` writes the other one, then flips this.
    pub gen: u32,
    /// CLOCK_MONOTONIC nanoseconds the blackhole schedule counts from.
    pub epoch_ns: u64,
    /// `CLASSES_HOSTS` / `CLASSES_PREFIXES`: which class tables hold entries.
    pub class_tables: u32,
    pub _pad: u32,
}

/// Single-address classes live in a hash table (one lookup, flat in their number).
pub const CLASSES_HOSTS: u32 = 1;
/// Prefix classes live in an LPM trie.
pub const CLASSES_PREFIXES: u32 = 2;

/// Loss model kinds.
pub const LOSS_NONE: u32 = 0;
pub const LOSS_RANDOM: u32 = 1;
pub const LOSS_STATE: u32 = 2;
pub const LOSS_GEMODEL: u32 = 3;

/// Profile flag: the class needs no userspace stage (no delay, rate, duplicate, corrupt,
/// reorder): frames take the in-kernel fast path.
pub const PROFILE_FAST: u32 = 1;

/// What the kernel needs of a class profile in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelProfile {
    pub loss_kind: u32,
    pub flags: u32,
    /// Probabilities scaled to `u32::MAX`:
    /// random: [p, correlation]; state: [p13, p31, p32, p23, p14]; gemodel: [p, r, 1-h, 1-k].
    pub p: [u32; 5],
    pub _pad: u32,
    /// Blackhole: drop everything for `blackhole_ns` at the end of every `period_ns`.
    pub blackhole_ns: u64,
    pub period_ns: u64,
}

/// Per-(direction, class) loss-model state (kernel-owned, one writer per direction).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossState {
    pub rng: u64,
    /// Markov / Gilbert-Elliott state (1-based as in the netem literature); correlation memory.
    pub state: u32,
    pub last: u32,
}

/// Kernel-side counters per (direction, class), per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WanCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub loss_drops: u64,
    pub blackhole_drops: u64,
    /// Forwarded in the kernel (no userspace stage).
    pub fast_packets: u64,
    /// Handed to the AF_XDP engine.
    pub xsk_packets: u64,
    /// Meant for the engine but its socket was not there: forwarded unimpaired.
    pub xsk_fallback: u64,
}

impl WanCounters {
    pub fn add(&mut self, o: &WanCounters) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.loss_drops += o.loss_drops;
        self.blackhole_drops += o.blackhole_drops;
        self.fast_packets += o.fast_packets;
        self.xsk_packets += o.xsk_packets;
        self.xsk_fallback += o.xsk_fallback;
    }
}

/// LPM key of the class table: 32 bits of (side, proto, port) then an IPv6 (or v4-mapped)
/// address. `prefixlen` counts bits from the start of `data`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassKey {
    /// 0 = match on the B-side address (the far end as seen from A), 1 = the A-side address.
    pub side: u8,
    /// IP protocol, 0 = any.
    pub proto: u8,
    /// Port on the matched side, network order, 0 = any.
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

pub const CLASS_KEY_FIXED_BITS: u32 = 32;

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::Meta {}
    unsafe impl aya::Pod for super::WanConfig {}
    unsafe impl aya::Pod for super::KernelProfile {}
    unsafe impl aya::Pod for super::LossState {}
    unsafe impl aya::Pod for super::WanCounters {}
    unsafe impl aya::Pod for super::ClassKey {}
}

/// xorshift64*: small, deterministic, verifier-friendly.
#[inline(always)]
pub fn next_u32(s: &mut u64) -> u32 {
    let mut x = *s;
    if x == 0 {
        x = 0x9E37_79B9_7F4A_7C15;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
}

/// A uniform random value correlated with the previous one by `rho` (scaled to u32::MAX):
/// with probability `rho` the previous value is reused, otherwise a fresh one is drawn.
///
/// The values stay exactly uniform, so `P(value < p) = p` whatever the correlation, and
/// consecutive values have correlation `rho`. (netem mixes the new and the previous value
/// linearly instead, which pulls values towards the middle: its `loss 1% 25%` loses far less
/// than 1%. wirelab keeps the configured probability.)
#[inline(always)]
pub fn correlated(s: &mut u64, last: &mut u32, rho: u32) -> u32 {
    if rho != 0 && next_u32(s) < rho {
        return *last;
    }
    let r = next_u32(s);
    *last = r;
    r
}

/// Decide whether the next packet is lost. Pure function of the profile and state.
#[inline(always)]
pub fn loss_step(p: &KernelProfile, st: &mut LossState) -> bool {
    match p.loss_kind {
        LOSS_RANDOM => {
            if p.p[0] == 0 {
                return false;
            }
            let v = correlated(&mut st.rng, &mut st.last, p.p[1]);
            v < p.p[0] || p.p[0] == u32::MAX
        }
        LOSS_STATE => {
            // States: 1 good (gap), 2 good in burst, 3 lost in burst, 4 isolated loss.
            let (p13, p31, p32, p23, p14) = (p.p[0], p.p[1], p.p[2], p.p[3], p.p[4]);
            let r = next_u32(&mut st.rng) as u64;
            match st.state {
                2 => {
                    if r < p23 as u64 {
                        st.state = 3;
                        true
                    } else {
                        false
                    }
                }
                3 => {
                    if r < p32 as u64 {
                        st.state = 2;
                        false
                    } else if r < p32 as u64 + p31 as u64 {
                        st.state = 1;
                        false
                    } else {
                        true
                    }
                }
                4 => {
                    st.state = 1;
                    false
                }
                _ => {
                    if r < p14 as u64 {
                        st.state = 4;
                        true
                    } else if r < p14 as u64 + p13 as u64 {
                        st.state = 3;
                        true
                    } else {
                        st.state = 1;
                        false
                    }
                }
            }
        }
        LOSS_GEMODEL => {
            // [p good->bad, r bad->good, 1-h loss in bad, 1-k loss in good]
            let (pp, r, loss_bad, loss_good) = (p.p[0], p.p[1], p.p[2], p.p[3]);
            let t = next_u32(&mut st.rng);
            let l = next_u32(&mut st.rng);
            if st.state == 2 {
                if t < r {
                    st.state = 1;
                }
            } else if t < pp {
                st.state = 2;
            }
            let lp = if st.state == 2 { loss_bad } else { loss_good };
            lp == u32::MAX || l < lp
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn scale(p: f64) -> u32 {
        (p * u32::MAX as f64) as u32
    }

    #[test]
    fn correlation_keeps_the_loss_probability() {
        for (p, rho) in [(0.05, 0.25), (0.01, 0.25), (0.10, 0.5), (0.05, 0.0)] {
            let prof = KernelProfile {
                loss_kind: LOSS_RANDOM,
                p: [scale(p), scale(rho), 0, 0, 0],
                ..Default::default()
            };
            let mut st = LossState {
                rng: 12345,
                state: 1,
                last: 0x8000_0000,
            };
            let n = 1_000_000;
            let (mut lost, mut both, mut prev) = (0u64, 0u64, false);
            for _ in 0..n {
                let l = loss_step(&prof, &mut st);
                lost += l as u64;
                both += (l && prev) as u64;
                prev = l;
            }
            let rate = lost as f64 / n as f64;
            // Correlated draws inflate the variance by (1+rho)/(1-rho); 5 sigma.
            let sigma = (p * (1.0 - p) / n as f64 * (1.0 + rho) / (1.0 - rho)).sqrt();
            assert!((rate - p).abs() < 5.0 * sigma, "p {p} rho {rho}: {rate}");
            // P(loss | previous loss) = rho + (1 - rho) p.
            let cond = both as f64 / lost as f64;
            let want = rho + (1.0 - rho) * p;
            assert!(
                (cond - want).abs() < 0.02,
                "p {p} rho {rho}: P(l|l) {cond} want {want}"
            );
        }
    }

    #[test]
    fn gilbert_elliott_bursts() {
        // p = 2%, r = 25%, 1-h = 100%: mean burst 1/r = 4, loss p/(p+r) = 7.4%.
        let prof = KernelProfile {
            loss_kind: LOSS_GEMODEL,
            p: [scale(0.02), scale(0.25), u32::MAX, 0, 0],
            ..Default::default()
        };
        let mut st = LossState {
            rng: 99,
            state: 1,
            last: 0,
        };
        let (mut lost, mut bursts, mut prev) = (0u64, 0u64, false);
        let n = 1_000_000;
        for _ in 0..n {
            let l = loss_step(&prof, &mut st);
            lost += l as u64;
            bursts += (l && !prev) as u64;
            prev = l;
        }
        let mean = lost as f64 / bursts as f64;
        assert!((mean - 4.0).abs() < 0.1, "mean burst {mean}");
        let rate = lost as f64 / n as f64;
        assert!((rate - 0.02 / 0.27).abs() < 0.003, "rate {rate}");
    }
}
