//! The firewall's data as typed structs: what `fw stats --json`, `fw reload --json`, the JSON
//! lines on stdout and the run record carry. The same types are written here and read by
//! `fw stats`/`fw reload` (through the control socket), the metrics and the report, so a
//! renamed field is a compile error, not a silent zero.
use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::runtime::bpf::AttachMode;
use wirelab_common::fw::RuleCounter;

/// One counter set (a rule or a policy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets and bytes that reached this rule / policy.
    pub packets: u64,
    pub bytes: u64,
    /// Of those, dropped (deny, or over a rate limit).
    pub dropped: u64,
    /// Of those, sent to the log ring.
    pub logged: u64,
}

impl From<RuleCounter> for Counters {
    fn from(c: RuleCounter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
            dropped: c.dropped,
            logged: c.logged,
        }
    }
}

/// A rule in force and its counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleStats {
    pub name: String,
    /// Changes when a rule is removed and added again (its counters restart).
    pub id: u32,
    pub action: String,
    #[serde(flatten)]
    pub counters: Counters,
}

/// One of the three policies (default, malformed, non-IP) and its counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyStats {
    pub action: String,
    #[serde(flatten)]
    pub counters: Counters,
}

named_enum! {
    /// How one address table is searched.
    #[derive(Default)]
    pub enum TableMethod {
        /// A prefix hash, probed at the listed lengths.
        Hash = "hash",
        /// An LPM trie.
        Trie = "trie",
        /// Nothing to search (no prefix but /0).
        #[default]
        Empty = "none",
    }
}

/// How one address table is searched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablePlan {
    pub method: TableMethod,
    /// Probed prefix lengths, longest first (hash only).
    pub lengths: Vec<u8>,
    pub entries: usize,
}

/// The lookup plans of the four address tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    pub src4: TablePlan,
    pub dst4: TablePlan,
    pub src6: TablePlan,
    pub dst6: TablePlan,
}

impl Lookup {
    /// One-line description, e.g. "src4 hash 1 probe(s) at /32 (385 entries)"; empty when
    /// no table holds a prefix.
    pub fn text(&self) -> String {
        [
            ("src4", &self.src4),
            ("dst4", &self.dst4),
            ("src6", &self.src6),
            ("dst6", &self.dst6),
        ]
        .iter()
        .filter_map(|(t, l)| match l.method {
            TableMethod::Hash => Some(format!(
                "{t} hash {} probe(s) at {} ({} entries)",
                l.lengths.len(),
                l.lengths
                    .iter()
                    .map(|x| format!("/{x}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                l.entries
            )),
            TableMethod::Trie => Some(format!("{t} LPM trie ({} entries)", l.entries)),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("; ")
    }
}

named_enum! {
    /// What became of a logged packet.
    pub enum Verdict {
        Drop = "drop",
        Pass = "pass",
    }
}

/// A sampled packet from the log ring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub rule: String,
    pub verdict: Verdict,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// VLAN tags around the packet.
    pub vlans: u8,
    pub fragment: bool,
    pub len: u32,
    pub ktime_ns: u64,
}

impl LogLine {
    pub fn text(&self) -> String {
        format!(
            "log {} {} proto {} {}:{} -> {}:{} len {}{}",
            self.rule,
            self.verdict,
            self.proto,
            self.src,
            self.sport,
            self.dst,
            self.dport,
            self.len,
            if self.fragment { " fragment" } else { "" }
        )
    }
}

/// Run count and time of the `fw` program (kept while `kernel.bpf_stats_enabled` is 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProgramStats {
    pub runs: u64,
    pub run_time_ns: u64,
    pub ns_per_packet: f64,
}

/// Every counter of a running firewall (`fw stats`, the final line, the record's summary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Set by the running process (absent from [`crate::fw::Firewall::stats`] alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// XDP attach mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AttachMode>,
    /// Seconds since attach (final line only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// Rule-set generation in force (0 or 1) and reloads so far.
    pub generation: u32,
    pub reloads: u64,
    /// Address prefixes in the rule set (after list files are read).
    pub prefixes: usize,
    /// How each address table is searched.
    pub lookup: Lookup,
    /// Per rule, in file order, then the three policies.
    pub rules: Vec<RuleStats>,
    pub default: PolicyStats,
    pub malformed: PolicyStats,
    pub non_ip: PolicyStats,
    /// The last 32 log samples.
    pub recent_log: Vec<LogLine>,
    /// `None` until the program has run with run-time statistics on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramStats>,
}

impl Stats {
    /// Counter rows: each rule, then the three policies as "(default)", "(malformed)",
    /// "(non_ip)"; with each rule's id (0 for the policies).
    pub fn rows(&self) -> Vec<(String, u32, Counters)> {
        let mut v: Vec<(String, u32, Counters)> = self
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.id, r.counters))
            .collect();
        for (k, p) in [
            ("default", &self.default),
            ("malformed", &self.malformed),
            ("non_ip", &self.non_ip),
        ] {
            v.push((format!("({k})"), 0, p.counters));
        }
        v
    }
}

/// What an installed rule set changed (`fw reload`'s answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallReport {
    /// The generation now in force.
    pub generation: u32,
    pub rules: usize,
    pub prefixes: usize,
    /// Rule names kept (counters carried over), added and removed by this install.
    pub kept: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub install_ms: f64,
    pub lookup: Lookup,
}

/// One JSON line on stdout (`--json`): tagged by `type`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    Start {
        iface: String,
        mode: String,
        rules: usize,
        prefixes: usize,
    },
    Log(Box<LogLine>),
    Reload(Box<InstallReport>),
    Final(Box<Stats>),
}

/// One interval of the record's series: passes and drops, and each rule's hits, since the
/// last line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    #[serde(rename = "type")]
    pub kind: IntervalTag,
    pub t: f64,
    pub passed: u64,
    pub dropped: u64,
    pub hits: BTreeMap<String, u64>,
}

/// The constant `"interval"` tag of an [`Interval`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntervalTag {
    Interval,
}

/// A record change line: a reload put a new rule set in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadChange {
    pub t: f64,
    pub generation: u32,
    pub rules: Vec<RuleStats>,
}

/// What `fw check --json` prints: the file is valid, and how it would be searched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    /// Always true (an invalid file is an error naming the field, not a report).
    pub ok: bool,
    pub rules: usize,
    /// Address prefixes over all rules.
    pub prefixes: usize,
    pub lookup: Lookup,
}

pub use crate::runtime::tap::TapInfo;
