//! `wirelab fw` against nftables (netdev ingress hook) with the same rules and the same probe
//! frames: the sets of passed and dropped probes must be identical.
//!
//! Probes are crafted frames sent from the client through an AF_PACKET socket, each with a
//! unique IPv4 ID. The server records the IDs that reach its IP stack through raw IPv4
//! sockets (TCP, UDP, ICMP), which receive after both XDP and the netdev ingress hook.
mod common;
use std::{
    collections::BTreeSet,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use etherparse::PacketBuilder;

const RULES: &str = include_str!("data/fw-vs-nft.toml");

const NFT: &str = include_str!("data/fw-vs-nft.nft");

#[derive(Clone, Copy, Debug)]
enum Probe {
    Tcp(u16, bool, bool),
    Udp(u16, u16),
    Icmp(u8),
}

fn probes() -> Vec<([u8; 4], Probe)> {
    let kinds = [
        Probe::Tcp(22, true, false),
        Probe::Tcp(22, true, true),
        Probe::Tcp(22, false, true),
        Probe::Tcp(85, false, true),
        Probe::Tcp(91, true, false),
        Probe::Udp(40000, 53),
        Probe::Udp(1500, 5000),
        Probe::Udp(2500, 5000),
        Probe::Udp(40000, 54),
        Probe::Icmp(8),
        Probe::Icmp(0),
        Probe::Icmp(13),
    ];
    let mut v = vec![];
    for last in [1u8, 5, 17, 20, 31, 32] {
        for k in kinds {
            v.push(([198, 18, 0, last], k));
        }
    }
    v
}

fn frame(dst_mac: [u8; 6], src: [u8; 4], p: Probe, id: u16) -> Vec<u8> {
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], dst_mac);
    let mut ip =
        etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, src, [198, 18, 0, 2])
            .unwrap();
    ip.identification = id;
    let b = b.ip(etherparse::IpHeaders::Ipv4(ip, Default::default()));
    match p {
        Probe::Tcp(dport, syn, ack) => {
            let b = b.tcp(40000, dport, 1, 1024);
            let b = if syn { b.syn() } else { b };
            let b = if ack { b.ack(1) } else { b };
            b.write(&mut v, &[]).unwrap();
        }
        Probe::Udp(sport, dport) => b.udp(sport, dport).write(&mut v, &[0; 8]).unwrap(),
        Probe::Icmp(t) => {
            let ty = match t {
                8 => etherparse::Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader {
                    id: 1,
                    seq: 1,
                }),
                0 => {
                    etherparse::Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 1, seq: 1 })
                }
                t => etherparse::Icmpv4Type::Unknown {
                    type_u8: t,
                    code_u8: 0,
                    bytes5to8: [0; 4],
                },
            };
            b.icmpv4(ty).write(&mut v, &[0; 12]).unwrap();
        }
    }
    v
}

fn send_frames(ns: &str, frames: Vec<Vec<u8>>) {
    wirelab::netns::run_in(Some(ns), move || {
        let idx = nix::net::if_::if_nametoindex("eth0")?;
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0);
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = idx as i32;
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0);
        for f in frames {
            let r = unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    f.as_ptr() as *const libc::c_void,
                    f.len(),
                    0,
                )
            };
            assert_eq!(r as usize, f.len());
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    })
    .unwrap();
}

/// Records the IPv4 IDs of TCP/UDP/ICMP packets delivered to the server's IP stack.
struct Recorder {
    ids: Arc<Mutex<BTreeSet<u16>>>,
    _worker: NsWorker,
}

impl Recorder {
    fn start(ns: &str) -> Self {
        let ids = Arc::new(Mutex::new(BTreeSet::new()));
        let i2 = ids.clone();
        let open = || -> Vec<OwnedFd> {
            [libc::IPPROTO_TCP, libc::IPPROTO_UDP, libc::IPPROTO_ICMP]
                .iter()
                .map(|p| {
                    // SAFETY: a plain socket(2) call; the result is checked before use.
                    let fd = unsafe {
                        libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, *p)
                    };
                    assert!(fd >= 0, "raw socket");
                    // SAFETY: fd is a new descriptor this closure owns.
                    unsafe { OwnedFd::from_raw_fd(fd) }
                })
                .collect()
        };
        let mut buf = [0u8; 2048];
        let poll = move |socks: &mut Vec<OwnedFd>| {
            let mut busy = false;
            for s in socks.iter() {
                loop {
                    // SAFETY: recv into a buffer of the length given.
                    let n = unsafe {
                        libc::recv(
                            s.as_raw_fd(),
                            buf.as_mut_ptr() as *mut libc::c_void,
                            buf.len(),
                            0,
                        )
                    };
                    if n < 20 {
                        break;
                    }
                    busy = true;
                    // Only probes from the client's crafted frames (ID >= 1).
                    if buf[12..15] == [198, 18, 0] && buf[16..20] == [198, 18, 0, 2] {
                        i2.lock()
                            .unwrap()
                            .insert(u16::from_be_bytes([buf[4], buf[5]]));
                    }
                }
            }
            busy
        };
        Self {
            ids,
            _worker: NsWorker::start(ns, open, poll),
        }
    }
}

struct NftTable(String);
impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = in_ns(&self.0, &["nft", "delete", "table", "netdev", "wlcmp"]).output();
    }
}

#[test]
fn same_verdicts_as_nftables_netdev_ingress() {
    let lab = Lab::up("fwn");
    let dir = TempDir::new("wirelab-fwnft-");
    let rules = dir.file("r.toml", RULES);
    let nft_file = dir.file("r.nft", NFT);
    let server = lab.ns("server");
    // sysfs shows the namespace of whoever mounted it: read the MAC with ip instead.
    let o = ok(in_ns(&server, &["ip", "-br", "link", "show", "eth0"]));
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    let m = s.split_whitespace().nth(2).unwrap().to_string();
    let dst_mac: [u8; 6] = {
        let mut a = [0u8; 6];
        for (i, p) in m.split(':').enumerate() {
            a[i] = u8::from_str_radix(p, 16).unwrap();
        }
        a
    };
    let ps = probes();
    let rec = Recorder::start(&server);
    // Send every probe once from the client, IPv4 IDs numbered from `first_id`, then one
    // sentinel of each protocol that both rule sets pass (IDs first_id + 900..=902). Each raw
    // socket of the recorder takes its protocol's frames in order, so once the three
    // sentinels are recorded every probe that passed has been.
    let sentinels = [
        Probe::Tcp(22, true, false),
        Probe::Udp(40000, 53),
        Probe::Icmp(8),
    ];
    let send_probes = |first_id: u16| {
        let mut frames: Vec<Vec<u8>> = ps
            .iter()
            .enumerate()
            .map(|(i, (s, p))| frame(dst_mac, *s, *p, first_id + i as u16))
            .collect();
        frames.extend(
            sentinels
                .iter()
                .enumerate()
                .map(|(k, p)| frame(dst_mac, [198, 18, 0, 1], *p, first_id + 900 + k as u16)),
        );
        send_frames(&lab.ns("client"), frames);
        let ids = rec.ids.clone();
        assert!(
            eventually(Duration::from_secs(10), || {
                let ids = ids.lock().unwrap();
                (900..903).all(|k| ids.contains(&(first_id + k)))
            }),
            "the sentinels (passed by both rule sets) never arrived"
        );
    };

    // 1. wirelab fw.
    let fw = start_fw(&server, &rules);
    send_probes(1);
    drop(fw);

    // 2. nftables on the same interface.
    ok(in_ns(&server, &["nft", "-f", nft_file.to_str().unwrap()]));
    let _t = NftTable(server.clone());
    send_probes(1001);

    let ids = rec.ids.lock().unwrap().clone();
    let mut disagree = vec![];
    let mut passed = 0;
    for (i, (s, p)) in ps.iter().enumerate() {
        let by_fw = ids.contains(&(1 + i as u16));
        let by_nft = ids.contains(&(1001 + i as u16));
        if by_fw != by_nft {
            disagree.push(format!("{s:?} {p:?}: fw {by_fw} nft {by_nft}"));
        }
        passed += by_fw as usize;
    }
    eprintln!("{} probes, {passed} passed both", ps.len());
    assert!(disagree.is_empty(), "verdicts differ: {disagree:#?}");
    // The comparison means something: both outcomes occur. Sources .1, .5 and .32 (outside
    // 198.18.0.16/28) pass 5 kinds each: SYN to 22, ACK to 85, UDP to 53, the app flow and
    // the echo request.
    assert_eq!(passed, 3 * 5, "ids {ids:?}");
}
