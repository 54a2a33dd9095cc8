//! Stats: interval lines of the record and the table `fw stats` prints.

use anyhow::Result;

use super::types::{Interval, IntervalTag, Stats};
use crate::runtime::bpf::AttachMode;

/// Per-interval record line: passes and drops, and each rule's hits, since `prev`.
pub(super) fn interval_line(t: f64, cur: &Stats, prev: &Stats) -> Interval {
    let before: std::collections::HashMap<String, (u64, u64)> = prev
        .rows()
        .into_iter()
        .map(|(n, _, c)| (n, (c.packets, c.dropped)))
        .collect();
    let (mut passed, mut dropped) = (0u64, 0u64);
    let mut hits = std::collections::BTreeMap::new();
    for (name, _, c) in cur.rows() {
        // A rule new since the last line (reload) starts from its carried-over counters.
        let (bp, bd) = before.get(&name).copied().unwrap_or((c.packets, c.dropped));
        let (dp, dd) = (c.packets.saturating_sub(bp), c.dropped.saturating_sub(bd));
        passed += dp.saturating_sub(dd);
        dropped += dd;
        hits.insert(name, dp);
    }
    Interval {
        kind: IntervalTag::Interval,
        t,
        passed,
        dropped,
        hits,
    }
}

/// Print a stats object as a table.
pub fn print_stats(out: &mut (impl std::io::Write + ?Sized), s: &Stats) -> Result<()> {
    writeln!(
        out,
        "fw on {} ({} XDP): generation {}, {} reloads, {} prefixes",
        s.iface.as_deref().unwrap_or("?"),
        s.mode.map_or("?", AttachMode::as_str),
        s.generation,
        s.reloads,
        s.prefixes
    )?;
    let lookups = s.lookup.text();
    if !lookups.is_empty() {
        writeln!(out, "  lookup: {lookups}")?;
    }
    writeln!(
        out,
        "  {:<20} {:<10} {:>12} {:>14} {:>12} {:>8}",
        "rule", "action", "packets", "bytes", "dropped", "logged"
    )?;
    let action = |name: &str| -> &str {
        match name {
            "(default)" => &s.default.action,
            "(malformed)" => &s.malformed.action,
            "(non_ip)" => &s.non_ip.action,
            _ => s
                .rules
                .iter()
                .find(|r| r.name == name)
                .map_or("", |r| r.action.as_str()),
        }
    };
    for (name, _, c) in s.rows() {
        writeln!(
            out,
            "  {:<20} {:<10} {:>12} {:>14} {:>12} {:>8}",
            if name == "(non_ip)" {
                "(non-ip)"
            } else {
                &name
            },
            action(&name),
            c.packets,
            c.bytes,
            c.dropped,
            c.logged
        )?;
    }
    if !s.recent_log.is_empty() {
        writeln!(out, "recent log ({}):", s.recent_log.len())?;
        for l in &s.recent_log {
            writeln!(out, "  {}", l.text())?;
        }
    }
    Ok(())
}
