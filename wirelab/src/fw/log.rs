//! Log samples from the ring, as [`LogLine`]s.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use wirelab_common::fw::LogEvent;

use super::types::{LogLine, Verdict};

pub(super) fn addr(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == 4 {
        Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
    } else {
        Ipv6Addr::from(*a).into()
    }
}

pub(super) fn log_line(e: &LogEvent, rule: &str) -> LogLine {
    LogLine {
        rule: rule.to_string(),
        verdict: if e.dropped != 0 {
            Verdict::Drop
        } else {
            Verdict::Pass
        },
        family: e.family,
        proto: e.proto,
        src: addr(e.family, &e.saddr),
        dst: addr(e.family, &e.daddr),
        sport: e.sport,
        dport: e.dport,
        tcp_flags: e.tcp_flags,
        icmp_type: e.icmp_type,
        vlans: e.vlans,
        fragment: e.fragment != 0,
        len: e.len,
        ktime_ns: e.ts_ns,
    }
}
