//! Frame builders for the BPF_PROG_TEST_RUN tests: hand-made headers for the cases a packet
//! library refuses to build (IPv4 options, bad lengths, fragments, IPv6 extension chains).

/// Source and destination MAC of every built frame.
pub const SRC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const DST: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// Addresses of built frames, from the benchmarking ranges the project keeps to:
/// 198.18.0.0/15 (RFC 2544) and 2001:2::/48 (RFC 5180).
pub const A4: [u8; 4] = [198, 18, 0, 1];
pub const B4: [u8; 4] = [198, 18, 0, 2];
/// 2001:2::1 and 2001:2::2.
pub const A6: [u8; 16] = std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1).octets();
pub const B6: [u8; 16] = std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2).octets();

/// The lb program's frames (tests/lb_prog.rs and `cargo xtask bench lb`'s lb_bench example).
pub mod lb {
    /// MAC of the interface the program runs on (the source MAC of forwarded frames).
    pub const IFACE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
    pub const CLIENT: [u8; 4] = super::A4;
    /// The VIP of the test configs, a VIP whose backends all have weight 0, an address that
    /// is no VIP.
    pub const VIP: [u8; 4] = [198, 18, 1, 100];
    pub const VIP_DOWN: [u8; 4] = [198, 18, 1, 101];
    pub const OTHER: [u8; 4] = super::B4;
    pub const CLIENT6: [u8; 16] = super::A6;
    /// 2001:2::100.
    pub const VIP6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
}

/// An Ethernet header with `ethertype`.
pub fn eth(ethertype: u16) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&DST);
    v.extend_from_slice(&SRC);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v
}

/// IPv4 header with `ihl` words (options padded with NOPs) + payload; total length right.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], ihl: u8, proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let hlen = ihl as usize * 4;
    let mut h = vec![0u8; hlen.max(20)];
    h[0] = 0x40 | ihl;
    let total = (hlen.max(20) + payload.len()) as u16;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    for b in h.iter_mut().skip(20) {
        *b = 1;
    }
    h.extend_from_slice(payload);
    h
}

/// A UDP header with no payload (length 8).
pub fn udp_hdr(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&8u16.to_be_bytes());
    u
}

/// A TCP header with no options (data offset 5), sequence and acknowledgement 0, the
/// checksum left 0.
pub fn tcp_hdr(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t
}

/// IPv6 header + extension chain (each a complete header) + upper layer.
pub fn ipv6(
    src: [u8; 16],
    dst: [u8; 16],
    first_next: u8,
    exts: &[Vec<u8>],
    upper: &[u8],
) -> Vec<u8> {
    let mut payload: Vec<u8> = exts.iter().flatten().copied().collect();
    payload.extend_from_slice(upper);
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = first_next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h.extend_from_slice(&payload);
    h
}

/// An 8-byte options header (hop-by-hop / destination options) pointing to `next`.
pub fn opts_hdr(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// An IPv6 fragment header: offset in 8-byte units, more-fragments flag.
pub fn frag6(next: u8, offset_units: u16, more: bool) -> Vec<u8> {
    let fo = (offset_units << 3) | more as u16;
    let mut v = vec![next, 0];
    v.extend_from_slice(&fo.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 1]);
    v
}

/// `a` followed by `b`.
pub fn cat(mut a: Vec<u8>, b: Vec<u8>) -> Vec<u8> {
    a.extend(b);
    a
}

/// `frame` (Ethernet) with VLAN tags inserted after the MAC addresses, outermost first:
/// each tag is (TPID, TCI); the last tag carries the frame's own ethertype.
pub fn vlan_wrap(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut v = frame[..12].to_vec();
    for (tpid, tci) in tags {
        v.extend_from_slice(&tpid.to_be_bytes());
        v.extend_from_slice(&tci.to_be_bytes());
    }
    v.extend_from_slice(&frame[12..]);
    v
}

/// The VLAN wrappings every classifier is tested with: (name, tags). Priority tags (VLAN ID
/// 0) the kernel pops however many there are; tags with an ID it would not deliver without a
/// VLAN device, but a classifier must judge the packet inside either way.
pub fn vlan_wrappings(max_depth: usize) -> Vec<(String, Vec<(u16, u16)>)> {
    const Q: u16 = 0x8100;
    const AD: u16 = 0x88a8;
    let mut out = vec![("untagged".to_string(), vec![])];
    for n in 1..=max_depth {
        out.push((format!("{n} x 802.1Q VLAN 0"), vec![(Q, 0xa000); n]));
        out.push((
            format!("802.1ad VLAN 0 outer + {} x 802.1Q VLAN 0", n - 1),
            std::iter::once((AD, 0))
                .chain(std::iter::repeat_n((Q, 0), n - 1))
                .collect(),
        ));
        out.push((format!("{n} x 802.1Q VLAN 42"), vec![(Q, 42); n]));
    }
    out
}

/// The frame a finished etherparse builder writes with `payload` (a macro: each builder step
/// is a type of its own).
#[macro_export]
macro_rules! build {
    ($b:expr, $payload:expr) => {{
        let mut v = Vec::new();
        $b.write(&mut v, $payload).expect("building a frame");
        v
    }};
}

/// A test frame's first builder step: Ethernet from `SRC` to `DST`.
pub fn e() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    etherparse::PacketBuilder::ethernet2(SRC, DST)
}

/// A TCP SYN from port 40000 to `dport`, IPv4 or IPv6 by the addresses' family.
pub fn tcp_syn(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    dport: u16,
) -> Vec<u8> {
    use std::net::IpAddr;
    let eth = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("tcp_syn: {src} and {dst} are of different families"),
    };
    crate::build!(ip.tcp(40000, dport, 1, 1024).syn(), &[])
}
