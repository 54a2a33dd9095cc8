//! `wirelab fw` with real traffic in a lab: client (198.18.0.1) — wan bridge — server
//! (198.18.0.2, firewall on its eth0). Extra client addresses stand in for other sources.
mod common;
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::*;
use wirelab::fw::{CheckReport, Interval, Line, LogLine, Stats, TableMethod, Verdict};

fn stats(lab: &Lab) -> Stats {
    fw_stats(&lab.ns("server"))
}

/// (packets, dropped) of a rule.
fn rule(s: &Stats, name: &str) -> (u64, u64) {
    let r = s
        .rules
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no rule {name} in {s:?}"));
    (r.counters.packets, r.counters.dropped)
}

/// Ping from a source address; returns replies received.
fn ping(ns: &str, from: &str, to: &str, count: u32, interval: &str) -> u32 {
    let o = in_ns(
        ns,
        &[
            "ping",
            "-n",
            "-q",
            "-I",
            from,
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "1",
            to,
        ],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("received"))
        .unwrap_or_else(|| panic!("ping output: {text} {}", String::from_utf8_lossy(&o.stderr)));
    line.split(',')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// Replies to `count` pings, 0.1 s apart, from client address `from` to server address `to`.
fn pings(lab: &Lab, from: &str, to: &str, count: u32) -> u32 {
    ping(&lab.ns("client"), from, to, count, "0.1")
}

/// Send `rounds` one-byte UDP datagrams from the client (198.18.0.1) to each of `to`, in turn.
fn send_udp(lab: &Lab, to: &[&str], rounds: usize) {
    wirelab::netns::run_in(Some(&lab.ns("client")), || {
        let u = UdpSocket::bind("198.18.0.1:0")?;
        for _ in 0..rounds {
            for dst in to {
                u.send_to(b"x", dst)?;
            }
        }
        Ok(())
    })
    .unwrap();
}

fn add_addr(ns: &str, cidr: &str) {
    let mut args = vec!["ip", "addr", "add", cidr, "dev", "eth0"];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ok(in_ns(ns, &args));
}

#[test]
fn deny_cidr_inside_fails_outside_works() {
    let lab = Lab::up("fwa");
    add_addr(&lab.ns("client"), "198.18.0.200/24");
    let r = "default = \"allow\"\n[[rule]]\nname = \"bad-net\"\naction = \"deny\"\nsrc = \"198.18.0.192/26\"\nlog = true\n";
    let fw = start_fw_rules(&lab.ns("server"), r);
    assert_eq!(pings(&lab, "198.18.0.200", "198.18.0.2", 5), 0);
    assert_eq!(pings(&lab, "198.18.0.1", "198.18.0.2", 5), 5);
    let s = stats(&lab);
    assert_eq!(rule(&s, "bad-net"), (5, 5), "{s:?}");
    assert_eq!(s.malformed.counters.packets, 0);
    // SIGTERM: JSON lines on stdout (start, 5 log samples, final), and nothing left attached.
    let out = fw.terminate();
    let lines: Vec<Line> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("an fw --json line"))
        .collect();
    assert!(matches!(lines[0], Line::Start { .. }), "{lines:?}");
    let logs: Vec<&LogLine> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Log(l) => Some(&**l),
            _ => None,
        })
        .collect();
    assert_eq!(logs.len(), 5, "{lines:?}");
    for l in logs {
        assert_eq!(
            (l.rule.as_str(), l.verdict, l.src.to_string().as_str()),
            ("bad-net", Verdict::Drop, "198.18.0.200")
        );
        assert_eq!(l.icmp_type, 8);
    }
    let Some(Line::Final(last)) = lines.last() else {
        panic!("the last line is not final: {lines:?}")
    };
    assert_eq!(last.rules[0].counters.logged, 5);
    assert!(
        !xdp_attached(&lab.ns("server"), "eth0"),
        "XDP left attached"
    );
}

/// Accept TCP connections on `tcp` in `ns`; count UDP datagrams on `udp` (until dropped).
struct Server {
    udp_count: Arc<Vec<AtomicU64>>,
    _worker: NsWorker,
}

impl Server {
    fn start(ns: &str, tcp: &[u16], udp: &[u16]) -> Self {
        let udp_count = Arc::new(udp.iter().map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let uc = udp_count.clone();
        let (tcp, udp) = (tcp.to_vec(), udp.to_vec());
        let open = move || {
            let ls: Vec<TcpListener> = tcp
                .iter()
                .map(|p| TcpListener::bind(("198.18.0.2", *p)).unwrap())
                .collect();
            let us: Vec<UdpSocket> = udp
                .iter()
                .map(|p| UdpSocket::bind(("0.0.0.0", *p)).unwrap())
                .collect();
            for l in &ls {
                l.set_nonblocking(true).unwrap();
            }
            for u in &us {
                u.set_nonblocking(true).unwrap();
            }
            (ls, us)
        };
        let mut buf = [0u8; 2048];
        let poll = move |(ls, us): &mut (Vec<TcpListener>, Vec<UdpSocket>)| {
            let mut busy = false;
            for l in ls.iter() {
                busy |= l.accept().is_ok();
            }
            for (i, u) in us.iter().enumerate() {
                while u.recv(&mut buf).is_ok() {
                    uc[i].fetch_add(1, Ordering::Relaxed);
                    busy = true;
                }
            }
            busy
        };
        Self {
            udp_count,
            _worker: NsWorker::start(ns, open, poll),
        }
    }
    fn udp(&self, i: usize) -> u64 {
        self.udp_count[i].load(Ordering::Relaxed)
    }
}

fn connects(ns: &str, port: u16) -> bool {
    wirelab::netns::run_in(Some(ns), || {
        let a: SocketAddr = (Ipv4Addr::new(198, 18, 0, 2), port).into();
        Ok(TcpStream::connect_timeout(&a, Duration::from_millis(700)).is_ok())
    })
    .unwrap()
}

#[test]
fn allow_only_ssh_and_icmp() {
    let lab = Lab::up("fwb");
    let r = include_str!("data/fw-ssh-only.toml");
    let srv = Server::start(&lab.ns("server"), &[22, 8080], &[5000]);
    let _fw = start_fw_rules(&lab.ns("server"), r);
    assert!(connects(&lab.ns("client"), 22), "TCP 22 must connect");
    assert!(
        !connects(&lab.ns("client"), 8080),
        "TCP 8080 must be dropped"
    );
    assert_eq!(pings(&lab, "198.18.0.1", "198.18.0.2", 3), 3);
    let default_dropped = |s: &Stats| s.default.counters.dropped;
    let before = default_dropped(&stats(&lab));
    send_udp(&lab, &["198.18.0.2:5000"], 5);
    // Once the firewall has judged the datagrams, none may have reached the server.
    eventually(Duration::from_secs(5), || {
        default_dropped(&stats(&lab)) >= before + 5
    });
    assert_eq!(srv.udp(0), 0, "UDP must be dropped");
    let s = stats(&lab);
    assert!(rule(&s, "ssh").0 >= 3, "{s:?}"); // SYN, ACK, FIN...
    assert_eq!(rule(&s, "ssh").1, 0);
    // 3 echo requests plus the client's own ICMPv6 (neighbour discovery, MLD).
    assert!(rule(&s, "icmp").0 >= 3, "{s:?}");
    assert_eq!(rule(&s, "icmp").1, 0);
    // SYNs to 8080 (with retries) and the 5 datagrams, all dropped by the default policy.
    assert!(s.default.counters.dropped >= 6, "{s:?}");
    assert_eq!(s.default.counters.packets, s.default.counters.dropped);
    // ARP got through (non-IP allowed): the connections above needed it.
    assert!(s.non_ip.counters.packets >= 1, "{s:?}");
}

#[test]
fn rate_limit_icmp_per_source() {
    let lab = Lab::up("fwc");
    add_addr(&lab.ns("client"), "198.18.0.50/24");
    let r = include_str!("data/fw-icmp-rate-limit.toml");
    let _fw = start_fw_rules(&lab.ns("server"), r);
    // Two sources flood at 100 pps each for 3 s, at the same time.
    let t0 = Instant::now();
    let ns = lab.ns("client");
    let ns2 = ns.clone();
    let other = std::thread::spawn(move || ping(&ns2, "198.18.0.50", "198.18.0.2", 300, "0.01"));
    let got = ping(&ns, "198.18.0.1", "198.18.0.2", 300, "0.01");
    let got2 = other.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let s = stats(&lab);
    let (pk, dr) = rule(&s, "icmp-10pps");
    assert_eq!(pk, 600, "{s:?}");
    let passed = pk - dr;
    // Each source: a burst of 10, then 10/s for the flood's duration (~3 s): ~40.
    let expect = 2.0 * (10.0 + 10.0 * secs);
    eprintln!("flood {secs:.2}s: passed {passed} (expected {expect:.0}), replies {got} + {got2}");
    assert!(
        (passed as f64) >= expect * 0.8 && (passed as f64) <= expect * 1.2 + 2.0,
        "passed {passed}, expected {expect:.0} ± 20%"
    );
    // Each source got its own share (the offered load is ~100 pps per source, less if the
    // machine is busy: ping's 10 ms interval stretches; the expectation uses the real time).
    for g in [got, got2] {
        let e = expect / 2.0;
        assert!(
            (g as f64) >= e * 0.8 && (g as f64) <= e * 1.2 + 1.0,
            "replies per source {got} {got2}, expected {e:.0} each"
        );
    }
    assert_eq!((got + got2) as u64, passed);
}

#[test]
fn ipv6_rule() {
    // IPv6 benchmarking prefix 2001:2::/48 (RFC 5180), the IPv6 sibling of 198.18.0.0/15.
    let lab = Lab::up("fwd");
    add_addr(&lab.ns("client"), "2001:2::1/64");
    add_addr(&lab.ns("client"), "2001:2::3/64");
    add_addr(&lab.ns("server"), "2001:2::2/64");
    let r = include_str!("data/fw-deny-v6-host.toml");
    let _fw = start_fw_rules(&lab.ns("server"), r);
    assert_eq!(pings(&lab, "2001:2::3", "2001:2::2", 3), 3);
    assert_eq!(pings(&lab, "2001:2::1", "2001:2::2", 3), 0);
    let s = stats(&lab);
    assert_eq!(rule(&s, "deny-v6-host"), (3, 3), "{s:?}");
}

const RELOAD_A: &str = include_str!("data/fw-reload-a.toml");

const RELOAD_B: &str = include_str!("data/fw-reload-b.toml");

#[test]
fn reload_under_traffic_is_lossless_and_tight() {
    let lab = Lab::up("fwe");
    let d = TempDir::new("wirelab-fw-test-");
    let a = d.file("a.toml", RELOAD_A);
    let b = d.file("b.toml", RELOAD_B);
    let srv = Server::start(&lab.ns("server"), &[], &[7000, 7001]);
    let _fw = start_fw(&lab.ns("server"), &a);
    // Probes: 3000 allowed (7000) and 3000 denied (7001) datagrams at ~2000 pps in total.
    let ns = lab.ns("client");
    let sender = std::thread::spawn(move || {
        wirelab::netns::run_in(Some(&ns), || {
            let u = UdpSocket::bind("198.18.0.1:0")?;
            let t0 = Instant::now();
            for i in 0..3000u64 {
                u.send_to(&i.to_be_bytes(), "198.18.0.2:7000")?;
                u.send_to(&i.to_be_bytes(), "198.18.0.2:7001")?;
                let due = Duration::from_micros(1000 * (i + 1));
                if let Some(w) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(w);
                }
            }
            Ok(())
        })
        .unwrap();
    });
    let mut reloads = 0;
    while !sender.is_finished() {
        let f = if reloads % 2 == 0 { &b } else { &a };
        let mut c = wirelab();
        c.args(["fw", "reload", "--netns", &lab.ns("server"), "--rules"])
            .arg(f);
        ok(c);
        reloads += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    sender.join().unwrap();
    eventually(Duration::from_secs(5), || srv.udp(0) >= 3000);
    eprintln!("{reloads} reloads during the probe run");
    assert!(reloads >= 5, "only {reloads} reloads happened");
    assert_eq!(srv.udp(0), 3000, "allowed probes lost across reloads");
    assert_eq!(srv.udp(1), 0, "denied probes passed during a reload");
    let s = stats(&lab);
    assert_eq!(s.reloads, reloads, "{s:?}");
    // icmp persisted through every reload; its counter (0 here) never reset to garbage.
    assert_eq!(rule(&s, "icmp"), (0, 0));
}

#[test]
fn bad_reload_keeps_old_rules_and_kill9_leaves_nothing() {
    let lab = Lab::up("fwf");
    let d = TempDir::new("wirelab-fw-test-");
    let a = d.file("a.toml", RELOAD_A);
    let bad = d.file(
        "bad.toml",
        "default = \"allow\"\n[[rule]]\nname = \"oops\"\naction = \"allow\"\nproto = \"udp\"\ndst_port = \"9000-80\"\n",
    );
    let srv = Server::start(&lab.ns("server"), &[], &[7000, 7001]);
    let mut fw = start_fw(&lab.ns("server"), &a);
    let g0 = stats(&lab).generation;
    let err = fails(
        wirelab()
            .args(["fw", "reload", "--netns", &lab.ns("server"), "--rules"])
            .arg(&bad),
    );
    assert!(
        err.contains("\"oops\"") && err.contains("dst_port") && err.contains("empty"),
        "{err}"
    );
    // The running firewall also refuses it itself when sent directly (no client check).
    let s = stats(&lab);
    assert_eq!(s.generation, g0);
    assert_eq!(s.reloads, 0);
    send_udp(&lab, &["198.18.0.2:7000", "198.18.0.2:7001"], 20);
    // In order: once the last allowed datagram is in, every denied one has been judged.
    eventually(Duration::from_secs(5), || srv.udp(0) >= 20);
    assert_eq!(
        (srv.udp(0), srv.udp(1)),
        (20, 0),
        "old rules must stay in force"
    );
    // kill -9: the bpf_link and the abstract control socket die with the process.
    let child = fw.child_mut();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();
    assert!(
        !xdp_attached(&lab.ns("server"), "eth0"),
        "XDP left attached"
    );
    let o = wirelab()
        .args(["fw", "stats", "--netns", &lab.ns("server")])
        .output()
        .unwrap();
    assert!(!o.status.success(), "control socket survived kill -9");
    send_udp(&lab, &["198.18.0.2:7001"], 1);
    eventually(Duration::from_secs(5), || srv.udp(1) >= 1);
    assert_eq!(srv.udp(1), 1, "nothing filters after kill -9");
    // And a new firewall can start on the same interface right away.
    let _fw2 = start_fw(&lab.ns("server"), &a);
}

#[test]
fn cleanup_removes_namespaces_of_a_killed_bench() {
    require_privileges();
    // A pid that is certainly gone: a child we started and reaped.
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    let ns = format!("wlb{pid}-tx");
    ok(std::process::Command::new("ip").args(["netns", "add", &ns]));
    let o = ok(wirelab().args(["cleanup", "--json"]));
    let v: wirelab::cleanup::Report = serde_json::from_slice(&o.stdout).expect("cleanup --json");
    let gone = !namespaces().contains(&ns);
    if !gone {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .status();
    }
    assert!(gone, "{v:?}");
    assert!(v.bench_namespaces_removed.contains(&ns), "{v:?}");
}

#[test]
fn record_series_counts_rule_hits_and_reports() {
    let lab = Lab::up("fwr");
    let dir = TempDir::new("wlfwrec");
    let rules = dir.file(
        "rules.toml",
        "default = \"allow\"\n[[rule]]\nname = \"no-ping\"\naction = \"deny\"\nproto = \"icmp\"\nsrc = \"198.18.0.1/32\"\n",
    );
    let rec = dir.join("run");
    let mut c = wirelab();
    c.args(cli::on_iface("fw", &lab.ns("server"), "eth0"));
    c.arg("--rules").arg(&rules);
    c.args(["--interval", "200ms", "--duration", "8s", "--record"]);
    c.arg(&rec);
    c.args(["--metrics", "127.0.0.1:0"]);
    let bg = spawn_ready(c, "fw attached", Duration::from_secs(20));
    let addr = tcp_listen_addr(bg.pid());
    let metric = |rows: &[MetricSample], name: &str, rule: &str| {
        sample(rows, name, &[("iface", "eth0"), ("rule", rule)])
    };
    let reloads =
        |rows: &[MetricSample]| sample(rows, "wirelab_fw_reloads_total", &[("iface", "eth0")]);
    let before = parse_openmetrics(&scrape(&addr).1);
    assert_eq!(
        metric(&before, "wirelab_fw_dropped_packets_total", "no-ping"),
        0.0
    );
    pings(&lab, "198.18.0.1", "198.18.0.2", 8);
    // The metrics follow within an interval (200 ms): 8 echo requests denied by the rule,
    // the replies' absence costs nothing, the client's other traffic goes to the default.
    eventually(Duration::from_secs(5), || {
        let rows = parse_openmetrics(&scrape(&addr).1);
        metric(&rows, "wirelab_fw_dropped_packets_total", "no-ping") >= 8.0
    });
    let (head, body) = scrape(&addr);
    assert!(head.contains("openmetrics-text"), "{head}");
    let after = parse_openmetrics(&body);
    assert_eq!(metric(&after, "wirelab_fw_packets_total", "no-ping"), 8.0);
    assert_eq!(
        metric(&after, "wirelab_fw_dropped_packets_total", "no-ping"),
        8.0
    );
    assert_eq!(
        metric(&after, "wirelab_fw_bytes_total", "no-ping"),
        8.0 * 98.0
    );
    assert_eq!(
        metric(&after, "wirelab_fw_dropped_packets_total", "(default)"),
        0.0
    );
    assert_eq!(reloads(&after), 0.0);
    // A rule removed by a reload loses its series; added back, it starts a new one at 0.
    let other = dir.file(
        "other.toml",
        "default = \"allow\"\n[[rule]]\nname = \"other\"\naction = \"deny\"\nproto = \"icmp\"\nsrc = \"198.18.0.1/32\"\n",
    );
    // Reload `f` as the `n`th reload; the metrics once they show it (the same snapshot as the
    // rule series).
    let reload = |f: &std::path::Path, n: f64| {
        ok(wirelab()
            .args(["fw", "reload", "--netns", &lab.ns("server"), "--rules"])
            .arg(f));
        eventually(Duration::from_secs(5), || {
            reloads(&parse_openmetrics(&scrape(&addr).1)) >= n
        });
        parse_openmetrics(&scrape(&addr).1)
    };
    let rows = reload(&other, 1.0);
    assert!(
        rows.iter().all(|r| r.label("rule") != Some("no-ping")),
        "removed rule still exported"
    );
    assert_eq!(metric(&rows, "wirelab_fw_packets_total", "other"), 0.0);
    let rows = reload(&rules, 2.0);
    assert_eq!(metric(&rows, "wirelab_fw_packets_total", "no-ping"), 0.0);
    assert_eq!(reloads(&rows), 2.0);
    let st = bg.wait(Duration::from_secs(60)).unwrap();
    assert!(st.success(), "fw exit {:?}", st.status);
    // Every denied echo request is in the per-interval hits of its rule, and in the drops.
    let series = std::fs::read_to_string(rec.join("fw.series.jsonl")).unwrap();
    let lines: Vec<Interval> = series
        .lines()
        .map(|l| serde_json::from_str(l).expect("an fw series line"))
        .collect();
    assert!(lines.len() >= 5, "{} lines", lines.len());
    let hits: u64 = lines
        .iter()
        // (absent from the lines while the rule was reloaded away)
        .map(|l| l.hits.get("no-ping").copied().unwrap_or(0))
        .sum();
    let dropped: u64 = lines.iter().map(|l| l.dropped).sum();
    assert_eq!(hits, 8, "{series}");
    assert_eq!(dropped, 8, "{series}");
    let o = ok(wirelab().arg("report").arg(&rec));
    assert!(String::from_utf8_lossy(&o.stdout).contains("report.html"));
    assert!(rec.join("report-plots/fw-hits.svg").exists());
    assert!(rec.join("report-plots/fw-verdicts.svg").exists());
}

#[test]
fn check_shows_the_lookup_plan_and_refuses_bad_files() {
    let dir = TempDir::new("wlfwchk");
    // A /24 among /25s: expanded to /25s, one probe; a /64 and a /128 (IPv6): two probes.
    let good = dir.file(
        "good.toml",
        "default = \"allow\"\n[[rule]]\nname = \"b\"\naction = \"deny\"\nsrc = [\"198.18.0.0/25\", \"198.18.1.0/24\", \"2001:2::/64\", \"2001:2:0:1::1\"]\n",
    );
    let o = ok(wirelab()
        .args(["fw", "check", "--json", "--rules"])
        .arg(&good));
    let v: CheckReport = serde_json::from_slice(&o.stdout).expect("fw check --json");
    let l = &v.lookup;
    assert_eq!(
        (l.src4.method, l.src4.lengths.as_slice(), l.src4.entries),
        (TableMethod::Hash, &[25u8][..], 3),
        "{v:?}"
    );
    assert_eq!(l.src6.lengths, [128, 64], "{v:?}");
    assert_eq!(l.dst4.method, TableMethod::Empty, "{v:?}");
    let bad = dir.file(
        "bad.toml",
        "default = \"allow\"\n[[rule]]\nname = \"b\"\naction = \"deny\"\nsrc = \"198.18.0.0/33\"\n",
    );
    let err = fails(wirelab().args(["fw", "check", "--rules"]).arg(&bad));
    assert!(err.contains("rule[0]") || err.contains("\"b\""), "{err}");
    assert!(err.contains("src"), "{err}");
}

/// Total packets the firewall has judged (every counter).
fn judged(s: &Stats) -> u64 {
    s.rows().iter().map(|(_, _, c)| c.packets).sum()
}

/// TCP SYN frames from the client's MAC to the server's, IPv4 or IPv6.
struct Syn {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

impl Syn {
    fn v4(&self, src: [u8; 4], dport: u16) -> Vec<u8> {
        let dst = [198, 18, 0, 2];
        common::frames::tcp_syn(self.src_mac, self.dst_mac, src.into(), dst.into(), dport)
    }

    fn v6(&self, src: &str, dport: u16) -> Vec<u8> {
        let (src, dst) = (src.parse().unwrap(), "2001:2::2".parse().unwrap());
        common::frames::tcp_syn(self.src_mac, self.dst_mac, src, dst, dport)
    }
}

/// The bypass of the hardening issue, live: TCP SYNs wrapped in every VLAN stack (0 to 4 tags
/// and one more than the parser walks; VLAN 0 and not; an 802.1ad outer tag; IPv4 and IPv6),
/// sent raw from the client through the lab's bridge to the firewalled server. The server's
/// TCP stack must see no denied SYN, whatever the wrapping; an allowed SYN in a priority-tag
/// wrapping still reaches it (the kernel pops those tags).
#[test]
fn vlan_wrapped_syns_never_reach_a_denied_port() {
    use wirelab_common::parse::MAX_VLAN_TAGS;
    let lab = Lab::up("fwv");
    let (client, server) = (lab.ns("client"), lab.ns("server"));
    add_addr(&client, "2001:2::1/64");
    add_addr(&server, "2001:2::2/64");
    let r = "default = \"allow\"\n\
         [[rule]]\nname = \"no-ssh\"\naction = \"deny\"\nproto = \"tcp\"\ndst_port = 22\n\
         [[rule]]\nname = \"bad-src\"\naction = \"deny\"\nsrc = [\"198.18.0.200\", \"2001:2::bad\"]\n";
    let _fw = start_fw_rules(&server, r);
    let syn = Syn {
        src_mac: mac_of(&client, "eth0"),
        dst_mac: mac_of(&server, "eth0"),
    };
    let denied = [
        syn.v4([198, 18, 0, 1], 22),
        syn.v4([198, 18, 0, 200], 23),
        syn.v6("2001:2::1", 22),
        syn.v6("2001:2::bad", 23),
    ];
    let allowed = syn.v4([198, 18, 0, 1], 23);
    let mut wrappings = common::frames::vlan_wrappings(4);
    wrappings.push((
        format!("{} x 802.1Q VLAN 0", MAX_VLAN_TAGS + 1),
        vec![(0x8100, 0); MAX_VLAN_TAGS + 1],
    ));
    let mut table = vec![];
    for (wrap, tags) in &wrappings {
        let before_s = stats(&lab);
        let before = tcp_in_segs(&server);
        let mut frames: Vec<Vec<u8>> = denied
            .iter()
            .map(|f| common::frames::vlan_wrap(f, tags))
            .collect();
        frames.push(common::frames::vlan_wrap(&allowed, tags));
        // A plain allowed SYN last: once the stack has counted it and the firewall has judged
        // every frame, everything before it has been through.
        frames.push(allowed.clone());
        send_raw(&client, "eth0", &frames);
        let n = frames.len() as u64;
        let ok = eventually(Duration::from_secs(10), || {
            judged(&stats(&lab)) >= judged(&before_s) + n && tcp_in_segs(&server) > before
        });
        assert!(ok, "{wrap}: the frames never arrived");
        let s = stats(&lab);
        let seen = tcp_in_segs(&server) - before - 1;
        let priority_only = tags.iter().all(|(_, tci)| tci & 0x0fff == 0);
        let within = tags.len() <= MAX_VLAN_TAGS;
        // At most the allowed wrapped SYN may have reached the stack: never a denied one.
        assert!(
            seen <= 1,
            "{wrap}: the server's stack saw {seen} wrapped SYNs: {s:?}"
        );
        if priority_only && within {
            assert_eq!(seen, 1, "{wrap}: the allowed SYN did not arrive");
        }
        if tags.iter().any(|(_, tci)| tci & 0x0fff != 0) {
            assert_eq!(seen, 0, "{wrap}: a frame with a VLAN ID reached the stack");
        }
        let moved = |name: &str| rule(&s, name).1 - rule(&before_s, name).1;
        let verdict = if within {
            assert_eq!((moved("no-ssh"), moved("bad-src")), (2, 2), "{wrap}: {s:?}");
            "denied by its rule"
        } else {
            // Deeper than the parser walks: malformed (default deny), never non-IP. (Through
            // the bridge the outer tag may travel as metadata, so the program may see one tag
            // fewer and judge the packet by its rule instead: denied either way.)
            let malformed = s.malformed.counters.dropped - before_s.malformed.counters.dropped;
            assert!(
                moved("no-ssh") + moved("bad-src") + malformed >= 4,
                "{wrap}: not every denied SYN was dropped: {s:?}"
            );
            "malformed, or denied by its rule"
        };
        table.push(format!(
            "{wrap}: denied SYNs {verdict}; allowed SYN reached the stack: {}",
            seen == 1
        ));
    }
    eprintln!("{}", table.join("\n"));
}
