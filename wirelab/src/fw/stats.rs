//! Stats objects: counter rows, interval lines of the record, the table `fw stats` prints.

use anyhow::Result;
use serde_json::json;

use super::*;

/// Per-interval record line: passes and drops, and each rule's hits, since the last line.
/// Counter rows of a `stats` object: each rule, then the three policies as "(default)",
/// "(malformed)", "(non_ip)" — (name, counters object).
pub(super) fn counter_rows(s: &serde_json::Value) -> Vec<(String, &serde_json::Value)> {
    let mut v: Vec<(String, &serde_json::Value)> = s["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["name"].as_str().unwrap_or("").to_string(), r))
        .collect();
    for k in ["default", "malformed", "non_ip"] {
        v.push((format!("({k})"), &s[k]));
    }
    v
}

pub(super) fn interval_line(
    t: f64,
    cur: &serde_json::Value,
    prev: &serde_json::Value,
) -> serde_json::Value {
    let rows = |s: &serde_json::Value| -> Vec<(String, u64, u64)> {
        counter_rows(s)
            .into_iter()
            .map(|(n, r)| {
                (
                    n,
                    r["packets"].as_u64().unwrap_or(0),
                    r["dropped"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let before: std::collections::HashMap<String, (u64, u64)> = rows(prev)
        .into_iter()
        .map(|(n, p, d)| (n, (p, d)))
        .collect();
    let (mut passed, mut dropped) = (0u64, 0u64);
    let mut hits = serde_json::Map::new();
    for (name, p, d) in rows(cur) {
        // A rule new since the last line (reload) starts from its carried-over counters.
        let (bp, bd) = before.get(&name).copied().unwrap_or((p, d));
        let (dp, dd) = (p.saturating_sub(bp), d.saturating_sub(bd));
        passed += dp.saturating_sub(dd);
        dropped += dd;
        hits.insert(name, json!(dp));
    }
    json!({"type": "interval", "t": t, "passed": passed, "dropped": dropped, "hits": hits})
}

/// Print a stats object as a table.
pub fn print_stats(out: &mut impl std::io::Write, s: &serde_json::Value) -> Result<()> {
    writeln!(
        out,
        "fw on {} ({} XDP): generation {}, {} reloads, {} prefixes",
        s["iface"].as_str().unwrap_or("?"),
        s["mode"].as_str().unwrap_or("?"),
        s["generation"],
        s["reloads"],
        s["prefixes"]
    )?;
    let lookups = lookup_text(&s["lookup"]);
    if !lookups.is_empty() {
        writeln!(out, "  lookup: {lookups}")?;
    }
    writeln!(
        out,
        "  {:<20} {:<10} {:>12} {:>14} {:>12} {:>8}",
        "rule", "action", "packets", "bytes", "dropped", "logged"
    )?;
    let row = |out: &mut dyn std::io::Write, name: &str, v: &serde_json::Value| {
        writeln!(
            out,
            "  {:<20} {:<10} {:>12} {:>14} {:>12} {:>8}",
            name,
            v["action"].as_str().unwrap_or(""),
            v["packets"].as_u64().unwrap_or(0),
            v["bytes"].as_u64().unwrap_or(0),
            v["dropped"].as_u64().unwrap_or(0),
            v["logged"].as_u64().unwrap_or(0)
        )
    };
    for r in s["rules"].as_array().into_iter().flatten() {
        row(out, r["name"].as_str().unwrap_or(""), r)?;
    }
    row(out, "(default)", &s["default"])?;
    row(out, "(malformed)", &s["malformed"])?;
    row(out, "(non-ip)", &s["non_ip"])?;
    let logs = s["recent_log"].as_array().cloned().unwrap_or_default();
    if !logs.is_empty() {
        writeln!(out, "recent log ({}):", logs.len())?;
        for l in logs {
            writeln!(out, "  {}", log_text(&l))?;
        }
    }
    Ok(())
}
