//! Printing a probe report, and its quantities for `--record`.

use super::{tcp::TcpReport, udp::*};

pub fn print_udp(r: &UdpReport) {
    let d = |s: &DelayStats| {
        format!(
            "p50 {:.3} p90 {:.3} p99 {:.3} max {:.3} mean {:.3} sd {:.3} ms",
            s.p50, s.p90, s.p99, s.max, s.mean, s.stddev
        )
    };
    println!(
        "udp probe to {}: {} sent, {} B, {:.0}/s over {:.2}s",
        r.to, r.sent, r.size, r.rate_pps, r.duration_s
    );
    for (name, s) in [("forward", &r.forward), ("reverse", &r.reverse)] {
        println!(
            "  {name:<8} received {} lost {} ({:.3}%) dup {} reordered {} corrupted {}",
            s.received, s.lost, s.loss_pct, s.duplicates, s.reordered, s.corrupted
        );
        if s.socket_drops > 0 {
            println!(
                "           of those lost, {} were dropped by the receiving probe socket (this host was busy)",
                s.socket_drops
            );
        }
        println!("           one-way delay {}", d(&s.delay_ms));
    }
    println!("  rtt      {}", d(&r.rtt_ms));
    println!(
        "  overtaking {} probes arrived before a lower-numbered one",
        r.overtaking
    );
    println!(
        "  no echo  {} probes in {} bursts (mean {:.2}, max {})",
        r.no_echo, r.loss_bursts.count, r.loss_bursts.mean_len, r.loss_bursts.max_len
    );
    if r.sender_behind.resyncs > 0 {
        println!(
            "  sender   fell behind its schedule {} times (at most {:.1} ms): went on from then, no bursts",
            r.sender_behind.resyncs, r.sender_behind.max_late_ms
        );
    }
}

/// What a UDP probe run measured, for `--record` (forward = wan's a_to_b).
pub fn udp_measured(r: &UdpReport) -> Vec<crate::record::Quantity> {
    use crate::record::Quantity as Q;
    let mut v = vec![];
    for (d, s, of) in [
        ("a_to_b", &r.forward, r.sent),
        ("b_to_a", &r.reverse, r.forward.received),
    ] {
        let n = s.delay_ms.count;
        if n > 0 {
            v.push(
                Q::new(
                    "delay_ms",
                    d,
                    s.delay_ms.p50,
                    "ms",
                    "one-way delay p50 of UDP probes",
                )
                .samples(n),
            );
            v.push(
                Q::new(
                    "delay_stddev_ms",
                    d,
                    s.delay_ms.stddev,
                    "ms",
                    "one-way delay standard deviation",
                )
                .samples(n),
            );
        }
        // (quantity, count, out of, what): a share of the probes, in %.
        let shares = [
            (
                "duplicate_pct",
                s.duplicates,
                s.received,
                "UDP probes duplicated",
            ),
            ("corrupt_pct", s.corrupted, of, "UDP probes corrupted"),
            (
                "reorder_pct",
                s.reordered,
                s.received,
                "UDP probes that arrived after a higher-numbered one",
            ),
        ];
        v.push(Q::new("loss_pct", d, s.loss_pct, "%", "UDP probes lost").samples(of));
        for (name, x, of, what) in shares {
            let pct = if of == 0 {
                0.0
            } else {
                x as f64 * 100.0 / of as f64
            };
            v.push(Q::new(name, d, pct, "%", what).samples(of));
        }
    }
    v.push(Q::new("rtt_ms", "", r.rtt_ms.p50, "ms", "round-trip time p50").samples(r.rtt_ms.count));
    v
}

/// What a TCP probe run measured, for `--record` (client to server = wan's a_to_b).
pub fn tcp_measured(r: &TcpReport) -> Vec<crate::record::Quantity> {
    vec![crate::record::Quantity::new(
        "rate_mbit",
        "a_to_b",
        r.goodput_mbps,
        "Mbit/s",
        "TCP goodput client to server",
    )]
}
