//! `wirelab gen` in a lab: exact counts through a plain veth peer (AF_PACKET fallback) and
//! through a peer running XDP (live frames), and --flows giving distinct sources (checked by
//! the firewall's per-source rate limiter).
mod common;
use std::time::Duration;

use common::*;
use wirelab::gen::{Report, Sent};

fn server_mac(lab: &Lab) -> String {
    let o = ok(in_ns(
        &lab.ns("server"),
        &["ip", "-br", "link", "show", "eth0"],
    ));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string()
}

fn gen(lab: &Lab, extra: &[&str]) -> Report {
    gen_to(lab, "198.18.0.2", extra)
}

/// `wirelab gen` from the client to the server's MAC and `dst`.
fn gen_to(lab: &Lab, dst: &str, extra: &[&str]) -> Report {
    let mac = server_mac(lab);
    let mut c = wirelab();
    c.args(cli::on_iface("gen", &lab.ns("client"), "eth0"));
    c.args(["--dst-mac", &mac, "--dst", dst, "--dport", "9", "--json"]);
    c.args(extra);
    let o = ok(c);
    serde_json::from_slice(&o.stdout).expect("gen --json")
}

/// An XDP program (inspect) on the client's veth peer gives it NAPI, so live XDP frames from
/// the client are delivered.
fn napi_on_client_peer(lab: &Lab) -> Bg {
    start_inspect(&lab.ns("wan"), "to-client", &["--duration", "60s"])
}

#[test]
fn plain_peer_falls_back_and_xdp_peer_takes_live_frames() {
    let lab = Lab::up("gna");
    // Count UDP to port 9 per rule; one token per source (burst 1, 1 pps).
    let _fw = start_fw_rules(
        &lab.ns("server"),
        "default = \"allow\"\n[[rule]]\nname = \"gen\"\naction = \"rate-limit\"\nproto = \"udp\"\ndst_port = 9\nrate_limit = { pps = 1, burst = 1 }\n",
    );

    // 1. The client's peer (wan/to-client) is a plain veth in a bridge: AF_PACKET fallback.
    let r = gen(
        &lab,
        &["--src", "198.18.0.1", "--count", "300", "--rate", "3000"],
    );
    assert_eq!(r.method, Sent::AfPacket, "{r:?}");
    assert_eq!(r.sent, 300, "{r:?}");
    assert_eq!(r.delivered, 300, "{r:?}");
    let rule_packets = || fw_stats(&lab.ns("server")).rules[0].counters.packets;
    eventually(Duration::from_secs(5), || rule_packets() >= 300);
    let s = fw_stats(&lab.ns("server"));
    assert_eq!(s.rules[0].counters.packets, 300, "{s:?}");

    // 2. An XDP program on the peer gives it NAPI: live frames are delivered.
    let _insp = napi_on_client_peer(&lab);
    // Sources 198.18.0.0 - .255 cycled; 2560 frames = 10 per source, sent in a few ms.
    let r = gen(
        &lab,
        &[
            "--src",
            "198.18.0.0/24",
            "--flows",
            "256",
            "--count",
            "2560",
        ],
    );
    assert_eq!(r.method, Sent::XdpLiveFrames, "{r:?}");
    assert_eq!(r.sent, 2560, "{r:?}");
    assert_eq!(r.delivered, 2560, "{r:?}");
    let secs = r.elapsed_s;
    eventually(Duration::from_secs(5), || rule_packets() >= 300 + 2560);
    let s = fw_stats(&lab.ns("server"));
    let rule = s.rules[0].counters;
    let pk = rule.packets - 300;
    assert_eq!(pk, 2560, "{s:?}");
    // 256 distinct sources: each got its one token (198.18.0.1 spent its own earlier and
    // may have refilled one since), plus at most 1 token/s each while sending.
    let passed = pk - (rule.dropped - 299);
    let max = 256 + (256.0 * secs).ceil() as u64 + 2;
    assert!(
        (255..=max).contains(&passed),
        "passed {passed}, 256 sources, {secs}s"
    );

    // 3. Rate pacing: 2000 pps for 1 s.
    let r = gen(
        &lab,
        &["--src", "198.18.0.1", "--rate", "2000", "--duration", "1s"],
    );
    let pps = r.pps;
    assert!((1700.0..=2200.0).contains(&pps), "{r:?}");

    // 4. --method xdp refuses a plain peer (the server's peer wan/to-server) with a reason.
    let err = fails(
        wirelab()
            .args(cli::on_iface("gen", &lab.ns("server"), "eth0"))
            .args(["--dst-mac", "02:00:00:00:00:01", "--src", "198.18.0.2"])
            .args(["--dst", "198.18.0.1", "--count", "100", "--method", "xdp"]),
    );
    assert!(err.contains("did not transmit XDP frames"), "{err}");
}

/// Udp6NoPorts and Udp6InCsumErrors of the server's IPv6 stack: datagrams to a port nobody
/// listens on are counted as NoPorts only once their checksum has been verified.
fn udp6_counters(lab: &Lab) -> (u64, u64) {
    let o = ok(in_ns(&lab.ns("server"), &["cat", "/proc/net/snmp6"]));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let get = |k: &str| -> u64 {
        text.lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(k)).then(|| it.next().unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no {k} in /proc/net/snmp6"))
    };
    (get("Udp6NoPorts"), get("Udp6InCsumErrors"))
}

#[test]
fn ipv6_frames_reach_the_server_stack_with_valid_checksums() {
    let lab = Lab::up("gn6");
    ok(in_ns(
        &lab.ns("server"),
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:2::2/64",
            "dev",
            "eth0",
            "nodad",
        ],
    ));
    let gen6 = |extra: &[&str]| {
        let mut args = vec!["--src", "2001:2::1:0/112"];
        args.extend_from_slice(extra);
        gen_to(&lab, "2001:2::2", &args)
    };
    // The counters once `n` datagrams more than `np` have reached NoPorts (or 5 s have passed).
    let counters_after = |np: u64, n: u64| {
        eventually(Duration::from_secs(5), || udp6_counters(&lab).0 >= np + n);
        udp6_counters(&lab)
    };
    // 1. AF_PACKET (plain veth peer): 300 datagrams from 16 sources.
    let (np0, ce0) = udp6_counters(&lab);
    let r = gen6(&["--flows", "16", "--count", "300", "--rate", "3000"]);
    assert_eq!(r.method, Sent::AfPacket, "{r:?}");
    assert_eq!(r.delivered, 300, "{r:?}");
    let (np1, ce1) = counters_after(np0, 300);
    assert_eq!((np1 - np0, ce1 - ce0), (300, 0), "NoPorts, InCsumErrors");
    // 2. Live frames (an XDP program on the peer gives it NAPI): the kernel program rewrites
    // the low 32 bits of the source and the UDP checksum of every frame.
    let _insp = napi_on_client_peer(&lab);
    let r = gen6(&["--flows", "256", "--count", "2560", "--rate", "10000"]);
    assert_eq!(r.method, Sent::XdpLiveFrames, "{r:?}");
    assert_eq!(r.delivered, 2560, "{r:?}");
    let (np2, ce2) = counters_after(np1, 2560);
    assert_eq!((np2 - np1, ce2 - ce1), (2560, 0), "NoPorts, InCsumErrors");
}
