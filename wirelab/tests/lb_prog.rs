//! The `lb` tc program on crafted and malformed frames through BPF_PROG_TEST_RUN: VIP hits
//! redirected to the backend userspace predicts (destination MAC rewritten), misses passed,
//! tracked flows kept, SYNs hashed afresh, weight 0 never chosen, fragments / malformed /
//! all-backends-down frames counted as documented.
mod common;
use std::collections::BTreeMap;

use aya::{programs::SchedClassifier, Ebpf};
use common::frames::{cat, eth, ipv4, udp_hdr, DST, SRC};
use etherparse::PacketBuilder;
use wirelab::lb::{Balancer, Config, Stats};
use wirelab_common::lb::{FlowKey, NatValue, FAMILY_IPV4, FAMILY_IPV6};
use wirelab_testkit::frames::lb::{CLIENT, CLIENT6, IFACE_MAC, OTHER, VIP, VIP6, VIP_DOWN};

const TC_ACT_UNSPEC: u32 = u32::MAX; // -1: passed on
/// XDP verdicts.
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const CONFIG: &str = include_str!("data/lb-prog.toml");

struct Harness {
    bpf: Ebpf,
    lb: Balancer,
}

#[derive(Clone, Copy)]
enum Flags {
    Syn,
    Ack,
    Fin,
    Rst,
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, f: Flags) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC, DST)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1, 1024);
    let b = match f {
        Flags::Syn => b.syn(),
        Flags::Ack => b.ack(1),
        Flags::Fin => b.ack(1).fin(),
        Flags::Rst => b.rst(),
    };
    let mut v = Vec::new();
    b.write(&mut v, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    v
}

fn tcp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(SRC, DST)
        .ipv6(src, dst, 64)
        .tcp(sport, dport, 1, 1024)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    v
}

fn key4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> FlowKey {
    let mut k = FlowKey {
        sport,
        dport,
        proto,
        family: FAMILY_IPV4,
        ..Default::default()
    };
    k.saddr[..4].copy_from_slice(&src);
    k.daddr[..4].copy_from_slice(&dst);
    k
}

impl Harness {
    fn new() -> Self {
        Self::with(CONFIG)
    }

    /// The NAT services, with SNAT or without.
    fn with_nat(snat: bool) -> Self {
        Self::with(&if snat {
            snat_config()
        } else {
            NAT_CONFIG.into()
        })
    }

    fn with(config: &str) -> Self {
        common::require_privileges();
        let mut bpf = wirelab::ebpf::load(wirelab::ebpf::Object::Lb).expect("load object");
        let c = Config::parse(config).unwrap();
        let lb = Balancer::install(&mut bpf, &c, IFACE_MAC).expect("install");
        common::load_prog(&mut bpf, "lb");
        common::load_prog(&mut bpf, "lb_xdp");
        wirelab::lb::load_which(&mut bpf)
            .unwrap_or_else(|e| panic!("verifier accepts lb_which: {e:?}"));
        wirelab::lb::load_icmp(&mut bpf, true)
            .unwrap_or_else(|e| panic!("verifier accepts lb_icmp and lb_icmp_xdp: {e:?}"));
        common::load_prog(&mut bpf, wirelab::lb::PROG_EGRESS);
        Self { bpf, lb }
    }

    /// The program's `LB_NAT` table (NAT flows by reply 5-tuple), for entering or evicting
    /// entries as other flows or the LRU would.
    fn nat(&mut self) -> aya::maps::HashMap<&mut aya::maps::MapData, FlowKey, NatValue> {
        aya::maps::HashMap::try_from(self.bpf.map_mut(wirelab_common::maps::LB_NAT).unwrap())
            .unwrap()
    }

    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        wirelab_testkit::prog::run(&self.bpf, "lb", frame)
    }

    /// Plan `config` with the backends `down` out and write it as a reload does (the idle
    /// generation, then the flip); the balancer in force becomes it, which is returned.
    fn reload(&mut self, config: &Config, down: &wirelab::lb::DownSet) -> &Balancer {
        let next = Balancer::plan(config, IFACE_MAC, Some(&self.lb), down)
            .unwrap()
            .write(&mut self.bpf, Some(&self.lb))
            .unwrap();
        self.lb = next;
        &self.lb
    }

    fn stats(&self) -> Stats {
        self.lb.read(&self.bpf).unwrap()
    }

    /// Backend name by MAC, over every service.
    fn backend_by_mac(&self, mac: &[u8]) -> String {
        self.lb
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .find(|b| b.mac == mac)
            .map(|b| b.name.clone())
            .unwrap_or_else(|| panic!("no backend has MAC {mac:02x?}"))
    }

    /// Run `frame`, assert it is redirected as DSR (MACs rewritten, nothing else changed),
    /// return the backend's name.
    #[track_caller]
    fn forwarded(&self, frame: &[u8]) -> String {
        let (v, out) = self.run(frame);
        assert_eq!(v, TC_ACT_REDIRECT, "VIP frame redirected");
        assert_eq!(&out[6..12], &IFACE_MAC, "source MAC = the interface's");
        assert_eq!(&out[12..], &frame[12..], "only the MACs change in DSR");
        self.backend_by_mac(&out[..6])
    }
}

#[test]
fn a_vip_syn_goes_to_the_backend_userspace_predicts() {
    let h = Harness::new();
    let f = tcp(CLIENT, VIP, 40000, 80, Flags::Syn);
    let got = h.forwarded(&f);
    let want = h.lb.services[0]
        .predict(&key4(CLIENT, VIP, 40000, 80, 6))
        .unwrap();
    assert_eq!(got, want.name);
    let s = h.stats();
    let web = &s.services[0];
    assert_eq!((web.count.packets, web.count.new_flows), (1, 1));
    assert_eq!(web.count.bytes, f.len() as u64);
    let b = web.backends.iter().find(|b| b.name == got).unwrap();
    assert_eq!((b.count.packets, b.count.new_flows), (1, 1));
    assert_eq!(s.events.forwarded, 1);
}

#[test]
fn a_tracked_flow_keeps_its_backend() {
    let h = Harness::new();
    let first = h.forwarded(&tcp(CLIENT, VIP, 40001, 80, Flags::Syn));
    let active = |h: &Harness| h.lb.active_flows(&h.bpf).unwrap().services.get(&0).copied();
    for (i, f) in [Flags::Ack, Flags::Ack, Flags::Fin].into_iter().enumerate() {
        assert_eq!(active(&h), Some(1), "open before packet {i}");
        assert_eq!(h.forwarded(&tcp(CLIENT, VIP, 40001, 80, f)), first);
    }
    // The FIN is marked in the flow's entry: no longer counted as open.
    assert_eq!(active(&h), None, "closed by the FIN");
    assert_eq!(h.forwarded(&tcp(CLIENT, VIP, 40001, 80, Flags::Rst)), first);
    let web = &h.stats().services[0];
    assert_eq!((web.count.packets, web.count.new_flows), (5, 1));
    // A miss that is not a SYN (the balancer restarted mid-flow) is hashed and tracked too:
    // the same table gives the same backend.
    let mid = h.forwarded(&tcp(CLIENT, VIP, 40002, 80, Flags::Ack));
    assert_eq!(mid, h.forwarded(&tcp(CLIENT, VIP, 40002, 80, Flags::Ack)));
    assert_eq!(h.stats().services[0].count.new_flows, 2);
}

#[test]
fn syns_spread_over_backends_and_never_to_weight_0() {
    let h = Harness::new();
    let mut per: BTreeMap<String, u32> = BTreeMap::new();
    for port in 20000..20600u16 {
        let got = h.forwarded(&tcp(CLIENT, VIP, port, 80, Flags::Syn));
        let want = h.lb.services[0]
            .predict(&key4(CLIENT, VIP, port, 80, 6))
            .unwrap();
        assert_eq!(got, want.name, "port {port}");
        *per.entry(got).or_default() += 1;
    }
    assert!(!per.contains_key("drained"), "{per:?}");
    assert_eq!(
        per.len(),
        3,
        "every backend with weight gets flows: {per:?}"
    );
    for (b, n) in &per {
        // 600 flows, 1/3 each: within ±10 percentage points.
        assert!((140..=260).contains(n), "{b}: {n} of 600 ({per:?})");
    }
    let web = &h.stats().services[0];
    assert_eq!(web.count.new_flows, 600);
    let drained = web.backends.iter().find(|b| b.name == "drained").unwrap();
    assert_eq!((drained.slots, drained.count.packets), (0, 0));
}

#[test]
fn a_new_syn_hashes_afresh() {
    let h = Harness::new();
    // A SYN on a tuple already tracked re-enters the flow through the table, counted as new.
    let a = h.forwarded(&tcp(CLIENT, VIP, 40003, 80, Flags::Syn));
    let b = h.forwarded(&tcp(CLIENT, VIP, 40003, 80, Flags::Syn));
    assert_eq!(a, b, "same table, same slot");
    assert_eq!(h.stats().services[0].count.new_flows, 2);
    // Different source ports pick different backends.
    let backends: std::collections::BTreeSet<String> = (30000..30020u16)
        .map(|p| h.forwarded(&tcp(CLIENT, VIP, p, 80, Flags::Syn)))
        .collect();
    assert!(backends.len() >= 2, "{backends:?}");
}

#[test]
fn udp_and_ipv6_services() {
    let h = Harness::new();
    let mut u = Vec::new();
    PacketBuilder::ethernet2(SRC, DST)
        .ipv4(CLIENT, VIP, 64)
        .udp(5353, 53)
        .write(&mut u, b"query")
        .unwrap();
    assert_eq!(h.forwarded(&u), "ns1");
    let got6 = h.forwarded(&tcp6(CLIENT6, VIP6, 40000, 80));
    let k = FlowKey {
        saddr: CLIENT6,
        daddr: VIP6,
        sport: 40000,
        dport: 80,
        proto: 6,
        family: FAMILY_IPV6,
        ..Default::default()
    };
    assert_eq!(got6, h.lb.services[3].predict(&k).unwrap().name);
    let s = h.stats();
    assert_eq!(s.services[1].count.packets, 1);
    assert_eq!(s.services[3].count.new_flows, 1);
}

#[test]
fn misses_are_passed_and_counted() {
    let h = Harness::new();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("other address", tcp(CLIENT, OTHER, 40000, 80, Flags::Syn)),
        ("VIP, other port", tcp(CLIENT, VIP, 40000, 81, Flags::Syn)),
        ("VIP, UDP to the TCP port", {
            cat(eth(0x0800), ipv4(CLIENT, VIP, 5, 17, 0, &udp_hdr(1, 80)))
        }),
        ("VIP, ICMP", {
            let mut v = Vec::new();
            PacketBuilder::ethernet2(SRC, DST)
                .ipv4(CLIENT, VIP, 64)
                .icmpv4_echo_request(1, 1)
                .write(&mut v, &[])
                .unwrap();
            v
        }),
    ];
    for (what, f) in &cases {
        let (v, out) = h.run(f);
        assert_eq!(v, TC_ACT_UNSPEC, "{what}: passed");
        assert_eq!(&out, f, "{what}: unchanged");
    }
    let mut arp = eth(0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0; 20]);
    assert_eq!(h.run(&arp).0, TC_ACT_UNSPEC, "ARP passed");
    let s = h.stats();
    assert_eq!(s.events.non_vip, cases.len() as u64);
    assert_eq!(s.events.non_ip, 1);
    assert_eq!(s.events.forwarded, 0);
    assert!(s.services.iter().all(|s| s.count.packets == 0));
}

#[test]
fn malformed_frames_are_passed_and_counted() {
    let h = Harness::new();
    let syn = tcp(CLIENT, VIP, 40000, 80, Flags::Syn);
    let mut bad_ihl = syn.clone();
    bad_ihl[14] = 0x44;
    let mut long_total = syn.clone();
    long_total[16..18].copy_from_slice(&2000u16.to_be_bytes());
    // (BPF_PROG_TEST_RUN itself refuses an IPv4 frame shorter than an IPv4 header.)
    let mut options_cut = syn[..14 + 20 + 20].to_vec();
    options_cut[14] = 0x4f;
    let mut bad_doff = syn.clone();
    bad_doff[14 + 20 + 12] = 0x20;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("cut in the TCP header", syn[..14 + 20 + 10].to_vec()),
        ("IP options cut off", options_cut),
        ("IHL 4", bad_ihl),
        ("total length beyond the frame", long_total),
        ("TCP data offset 2", bad_doff),
    ];
    for (what, f) in &cases {
        let (v, out) = h.run(f);
        assert_eq!(v, TC_ACT_UNSPEC, "{what}: passed to the stack");
        assert_eq!(&out, f, "{what}: unchanged");
    }
    let s = h.stats();
    assert_eq!(s.events.malformed, cases.len() as u64);
    assert_eq!(s.events.forwarded, 0);
}

#[test]
fn ip_options_are_forwarded_and_counted() {
    let h = Harness::new();
    let tcp_hdr = &tcp(CLIENT, VIP, 40000, 80, Flags::Syn)[34..];
    let f = cat(eth(0x0800), ipv4(CLIENT, VIP, 6, 6, 0, tcp_hdr));
    h.forwarded(&f);
    assert_eq!(h.stats().events.ip_options, 1);
}

#[test]
fn all_backends_down_is_a_counted_drop() {
    let h = Harness::new();
    for port in 0..10u16 {
        let (v, _) = h.run(&tcp(CLIENT, VIP_DOWN, 41000 + port, 80, Flags::Syn));
        assert_eq!(v, TC_ACT_SHOT);
    }
    let s = h.stats();
    assert_eq!(s.events.drop_no_backend, 10);
    assert_eq!(s.services[2].count.drops, 10);
    assert_eq!(s.services[2].count.packets, 0);
}

#[test]
fn the_tables_go_in_the_idle_generation() {
    // A second install (as a reload will) writes the other generation and flips to it.
    let mut h = Harness::new();
    assert_eq!(
        h.lb.gen, 1,
        "the first install fills generation 1, then flips"
    );
    let before = h.forwarded(&tcp(CLIENT, VIP, 40000, 80, Flags::Syn));
    let c = Config::parse(CONFIG).unwrap();
    let lb2 = Balancer::install(&mut h.bpf, &c, IFACE_MAC).unwrap();
    assert_eq!(lb2.gen, 0);
    h.lb = lb2;
    assert_eq!(
        h.forwarded(&tcp(CLIENT, VIP, 40000, 80, Flags::Syn)),
        before
    );
}

#[test]
fn the_xdp_entry_point_decides_the_same() {
    const XDP_DROP: u32 = 1;
    let h = Harness::new();
    let syn = tcp(CLIENT, VIP, 40000, 80, Flags::Syn);
    let (v, out) = wirelab_testkit::prog::run(&h.bpf, "lb_xdp", &syn);
    assert_eq!(v, XDP_TX);
    assert_eq!(&out[6..12], &IFACE_MAC);
    assert_eq!(&out[12..], &syn[12..]);
    let want = h.lb.services[0]
        .predict(&key4(CLIENT, VIP, 40000, 80, 6))
        .unwrap();
    assert_eq!(h.backend_by_mac(&out[..6]), want.name);
    // The tc entry point agrees, on the flow the XDP one tracked.
    assert_eq!(
        h.forwarded(&tcp(CLIENT, VIP, 40000, 80, Flags::Ack)),
        want.name
    );
    let miss = tcp(CLIENT, OTHER, 40000, 80, Flags::Syn);
    assert_eq!(
        wirelab_testkit::prog::run(&h.bpf, "lb_xdp", &miss).0,
        XDP_PASS
    );
    let down = tcp(CLIENT, VIP_DOWN, 40000, 80, Flags::Syn);
    assert_eq!(
        wirelab_testkit::prog::run(&h.bpf, "lb_xdp", &down).0,
        XDP_DROP
    );
    let s = h.stats();
    assert_eq!(s.services[0].count.new_flows, 1);
    assert_eq!((s.events.non_vip, s.events.drop_no_backend), (1, 1));
}

/// Program cost per packet on each path, as BPF_PROG_TEST_RUN times it (average over many
/// runs of one frame). Printed for docs/lb.md; the bound only catches a pathological path.
#[test]
fn cost_per_packet_on_each_path() {
    use aya::programs::{TestRun, TestRunOptions};
    let h = Harness::new();
    // Track the flow the ACK case then hits.
    h.forwarded(&tcp(CLIENT, VIP, 40000, 80, Flags::Syn));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("non-VIP pass", tcp(CLIENT, OTHER, 40000, 80, Flags::Ack)),
        ("tracked flow", tcp(CLIENT, VIP, 40000, 80, Flags::Ack)),
        ("SYN, new flow", tcp(CLIENT, VIP, 40000, 80, Flags::Syn)),
        (
            "all backends down",
            tcp(CLIENT, VIP_DOWN, 40000, 80, Flags::Syn),
        ),
    ];
    let p: &SchedClassifier = h.bpf.program("lb").unwrap().try_into().unwrap();
    for (what, f) in &cases {
        let mut out = vec![0u8; f.len() + 256];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(f),
                data_out: Some(&mut out),
                repeat: 200_000,
                ..Default::default()
            })
            .unwrap();
        let ns = r.duration.as_nanos();
        eprintln!(
            "lb cost: {what}: {ns} ns/packet (verdict {})",
            r.return_value as i32
        );
        assert!(ns < 20_000, "{what}: {ns} ns/packet");
    }
    // NAT: a tracked flow (DNAT) and its reply (SNAT). A repeated run reuses one skb, which
    // the first run already translated (the later runs would time a miss): one run per
    // call instead, the kernel's per-run times averaged (coarser, but on the right path).
    let n = Harness::with(NAT_CONFIG);
    let (_, out) = n.run(&tcp(CLIENT, VIP, 40000, 80, Flags::Syn));
    let be: [u8; 4] = out[30..34].try_into().unwrap();
    // The DSR tracked flow timed the same way, for comparison.
    for (h, what, f, want) in [
        (
            &h,
            "DSR tracked flow",
            tcp(CLIENT, VIP, 40000, 80, Flags::Ack),
            TC_ACT_REDIRECT,
        ),
        (
            &n,
            "NAT tracked flow",
            tcp(CLIENT, VIP, 40000, 80, Flags::Ack),
            TC_ACT_OK,
        ),
        (
            &n,
            "NAT reply",
            tcp(be, CLIENT, 80, 40000, Flags::Ack),
            TC_ACT_OK,
        ),
    ] {
        let p: &SchedClassifier = h.bpf.program("lb").unwrap().try_into().unwrap();
        let mut out = vec![0u8; f.len() + 256];
        let (mut total, runs) = (0u128, 20_000u32);
        for _ in 0..runs {
            let r = p
                .test_run(TestRunOptions {
                    data_in: Some(&f),
                    data_out: Some(&mut out),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(r.return_value, want, "{what}");
            total += r.duration.as_nanos();
        }
        let ns = total / u128::from(runs);
        eprintln!("lb cost: {what}: {ns} ns/packet (one run per call, {runs} calls)");
        assert!(ns < 20_000, "{what}: {ns} ns/packet");
    }
}

/// `lb which` asks `lb_which` (the same decision, effects off): its answers match what the
/// attached program then does, and asking enters no flow and moves no counter.
#[test]
fn which_asks_the_program_and_changes_nothing() {
    use std::net::SocketAddr;
    use wirelab::lb::config::Proto;
    let h = Harness::new();
    let from: SocketAddr = "198.18.0.1:41000".parse().unwrap();
    let vip: SocketAddr = "198.18.1.100:80".parse().unwrap();
    let before = h.stats();
    let w = h.lb.which(&h.bpf, from, vip, Proto::Tcp).unwrap();
    assert!(w.tracked.is_none(), "no tracked flow yet: {w:?}");
    assert!(w.model_agrees, "{w:?}");
    let predicted = w.new_flow.expect("a backend is up").name;
    let after = h.stats();
    assert_eq!(after.events, before.events, "asking moves no event counter");
    assert_eq!(after.services[0].count, before.services[0].count);
    // Still untracked: asking entered nothing.
    assert!(h
        .lb
        .which(&h.bpf, from, vip, Proto::Tcp)
        .unwrap()
        .tracked
        .is_none());
    // The attached program sends the flow where `which` said.
    let got = h.forwarded(&tcp(CLIENT, VIP, 41000, 80, Flags::Syn));
    assert_eq!(got, predicted);
    let w = h.lb.which(&h.bpf, from, vip, Proto::Tcp).unwrap();
    let t = w.tracked.expect("tracked after the SYN");
    assert_eq!((t.backend.as_str(), t.stays), (got.as_str(), true));
    // Over many 5-tuples, which and the program agree; UDP and IPv6 too.
    for port in 42000..42050u16 {
        let from: SocketAddr = format!("198.18.0.1:{port}").parse().unwrap();
        let w = h.lb.which(&h.bpf, from, vip, Proto::Tcp).unwrap();
        assert!(w.model_agrees);
        assert_eq!(
            w.new_flow.unwrap().name,
            h.forwarded(&tcp(CLIENT, VIP, port, 80, Flags::Syn))
        );
    }
    let dns: SocketAddr = "198.18.1.100:53".parse().unwrap();
    assert_eq!(
        h.lb.which(&h.bpf, from, dns, Proto::Udp)
            .unwrap()
            .new_flow
            .unwrap()
            .name,
        "ns1"
    );
    let w6 =
        h.lb.which(
            &h.bpf,
            "[2001:2::1]:40000".parse().unwrap(),
            "[2001:2::100]:80".parse().unwrap(),
            Proto::Tcp,
        )
        .unwrap();
    assert!(w6.model_agrees && w6.new_flow.is_some(), "{w6:?}");
    // A service with no backend up: no new flow, and it says so.
    let down: SocketAddr = "198.18.1.101:80".parse().unwrap();
    assert!(h
        .lb
        .which(&h.bpf, from, down, Proto::Tcp)
        .unwrap()
        .new_flow
        .is_none());
}

#[test]
fn a_down_backend_leaves_the_table_and_its_flows_rehash_a_removed_one_keeps_its_flows() {
    use wirelab::lb::{DownSet, Health};
    let with_health = CONFIG.replacen("seed = 5", "seed = 5\nhealth = { kind = \"tcp\" }", 1);
    let mut h = Harness::with(&with_health);
    // One tracked flow on each of a and b.
    let mut on: BTreeMap<String, u16> = BTreeMap::new();
    for port in 30000..30100u16 {
        let b = h.forwarded(&tcp(CLIENT, VIP, port, 80, Flags::Syn));
        on.entry(b).or_insert(port);
    }
    let (pa, pb) = (on["a"], on["b"]);
    let c = Config::parse(&with_health).unwrap();
    let down: DownSet = [("web".to_string(), "a".to_string())].into();
    let next = h.reload(&c, &down);
    let a = &next.services[0].backends[0];
    assert_eq!((a.health, a.slots), (Health::Down, 0));
    assert_eq!(next.services[0].backends[1].health, Health::Up);
    assert_eq!(next.services[1].backends[0].health, Health::Unchecked);
    // a's tracked flow hashes afresh (a is down); b's stays.
    let moved = h.forwarded(&tcp(CLIENT, VIP, pa, 80, Flags::Ack));
    assert_ne!(moved, "a");
    assert_eq!(h.forwarded(&tcp(CLIENT, VIP, pb, 80, Flags::Ack)), "b");
    assert_eq!(h.stats().events.rehashed, 1);
    for port in 31000..31300u16 {
        assert_ne!(h.forwarded(&tcp(CLIENT, VIP, port, 80, Flags::Syn)), "a");
    }
    // Back up: a takes its slots again (ids unchanged).
    let a_id = h.lb.services[0].backends[0].id;
    let up = h.reload(&c, &DownSet::new());
    assert_eq!(up.services[0].backends[0].id, a_id);
    assert!(up.services[0].backends[0].slots > 0);
    // Remove b from the config: its tracked flow stays on it; new flows never go there,
    // and a backend added later does not take b's id.
    let removed = with_health.replacen(
        "[[service.backend]]\nname = \"b\"\naddr = \"198.18.0.22\"\nmac = \"02:00:00:00:00:22\"\n",
        "",
        1,
    );
    assert_ne!(removed, with_health);
    let c2 = Config::parse(&removed).unwrap();
    let b_id = h.lb.services[0].backends[1].id;
    assert!(h.reload(&c2, &DownSet::new()).retired.contains(&b_id));
    assert_eq!(
        wirelab_testkit::prog::run(&h.bpf, "lb", &tcp(CLIENT, VIP, pb, 80, Flags::Ack)).1[..6],
        [2, 0, 0, 0, 0, 0x22],
        "the removed backend keeps its tracked flow"
    );
    for port in 32000..32300u16 {
        let (v, out) = h.run(&tcp(CLIENT, VIP, port, 80, Flags::Syn));
        assert_eq!(v, TC_ACT_REDIRECT);
        assert_ne!(
            out[..6],
            [2, 0, 0, 0, 0, 0x22],
            "no new flow to the removed backend"
        );
    }
    let added = CONFIG.replacen(
        "name = \"drained\"",
        "name = \"new\"\naddr = \"198.18.0.25\"\nmac = \"02:00:00:00:00:25\"\n[[service.backend]]\nname = \"drained\"",
        1,
    );
    let next = Balancer::plan(
        &Config::parse(&added).unwrap(),
        IFACE_MAC,
        Some(&h.lb),
        &DownSet::new(),
    )
    .unwrap();
    assert!(
        next.services[0].backends.iter().all(|b| b.id != b_id),
        "b's id stays retired"
    );
}

/// A tracked flow's entry names its service by index: once a reload has removed the service
/// the flow is passed as any non-service packet, also when another service has its index;
/// when its VIP comes back under another index, it hashes afresh.
#[test]
fn a_tracked_flow_follows_its_service_not_its_service_index() {
    use wirelab::lb::DownSet;
    let mut h = Harness::new();
    let port = 30000;
    let first = h.forwarded(&tcp(CLIENT, VIP, port, 80, Flags::Syn));
    assert_eq!(h.forwarded(&tcp(CLIENT, VIP, port, 80, Flags::Ack)), first);
    let web_id = h.lb.services[0].id;
    let web_end = CONFIG.find("[[service]]\nname = \"dns\"").unwrap();
    let (web, rest) = CONFIG.split_at(web_end);
    // web removed, a new service at another VIP: it takes web's index.
    let other = web
        .replace("name = \"web\"", "name = \"other\"")
        .replace("vip = \"198.18.1.100\"", "vip = \"198.18.1.102\"");
    let reload = |h: &mut Harness, config: &str| {
        h.reload(&Config::parse(config).unwrap(), &DownSet::new());
    };
    reload(&mut h, &format!("{rest}{other}"));
    let moved =
        h.lb.services
            .iter()
            .find(|s| s.conf.name == "other")
            .unwrap();
    assert_eq!(
        moved.id, web_id,
        "the new service has the removed one's index"
    );
    let before = h.stats().events.non_vip;
    let (v, _) = h.run(&tcp(CLIENT, VIP, port, 80, Flags::Ack));
    assert_eq!(v, TC_ACT_UNSPEC, "the removed service's flow is passed");
    assert_eq!(h.stats().events.non_vip, before + 1);
    // web back, under another index: its old flow hashes afresh (counted), then is tracked.
    reload(&mut h, &format!("{rest}{other}{web}"));
    let back = h.lb.services.iter().find(|s| s.conf.name == "web").unwrap();
    assert_ne!(back.id, web_id);
    let rehashed = h.stats().events.rehashed;
    let again = h.forwarded(&tcp(CLIENT, VIP, port, 80, Flags::Ack));
    assert_eq!(h.stats().events.rehashed, rehashed + 1);
    assert_eq!(h.forwarded(&tcp(CLIENT, VIP, port, 80, Flags::Ack)), again);
    assert_eq!(h.stats().events.rehashed, rehashed + 1);
}

const NAT_CONFIG: &str = include_str!("data/lb-prog-nat.toml");

const TC_ACT_OK: u32 = 0;

/// 16-bit one's complement sum of `data` added to `acc` (unfolded).
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut a: u32) -> u16 {
    while a >> 16 != 0 {
        a = (a & 0xffff) + (a >> 16);
    }
    a as u16
}

/// Every checksum of an Ethernet / IPv4 or IPv6 / TCP or UDP frame verifies (computed here
/// from scratch: the IPv4 header, and the L4 segment with its pseudo-header). A UDP/IPv4
/// checksum of 0 means none.
fn checksums_ok(f: &[u8]) -> bool {
    let ip = &f[14..];
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => {
            let ihl = usize::from(ip[0] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if fold(sum16(&ip[..ihl], 0)) != 0xffff {
                return false;
            }
            let l4 = &ip[ihl..total];
            if ip[9] == 17 && l4[6..8] == [0, 0] {
                return true;
            }
            let acc = sum16(&ip[12..20], u32::from(ip[9]) + l4.len() as u32);
            fold(sum16(l4, acc)) == 0xffff
        }
        0x86dd => {
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let l4 = &ip[40..40 + plen];
            let acc = sum16(&ip[8..40], u32::from(ip[6]) + plen as u32);
            fold(sum16(l4, acc)) == 0xffff
        }
        e => panic!("not IP: {e:#06x}"),
    }
}

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(SRC, DST)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, b"a DNS query, more or less")
        .unwrap();
    v
}

fn tcp6_from(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC, DST)
        .ipv6(src, dst, 64)
        .tcp(sport, dport, 7, 1024);
    let b = if syn { b.syn() } else { b.syn().ack(8) };
    let mut v = Vec::new();
    b.write(&mut v, b"some bytes").unwrap();
    v
}

/// Run a NAT frame: it must be handed on translated (TC_ACT_OK) with every checksum right,
/// only the address at `off` (and the checksums) changed. Returns the new address.
#[track_caller]
fn translated(h: &Harness, f: &[u8], off: usize, len: usize) -> Vec<u8> {
    translated_by(h, "lb", TC_ACT_OK, f, off, len)
}

/// [`translated`] through program `prog`, whose verdict for "on to the kernel's routing" is
/// `pass`.
#[track_caller]
fn translated_by(h: &Harness, prog: &str, pass: u32, f: &[u8], off: usize, len: usize) -> Vec<u8> {
    assert!(checksums_ok(f), "the crafted frame verifies");
    let (v, out) = wirelab_testkit::prog::run(&h.bpf, prog, f);
    assert_eq!(v, pass, "translated and handed to the kernel's routing");
    assert_eq!(out.len(), f.len());
    assert!(
        checksums_ok(&out),
        "checksums after the rewrite: {out:02x?}"
    );
    // Only the address and the checksums changed: the IPv4 header checksum, the TCP (or
    // UDP) checksum.
    let v4 = f[12..14] == [0x08, 0x00];
    let l4 = if v4 {
        14 + usize::from(f[14] & 0xf) * 4
    } else {
        54
    };
    let l4_csum = l4
        + if f[if v4 { 23 } else { 20 }] == 17 {
            6
        } else {
            16
        };
    for (i, (a, b)) in f.iter().zip(&out).enumerate() {
        let allowed = (off..off + len).contains(&i)
            || (v4 && (24..26).contains(&i))
            || (l4_csum..l4_csum + 2).contains(&i);
        assert!(a == b || allowed, "byte {i} changed: {a:#04x} -> {b:#04x}");
    }
    out[off..off + len].to_vec()
}

/// The NAT rewrites one entry point (`prog`, whose verdict for "on to the kernel's routing"
/// is `pass`) makes, each with correct checksums, for flows from client port `port` (and
/// `port + 1`): a SYN goes to the backend userspace predicts, the flow's ACK after it follows
/// (through the tc entry point: both share the tables), the backend's reply goes back from
/// the VIP; UDP with a checksum and without one (0 stays 0), and its reply; TCP over IPv6
/// (four words of the address through the L4 checksum, no header checksum) both ways. The
/// answer: the TCP flow's backend.
#[track_caller]
fn assert_nat_rewrites(h: &Harness, prog: &str, pass: u32, port: u16) -> [u8; 4] {
    let x = |f: &[u8], off: usize, len: usize| translated_by(h, prog, pass, f, off, len);
    let to = x(&tcp(CLIENT, VIP, port, 80, Flags::Syn), 30, 4);
    let want = h.lb.services[0]
        .predict(&key4(CLIENT, VIP, port, 80, 6))
        .unwrap();
    assert_eq!(
        std::net::IpAddr::from([to[0], to[1], to[2], to[3]]),
        want.addr,
        "{prog}"
    );
    let ack = tcp(CLIENT, VIP, port, 80, Flags::Ack);
    assert_eq!(translated(h, &ack, 30, 4), to, "{prog}: tracked");
    let be: [u8; 4] = to.clone().try_into().unwrap();
    assert_eq!(x(&tcp(be, CLIENT, 80, port, Flags::Ack), 26, 4), VIP);

    let udp_be = [198, 18, 2, 31];
    assert_eq!(x(&udp4(CLIENT, VIP, port, 53), 30, 4), udp_be);
    let mut q0 = udp4(CLIENT, VIP, port + 1, 53);
    q0[40..42].copy_from_slice(&[0, 0]);
    let (v, out) = wirelab_testkit::prog::run(&h.bpf, prog, &q0);
    assert_eq!((v, &out[30..34]), (pass, &udp_be[..]), "{prog}");
    assert_eq!(&out[40..42], &[0, 0], "{prog}: no UDP checksum stays none");
    assert!(checksums_ok(&out));
    assert_eq!(x(&udp4(udp_be, CLIENT, 53, port), 26, 4), VIP);

    let b6 = x(&tcp6_from(CLIENT6, VIP6, port, 80, true), 38, 16);
    assert_eq!(b6, v6("2001:2:2::21"), "{prog}");
    let b6: [u8; 16] = b6.try_into().unwrap();
    assert_eq!(x(&tcp6_from(b6, CLIENT6, 80, port, false), 22, 16), VIP6);
    be
}

#[test]
fn nat_rewrites_both_directions_with_correct_checksums() {
    let h = Harness::with(NAT_CONFIG);
    let be = assert_nat_rewrites(&h, "lb", TC_ACT_OK, 40000);
    // A packet from a backend that is no NAT flow's reply is left alone.
    let other = tcp(be, CLIENT, 80, 40002, Flags::Ack);
    assert_eq!(h.run(&other), (TC_ACT_UNSPEC, other.clone()));
    let s = h.stats();
    // Forwarded: the SYN, its ACK, both UDP queries and the IPv6 SYN; replies: one each.
    assert_eq!((s.events.nat_replies, s.events.forwarded), (3, 5));
    assert_eq!(s.services[0].count.new_flows, 1);
}

/// `LB_FLOWS` and `LB_NAT` are LRU tables evicted independently. A tracked NAT flow whose
/// reply entry was evicted gets it back with its next packet (`nat_reentered`), so its
/// replies are translated again; with SNAT, a flow whose port another flow has been given
/// since is dropped rather than sent under that other flow's tuple.
#[test]
fn a_tracked_nat_flow_whose_reply_entry_was_evicted_gets_it_back() {
    for snat in [false, true] {
        let mut h = Harness::with_nat(snat);
        let syn = tcp(CLIENT, VIP, 40000, 80, Flags::Syn);
        let (v, out) = h.run(&syn);
        assert_eq!(v, TC_ACT_OK, "snat {snat}");
        let b: [u8; 4] = out[30..34].try_into().unwrap();
        let to = if snat { SNAT } else { CLIENT };
        let reply_key = key4(b, to, 80, 40000, 6);
        let reply = tcp(b, to, 80, 40000, Flags::Ack);
        let ack = tcp(CLIENT, VIP, 40000, 80, Flags::Ack);
        let evict = |h: &mut Harness| h.nat().remove(&reply_key).unwrap();
        evict(&mut h);
        assert_eq!(
            h.run(&reply),
            (TC_ACT_UNSPEC, reply.clone()),
            "snat {snat}: without its entry the reply is no NAT flow's"
        );
        assert_eq!(h.run(&ack).0, TC_ACT_OK, "snat {snat}: tracked");
        assert_eq!(h.stats().events.nat_reentered, 1, "snat {snat}");
        let (v, out) = h.run(&reply);
        assert_eq!((v, &out[26..30]), (TC_ACT_OK, &VIP[..]), "snat {snat}");
        assert_eq!(h.run(&ack).0, TC_ACT_OK);
        assert_eq!(
            h.stats().events.nat_reentered,
            1,
            "snat {snat}: an entry in place is only looked up"
        );
        if !snat {
            continue;
        }
        // The port given to another client in the meantime: this flow's packets are dropped.
        evict(&mut h);
        {
            let mut nat = h.nat();
            let other = NatValue {
                snat: 1,
                client_port: 1,
                ..Default::default()
            };
            nat.insert(reply_key, other, 0).unwrap();
        }
        assert_eq!(h.run(&ack), (TC_ACT_SHOT, ack.clone()));
        let e = h.stats().events;
        assert_eq!((e.drop_snat_port, e.nat_reentered, e.drop_error), (1, 1, 0));
    }
}

/// Split an Ethernet/IP frame's IP payload at `at` (a multiple of 8) into two fragments
/// with identification `id`: IPv4 (header checksums right) or IPv6 (a fragment header).
fn fragments(f: &[u8], at: usize, id: u32) -> [Vec<u8>; 2] {
    let v4 = f[12..14] == [0x08, 0x00];
    let payload = if v4 { &f[34..] } else { &f[54..] };
    let parts = [
        (&payload[..at], 0u16, true),
        (&payload[at..], (at / 8) as u16, false),
    ];
    parts.map(|(chunk, units, more)| {
        if v4 {
            let frag = units | if more { 0x2000 } else { 0 };
            let mut ip = common::frames::ipv4(
                f[26..30].try_into().unwrap(),
                f[30..34].try_into().unwrap(),
                5,
                f[23],
                frag,
                chunk,
            );
            ip[4..6].copy_from_slice(&(id as u16).to_be_bytes());
            let c = !fold(sum16(&ip[..20], 0));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            cat(eth(0x0800), ip)
        } else {
            let mut fh = common::frames::frag6(f[20], units, more);
            fh[4..8].copy_from_slice(&id.to_be_bytes());
            let ip = common::frames::ipv6(
                f[22..38].try_into().unwrap(),
                f[38..54].try_into().unwrap(),
                44,
                &[fh],
                chunk,
            );
            cat(eth(0x86dd), ip)
        }
    })
}

/// The datagram two fragments carry, as one frame again (headers from the first).
fn reassembled(a: &[u8], b: &[u8]) -> Vec<u8> {
    if a[12..14] == [0x08, 0x00] {
        let mut payload = a[34..].to_vec();
        payload.extend_from_slice(&b[34..]);
        let mut ip = common::frames::ipv4(
            a[26..30].try_into().unwrap(),
            a[30..34].try_into().unwrap(),
            5,
            a[23],
            0,
            &payload,
        );
        let c = !fold(sum16(&ip[..20], 0));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        cat(eth(0x0800), ip)
    } else {
        let mut upper = a[62..].to_vec();
        upper.extend_from_slice(&b[62..]);
        let ip = common::frames::ipv6(
            a[22..38].try_into().unwrap(),
            a[38..54].try_into().unwrap(),
            a[54],
            &[],
            &upper,
        );
        cat(eth(0x86dd), ip)
    }
}

/// A NAT backend's reply too large for the path arrives in fragments: the first (with the
/// ports) is translated as any reply and the later ones get the same addresses through its
/// `LB_FRAGS` entry, so the datagram reassembles from the VIP with a right checksum (IPv4
/// UDP and IPv6 TCP; both entry points; with SNAT the destination too). A later fragment of
/// a datagram whose first was not seen is passed as it is.
#[test]
fn fragmented_nat_replies_are_translated_fragment_by_fragment() {
    for (prog, pass, unspec) in [
        ("lb", TC_ACT_OK, TC_ACT_UNSPEC),
        ("lb_xdp", XDP_PASS, XDP_PASS),
    ] {
        for snat in [false, true] {
            let h = Harness::with_nat(snat);
            let run = |f: &[u8]| wirelab_testkit::prog::run(&h.bpf, prog, f);
            let what = format!("{prog}, snat {snat}");
            // `reply` in two fragments (split at `at`, identification `id`): both passed, and
            // what comes out reassembles with a right checksum.
            let through_in_fragments = |reply: &[u8], at: usize, id: u32| {
                let [f1, f2] = fragments(reply, at, id);
                let (v1, o1) = run(&f1);
                let (v2, o2) = run(&f2);
                assert_eq!((v1, v2), (pass, pass), "{what}");
                let whole = reassembled(&o1, &o2);
                assert!(checksums_ok(&whole), "{what}: {whole:02x?}");
                whole
            };
            // UDP/IPv4: the query enters the flow; the answer comes back in two fragments.
            let (v, q) = run(&udp4(CLIENT, VIP, 5353, 53));
            assert_eq!(v, pass, "{what}");
            let (to, port) = (&q[26..30], port_at(&q, 34));
            let mut answer = Vec::new();
            PacketBuilder::ethernet2(SRC, DST)
                .ipv4([198, 18, 2, 31], to.try_into().unwrap(), 64)
                .udp(53, port)
                .write(&mut answer, &[0x5a; 200])
                .unwrap();
            let whole = through_in_fragments(&answer, 104, 0x1234);
            assert_eq!(&whole[26..30], &VIP, "{what}: from the VIP");
            assert_eq!(&whole[30..34], &CLIENT, "{what}: to the client");
            assert_eq!(port_at(&whole, 36), 5353, "{what}");
            assert_eq!(&whole[42..], &[0x5a; 200], "{what}: payload untouched");
            let e = h.stats().events;
            assert_eq!((e.nat_replies, e.nat_fragments), (1, 1), "{what}");
            // A later fragment of another datagram (its first never came): left alone.
            let [_, lone] = fragments(&answer, 104, 0x4321);
            assert_eq!(run(&lone), (unspec, lone.clone()), "{what}");

            // TCP/IPv6 (the nat6 service).
            let (v, s) = run(&tcp6_from(CLIENT6, VIP6, 40000, 80, true));
            assert_eq!(v, pass, "{what}");
            let mut seg = Vec::new();
            PacketBuilder::ethernet2(SRC, DST)
                .ipv6(v6("2001:2:2::21"), s[22..38].try_into().unwrap(), 64)
                .tcp(80, port_at(&s, 54), 7, 1024)
                .ack(8)
                .write(&mut seg, &[0xa5; 300])
                .unwrap();
            let whole = through_in_fragments(&seg, 160, 0x0102_0304);
            assert_eq!(&whole[22..38], &VIP6, "{what}");
            assert_eq!(&whole[38..54], &CLIENT6, "{what}");
            assert_eq!(port_at(&whole, 56), 40000, "{what}");
            assert_eq!(h.stats().events.nat_fragments, 2, "{what}");
        }
    }
}

/// A datagram to a VIP in fragments (DSR): the first, which holds the ports, is balanced as
/// any packet and each later fragment goes to the same backend (its `LB_VIP_FRAGS` entry);
/// 24 TCP segments spread over the web service's backends, both entry points. A later
/// fragment whose first never came is dropped; fragments to other addresses are passed.
#[test]
fn fragments_to_a_vip_follow_their_first_fragment() {
    const XDP_DROP: u32 = 1;
    for (prog, drop, unspec) in [("lb", TC_ACT_SHOT, TC_ACT_UNSPEC), ("lb_xdp", XDP_DROP, 2)] {
        let h = Harness::new();
        let run = |f: &[u8]| wirelab_testkit::prog::run(&h.bpf, prog, f);
        let mut backends = std::collections::BTreeSet::new();
        for i in 0..24u16 {
            let mut seg = Vec::new();
            PacketBuilder::ethernet2(SRC, DST)
                .ipv4(CLIENT, VIP, 64)
                .tcp(41000 + i, 80, 7, 1024)
                .ack(1)
                .write(&mut seg, &[0x5a; 300])
                .unwrap();
            let [f1, f2] = fragments(&seg, 104, 0x7000 + i as u32);
            let (v1, o1) = run(&f1);
            let (v2, o2) = run(&f2);
            assert_ne!(v1, drop, "{prog}: first fragment {i} forwarded");
            assert_eq!(v2, v1, "{prog}: later fragment {i} as its first");
            assert_eq!(&o2[..6], &o1[..6], "{prog}: {i}: to the same backend");
            assert_eq!(&o1[14..], &f1[14..], "{prog}: DSR leaves the packet alone");
            assert_eq!(&o2[14..], &f2[14..], "{prog}");
            backends.insert(o1[..6].to_vec());
        }
        assert_eq!(backends.len(), 3, "{prog}: over the three live backends");
        let e = h.stats().events;
        assert_eq!((e.vip_fragments, e.drop_fragment), (24, 0), "{prog}");
        // A later fragment whose first never came: dropped.
        let mut seg = Vec::new();
        PacketBuilder::ethernet2(SRC, DST)
            .ipv4(CLIENT, VIP, 64)
            .tcp(42000, 80, 7, 1024)
            .ack(1)
            .write(&mut seg, &[0x5a; 300])
            .unwrap();
        let [_, lone] = fragments(&seg, 104, 0x0bad);
        assert_eq!(run(&lone).0, drop, "{prog}: lone later fragment");
        assert_eq!(h.stats().events.drop_fragment, 1, "{prog}");
        // Fragments to another address: passed as they are.
        let elsewhere = cat(eth(0x0800), ipv4(CLIENT, OTHER, 5, 6, 0x0010, &[0u8; 16]));
        assert_eq!(run(&elsewhere), (unspec, elsewhere.clone()), "{prog}");
        assert_eq!(h.stats().events.non_vip, 1, "{prog}");
    }
}

/// A datagram to a NAT VIP in fragments: the first is translated as any packet (addresses and
/// ports, its checksum covering the whole datagram), each later fragment gets the same
/// addresses, so the datagram reassembles at the backend with a right checksum (IPv4 UDP and
/// IPv6 TCP; both entry points; with SNAT the source too).
#[test]
fn fragmented_datagrams_to_a_nat_vip_reach_one_backend_whole() {
    for (prog, pass) in [("lb", TC_ACT_OK), ("lb_xdp", XDP_PASS)] {
        for snat in [false, true] {
            let h = Harness::with_nat(snat);
            let run = |f: &[u8]| wirelab_testkit::prog::run(&h.bpf, prog, f);
            let what = format!("{prog}, snat {snat}");
            let mut query = Vec::new();
            PacketBuilder::ethernet2(SRC, DST)
                .ipv4(CLIENT, VIP, 64)
                .udp(5353, 53)
                .write(&mut query, &[0x5a; 200])
                .unwrap();
            let [f1, f2] = fragments(&query, 104, 0x2222);
            let (v1, o1) = run(&f1);
            let (v2, o2) = run(&f2);
            assert_eq!((v1, v2), (pass, pass), "{what}");
            assert_eq!(&o2[26..34], &o1[26..34], "{what}: the same addresses");
            let whole = reassembled(&o1, &o2);
            assert!(checksums_ok(&whole), "{what}: {whole:02x?}");
            assert_eq!(&whole[30..33], &[198, 18, 2], "{what}: to a backend");
            let from: &[u8] = if snat { &SNAT } else { &CLIENT };
            assert_eq!(&whole[26..30], from, "{what}: from");
            assert_eq!(port_at(&whole, 36), 53, "{what}");
            assert_eq!(&whole[42..], &[0x5a; 200], "{what}: payload untouched");
            let e = h.stats().events;
            assert_eq!((e.vip_fragments, e.drop_fragment), (1, 0), "{what}");

            // TCP/IPv6 (the nat6 service).
            let mut seg = Vec::new();
            PacketBuilder::ethernet2(SRC, DST)
                .ipv6(CLIENT6, VIP6, 64)
                .tcp(40000, 80, 7, 1024)
                .syn()
                .write(&mut seg, &[0xa5; 300])
                .unwrap();
            let [f1, f2] = fragments(&seg, 160, 0x0102_0304);
            let (v1, o1) = run(&f1);
            let (v2, o2) = run(&f2);
            assert_eq!((v1, v2), (pass, pass), "{what}");
            let whole = reassembled(&o1, &o2);
            assert!(checksums_ok(&whole), "{what}: {whole:02x?}");
            assert_eq!(
                &whole[38..54],
                &v6("2001:2:2::21"),
                "{what}: to the backend"
            );
            let from6 = if snat { v6("2001:2:2::250") } else { CLIENT6 };
            assert_eq!(&whole[22..38], &from6, "{what}: from");
            assert_eq!(&whole[74..], &[0xa5; 300], "{what}: payload untouched");
            assert_eq!(h.stats().events.vip_fragments, 2, "{what}");
        }
    }
}

/// A NAT packet whose TCP header starts beyond the offsets a rewrite can reach (here behind a
/// 1 KiB destination-options header) is dropped as an error, not rewritten at a cut-down
/// offset inside the extension header (which left the real checksum stale); one behind a
/// short header is translated.
#[test]
fn nat_packets_with_headers_deeper_than_a_rewrite_reaches_are_dropped() {
    let h = Harness::with(NAT_CONFIG);
    let syn = common::frames::tcp_hdr(40000, 80, 0x02);
    // Destination options (60) of (127 + 1) * 8 bytes: the TCP header at 14 + 40 + 1024.
    let mut big = vec![6u8, 127];
    big.resize(1024, 0);
    let deep = cat(
        eth(0x86dd),
        common::frames::ipv6(CLIENT6, VIP6, 60, &[big], &syn),
    );
    assert_eq!(h.run(&deep), (TC_ACT_SHOT, deep.clone()));
    assert_eq!(h.stats().events.drop_error, 1);
    let near = cat(
        eth(0x86dd),
        common::frames::ipv6(CLIENT6, VIP6, 60, &[common::frames::opts_hdr(6)], &syn),
    );
    let (v, out) = h.run(&near);
    assert_eq!(v, TC_ACT_OK, "translated");
    assert_eq!(&out[38..54], &v6("2001:2:2::21"), "to the backend");
    assert_eq!(&out[62..66], &syn[0..4], "ports untouched");
    assert_ne!(
        &out[62 + 16..62 + 18],
        &near[62 + 16..62 + 18],
        "checksum follows"
    );
    assert_eq!(h.stats().events.drop_error, 1);
}

#[test]
fn udp_flows_expire_after_their_idle_timeout() {
    let idle = CONFIG.replacen(
        "port = 53\nproto = \"udp\"",
        "port = 53\nproto = \"udp\"\nudp_idle_timeout = \"300ms\"",
        1,
    );
    assert_ne!(idle, CONFIG);
    let h = Harness::with(&idle);
    let q = |sport| {
        cat(
            eth(0x0800),
            ipv4(CLIENT, VIP, 5, 17, 0, &udp_hdr(sport, 53)),
        )
    };
    let new_flows = |h: &Harness| h.stats().services[1].count.new_flows;
    h.forwarded(&q(6000));
    // Packets every 100 ms keep the flow (each refreshes it: past a quarter of the timeout).
    for _ in 0..6 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        h.forwarded(&q(6000));
    }
    assert_eq!(new_flows(&h), 1, "kept alive for 600 ms by its packets");
    assert_eq!(h.stats().events.udp_expired, 0);
    // Idle past 300 ms: forgotten, the next packet is a new flow.
    std::thread::sleep(std::time::Duration::from_millis(450));
    h.forwarded(&q(6000));
    assert_eq!(new_flows(&h), 2);
    assert_eq!(h.stats().events.udp_expired, 1);
    // TCP flows have no idle timeout.
    h.forwarded(&tcp(CLIENT, VIP, 40000, 80, Flags::Syn));
    std::thread::sleep(std::time::Duration::from_millis(450));
    h.forwarded(&tcp(CLIENT, VIP, 40000, 80, Flags::Ack));
    assert_eq!(h.stats().services[0].count.new_flows, 1);
}

#[test]
fn over_the_new_flow_limit_syns_are_forwarded_but_not_tracked() {
    let h = Harness::with(&format!("new_flow_limit = 100\n{CONFIG}"));
    // 300 SYNs at once: a second's worth (100 per CPU) enters the table, the rest is
    // forwarded by its hash without an entry.
    for port in 10000..10300u16 {
        let got = h.forwarded(&tcp(CLIENT, VIP, port, 80, Flags::Syn));
        let want = h.lb.services[0]
            .predict(&key4(CLIENT, VIP, port, 80, 6))
            .unwrap();
        assert_eq!(
            got, want.name,
            "untracked flows still go where the table says"
        );
    }
    let s = h.stats();
    let cpus = aya::util::nr_cpus().unwrap() as u64;
    eprintln!("untracked {} of 300", s.events.untracked);
    assert!(
        s.events.untracked >= 300 - 101 * cpus.min(2) && s.events.untracked <= 200,
        "untracked {}",
        s.events.untracked
    );
    assert_eq!(s.services[0].count.new_flows, 300);
    // An untracked flow's next packet hashes to the same backend.
    let last = h.forwarded(&tcp(CLIENT, VIP, 10299, 80, Flags::Syn));
    assert_eq!(h.forwarded(&tcp(CLIENT, VIP, 10299, 80, Flags::Ack)), last);
}

/// A NAT flow cannot go untracked (its replies need the entry): over the new-flow limit its
/// SYN is dropped and counted, so a flood cannot evict the flows already tracked, which keep
/// being translated.
#[test]
fn over_the_new_flow_limit_nat_syns_are_dropped_and_tracked_flows_stay() {
    let h = Harness::with(&format!("new_flow_limit = 100\n{NAT_CONFIG}"));
    let first = tcp(CLIENT, VIP, 9999, 80, Flags::Syn);
    let to = translated(&h, &first, 30, 4);
    let (mut entered, mut dropped) = (0u64, 0u64);
    for port in 10000..10300u16 {
        match h.run(&tcp(CLIENT, VIP, port, 80, Flags::Syn)).0 {
            TC_ACT_OK => entered += 1,
            TC_ACT_SHOT => dropped += 1,
            v => panic!("SYN {port}: verdict {v}"),
        }
    }
    let s = h.stats();
    let cpus = aya::util::nr_cpus().unwrap() as u64;
    eprintln!("NAT over the limit: {entered} entered, {dropped} dropped of 300");
    // A second's worth (100 per CPU, the first SYN included) gets in; BPF_PROG_TEST_RUN
    // may run on either CPU.
    assert!(
        (99..=101 * cpus.min(2)).contains(&entered) && entered + dropped == 300,
        "entered {entered}, dropped {dropped}"
    );
    assert_eq!(s.events.drop_flow_limit, dropped);
    assert_eq!(s.events.untracked, 0);
    assert_eq!(s.services[0].count.new_flows, 1 + entered);
    assert_eq!(s.services[0].count.drops, dropped);
    // The flow entered first still goes to its backend, both ways.
    let ack = tcp(CLIENT, VIP, 9999, 80, Flags::Ack);
    assert_eq!(translated(&h, &ack, 30, 4), to);
    let be: [u8; 4] = to.clone().try_into().unwrap();
    let reply = tcp(be, CLIENT, 80, 9999, Flags::Ack);
    assert_eq!(translated(&h, &reply, 26, 4), VIP);
}

/// NAT in the XDP entry point: the same rewrites as tc, checksums updated by RFC 1624 in the
/// program (no skb helpers), then `XDP_PASS` to the kernel's routing. A DSR frame leaves
/// with `XDP_TX`, or with a redirect to the interface itself when userspace asks for it (a
/// veth: docs/lb.md).
#[test]
fn xdp_entry_point_translates_nat_and_redirects_dsr_on_request() {
    let x = |h: &Harness, f: &[u8], off: usize, len: usize| {
        translated_by(h, "lb_xdp", XDP_PASS, f, off, len)
    };
    let h = Harness::with(NAT_CONFIG);
    let _ = assert_nat_rewrites(&h, "lb_xdp", XDP_PASS, 41000);
    // Many different checksums (one per source port), so one's complement carries occur.
    for port in 6000..6064 {
        let f = udp4(CLIENT, VIP, port, 53);
        x(&h, &f, 30, 4);
    }
    let s = h.stats();
    assert_eq!((s.events.drop_error, s.events.nat_replies), (0, 3));

    // DSR: XDP_TX by default; a redirect to the interface itself when asked.
    let mut d = Harness::new();
    let f = tcp(CLIENT, VIP, 42000, 80, Flags::Syn);
    assert_eq!(wirelab_testkit::prog::run(&d.bpf, "lb_xdp", &f).0, XDP_TX);
    let c = Config::parse(CONFIG).unwrap();
    let mut plan = Balancer::plan(&c, IFACE_MAC, Some(&d.lb), &Default::default()).unwrap();
    plan.xdp_out = wirelab_common::lb::xdp_out::REDIRECT;
    d.lb = plan.write(&mut d.bpf, Some(&d.lb)).unwrap();
    let (v, out) = wirelab_testkit::prog::run(&d.bpf, "lb_xdp", &f);
    assert_eq!(v, XDP_REDIRECT);
    assert_eq!(&out[6..12], &IFACE_MAC);
    assert_eq!(&out[12..], &f[12..]);
}

/// The NAT services with SNAT: each gets a balancer address as the source of its flows.
fn snat_config() -> String {
    let c = NAT_CONFIG
        .replacen(
            "name = \"nat\"\n",
            "name = \"nat\"\nsnat = \"198.18.2.250\"\n",
            1,
        )
        .replacen(
            "name = \"nat-dns\"\n",
            "name = \"nat-dns\"\nsnat = \"198.18.2.250\"\n",
            1,
        )
        .replacen(
            "name = \"nat6\"\n",
            "name = \"nat6\"\nsnat = \"2001:2:2::250\"\n",
            1,
        );
    assert_eq!(c.matches("snat = ").count(), 3);
    c
}

const SNAT: [u8; 4] = [198, 18, 2, 250];

/// Run `f` through `prog`: handed on (`pass`) with every checksum right and no byte changed
/// outside `ranges` (offset, length) and the checksums. Returns the frame.
#[track_caller]
fn rewritten(h: &Harness, prog: &str, pass: u32, f: &[u8], ranges: &[(usize, usize)]) -> Vec<u8> {
    assert!(checksums_ok(f), "the crafted frame verifies");
    let (v, out) = wirelab_testkit::prog::run(&h.bpf, prog, f);
    assert_eq!(
        v, pass,
        "{prog}: translated and handed to the kernel's routing"
    );
    assert_eq!(out.len(), f.len());
    assert!(
        checksums_ok(&out),
        "{prog}: checksums after the rewrite: {out:02x?}"
    );
    let v4 = f[12..14] == [0x08, 0x00];
    let udp = f[if v4 { 23 } else { 20 }] == 17;
    let l4 = if v4 { 34 } else { 54 };
    let l4_csum = l4 + if udp { 6 } else { 16 };
    for (i, (a, b)) in f.iter().zip(&out).enumerate() {
        let allowed = ranges.iter().any(|(o, n)| (*o..o + n).contains(&i))
            || (v4 && (24..26).contains(&i))
            || (l4_csum..l4_csum + 2).contains(&i);
        assert!(
            a == b || allowed,
            "{prog}: byte {i} changed: {a:#04x} -> {b:#04x}"
        );
    }
    out
}

fn port_at(f: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([f[off], f[off + 1]])
}

/// SNAT on both entry points: a new flow gets the SNAT address as its source and keeps the
/// client's port while it is free towards its backend; a second client with the same port to
/// the same backend gets an alternative port, and the replies find their way back to each
/// client's own address and port; with every try taken the SYN is a counted drop.
#[test]
fn snat_rewrites_source_and_destination_and_picks_a_free_port() {
    for (prog, pass) in [("lb", TC_ACT_OK), ("lb_xdp", XDP_PASS)] {
        let h = Harness::with(&snat_config());
        let svc = &h.lb.services[0];
        let be = |client: [u8; 4]| -> [u8; 4] {
            match svc.predict(&key4(client, VIP, 40000, 80, 6)).unwrap().addr {
                std::net::IpAddr::V4(a) => a.octets(),
                a => panic!("{a}"),
            }
        };
        let b = be(CLIENT);
        // Client 1: source = SNAT address, port kept; destination = the backend.
        let syn = tcp(CLIENT, VIP, 40000, 80, Flags::Syn);
        let out = rewritten(&h, prog, pass, &syn, &[(26, 8)]);
        assert_eq!((&out[26..30], &out[30..34]), (&SNAT[..], &b[..]), "{prog}");
        assert_eq!(
            port_at(&out, 34),
            40000,
            "{prog}: the client's port is free"
        );
        // The backend's reply to SNAT:40000 goes back from the VIP to the client.
        let reply = tcp(b, SNAT, 80, 40000, Flags::Ack);
        let out = rewritten(&h, prog, pass, &reply, &[(26, 8), (36, 2)]);
        assert_eq!(
            (&out[26..30], &out[30..34]),
            (&VIP[..], &CLIENT[..]),
            "{prog}"
        );
        assert_eq!(port_at(&out, 36), 40000);

        // Client 2, the same port, to the same backend: another port.
        let c2 = (2..=254)
            .map(|i| [198, 18, 0, i])
            .find(|c| *c != CLIENT && be(*c) == b)
            .expect("a second client on the same backend");
        let syn2 = tcp(c2, VIP, 40000, 80, Flags::Syn);
        let out = rewritten(&h, prog, pass, &syn2, &[(26, 10)]);
        assert_eq!((&out[26..30], &out[30..34]), (&SNAT[..], &b[..]), "{prog}");
        let p2 = port_at(&out, 34);
        assert!(
            p2 != 40000 && p2 >= 1024,
            "{prog}: an alternative port: {p2}"
        );
        // Its tracked packets keep that port; its replies go back to client 2's port.
        let ack2 = tcp(c2, VIP, 40000, 80, Flags::Ack);
        let out = rewritten(&h, prog, pass, &ack2, &[(26, 10)]);
        assert_eq!(
            port_at(&out, 34),
            p2,
            "{prog}: tracked flow keeps its SNAT port"
        );
        let reply2 = tcp(b, SNAT, 80, p2, Flags::Ack);
        let out = rewritten(&h, prog, pass, &reply2, &[(26, 8), (36, 2)]);
        assert_eq!((&out[26..30], &out[30..34]), (&VIP[..], &c2[..]), "{prog}");
        assert_eq!(
            port_at(&out, 36),
            40000,
            "{prog}: back to client 2's own port"
        );
        // Client 1 reconnecting with its port takes its own entry again.
        let out = rewritten(&h, prog, pass, &syn, &[(26, 8)]);
        assert_eq!(
            port_at(&out, 34),
            40000,
            "{prog}: a reconnect keeps the port"
        );

        // UDP/IPv4 without a checksum stays without one; the reply comes back.
        let mut q0 = udp4(CLIENT, VIP, 5354, 53);
        q0[40..42].copy_from_slice(&[0, 0]);
        let out = rewritten(&h, prog, pass, &q0, &[(26, 8)]);
        assert_eq!(
            (&out[26..30], &out[40..42]),
            (&SNAT[..], &[0u8, 0][..]),
            "{prog}"
        );
        let r = udp4([198, 18, 2, 31], SNAT, 53, 5354);
        let out = rewritten(&h, prog, pass, &r, &[(26, 8), (36, 2)]);
        assert_eq!(
            (&out[26..30], &out[30..34]),
            (&VIP[..], &CLIENT[..]),
            "{prog}"
        );

        // IPv6: four words of each address.
        let snat6 = v6("2001:2:2::250");
        let b6 = v6("2001:2:2::21");
        let s6 = tcp6_from(CLIENT6, VIP6, 40000, 80, true);
        let out = rewritten(&h, prog, pass, &s6, &[(22, 32)]);
        assert_eq!(
            (&out[22..38], &out[38..54]),
            (&snat6[..], &b6[..]),
            "{prog}"
        );
        let r6 = tcp6_from(b6, snat6, 80, 40000, false);
        let out = rewritten(&h, prog, pass, &r6, &[(22, 32), (56, 2)]);
        assert_eq!(
            (&out[22..38], &out[38..54]),
            (&VIP6[..], &CLIENT6[..]),
            "{prog}"
        );

        // Every port a third client's SYN could take is held by other flows: dropped.
        let c3 = (2..=254)
            .map(|i| [198, 18, 0, i])
            .find(|c| *c != CLIENT && *c != c2 && be(*c) == b)
            .expect("a third client on the same backend");
        let k3 = key4(c3, VIP, 41000, 80, 6);
        let hash = wirelab_common::lb::flow_hash(&k3, svc.conf.seed as u32);
        let mut h = h;
        let mut nat = h.nat();
        for i in 0..wirelab_common::lb::SNAT_TRIES {
            let port = wirelab_common::lb::snat_port_try(41000, hash, i);
            let taken = key4(b, SNAT, 80, port, 6);
            let other = NatValue {
                snat: 1,
                client_port: 1,
                ..Default::default()
            };
            nat.insert(taken, other, 0).unwrap();
        }
        let before = h.stats().events.drop_snat_port;
        let (v, _) = wirelab_testkit::prog::run(&h.bpf, prog, &tcp(c3, VIP, 41000, 80, Flags::Syn));
        assert_eq!(
            v,
            if prog == "lb" { TC_ACT_SHOT } else { 1 },
            "{prog}: dropped"
        );
        let s = h.stats();
        assert_eq!(
            (s.events.drop_snat_port, s.events.drop_error),
            (before + 1, 0),
            "{prog}"
        );
    }
}

/// An SNAT pool: each new flow gets the pool address its hash picks (as userspace predicts
/// with `snat_pick`), keeps it on its tracked packets, and its replies to that address come
/// back to the client; over 40 clients every address of the pool is used.
#[test]
fn an_snat_pool_gives_each_flow_the_address_its_hash_picks() {
    let pool: [[u8; 4]; 3] = [[198, 18, 2, 250], [198, 18, 2, 251], [198, 18, 2, 252]];
    let config = NAT_CONFIG.replacen(
        "name = \"nat\"\n",
        "name = \"nat\"\nsnat = [\"198.18.2.250\", \"198.18.2.251\", \"198.18.2.252\"]\n",
        1,
    );
    for (prog, pass) in [("lb", TC_ACT_OK), ("lb_xdp", XDP_PASS)] {
        let h = Harness::with(&config);
        let svc = &h.lb.services[0];
        let mut used = [0usize; 3];
        for i in 2..42u8 {
            // Each its own port: the same port to the same backend from the same pool
            // address would take an alternative.
            let (client, port) = ([198, 18, 0, i], 40000 + i as u16);
            let k = key4(client, VIP, port, 80, 6);
            let b = match svc.predict(&k).unwrap().addr {
                std::net::IpAddr::V4(a) => a.octets(),
                a => panic!("{a}"),
            };
            let hash = wirelab_common::lb::flow_hash(&k, svc.conf.seed as u32);
            let at = wirelab_common::lb::snat_pick(hash, 3) as usize;
            used[at] += 1;
            let what = format!("{prog}, client {client:?}");
            let out = rewritten(
                &h,
                prog,
                pass,
                &tcp(client, VIP, port, 80, Flags::Syn),
                &[(26, 8)],
            );
            assert_eq!(
                (&out[26..30], &out[30..34]),
                (&pool[at][..], &b[..]),
                "{what}"
            );
            assert_eq!(
                port_at(&out, 34),
                port,
                "{what}: the client's port is free there"
            );
            let out = rewritten(
                &h,
                prog,
                pass,
                &tcp(client, VIP, port, 80, Flags::Ack),
                &[(26, 8)],
            );
            assert_eq!(
                &out[26..30],
                &pool[at][..],
                "{what}: tracked, the same address"
            );
            let reply = tcp(b, pool[at], 80, port, Flags::Ack);
            let out = rewritten(&h, prog, pass, &reply, &[(26, 8), (36, 2)]);
            assert_eq!(
                (&out[26..30], &out[30..34]),
                (&VIP[..], &client[..]),
                "{what}: reply"
            );
        }
        assert!(
            used.iter().all(|&n| n >= 5),
            "{prog}: 40 flows over the pool: {used:?}"
        );
        let e = h.stats().events;
        assert_eq!((e.drop_snat_port, e.drop_error), (0, 0), "{prog}");
    }
}

/// An IPv6 address's 16 bytes.
fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>()
        .expect("an IPv6 address")
        .octets()
}

/// An IPv4 packet (no Ethernet header) as the quote of an ICMP error: TCP with a SYN or UDP.
fn quoted4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, udp: bool) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, dst, 63);
    let mut v = Vec::new();
    if udp {
        b.udp(sport, dport).write(&mut v, b"a query").unwrap();
    } else {
        b.tcp(sport, dport, 7, 1024)
            .syn()
            .write(&mut v, b"some bytes")
            .unwrap();
    }
    v
}

fn quoted6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv6(src, dst, 63)
        .tcp(sport, dport, 7, 1024)
        .syn()
        .write(&mut v, b"some bytes")
        .unwrap();
    v
}

/// IPv6 packet `q` with a hop-by-hop options header (8 bytes: a PadN option) and a fragment
/// header (more fragments; at `offset` 8-byte units, 0: the first) before its upper layer.
fn with_ext6(q: &[u8], offset: u16) -> Vec<u8> {
    const HOP: u8 = 0;
    const FRAGMENT: u8 = 44;
    let upper = q[6];
    let mut v = q[..40].to_vec();
    v[6] = HOP;
    // Next header, length 0 (8 bytes), PadN with 4 bytes of padding.
    v.extend_from_slice(&[FRAGMENT, 0, 1, 4, 0, 0, 0, 0]);
    let fo = (offset << 3) | 1;
    v.extend_from_slice(&[upper, 0, (fo >> 8) as u8, fo as u8, 0, 0, 0x12, 0x34]);
    v.extend_from_slice(&q[40..]);
    let payload = (v.len() - 40) as u16;
    v[4..6].copy_from_slice(&payload.to_be_bytes());
    v
}

/// An ICMPv4 error ("fragmentation needed", or "port unreachable" for UDP) from `src` to
/// `dst` quoting `quote`; every checksum computed by etherparse.
fn icmp4_error(src: [u8; 4], dst: [u8; 4], quote: &[u8]) -> Vec<u8> {
    use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type};
    let why = if quote[9] == 17 {
        DestUnreachableHeader::Port
    } else {
        DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 }
    };
    let mut v = Vec::new();
    PacketBuilder::ethernet2(SRC, DST)
        .ipv4(src, dst, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(why))
        .write(&mut v, quote)
        .unwrap();
    v
}

/// An ICMPv6 "packet too big" from `src` to `dst` quoting `quote`.
fn icmp6_error(src: [u8; 16], dst: [u8; 16], quote: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(SRC, DST)
        .ipv6(src, dst, 64)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut v, quote)
        .unwrap();
    v
}

/// Run `f` through `prog`: it must be handed on (`pass`) exactly as `want` (every field and
/// checksum: `want` is built with the translated fields, its checksums computed afresh).
#[track_caller]
fn icmp_becomes(h: &Harness, prog: &str, pass: u32, f: &[u8], want: &[u8]) {
    let (v, out) = wirelab_testkit::prog::run(&h.bpf, prog, f);
    assert_eq!(v, pass, "{prog}: translated and handed on");
    assert_eq!(out, want, "{prog}: the translated error");
}

/// An IPv4 ICMP error: its source, its destination and the packet it quotes.
type Error4<'a> = ([u8; 4], [u8; 4], &'a [u8]);

/// The IPv4 ICMP error `from` becomes `to`, with the whole quote and with only its first 28
/// bytes (the IP header and 8 bytes of TCP/UDP: no L4 checksum in the quote), also with 12
/// bytes after the packet (a frame's padding: where a longer quote's TCP checksum would be,
/// and no part of the quote, so left alone).
/// `at`: the harness, the program and the verdict that hands the translated error on.
fn error4_becomes(at: (&Harness, &str, u32), from: Error4<'_>, to: Error4<'_>) {
    let (h, prog, pass) = at;
    for (whole, pad) in [(true, 0), (false, 0), (false, 12)] {
        let cut = |q: &[u8]| q[..if whole { q.len() } else { 28 }].to_vec();
        let padded = |f: Vec<u8>| cat(f, vec![0xab; pad]);
        icmp_becomes(
            h,
            prog,
            pass,
            &padded(icmp4_error(from.0, from.1, &cut(from.2))),
            &padded(icmp4_error(to.0, to.1, &cut(to.2))),
        );
    }
}

/// Errors the balancer host's own kernel sends about a NAT flow (its "fragmentation needed"
/// when the link towards the backends has a smaller MTU) leave by tc egress, where
/// `lb_egress` hands them to `lb_icmp`: the quote's destination goes back to the VIP (IPv4,
/// full and 8-byte quotes; IPv6 "packet too big"). Everything else leaving the host passes
/// untouched and uncounted: the forwarded packet itself, a reply, an error about no flow, and
/// an error to the VIP about a reply (at ingress that one goes to the backend; leaving this
/// host it is not the balancer's).
#[test]
fn errors_the_balancer_host_sends_about_nat_flows_are_translated_at_egress() {
    const LB_ADDR: [u8; 4] = [198, 18, 0, 10];
    let egress = wirelab::lb::PROG_EGRESS;
    let h = Harness::with(NAT_CONFIG);
    let (v, fwd) = h.run(&tcp(CLIENT, VIP, 40000, 80, Flags::Syn));
    assert_eq!(v, TC_ACT_OK);
    let be: [u8; 4] = fwd[30..34].try_into().unwrap();
    let sent = quoted4(CLIENT, be, 40000, 80, false);
    let orig = quoted4(CLIENT, VIP, 40000, 80, false);
    error4_becomes(
        (&h, egress, TC_ACT_OK),
        (LB_ADDR, CLIENT, &sent),
        (LB_ADDR, CLIENT, &orig),
    );
    let (v, _) = h.run(&tcp6(CLIENT6, VIP6, 40000, 80));
    assert_eq!(v, TC_ACT_OK);
    let b6 = v6("2001:2:2::21");
    let lb6 = v6("2001:2::10");
    icmp_becomes(
        &h,
        egress,
        TC_ACT_OK,
        &icmp6_error(lb6, CLIENT6, &quoted6(CLIENT6, b6, 40000, 80)),
        &icmp6_error(lb6, CLIENT6, &quoted6(CLIENT6, VIP6, 40000, 80)),
    );
    let before = h.stats().events;
    assert_eq!(before.icmp_translated, 4, "{before:?}");
    for f in [
        fwd.clone(),
        tcp(be, CLIENT, 80, 40000, Flags::Ack),
        icmp4_error(LB_ADDR, CLIENT, &quoted4(CLIENT, be, 40001, 80, false)),
        icmp4_error(CLIENT, VIP, &quoted4(VIP, CLIENT, 80, 40000, false)),
    ] {
        let (v, out) = wirelab_testkit::prog::run(&h.bpf, egress, &f);
        assert_eq!((v, &out), (TC_ACT_UNSPEC, &f), "passed untouched");
    }
    let e = h.stats().events;
    assert_eq!(
        (e.icmp_translated, e.icmp_forwarded, e.non_vip, e.drop_error),
        (4, 0, before.non_vip, 0),
        "{e:?}"
    );
}

/// ICMP errors about balanced flows (RFC 5508): towards a NAT flow's client the quoted
/// packet (and, from the backend itself, the error's source) goes back to what the client
/// sent, with SNAT the client's address and port too; one sent to the VIP about a reply goes
/// to the flow's backend, translated (NAT) or as it is (DSR). Quotes that reach the TCP/UDP
/// checksum and those that do not (8 bytes), IPv4 and IPv6, both entry points; every
/// checksum checked against frames built afresh with the translated fields.
#[test]
fn icmp_errors_about_balanced_flows_are_translated_or_sent_to_the_backend() {
    const ROUTER: [u8; 4] = [198, 18, 2, 1];
    for (prog, pass) in [("lb", TC_ACT_OK), ("lb_xdp", XDP_PASS)] {
        // NAT, no SNAT.
        let h = Harness::with(NAT_CONFIG);
        let (v, out) =
            wirelab_testkit::prog::run(&h.bpf, prog, &tcp(CLIENT, VIP, 40000, 80, Flags::Syn));
        assert_eq!(v, pass);
        let be: [u8; 4] = out[30..34].try_into().unwrap();
        // "Fragmentation needed" from a router between the balancer and the backend: only
        // the quote changes (its destination back to the VIP).
        let sent = quoted4(CLIENT, be, 40000, 80, false);
        let orig = quoted4(CLIENT, VIP, 40000, 80, false);
        error4_becomes(
            (&h, prog, pass),
            (ROUTER, CLIENT, &sent),
            (ROUTER, CLIENT, &orig),
        );
        // A UDP and an IPv6 flow for the errors below.
        let (v, _) = wirelab_testkit::prog::run(&h.bpf, prog, &udp4(CLIENT, VIP, 5353, 53));
        assert_eq!(v, pass);
        let (v, _) = wirelab_testkit::prog::run(&h.bpf, prog, &tcp6(CLIENT6, VIP6, 40000, 80));
        assert_eq!(v, pass);
        let u1 = [198, 18, 2, 31];
        let b6 = v6("2001:2:2::21");
        let r6 = v6("2001:2:2::1");
        let sent6 = quoted6(CLIENT6, b6, 40000, 80);
        let orig6 = quoted6(CLIENT6, VIP6, 40000, 80);
        for (from, to) in [
            // From the backend itself: its source becomes the VIP too.
            (
                icmp4_error(be, CLIENT, &sent),
                icmp4_error(VIP, CLIENT, &orig),
            ),
            // UDP: "port unreachable" from the backend.
            (
                icmp4_error(u1, CLIENT, &quoted4(CLIENT, u1, 5353, 53, true)),
                icmp4_error(VIP, CLIENT, &quoted4(CLIENT, VIP, 5353, 53, true)),
            ),
            // To the VIP about a reply (the client's side lowers the MTU): to the backend.
            (
                icmp4_error(CLIENT, VIP, &quoted4(VIP, CLIENT, 80, 40000, false)),
                icmp4_error(CLIENT, be, &quoted4(be, CLIENT, 80, 40000, false)),
            ),
            // IPv6: "packet too big" from a router and from the backend (whose source is in
            // ICMPv6's pseudo-header).
            (
                icmp6_error(r6, CLIENT6, &sent6),
                icmp6_error(r6, CLIENT6, &orig6),
            ),
            (
                icmp6_error(b6, CLIENT6, &sent6),
                icmp6_error(VIP6, CLIENT6, &orig6),
            ),
            // A quote through extension headers (hop-by-hop, a first fragment's header): the
            // same translation; of a later fragment (no ports): passed as it is (below).
            (
                icmp6_error(r6, CLIENT6, &with_ext6(&sent6, 0)),
                icmp6_error(r6, CLIENT6, &with_ext6(&orig6, 0)),
            ),
        ] {
            icmp_becomes(&h, prog, pass, &from, &to);
        }
        let untouched = if prog == "lb" {
            TC_ACT_UNSPEC
        } else {
            XDP_PASS
        };
        // Passed as they are: a later fragment's quote, and errors about no flow.
        for f in [
            icmp6_error(r6, CLIENT6, &with_ext6(&sent6, 100)),
            icmp4_error(ROUTER, CLIENT, &quoted4(CLIENT, be, 40001, 80, false)),
            icmp4_error(CLIENT, VIP, &quoted4(VIP, CLIENT, 80, 40001, false)),
        ] {
            let (v, out) = wirelab_testkit::prog::run(&h.bpf, prog, &f);
            assert_eq!((v, &out), (untouched, &f), "{prog}: passed as it is");
        }
        let e = h.stats().events;
        assert_eq!(
            (e.icmp_translated, e.icmp_forwarded),
            (9, 0),
            "{prog}: {e:?}"
        );

        // SNAT: the quote's source and port go back to the client's, and so does the error's
        // destination; to the VIP, the quote's destination becomes the SNAT address and port.
        let h = Harness::with(&snat_config());
        let (v, out) =
            wirelab_testkit::prog::run(&h.bpf, prog, &tcp(CLIENT, VIP, 40000, 80, Flags::Syn));
        assert_eq!(v, pass);
        let be: [u8; 4] = out[30..34].try_into().unwrap();
        assert_eq!(&out[26..30], &SNAT);
        let port = port_at(&out, 34);
        let sent = quoted4(SNAT, be, port, 80, false);
        let orig = quoted4(CLIENT, VIP, 40000, 80, false);
        error4_becomes((&h, prog, pass), (be, SNAT, &sent), (VIP, CLIENT, &orig));
        icmp_becomes(
            &h,
            prog,
            pass,
            &icmp4_error(CLIENT, VIP, &quoted4(VIP, CLIENT, 80, 40000, false)),
            &icmp4_error(SNAT, be, &quoted4(be, SNAT, 80, port, false)),
        );

        // DSR: an error to the VIP about a reply goes, unchanged, to the flow's backend.
        let h = Harness::new();
        let syn = tcp(CLIENT, VIP, 40000, 80, Flags::Syn);
        let (v, out) = wirelab_testkit::prog::run(&h.bpf, prog, &syn);
        let dsr_out = if prog == "lb" {
            TC_ACT_REDIRECT
        } else {
            XDP_TX
        };
        assert_eq!(v, dsr_out);
        let mac = out[..6].to_vec();
        let err = icmp4_error(CLIENT, VIP, &quoted4(VIP, CLIENT, 80, 40000, false));
        let (v, out) = wirelab_testkit::prog::run(&h.bpf, prog, &err);
        assert_eq!(v, dsr_out, "{prog}: to the backend");
        assert_eq!((&out[..6], &out[6..12]), (&mac[..], &IFACE_MAC[..]));
        assert_eq!(&out[12..], &err[12..], "{prog}: only the MACs change");
        let e = h.stats().events;
        assert_eq!(
            (e.icmp_translated, e.icmp_forwarded),
            (0, 1),
            "{prog}: {e:?}"
        );
    }
}

/// NAT towards backends that listen on other ports than the service's (`port` on a backend):
/// n1 on 8080, n2 on 8081, the DNS backend on 5300, the IPv6 one on 8080.
fn port_config(snat: bool) -> String {
    let c = if snat {
        snat_config()
    } else {
        NAT_CONFIG.to_string()
    };
    let mut c = c;
    for (addr, port) in [
        ("198.18.2.21", 8080),
        ("198.18.2.22", 8081),
        ("198.18.2.31", 5300),
        ("2001:2:2::21", 8080),
    ] {
        let a = format!("addr = \"{addr}\"\n");
        assert!(c.contains(&a), "{addr}");
        c = c.replacen(&a, &format!("{a}port = {port}\n"), 1);
    }
    c
}

/// The port translation of NAT, on both entry points: a flow's packets go to the port its
/// backend listens on, its replies come back from the service port, every checksum right
/// (TCP and UDP over IPv4, TCP over IPv6); a packet from the backend's service port is no
/// reply of the flow. ICMP errors carry the translation in their quotes both ways, and SNAT
/// translates the source port beside it.
#[test]
fn nat_translates_the_service_port_to_the_port_the_backend_listens_on() {
    const ROUTER: [u8; 4] = [198, 18, 2, 1];
    for (prog, pass) in [("lb", TC_ACT_OK), ("lb_xdp", XDP_PASS)] {
        let h = Harness::with(&port_config(false));
        let listens = |addr: [u8; 4]| {
            h.lb.services
                .iter()
                .flat_map(|s| &s.backends)
                .find(|b| b.addr == std::net::IpAddr::from(addr))
                .map(|b| b.port)
                .expect("a backend of that address")
        };
        // TCP/IPv4: the destination address and port, then the rest of the flow the same.
        let syn = tcp(CLIENT, VIP, 40000, 80, Flags::Syn);
        let out = rewritten(&h, prog, pass, &syn, &[(30, 4), (36, 2)]);
        let be: [u8; 4] = out[30..34].try_into().unwrap();
        let bport = listens(be);
        assert!([8080, 8081].contains(&bport), "{bport}");
        assert_eq!(
            port_at(&out, 36),
            bport,
            "{prog}: to the port it listens on"
        );
        let ack = tcp(CLIENT, VIP, 40000, 80, Flags::Ack);
        let out = rewritten(&h, prog, pass, &ack, &[(30, 4), (36, 2)]);
        assert_eq!((&out[30..34], port_at(&out, 36)), (&be[..], bport));
        // The reply: from the VIP and the service port again.
        let reply = tcp(be, CLIENT, bport, 40000, Flags::Ack);
        let out = rewritten(&h, prog, pass, &reply, &[(26, 4), (34, 2)]);
        assert_eq!((&out[26..30], port_at(&out, 34)), (&VIP[..], 80));
        // From the backend's service port: no flow's reply, left alone.
        let other = tcp(be, CLIENT, 80, 40000, Flags::Ack);
        let passed = if prog == "lb" {
            TC_ACT_UNSPEC
        } else {
            XDP_PASS
        };
        let (v, out) = wirelab_testkit::prog::run(&h.bpf, prog, &other);
        assert_eq!((v, out), (passed, other), "{prog}: passed untouched");

        // UDP/IPv4 (its checksum covers the port too).
        let q = udp4(CLIENT, VIP, 5353, 53);
        let out = rewritten(&h, prog, pass, &q, &[(30, 4), (36, 2)]);
        assert_eq!(
            (&out[30..34], port_at(&out, 36)),
            (&[198, 18, 2, 31][..], 5300)
        );
        let r = udp4([198, 18, 2, 31], CLIENT, 5300, 5353);
        let out = rewritten(&h, prog, pass, &r, &[(26, 4), (34, 2)]);
        assert_eq!((&out[26..30], port_at(&out, 34)), (&VIP[..], 53));

        // TCP/IPv6.
        let b6 = v6("2001:2:2::21");
        let s6 = tcp6_from(CLIENT6, VIP6, 40000, 80, true);
        let out = rewritten(&h, prog, pass, &s6, &[(38, 16), (56, 2)]);
        assert_eq!((&out[38..54], port_at(&out, 56)), (&b6[..], 8080));
        let r6 = tcp6_from(b6, CLIENT6, 8080, 40000, false);
        let out = rewritten(&h, prog, pass, &r6, &[(22, 16), (54, 2)]);
        assert_eq!((&out[22..38], port_at(&out, 54)), (&VIP6[..], 80));

        // ICMP errors: about a packet sent to the backend (the quote's destination port goes
        // back to the service's), and to the VIP about a reply (the quote's source port
        // becomes the one the backend listens on), full and 8-byte quotes.
        let sent = quoted4(CLIENT, be, 40000, bport, false);
        let orig = quoted4(CLIENT, VIP, 40000, 80, false);
        let reply_seen = quoted4(VIP, CLIENT, 80, 40000, false);
        let reply_sent = quoted4(be, CLIENT, bport, 40000, false);
        error4_becomes(
            (&h, prog, pass),
            (ROUTER, CLIENT, &sent),
            (ROUTER, CLIENT, &orig),
        );
        error4_becomes(
            (&h, prog, pass),
            (CLIENT, VIP, &reply_seen),
            (CLIENT, be, &reply_sent),
        );
        let e = h.stats().events;
        assert_eq!(
            (e.nat_replies, e.icmp_translated, e.drop_error),
            (3, 6, 0),
            "{prog}: {e:?}"
        );

        // With SNAT: source address and port, destination address and port, all at once.
        let h = Harness::with(&port_config(true));
        let syn = tcp(CLIENT, VIP, 40000, 80, Flags::Syn);
        let out = rewritten(&h, prog, pass, &syn, &[(26, 8), (34, 4)]);
        let be: [u8; 4] = out[30..34].try_into().unwrap();
        let bport = port_at(&out, 36);
        assert_eq!(&out[26..30], &SNAT);
        assert!([8080, 8081].contains(&bport), "{bport}");
        let sport = port_at(&out, 34);
        let reply = tcp(be, SNAT, bport, sport, Flags::Ack);
        let out = rewritten(&h, prog, pass, &reply, &[(26, 8), (34, 4)]);
        assert_eq!(
            (
                &out[26..30],
                &out[30..34],
                port_at(&out, 34),
                port_at(&out, 36)
            ),
            (&VIP[..], &CLIENT[..], 80, 40000),
            "{prog}: back to the client, from the service"
        );
    }
}
