//! `wirelab flows` against tshark on the same traffic: a lab whose wan adds 20 ms each way and
//! 3 % loss from client to server; three TCP connections from the client (an upload through
//! the loss, a reader that never reads, a closed port); `wirelab flows` and tcpdump watch the
//! client's eth0 together, and the per-flow packets, bytes, retransmissions, out-of-order
//! segments, zero windows, resets and handshake RTTs must agree with tshark's.
mod common;
use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{FromRawFd as _, IntoRawFd as _},
    process::Command,
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::*;
use wirelab::flows::{FinalLine, FlowReport};
use wirelab_testkit::worker::enter_ns;

const SERVER: &str = "198.18.0.2";
/// Added by the wan in each direction.
const DELAY_MS: f64 = 20.0;
const UPLOAD: usize = 400_000;

/// Run `f` on a thread inside namespace `ns`.
fn in_thread<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_ns(&ns).expect("entering the namespace");
        f()
    })
}

/// Accept one connection within 20 s (the listener is non-blocking, so a test that never
/// connects does not hang).
fn accept_one(l: &TcpListener) -> TcpStream {
    l.set_nonblocking(true).unwrap();
    let t0 = Instant::now();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(t0.elapsed() < Duration::from_secs(20), "no connection");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// The servers: port 5001 reads to the end and closes; port 5002 writes until its peer
/// stops reading (at most 4 MB, 5 s blocked).
fn servers(ns: &str) -> Vec<JoinHandle<()>> {
    let (tx, rx) = mpsc::channel();
    let sink = {
        let tx = tx.clone();
        in_thread(ns, move || {
            let l = TcpListener::bind((SERVER, 5001)).unwrap();
            tx.send(()).unwrap();
            let mut s = accept_one(&l);
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut buf = vec![0; 65536];
            let mut n = 0;
            while let Ok(k) = s.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k;
            }
            assert_eq!(n, UPLOAD, "the upload arrived whole");
        })
    };
    let writer = in_thread(ns, move || {
        let l = TcpListener::bind((SERVER, 5002)).unwrap();
        tx.send(()).unwrap();
        let mut s = accept_one(&l);
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let chunk = vec![7u8; 16384];
        for _ in 0..256 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    for _ in 0..2 {
        rx.recv_timeout(Duration::from_secs(10)).expect("servers");
    }
    vec![sink, writer]
}

/// A client socket with a small receive buffer (set before connect, so the window it
/// offers stays small and closes quickly).
fn small_window_connect(to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{
        connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::RcvBuf, &4096).unwrap();
    let SocketAddr::V4(v4) = to else {
        unreachable!()
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4)).unwrap();
    // SAFETY: a connected stream socket we own.
    unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) }
}

/// The client's three connections, one after the other.
fn client(ns: &str) -> JoinHandle<()> {
    in_thread(ns, || {
        let to = |p: u16| SocketAddr::from(([198, 18, 0, 2], p));
        // An upload through the loss, closed by both sides.
        let mut s = TcpStream::connect_timeout(&to(5001), Duration::from_secs(10)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&vec![1u8; UPLOAD]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        assert_eq!(s.read(&mut [0; 16]).unwrap(), 0);
        drop(s);
        // A reader that never reads: its window closes; closing it with unread data resets.
        let s = small_window_connect(to(5002));
        std::thread::sleep(Duration::from_millis(1500));
        drop(s);
        // A closed port.
        let e = TcpStream::connect_timeout(&to(5003), Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    })
}

/// tshark's per-direction counts of one display filter: (src port, dst port) -> frames.
fn tshark_count(file: &std::path::Path, filter: &str) -> HashMap<(u16, u16), u64> {
    let mut m = HashMap::new();
    for r in tshark_rows(file, filter, &["tcp.srcport", "tcp.dstport"]) {
        *m.entry((r[0].parse().unwrap(), r[1].parse().unwrap()))
            .or_default() += 1;
    }
    m
}

/// Per direction (src port, dst port): frames, bytes, and the handshake RTT (ms) of the flow.
struct Tshark {
    frames: HashMap<(u16, u16), u64>,
    bytes: HashMap<(u16, u16), u64>,
    initial_rtt: HashMap<u16, f64>,
}

fn tshark_frames(file: &std::path::Path) -> Tshark {
    let mut t = Tshark {
        frames: HashMap::new(),
        bytes: HashMap::new(),
        initial_rtt: HashMap::new(),
    };
    let rows = tshark_rows(
        file,
        "",
        &[
            "tcp.srcport",
            "tcp.dstport",
            "frame.len",
            "tcp.analysis.initial_rtt",
        ],
    );
    for f in rows {
        let (a, b): (u16, u16) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        *t.frames.entry((a, b)).or_default() += 1;
        *t.bytes.entry((a, b)).or_default() += f[2].parse::<u64>().unwrap();
        if let Some(r) = f.get(3).filter(|r| !r.is_empty()) {
            let client = if (5001..5010).contains(&b) { a } else { b };
            t.initial_rtt
                .insert(client, r.parse::<f64>().unwrap() * 1000.0);
        }
    }
    t
}

/// `tshark -q -z conv,tcp`: the frames of each conversation (client port -> total frames).
fn tshark_conv(file: &std::path::Path) -> HashMap<u16, u64> {
    let mut c = Command::new("tshark");
    c.arg("-r").arg(file).args(["-q", "-z", "conv,tcp"]);
    let o = ok(c);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut m = HashMap::new();
    for l in text.lines().filter(|l| l.contains("<->")) {
        let w: Vec<&str> = l.split_whitespace().collect();
        // A:PORT <-> B:PORT frames bytes UNIT frames bytes UNIT total-frames …
        let port = |s: &str| s.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        let (a, b) = (port(w[0]), port(w[2]));
        let client = if (5001..5010).contains(&b) { a } else { b };
        m.insert(
            client,
            w[9].parse::<u64>().unwrap_or_else(|_| panic!("{l}")),
        );
    }
    assert!(!m.is_empty(), "{text}");
    m
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn flows_agree_with_tshark_on_loss_zero_window_and_reset() {
    // RTTs are judged against what the wan adds: a measurement on a shared host (`timing`).
    timing(
        "flows_agree_with_tshark_on_loss_zero_window_and_reset",
        flows_agree,
    );
}

fn flows_agree() {
    let t0 = Instant::now();
    let lab = Lab::up("fl");
    let dir = TempDir::new("wlflows");
    let pcap = dir.join("client.pcap");
    let rec = dir.join("rec");
    let mut c = wirelab();
    c.args(cli::wan(&lab.ns("wan"))).args([
        "--a-to-b",
        "delay 20ms loss 3%",
        "--b-to-a",
        "delay 20ms",
        "--duration",
        "90s",
    ]);
    let wan = spawn_ready(c, "wan running", Duration::from_secs(20));
    let servers = servers(&lab.ns("server"));
    // flows sees ingress frames where XDP does, before GRO merges them, and counts an egress
    // GSO packet (tc sees it before it is split) as the segments it is sent as. tcpdump sees
    // packets after GRO, and GSO packets whole when the device takes them whole: without
    // GRO, GSO and TSO on the client's eth0 it sees the frames on the wire too.
    ok(in_ns(
        &lab.ns("client"),
        &[
            "ethtool", "-K", "eth0", "gro", "off", "gso", "off", "tso", "off",
        ],
    ));

    let mut c = wirelab();
    c.args(cli::on_iface("flows", &lab.ns("client"), "eth0"))
        .args([
            "--filter",
            "tcp",
            "--json",
            "--interval",
            "500ms",
            "--duration",
            "60s",
            "--metrics",
            "127.0.0.1:0",
            "--record",
        ])
        .arg(&rec);
    let flows = spawn_ready(c, "capture attached", Duration::from_secs(30));
    let metrics = tcp_listen_addr(flows.pid());
    let scrape_rows = || parse_openmetrics(&scrape(&metrics).1);
    let mut c = in_ns(
        &lab.ns("client"),
        &["tcpdump", "-i", "eth0", "--immediate-mode", "-U", "-w"],
    );
    c.arg(&pcap).arg("tcp");
    let tcpdump =
        wirelab_testkit::spawn_ready(c, Ready::Stderr, "listening on", Duration::from_secs(10))
            .expect("tcpdump");

    client(&lab.ns("client")).join().expect("client");
    // The servers' own checks (the upload arrived whole) fail the test through their join.
    for s in servers {
        s.join().expect("a server thread failed");
    }
    // --metrics: once an interval without packets has passed (active 0), the top flows'
    // gauges hold their final bytes.
    let mut rows = vec![];
    assert!(
        eventually(Duration::from_secs(10), || {
            rows = scrape_rows();
            sample(&rows, "wirelab_flows_active", &[("iface", "eth0")]) == 0.0
        }),
        "flows stay active"
    );
    let out = flows.terminate();
    let text = out.text();
    let fin: FinalLine = serde_json::from_str(
        text.lines()
            .rfind(|l| l.contains("\"final\""))
            .unwrap_or_else(|| panic!("no final line: {text}")),
    )
    .unwrap();
    // tcpdump writes what it has seen a little later: wait until its file holds as many
    // frames as flows saw (or 10 s), then stop it.
    let written = || {
        let Ok(f) = std::fs::File::open(&pcap) else {
            return 0;
        };
        let Ok(mut r) = pcap_file::pcap::PcapReader::new(f) else {
            return 0;
        };
        let mut n = 0;
        while let Some(Ok(_)) = r.next_packet() {
            n += 1;
        }
        n
    };
    eventually(Duration::from_secs(10), || written() >= fin.frames);
    let _ = tcpdump.stop();
    drop(wan);
    assert!(
        text.lines().any(|l| l.contains("\"interval\"")),
        "interval lines: {text}"
    );
    assert_eq!(fin.lost, 0, "the capture lost frames");
    assert_eq!(fin.flows.len(), 3, "{fin:#?}");
    // The metrics' top flows are the final line's, with the same bytes and retransmissions
    // per side.
    for f in &fin.flows {
        for (side, d) in [("orig", &f.orig), ("resp", &f.resp)] {
            let l = [
                ("proto", f.proto.as_str()),
                ("orig", f.orig_addr.as_str()),
                ("resp", f.resp_addr.as_str()),
                ("side", side),
            ];
            assert_eq!(
                sample(&rows, "wirelab_flows_top_bytes", &l),
                d.bytes as f64,
                "{f:?} {side}"
            );
            assert_eq!(
                sample(&rows, "wirelab_flows_top_retransmissions", &l),
                d.retransmissions as f64,
                "{f:?} {side}"
            );
        }
    }
    let by_port = |p: u16| -> &FlowReport {
        fin.flows
            .iter()
            .find(|f| port_of(&f.resp_addr) == p)
            .unwrap_or_else(|| panic!("no flow to port {p}: {fin:#?}"))
    };
    let (up, zw, rej) = (by_port(5001), by_port(5002), by_port(5003));
    assert_eq!(up.state, "SF", "{up:?}");
    assert_eq!(zw.state, "RSTO", "{zw:?}");
    assert_eq!(rej.state, "REJ", "{rej:?}");
    // Lost segments are sent again: tshark calls a resend within the handshake RTT of the
    // highest segment out-of-order, a later one a retransmission (so do we, compared below).
    assert!(
        up.orig.retransmissions + up.orig.out_of_order > 0,
        "3 % loss: {up:?}"
    );
    assert!(
        zw.orig.zero_windows > 0 && zw.history.contains('W'),
        "{zw:?}"
    );
    // Payload counts every copy sent: the upload and its retransmissions.
    assert!(up.orig.payload_bytes > UPLOAD as u64, "{up:?}");
    assert!(zw.resp.payload_bytes > 0 && rej.orig.payload_bytes == 0);

    // The same frames, per direction, as tshark counts them in tcpdump's file.
    let t = tshark_frames(&pcap);
    let conv = tshark_conv(&pcap);
    let retx = tshark_count(&pcap, "tcp.analysis.retransmission");
    let ooo = tshark_count(&pcap, "tcp.analysis.out_of_order");
    let zwin = tshark_count(&pcap, "tcp.analysis.zero_window");
    let rst = tshark_count(&pcap, "tcp.flags.reset == 1");
    let syns = tshark_count(&pcap, "tcp.flags.syn == 1 && tcp.flags.ack == 0");
    let mut handshakes: Vec<f64> = vec![];
    for f in &fin.flows {
        let (c, s) = (port_of(&f.orig_addr), port_of(&f.resp_addr));
        let get = |m: &HashMap<(u16, u16), u64>, k| m.get(&k).copied().unwrap_or(0);
        let sides = [(&f.orig, (c, s)), (&f.resp, (s, c))];
        for (d, k) in sides {
            let ctx = format!("flow {c}->{s}, direction {k:?}: {f:?}");
            assert_eq!(d.pkts, get(&t.frames, k), "frames, {ctx}");
            assert_eq!(d.bytes, get(&t.bytes, k), "bytes, {ctx}");
            assert_eq!(d.retransmissions, get(&retx, k), "retransmissions, {ctx}");
            assert_eq!(d.out_of_order, get(&ooo, k), "out of order, {ctx}");
            assert_eq!(d.zero_windows, get(&zwin, k), "zero windows, {ctx}");
            assert_eq!(d.resets, get(&rst, k), "resets, {ctx}");
        }
        assert_eq!(
            f.orig.pkts + f.resp.pkts,
            conv.get(&c).copied().unwrap_or(0),
            "conv,tcp frames of {c}"
        );
        // Handshake RTT: tshark's initial_rtt (from the latest SYN, so a lost SYN's timeout is
        // left out), and within ±10 % of the wan's 40 ms when the SYN was sent once.
        if let Some(h) = f.handshake_rtt_ms {
            let theirs = t.initial_rtt.get(&c).copied().expect("tshark initial_rtt");
            // Within 2 ms (5 % of the RTT): the two take their timestamps at different points
            // (tc and XDP against the packet socket tap), and a busy host can run other
            // work in between.
            assert!((h - theirs).abs() < 2.0, "handshake {h} vs tshark {theirs}");
            if get(&syns, (c, s)) == 1 {
                handshakes.push(h);
            }
        }
    }
    // One sample per flow, each through the wan's engine, which can add to a single packet
    // when the host is busy but never take away: the smallest within ±10 % of the 40 ms the
    // wan adds, none below it by more than 10 % or above it by more than half.
    let least = handshakes.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(
        !handshakes.is_empty(),
        "no flow with a single SYN: {fin:#?}"
    );
    // A host that stalls the VM delays a single packet by its stall (fresh-clone run 5: the
    // least 47.8 ms at 10-20 % steal): then the least within +30 %, none above 2× (the
    // comparison with tshark above stays exact).
    let (tol, high) = (
        bound("least handshake RTT tolerance", 0.1, 0.3),
        bound("highest handshake RTT (× 40 ms)", 1.5, 2.0),
    );
    assert!(
        (least - 2.0 * DELAY_MS).abs() <= tol * 2.0 * DELAY_MS,
        "handshake RTTs {handshakes:.2?} ms: the least should be 40 ms ± {} %",
        tol * 100.0
    );
    assert!(
        handshakes
            .iter()
            .all(|h| (0.9 * 2.0 * DELAY_MS..=high * 2.0 * DELAY_MS).contains(h)),
        "handshake RTTs {handshakes:.2?} ms, expected 36-{} ms",
        high * 2.0 * DELAY_MS
    );
    // Running RTT (pping) of the upload: the client's timestamps echoed by the server.
    let r = up.orig.rtt_ms.expect("running RTT samples");
    assert!(up.orig.rtt_samples >= 20, "{up:?}");
    let tol = bound("running RTT tolerance", 0.1, 0.3);
    assert!(
        (r - 2.0 * DELAY_MS).abs() <= tol * 2.0 * DELAY_MS,
        "running RTT median {r:.2} ms, expected 40 ms ± {} %",
        tol * 100.0
    );
    report_shows_talkers_and_rtt(&rec, &fin, up);
    eprintln!(
        "flows test {:.1}s: upload retx {} ooo {} rtt {r:.2} ms ({} samples), handshake {:?}",
        t0.elapsed().as_secs_f64(),
        up.orig.retransmissions,
        up.orig.out_of_order,
        up.orig.rtt_samples,
        fin.flows
            .iter()
            .map(|f| f.handshake_rtt_ms)
            .collect::<Vec<_>>()
    );
}

/// `wirelab report` on the flows record: the client is the top talker with every flow's bytes,
/// and the upload's running RTT per interval is never below the wan's 40 ms (less 10 %),
/// their median within 10 % of it.
fn report_shows_talkers_and_rtt(rec: &std::path::Path, fin: &FinalLine, up: &FlowReport) {
    let o = ok(wirelab().arg("report").arg(rec));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    eprintln!("{out}");
    assert!(
        out.contains("top talkers") && out.contains("198.18.0.1"),
        "{out}"
    );
    let run = wirelab::report::load(rec, false).unwrap();
    let src = run.sources.iter().find(|s| s.tool == "flows").unwrap();
    let wirelab::report::Typed::Flows(l) = &src.typed else {
        panic!("the flows source is not read as flows lines")
    };
    let talkers = wirelab::report::flows::talkers(l);
    let client = &talkers[0];
    assert_eq!(client.addr, "198.18.0.1", "{talkers:?}");
    assert_eq!(client.flows, 3);
    let sum = |f: fn(&FlowReport) -> u64| fin.flows.iter().map(f).sum::<u64>();
    assert_eq!(client.sent_bytes, sum(|f| f.orig.bytes));
    assert_eq!(client.received_bytes, sum(|f| f.resp.bytes));
    let name = wirelab::report::flows::flow_name(up);
    let points = plotted(src, "flows-rtt", &format!("{name} rtt>"));
    // No interval's RTT is below the wan's 40 ms (less 10 %); their median is 40 ms ± 10 %
    // (one interval's median of few samples can include queueing behind a retransmission).
    let mut ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    assert!(!ys.is_empty());
    assert!(
        ys.iter().all(|y| *y >= 0.9 * 2.0 * DELAY_MS),
        "running RTT per interval {ys:?}"
    );
    ys.sort_by(f64::total_cmp);
    let mid = ys[ys.len() / 2];
    assert!(
        (mid - 2.0 * DELAY_MS).abs() <= 0.1 * 2.0 * DELAY_MS,
        "median of the intervals' running RTT {mid:.2} ms, expected 40 ms ± 10 %: {ys:?}"
    );
}

#[test]
fn a_bad_filter_is_refused_before_anything_is_attached() {
    let e = fails({
        let mut c = wirelab();
        c.args(["flows", "--iface", "lo", "--filter", "tcp port"]);
        c
    });
    assert!(e.contains("port"), "{e}");
}
