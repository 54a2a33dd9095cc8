//! The rules file: parsing, full validation, and compilation into per-field bitmaps.
//!
//! ```toml
//! default = "deny"        # allow | deny             (policy when no rule matches)
//! malformed = "deny"      # allow | deny, default deny (frames the parser rejects)
//! non_ip = "allow"        # allow | deny, default allow (ARP and other non-IP frames)
//!
//! [[rule]]
//! name = "ssh"
//! action = "allow"        # allow | deny | rate-limit | log
//! proto = "tcp"           # tcp | udp | icmp | icmpv6 | 0-255, or a list
//! dst_port = 22           # 22, "1000-2000", or a list of those
//! tcp_flags = "syn,!ack"  # flags that must be set / (!) clear
//! src = ["198.18.0.0/24", "2001:2::/48"]
//! ```
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use ipnet::IpNet;
use serde::Deserialize;
use wirelab_common::fw::{
    action, MAX_RULES, PORT_ENTRIES, PORT_NONE, PROTO_ENTRIES, SMALL_ENTRIES, TOKEN_UNIT,
    TRIE_ENTRIES,
};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(i64),
    Str(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    default: String,
    #[serde(default)]
    malformed: Option<String>,
    #[serde(default)]
    non_ip: Option<String>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    action: String,
    #[serde(default)]
    proto: Option<OneOrMany<NumOrStr>>,
    #[serde(default)]
    src: Option<OneOrMany<String>>,
    #[serde(default)]
    dst: Option<OneOrMany<String>>,
    #[serde(default)]
    src_file: Option<PathBuf>,
    #[serde(default)]
    dst_file: Option<PathBuf>,
    #[serde(default)]
    src_port: Option<OneOrMany<NumOrStr>>,
    #[serde(default)]
    dst_port: Option<OneOrMany<NumOrStr>>,
    #[serde(default)]
    tcp_flags: Option<String>,
    #[serde(default)]
    icmp_type: Option<OneOrMany<NumOrStr>>,
    #[serde(default)]
    rate_limit: Option<RawRate>,
    /// Log every Nth matching packet (`log = true` means every packet).
    #[serde(default)]
    log: Option<bool>,
    #[serde(default)]
    log_every: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    #[serde(default)]
    pps: Option<u64>,
    #[serde(default)]
    bps: Option<u64>,
    /// Bucket depth in packets (default: pps, i.e. one second).
    #[serde(default)]
    burst: Option<u64>,
    /// Bucket depth in bytes (default: bps).
    #[serde(default)]
    burst_bytes: Option<u64>,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub action: u32,
    /// None = any protocol.
    pub protos: Option<Vec<u8>>,
    /// None = any address (of either family).
    pub src: Option<Vec<IpNet>>,
    pub dst: Option<Vec<IpNet>>,
    pub src_ports: Option<Vec<(u16, u16)>>,
    pub dst_ports: Option<Vec<(u16, u16)>>,
    /// (mask, value): matches when flags & mask == value.
    pub tcp_flags: Option<(u8, u8)>,
    pub icmp_types: Option<Vec<u8>>,
    pub pps: u64,
    pub bps: u64,
    pub burst_pkts: u64,
    pub burst_bytes: u64,
    pub log_every: u32,
}

/// A validated rules file.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    pub default_action: u32,
    pub malformed_action: u32,
    pub non_ip_action: u32,
    pub rules: Vec<Rule>,
}

impl RuleSet {
    pub fn prefixes(&self) -> usize {
        self.rules
            .iter()
            .map(|r| r.src.as_ref().map_or(0, |v| v.len()) + r.dst.as_ref().map_or(0, |v| v.len()))
            .sum()
    }
}

pub fn action_name(a: u32) -> &'static str {
    match a {
        action::ALLOW => "allow",
        action::DENY => "deny",
        action::RATE_LIMIT => "rate-limit",
        action::LOG => "log",
        _ => "?",
    }
}

fn policy(field: &str, v: Option<&str>, dflt: u32) -> Result<u32> {
    match v {
        None => Ok(dflt),
        Some("allow") | Some("accept") | Some("pass") => Ok(action::ALLOW),
        Some("deny") | Some("drop") => Ok(action::DENY),
        Some(o) => bail!("field {field}: {o:?} is not a policy (use \"allow\" or \"deny\")"),
    }
}

/// Load and validate a rules file. Relative `src_file`/`dst_file` paths are taken relative to
/// the rules file.
pub fn load(path: &Path) -> Result<RuleSet> {
    let text = crate::util::read_user_file(path, crate::util::limit::CONFIG)?;
    parse(&text, path.parent()).with_context(|| format!("rules file {}", path.display()))
}

/// Parse and validate rules text.
pub fn parse(text: &str, base: Option<&Path>) -> Result<RuleSet> {
    let raw: RawFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let default_action = policy("default", Some(&raw.default), action::DENY)?;
    let malformed_action = policy("malformed", raw.malformed.as_deref(), action::DENY)?;
    let non_ip_action = policy("non_ip", raw.non_ip.as_deref(), action::ALLOW)?;
    if raw.rule.len() > MAX_RULES as usize {
        bail!(
            "{} rules: at most {MAX_RULES} are supported (use CIDR lists to grow a rule instead)",
            raw.rule.len()
        );
    }
    let mut names = HashSet::new();
    let mut rules = vec![];
    let mut prefixes = 0usize;
    for (i, r) in raw.rule.into_iter().enumerate() {
        let name = r.name.clone();
        if name.is_empty() || name.len() > 64 {
            bail!("rule #{}: field name: must be 1 to 64 characters", i + 1);
        }
        if name.starts_with('(') {
            bail!(
                "rule {name:?}: field name: must not start with '(' (reserved for the policies: (default), (malformed), (non_ip))"
            );
        }
        if !names.insert(name.clone()) {
            bail!("rule {name:?}: field name: used by an earlier rule");
        }
        let rule = validate_rule(r, base).with_context(|| format!("rule {name:?}"))?;
        prefixes += rule.src.as_ref().map_or(0, |v| v.len());
        prefixes += rule.dst.as_ref().map_or(0, |v| v.len());
        rules.push(rule);
    }
    // Each trie holds both generations during a reload.
    if prefixes > (TRIE_ENTRIES as usize) / 2 - 1 {
        bail!(
            "{prefixes} prefixes in total: at most {} are supported",
            TRIE_ENTRIES / 2 - 1
        );
    }
    Ok(RuleSet {
        default_action,
        malformed_action,
        non_ip_action,
        rules,
    })
}

fn parse_proto(v: &NumOrStr) -> Result<u8> {
    match v {
        NumOrStr::Num(n) => u8::try_from(*n).map_err(|_| anyhow::anyhow!("{n} is not 0-255")),
        NumOrStr::Str(s) => match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(6),
            "udp" => Ok(17),
            "icmp" => Ok(1),
            "icmpv6" | "ipv6-icmp" => Ok(58),
            "gre" => Ok(47),
            "esp" => Ok(50),
            "sctp" => Ok(132),
            o => o.parse::<u8>().map_err(|_| {
                anyhow::anyhow!("{o:?} is not a protocol (tcp, udp, icmp, icmpv6, or 0-255)")
            }),
        },
    }
}

fn parse_ports(v: OneOrMany<NumOrStr>) -> Result<Vec<(u16, u16)>> {
    let mut out = vec![];
    for p in v.into_vec() {
        let r = match p {
            NumOrStr::Num(n) => {
                let n =
                    u16::try_from(n).map_err(|_| anyhow::anyhow!("{n} is not a port (0-65535)"))?;
                (n, n)
            }
            NumOrStr::Str(s) => {
                let one = |t: &str| -> Result<u16> {
                    t.trim()
                        .parse::<u16>()
                        .map_err(|_| anyhow::anyhow!("{t:?} is not a port (0-65535)"))
                };
                match s.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (one(a)?, one(b)?);
                        if a > b {
                            bail!("range {s:?} is empty (first port above last)");
                        }
                        (a, b)
                    }
                    None => {
                        let n = one(&s)?;
                        (n, n)
                    }
                }
            }
        };
        out.push(r);
    }
    if out.is_empty() {
        bail!("empty list (leave the field out to match any port)");
    }
    Ok(out)
}

const TCP_FLAG_NAMES: [(&str, u8); 8] = [
    ("fin", 0x01),
    ("syn", 0x02),
    ("rst", 0x04),
    ("psh", 0x08),
    ("ack", 0x10),
    ("urg", 0x20),
    ("ece", 0x40),
    ("cwr", 0x80),
];

fn parse_flags(s: &str) -> Result<(u8, u8)> {
    let mut mask = 0u8;
    let mut value = 0u8;
    for tok in s.split([',', ' ', '|']).filter(|t| !t.is_empty()) {
        let (neg, name) = match tok.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, tok),
        };
        let Some((_, bit)) = TCP_FLAG_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        else {
            bail!("{name:?} is not a TCP flag (fin syn rst psh ack urg ece cwr, ! for clear)");
        };
        if mask & bit != 0 {
            bail!("flag {name} named twice");
        }
        mask |= bit;
        if !neg {
            value |= bit;
        }
    }
    if mask == 0 {
        bail!("no flags given (example: \"syn,!ack\")");
    }
    Ok((mask, value))
}

fn parse_icmp(v: OneOrMany<NumOrStr>, v6: bool) -> Result<Vec<u8>> {
    let mut out = vec![];
    for t in v.into_vec() {
        let n = match t {
            NumOrStr::Num(n) => u8::try_from(n).map_err(|_| anyhow::anyhow!("{n} is not 0-255"))?,
            NumOrStr::Str(s) => {
                let named: Option<(u8, u8)> = match s.as_str() {
                    "echo-reply" => Some((0, 129)),
                    "destination-unreachable" | "dest-unreachable" => Some((3, 1)),
                    "echo-request" => Some((8, 128)),
                    "time-exceeded" => Some((11, 3)),
                    "packet-too-big" => Some((255, 2)),
                    "router-solicitation" => Some((10, 133)),
                    "router-advertisement" => Some((9, 134)),
                    "neighbor-solicitation" => Some((255, 135)),
                    "neighbor-advertisement" => Some((255, 136)),
                    _ => None,
                };
                match named {
                    Some((a, b)) => {
                        let n = if v6 { b } else { a };
                        if n == 255 {
                            bail!("{s:?} exists only in ICMPv6");
                        }
                        n
                    }
                    None => s.parse::<u8>().map_err(|_| {
                        anyhow::anyhow!("{s:?} is not an ICMP type (a number or echo-request, echo-reply, destination-unreachable, time-exceeded, packet-too-big, neighbor-solicitation, ...)")
                    })?,
                }
            }
        };
        out.push(n);
    }
    if out.is_empty() {
        bail!("empty list (leave the field out to match any type)");
    }
    Ok(out)
}

fn parse_cidrs(
    field: &str,
    v: Option<OneOrMany<String>>,
    file: Option<PathBuf>,
    base: Option<&Path>,
) -> Result<Option<Vec<IpNet>>> {
    if v.is_none() && file.is_none() {
        return Ok(None);
    }
    let mut out = vec![];
    let one = |s: &str| -> Result<IpNet> {
        let s = s.trim();
        if let Ok(n) = s.parse::<IpNet>() {
            return Ok(n.trunc());
        }
        if let Ok(a) = s.parse::<IpAddr>() {
            return Ok(IpNet::from(a));
        }
        bail!("{s:?} is not an address or CIDR prefix")
    };
    for s in v.map(|v| v.into_vec()).unwrap_or_default() {
        out.push(one(&s).with_context(|| format!("field {field}"))?);
    }
    if let Some(f) = file {
        let p = match base {
            Some(b) if f.is_relative() => b.join(&f),
            _ => f.clone(),
        };
        let text = crate::util::read_user_file(&p, crate::util::limit::ADDRESS_LIST)
            .with_context(|| format!("field {field}_file"))?;
        for (ln, l) in text.lines().enumerate() {
            let l = l.split('#').next().unwrap_or("").trim();
            if l.is_empty() {
                continue;
            }
            out.push(
                one(l).with_context(|| {
                    format!("field {field}_file: {} line {}", p.display(), ln + 1)
                })?,
            );
        }
    }
    if out.is_empty() {
        bail!("field {field}: empty list (leave the field out to match any address)");
    }
    out.sort();
    out.dedup();
    Ok(Some(out))
}

fn validate_rule(r: RawRule, base: Option<&Path>) -> Result<Rule> {
    let act = match r.action.as_str() {
        "allow" | "accept" | "pass" => action::ALLOW,
        "deny" | "drop" => action::DENY,
        "rate-limit" | "rate_limit" | "ratelimit" => action::RATE_LIMIT,
        "log" => action::LOG,
        o => bail!("field action: {o:?} is not an action (allow, deny, rate-limit, log)"),
    };
    let protos = match r.proto {
        Some(p) => {
            let mut v = vec![];
            for x in p.into_vec() {
                v.push(parse_proto(&x).context("field proto")?);
            }
            if v.is_empty() {
                bail!("field proto: empty list");
            }
            v.sort();
            v.dedup();
            Some(v)
        }
        None => None,
    };
    let only = |allowed: &[u8]| -> bool {
        protos
            .as_ref()
            .is_some_and(|v| v.iter().all(|p| allowed.contains(p)))
    };
    let src_ports = match r.src_port {
        Some(p) => Some(parse_ports(p).context("field src_port")?),
        None => None,
    };
    let dst_ports = match r.dst_port {
        Some(p) => Some(parse_ports(p).context("field dst_port")?),
        None => None,
    };
    if (src_ports.is_some() || dst_ports.is_some()) && !only(&[6, 17]) {
        bail!(
            "field {}: ports need proto = \"tcp\" or \"udp\" (or both)",
            if src_ports.is_some() {
                "src_port"
            } else {
                "dst_port"
            }
        );
    }
    let tcp_flags = match r.tcp_flags {
        Some(s) => {
            if !only(&[6]) {
                bail!("field tcp_flags: needs proto = \"tcp\"");
            }
            Some(parse_flags(&s).context("field tcp_flags")?)
        }
        None => None,
    };
    let icmp_types = match r.icmp_type {
        Some(t) => {
            let v6 = match protos.as_deref() {
                Some([1]) => false,
                Some([58]) => true,
                _ => bail!(
                    "field icmp_type: needs proto = \"icmp\" or proto = \"icmpv6\" (one of them)"
                ),
            };
            Some(parse_icmp(t, v6).context("field icmp_type")?)
        }
        None => None,
    };
    let src = parse_cidrs("src", r.src, r.src_file, base)?;
    let dst = parse_cidrs("dst", r.dst, r.dst_file, base)?;
    let (mut pps, mut bps, mut burst_pkts, mut burst_bytes) = (0, 0, 0, 0);
    match (act, r.rate_limit) {
        (action::RATE_LIMIT, Some(rl)) => {
            pps = rl.pps.unwrap_or(0);
            bps = rl.bps.unwrap_or(0);
            if pps == 0 && bps == 0 {
                bail!("field rate_limit: give pps and/or bps (greater than 0)");
            }
            if pps > 1_000_000_000 {
                bail!("field rate_limit.pps: at most 1e9");
            }
            if bps > 100_000_000_000 {
                bail!("field rate_limit.bps: at most 1e11 bytes/s");
            }
            let b = rl.burst.unwrap_or(pps.max(1));
            if pps > 0 && !(1..=1_000_000).contains(&b) {
                bail!("field rate_limit.burst: must be 1 to 1,000,000 packets");
            }
            let bb = rl.burst_bytes.unwrap_or(bps.max(1500));
            if bps > 0 && !(64..=1_000_000_000).contains(&bb) {
                bail!("field rate_limit.burst_bytes: must be 64 to 1e9 bytes");
            }
            if pps > 0 {
                burst_pkts = b * TOKEN_UNIT;
            }
            if bps > 0 {
                burst_bytes = bb * TOKEN_UNIT;
            }
            pps = pps.min(1_000_000_000);
            bps = bps.min(100_000_000_000);
        }
        (action::RATE_LIMIT, None) => {
            bail!("field rate_limit: action rate-limit needs rate_limit = {{ pps = N, burst = B }}")
        }
        (_, Some(_)) => bail!("field rate_limit: only for action = \"rate-limit\""),
        _ => {}
    }
    let log_every = match (r.log, r.log_every) {
        (_, Some(0)) => bail!("field log_every: must be at least 1"),
        (Some(false), Some(_)) => bail!("field log_every: contradicts log = false"),
        (_, Some(n)) => n,
        (Some(true), None) => 1,
        (Some(false), None) => 0,
        (None, None) => {
            if act == action::LOG {
                1
            } else {
                0
            }
        }
    };
    Ok(Rule {
        name: r.name,
        action: act,
        protos,
        src,
        dst,
        src_ports,
        dst_ports,
        tcp_flags,
        icmp_types,
        pps,
        bps,
        burst_pkts,
        burst_bytes,
        log_every,
    })
}

/// Per-field bitmaps of one generation, ready to be written to the maps.
#[derive(Debug, Default)]
pub struct Tables {
    /// (prefix length, address bytes, bitmap); a /0 entry is always present.
    pub src4: Vec<(u8, [u8; 4], u64)>,
    pub dst4: Vec<(u8, [u8; 4], u64)>,
    pub src6: Vec<(u8, [u8; 16], u64)>,
    pub dst6: Vec<(u8, [u8; 16], u64)>,
    pub proto: Vec<u64>,
    pub sport: Vec<u64>,
    pub dport: Vec<u64>,
    pub flags: Vec<u64>,
    pub icmp: Vec<u64>,
}

fn trie<const N: usize>(
    rules: &[Rule],
    field: impl Fn(&Rule) -> Option<&Vec<IpNet>>,
    v6: bool,
) -> Vec<(u8, [u8; N], u64)> {
    let bits = N as u8 * 8;
    let to_u128 = |n: &IpNet| -> u128 {
        match n.network() {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    };
    let mask = |a: u128, len: u8| -> u128 {
        if len == 0 {
            0
        } else {
            let shift = bits - len;
            (a >> shift) << shift
        }
    };
    let mut wild = 0u64;
    let mut own: HashMap<(u128, u8), u64> = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        match field(r) {
            None => wild |= 1 << i,
            Some(nets) => {
                for n in nets {
                    if n.addr().is_ipv6() == v6 {
                        *own.entry((to_u128(n), n.prefix_len())).or_default() |= 1 << i;
                    }
                }
            }
        }
    }
    own.entry((0, 0)).or_default();
    // An entry's bitmap holds every rule whose prefix covers it: LPM returns only the
    // longest match, so shorter covering prefixes are folded in here.
    let mut out = Vec::with_capacity(own.len());
    for (&(a, len), _) in own.iter() {
        let mut v = wild;
        for l in 0..=len {
            if let Some(b) = own.get(&(mask(a, l), l)) {
                v |= b;
            }
        }
        let be = a.to_be_bytes();
        let mut k = [0u8; N];
        k.copy_from_slice(&be[16 - N..]);
        out.push((len, k, v));
    }
    out.sort_by_key(|e| (e.0, e.1));
    out
}

/// Compile a validated rule set into per-field bitmaps.
pub fn compile(rs: &RuleSet) -> Tables {
    let rules = &rs.rules;
    let mut t = Tables {
        src4: trie::<4>(rules, |r| r.src.as_ref(), false),
        dst4: trie::<4>(rules, |r| r.dst.as_ref(), false),
        src6: trie::<16>(rules, |r| r.src.as_ref(), true),
        dst6: trie::<16>(rules, |r| r.dst.as_ref(), true),
        proto: vec![0; PROTO_ENTRIES as usize],
        sport: vec![0; PORT_ENTRIES as usize],
        dport: vec![0; PORT_ENTRIES as usize],
        flags: vec![0; SMALL_ENTRIES as usize],
        icmp: vec![0; SMALL_ENTRIES as usize],
    };
    for (i, r) in rules.iter().enumerate() {
        let bit = 1u64 << i;
        match &r.protos {
            None => t.proto.iter_mut().for_each(|v| *v |= bit),
            Some(ps) => ps.iter().for_each(|p| t.proto[*p as usize] |= bit),
        }
        for (ranges, table) in [(&r.src_ports, &mut t.sport), (&r.dst_ports, &mut t.dport)] {
            match ranges {
                None => table.iter_mut().for_each(|v| *v |= bit),
                Some(rs) => {
                    for (a, b) in rs {
                        for p in *a..=*b {
                            table[p as usize] |= bit;
                        }
                    }
                    debug_assert!(table[PORT_NONE as usize] & bit == 0);
                }
            }
        }
        match r.tcp_flags {
            None => t.flags.iter_mut().for_each(|v| *v |= bit),
            Some((mask, value)) => {
                for f in 0..256usize {
                    if f as u8 & mask == value {
                        t.flags[f] |= bit;
                    }
                }
            }
        }
        match &r.icmp_types {
            None => t.icmp.iter_mut().for_each(|v| *v |= bit),
            Some(ts) => ts.iter().for_each(|x| t.icmp[*x as usize] |= bit),
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", parse(text, None).unwrap_err())
    }

    #[test]
    fn validation_names_rule_and_field() {
        let e = err("default = \"deny\"\n[[rule]]\nname = \"web\"\naction = \"allow\"\nproto = \"tcp\"\ndst_port = \"90-80\"\n");
        assert!(e.contains("rule \"web\"") && e.contains("dst_port"), "{e}");
        let e =
            err("default = \"deny\"\n[[rule]]\nname = \"x\"\naction = \"allow\"\ndst_port = 80\n");
        assert!(e.contains("dst_port") && e.contains("tcp"), "{e}");
        let e = err("default = \"deny\"\n[[rule]]\nname = \"x\"\naction = \"allow\"\nsrc = \"10.0.0.300/8\"\n");
        assert!(e.contains("field src"), "{e}");
        let e = err("default = \"deny\"\n[[rule]]\nname = \"x\"\naction = \"rate-limit\"\n");
        assert!(e.contains("rate_limit"), "{e}");
        let e = err("default = \"maybe\"\n");
        assert!(e.contains("default"), "{e}");
        let e = err("default = \"deny\"\n[[rule]]\nname = \"a\"\naction = \"allow\"\n[[rule]]\nname = \"a\"\naction = \"deny\"\n");
        assert!(e.contains("name"), "{e}");
        let e = err("default = \"deny\"\n[[rule]]\nname = \"(default)\"\naction = \"allow\"\n");
        assert!(e.contains("field name") && e.contains("reserved"), "{e}");
    }

    #[test]
    fn covering_prefixes_fold_into_longer_ones() {
        let rs = parse(
            "default = \"allow\"\n[[rule]]\nname = \"a\"\naction = \"deny\"\nsrc = \"10.1.0.0/16\"\n[[rule]]\nname = \"b\"\naction = \"allow\"\nsrc = \"10.0.0.0/8\"\n[[rule]]\nname = \"c\"\naction = \"deny\"\n",
            None,
        )
        .unwrap();
        let t = compile(&rs);
        let get = |len: u8, a: [u8; 4]| t.src4.iter().find(|e| e.0 == len && e.1 == a).unwrap().2;
        assert_eq!(get(0, [0; 4]), 0b100);
        assert_eq!(get(8, [10, 0, 0, 0]), 0b110);
        assert_eq!(get(16, [10, 1, 0, 0]), 0b111);
        // IPv6 trie: only the wildcard rule.
        assert_eq!(t.src6.len(), 1);
        assert_eq!(t.src6[0].2, 0b100);
    }

    #[test]
    fn syn_without_ack() {
        let (m, v) = parse_flags("syn,!ack").unwrap();
        assert_eq!((m, v), (0x12, 0x02));
    }
}
