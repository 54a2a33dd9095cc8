//! `wirelab lb` in a real lab: a client, the balancer and three backends on one bridge.
//! The backends hold the VIP on `lo` (arp_ignore=1, arp_announce=2) and answer each TCP
//! connection with their name; the client connects to VIP:80 through the balancer, which
//! sends each flow to a backend by MAC (DSR), and the replies go straight back to the client.
//! Checked: every connection answered, the spread across equal weights, the balancer's own
//! counters, and that kill -9 leaves nothing attached.
mod common;
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use common::{eventually, spawn_ready, tcx_ingress_count, wirelab, Lab, TempDir};
use serde::Deserialize;

const VIP: &str = "198.18.1.100";
const PORT: u16 = 80;
const BACKENDS: [(&str, &str); 3] = [
    ("b1", "198.18.0.21"),
    ("b2", "198.18.0.22"),
    ("b3", "198.18.0.23"),
];
const CONNECTIONS: usize = 3000;

const TOPOLOGY: &str = include_str!("../../docs/examples/lb-lab.toml");

/// Backend MACs are left out: `wirelab lb` resolves them through ARP.
const CONFIG: &str = include_str!("../../docs/examples/lb.toml");

/// A TCP server on VIP:80 inside `ns` answering every connection with `name`, until `stop`.
fn serve(ns: String, name: &'static str, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        wirelab::netns::run_in(Some(&ns), || {
            let l = TcpListener::bind((VIP, PORT))?;
            l.set_nonblocking(true)?;
            tx.send(()).ok();
            let mut served = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false)?;
                        let _ = s.write_all(name.as_bytes());
                        served += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(served)
        })
        .expect("backend server")
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("backend server listening");
    h
}

/// `n` connections to VIP:80 from the client namespace: answers by backend name, and how
/// many got none.
fn connect_many(ns: &str, n: usize) -> (BTreeMap<String, usize>, usize) {
    wirelab::netns::run_in(Some(ns), || {
        let to: SocketAddr = format!("{VIP}:{PORT}").parse()?;
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        let mut failed = 0;
        for _ in 0..n {
            let answer = (|| -> std::io::Result<String> {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut a = String::new();
                s.read_to_string(&mut a)?;
                Ok(a)
            })();
            match answer {
                Ok(a) if !a.is_empty() => *per.entry(a).or_default() += 1,
                _ => failed += 1,
            }
        }
        Ok((per, failed))
    })
    .expect("client")
}

#[derive(Deserialize)]
struct Count {
    packets: u64,
    new_flows: u64,
    drops: u64,
}

#[derive(Deserialize)]
struct BackendLine {
    name: String,
    #[serde(flatten)]
    count: Count,
}

#[derive(Deserialize)]
struct ServiceLine {
    #[serde(flatten)]
    count: Count,
    backends: Vec<BackendLine>,
}

#[derive(Deserialize)]
struct Events {
    drop_error: u64,
    drop_no_backend: u64,
}

#[derive(Deserialize)]
struct FinalLine {
    r#type: String,
    path: String,
    attach: String,
    services: Vec<ServiceLine>,
    events: Events,
}

#[test]
fn dsr_spreads_real_connections_and_kill_9_leaves_nothing_attached() {
    let dir = TempDir::new("lb");
    let topo = dir.file("lb-lab.toml", TOPOLOGY);
    let config = dir.file("lb.toml", CONFIG);
    let lab = Lab::up_with("lb", Some(&topo));
    for (b, _) in BACKENDS {
        common::ok(common::in_ns(
            &lab.ns(b),
            &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"],
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = BACKENDS
        .iter()
        .map(|(b, _)| serve(lab.ns(b), b, stop.clone()))
        .collect();
    let lb_ns = lab.ns("lb");
    let client_ns = lab.ns("client");

    // Without the balancer nothing answers on the VIP.
    let (per, failed) = connect_many(&client_ns, 1);
    assert_eq!(
        (per.len(), failed),
        (0, 1),
        "no balancer, no answer: {per:?}"
    );

    let mut c = wirelab();
    c.args(["lb", "--netns", &lb_ns, "--iface", "eth0", "--config"])
        .arg(&config)
        .args(["--json", "--interval", "1s"]);
    let bg = spawn_ready(c, "lb attached", Duration::from_secs(30));
    assert_eq!(tcx_ingress_count(&lb_ns, "eth0"), 1);

    let t0 = std::time::Instant::now();
    let (per, failed) = connect_many(&client_ns, CONNECTIONS);
    let secs = t0.elapsed().as_secs_f64();
    let stopped = bg.terminate();
    eprintln!("tc path: {CONNECTIONS} connections in {secs:.2}s: answers {per:?}, failed {failed}");
    assert_eq!(failed, 0, "every connection answered: {per:?}");
    assert_eq!(per.values().sum::<usize>(), CONNECTIONS);
    for (b, _) in BACKENDS {
        let n = per.get(b).copied().unwrap_or(0);
        let pct = 100.0 * n as f64 / CONNECTIONS as f64;
        // Equal weights: 33.3% each. ±5 points is about 5.8 standard deviations of a fair
        // three-way split at 3,000 connections (0.86 points).
        assert!(
            (100.0 / 3.0 - pct).abs() <= 5.0,
            "{b}: {n} of {CONNECTIONS} ({pct:.1}%): {per:?}"
        );
    }

    // The balancer's own account: every connection a new flow, on the backend that answered.
    let text = stopped.text();
    let fin: FinalLine = text
        .lines()
        .filter_map(|l| serde_json::from_str::<FinalLine>(l).ok())
        .find(|f| f.r#type == "final")
        .unwrap_or_else(|| panic!("no final line in {text}"));
    assert_eq!((fin.path.as_str(), fin.attach.as_str()), ("tc", "tcx"));
    let web = &fin.services[0];
    assert_eq!(
        web.count.new_flows, CONNECTIONS as u64,
        "one new flow per connection"
    );
    assert!(
        web.count.packets >= 3 * CONNECTIONS as u64,
        "SYN, ACK, FIN at least"
    );
    assert_eq!(web.count.drops, 0);
    assert_eq!((fin.events.drop_error, fin.events.drop_no_backend), (0, 0));
    for b in &web.backends {
        assert_eq!(
            b.count.new_flows as usize,
            per.get(&b.name).copied().unwrap_or(0),
            "{}: flows sent = connections answered",
            b.name
        );
    }
    assert_eq!(
        tcx_ingress_count(&lb_ns, "eth0"),
        0,
        "a clean stop detaches"
    );

    // kill -9: the TCX link goes with the process.
    let mut c = wirelab();
    c.args(["lb", "--netns", &lb_ns, "--iface", "eth0", "--config"])
        .arg(&config);
    let bg = spawn_ready(c, "lb attached", Duration::from_secs(30));
    assert_eq!(tcx_ingress_count(&lb_ns, "eth0"), 1);
    bg.kill();
    assert!(
        eventually(Duration::from_secs(5), || tcx_ingress_count(&lb_ns, "eth0")
            == 0),
        "kill -9 left a program attached"
    );
    let ip = common::ok(common::in_ns(
        &lb_ns,
        &["tc", "filter", "show", "dev", "eth0", "ingress"],
    ));
    assert!(
        String::from_utf8_lossy(&ip.stdout).trim().is_empty(),
        "no clsact filter either"
    );
    let answered = CONNECTIONS;
    stop.store(true, Ordering::Relaxed);
    let served: u64 = servers.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(
        served, answered as u64,
        "the servers saw exactly the answered connections"
    );
}

#[test]
fn check_prints_the_shares_and_bad_configs_are_refused_before_attaching() {
    common::require_privileges();
    let dir = TempDir::new("lbcheck");
    let good = dir.file(
        "lb.toml",
        &CONFIG.replace("seed = 1", "seed = 1\ntable_size = 251"),
    );
    let o = common::ok(wirelab().args(["lb", "check", "--config"]).arg(&good));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("198.18.1.100:80/tcp") && text.contains("M = 251"),
        "{text}"
    );
    for b in ["b1", "b2", "b3"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(b)),
            "{text}"
        );
    }
    let nat = dir.file(
        "nat.toml",
        &CONFIG.replace("seed = 1", "seed = 1\nmode = \"nat\""),
    );
    let e = common::fails(wirelab().args(["lb", "check", "--config"]).arg(&nat));
    assert!(
        e.contains("service[0].mode") && e.contains("not implemented yet"),
        "{e}"
    );
    let bad = dir.file(
        "bad.toml",
        &CONFIG.replace("name = \"b3\"", "name = \"b3\"\nweight = -2"),
    );
    // Refused before anything is attached (no namespace or interface is even needed).
    let e = common::fails(
        wirelab()
            .args(["lb", "--iface", "nonexistent0", "--config"])
            .arg(&bad),
    );
    assert!(e.contains("service[0].backend[2].weight"), "{e}");
}
