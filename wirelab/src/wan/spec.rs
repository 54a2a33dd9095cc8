//! Impairment specs in tc-netem's words, plus what netem lacks (`blackhole`, `jitter-order`).
//!
//! `delay 40ms 5ms 25% distribution normal loss 1% 25% duplicate 0.5% corrupt 0.1%
//!  reorder 10% 50% gap 5 rate 10mbit 20 limit 64kb blackhole 2s every 30s jitter-order keep`
use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// A parse error naming the word at fault and what is allowed there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{word:?}: {reason}")]
pub struct SpecError {
    pub word: String,
    pub reason: String,
}

fn err(word: &str, reason: impl Into<String>) -> SpecError {
    SpecError {
        word: word.to_string(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    Normal,
    Pareto,
    Paretonormal,
    /// A netem `.dist` table file.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "lowercase")]
pub enum Loss {
    Random {
        p: f64,
        corr: f64,
    },
    /// 4-state Markov: p13, p31, p32, p23, p14.
    State {
        p13: f64,
        p31: f64,
        p32: f64,
        p23: f64,
        p14: f64,
    },
    /// Gilbert-Elliott: p, r, 1-h, 1-k.
    Gemodel {
        p: f64,
        r: f64,
        one_h: f64,
        one_k: f64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Limit {
    Packets(u64),
    Bytes(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JitterOrder {
    /// Packets never overtake, and the realized delay distribution is the configured one at
    /// any packet rate: the delay is a smooth process in time (see the engine), sampled at
    /// each packet's arrival.
    Keep,
    /// Each packet draws its own delay and may overtake others (netem's jitter).
    Reorder,
    /// Each packet draws its own delay and waits for the one ahead of it (netem with a fifo
    /// child qdisc; wirelab's `keep` before). The realized delay is biased upwards, the more
    /// the denser the traffic.
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub bits_per_sec: u64,
    pub packet_overhead: i64,
    pub cell_size: u64,
    pub cell_overhead: i64,
}

/// `rate trace FILE [once|wrap]`: the link's delivery opportunities come from an mm-link trace
/// (read and validated when the profile is built, see `trace.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceClause {
    pub path: PathBuf,
    /// Play the trace once (then the link carries nothing); otherwise it wraps.
    pub once: bool,
}

/// One direction's impairments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Added one-way delay (mean of the distribution).
    pub delay: Duration,
    /// The distribution's spread (standard deviation for normal; half-width for uniform).
    pub jitter: Duration,
    /// Correlation of successive delays, 0..=1 (netem's percent / 100).
    pub delay_corr: f64,
    pub distribution: Distribution,
    pub loss: Option<Loss>,
    /// Probabilities below are 0..=1 (the SPEC's percent / 100); each `_corr` is the
    /// correlation with the previous frame's decision, 0..=1.
    pub duplicate: f64,
    pub duplicate_corr: f64,
    pub corrupt: f64,
    pub corrupt_corr: f64,
    /// Probability that a frame skips the delay (sent at once), as netem's `reorder`.
    pub reorder: f64,
    pub reorder_corr: f64,
    /// `reorder ... gap N`: only every N-th frame may skip the delay.
    pub gap: u64,
    pub rate: Option<Rate>,
    /// `rate trace FILE`: instead of `rate`, delivery opportunities from a trace.
    pub trace: Option<TraceClause>,
    /// `preset NAME`: the calibrated path whose words this SPEC starts from.
    pub preset: Option<String>,
    pub limit: Option<Limit>,
    /// `limit N link`: the limit counts only frames waiting for the `rate`/trace link (a
    /// drop-tail queue in front of it, as mm-link's), not those still in the delay stage.
    pub limit_link: bool,
    /// (outage, period)
    pub blackhole: Option<(Duration, Duration)>,
    pub jitter_order: JitterOrder,
    /// The text it was parsed from.
    pub text: String,
}

impl Spec {
    /// How the words were read, with units spelled out (`wan --check`): "delay 20 ms, jitter
    /// 2 ms normal (order kept), loss 1 % random, rate 20 Mbit/s (2.5 MB/s), ...".
    pub fn explain(&self) -> String {
        let ms = |d: Duration| format!("{} ms", d.as_secs_f64() * 1e3);
        let pct = |p: f64| format!("{} %", p * 100.0);
        let corr = |c: f64| {
            if c > 0.0 {
                format!(" (correlation {})", pct(c))
            } else {
                String::new()
            }
        };
        let mut parts = vec![format!("delay {}", ms(self.delay))];
        if let Some(p) = &self.preset {
            parts.insert(0, super::preset::explain(p));
        }
        if !self.jitter.is_zero() {
            let order = match self.jitter_order {
                JitterOrder::Keep => "order kept",
                JitterOrder::Reorder => "may reorder",
                JitterOrder::Fifo => "order kept, FIFO: held behind earlier frames",
            };
            let dist = match &self.distribution {
                Distribution::File(p) => format!("table {}", p.display()),
                d => format!("{d:?}").to_lowercase(),
            };
            parts.push(format!(
                "jitter {} {dist} ({order}){}",
                ms(self.jitter),
                corr(self.delay_corr)
            ));
        }
        match &self.loss {
            Some(Loss::Random { p, corr: c }) => {
                parts.push(format!("loss {} random{}", pct(*p), corr(*c)));
            }
            Some(Loss::State {
                p13,
                p31,
                p32,
                p23,
                p14,
            }) => parts.push(format!(
                "loss 4-state Markov p13 {} p31 {} p32 {} p23 {} p14 {}",
                pct(*p13),
                pct(*p31),
                pct(*p32),
                pct(*p23),
                pct(*p14)
            )),
            Some(Loss::Gemodel { p, r, one_h, one_k }) => parts.push(format!(
                "loss Gilbert-Elliott p {} r {} 1-h {} 1-k {}",
                pct(*p),
                pct(*r),
                pct(*one_h),
                pct(*one_k)
            )),
            None => {}
        }
        for (name, p, c) in [
            ("duplicate", self.duplicate, self.duplicate_corr),
            ("corrupt", self.corrupt, self.corrupt_corr),
        ] {
            if p > 0.0 {
                parts.push(format!("{name} {}{}", pct(p), corr(c)));
            }
        }
        if self.reorder > 0.0 {
            parts.push(format!(
                "reorder {} sent at once{}{}",
                pct(self.reorder),
                corr(self.reorder_corr),
                if self.gap > 0 {
                    format!(", every {}th frame", self.gap)
                } else {
                    String::new()
                }
            ));
        }
        if let Some(r) = &self.rate {
            let mut t = format!(
                "rate {} Mbit/s ({} MB/s)",
                r.bits_per_sec as f64 / 1e6,
                r.bits_per_sec as f64 / 8e6
            );
            if r.packet_overhead != 0 {
                t += &format!(", {:+} B per frame", r.packet_overhead);
            }
            if r.cell_size > 0 {
                t += &format!(", cells of {} B {:+} B", r.cell_size, r.cell_overhead);
            }
            parts.push(t);
        }
        if let Some(t) = &self.trace {
            parts.push(format!(
                "rate from trace {} ({})",
                t.path.display(),
                if t.once {
                    "played once, then the link carries nothing"
                } else {
                    "wraps at its last timestamp"
                }
            ));
        }
        let link = if self.limit_link {
            " waiting for the link (drop-tail in front of the rate; the delay stage not counted)"
        } else {
            ""
        };
        match &self.limit {
            Some(Limit::Packets(n)) => parts.push(format!("queue limit {n} frames{link}")),
            Some(Limit::Bytes(b)) => parts.push(format!("queue limit {b} bytes{link}")),
            None => {}
        }
        if let Some((out, every)) = self.blackhole {
            parts.push(format!("blackhole {} every {}", ms(out), ms(every)));
        }
        parts.join(", ")
    }
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            delay_corr: 0.0,
            distribution: Distribution::Uniform,
            loss: None,
            duplicate: 0.0,
            duplicate_corr: 0.0,
            corrupt: 0.0,
            corrupt_corr: 0.0,
            reorder: 0.0,
            reorder_corr: 0.0,
            gap: 0,
            rate: None,
            trace: None,
            preset: None,
            limit: None,
            limit_link: false,
            blackhole: None,
            jitter_order: JitterOrder::Keep,
            text: String::new(),
        }
    }
}

pub const KEYWORDS: &[&str] = &[
    "delay",
    "distribution",
    "loss",
    "duplicate",
    "corrupt",
    "reorder",
    "gap",
    "rate",
    "limit",
    "blackhole",
    "jitter-order",
];

const ALLOWED: &str = "delay, distribution, loss, duplicate, corrupt, reorder, gap, rate, limit, blackhole, jitter-order, preset";

pub fn parse_time(w: &str) -> Result<Duration, SpecError> {
    let (num, unit) = split_num(w);
    let v: f64 = num
        .parse()
        .map_err(|_| err(w, "expected a time such as 40ms, 500us, 1.5s"))?;
    let scale = match unit {
        "s" | "sec" | "secs" => 1.0,
        "ms" | "msec" | "msecs" => 1e-3,
        "us" | "usec" | "usecs" => 1e-6,
        "ns" | "nsec" | "nsecs" => 1e-9,
        "" => return Err(err(w, "a time needs a unit: s, ms, us or ns")),
        _ => return Err(err(w, "unknown time unit (use s, ms, us or ns)")),
    };
    if !(v.is_finite() && v >= 0.0) {
        return Err(err(w, "a time must be a non-negative number"));
    }
    let secs = v * scale;
    if secs > 3600.0 {
        return Err(err(w, "longer than an hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn split_num(w: &str) -> (&str, &str) {
    let i = w
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e'))
        .unwrap_or(w.len());
    // "1e3" style exponents are numbers, but "e" could also start a unit: accept only digits
    // after 'e'.
    w.split_at(i)
}

/// A percentage: `5%`, `5` (tc reads both as percent), or `0.5%`.
pub fn parse_percent(w: &str) -> Result<f64, SpecError> {
    let t = w.strip_suffix('%').unwrap_or(w);
    let v: f64 = t
        .parse()
        .map_err(|_| err(w, "expected a percentage such as 1% or 0.5%"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(err(w, "a percentage must be between 0% and 100%"));
    }
    Ok(v / 100.0)
}

/// The optional correlation after a value (`delay T J CORR`, `duplicate P CORR`, …).
fn parse_corr(w: &str) -> Result<f64, SpecError> {
    parse_percent(w).map_err(|_| err(w, "a correlation must be a percentage from 0% to 100%"))
}

/// The highest rate a spec takes, bit/s (1000gbit: beyond any link; higher values lost
/// precision on their way to the engine's pacing).
pub const MAX_RATE_BPS: u64 = 1_000_000_000_000;

pub fn parse_rate(w: &str) -> Result<u64, SpecError> {
    let (num, unit) = split_num(w);
    let v: f64 = num
        .parse()
        .map_err(|_| err(w, "expected a rate such as 10mbit, 512kbit, 1gbit, 100mbps"))?;
    let u = unit.to_ascii_lowercase();
    let scale = match u.as_str() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "kibit" => 1024.0,
        "mibit" => 1024.0 * 1024.0,
        "gibit" => 1024.0 * 1024.0 * 1024.0,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        "" => {
            return Err(err(
                w,
                "a rate needs a unit: bit, kbit, mbit, gbit, bps, kbps, mbps",
            ))
        }
        _ => {
            return Err(err(
                w,
                "unknown rate unit (bit, kbit, mbit, gbit, bps, kbps, mbps)",
            ))
        }
    };
    let bps = v * scale;
    if !(bps.is_finite() && bps >= 1000.0) {
        return Err(err(w, "a rate must be at least 1kbit"));
    }
    if bps > MAX_RATE_BPS as f64 {
        return Err(err(w, "a rate must be at most 1000gbit"));
    }
    Ok(bps as u64)
}

fn parse_size(w: &str) -> Result<u64, SpecError> {
    let (num, unit) = split_num(w);
    let v: f64 = num
        .parse()
        .map_err(|_| err(w, "expected a size such as 64kb"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "b" => 1.0,
        "kb" | "k" => 1024.0,
        "mb" | "m" => 1024.0 * 1024.0,
        "gb" | "g" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err(w, "unknown size unit (b, kb, mb, gb)")),
    };
    Ok((v * scale) as u64)
}

/// Parse a spec. An empty string means no impairment.
pub fn parse(text: &str) -> Result<Spec, SpecError> {
    let given: Vec<&str> = text.split_whitespace().collect();
    let (words, preset) = super::preset::expand(&given)?;
    let mut s = Spec {
        text: given.join(" "),
        preset: preset.map(|p| p.name.to_string()),
        ..Default::default()
    };
    let mut i = 0;
    let mut seen = std::collections::BTreeSet::new();
    // Values are numeric: a following word that is not starts the next clause (and an
    // unknown one is reported as such).
    let next_is_value = |i: usize| {
        i < words.len()
            && !KEYWORDS.contains(&words[i])
            && words[i]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
    };
    while i < words.len() {
        let kw = words[i];
        if !KEYWORDS.contains(&kw) {
            return Err(err(kw, format!("unknown word; allowed: {ALLOWED}")));
        }
        if kw != "gap" && kw != "distribution" && !seen.insert(kw) {
            return Err(err(
                kw,
                match preset {
                    Some(p) => format!("given twice (preset {} sets {})", p.name, p.words),
                    None => "given twice".into(),
                },
            ));
        }
        i += 1;
        let need = |i: usize, what: &str| -> Result<&str, SpecError> {
            if i < words.len() {
                Ok(words[i])
            } else {
                Err(err(kw, format!("needs {what}")))
            }
        };
        match kw {
            "delay" => {
                s.delay = parse_time(need(i, "a time, e.g. delay 40ms")?)?;
                i += 1;
                if next_is_value(i) {
                    s.jitter = parse_time(words[i])?;
                    i += 1;
                    if next_is_value(i) {
                        s.delay_corr = parse_corr(words[i])?;
                        i += 1;
                    }
                }
            }
            "distribution" => {
                let w = need(i, "uniform, normal, pareto, paretonormal or a .dist file")?;
                s.distribution = match w {
                    "uniform" => Distribution::Uniform,
                    "normal" => Distribution::Normal,
                    "pareto" => Distribution::Pareto,
                    "paretonormal" => Distribution::Paretonormal,
                    f if f.contains('/') || f.ends_with(".dist") => {
                        Distribution::File(PathBuf::from(f))
                    }
                    _ => {
                        return Err(err(
                            w,
                            "unknown distribution; use uniform, normal, pareto, paretonormal or a path to a .dist file",
                        ))
                    }
                };
                i += 1;
            }
            "loss" => {
                let w = need(i, "a percentage, `state ...` or `gemodel ...`")?;
                let mut nums = vec![];
                let model = if w == "state" || w == "gemodel" {
                    i += 1;
                    w
                } else {
                    if w == "random" {
                        i += 1;
                    }
                    "random"
                };
                while next_is_value(i) && nums.len() < 5 {
                    nums.push(parse_percent(words[i])?);
                    i += 1;
                }
                s.loss = Some(match (model, nums.len()) {
                    (_, 0) => return Err(err(kw, "needs a probability, e.g. loss 1%")),
                    ("random", 1 | 2) => Loss::Random {
                        p: nums[0],
                        corr: nums.get(1).copied().unwrap_or(0.0),
                    },
                    ("random", _) => {
                        return Err(err(words[i - 1], "loss takes at most P and a correlation"))
                    }
                    ("state", n) => {
                        let p13 = nums[0];
                        Loss::State {
                            p13,
                            p31: if n > 1 { nums[1] } else { 1.0 - p13 },
                            p32: if n > 2 { nums[2] } else { 0.0 },
                            p23: if n > 3 { nums[3] } else { 1.0 },
                            p14: if n > 4 { nums[4] } else { 0.0 },
                        }
                    }
                    (_, n) => {
                        if n > 4 {
                            return Err(err(words[i - 1], "gemodel takes at most p r 1-h 1-k"));
                        }
                        let p = nums[0];
                        Loss::Gemodel {
                            p,
                            r: if n > 1 { nums[1] } else { 1.0 - p },
                            one_h: if n > 2 { nums[2] } else { 1.0 },
                            one_k: if n > 3 { nums[3] } else { 0.0 },
                        }
                    }
                });
                if let Some(Loss::State {
                    p13, p14, p31, p32, ..
                }) = &s.loss
                {
                    if p13 + p14 > 1.0 + 1e-9 || p31 + p32 > 1.0 + 1e-9 {
                        return Err(err(kw, "state: p13+p14 and p31+p32 must not exceed 100%"));
                    }
                }
            }
            "duplicate" | "corrupt" | "reorder" => {
                let p = parse_percent(need(i, "a percentage")?)?;
                i += 1;
                let mut c = 0.0;
                if next_is_value(i) {
                    c = parse_corr(words[i])?;
                    i += 1;
                }
                match kw {
                    "duplicate" => (s.duplicate, s.duplicate_corr) = (p, c),
                    "corrupt" => (s.corrupt, s.corrupt_corr) = (p, c),
                    _ => (s.reorder, s.reorder_corr) = (p, c),
                }
            }
            "gap" => {
                let w = need(i, "a packet count")?;
                s.gap = w
                    .parse()
                    .map_err(|_| err(w, "gap needs a whole number of packets"))?;
                i += 1;
            }
            "rate" if words.get(i) == Some(&"trace") => {
                let path = need(i + 1, "a trace file: rate trace FILE [once|wrap]")?;
                s.trace = Some(TraceClause {
                    path: PathBuf::from(path),
                    once: words.get(i + 2) == Some(&"once"),
                });
                i += 2;
                if matches!(words.get(i), Some(&"once" | &"wrap")) {
                    i += 1;
                }
            }
            "rate" => {
                let bits_per_sec = parse_rate(need(i, "a rate, e.g. rate 10mbit")?)?;
                i += 1;
                let mut extra = vec![];
                while next_is_value(i) && extra.len() < 3 {
                    let w = words[i];
                    extra.push(w.parse::<i64>().map_err(|_| {
                        err(
                            w,
                            "rate takes PACKETOVERHEAD CELLSIZE CELLOVERHEAD (whole bytes)",
                        )
                    })?);
                    i += 1;
                }
                let cell_size = extra.get(1).copied().unwrap_or(0);
                if !(0..=65535).contains(&cell_size) {
                    return Err(err(kw, "cell size must be between 0 and 65535 bytes"));
                }
                if extra.iter().any(|v| !(-65535..=65535).contains(v)) {
                    return Err(err(kw, "overheads must be between -65535 and 65535 bytes"));
                }
                s.rate = Some(Rate {
                    bits_per_sec,
                    packet_overhead: extra.first().copied().unwrap_or(0),
                    cell_size: cell_size as u64,
                    cell_overhead: extra.get(2).copied().unwrap_or(0),
                });
            }
            "limit" => {
                let w = need(i, "a packet count or a size such as 64kb")?;
                // A zero queue, in packets or in bytes, would drop every frame: refused in
                // both forms (loss 100% or a blackhole say that on purpose).
                let zero = "a zero limit would drop every frame; give at least 1 packet or 1 byte (loss 100% drops all on purpose)";
                s.limit = Some(if let Ok(n) = w.parse::<u64>() {
                    if n == 0 {
                        return Err(err(w, zero));
                    }
                    Limit::Packets(n)
                } else {
                    let b = parse_size(w)?;
                    if b == 0 {
                        return Err(err(w, zero));
                    }
                    Limit::Bytes(b)
                });
                i += 1;
                if words.get(i) == Some(&"link") {
                    s.limit_link = true;
                    i += 1;
                }
            }
            "blackhole" => {
                let d = parse_time(need(i, "an outage time, e.g. blackhole 2s every 30s")?)?;
                i += 1;
                if i >= words.len() || words[i] != "every" {
                    return Err(err(kw, "use `blackhole DURATION every PERIOD`"));
                }
                i += 1;
                let e = parse_time(need(i, "a period")?)?;
                i += 1;
                if d.is_zero() || e <= d {
                    return Err(err(
                        kw,
                        "the outage must be longer than 0 and shorter than the period",
                    ));
                }
                s.blackhole = Some((d, e));
            }
            "jitter-order" => {
                let w = need(i, "keep, reorder or fifo")?;
                s.jitter_order = match w {
                    "keep" => JitterOrder::Keep,
                    "reorder" => JitterOrder::Reorder,
                    "fifo" => JitterOrder::Fifo,
                    _ => return Err(err(w, "jitter-order is keep, reorder or fifo")),
                };
                i += 1;
            }
            _ => unreachable!("keyword list and match agree"),
        }
    }
    if s.reorder > 0.0 && s.delay.is_zero() {
        return Err(err(
            "reorder",
            "needs a delay (reordered packets are the ones sent without it)",
        ));
    }
    if s.limit_link && s.rate.is_none() && s.trace.is_none() {
        return Err(err(
            "link",
            "limit ... link counts the queue in front of a rate: give `rate` or `rate trace`",
        ));
    }
    if s.gap > 0 && s.reorder == 0.0 {
        return Err(err("gap", "only means something with reorder"));
    }
    if s.reorder > 0.0 && s.gap == 0 {
        s.gap = 1;
    }
    Ok(s)
}

impl Spec {
    /// True when nothing needs the userspace timing stage (loss and blackhole run in the kernel).
    pub fn is_kernel_only(&self) -> bool {
        self.delay.is_zero()
            && self.jitter.is_zero()
            && self.duplicate == 0.0
            && self.corrupt == 0.0
            && self.reorder == 0.0
            && self.rate.is_none()
            && self.trace.is_none()
            && self.limit.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netem_words() {
        let s = parse("delay 40ms 5ms 25% distribution normal loss 1% 25% duplicate 0.5% corrupt 0.1% reorder 10% 50% gap 5 rate 10mbit 20 limit 64kb blackhole 2s every 30s jitter-order reorder").unwrap();
        assert_eq!(s.delay, Duration::from_millis(40));
        assert_eq!(s.jitter, Duration::from_millis(5));
        assert!((s.delay_corr - 0.25).abs() < 1e-9);
        assert_eq!(s.distribution, Distribution::Normal);
        assert_eq!(
            s.loss,
            Some(Loss::Random {
                p: 0.01,
                corr: 0.25
            })
        );
        assert!((s.duplicate - 0.005).abs() < 1e-12);
        assert_eq!(s.gap, 5);
        assert_eq!(s.rate.as_ref().unwrap().bits_per_sec, 10_000_000);
        assert_eq!(s.rate.as_ref().unwrap().packet_overhead, 20);
        assert_eq!(s.limit, Some(Limit::Bytes(65536)));
        // A zero limit means the same in packets and in bytes: refused, in every spelling.
        for z in ["limit 0", "limit 0kb", "limit 0b", "limit 0mb"] {
            let e = parse(z).unwrap_err().to_string();
            assert!(e.contains("zero limit"), "{z}: {e}");
        }
        assert_eq!(
            s.blackhole,
            Some((Duration::from_secs(2), Duration::from_secs(30)))
        );
        assert_eq!(s.jitter_order, JitterOrder::Reorder);
        assert!(parse("").unwrap().is_kernel_only());
        assert!(parse("loss 5%").unwrap().is_kernel_only());
        assert!(!parse("delay 1ms").unwrap().is_kernel_only());
    }

    #[test]
    fn loss_models() {
        assert_eq!(
            parse("loss state 1% 30% 5% 2% 0.1%").unwrap().loss,
            Some(Loss::State {
                p13: 0.01,
                p31: 0.3,
                p32: 0.05,
                p23: 0.02,
                p14: 0.001
            })
        );
        match parse("loss gemodel 1% 10%").unwrap().loss {
            Some(Loss::Gemodel { p, r, one_h, one_k }) => {
                assert_eq!((p, r, one_h, one_k), (0.01, 0.1, 1.0, 0.0));
            }
            l => panic!("{l:?}"),
        }
    }

    #[test]
    fn errors_name_the_word() {
        for (spec, word) in [
            ("delay 40", "40"),
            ("delay 40ms lossy 1%", "lossy"),
            ("loss 150%", "150%"),
            ("rate 10 mbit", "10"),
            ("reorder 10%", "reorder"),
            ("distribution gaussian", "gaussian"),
            ("blackhole 5s every 1s", "blackhole"),
            ("delay 1ms delay 2ms", "delay"),
            ("jitter-order sometimes", "sometimes"),
            ("limit 10 link", "link"),
            ("delay 10ms 1ms 200%", "200%"),
            ("duplicate 1% 5ms", "5ms"),
            ("rate 99999999999gbit", "99999999999gbit"),
        ] {
            assert_eq!(parse(spec).unwrap_err().word, word, "{spec}");
        }
        for (spec, reason) in [
            ("delay 10ms 1ms 200%", "a correlation must be a percentage"),
            ("rate 99999999999gbit", "at most 1000gbit"),
        ] {
            let e = parse(spec).unwrap_err().reason;
            assert!(e.contains(reason), "{spec}: {e}");
        }
        assert_eq!(
            parse("rate 1000gbit").unwrap().rate.unwrap().bits_per_sec,
            MAX_RATE_BPS
        );
        assert!(parse("delay 40ms lossy 1%")
            .unwrap_err()
            .reason
            .contains("allowed"));
    }
}
