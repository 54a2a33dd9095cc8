//! The swarm packet programs (XDP destination-MAC rewrite, tc ingress ARP responder, tc egress
//! source-MAC rewrite) on crafted and malformed frames through BPF_PROG_TEST_RUN: verdicts and
//! the exact bytes that come out.
mod common;
use aya::{maps::Array, Ebpf};
use wirelab_common::maps;
use wirelab_common::swarm::{derive_mac, SwarmConfig, DEFAULT_MAC_PREFIX};

const IFACE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const PEER_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x02];
const SERVER: [u8; 4] = [198, 18, 0, 2];
const XDP_PASS: u32 = 2;
const TC_ACT_UNSPEC: u32 = u32::MAX; // -1
const TC_ACT_REDIRECT: u32 = 7;

struct Harness {
    bpf: Ebpf,
}

impl Harness {
    fn new() -> Self {
        common::require_privileges();
        let mut bpf = wirelab::ebpf::load(wirelab::ebpf::Object::Swarm).expect("load object");
        let pool = wirelab::swarm::Pool::parse("198.18.4.0/22").unwrap();
        let cfg = SwarmConfig {
            pool_first: pool.first,
            pool_count: pool.count,
            process_limit: 10,
            ifindex: 1,
            iface_mac: IFACE_MAC,
            mac_prefix: DEFAULT_MAC_PREFIX,
            mode: 0,
            _pad: [0; 7],
        };
        let mut c: Array<_, SwarmConfig> =
            Array::try_from(bpf.map_mut(maps::SWARM_CONFIG).unwrap()).unwrap();
        c.set(0, cfg, 0).unwrap();
        for p in ["swarm_xdp", "swarm_arp", "swarm_egress"] {
            common::load_prog(&mut bpf, p);
        }
        Self { bpf }
    }

    /// Run a program on `frame`; return (verdict, frame after the program).
    fn run(&self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        wirelab_testkit::prog::run(&self.bpf, prog, frame)
    }

    /// `prog` gives `verdict` and leaves `frame` as it came.
    fn assert_untouched(&self, prog: &str, frame: &[u8], verdict: u32) {
        assert_eq!(self.run(prog, frame), (verdict, frame.to_vec()));
    }

    /// A frame from the server to pool client `c`'s MAC: `prog` gives `verdict` and puts the
    /// interface's MAC in its destination, the rest unchanged.
    fn assert_client_mac_rewritten(&self, prog: &str, c: [u8; 4], verdict: u32) {
        let f = cat(eth(client(c), PEER_MAC, 0x0800), ipv4_udp(SERVER, c));
        let (v, out) = self.run(prog, &f);
        assert_eq!(v, verdict);
        assert_eq!(out[..6], IFACE_MAC);
        assert_eq!(out[6..], f[6..], "only the destination MAC changes");
    }
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut v = dst.to_vec();
    v.extend_from_slice(&src);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v
}

fn ipv4_udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&28u16.to_be_bytes());
    h[8] = 64;
    h[9] = 17;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    h.extend_from_slice(&[0x03, 0xe8, 0x07, 0xd0, 0, 8, 0, 0]);
    h
}

fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut v = vec![0, 1, 0x08, 0x00, 6, 4];
    v.extend_from_slice(&op.to_be_bytes());
    v.extend_from_slice(&sha);
    v.extend_from_slice(&spa);
    v.extend_from_slice(&tha);
    v.extend_from_slice(&tpa);
    v
}

fn cat(mut a: Vec<u8>, b: Vec<u8>) -> Vec<u8> {
    a.extend(b);
    a
}

fn client(ip: [u8; 4]) -> [u8; 6] {
    derive_mac(DEFAULT_MAC_PREFIX, ip)
}

#[test]
fn xdp_rewrites_only_client_macs() {
    let h = Harness::new();
    let c = [198, 18, 4, 5];
    h.assert_client_mac_rewritten("swarm_xdp", c, XDP_PASS);
    // Prefix right, address outside the pool (198.18.9.9): untouched.
    let f = cat(
        eth(client([198, 18, 9, 9]), PEER_MAC, 0x0800),
        ipv4_udp(SERVER, c),
    );
    h.assert_untouched("swarm_xdp", &f, XDP_PASS);
    // The network address of the pool is not a client.
    let f = cat(
        eth(client([198, 18, 4, 0]), PEER_MAC, 0x0800),
        ipv4_udp(SERVER, c),
    );
    h.assert_untouched("swarm_xdp", &f, XDP_PASS);
    // Broadcast and other MACs: untouched. A bare Ethernet header: untouched.
    let f = cat(eth([0xff; 6], PEER_MAC, 0x0806), vec![0; 28]);
    h.assert_untouched("swarm_xdp", &f, XDP_PASS);
    let f = eth(PEER_MAC, IFACE_MAC, 0x0800);
    h.assert_untouched("swarm_xdp", &f, XDP_PASS);
}

#[test]
fn tc_ingress_answers_arp_for_pool_addresses() {
    let h = Harness::new();
    let c = [198, 18, 4, 7];
    let req = cat(
        eth([0xff; 6], PEER_MAC, 0x0806),
        arp(1, PEER_MAC, SERVER, [0; 6], c),
    );
    let (v, out) = h.run("swarm_arp", &req);
    assert_eq!(
        v, TC_ACT_REDIRECT,
        "the reply goes back out of the interface"
    );
    let want = cat(
        eth(PEER_MAC, client(c), 0x0806),
        arp(2, client(c), c, PEER_MAC, SERVER),
    );
    assert_eq!(out, want);
    // Requests for other addresses, replies, and malformed ARP are left to the kernel.
    let other = cat(
        eth([0xff; 6], PEER_MAC, 0x0806),
        arp(1, PEER_MAC, SERVER, [0; 6], [198, 18, 0, 1]),
    );
    h.assert_untouched("swarm_arp", &other, TC_ACT_UNSPEC);
    let reply = cat(
        eth(IFACE_MAC, PEER_MAC, 0x0806),
        arp(2, PEER_MAC, SERVER, IFACE_MAC, c),
    );
    h.assert_untouched("swarm_arp", &reply, TC_ACT_UNSPEC);
    let mut bad_hlen = req.clone();
    bad_hlen[14 + 4] = 8;
    h.assert_untouched("swarm_arp", &bad_hlen, TC_ACT_UNSPEC);
    let mut ipv6_arp = req.clone();
    ipv6_arp[14 + 2..14 + 4].copy_from_slice(&[0x86, 0xdd]);
    h.assert_untouched("swarm_arp", &ipv6_arp, TC_ACT_UNSPEC);
    let truncated = req[..30].to_vec();
    h.assert_untouched("swarm_arp", &truncated, TC_ACT_UNSPEC);
    // A request in a VLAN with an ID is another network's: not answered.
    let mut tagged = eth([0xff; 6], PEER_MAC, 0x8100);
    tagged.extend_from_slice(&[0, 5, 0x08, 0x06]);
    tagged.extend(arp(1, PEER_MAC, SERVER, [0; 6], c));
    h.assert_untouched("swarm_arp", &tagged, TC_ACT_UNSPEC);
    // Priority tags (VLAN ID 0, PCP set, 802.1Q or an 802.1ad outer, up to four deep) are the
    // untagged network: the kernel pops them and would answer with the host's MAC, so swarm
    // answers with the client MAC, the tags kept as they came.
    for tpids in [
        vec![0x8100u16],
        vec![0x88a8, 0x8100],
        vec![0x8100, 0x8100, 0x8100],
        vec![0x88a8, 0x8100, 0x8100, 0x8100],
    ] {
        // Each tag: TCI (PCP 5, VLAN ID 0), then the next tag's TPID or ARP's ethertype.
        let tags = |f: &mut Vec<u8>| {
            for next in tpids.iter().skip(1).chain([0x0806u16].iter()) {
                f.extend_from_slice(&[0xa0, 0x00]);
                f.extend_from_slice(&next.to_be_bytes());
            }
        };
        let mut req = eth([0xff; 6], PEER_MAC, tpids[0]);
        tags(&mut req);
        req.extend(arp(1, PEER_MAC, SERVER, [0; 6], c));
        let (v, out) = h.run("swarm_arp", &req);
        assert_eq!(v, TC_ACT_REDIRECT, "{tpids:x?}");
        let mut want = eth(PEER_MAC, client(c), tpids[0]);
        tags(&mut want);
        want.extend(arp(2, client(c), c, PEER_MAC, SERVER));
        assert_eq!(out, want, "{tpids:x?}");
    }
}

#[test]
fn tc_ingress_accepts_frames_to_client_macs() {
    let h = Harness::new();
    h.assert_client_mac_rewritten("swarm_arp", [198, 18, 5, 9], TC_ACT_UNSPEC);
}

#[test]
fn tc_egress_sets_client_source_macs() {
    let h = Harness::new();
    let c = [198, 18, 6, 200];
    let f = cat(eth(PEER_MAC, IFACE_MAC, 0x0800), ipv4_udp(c, SERVER));
    let (v, out) = h.run("swarm_egress", &f);
    assert_eq!(v, TC_ACT_UNSPEC);
    assert_eq!(out[6..12], client(c));
    assert_eq!(out[..6], f[..6]);
    assert_eq!(out[12..], f[12..]);
    // The kernel's own ARP request from a pool address: Ethernet source and sender MAC.
    let req = cat(
        eth([0xff; 6], IFACE_MAC, 0x0806),
        arp(1, IFACE_MAC, c, [0; 6], SERVER),
    );
    let (_, out) = h.run("swarm_egress", &req);
    let want = cat(
        eth([0xff; 6], client(c), 0x0806),
        arp(1, client(c), c, [0; 6], SERVER),
    );
    assert_eq!(out, want);
    // Not from the pool, and tagged frames: untouched. (The kernel refuses test input with an
    // IPv4 ethertype shorter than an IPv4 header, so a cut-off IPv4 frame is an ARP-typed one:
    // the ARP branch must not read past the end either.)
    let own = cat(
        eth(PEER_MAC, IFACE_MAC, 0x0800),
        ipv4_udp([198, 18, 0, 1], SERVER),
    );
    h.assert_untouched("swarm_egress", &own, TC_ACT_UNSPEC);
    let trunc = req[..30].to_vec();
    h.assert_untouched("swarm_egress", &trunc, TC_ACT_UNSPEC);
    let mut tagged = eth(PEER_MAC, IFACE_MAC, 0x8100);
    tagged.extend_from_slice(&[0, 5, 0x08, 0x00]);
    tagged.extend(ipv4_udp(c, SERVER));
    h.assert_untouched("swarm_egress", &tagged, TC_ACT_UNSPEC);
}
