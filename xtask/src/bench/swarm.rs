//! `cargo xtask bench swarm`: `wirelab swarm connect` against the old way of making one host
//! look like N clients: N addresses added with netlink (`ip -batch`, one `address add` per
//! client) and each socket bound explicitly to its address before connect.
//!
//! Both sides connect N distinct clients to a TCP sink in the lab's server namespace, with the
//! same concurrency and hold time; the sink counts distinct peer addresses and the server's
//! neighbour table shows the MACs it saw.
use std::{
    collections::HashSet,
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::{
    f, helper::pool_addr, in_ns, lab_up, map_memlock, num, out, spawn_ready, wirelab, xtask_in_ns,
    Bg, Ctx, Lab, Ready, Sysctl, Table, TempDir,
};

const SERVER: &str = "198.18.0.2";
const PORT: u16 = 9300;
const POOL: &str = "198.19.0.0/16";
/// Side-by-side sizes; the old way's cost grows with the square of N (see the notes).
const SIZES: [u32; 3] = [1_000, 5_000, 20_000];
const LARGEST: u32 = 65_534;
/// Each client closes right after connecting: with a hold time the rate would be capped at
/// concurrency ÷ hold instead of measuring how fast new clients connect.
const HOLD_MS: u64 = 0;

struct Run {
    method: &'static str,
    n: u32,
    /// Start → every client can connect (swarm: "swarm ready"; old way: addresses added).
    ready_s: f64,
    connect_phase_s: f64,
    connects_per_s: f64,
    p50: f64,
    p99: f64,
    /// Removing what was set up (swarm: exit after the last close; old way: address del).
    teardown_s: f64,
    connected: u64,
    peers: u64,
    macs: usize,
    rss_per_client: f64,
    kernel_bytes: Option<u64>,
}

impl Run {
    /// The figures both methods print in their JSON summary `v` (the same keys); set-up,
    /// teardown and what the server saw are left at zero for the caller to fill in.
    fn measured(method: &'static str, n: u32, v: &Value) -> Self {
        Self {
            method,
            n,
            ready_s: 0.0,
            connect_phase_s: num(v, &["connect_phase_s"]),
            connects_per_s: num(v, &["connects_per_s"]),
            p50: num(v, &["connect_p50_ms"]),
            p99: num(v, &["connect_p99_ms"]),
            teardown_s: 0.0,
            connected: v["connected"].as_u64().unwrap_or(0),
            peers: 0,
            macs: 0,
            rss_per_client: num(v, &["rss_per_client_bytes"]),
            kernel_bytes: None,
        }
    }
}

/// The load both methods offer: N clients from the pool to the sink, at most 8000 at a time.
fn load_args(n: u32) -> [String; 8] {
    [
        "--pool".into(),
        POOL.into(),
        "--clients".into(),
        n.to_string(),
        "--to".into(),
        format!("{SERVER}:{PORT}"),
        "--concurrency".into(),
        n.min(8000).to_string(),
    ]
}

fn sink(lab: &Lab) -> Result<Bg> {
    let mut c = xtask_in_ns(&lab.ns("server"))?;
    c.args([
        "tcp-sink",
        "--bind",
        &format!("{SERVER}:{PORT}"),
        "--max-secs",
        "600",
    ]);
    spawn_ready(c, Ready::Stderr, "listening", Duration::from_secs(10))
}

fn sink_peers(s: Bg) -> Result<u64> {
    let o = s.stop()?.text();
    let v: Value = serde_json::from_str(o.trim()).with_context(|| format!("tcp-sink: {o}"))?;
    Ok(v["distinct_peers"].as_u64().unwrap_or(0))
}

fn flush_neigh(lab: &Lab) -> Result<()> {
    for h in ["client", "server"] {
        out(Command::new("ip").args(["-n", &lab.ns(h), "neigh", "flush", "dev", "eth0"]))?;
    }
    Ok(())
}

/// Distinct MACs the server's neighbour table holds for pool addresses.
fn server_macs(lab: &Lab) -> Result<usize> {
    let t = out(&mut in_ns(
        &lab.ns("server"),
        &["ip", "-4", "neigh", "show", "dev", "eth0"],
    ))?;
    let mut macs = HashSet::new();
    for l in t.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.first().is_some_and(|a| a.starts_with("198.19.")) {
            if let Some(i) = w.iter().position(|x| *x == "lladdr") {
                if let Some(m) = w.get(i + 1) {
                    macs.insert(m.to_string());
                }
            }
        }
    }
    Ok(macs.len())
}

fn swarm_connect(ctx: &Ctx, lab: &Lab, n: u32) -> Result<Run> {
    ctx.check()?;
    eprintln!("bench swarm: wirelab swarm connect, {n} clients");
    flush_neigh(lab)?;
    let s = sink(lab)?;
    let mut c = wirelab();
    c.args([
        "swarm",
        "connect",
        "--netns",
        &lab.ns("client"),
        "--iface",
        "eth0",
    ]);
    c.args(load_args(n));
    c.args([
        "--hold",
        &format!("{HOLD_MS}ms"),
        "--timeout",
        "30s",
        "--json",
    ]);
    let bg = spawn_ready(c, Ready::Stderr, "swarm ready", Duration::from_secs(60))?;
    let ready = bg.ready_after.as_secs_f64();
    let started = bg.started;
    // Right away: with small N the run is over within milliseconds of being ready.
    let kmem = map_memlock(bg.pid());
    let st = bg.wait(Duration::from_secs(180))?;
    let (so, ok) = (st.text(), st.success());
    let total = started.elapsed().as_secs_f64();
    if !ok {
        bail!("wirelab swarm connect with {n} clients failed: {so}");
    }
    let v: Value = serde_json::from_str(so.trim()).with_context(|| format!("swarm JSON: {so}"))?;
    let macs = server_macs(lab)?;
    let peers = sink_peers(s)?;
    let wall = num(&v, &["wall_s"]);
    Ok(Run {
        ready_s: ready,
        teardown_s: (total - ready - wall).max(0.0),
        peers,
        macs,
        kernel_bytes: Some(kmem),
        ..Run::measured("wirelab swarm connect", n, &v)
    })
}

/// `ip -n NS -batch FILE` for `address VERB IP/32 dev eth0`, clients 0..n; seconds taken.
fn addr_batch(lab: &Lab, dir: &std::path::Path, verb: &str, n: u32) -> Result<f64> {
    let p = dir.join(format!("addr-{verb}-{n}.batch"));
    let mut fl = std::io::BufWriter::new(std::fs::File::create(&p)?);
    for i in 0..n {
        writeln!(fl, "address {verb} {}/32 dev eth0", pool_addr(POOL, i)?)?;
    }
    fl.flush()?;
    drop(fl);
    let t0 = Instant::now();
    out(Command::new("ip").args(["-n", &lab.ns("client"), "-batch", &p.to_string_lossy()]))?;
    Ok(t0.elapsed().as_secs_f64())
}

fn old_way(ctx: &Ctx, lab: &Lab, dir: &std::path::Path, n: u32) -> Result<Run> {
    ctx.check()?;
    eprintln!("bench swarm: old way (addresses + bind), {n} clients");
    flush_neigh(lab)?;
    let s = sink(lab)?;
    let add = addr_batch(lab, dir, "add", n)?;
    let mut c = xtask_in_ns(&lab.ns("client"))?;
    c.arg("bind-connect");
    c.args(load_args(n));
    c.args(["--hold-ms", &HOLD_MS.to_string()]);
    let r = out(c.stderr(Stdio::inherit()));
    let macs = server_macs(lab);
    let del = addr_batch(lab, dir, "del", n)?;
    let v: Value = serde_json::from_str(r?.trim()).context("bind-connect JSON")?;
    let peers = sink_peers(s)?;
    Ok(Run {
        ready_s: add,
        teardown_s: del,
        peers,
        macs: macs?,
        ..Run::measured("old way: ip -batch address add + bind()", n, &v)
    })
}

pub fn run(ctx: &Ctx) -> Result<()> {
    ctx.emit(&format!(
        "\n## swarm (`cargo xtask bench swarm`)\n\nMachine: {}.\n",
        super::machine()
    ));
    let dir = TempDir::new("wirelab-bench-sw-");
    // The host's one ARP table (limits only in the initial namespace) must hold every client
    // on the server side; restored on exit.
    let _g1 = Sysctl::at_least("/proc/sys/net/ipv4/neigh/default/gc_thresh1", 131_072)?;
    let _g2 = Sysctl::at_least("/proc/sys/net/ipv4/neigh/default/gc_thresh2", 262_144)?;
    let _g3 = Sysctl::at_least("/proc/sys/net/ipv4/neigh/default/gc_thresh3", 524_288)?;
    let lab = lab_up("bs")?;
    out(Command::new("ip").args(["-n", &lab.ns("server"), "route", "add", POOL, "dev", "eth0"]))?;
    out(in_ns(&lab.ns("server"), &["sysctl"]).args(["-qw", "net.core.somaxconn=16384"]))?;
    out(in_ns(&lab.ns("client"), &["ping"]).args(["-c", "2", "-i", "0.2", "-q", SERVER]))?;

    let mut runs = vec![];
    for n in SIZES {
        runs.push(swarm_connect(ctx, &lab, n)?);
        runs.push(old_way(ctx, &lab, dir.path(), n)?);
    }
    let largest = swarm_connect(ctx, &lab, LARGEST)?;

    let mut t = Table::new(
        "N distinct clients: wirelab swarm vs N addresses + explicit bind",
        &format!(
            "wirelab swarm connect --pool {POOL} --clients N --to {SERVER}:{PORT} --concurrency min(N,8000) --hold {HOLD_MS}ms  vs  ip -batch (address add IP/32 dev eth0 × N) + one socket per client bound to its address (same concurrency and hold, tokio, xtask bench-helper bind-connect)"
        ),
        &[
            "N",
            "method",
            "ready s",
            "ready → all connected s",
            "new connections/s",
            "connect p50 / p99 ms",
            "teardown s",
            "connected",
            "distinct IPs at server",
            "distinct MACs at server",
            "peak RSS MiB",
            "RSS per client",
            "kernel map memory",
        ],
    );
    let mut ratio = Table::new(
        "Ratios (old way / wirelab swarm, same N; > 1 means swarm is faster)",
        "from the table above",
        &[
            "N",
            "ready time",
            "ready → all connected",
            "teardown",
            "connections/s (swarm / old way)",
        ],
    );
    for r in runs.iter().chain(std::iter::once(&largest)) {
        t.row(vec![
            r.n.to_string(),
            r.method.into(),
            f(r.ready_s, 3),
            f(r.ready_s + r.connect_phase_s, 2),
            f(r.connects_per_s, 0),
            format!("{} / {}", f(r.p50, 1), f(r.p99, 1)),
            f(r.teardown_s, 2),
            r.connected.to_string(),
            r.peers.to_string(),
            r.macs.to_string(),
            f(r.rss_per_client * r.n as f64 / 1048576.0, 1),
            format!("{} B", f(r.rss_per_client, 0)),
            r.kernel_bytes
                .map(|b| format!("{:.1} MiB (fixed)", b as f64 / 1048576.0))
                .unwrap_or_else(|| "—".into()),
        ]);
    }
    for pair in runs.chunks(2) {
        let (s, o) = (&pair[0], &pair[1]);
        ratio.row(vec![
            s.n.to_string(),
            format!("{:.1}×", o.ready_s / s.ready_s),
            format!(
                "{:.2}×",
                (o.ready_s + o.connect_phase_s) / (s.ready_s + s.connect_phase_s)
            ),
            format!("{:.1}×", o.teardown_s / s.teardown_s.max(1e-3)),
            format!("{:.2}", s.connects_per_s / o.connects_per_s),
        ]);
    }
    t.note(format!(
        "\"ready\": swarm = from starting the command to its `swarm ready` log line (programs \
         attached, AnyIP route added; per-client state is one map entry written when the \
         client connects); old way = the `ip -batch` adding the addresses. \"teardown\": swarm \
         = from the end of its run to process exit (programs, route, cgroup removed); old way = \
         `ip -batch` deleting the addresses. Connections per second: connected ÷ time from the \
         first connect to the last established (each needs an ARP exchange with the server). \
         RSS per client: peak resident memory of the connecting process ÷ N. Kernel map \
         memory: `memlock` of the swarm process's BPF maps (preallocated, independent of N). \
         The old way gives every client the interface's one MAC (\"distinct MACs\" = 1); \
         distinct MACs per client would take one macvlan per client on top. The last row is \
         the largest N (a whole /16 pool) with wirelab; {} new distinct-client connections/s \
         against a goal of 5,000/s.",
        f(largest.connects_per_s, 0)
    ));
    ctx.emit(&t.render());
    ctx.emit(&ratio.render());
    if largest.connected != LARGEST as u64 || largest.peers != LARGEST as u64 {
        bail!(
            "largest run: {} connected, {} distinct peers at the server, of {LARGEST}",
            largest.connected,
            largest.peers
        );
    }
    Ok(())
}
