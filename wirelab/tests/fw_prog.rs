//! The `fw` XDP program on crafted and malformed frames through BPF_PROG_TEST_RUN: every match
//! type, first-match order, VLAN/options/extension headers/fragments, every malformed case,
//! rate limits, logging, reload with counter carry-over, and 100,000 prefixes. Each case
//! asserts the verdict and exactly which counter moved.
mod common;
use std::collections::HashMap;

use aya::programs::Xdp;
use common::build;
use common::frames::{
    cat, e, eth, frag6, ipv4, ipv6, opts_hdr, udp_hdr, vlan_wrap, vlan_wrappings, DST, SRC,
};
use etherparse::VlanId;
use wirelab::fw::{rules, Firewall, TableMethod, Verdict};
use wirelab_common::parse::{MAX_IPV6_EXT, MAX_VLAN_TAGS};

const SERVER: [u8; 4] = [198, 18, 0, 2];
const SERVER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];
const DROP: u32 = 1;
const PASS: u32 = 2;

const RULES: &str = include_str!("data/fw-prog.toml");

struct Harness {
    bpf: aya::Ebpf,
    fw: Firewall,
}

type Snap = HashMap<String, (u64, u64)>;

impl Harness {
    fn new(text: &str) -> Self {
        common::require_privileges();
        let rs = rules::parse(text, None).expect("rules");
        let mut bpf = wirelab::ebpf::load(wirelab::ebpf::Object::Fw).expect("load object");
        let fw = Firewall::new(&mut bpf, &rs).expect("install");
        common::load_prog(&mut bpf, "fw");
        Self { bpf, fw }
    }

    fn snap(&self) -> Snap {
        let s = self.fw.stats().unwrap();
        s.rows()
            .into_iter()
            .map(|(name, _, c)| (name, (c.packets, c.dropped)))
            .collect::<HashMap<_, _>>()
    }

    fn run(&self, frame: &[u8]) -> u32 {
        wirelab_testkit::prog::run(&self.bpf, "fw", frame).0
    }

    /// Run one frame; assert the verdict and that exactly `counter` moved by one.
    #[track_caller]
    fn expect(&self, frame: &[u8], verdict: u32, counter: &str) {
        let before = self.snap();
        let v = self.run(frame);
        let after = self.snap();
        let mut moved = vec![];
        for (k, a) in &after {
            let b = before.get(k).copied().unwrap_or_default();
            if *a != b {
                moved.push((k.clone(), a.0 - b.0, a.1 - b.1));
            }
        }
        let dropped = u64::from(verdict == DROP);
        assert_eq!(
            (v, moved.clone()),
            (verdict, vec![(counter.to_string(), 1, dropped)]),
            "verdict {v} (1 drop, 2 pass), counters moved {moved:?}"
        );
    }
}

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    build!(e().ipv4(src, dst, 64).udp(sport, dport), &[0u8; 18])
}

fn tcp4(src: [u8; 4], dport: u16, syn: bool, ack: bool) -> Vec<u8> {
    let b = e().ipv4(src, SERVER, 64).tcp(40000, dport, 1, 1024);
    let b = if syn { b.syn() } else { b };
    let b = if ack { b.ack(1) } else { b };
    build!(b, &[])
}

fn icmp4(src: [u8; 4], request: bool) -> Vec<u8> {
    let b = e().ipv4(src, SERVER, 64);
    if request {
        build!(b.icmpv4_echo_request(1, 1), &[0; 56])
    } else {
        build!(b.icmpv4_echo_reply(1, 1), &[0; 56])
    }
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

fn icmp6(src: [u8; 16], request: bool) -> Vec<u8> {
    let b = e().ipv6(src, SERVER6, 64);
    if request {
        build!(b.icmpv6_echo_request(1, 1), &[0; 8])
    } else {
        build!(b.icmpv6_echo_reply(1, 1), &[0; 8])
    }
}

fn udp6(src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    build!(e().ipv6(src, dst, 64).udp(1000, 2000), &[0u8; 8])
}

#[test]
fn addresses_and_first_match_order() {
    let h = Harness::new(RULES);
    h.expect(&udp4([198, 18, 5, 1], SERVER, 1, 2), DROP, "block-net");
    h.expect(&udp4([198, 18, 5, 255], SERVER, 1, 2), DROP, "block-net");
    h.expect(&udp4([198, 18, 4, 255], SERVER, 1, 2), PASS, "(default)");
    // A /32 exception listed before its covering /24.
    h.expect(&udp4([198, 18, 6, 7], SERVER, 1, 2), PASS, "exception");
    h.expect(&udp4([198, 18, 6, 8], SERVER, 1, 2), DROP, "block-6");
    // Destination prefix + protocol + port range.
    for (dst, dport, verdict, counter) in [
        ([198, 18, 9, 1], 1000, DROP, "dst-udp-range"),
        ([198, 18, 9, 1], 2000, DROP, "dst-udp-range"),
        ([198, 18, 9, 1], 2001, PASS, "(default)"),
        ([198, 18, 10, 1], 1500, PASS, "(default)"),
    ] {
        h.expect(&udp4([198, 18, 0, 1], dst, 1, dport), verdict, counter);
    }
}

#[test]
fn ports_protocols_flags_icmp() {
    let h = Harness::new(RULES);
    // SYN without ACK to 22 hits syn-22; SYN+ACK and bare ACK fall through to ssh.
    h.expect(&tcp4([198, 18, 0, 1], 22, true, false), DROP, "syn-22");
    h.expect(&tcp4([198, 18, 0, 1], 22, true, true), PASS, "ssh");
    h.expect(&tcp4([198, 18, 0, 1], 22, false, true), PASS, "ssh");
    h.expect(&tcp4([198, 18, 0, 1], 23, true, false), PASS, "(default)");
    // Source port list.
    h.expect(&udp4([198, 18, 0, 1], SERVER, 53, 9), DROP, "from-53");
    h.expect(&udp4([198, 18, 0, 1], SERVER, 5353, 9), DROP, "from-53");
    h.expect(&udp4([198, 18, 0, 1], SERVER, 54, 9), PASS, "(default)");
    // TCP from port 53 is not UDP.
    let v = build!(
        e().ipv4([198, 18, 0, 1], SERVER, 64).tcp(53, 9, 1, 1024),
        &[]
    );
    h.expect(&v, PASS, "(default)");
    // ICMP type + source prefix.
    h.expect(&icmp4([198, 18, 7, 9], true), DROP, "echo-from-7");
    h.expect(&icmp4([198, 18, 7, 9], false), PASS, "(default)");
    h.expect(&icmp4([198, 18, 8, 9], true), PASS, "(default)");
    // ICMPv6 echo request vs reply.
    h.expect(&icmp6(v6("2001:2:0:1::1"), true), DROP, "echo6");
    h.expect(&icmp6(v6("2001:2:0:1::1"), false), PASS, "(default)");
    // Protocol only.
    let f = cat(
        eth(0x0800),
        ipv4([198, 18, 0, 1], SERVER, 5, 47, 0, &[0; 8]),
    );
    h.expect(&f, DROP, "gre");
}

#[test]
fn ipv6_prefixes_and_extension_headers() {
    let h = Harness::new(RULES);
    h.expect(&udp6(v6("2001:2:0:bad:1::9"), SERVER6), DROP, "v6-src");
    h.expect(&udp6(v6("2001:2:0:bae::9"), SERVER6), PASS, "(default)");
    h.expect(
        &udp6(v6("2001:2:0:1::1"), v6("2001:2:0:2::77")),
        DROP,
        "v6-dst-udp",
    );
    h.expect(
        &udp6(v6("2001:2:0:1::1"), v6("2001:2:0:2:1::77")),
        PASS,
        "(default)",
    );
    // An exact IPv6 address (hash table) and its covering /120 (trie) in one rule.
    let tcp6 = |dst: &str| {
        build!(
            e().ipv6(v6("2001:2:0:1::1"), v6(dst), 64)
                .tcp(1, 2, 1, 1024),
            &[]
        )
    };
    h.expect(&tcp6("2001:2:0:3::1"), DROP, "v6-host");
    h.expect(&tcp6("2001:2:0:3::80"), DROP, "v6-host");
    h.expect(&tcp6("2001:2:0:3::100"), PASS, "(default)");
    // Hop-by-hop + destination options before UDP: walked, rule still applies.
    let f = cat(
        eth(0x86dd),
        ipv6(
            v6("2001:2:0:1::1"),
            v6("2001:2:0:2::77"),
            0,
            &[opts_hdr(60), opts_hdr(17)],
            &udp_hdr(1, 2),
        ),
    );
    h.expect(&f, DROP, "v6-dst-udp");
    // IPv4 rules never match IPv6 and vice versa: 198.18.5.0/24 is not an IPv6 prefix.
    h.expect(&udp6(v6("::ffff:198.18.5.1"), SERVER6), PASS, "(default)");
}

#[test]
fn vlan_options_fragments() {
    let h = Harness::new(RULES);
    // Rules apply to the IP packet inside one or two VLAN tags.
    let v = build!(
        e().single_vlan(VlanId::try_new(42).unwrap())
            .ipv4([198, 18, 5, 1], SERVER, 64)
            .udp(1, 2),
        &[0u8; 10]
    );
    h.expect(&v, DROP, "block-net");
    let v = build!(
        e().double_vlan(VlanId::try_new(10).unwrap(), VlanId::try_new(20).unwrap())
            .ipv4([198, 18, 0, 1], SERVER, 64)
            .udp(53, 2),
        &[0u8; 10]
    );
    h.expect(&v, DROP, "from-53");
    // IPv4 options are skipped: the UDP header after them is matched.
    for ihl in [6u8, 15] {
        let f = cat(
            eth(0x0800),
            ipv4([198, 18, 0, 1], SERVER, ihl, 17, 0, &udp_hdr(53, 9)),
        );
        h.expect(&f, DROP, "from-53");
    }
    // First fragment carries the ports: the port rule applies.
    let f = cat(
        eth(0x0800),
        ipv4(
            [198, 18, 0, 1],
            [198, 18, 9, 1],
            5,
            17,
            0x2000,
            &cat(udp_hdr(1, 1500), vec![0; 16]),
        ),
    );
    h.expect(&f, DROP, "dst-udp-range");
    // Non-first fragment: no ports, so rules with port matches skip it...
    let f = cat(
        eth(0x0800),
        ipv4([198, 18, 0, 1], [198, 18, 9, 1], 5, 17, 185, &[0xff; 16]),
    );
    h.expect(&f, PASS, "(default)");
    // ...while rules without port matches still apply.
    let f = cat(
        eth(0x0800),
        ipv4([198, 18, 5, 1], SERVER, 5, 17, 185, &[0xff; 16]),
    );
    h.expect(&f, DROP, "block-net");
    // IPv6 non-first fragment of UDP: protocol known, no ports.
    let f = cat(
        eth(0x86dd),
        ipv6(
            v6("2001:2:0:1::1"),
            v6("2001:2:0:2::77"),
            44,
            &[frag6(17, 100, false)],
            &[0; 16],
        ),
    );
    h.expect(&f, DROP, "v6-dst-udp");
}

/// Headers are read within the IP packet, not the frame: the bytes after it (Ethernet
/// padding, a trailer) are the sender's to choose. A first fragment holding only the ports
/// and sequence number of a SYN to port 22, padded with bytes that read as a data offset and
/// the ACK flag, must not slip past `syn-22` as an ACK (its second fragment, with the real
/// flags, has no ports for any rule to see): it is malformed (RFC 1858's tiny fragment), as
/// is a TCP fragment at offset 8, which would overwrite the first one's flags.
#[test]
fn tiny_and_overlapping_tcp_fragments_are_malformed_not_judged_by_padding() {
    let h = Harness::new(RULES);
    // A SYN's ports and sequence number only.
    let tcp8 = common::frames::tcp_hdr(40000, 22, 0x02)[..8].to_vec();
    // After the packet: acknowledgement number, data offset 5, flags ACK, window.
    let padding = [0, 0, 0, 1, 0x50, 0x10, 0x04, 0x00, 0, 0, 0, 0];
    let tiny = cat(
        eth(0x0800),
        ipv4([198, 18, 0, 1], SERVER, 5, 6, 0x2000, &tcp8),
    );
    h.expect(&cat(tiny, padding.to_vec()), DROP, "(malformed)");
    // Unfragmented, the same: a TCP header the IP length cuts short is malformed.
    let short = cat(eth(0x0800), ipv4([198, 18, 0, 1], SERVER, 5, 6, 0, &tcp8));
    h.expect(&cat(short, padding.to_vec()), DROP, "(malformed)");
    // Fragment offset 1 (8 bytes) of TCP.
    let f = cat(
        eth(0x0800),
        ipv4(
            [198, 18, 0, 1],
            SERVER,
            5,
            6,
            1,
            &[0x50, 0x02, 4, 0, 0, 0, 0, 0],
        ),
    );
    h.expect(&f, DROP, "(malformed)");
    // Padding after a whole header changes nothing: a short SYN padded to 60 bytes still
    // meets `syn-22`, a padded ACK `ssh`; a UDP fragment at offset 8 is no TCP overlap.
    let mut syn = tcp4([198, 18, 0, 1], 22, true, false);
    syn.resize(60, 0xff);
    h.expect(&syn, DROP, "syn-22");
    let mut ack = tcp4([198, 18, 0, 1], 22, false, true);
    ack.resize(60, 0xff);
    h.expect(&ack, PASS, "ssh");
    let f = cat(
        eth(0x0800),
        ipv4([198, 18, 0, 1], SERVER, 5, 17, 1, &[0; 8]),
    );
    h.expect(&f, PASS, "(default)");
}

fn tcp6_syn(src: [u8; 16], dport: u16) -> Vec<u8> {
    common::frames::tcp_syn(SRC, DST, src.into(), SERVER6.into(), dport)
}

/// A frame the kernel hands to its IP stack is judged by the rules, however it is wrapped:
/// never counted as non-IP (stacked VLAN-0 tags once bypassed every rule that way).
#[test]
fn vlan_wrappings_never_hide_ip() {
    let h = Harness::new(RULES);
    let denied = [
        (
            "tcp SYN to 22 (IPv4)",
            tcp4([198, 18, 0, 1], 22, true, false),
            "syn-22",
        ),
        (
            "source 198.18.5.1",
            udp4([198, 18, 5, 1], SERVER, 1, 2),
            "block-net",
        ),
        (
            "tcp SYN to 22 (IPv6)",
            tcp6_syn(v6("2001:2:0:1::1"), 22),
            "syn-22",
        ),
        (
            "source 2001:2:0:bad::1",
            tcp6_syn(v6("2001:2:0:bad::1"), 80),
            "v6-src",
        ),
    ];
    for (wrap, tags) in vlan_wrappings(MAX_VLAN_TAGS) {
        for (what, f, rule) in &denied {
            eprintln!("{wrap}: {what}");
            h.expect(&vlan_wrap(f, &tags), DROP, rule);
        }
        // An allowed packet in the same wrapping still passes (the rules see through it).
        h.expect(
            &vlan_wrap(&udp4([198, 18, 0, 1], SERVER, 1, 9), &tags),
            PASS,
            "(default)",
        );
    }
    // One tag more than the parser walks: malformed (denied by default), never non-IP.
    let deep = vec![(0x8100u16, 0u16); MAX_VLAN_TAGS + 1];
    for (what, f, _) in &denied {
        eprintln!("{} tags: {what}", MAX_VLAN_TAGS + 1);
        h.expect(&vlan_wrap(f, &deep), DROP, "(malformed)");
    }
    // VLAN tags around a non-IP ethertype (ARP, an unknown type such as 0x9100) are non-IP.
    let mut arp = eth(0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.resize(60, 0);
    h.expect(
        &vlan_wrap(&arp, &[(0x8100, 0), (0x8100, 0)]),
        PASS,
        "(non_ip)",
    );
    let mut odd = eth(0x9100);
    odd.resize(60, 0);
    h.expect(&vlan_wrap(&odd, &[(0x88a8, 0)]), PASS, "(non_ip)");
    // With the malformed policy "allow" the deep frame passes, counted as malformed.
    let h2 = Harness::new("default = \"allow\"\nmalformed = \"allow\"\n");
    h2.expect(&vlan_wrap(&denied[0].1, &deep), PASS, "(malformed)");
}

/// Up to MAX_IPV6_EXT extension headers are walked to the upper layer; one more is
/// malformed. (Exactly eight used to be dropped as malformed: off by one.)
#[test]
fn ipv6_extension_header_limit() {
    let h = Harness::new(RULES);
    let chain = |n: usize, upper_proto: u8, upper: &[u8]| {
        let exts: Vec<Vec<u8>> = (0..n)
            .map(|i| opts_hdr(if i + 1 == n { upper_proto } else { 60 }))
            .collect();
        cat(
            eth(0x86dd),
            ipv6(v6("2001:2:0:1::1"), v6("2001:2:0:2::77"), 60, &exts, upper),
        )
    };
    for n in [1, MAX_IPV6_EXT - 1, MAX_IPV6_EXT] {
        // UDP to a denied destination /64: the rule must see the UDP header.
        h.expect(&chain(n, 17, &udp_hdr(1, 2)), DROP, "v6-dst-udp");
    }
    h.expect(
        &chain(MAX_IPV6_EXT + 1, 17, &udp_hdr(1, 2)),
        DROP,
        "(malformed)",
    );
    let h2 = Harness::new("default = \"allow\"\nmalformed = \"allow\"\n");
    h2.expect(&chain(MAX_IPV6_EXT, 17, &udp_hdr(1, 2)), PASS, "(default)");
    h2.expect(
        &chain(MAX_IPV6_EXT + 1, 17, &udp_hdr(1, 2)),
        PASS,
        "(malformed)",
    );
}

#[test]
fn malformed_and_non_ip() {
    let h = Harness::new(RULES);
    let good = || {
        cat(
            eth(0x0800),
            ipv4([198, 18, 0, 1], SERVER, 5, 17, 0, &udp_hdr(1, 9)),
        )
    };
    let mut cases: Vec<(&str, Vec<u8>)> = vec![];
    cases.push(("ethernet only, IPv4 announced", eth(0x0800)));
    let mut f = good();
    f.truncate(14 + 12);
    cases.push(("IPv4 header cut", f));
    for ihl in [0u8, 4] {
        let mut f = good();
        f[14] = 0x40 | ihl;
        cases.push(("IHL < 5", f));
    }
    let mut f = good();
    f[14] = 0x4f;
    cases.push(("IHL 15 beyond the frame", f));
    let mut f = good();
    f[16..18].copy_from_slice(&200u16.to_be_bytes());
    cases.push(("total length beyond the frame", f));
    let mut f = good();
    f[14] = 0x55;
    cases.push(("IP version 5", f));
    cases.push((
        "UDP header cut",
        cat(
            eth(0x0800),
            ipv4([198, 18, 0, 1], SERVER, 5, 17, 0, &[0, 53, 0]),
        ),
    ));
    let mut u = udp_hdr(1, 9);
    u[4..6].copy_from_slice(&4u16.to_be_bytes());
    cases.push((
        "UDP length < 8",
        cat(eth(0x0800), ipv4([198, 18, 0, 1], SERVER, 5, 17, 0, &u)),
    ));
    let mut t = vec![0u8; 20];
    t[12] = 0x40;
    cases.push((
        "TCP data offset < 5",
        cat(eth(0x0800), ipv4([198, 18, 0, 1], SERVER, 5, 6, 0, &t)),
    ));
    cases.push((
        "TCP header cut",
        cat(
            eth(0x0800),
            ipv4([198, 18, 0, 1], SERVER, 5, 6, 0, &[0; 10]),
        ),
    ));
    cases.push((
        "ICMP header < 8 bytes",
        cat(
            eth(0x0800),
            ipv4([198, 18, 0, 1], SERVER, 5, 1, 0, &[8, 0, 0, 0]),
        ),
    ));
    let mut f = eth(0x8100);
    f.extend_from_slice(&[0, 42]);
    cases.push(("VLAN tag cut", f));
    let mut f = udp6(v6("2001:2:0:1::1"), SERVER6);
    f.truncate(14 + 30);
    cases.push(("IPv6 header cut", f));
    let exts: Vec<Vec<u8>> = (0..9).map(|_| opts_hdr(60)).collect();
    cases.push((
        "9 IPv6 extension headers",
        cat(
            eth(0x86dd),
            ipv6(v6("2001:2:0:1::1"), SERVER6, 0, &exts, &udp_hdr(1, 2)),
        ),
    ));
    let mut big = opts_hdr(17);
    big[1] = 10;
    cases.push((
        "IPv6 extension header beyond the frame",
        cat(
            eth(0x86dd),
            ipv6(v6("2001:2:0:1::1"), SERVER6, 0, &[big], &[]),
        ),
    ));
    for (what, f) in &cases {
        eprintln!("malformed case: {what}");
        h.expect(f, DROP, "(malformed)");
    }
    // Non-IP frames follow the non_ip policy (allow by default).
    let mut arp = eth(0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.resize(60, 0);
    h.expect(&arp, PASS, "(non_ip)");

    // The malformed policy is configurable and still counted.
    let h2 = Harness::new("default = \"deny\"\nmalformed = \"allow\"\nnon_ip = \"deny\"\n");
    for (_, f) in &cases {
        h2.expect(f, PASS, "(malformed)");
    }
    h2.expect(&arp, DROP, "(non_ip)");
    h2.expect(&good(), DROP, "(default)");
}

#[test]
fn rate_limit_per_source_and_log() {
    let mut h = Harness::new(RULES);
    // Burst 5 at 5 pps: of 12 back-to-back packets from one source, 5 pass (refill over
    // the few milliseconds the test runs adds < 1 token).
    let f = udp4([198, 18, 0, 1], SERVER, 1, 6000);
    let verdicts: Vec<u32> = (0..12).map(|_| h.run(&f)).collect();
    let passed = verdicts.iter().filter(|v| **v == PASS).count();
    assert_eq!(passed, 5, "{verdicts:?}");
    assert!(verdicts[..5].iter().all(|v| *v == PASS), "{verdicts:?}");
    // Another source has its own bucket.
    h.expect(&udp4([198, 18, 0, 9], SERVER, 1, 6000), PASS, "rl-6000");
    let s = h.snap();
    assert_eq!(s["rl-6000"], (13, 7));
    // log: passes, counts, and sends the header to the ring buffer.
    for _ in 0..3 {
        h.expect(&udp4([198, 18, 0, 3], SERVER, 777, 5000), PASS, "log-5000");
    }
    let logs = h.fw.drain_log();
    assert_eq!(logs.len(), 3, "{logs:?}");
    assert_eq!(logs[0].rule, "log-5000");
    assert_eq!(logs[0].src.to_string(), "198.18.0.3");
    assert_eq!(logs[0].sport, 777);
    assert_eq!(logs[0].dport, 5000);
    assert_eq!(logs[0].verdict, Verdict::Pass);
    let st = h.fw.stats().unwrap();
    let r = st.rules.iter().find(|r| r.name == "log-5000").unwrap();
    assert_eq!(r.counters.logged, 3);
}

#[test]
fn rate_limit_bytes_per_second() {
    // 200-byte bucket refilled at 1,000 bytes/s: three 60-byte frames fit, the fourth not.
    let h = Harness::new(
        "default = \"allow\"\n[[rule]]\nname = \"bytes\"\naction = \"rate-limit\"\nproto = \"udp\"\nrate_limit = { bps = 1000, burst_bytes = 200 }\n",
    );
    let f = udp4([198, 18, 0, 1], SERVER, 1, 2);
    assert_eq!(f.len(), 60);
    let v: Vec<u32> = (0..6).map(|_| h.run(&f)).collect();
    assert_eq!(v, [PASS, PASS, PASS, DROP, DROP, DROP]);
    assert_eq!(h.snap()["bytes"], (6, 3));
}

#[test]
fn reload_swaps_rules_and_carries_counters() {
    let mut h = Harness::new(RULES);
    for _ in 0..4 {
        h.expect(&udp4([198, 18, 5, 1], SERVER, 1, 2), DROP, "block-net");
    }
    let g0 = h.fw.generation();
    // New set: block-net persists (moved to second place), a new rule first, ssh removed.
    let new = include_str!("data/fw-prog-reload.toml");
    let rs = rules::parse(new, None).unwrap();
    let r = h.fw.install(&rs).unwrap();
    assert_eq!(r.kept, ["block-net"]);
    assert_eq!(r.added, ["new-first"]);
    assert_ne!(h.fw.generation(), g0);
    let s = h.snap();
    assert_eq!(s["block-net"], (4, 4), "counters carried over");
    assert_eq!(s["new-first"], (0, 0));
    assert!(!s.contains_key("ssh"));
    h.expect(&udp4([198, 18, 5, 1], SERVER, 1, 2), DROP, "block-net");
    h.expect(&udp4([198, 18, 5, 200], SERVER, 1, 2), PASS, "new-first");
    // The old rules are gone: SSH now hits the default deny.
    h.expect(&tcp4([198, 18, 0, 1], 22, false, true), DROP, "(default)");
    // And back: the old generation's tables were cleared and rebuilt correctly.
    let rs = rules::parse(RULES, None).unwrap();
    h.fw.install(&rs).unwrap();
    h.expect(&tcp4([198, 18, 0, 1], 22, false, true), PASS, "ssh");
    h.expect(&udp4([198, 18, 5, 200], SERVER, 1, 2), DROP, "block-net");
    assert_eq!(h.snap()["block-net"], (6, 6));
}

#[test]
fn hundred_thousand_prefixes() {
    // 100,000 distinct /32s and /24s across 10.0.0.0/8 and 198.18.0.0/15, in one rule.
    let dir = wirelab_testkit::TempDir::new("wirelab-fwprog-");
    let mut list = String::new();
    for i in 0..60_000u32 {
        let a = 0x0a00_0000u32 + i * 7;
        list.push_str(&format!("{}/32\n", std::net::Ipv4Addr::from(a)));
    }
    for i in 0..40_000u32 {
        let a = 0x0b00_0000u32 + (i << 8);
        list.push_str(&format!("{}/24\n", std::net::Ipv4Addr::from(a)));
    }
    std::fs::write(dir.join("big.txt"), list).unwrap();
    let text = "default = \"allow\"\n[[rule]]\nname = \"big\"\naction = \"deny\"\nsrc_file = \"big.txt\"\n";
    std::fs::write(dir.join("big.toml"), text).unwrap();
    let rs = rules::load(&dir.join("big.toml")).unwrap();
    assert_eq!(rs.prefixes(), 100_000);
    common::require_privileges();
    let mut bpf = wirelab::ebpf::load(wirelab::ebpf::Object::Fw).unwrap();
    let t = std::time::Instant::now();
    let fw = Firewall::new(&mut bpf, &rs).unwrap();
    eprintln!("installed 100,000 prefixes in {:?}", t.elapsed());
    common::load_prog(&mut bpf, "fw");
    let h = Harness { bpf, fw };
    h.expect(&udp4([10, 0, 0, 7], SERVER, 1, 2), DROP, "big");
    h.expect(&udp4([10, 0, 0, 8], SERVER, 1, 2), PASS, "(default)");
    let last = (0x0a00_0000u32 + 59_999 * 7).to_be_bytes();
    h.expect(&udp4(last, SERVER, 1, 2), DROP, "big");
    h.expect(&udp4([11, 0, 17, 200], SERVER, 1, 2), DROP, "big");
    let past = (0x0b00_0000u32 + (40_000 << 8)).to_be_bytes();
    h.expect(&udp4(past, SERVER, 1, 2), PASS, "(default)");
}

/// One deny rule per prefix length ("l32" first, down to "l1"), each listing `per_len`
/// prefixes of that length under 198.18.0.0/15 (fewer where the length has fewer), or
/// anywhere in the IPv4 space with `spread` (frames only go through BPF_PROG_TEST_RUN); frames
/// from addresses inside and around them must hit the rule of the longest matching length,
/// whichever lookup method the firewall chose. Returns the source table's lookup plan.
fn longest_match_by_kernel(
    lengths: &[u8],
    per_len: u32,
    spread: bool,
    seed: u64,
) -> wirelab::fw::TablePlan {
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let base = 0xc612_0000u32; // 198.18.0.0/15
    let mut sets: Vec<(u8, Vec<u32>)> = vec![];
    let mut text = String::from("default = \"allow\"\n");
    for &l in lengths.iter().rev() {
        let mut v: Vec<u32> = (0..per_len)
            .map(|_| {
                let a = if spread {
                    next() as u32
                } else {
                    base | (next() as u32 & 0x1_ffff)
                };
                if l == 0 {
                    0
                } else {
                    a & (u32::MAX << (32 - l))
                }
            })
            .collect();
        v.sort();
        v.dedup();
        text.push_str(&format!(
            "[[rule]]\nname = \"l{l}\"\naction = \"deny\"\nsrc = [{}]\n",
            v.iter()
                .map(|a| format!("\"{}/{l}\"", std::net::Ipv4Addr::from(*a)))
                .collect::<Vec<_>>()
                .join(",")
        ));
        sets.push((l, v));
    }
    let h = Harness::new(&text);
    let plan = h.fw.stats().unwrap().lookup.src4;
    eprintln!("lookup: {plan:?}");
    for i in 0..300 {
        let a = if i % 5 == 0 {
            if spread {
                next() as u32
            } else {
                base ^ (next() as u32 & 0x3_ffff)
            }
        } else {
            let (l, v) = &sets[(next() as usize) % sets.len()];
            let host = if *l == 32 {
                0
            } else {
                next() as u32 & (u32::MAX >> l)
            };
            v[(next() as usize) % v.len()] | host
        };
        let want = sets
            .iter()
            .find(|(l, v)| {
                let m = if *l == 0 { 0 } else { u32::MAX << (32 - l) };
                v.contains(&(a & m))
            })
            .map(|(l, _)| format!("l{l}"));
        let (verdict, counter) = match &want {
            Some(n) => (DROP, n.as_str()),
            None => (PASS, "(default)"),
        };
        h.expect(&udp4(a.to_be_bytes(), SERVER, 1, 2), verdict, counter);
    }
    plan
}

#[test]
fn prefix_hash_answers_longest_match() {
    // Four lengths, 100 prefixes each: expanded into a prefix hash with a few probes.
    // Four lengths 8 bits apart, spread over the address space: merging any two would need
    // 256x the entries, so all four
    // are probed (every probe slot used).
    let p = longest_match_by_kernel(&[8, 16, 24, 32], 100, true, 0x1234_5678_9abc_def1);
    assert_eq!(p.method, TableMethod::Hash, "{p:?}");
    assert_eq!(p.lengths, [32, 24, 16, 8], "{p:?}");
    // Six close lengths: expanded into fewer probes.
    let p = longest_match_by_kernel(&[23, 24, 25, 30, 31, 32], 200, false, 0x0bad_cafe_f00d_0001);
    assert_eq!(p.method, TableMethod::Hash, "{p:?}");
    assert!((2..=3).contains(&p.lengths.len()), "{p:?}");
    // One length: one probe.
    let p = longest_match_by_kernel(&[20], 300, false, 0x1111_2222_3333_4444);
    assert_eq!(p.lengths, [20], "{p:?}");
}

#[test]
fn trie_fallback_answers_longest_match() {
    // Every length from /1 to /32, up to 400 prefixes each, spread over the address space:
    // four probes would need far more entries than the budget, so the table stays a trie.
    let all: Vec<u8> = (1..=32).collect();
    let p = longest_match_by_kernel(&all, 400, true, 0x5eed_5eed_5eed_5eed);
    assert_eq!(p.method, TableMethod::Trie, "{p:?}");
}

#[test]
fn ipv6_nested_prefixes_over_three_probes() {
    // /128 inside /64 inside /48: lengths too far apart to merge within the budget, so three
    // probes, longest first; the first matching rule decides.
    let h = Harness::new(
        "default = \"allow\"\n\
         [[rule]]\nname = \"host\"\naction = \"deny\"\nsrc = \"2001:2:0:1::5\"\n\
         [[rule]]\nname = \"net64\"\naction = \"allow\"\nsrc = \"2001:2:0:1::/64\"\n\
         [[rule]]\nname = \"net48\"\naction = \"deny\"\nsrc = \"2001:2::/48\"\n",
    );
    let plan = h.fw.stats().unwrap().lookup.src6;
    assert_eq!(plan.method, TableMethod::Hash, "{plan:?}");
    assert_eq!(plan.lengths, [128, 64, 48], "{plan:?}");
    h.expect(&udp6(v6("2001:2:0:1::5"), SERVER6), DROP, "host");
    h.expect(&udp6(v6("2001:2:0:1::6"), SERVER6), PASS, "net64");
    h.expect(&udp6(v6("2001:2:0:1:ffff::5"), SERVER6), PASS, "net64");
    h.expect(&udp6(v6("2001:2:0:2::5"), SERVER6), DROP, "net48");
    h.expect(&udp6(v6("2001:2:0:ffff::1"), SERVER6), DROP, "net48");
    h.expect(&udp6(v6("2001:2:1::1"), SERVER6), PASS, "(default)");
    h.expect(&udp6(v6("2001:3::1"), SERVER6), PASS, "(default)");
    h.expect(&udp6(v6("::ffff:198.18.0.5"), SERVER6), PASS, "(default)");
}

/// ns per run of `fw` on `frame` (BPF_PROG_TEST_RUN, `repeat` runs; the kernel's average).
fn ns_per_run(bpf: &aya::Ebpf, frame: &[u8], repeat: u32) -> f64 {
    use aya::programs::{TestRun, TestRunOptions};
    let p: &Xdp = bpf.program("fw").unwrap().try_into().unwrap();
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .expect("test run");
    r.duration.as_nanos() as f64
}

#[test]
fn the_capture_tap_keeps_fws_verdicts_and_is_skipped_when_off() {
    use aya::maps::{Array, PerCpuArray, ProgramArray};
    use wirelab_common::{capture::stat, maps};
    let mut h = Harness::new(include_str!("data/fw-block-udp.toml"));
    let dropped = udp4([198, 18, 0, 1], SERVER, 1000, 5000);
    let passed = udp4([198, 18, 0, 1], SERVER, 1000, 6000);
    let repeat = 200_000;
    // Tap off (no capture): the median of 5 averages, for the record.
    let med = |bpf: &aya::Ebpf, f: &[u8]| {
        let mut v: Vec<f64> = (0..5).map(|_| ns_per_run(bpf, f, repeat)).collect();
        v.sort_by(f64::total_cmp);
        v[2]
    };
    let off = med(&h.bpf, &passed);

    // A capture behind the tap: capture's object, no filter, its tap program in fw's slot.
    let mut cap = wirelab::ebpf::load(wirelab::ebpf::Object::Capture).expect("capture object");
    let filter = wirelab::capture::compile("").unwrap();
    wirelab::capture::configure(&mut cap, 128, &filter).unwrap();
    wirelab::capture::load_filter_programs(&mut cap).unwrap();
    common::load_prog(&mut cap, "capture_xdp_tap");
    let p: &Xdp = cap.program("capture_xdp_tap").unwrap().try_into().unwrap();
    let fd = p.fd().unwrap().try_clone().unwrap();
    ProgramArray::try_from(h.bpf.map_mut(maps::FW_TAP).unwrap())
        .unwrap()
        .set(0, &fd, 0)
        .unwrap();
    // The flag holds the captured interface's ifindex: BPF_PROG_TEST_RUN's frames arrive on
    // the loopback device (ifindex 1).
    let mut flag: Array<_, u32> = Array::try_from(h.bpf.map_mut(maps::FW_TAP_ON).unwrap()).unwrap();
    flag.set(0, 1, 0).unwrap();
    let seen = |cap: &aya::Ebpf| {
        let s: PerCpuArray<_, u64> =
            PerCpuArray::try_from(cap.map(maps::CAPTURE_STATS).unwrap()).unwrap();
        s.get(&stat::SEEN, 0).unwrap().iter().sum::<u64>()
    };
    // The verdicts stay fw's, the counters count once, capture ran on each frame, and the
    // frame leaves as it came (the metadata removed).
    h.expect(&dropped, DROP, "block-udp");
    h.expect(&passed, PASS, "(default)");
    assert_eq!(seen(&cap), 2);
    let (_, out) = wirelab_testkit::prog::run(&h.bpf, "fw", &passed);
    assert_eq!(out, passed);
    let on = med(&h.bpf, &passed);
    // With the flag off again, capture no longer runs.
    let mut flag: Array<_, u32> = Array::try_from(h.bpf.map_mut(maps::FW_TAP_ON).unwrap()).unwrap();
    flag.set(0, 0, 0).unwrap();
    let before = seen(&cap);
    h.expect(&dropped, DROP, "block-udp");
    assert_eq!(seen(&cap), before);
    let off_again = med(&h.bpf, &passed);
    eprintln!(
        "fw ns/run, tap off: {off:.1} (again {off_again:.1}); tap on, capture without reader: {on:.1}"
    );
}
