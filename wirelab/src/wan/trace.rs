//! Trace replay (`rate trace FILE [once|wrap]`): a link whose delivery opportunities come from
//! a packet-delivery trace in Mahimahi's mm-link format, and the converter that writes
//! constant-rate, multi-level and Poisson-timed traces (`wirelab wan trace`).
//!
//! The format: one line per delivery opportunity, each an integer number of milliseconds
//! since the trace started; the numbers never decrease, and a number repeated N times means N
//! opportunities in that millisecond. Each opportunity delivers up to [`OPPORTUNITY_BYTES`] of
//! IP packet, counted byte by byte: one opportunity carries several small packets, and a
//! packet larger than what is left of an opportunity takes the rest of it and finishes in the
//! next one(s), leaving at the opportunity that carries its last byte. Bytes an opportunity
//! could carry when nothing is waiting are lost (the link does not save them up). By default
//! the trace wraps at its last timestamp and starts again; `once` plays it a single time, after
//! which the link carries nothing (see [`Cursor::depart`]).
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Result};
use rand::{rngs::StdRng, Rng as _, SeedableRng as _};

/// What one opportunity carries: a 1500-byte IP packet (a full-size Ethernet frame of 1514
/// bytes), as in mm-link, which counts TUN packets (IP plus a 4-byte header) against 1504.
pub const OPPORTUNITY_BYTES: u64 = 1500;
/// The Ethernet header, not counted against an opportunity (mm-link sees IP packets).
pub const ETH_HEADER: u64 = 14;
/// Largest trace file read (about ten million opportunities).
pub const MAX_FILE: u64 = 64 << 20;

/// A validated trace, stored as runs: (millisecond, opportunities in it), strictly increasing
/// milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub path: PathBuf,
    runs: Vec<(u64, u32)>,
    /// Opportunities in one pass.
    pub opportunities: u64,
    /// The last timestamp: one pass lasts this long, and the next starts there.
    pub period_ms: u64,
}

impl Trace {
    /// Parse the text of a trace; errors name the line (1-based) and what is wrong with it.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let name = path.display();
        let mut runs: Vec<(u64, u32)> = vec![];
        let mut opportunities = 0u64;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            // A CRLF file's lines end in '\r': tolerated; anything else is refused.
            let t = line.strip_suffix('\r').unwrap_or(line);
            if t.is_empty() {
                bail!("{name}: line {n} is empty (each line is one whole number of milliseconds)");
            }
            let ms: u64 = t
                .parse()
                .ok()
                .filter(|_| t.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{name}: line {n}: {t:?} is not a whole number of milliseconds (one per line, mm-link format)"
                    )
                })?;
            if ms > u32::MAX as u64 {
                bail!("{name}: line {n}: {ms} ms is beyond the longest trace (about 49 days)");
            }
            match runs.last_mut() {
                Some((last, _)) if ms < *last => bail!(
                    "{name}: line {n}: {ms} ms comes after {last} ms; timestamps must not decrease"
                ),
                Some((last, count)) if ms == *last => *count += 1,
                _ => runs.push((ms, 1)),
            }
            opportunities += 1;
        }
        let Some(&(period_ms, _)) = runs.last() else {
            bail!("{name}: empty trace: it needs at least one delivery opportunity (a line with a millisecond timestamp)");
        };
        if period_ms == 0 {
            bail!("{name}: the last timestamp is 0 ms: a trace must last longer than 0 ms (it wraps at its last timestamp)");
        }
        Ok(Self {
            path: path.to_path_buf(),
            runs,
            opportunities,
            period_ms,
        })
    }

    /// Read and validate a trace file (a regular file of at most [`MAX_FILE`] bytes).
    pub fn load(path: &Path) -> Result<Arc<Self>> {
        let text = crate::util::read_user_file(path, MAX_FILE)?;
        Ok(Arc::new(Self::parse(&text, path)?))
    }

    /// Mean rate over one pass, in bits per second of IP packet.
    pub fn mean_bps(&self) -> f64 {
        (self.opportunities * OPPORTUNITY_BYTES * 8) as f64 / (self.period_ms as f64 / 1e3)
    }

    /// The opportunity's millisecond in pass `cycle`.
    fn at(&self, cycle: u64, run: usize) -> u64 {
        cycle * self.period_ms + self.runs[run].0
    }
}

/// Where a link is in its trace: the next unused opportunity (pass, run, index in the run)
/// and the bytes left in the opportunity last opened.
#[derive(Debug, Clone)]
pub struct Cursor {
    /// When the trace's 0 ms is (monotonic ns).
    epoch_ns: u64,
    cycle: u64,
    run: usize,
    used: u32,
    /// The opportunity last opened: its time and the bytes still free in it.
    open_ns: u64,
    left: u64,
    /// `once` and every opportunity used.
    ended: bool,
}

impl Cursor {
    pub fn new(epoch_ns: u64) -> Self {
        Self {
            epoch_ns,
            cycle: 0,
            run: 0,
            used: 0,
            open_ns: 0,
            left: 0,
            ended: false,
        }
    }

    fn next_ns(&self, t: &Trace) -> u64 {
        self.epoch_ns + t.at(self.cycle, self.run) * 1_000_000
    }

    /// Move to the first opportunity at or after `min_ns` unless the next one is already
    /// there: a link idle for a long time does not step through every opportunity it missed.
    fn seek(&mut self, t: &Trace, once: bool, min_ns: u64) {
        if self.ended || self.next_ns(t) >= min_ns {
            return;
        }
        let m = (min_ns - self.epoch_ns).div_ceil(1_000_000);
        let (mut cycle, mut within) = (m / t.period_ms, m % t.period_ms);
        // At a pass boundary the previous pass's last millisecond comes first.
        if within == 0 && cycle > 0 {
            cycle -= 1;
            within = t.period_ms;
        }
        if once && cycle > 0 {
            self.ended = true;
            return;
        }
        self.cycle = cycle;
        self.run = t.runs.partition_point(|&(ms, _)| ms < within);
        self.used = 0;
    }

    /// Take the next opportunity, returning its time.
    fn take(&mut self, t: &Trace, once: bool) -> Option<u64> {
        if self.ended {
            return None;
        }
        let at = self.next_ns(t);
        self.used += 1;
        if self.used == t.runs[self.run].1 {
            self.used = 0;
            self.run += 1;
            if self.run == t.runs.len() {
                self.run = 0;
                self.cycle += 1;
                self.ended = once;
            }
        }
        Some(at)
    }

    /// When a packet of `ip_bytes`, at the head of the link's queue from `ready_ns` on, has
    /// its last byte delivered. It may use what is left of the opportunity last opened if that
    /// opportunity is not earlier than `ready_ns`; otherwise it waits for the next one at or
    /// after `ready_ns`. `None`: a `once` trace has ended and the link carries nothing more.
    pub fn depart(&mut self, t: &Trace, once: bool, ready_ns: u64, ip_bytes: u64) -> Option<u64> {
        let mut rem = ip_bytes.max(1);
        if self.left > 0 && self.open_ns >= ready_ns {
            let n = rem.min(self.left);
            (rem, self.left) = (rem - n, self.left - n);
            if rem == 0 {
                return Some(self.open_ns);
            }
        } else {
            self.left = 0;
            self.seek(t, once, ready_ns);
        }
        loop {
            self.open_ns = self.take(t, once)?;
            let n = rem.min(OPPORTUNITY_BYTES);
            (rem, self.left) = (rem - n, OPPORTUNITY_BYTES - n);
            if rem == 0 {
                return Some(self.open_ns);
            }
        }
    }
}

/// Append a constant rate of `bits_per_sec` (of IP packet) from `from_ms` for `duration_ms`:
/// the k-th opportunity (k = 1, 2, …) at the first millisecond by which the rate has earned
/// k × 12,000 bits, so no stretch of the trace carries more than the rate (plus one
/// millisecond's worth), and the span holds as many whole opportunities as the rate fills.
fn constant(bits_per_sec: u64, from_ms: u64, duration_ms: u64, out: &mut Vec<u64>) {
    let bits = OPPORTUNITY_BYTES as u128 * 8;
    for k in 1..=opportunities(bits_per_sec, duration_ms) {
        let ms = (k * bits * 1000).div_ceil(bits_per_sec as u128);
        out.push(from_ms + ms as u64);
    }
}

/// Whole delivery opportunities `bits_per_sec` fills in `duration_ms` (a constant level's
/// count; a Poisson level's mean).
fn opportunities(bits_per_sec: u64, duration_ms: u64) -> u128 {
    bits_per_sec as u128 * duration_ms as u128 / (1000 * OPPORTUNITY_BYTES as u128 * 8)
}

/// The text of a trace: one timestamp per line.
pub fn render(stamps: &[u64]) -> String {
    let mut s = String::with_capacity(stamps.len() * 6);
    for t in stamps {
        s += &t.to_string();
        s.push('\n');
    }
    s
}

/// Append opportunities at the times of a Poisson process of mean `bits_per_sec` / 12,000
/// per second (exponential gaps, the `*-poisson` traces of Pantheon's cellular emulators),
/// each in the millisecond it falls in (counted from 1, like [`constant`]).
fn poisson(
    bits_per_sec: u64,
    from_ms: u64,
    duration_ms: u64,
    rng: &mut StdRng,
    out: &mut Vec<u64>,
) {
    let per_ms = bits_per_sec as f64 / (OPPORTUNITY_BYTES * 8) as f64 / 1e3;
    let mut t = 0.0;
    loop {
        // Exponential gap with mean 1/per_ms ms (1 - u is in (0, 1]).
        t += -(1.0 - rng.random::<f64>()).ln() / per_ms;
        if t > duration_ms as f64 {
            break;
        }
        out.push(from_ms + (t.ceil() as u64).max(1));
    }
}

/// The timestamps of a trace of `levels` ((rate in bit/s, duration in ms) in turn): evenly
/// spaced opportunities, or with `poisson = Some(seed)` Poisson-timed ones of the same mean
/// rate (reproducible from the seed). The trace wraps at its last timestamp, so the last one
/// is put on the total duration: a wrapped trace repeats the levels with the same period.
pub fn levels(levels: &[(u64, u64)], poisson_seed: Option<u64>) -> Result<Vec<u64>> {
    if levels.is_empty() {
        bail!("give at least one rate");
    }
    // Refused before anything is built: a trace the `rate trace` word would not read (the
    // stamps of a long fast trace would otherwise fill the memory first).
    let total_ms: u64 = levels.iter().fold(0u64, |a, &(_, ms)| a.saturating_add(ms));
    let expected: u128 = levels.iter().map(|&(bps, ms)| opportunities(bps, ms)).sum();
    let line = total_ms.to_string().len() as u128 + 1;
    if expected * line > MAX_FILE as u128 {
        bail!(
            "about {expected} opportunities over {total_ms} ms: a file of about {} MiB, more than the {} MiB a `rate trace` reads; give a shorter duration (a trace wraps: a short one repeats)",
            (expected * line) >> 20,
            MAX_FILE >> 20
        );
    }
    let mut v = vec![];
    let mut from = 0;
    let mut rng = poisson_seed.map(StdRng::seed_from_u64);
    for &(bps, ms) in levels {
        if ms == 0 {
            bail!("each level must last at least 1 ms");
        }
        match rng.as_mut() {
            Some(rng) => poisson(bps, from, ms, rng, &mut v),
            None => constant(bps, from, ms, &mut v),
        }
        from += ms;
    }
    match v.last_mut() {
        Some(last) => *last = from,
        None => bail!(
            "less than one delivery opportunity ({OPPORTUNITY_BYTES} bytes) in {from} ms at these rates: give a higher rate or a longer duration"
        ),
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(text: &str) -> Trace {
        Trace::parse(text, Path::new("t.trace")).unwrap()
    }

    fn refused(text: &str) -> String {
        format!(
            "{:#}",
            Trace::parse(text, Path::new("t.trace")).unwrap_err()
        )
    }

    #[test]
    fn parses_mm_link_traces_and_names_bad_lines() {
        let t = tr("1\n1\n2\n5\n");
        assert_eq!(t.runs, vec![(1, 2), (2, 1), (5, 1)]);
        assert_eq!((t.opportunities, t.period_ms), (4, 5));
        // 4 × 1500 bytes in 5 ms = 9.6 Mbit/s.
        assert!((t.mean_bps() - 9.6e6).abs() < 1.0);
        assert_eq!(tr("0\r\n3\r\n").period_ms, 3);
        for (text, want) in [
            ("", "empty trace"),
            ("0\n0\n", "longer than 0 ms"),
            ("1\n2\nx\n", "line 3: \"x\" is not a whole number"),
            ("1\n2.5\n", "line 2: \"2.5\""),
            ("1\n-2\n", "line 2: \"-2\""),
            ("1\n +2\n", "line 2"),
            ("5\n3\n", "line 2: 3 ms comes after 5 ms"),
            ("1\n\n2\n", "line 2 is empty"),
            ("99999999999\n", "line 1: 99999999999 ms is beyond"),
        ] {
            let e = refused(text);
            assert!(e.contains(want) && e.contains("t.trace"), "{text:?}: {e}");
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn opportunities_carry_1500_bytes_byte_by_byte() {
        // Opportunities at 1, 1, 2 and 4 ms; the trace wraps every 4 ms.
        let t = tr("1\n1\n2\n4\n");
        let mut c = Cursor::new(0);
        // Two 700-byte packets share the first opportunity at 1 ms.
        assert_eq!(c.depart(&t, false, 0, 700), Some(MS));
        assert_eq!(c.depart(&t, false, 0, 700), Some(MS));
        // 1000 bytes: 100 left at 1 ms, the rest in the second opportunity at 1 ms.
        assert_eq!(c.depart(&t, false, 0, 1000), Some(MS));
        // A jumbo of 3000 bytes: 600 left at 1 ms, 1500 at 2 ms, 900 at 4 ms.
        assert_eq!(c.depart(&t, false, 0, 3000), Some(4 * MS));
        // Ready at 4.5 ms: the 600 bytes left at 4 ms are lost; the next pass's first
        // opportunity is at 4 + 1 = 5 ms.
        assert_eq!(c.depart(&t, false, 4 * MS + MS / 2, 100), Some(5 * MS));
        // Ready exactly at an opportunity: it is used (9 ms = pass 2 at 1 ms).
        assert_eq!(c.depart(&t, false, 9 * MS, 1500), Some(9 * MS));
        assert_eq!(c.depart(&t, false, 9 * MS, 1500), Some(9 * MS));
        assert_eq!(c.depart(&t, false, 9 * MS, 1500), Some(10 * MS));
        // A long idle gap is skipped without stepping through it: ready at 4,000,002.5 ms.
        let far = 4_000_002 * MS + MS / 2;
        assert_eq!(c.depart(&t, false, far, 1), Some(4_000_004 * MS));
    }

    #[test]
    fn once_ends_and_wrap_repeats_the_boundary_like_mm_link() {
        // A 0 ms opportunity: at a wrap the last one of a pass and the first of the next fall
        // on the same millisecond (2 ms here), as in mm-link.
        let t = tr("0\n2\n");
        let mut w = Cursor::new(0);
        let got: Vec<_> = (0..5)
            .map(|_| w.depart(&t, false, 0, 1500).unwrap() / MS)
            .collect();
        assert_eq!(got, vec![0, 2, 2, 4, 4]);
        // Seeking to exactly a boundary starts with the earlier pass's last opportunity.
        let mut s = Cursor::new(0);
        assert_eq!(s.depart(&t, false, 4 * MS, 1500), Some(4 * MS));
        assert_eq!(s.depart(&t, false, 4 * MS, 1500), Some(4 * MS));
        assert_eq!(s.depart(&t, false, 4 * MS, 1500), Some(6 * MS));
        let mut o = Cursor::new(10 * MS);
        assert_eq!(o.depart(&t, true, 0, 1500), Some(10 * MS));
        assert_eq!(o.depart(&t, true, 0, 1500), Some(12 * MS));
        assert_eq!(o.depart(&t, true, 0, 1500), None);
        // Once, and ready after the end: nothing.
        let mut late = Cursor::new(0);
        assert_eq!(late.depart(&t, true, 3 * MS, 10), None);
    }

    #[test]
    fn a_trace_too_long_to_read_back_is_refused_before_it_is_built() {
        // 100 Gbit/s for an hour: 30 billion opportunities (it used to fill the memory).
        let e = levels(&[(100_000_000_000, 3_600_000)], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the 64 MiB"), "{e}");
        // 1 Gbit/s for a minute: 5 million lines, about 32 MiB, is written.
        assert_eq!(
            levels(&[(1_000_000_000, 60_000)], None).unwrap().len(),
            5_000_000
        );
    }

    #[test]
    fn constant_traces_carry_the_rate_exactly() {
        for (bps, ms) in [
            (12_000_000u64, 1000u64),
            (10_000_000, 1000),
            (100_000_000, 1000),
            (500_000_000, 1000),
            (570_000, 3000),
        ] {
            let v = levels(&[(bps, ms)], None).unwrap();
            let t = tr(&render(&v));
            assert_eq!(t.period_ms, ms);
            let want = bps as f64 * ms as f64 / 1e3 / 12_000.0;
            // Whole opportunities: at most one short of the rate over the span.
            assert!(
                (0.0..1.0).contains(&(want - t.opportunities as f64)),
                "{bps}: {} opportunities, want {want}",
                t.opportunities
            );
            // Any 100 ms window is within one millisecond's worth of the rate.
            let per_ms = bps as f64 / 12_000.0 / 1e3;
            for w in (0..ms).step_by(100).take(ms as usize / 100 - 1) {
                let n = v.iter().filter(|&&x| x > w && x <= w + 100).count() as f64;
                assert!(
                    (n - per_ms * 100.0).abs() <= per_ms.max(1.0) + 1.0,
                    "{bps} @{w}: {n}"
                );
            }
        }
        // 12 Mbit/s = one opportunity per ms: 1, 2, ..., 1000.
        let v = levels(&[(12_000_000, 1000)], None).unwrap();
        assert_eq!(v.first(), Some(&1));
        assert_eq!(v.last(), Some(&1000));
        assert_eq!(v.len(), 1000);
        // Two levels follow each other.
        let v = levels(&[(24_000_000, 1000), (12_000_000, 1000)], None).unwrap();
        assert_eq!((v[0], v[1], v[2]), (1, 1, 2));
        assert_eq!(v.iter().filter(|&&x| x <= 1000).count(), 2000);
        assert_eq!(v.iter().filter(|&&x| x > 1000).count(), 1000);
        assert!(levels(&[(1_000_000, 0)], None).is_err());
        assert!(
            levels(&[(1_000, 1000)], None).is_err(),
            "no opportunity at all"
        );
        // Poisson-timed: the same mean within 3 % over 60 s (about 300,000 opportunities
        // at 60 Mbit/s: the count's deviation is 0.2 %), reproducible from the seed, sorted.
        let p = levels(&[(60_000_000, 60_000)], Some(7)).unwrap();
        let want = 60e6 * 60.0 / 12_000.0;
        assert!((p.len() as f64 - want).abs() < want * 0.03, "{}", p.len());
        assert!(p.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(p, levels(&[(60_000_000, 60_000)], Some(7)).unwrap());
        assert_ne!(p, levels(&[(60_000_000, 60_000)], Some(8)).unwrap());
        // Gaps are exponential: their deviation equals their mean (within 3 %).
        let big = levels(&[(1_200_000, 600_000)], Some(1)).unwrap();
        let g: Vec<f64> = big.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
        let gm = g.iter().sum::<f64>() / g.len() as f64;
        let sd = (g.iter().map(|x| (x - gm).powi(2)).sum::<f64>() / g.len() as f64).sqrt();
        assert!(
            (gm - 10.0).abs() < 0.3 && (sd - gm).abs() < gm * 0.03,
            "{gm} {sd}"
        );
    }
}
