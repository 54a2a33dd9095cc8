//! `wirelab gen`: a packet generator fast enough to load an XDP program.
//!
//! Default method: the `gen_tx` XDP program run by BPF_PROG_TEST_RUN in live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`): the kernel builds frames from a template in a page pool,
//! runs the program on each (it rewrites the source address for `--flows`) and, as the program
//! returns XDP_TX, transmits them with the interface's `ndo_xdp_xmit`. No socket, no skb.
//!
//! A veth only accepts XDP frames when its peer runs NAPI (an XDP program attached, or GRO
//! on). `gen` checks that the first batch was delivered (the interface's tx counter moves) and
//! otherwise falls back to an AF_PACKET socket with a notice (`--method auto`), or stops with
//! an error (`--method xdp`).
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};
use wirelab_common::maps;

use crate::ebpf::LoadRetrying as _;
use anyhow::{bail, Context as _, Result};
use aya::{
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wirelab_common::{csum, fw::GenConf};

use crate::{ebpf, util::Stop};

/// What `gen` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Proto {
    /// UDP datagrams to --dport.
    Udp,
    /// TCP SYNs to --dport.
    #[value(alias = "syn")]
    TcpSyn,
}

/// How `gen` transmits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Live XDP frames; AF_PACKET, with a notice, when the peer cannot take XDP frames.
    Auto,
    /// Live XDP frames only (an error when the peer cannot take them).
    Xdp,
    /// An AF_PACKET socket (slower, works with every peer).
    Packet,
}

pub struct Options {
    /// Interface the frames leave by.
    pub iface: String,
    /// Destination MAC (aa:bb:cc:dd:ee:ff): the next hop's, as `lab status` shows it.
    pub dst_mac: String,
    /// Source MAC; `None`: the interface's own.
    pub src_mac: Option<String>,
    /// Source addresses: one address or a CIDR the flows' sources are spread over.
    pub src: String,
    pub dst: IpAddr,
    pub proto: Proto,
    /// Frame size in bytes, Ethernet header included, FCS not.
    pub size: usize,
    /// Frames per second; `None`: as fast as the method allows.
    pub rate: Option<u64>,
    /// Frames to send; with `duration`, whichever ends first.
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// Distinct 5-tuples, cycled frame by frame.
    pub flows: u32,
    /// Destination port (TCP/UDP).
    pub dport: u16,
    pub method: Method,
}

named_enum! {
    /// How the frames were sent.
    pub enum Sent {
        /// `gen_tx` run by BPF_PROG_TEST_RUN in live-frames mode.
        XdpLiveFrames = "xdp-live-frames",
        /// An AF_PACKET socket.
        AfPacket = "af-packet",
    }
}

/// What `gen` did (`--json`: this type, read back by the tests).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub iface: String,
    pub method: Sent,
    /// Frames handed to the kernel.
    pub sent: u64,
    /// Frames the interface counted as transmitted (delivered to the veth peer).
    pub delivered: u64,
    pub elapsed_s: f64,
    /// Achieved rate of delivered frames.
    pub pps: f64,
    pub size: usize,
    pub flows: u32,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gen on {} ({}): sent {} frames of {} bytes, delivered {} in {:.3}s = {:.0} pps ({:.1} Mbit/s), {} flows",
            self.iface,
            self.method,
            self.sent,
            self.size,
            self.delivered,
            self.elapsed_s,
            self.pps,
            self.pps * self.size as f64 * 8.0 / 1e6,
            self.flows
        )
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).with_context(|| format!("{s:?} is not a MAC address"))?;
    }
    Ok(m)
}

fn iface_mac(iface: &str) -> Result<[u8; 6]> {
    for a in nix::ifaddrs::getifaddrs()? {
        if a.interface_name == iface {
            if let Some(l) = a.address.as_ref().and_then(|s| s.as_link_addr()) {
                if let Some(m) = l.addr() {
                    return Ok(m);
                }
            }
        }
    }
    bail!("no MAC address found for {iface}; give --src-mac")
}

/// (tx_packets, tx_dropped) of `iface` in the current namespace, from /proc/self/net/dev.
pub fn tx_counters(iface: &str) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/net/dev")?;
    for l in text.lines().skip(2) {
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        if name.trim() == iface {
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            if v.len() >= 12 {
                return Ok((v[9], v[11]));
            }
        }
    }
    bail!("no interface {iface} in /proc/self/net/dev")
}

/// The template frame: Ethernet + IPv4 or IPv6 + UDP or TCP SYN, padded to `size`.
pub fn template(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    tcp: bool,
    dport: u16,
    size: usize,
) -> Result<Vec<u8>> {
    let l3 = if src.is_ipv6() { 40 } else { 20 };
    let hdr = 14 + l3 + if tcp { 20 } else { 8 };
    if !(60..=1514).contains(&size) {
        bail!("--size must be 60 to 1514 bytes (frame without FCS)");
    }
    if size < hdr {
        bail!("--size must be at least {hdr} bytes for these headers");
    }
    let payload = vec![0u8; size - hdr];
    let eth = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac);
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => bail!("--src and --dst must both be IPv4 or both IPv6"),
    };
    let mut v = Vec::with_capacity(size);
    if tcp {
        b.tcp(40000, dport, 1, 64240)
            .syn()
            .write(&mut v, &payload)
            .context("building the frame")?;
    } else {
        b.udp(40000, dport)
            .write(&mut v, &payload)
            .context("building the frame")?;
        if src.is_ipv4() {
            // No UDP checksum (legal over IPv4): the source changes per flow. IPv6 requires
            // one; it is updated with the address.
            v[40] = 0;
            v[41] = 0;
        }
    }
    Ok(v)
}

/// Set the low 32 bits of an IPv6 template's source address, updating the UDP/TCP checksum.
fn set_src6(frame: &mut [u8], low: u32, tcp: bool) {
    let mut old = [0u8; 4];
    old.copy_from_slice(&frame[34..38]);
    let new = low.to_be_bytes();
    frame[34..38].copy_from_slice(&new);
    let off = 54 + if tcp { 16 } else { 6 };
    let mut nc = csum::replace4(u16::from_be_bytes([frame[off], frame[off + 1]]), old, new);
    if !tcp && nc == 0 {
        nc = 0xffff;
    }
    frame[off..off + 2].copy_from_slice(&nc.to_be_bytes());
}

/// Rewrite the source address of a template built by [`template`] (IPv4 and TCP checksums).
fn set_src(frame: &mut [u8], a: Ipv4Addr, tcp: bool) {
    frame[26..30].copy_from_slice(&a.octets());
    frame[24] = 0;
    frame[25] = 0;
    let mut h = [0u8; 20];
    h.copy_from_slice(&frame[14..34]);
    frame[24..26].copy_from_slice(&csum::ipv4_header(&h).to_be_bytes());
    let l4 = 34;
    // UDP: checksum 0 ("none") is legal over IPv4. TCP: pseudo header + segment.
    let ck_off = if tcp { l4 + 16 } else { l4 + 6 };
    let total_ip = u16::from_be_bytes([frame[16], frame[17]]) as usize;
    let l4_len = total_ip - 20;
    frame[ck_off] = 0;
    frame[ck_off + 1] = 0;
    if !tcp {
        return;
    }
    let mut s: u32 = 0;
    for i in (26..34).step_by(2) {
        s += u16::from_be_bytes([frame[i], frame[i + 1]]) as u32;
    }
    s += 6 + l4_len as u32;
    let end = l4 + l4_len;
    let mut i = l4;
    while i + 1 < end {
        s += u16::from_be_bytes([frame[i], frame[i + 1]]) as u32;
        i += 2;
    }
    if i < end {
        s += (frame[i] as u32) << 8;
    }
    frame[ck_off..ck_off + 2].copy_from_slice(&(!csum::fold(s)).to_be_bytes());
}

/// Paces sends: how many frames may go now, sleeping when ahead of `rate`.
struct Pacer {
    start: Instant,
    rate: Option<u64>,
}

impl Pacer {
    fn allowance(&self, sent: u64, max: u64, stop: &Stop) -> u64 {
        let Some(rate) = self.rate else {
            return max;
        };
        loop {
            let due = (self.start.elapsed().as_secs_f64() * rate as f64) as u64 + 1;
            if due > sent {
                return (due - sent).min(max);
            }
            if stop.requested() {
                return 0;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// What [`check`] found in the options.
pub struct Checked {
    net: IpNet,
    /// The first source address's low 32 bits (the generator varies them).
    base: u32,
    tcp: bool,
    /// Always bounded: by count, by duration, or by 5 s.
    duration: Option<Duration>,
    dst_mac: [u8; 6],
    src_mac: Option<[u8; 6]>,
}

/// The checks of `o` that need no interface (addresses, flows, counts, MACs): made by
/// [`run`], and by the command before it enters its namespace, so that a typo is reported
/// as itself whatever the namespace.
pub fn check(o: &Options) -> Result<Checked> {
    let net: IpNet = o
        .src
        .parse()
        .or_else(|_| o.src.parse::<IpAddr>().map(IpNet::from))
        .with_context(|| format!("--src {:?}: not an address or CIDR", o.src))?;
    if net.addr().is_ipv6() != o.dst.is_ipv6() {
        bail!(
            "--src {} and --dst {} must both be IPv4 or both IPv6",
            o.src,
            o.dst
        );
    }
    if o.flows == 0 {
        bail!("--flows must be at least 1");
    }
    let (first, last) = match net {
        IpNet::V4(n) => (
            u32::from(n.addr()) as u128,
            u32::from(n.broadcast()) as u128,
        ),
        IpNet::V6(n) => (u128::from(n.addr()), u128::from(n.broadcast())),
    };
    if last - first < o.flows as u128 - 1 {
        bail!(
            "--flows {}: only {} addresses from {} to the end of {}",
            o.flows,
            last - first + 1,
            net.addr(),
            net.trunc()
        );
    }
    // The generator varies the low 32 bits of the address.
    let base = first as u32;
    if base as u64 + o.flows as u64 - 1 > u32::MAX as u64 {
        bail!(
            "--flows {} from {}: the varied low 32 bits of the address would wrap",
            o.flows,
            net.addr()
        );
    }
    let tcp = o.proto == Proto::TcpSyn;
    if o.count == Some(0) {
        bail!("--count must be at least 1");
    }
    if o.rate == Some(0) {
        bail!("--rate must be at least 1");
    }
    Ok(Checked {
        net,
        base,
        tcp,
        duration: o.duration.or(if o.count.is_some() {
            None
        } else {
            Some(Duration::from_secs(5))
        }),
        dst_mac: parse_mac(&o.dst_mac).context("--dst-mac")?,
        src_mac: o
            .src_mac
            .as_deref()
            .map(parse_mac)
            .transpose()
            .context("--src-mac")?,
    })
}

/// The method to send with: live frames came with Linux 5.18, before that `auto` takes
/// AF_PACKET and `xdp` is refused.
fn method(asked: Method) -> Result<Method> {
    let live = crate::kernel::feature::XDP_LIVE_FRAMES;
    Ok(match asked {
        Method::Xdp => {
            crate::kernel::require(&[live])?;
            Method::Xdp
        }
        Method::Auto if !crate::kernel::at_least(live.since.0, live.since.1) => {
            tracing::warn!(
                "{} needs Linux {}.{} (this is {}): sending with AF_PACKET (slower)",
                live.name,
                live.since.0,
                live.since.1,
                crate::kernel::release()
            );
            Method::Packet
        }
        m => m,
    })
}

/// `gen_tx` configured (sources from `base`, `flows` of them, TCP or UDP, v4 or v6) and
/// loaded.
fn load_gen(flows: u32, base: u32, tcp: bool, v6: bool) -> Result<aya::Ebpf> {
    let mut b = ebpf::load(ebpf::Object::Gen)?;
    {
        let mut conf: Array<_, GenConf> =
            Array::try_from(b.map_mut(maps::GEN_CONF).context("GEN_CONF missing")?)?;
        conf.set(
            0,
            GenConf {
                src_base: base,
                flows,
                l3_off: 14,
                proto: if tcp { 6 } else { 17 },
                family: if v6 { 6 } else { 4 },
            },
            0,
        )?;
    }
    let p: &mut Xdp = b
        .program_mut("gen_tx")
        .context("gen_tx missing")?
        .try_into()?;
    p.load_retrying().context("loading gen_tx")?;
    Ok(b)
}

pub fn run(o: &Options, stop: &Stop) -> Result<Report> {
    let Checked {
        net,
        base,
        tcp,
        duration,
        dst_mac,
        src_mac,
    } = check(o)?;
    let v6 = net.addr().is_ipv6();
    let ifindex = nix::net::if_::if_nametoindex(o.iface.as_str())
        .with_context(|| format!("no interface named {:?} in this network namespace", o.iface))?;
    let src_mac = match src_mac {
        Some(m) => m,
        None => iface_mac(&o.iface)?,
    };
    let frame = template(src_mac, dst_mac, net.addr(), o.dst, tcp, o.dport, o.size)?;
    let limit = o.count.unwrap_or(u64::MAX);
    let (mut tx0, _) = tx_counters(&o.iface)?;
    let method = method(o.method)?;
    // Load the program before the clock starts: verification is not sending time.
    let mut bpf = match method {
        Method::Packet => None,
        _ => Some(load_gen(o.flows, base, tcp, v6)?),
    };
    let mut sent = 0u64;
    let start = Instant::now();
    let mut used = Sent::XdpLiveFrames;
    let done = |sent: u64| {
        sent >= limit || stop.requested() || duration.is_some_and(|d| start.elapsed() >= d)
    };
    let pacer = Pacer {
        start,
        rate: o.rate,
    };
    if let Some(b) = bpf.as_mut() {
        let p: &mut Xdp = b
            .program_mut("gen_tx")
            .context("gen_tx missing")?
            .try_into()?;
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let run_batch = |n: u32| -> Result<()> {
            p.test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat: n,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN in live-frames mode")?;
            Ok(())
        };
        // Probe: does the interface take XDP frames? (A veth needs NAPI on its peer.)
        let probe = 64u64.min(limit);
        run_batch(probe as u32)?;
        sent += probe;
        std::thread::sleep(Duration::from_millis(20));
        let (tx1, _) = tx_counters(&o.iface)?;
        if tx1.saturating_sub(tx0) * 2 < probe {
            let msg = format!(
                "{} did not transmit XDP frames ({} of {probe} went out): a veth peer needs an XDP program or GRO to receive them",
                o.iface,
                tx1.saturating_sub(tx0)
            );
            if method == Method::Xdp {
                bail!("{msg}");
            }
            tracing::warn!("{msg}; falling back to AF_PACKET (slower)");
            used = Sent::AfPacket;
            // The probe frames were dropped: count from here.
            sent = 0;
            tx0 = tx_counters(&o.iface)?.0;
        } else {
            while !done(sent) {
                let n = pacer.allowance(sent, (limit - sent).min(1 << 16), stop);
                if n == 0 {
                    continue;
                }
                run_batch(n as u32)?;
                sent += n;
            }
        }
    } else {
        used = Sent::AfPacket;
    }
    if used == Sent::AfPacket {
        sent += send_packet(
            ifindex,
            &frame,
            tcp,
            v6,
            base,
            o.flows,
            limit - sent,
            &done_fn(limit, sent, stop, duration, start),
            &pacer,
            stop,
        )?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(50));
    let (tx2, _) = tx_counters(&o.iface)?;
    let delivered = tx2.saturating_sub(tx0).min(sent);
    Ok(Report {
        iface: o.iface.clone(),
        method: used,
        sent,
        delivered,
        elapsed_s: elapsed,
        pps: delivered as f64 / elapsed.max(1e-9),
        size: frame.len(),
        flows: o.flows,
    })
}

fn done_fn<'a>(
    limit: u64,
    already: u64,
    stop: &'a Stop,
    duration: Option<Duration>,
    start: Instant,
) -> impl Fn(u64) -> bool + 'a {
    move |n: u64| {
        already + n >= limit || stop.requested() || duration.is_some_and(|d| start.elapsed() >= d)
    }
}

/// Send through an AF_PACKET socket, bypassing the qdisc. Returns frames sent.
#[allow(clippy::too_many_arguments)]
fn send_packet(
    ifindex: u32,
    template: &[u8],
    tcp: bool,
    v6: bool,
    base: u32,
    flows: u32,
    limit: u64,
    done: &dyn Fn(u64) -> bool,
    pacer: &Pacer,
    stop: &Stop,
) -> Result<u64> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid option pointer and length.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    // SAFETY: sll is a valid sockaddr_ll.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context("binding the AF_PACKET socket");
    }
    let mut frames: Vec<Vec<u8>> = vec![];
    for i in 0..flows.min(4096) {
        let mut f = template.to_vec();
        if v6 {
            set_src6(&mut f, base.wrapping_add(i), tcp);
        } else {
            set_src(&mut f, Ipv4Addr::from(base.wrapping_add(i)), tcp);
        }
        frames.push(f);
    }
    let mut sent = 0u64;
    while !done(sent) && sent < limit {
        let n = pacer.allowance(sent, 64, stop);
        for _ in 0..n {
            let f = &frames[(sent % frames.len() as u64) as usize];
            // SAFETY: f is a valid buffer for its length.
            let r = unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    f.as_ptr() as *const libc::c_void,
                    f.len(),
                    0,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::EAGAIN)
                {
                    std::thread::yield_now();
                    continue;
                }
                return Err(e).context("AF_PACKET send");
            }
            sent += 1;
            if sent >= limit {
                break;
            }
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn set_src_keeps_checksums_valid() {
        for tcp in [false, true] {
            let mut f = template(
                [2; 6],
                [4; 6],
                Ipv4Addr::new(198, 18, 0, 1).into(),
                Ipv4Addr::new(198, 18, 0, 2).into(),
                tcp,
                22,
                64,
            )
            .unwrap();
            assert_eq!(f.len(), 64);
            set_src(&mut f, Ipv4Addr::new(198, 18, 7, 9), tcp);
            let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
                panic!()
            };
            assert_eq!(ip.header().source(), [198, 18, 7, 9]);
            let h = ip.header().to_header();
            assert_eq!(h.calc_header_checksum(), h.header_checksum);
            if tcp {
                let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else {
                    panic!()
                };
                let th = t.to_header();
                assert_eq!(th.calc_checksum_ipv4(&h, t.payload()).unwrap(), th.checksum);
            }
        }
    }

    #[test]
    fn ipv6_source_change_keeps_checksums_valid() {
        let a = |s: &str| -> IpAddr { s.parse().unwrap() };
        for tcp in [false, true] {
            let mut f =
                template([2; 6], [4; 6], a("2001:2::1:0"), a("2001:2::2"), tcp, 9, 90).unwrap();
            assert_eq!(f.len(), 90);
            for low in [0x0001_0005u32, 0xffff_ffff, 0, 0x1234_5678] {
                set_src6(&mut f, low, tcp);
                let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
                let Some(etherparse::NetSlice::Ipv6(ip)) = p.net else {
                    panic!()
                };
                let h = ip.header().to_header();
                assert_eq!(&h.source[12..], &low.to_be_bytes());
                match p.transport {
                    Some(etherparse::TransportSlice::Udp(u)) => {
                        let uh = u.to_header();
                        assert_eq!(
                            uh.calc_checksum_ipv6(&h, u.payload()).unwrap(),
                            uh.checksum,
                            "udp {low:#x}"
                        );
                    }
                    Some(etherparse::TransportSlice::Tcp(t)) => {
                        let th = t.to_header();
                        assert_eq!(
                            th.calc_checksum_ipv6(&h, t.payload()).unwrap(),
                            th.checksum,
                            "tcp {low:#x}"
                        );
                    }
                    _ => panic!(),
                }
            }
        }
        // Headers that do not fit and mixed families are refused.
        assert!(template([2; 6], [4; 6], a("2001:2::1"), a("2001:2::2"), true, 9, 60).is_err());
        assert!(template(
            [2; 6],
            [4; 6],
            a("198.18.0.1"),
            a("2001:2::2"),
            false,
            9,
            64
        )
        .is_err());
    }
}
