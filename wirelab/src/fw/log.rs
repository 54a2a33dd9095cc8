//! Log samples: as JSON lines and as text.
use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::json;
use wirelab_common::fw::LogEvent;

pub(super) fn addr(family: u8, a: &[u8; 16]) -> String {
    if family == 4 {
        Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
    } else {
        Ipv6Addr::from(*a).to_string()
    }
}

pub(super) fn log_json(e: &LogEvent, rule: &str) -> serde_json::Value {
    json!({
        "type": "log",
        "rule": rule,
        "verdict": if e.dropped != 0 { "drop" } else { "pass" },
        "family": e.family,
        "proto": e.proto,
        "src": addr(e.family, &e.saddr),
        "dst": addr(e.family, &e.daddr),
        "sport": e.sport,
        "dport": e.dport,
        "tcp_flags": e.tcp_flags,
        "icmp_type": e.icmp_type,
        "vlans": e.vlans,
        "fragment": e.fragment != 0,
        "len": e.len,
        "ktime_ns": e.ts_ns,
    })
}

pub(super) fn log_text(v: &serde_json::Value) -> String {
    format!(
        "log {} {} proto {} {}:{} -> {}:{} len {}{}",
        v["rule"].as_str().unwrap_or(""),
        v["verdict"].as_str().unwrap_or(""),
        v["proto"],
        v["src"].as_str().unwrap_or(""),
        v["sport"],
        v["dst"].as_str().unwrap_or(""),
        v["dport"],
        v["len"],
        if v["fragment"] == true {
            " fragment"
        } else {
            ""
        }
    )
}
