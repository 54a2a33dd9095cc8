//! `wirelab swarm` end to end in the default lab: client and server on one L2 segment, the wan
//! host bridging. Real peers (Samba's smbd, kernel sockets), unmodified client programs.
mod common;
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use serde::de::DeserializeOwned;
use wirelab::{
    cleanup,
    record::Stamped,
    swarm::{
        client_mac,
        connect::{ConnectSample, ConnectSummary},
        run::{Sample, Summary},
        Pool, CGROUP_PREFIX, STATE_DIR,
    },
};
use wirelab_testkit::samba::Samba;

const SERVER: &str = "198.18.0.2";

/// Held for writing while the kill -9 test has a dead run's leftovers on purpose.
static KILL9: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A command's `--json` stdout as the tool's own type.
fn json_of<T: DeserializeOwned>(o: &std::process::Output) -> T {
    let s = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(s.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {s}\nstderr: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// Route the pool to the segment on the server, deepen its accept queue, and raise the
/// host's neighbour limits for `n` clients.
fn prepare_server(lab: &Lab, pool: &str, n: u32) -> NeighLimits {
    let ns = lab.ns("server");
    ok(in_ns(&ns, &["ip", "route", "add", pool, "dev", "eth0"]));
    ok(in_ns(&ns, &["sysctl", "-qw", "net.core.somaxconn=8192"]));
    NeighLimits::raise(n)
}

/// Server neighbour table: IP -> MAC for addresses of `pool`.
fn server_neighbours(lab: &Lab, pool: &Pool) -> BTreeMap<Ipv4Addr, String> {
    let o = ok(in_ns(
        &lab.ns("server"),
        &["ip", "-4", "neigh", "show", "dev", "eth0"],
    ));
    let mut m = BTreeMap::new();
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(ip), Some(pos)) = (
            f.first().and_then(|s| s.parse::<Ipv4Addr>().ok()),
            f.iter().position(|x| *x == "lladdr"),
        ) else {
            continue;
        };
        if pool.contains(ip) {
            if let Some(mac) = f.get(pos + 1) {
                m.insert(ip, mac.to_string());
            }
        }
    }
    m
}

/// Nothing of a finished run may remain: no swarm cgroup of a dead process, no state file of
/// a dead process, no AnyIP route, interface not promiscuous.
fn assert_clean(lab: &Lab, pool: &str) {
    // The kill -9 test leaves a dead run behind on purpose for a moment.
    let _g = KILL9.read().unwrap_or_else(|e| e.into_inner());
    let root = wirelab::swarm::cgroup::root_no_mount().expect("cgroup2");
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(rest) = name.strip_prefix(CGROUP_PREFIX) {
            let pid = rest.split('-').next().unwrap_or("");
            assert!(
                Path::new(&format!("/proc/{pid}")).exists(),
                "leftover cgroup {name}"
            );
        }
    }
    for s in wirelab::swarm::read_states() {
        assert!(
            Path::new(&format!("/proc/{}", s.pid)).exists(),
            "leftover state file {STATE_DIR}/{}.json",
            s.run_id
        );
    }
    let o = ok(in_ns(
        &lab.ns("client"),
        &["ip", "route", "show", "table", "local"],
    ));
    let routes = String::from_utf8_lossy(&o.stdout);
    assert!(!routes.contains(pool), "route left behind: {routes}");
    let o = ok(in_ns(&lab.ns("client"), &["ip", "link", "show", "eth0"]));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("PROMISC"),
        "eth0 left promiscuous"
    );
}

fn swarm(lab: &Lab, sub: &str, pool: &str, clients: u32) -> std::process::Command {
    let mut c = swarm_on(lab, sub, "eth0", pool, clients);
    c.args(["--server-netns", &lab.ns("server"), "--json"]);
    c
}

/// `wirelab swarm SUB` on `iface` of the lab's client, with `clients` clients from `pool`.
fn swarm_on(lab: &Lab, sub: &str, iface: &str, pool: &str, clients: u32) -> std::process::Command {
    let mut c = wirelab();
    c.args(["swarm", sub, "--netns", &lab.ns("client"), "--iface", iface]);
    c.args(["--pool", pool, "--clients", &clients.to_string()]);
    c
}

#[test]
fn samba_300_clients_each_with_own_ip_and_mac() {
    let lab = Lab::up("sws");
    let pool_s = "198.18.4.0/22";
    let pool = Pool::parse(pool_s).unwrap();
    let _limits = prepare_server(&lab, pool_s, 300);
    let smb = Samba::start(&lab.ns("server"), SERVER);
    let out_dir = TempDir::new("wl-swout");
    let out = out_dir.0.clone();
    let o = swarm(&lab, "run", pool_s, 300)
        .args(["--concurrency", "24", "--timeout", "60s", "--out"])
        .arg(&out)
        .args([
            "--",
            "smbclient",
            &format!("//{SERVER}/share"),
            "-N",
            "-c",
            "ls",
        ])
        .output()
        .unwrap();
    let v: Summary = json_of(&o);
    assert!(
        o.status.success(),
        "swarm run failed: {v:?}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(v.run, 300, "{v:?}");
    assert_eq!(v.succeeded, 300, "{v:?}");
    assert_eq!(v.failed, 0, "{v:?}");
    // Every client listed the share (its stdout has the file).
    let listed = (0..300)
        .filter(|n| {
            std::fs::read_to_string(out.join(format!("client-{n}.out")))
                .unwrap_or_default()
                .contains("hello.txt")
        })
        .count();
    assert_eq!(listed, 300);
    // Samba's own view: one log per client machine, named by its IP.
    let want: BTreeSet<Ipv4Addr> = (0..300).map(|n| pool.addr(n)).collect();
    let seen: BTreeSet<Ipv4Addr> = smb
        .client_ips()
        .into_iter()
        .filter(|ip| pool.contains(*ip))
        .collect();
    assert_eq!(
        seen.len(),
        300,
        "Samba saw {} distinct client IPs",
        seen.len()
    );
    assert_eq!(seen, want);
    // The server's neighbour table: 300 distinct MACs, each the derivation of its IP.
    let neigh = server_neighbours(&lab, &pool);
    let macs: HashSet<&String> = neigh.values().collect();
    assert_eq!(neigh.len(), 300, "neighbour entries: {neigh:?}");
    assert_eq!(macs.len(), 300);
    for (ip, mac) in &neigh {
        assert_eq!(*mac, client_mac([0x02, 0x57], *ip), "MAC of {ip}");
    }
    assert_clean(&lab, pool_s);
}

/// A receiver thread in the server namespace collecting (source IP, payload) of datagrams.
fn udp_receiver(
    ns: String,
    port: u16,
    until: Duration,
) -> std::thread::JoinHandle<Vec<(Ipv4Addr, String)>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        wirelab::netns::run_in(Some(&ns), || {
            let s = UdpSocket::bind((SERVER, port))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            let _ = tx.send(());
            let mut got = vec![];
            let t0 = Instant::now();
            let mut buf = [0u8; 512];
            while t0.elapsed() < until {
                if let Ok((n, std::net::SocketAddr::V4(a))) = s.recv_from(&mut buf) {
                    got.push((
                        *a.ip(),
                        String::from_utf8_lossy(&buf[..n]).trim().to_string(),
                    ));
                }
            }
            Ok(got)
        })
        .unwrap()
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("udp receiver up");
    h
}

#[test]
fn unconnected_udp_gets_each_clients_source() {
    let lab = Lab::up("swu");
    // A pool inside the segment's own /24: no server route needed.
    let pool_s = "198.18.0.64/26";
    let pool = Pool::parse(pool_s).unwrap();
    let rx = udp_receiver(lab.ns("server"), 9100, Duration::from_secs(8));
    let dir = TempDir::new("wlswrec");
    let rec = dir.join("run");
    // socat's UDP-SENDTO sends with sendto() on an unconnected socket.
    let o = swarm(&lab, "run", pool_s, 20)
        .args(["--concurrency", "10", "--timeout", "10s", "--record"])
        .arg(&rec)
        .arg("--")
        .args([
            "sh",
            "-c",
            &format!("echo {{n}} | socat -u - UDP-SENDTO:{SERVER}:9100"),
        ])
        .output()
        .unwrap();
    let v: Summary = json_of(&o);
    assert!(o.status.success(), "{v:?}");
    assert_eq!(v.succeeded, 20, "{v:?}");
    // The rewrite came from sendmsg4, not from connect4.
    assert!(v.stats["sendmsg_rewrites"] >= 20, "{v:?}");
    assert_eq!(v.stats["bind_ok"], 0, "socat must not connect: {v:?}");
    // The recorded series ends with the final counts and the kernel counters.
    let series = std::fs::read_to_string(rec.join("swarm-run.series.jsonl")).unwrap();
    let last: Stamped<Sample> = serde_json::from_str(series.lines().last().expect("a series line"))
        .expect("a swarm run series line");
    let last = last.line;
    assert_eq!(last.succeeded, 20, "{series}");
    assert_eq!(last.running, 0, "{series}");
    assert_eq!(
        last.stats["sendmsg_rewrites"], v.stats["sendmsg_rewrites"],
        "{series}"
    );
    // The report reads the record back as swarm's own types and plots it.
    ok(wirelab().arg("report").arg(&rec));
    for chart in ["swarm-outcomes", "swarm-durations", "swarm-concurrency"] {
        let svg = rec.join(format!("report-plots/{chart}.svg"));
        assert!(svg.exists(), "{} missing", svg.display());
    }
    let got = rx.join().unwrap();
    let mut by_n = BTreeMap::new();
    for (ip, payload) in &got {
        if let Ok(n) = payload.parse::<u32>() {
            by_n.insert(n, *ip);
        }
    }
    assert_eq!(by_n.len(), 20, "datagrams: {got:?}");
    for (n, ip) in &by_n {
        assert_eq!(*ip, pool.addr(*n), "client {n} sent from {ip}");
    }
    assert_clean(&lab, pool_s);
}

/// A TCP server thread in namespace `ns` recording peer addresses (connections are held
/// until the thread ends).
struct TcpServer {
    peers: Arc<Mutex<Vec<Ipv4Addr>>>,
    _worker: NsWorker,
}

impl TcpServer {
    fn start(ns: String, port: u16) -> Self {
        let peers = Arc::new(Mutex::new(vec![]));
        let p2 = peers.clone();
        let worker = NsWorker::start(
            &ns,
            move || {
                let l = TcpListener::bind((SERVER, port)).expect("tcp server bind");
                // A deep accept queue for bursts of thousands of clients.
                unsafe { libc::listen(l.as_raw_fd(), 8192) };
                l.set_nonblocking(true).expect("nonblocking listener");
                (l, Vec::<TcpStream>::new())
            },
            move |(l, held)| match l.accept() {
                Ok((s, std::net::SocketAddr::V4(a))) => {
                    p2.lock().unwrap().push(*a.ip());
                    held.push(s);
                    true
                }
                Ok(_) => true,
                Err(_) => false,
            },
        );
        Self {
            peers,
            _worker: worker,
        }
    }

    fn peers(&self) -> Vec<Ipv4Addr> {
        self.peers.lock().unwrap().clone()
    }
}

#[test]
fn process_identity_gives_each_forked_child_its_own_ip() {
    let lab = Lab::up("swp");
    let pool_s = "198.18.0.128/26";
    let pool = Pool::parse(pool_s).unwrap();
    let srv = TcpServer::start(lab.ns("server"), 9200);
    // One parent (bash) forks 12 subshells; each opens its own connection.
    let script = format!(
        "for i in $(seq 12); do ( exec 3<>/dev/tcp/{SERVER}/9200; echo hi >&3; sleep 1 ) & done; wait"
    );
    let o = swarm(&lab, "run", pool_s, 12)
        .args(["--identity", "process", "--timeout", "20s", "--"])
        .args(["bash", "-c", &script])
        .output()
        .unwrap();
    let v: Summary = json_of(&o);
    assert!(o.status.success(), "{v:?}");
    let handed = v
        .process_addresses
        .as_ref()
        .unwrap_or_else(|| panic!("no process_addresses: {v:?}"));
    assert_eq!(handed.len(), 12, "{v:?}");
    let peers: BTreeSet<Ipv4Addr> = srv.peers().into_iter().collect();
    let want: BTreeSet<Ipv4Addr> = (0..12).map(|n| pool.addr(n)).collect();
    assert_eq!(peers, want, "server saw {peers:?}");
    assert_clean(&lab, pool_s);
}

#[test]
fn bad_input_gives_clear_errors_and_leaves_nothing() {
    let lab = Lab::up("swb");
    let run = |pool: &str, clients: u32, iface: &str, cmd: &[&str]| {
        let mut c = swarm_on(&lab, "run", iface, pool, clients);
        c.args(["--json", "--"]).args(cmd);
        c.output().unwrap()
    };
    let cases: [(&str, u32, &str, &str); 4] = [
        ("198.18.0.0/24", 4, "eth0", "overlaps address 198.18.0.1/24"),
        ("198.18.0.64/28", 4, "nope0", "no interface named \"nope0\""),
        ("198.18.0.64/30", 5, "eth0", "larger than the pool"),
        ("198.18.0.65/26", 4, "eth0", "host bits are set"),
    ];
    for (pool, n, iface, want) in cases {
        let o = run(pool, n, iface, &["true"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{pool} {iface} should fail");
        assert!(err.contains(want), "{pool} {iface}: {err}");
        assert_clean(&lab, pool);
    }
    // (In the lab's client namespace like every case: were the check to go, nothing would
    // be attached to this host's own interfaces.)
    let mut c = swarm_on(&lab, "run", "eth0", "198.18.0.64/28", 2);
    let o = c
        .args(["--mac-prefix", "03:00", "--", "true"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "a multicast MAC prefix accepted");
    assert!(String::from_utf8_lossy(&o.stderr).contains("multicast bit"));
    assert_clean(&lab, "198.18.0.64/28");
    // A failing command: results grouped by exit status, exit code 3.
    let o = run(
        "198.18.0.64/28",
        6,
        "eth0",
        &["sh", "-c", "exit $(( {n} % 3 ))"],
    );
    assert_eq!(o.status.code(), Some(3));
    let v: Summary = json_of(&o);
    assert_eq!(v.succeeded, 2, "{v:?}");
    assert_eq!(v.failures.get("exit 1"), Some(&2), "{v:?}");
    assert_eq!(v.failures.get("exit 2"), Some(&2), "{v:?}");
    // A command that does not exist.
    let o = run("198.18.0.64/28", 3, "eth0", &["/nonexistent/wirelab-cmd"]);
    let v: Summary = json_of(&o);
    assert_eq!(v.failures.get("spawn failed"), Some(&3), "{v:?}");
    assert_clean(&lab, "198.18.0.64/28");
}

#[test]
fn cleanup_removes_what_kill_9_left() {
    let lab = Lab::up("swk");
    let pool_s = "198.18.0.192/27";
    let mut c = swarm_on(&lab, "run", "eth0", pool_s, 4);
    c.args(["--", "sleep", "60"]);
    let mut bg = spawn_ready(c, "swarm ready", Duration::from_secs(30));
    let child = bg.child_mut();
    let pid = child.id();
    // The 4 clients running (in the run's cgroup tree), then kill -9 wirelab.
    fn procs(cg: &std::path::Path) -> usize {
        let own = std::fs::read_to_string(cg.join("cgroup.procs")).map_or(0, |t| t.lines().count());
        let below: usize = std::fs::read_dir(cg)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| procs(&e.path()))
            .sum();
        own + below
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            wirelab::swarm::read_states()
                .iter()
                .find(|s| s.pid == pid)
                .is_some_and(|s| procs(&s.cgroup) >= 4)
        }),
        "the 4 clients never ran"
    );
    let _g = KILL9.write().unwrap_or_else(|e| e.into_inner());
    child.kill().unwrap();
    child.wait().unwrap();
    let st = wirelab::swarm::read_states();
    let mine = st.iter().find(|s| s.pid == pid).expect("state file");
    assert!(mine.cgroup.exists());
    let o = ok(in_ns(
        &lab.ns("client"),
        &["ip", "route", "show", "table", "local"],
    ));
    assert!(String::from_utf8_lossy(&o.stdout).contains(pool_s));
    // A dry run names the run once (not its cgroup again) and leaves it.
    let o = ok(wirelab().args(["cleanup", "--dry-run", "--json"]));
    let v: cleanup::Report = json_of(&o);
    assert_eq!(
        v.swarm_removed
            .iter()
            .filter(|r| **r == mine.run_id)
            .count(),
        1,
        "{v:?}"
    );
    assert!(mine.cgroup.exists(), "the dry run removed the cgroup");
    let o = ok(wirelab().args(["cleanup", "--json"]));
    let v: cleanup::Report = json_of(&o);
    assert!(v.swarm_removed.contains(&mine.run_id), "{v:?}");
    assert!(!mine.cgroup.exists(), "cgroup (and its sleep clients) left");
    drop(_g);
    assert_clean(&lab, pool_s);
}

#[test]
fn connect_5000_clients_distinct_ips_and_macs() {
    let lab = Lab::up("swc");
    let pool_s = "198.18.32.0/19";
    let pool = Pool::parse(pool_s).unwrap();
    let n = 5000u32;
    let _limits = prepare_server(&lab, pool_s, n);
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert!(hard >= 6000, "RLIMIT_NOFILE hard limit {hard} < 6000");
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    let srv = TcpServer::start(lab.ns("server"), 9300);
    let dir = TempDir::new("wlswcrec");
    let rec = dir.join("run");
    let t0 = Instant::now();
    let child = swarm(&lab, "connect", pool_s, n)
        .args([
            "--to",
            &format!("{SERVER}:9300"),
            "--hold",
            "2s",
            "--timeout",
            "30s",
            "--metrics",
            "127.0.0.1:0",
            "--record",
        ])
        .arg(&rec)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Stopped (SIGTERM, then SIGKILL) if an assertion below fails; its stdout is one JSON
    // summary, far below a pipe's capacity.
    let child = Bg::from_child(child);
    let pid = child.pid();
    // Live metrics while connections are held: some clients started, some connections open.
    let mut live = None;
    while t0.elapsed() < Duration::from_secs(60) && live.is_none() {
        std::thread::sleep(Duration::from_millis(200));
        let out = std::process::Command::new("ss")
            .args(["-Hltnp"])
            .output()
            .unwrap();
        if !String::from_utf8_lossy(&out.stdout).contains(&format!("pid={pid},")) {
            continue;
        }
        let rows = parse_openmetrics(&scrape(&tcp_listen_addr(pid)).1);
        let open = rows
            .iter()
            .find(|r| r.name == "wirelab_swarm_clients_running")
            .map(|r| r.value)
            .unwrap_or(0.0);
        if open > 0.0 {
            live = Some(rows);
        }
    }
    let rows = live.expect("no open connections seen in the metrics");
    assert!(
        sample(
            &rows,
            "wirelab_swarm_clients_started_total",
            &[("mode", "connect")]
        ) > 0.0
    );
    let o = child.wait(Duration::from_secs(120)).unwrap();
    let wall = t0.elapsed();
    let v: ConnectSummary = serde_json::from_slice(&o.stdout).expect("swarm connect --json");
    assert!(o.success(), "{v:?}");
    assert_eq!(v.connected, n, "{v:?}");
    assert_eq!(v.identity_ok, n, "{v:?}");
    assert_eq!(v.distinct_local_ips, n, "{v:?}");
    assert!(
        wall < Duration::from_secs(120),
        "5000 clients took {wall:?}"
    );
    let peers: HashSet<Ipv4Addr> = srv.peers().into_iter().collect();
    assert_eq!(peers.len(), n as usize, "server saw {} peers", peers.len());
    assert!(peers.iter().all(|ip| pool.contains(*ip)));
    let neigh = server_neighbours(&lab, &pool);
    assert_eq!(neigh.len(), n as usize);
    let bad = neigh
        .iter()
        .filter(|(ip, mac)| **mac != client_mac([0x02, 0x57], **ip))
        .count();
    assert_eq!(bad, 0);
    let macs: HashSet<&String> = neigh.values().collect();
    assert_eq!(macs.len(), n as usize);
    // The recorded series: one line a second, the last with every client done.
    let series = std::fs::read_to_string(rec.join("swarm-connect.series.jsonl")).unwrap();
    let lines: Vec<ConnectSample> = series
        .lines()
        .map(|l| {
            serde_json::from_str::<Stamped<ConnectSample>>(l)
                .expect("a swarm connect series line")
                .line
        })
        .collect();
    assert!(lines.len() >= 2, "{series}");
    let last = lines.last().unwrap();
    assert_eq!(last.attempted, n, "{series}");
    assert_eq!(last.established, n, "{series}");
    assert_eq!(last.succeeded, n, "{series}");
    assert_eq!(last.failed, 0, "{series}");
    assert_eq!(last.open, 0, "{series}");
    assert!(lines.iter().any(|l| l.open > 0), "{series}");
    ok(wirelab().arg("report").arg(&rec));
    assert!(rec.join("report-plots/swarm-connections.svg").exists());
    drop(srv);
    assert_clean(&lab, pool_s);
}

/// Run a `swarm connect` and assert that it succeeded with all `n` clients connected from their
/// own addresses; returns its JSON summary and stderr.
fn every_client_connects(mut c: std::process::Command, n: u32) -> (ConnectSummary, String) {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let v: ConnectSummary = json_of(&o);
    assert!(o.status.success(), "{v:?} {err}");
    assert_eq!(v.connected, n, "{v:?}");
    assert_eq!(v.identity_ok, n, "{v:?}");
    (v, err)
}

/// `swarm` with RLIMIT_NOFILE (soft and hard) set to `nofile` in the child only.
fn swarm_with_nofile(
    lab: &Lab,
    sub: &str,
    pool: &str,
    clients: u32,
    nofile: u64,
) -> std::process::Command {
    use std::os::unix::process::CommandExt as _;
    let mut c = swarm(lab, sub, pool, clients);
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        c.pre_exec(move || {
            nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                nofile,
                nofile,
            )
            .map_err(std::io::Error::from)
        });
    }
    c
}

#[test]
fn connect_concurrency_fits_the_descriptor_limit() {
    let lab = Lab::up("swn");
    let pool_s = "198.18.16.0/24";
    let n = 200u32;
    let _limits = prepare_server(&lab, pool_s, n);
    // An explicit --concurrency that cannot fit: refused in the preflight, before anything is
    // attached, naming the user's number and wirelab's own share separately.
    let err = fails(swarm_with_nofile(&lab, "connect", pool_s, n, 300).args([
        "--to",
        &format!("{SERVER}:9301"),
        "--concurrency",
        "280",
    ]));
    assert!(
        err.contains("--concurrency 280 needs 280 open sockets") && err.contains("plus 128"),
        "{err}"
    );
    assert!(err.contains("--concurrency 172"), "{err}");
    assert!(
        !err.contains("swarm ready"),
        "checked after attaching: {err}"
    );
    assert_clean(&lab, pool_s);
    // The default (one socket per client) is lowered to what fits, said so, and every client
    // still connects: 200 clients through 180 - 128 = 52 sockets at a time, and no warning
    // that wirelab holds more descriptors than it set aside.
    let srv = TcpServer::start(lab.ns("server"), 9301);
    let mut c = swarm_with_nofile(&lab, "connect", pool_s, n, 180);
    c.args(["--to", &format!("{SERVER}:9301"), "--hold", "100ms"]);
    let (v, err) = every_client_connects(c, n);
    assert!(
        err.contains("concurrency 52 instead of one per client (200)"),
        "{err}"
    );
    assert!(!err.contains("set aside"), "{err}");
    assert_eq!(v.concurrency, 52, "{v:?}");
    let peers: HashSet<Ipv4Addr> = srv.peers().into_iter().collect();
    assert_eq!(peers.len(), n as usize);
    drop(srv);
    assert_clean(&lab, pool_s);
}

/// tc filters on `iface` in `ns` at `dir` (ingress/egress), as `tc filter show` prints them.
fn tc_filters(ns: &str, iface: &str, dir: &str) -> String {
    let o = ok(in_ns(ns, &["tc", "filter", "show", "dev", iface, dir]));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Assert that no swarm tc filter is left on eth0 of `ns`, in either direction, `after` what
/// just happened (for the message).
#[track_caller]
fn assert_no_swarm_filters(ns: &str, after: &str) {
    for dir in ["ingress", "egress"] {
        let f = tc_filters(ns, "eth0", dir);
        assert!(
            !f.contains("swarm_"),
            "{dir} filter left after {after}: {f}"
        );
    }
}

/// Kernels before 6.6 have no TCX: swarm's tc programs become clsact filters. The same
/// programs and checks on that path (forced here with WIRELAB_TC_ATTACH=clsact): clients
/// connect from their own addresses and MACs, a clean exit removes the filters, and after a
/// kill -9 `wirelab cleanup` does.
#[test]
fn clsact_fallback_where_tcx_is_missing() {
    let lab = Lab::up("swt");
    let pool_s = "198.18.20.0/26";
    let pool = Pool::parse(pool_s).unwrap();
    let n = 40u32;
    let _limits = prepare_server(&lab, pool_s, n);
    let srv = TcpServer::start(lab.ns("server"), 9302);
    let client = lab.ns("client");
    let mut c = swarm(&lab, "connect", pool_s, n);
    c.env("WIRELAB_TC_ATTACH", "clsact").args([
        "--to",
        &format!("{SERVER}:9302"),
        "--hold",
        "200ms",
    ]);
    let (_, err) = every_client_connects(c, n);
    assert!(
        err.contains("tc=clsact"),
        "the attach used is not stated: {err}"
    );
    let neigh = server_neighbours(&lab, &pool);
    assert_eq!(neigh.len(), n as usize);
    assert!(neigh
        .iter()
        .all(|(ip, mac)| *mac == client_mac([0x02, 0x57], *ip)));
    assert_no_swarm_filters(&client, "a clean exit");
    drop(srv);
    assert_clean(&lab, pool_s);

    // kill -9 while the filters are in place: cleanup removes them.
    let mut c = swarm(&lab, "run", pool_s, 2);
    c.env("WIRELAB_TC_ATTACH", "clsact")
        .args(["--", "sleep", "60"]);
    let mut bg = spawn_ready(c, "swarm ready", Duration::from_secs(30));
    assert!(tc_filters(&client, "eth0", "ingress").contains("swarm_arp"));
    assert!(tc_filters(&client, "eth0", "egress").contains("swarm_egress"));
    let _g = KILL9.write().unwrap_or_else(|e| e.into_inner());
    let child = bg.child_mut();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(tc_filters(&client, "eth0", "ingress").contains("swarm_arp"));
    let mut c = wirelab();
    c.env("WIRELAB_TC_ATTACH", "clsact");
    ok(c.args(["cleanup", "--json"]));
    assert_no_swarm_filters(&client, "cleanup");
    drop(_g);
    assert_clean(&lab, pool_s);
}
