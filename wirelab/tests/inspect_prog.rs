//! The `inspect` XDP program on crafted and malformed frames through BPF_PROG_TEST_RUN
//! (aya's `TestRun`): no network involved. Each case asserts the verdict (always XDP_PASS)
//! and exactly which class counters moved.
//!
//! The kernel refuses test input shorter than an Ethernet header (14 bytes), so "truncated
//! Ethernet" cases are frames whose announced headers (VLAN tags, L3) are cut short.
mod common;
use aya::maps::PerCpuArray;
use common::build;
use common::frames::{self, cat, e, eth, frag6, opts_hdr, SRC};
use etherparse::VlanId;
use wirelab_common::maps;
use wirelab_common::{
    inspect::CLASS_NAMES,
    parse::{MAX_IPV6_EXT, MAX_VLAN_TAGS},
    Counter,
};

use frames::{A4 as A, A6, B4 as B, B6};

struct Harness {
    bpf: aya::Ebpf,
}

impl Harness {
    fn new() -> Self {
        common::require_privileges();
        let mut bpf = wirelab::ebpf::load(wirelab::ebpf::Object::Inspect).expect("load object");
        common::load_prog(&mut bpf, "inspect");
        Self { bpf }
    }

    fn counts(&self) -> Vec<u64> {
        let m: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.bpf.map(maps::INSPECT_COUNTERS).unwrap()).unwrap();
        (0..CLASS_NAMES.len() as u32)
            .map(|i| m.get(&i, 0).unwrap().iter().map(|c| c.packets).sum())
            .collect()
    }

    /// Run one frame; return the names of the classes whose counter moved.
    fn classes(&self, frame: &[u8]) -> Vec<&'static str> {
        let before = self.counts();
        let (verdict, _) = wirelab_testkit::prog::run(&self.bpf, "inspect", frame);
        assert_eq!(verdict, 2, "inspect must always return XDP_PASS");
        let after = self.counts();
        let mut moved = vec![];
        for (i, (a, b)) in after.iter().zip(before.iter()).enumerate() {
            match a - b {
                0 => {}
                1 => moved.push(CLASS_NAMES[i]),
                n => panic!("class {} moved by {n}", CLASS_NAMES[i]),
            }
        }
        moved
    }
}

fn udp4() -> Vec<u8> {
    build!(e().ipv4(A, B, 64).udp(1000, 2000), &[0u8; 18])
}

fn ipv4(ihl: u8, proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    frames::ipv4(A, B, ihl, proto, frag, payload)
}

fn udp_hdr() -> Vec<u8> {
    frames::udp_hdr(1000, 2000)
}

fn ipv6(first_next: u8, exts: &[Vec<u8>], upper: &[u8]) -> Vec<u8> {
    frames::ipv6(A6, B6, first_next, exts, upper)
}

#[test]
fn well_formed_frames() {
    let h = Harness::new();
    let ip: [(Vec<u8>, &[&str]); 5] = [
        (udp4(), &["total", "ipv4", "udp"]),
        (
            build!(e().ipv4(A, B, 64).tcp(1000, 22, 1, 1024).syn(), &[]),
            &["total", "ipv4", "tcp"],
        ),
        (
            build!(e().ipv4(A, B, 64).icmpv4_echo_request(1, 1), &[0u8; 56]),
            &["total", "ipv4", "icmp"],
        ),
        (
            build!(e().ipv6(A6, B6, 64).icmpv6_echo_request(1, 1), &[0u8; 8]),
            &["total", "ipv6", "icmpv6"],
        ),
        (
            build!(e().ipv6(A6, B6, 64).udp(53, 53), &[1, 2, 3]),
            &["total", "ipv6", "udp"],
        ),
    ];
    for (f, want) in ip {
        assert_eq!(h.classes(&f), want, "{f:02x?}");
    }

    // ARP request (Ethernet/IPv4), padded to 60 bytes like on the wire.
    let mut arp = eth(0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&SRC);
    arp.extend_from_slice(&A);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&B);
    arp.resize(60, 0);
    assert_eq!(h.classes(&arp), ["total", "arp"]);

    // LLDP: an ethertype inspect has no class for.
    let mut lldp = eth(0x88cc);
    lldp.resize(60, 0);
    assert_eq!(h.classes(&lldp), ["total", "other"]);

    // GRE inside IPv4: an IP protocol without its own class.
    let f = cat(eth(0x0800), ipv4(5, 47, 0, &[0u8; 8]));
    assert_eq!(h.classes(&f), ["total", "ipv4", "other"]);
}

#[test]
fn vlan_tags() {
    let h = Harness::new();
    let v = build!(
        e().single_vlan(VlanId::try_new(42).unwrap())
            .ipv4(A, B, 64)
            .udp(1, 2),
        &[0u8; 10]
    );
    assert_eq!(h.classes(&v), ["total", "ipv4", "udp", "vlan"]);

    let v = build!(
        e().double_vlan(VlanId::try_new(10).unwrap(), VlanId::try_new(20).unwrap())
            .ipv6(A6, B6, 64)
            .udp(1, 2),
        &[0u8; 10]
    );
    assert_eq!(h.classes(&v), ["total", "ipv6", "udp", "vlan"]);

    // A VLAN tag announced, frame ends inside it: truncated.
    let mut f = eth(0x8100);
    f.extend_from_slice(&[0, 42]);
    assert_eq!(h.classes(&f), ["total", "malformed"]);

    // Every wrapping the parser walks shows the packet inside; one tag more is malformed,
    // never "other" (the kernel would still deliver the IP packet inside).
    let tcp = build!(e().ipv4(A, B, 64).tcp(1, 22, 1, 1024).syn(), &[]);
    for (wrap, tags) in frames::vlan_wrappings(MAX_VLAN_TAGS) {
        let want: &[&str] = if tags.is_empty() {
            &["total", "ipv4", "tcp"]
        } else {
            &["total", "ipv4", "tcp", "vlan"]
        };
        assert_eq!(h.classes(&frames::vlan_wrap(&tcp, &tags)), want, "{wrap}");
    }
    let deep = vec![(0x8100u16, 0u16); MAX_VLAN_TAGS + 1];
    assert_eq!(
        h.classes(&frames::vlan_wrap(&tcp, &deep)),
        ["total", "malformed"]
    );
}

#[test]
fn ipv4_options_and_fragments() {
    let h = Harness::new();
    // IHL 6 and 15 (maximum options) with a UDP header after the options.
    for ihl in [6u8, 15] {
        let f = cat(eth(0x0800), ipv4(ihl, 17, 0, &udp_hdr()));
        assert_eq!(
            h.classes(&f),
            ["total", "ipv4", "udp", "ip_options"],
            "ihl {ihl}"
        );
    }
    // First fragment (MF set, offset 0): ports present.
    let f = cat(
        eth(0x0800),
        ipv4(5, 17, 0x2000, &cat(udp_hdr(), vec![0; 16])),
    );
    assert_eq!(h.classes(&f), ["total", "ipv4", "udp", "fragment"]);
    // Non-first fragment: no UDP header in it, still counted by protocol, never malformed.
    let f = cat(eth(0x0800), ipv4(5, 17, 185, &[0xff; 3]));
    assert_eq!(h.classes(&f), ["total", "ipv4", "udp", "fragment"]);
}

#[test]
fn malformed_ipv4() {
    let h = Harness::new();
    // Ethernet header only, IPv4 announced.
    assert_eq!(h.classes(&eth(0x0800)), ["total", "malformed"]);
    // IPv4 header cut at 12 bytes.
    let mut f = cat(eth(0x0800), ipv4(5, 17, 0, &udp_hdr()));
    f.truncate(14 + 12);
    assert_eq!(h.classes(&f), ["total", "malformed"]);
    // IHL < 5.
    for ihl in [0u8, 4] {
        let mut f = cat(eth(0x0800), ipv4(5, 17, 0, &udp_hdr()));
        f[14] = 0x40 | ihl;
        assert_eq!(h.classes(&f), ["total", "malformed"], "ihl {ihl}");
    }
    // IHL 15 announced, frame shorter than the options.
    let mut f = cat(eth(0x0800), ipv4(5, 17, 0, &udp_hdr()));
    f[14] = 0x4f;
    f.truncate(14 + 40);
    assert_eq!(h.classes(&f), ["total", "malformed"]);
    // Total length larger than the frame.
    let mut f = cat(eth(0x0800), ipv4(5, 17, 0, &udp_hdr()));
    f[16..18].copy_from_slice(&200u16.to_be_bytes());
    assert_eq!(h.classes(&f), ["total", "malformed"]);
    // Total length smaller than the header.
    let mut f = cat(eth(0x0800), ipv4(5, 17, 0, &udp_hdr()));
    f[16..18].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(h.classes(&f), ["total", "malformed"]);
    // Version 6 in an IPv4 ethertype.
    let mut f = cat(eth(0x0800), ipv4(5, 17, 0, &udp_hdr()));
    f[14] = 0x65;
    assert_eq!(h.classes(&f), ["total", "malformed"]);
    // UDP header cut short.
    let f = cat(eth(0x0800), ipv4(5, 17, 0, &[0, 1, 0, 2]));
    assert_eq!(h.classes(&f), ["total", "malformed"]);
    // TCP data offset < 5, and TCP header cut short.
    let mut tcp = vec![0u8; 20];
    tcp[12] = 0x40;
    let f = cat(eth(0x0800), ipv4(5, 6, 0, &tcp));
    assert_eq!(h.classes(&f), ["total", "malformed"]);
    let f = cat(eth(0x0800), ipv4(5, 6, 0, &[0u8; 12]));
    assert_eq!(h.classes(&f), ["total", "malformed"]);
    // TCP data offset 15 (60 bytes) but only 20 bytes present.
    let mut tcp = vec![0u8; 20];
    tcp[12] = 0xf0;
    let f = cat(eth(0x0800), ipv4(5, 6, 0, &tcp));
    assert_eq!(h.classes(&f), ["total", "malformed"]);
    // ICMP shorter than its 8-byte header.
    let f = cat(eth(0x0800), ipv4(5, 1, 0, &[8, 0, 0, 0]));
    assert_eq!(h.classes(&f), ["total", "malformed"]);
    // ARP cut after the fixed header.
    let mut arp = eth(0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0]);
    assert_eq!(h.classes(&arp), ["total", "malformed"]);
}

#[test]
fn ipv6_extension_headers() {
    let h = Harness::new();
    // hop-by-hop -> destination options -> routing -> UDP
    let mut routing = vec![17u8, 0, 0, 0, 0, 0, 0, 0];
    routing[0] = 17;
    let f = cat(
        eth(0x86dd),
        ipv6(0, &[opts_hdr(60), opts_hdr(43), routing], &udp_hdr()),
    );
    assert_eq!(h.classes(&f), ["total", "ipv6", "udp"]);
    // Fragment header, first fragment, then TCP.
    let mut tcp = vec![0u8; 20];
    tcp[12] = 0x50;
    tcp[13] = 0x02;
    let f = cat(eth(0x86dd), ipv6(44, &[frag6(6, 0, true)], &tcp));
    assert_eq!(h.classes(&f), ["total", "ipv6", "tcp", "fragment"]);
    // Non-first fragment: no upper-layer header to check.
    let f = cat(eth(0x86dd), ipv6(44, &[frag6(17, 100, false)], &[0xee; 5]));
    assert_eq!(h.classes(&f), ["total", "ipv6", "udp", "fragment"]);
    // Authentication header (len 4 => 24 bytes) then ICMPv6.
    let mut ah = vec![58u8, 4];
    ah.resize(24, 0);
    let f = cat(eth(0x86dd), ipv6(51, &[ah], &[128, 0, 0, 0, 0, 1, 0, 1]));
    assert_eq!(h.classes(&f), ["total", "ipv6", "icmpv6"]);
    // No next header (59).
    let f = cat(eth(0x86dd), ipv6(59, &[], &[]));
    assert_eq!(h.classes(&f), ["total", "ipv6", "other"]);
}

#[test]
fn malformed_ipv6() {
    let h = Harness::new();
    // Header cut at 30 bytes.
    let mut f = cat(eth(0x86dd), ipv6(17, &[], &udp_hdr()));
    f.truncate(14 + 30);
    assert_eq!(h.classes(&f), ["total", "malformed"]);
    // Payload length beyond the frame.
    let mut f = cat(eth(0x86dd), ipv6(17, &[], &udp_hdr()));
    f[18..20].copy_from_slice(&500u16.to_be_bytes());
    assert_eq!(h.classes(&f), ["total", "malformed"]);
    // An extension header claiming more bytes than there are.
    let mut big = opts_hdr(17);
    big[1] = 10; // 88 bytes
    let f = cat(eth(0x86dd), ipv6(0, &[big], &udp_hdr()));
    let mut f2 = f.clone();
    f2[18..20].copy_from_slice(&16u16.to_be_bytes());
    assert_eq!(h.classes(&f2), ["total", "malformed"]);
    // Exactly MAX_IPV6_EXT destination-options headers reach UDP; one more is malformed.
    let chain = |n: usize| {
        let exts: Vec<Vec<u8>> = (0..n)
            .map(|i| opts_hdr(if i + 1 == n { 17 } else { 60 }))
            .collect();
        cat(eth(0x86dd), ipv6(60, &exts, &udp_hdr()))
    };
    assert_eq!(h.classes(&chain(MAX_IPV6_EXT)), ["total", "ipv6", "udp"]);
    assert_eq!(h.classes(&chain(MAX_IPV6_EXT + 1)), ["total", "malformed"]);
    // Wrong version nibble.
    let mut f = cat(eth(0x86dd), ipv6(17, &[], &udp_hdr()));
    f[14] = 0x40;
    assert_eq!(h.classes(&f), ["total", "malformed"]);
}
