//! `cargo xtask bench lb`: `wirelab lb` side by side with its references in one run.
//!
//! 1. Program cost: each path of the lb program through BPF_PROG_TEST_RUN, next to Katran's
//!    own tester (an anchor number, not measured here). xtask does not link the wirelab
//!    library, so this runs `wirelab/examples/lb_bench.rs` (`lb_bench prog`).
//! 2. Maglev quality: disruption, balance and build time against hash mod N
//!    (`lb_bench maglev`, i.e. `wirelab::lb::maglev::quality`).
//! 3. Connection rate: `wrk` with a new connection per request through wirelab lb (dsr, nat),
//!    HAProxy `mode tcp`, nftables DNAT (`jhash … mod 3`) and no balancer, to three
//!    single-process nginx backends in the lb labs of docs/examples (per-run names
//!    `bld<pid>` / `bln<pid>`, taken down on exit, error and Ctrl-C).
//!
//! Knobs (environment): WIRELAB_BENCH_LB_SECS (wrk seconds per case, default 5),
//! WIRELAB_BENCH_LB_CONNS (wrk connections, default 16), WIRELAB_BENCH_LB_REPEAT
//! (BPF_PROG_TEST_RUN repeat, default 200000), WIRELAB_BENCH_LB_ROUNDS (connection-rate
//! rounds, default 3), WIRELAB_BENCH_LB_FLOWS (Maglev sample
//! flows, default 1000000).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use wirelab_testkit::eventually;

use super::{
    cpu_seconds, f, in_ns, knob, machine, median, num, out, pct, prog_stats, spawn_ready, wirelab,
    wirelab_bin, Bg, Ctx, Lab, Ready, Sysctl, Table, TempDir,
};
use crate::root;

const VIP: &str = "198.18.1.100";
/// Katran's BPF_PROG_TEST_RUN tester (katran#235): an anchor, not measured here.
const KATRAN_NS: (f64, f64) = (101.0, 119.0);
const PROG_SCHED_CLS: u32 = 3;

pub fn run(ctx: &Ctx) -> Result<()> {
    let secs = knob("WIRELAB_BENCH_LB_SECS", 5)?.clamp(1, 120);
    let conns = knob("WIRELAB_BENCH_LB_CONNS", 16)?.clamp(1, 1000);
    let repeat = knob("WIRELAB_BENCH_LB_REPEAT", 200_000)?.clamp(1, 10_000_000);
    let flows = knob("WIRELAB_BENCH_LB_FLOWS", 1_000_000)?.clamp(1000, 10_000_000);
    let rounds = knob("WIRELAB_BENCH_LB_ROUNDS", 3)?.clamp(1, 20);
    for tool in ["wrk", "nginx", "haproxy", "nft"] {
        if Command::new("which")
            .arg(tool)
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            bail!("{tool} is not installed (cargo xtask setup)");
        }
    }
    ctx.emit(&format!(
        "\n## lb (`cargo xtask bench lb`)\n\nMachine: {}.\n",
        machine()
    ));
    let peer = lb_bench()?;
    {
        // BPF statistics time every program run: with them on (another tool, or a bench
        // left them so), the tracked path measured 261 ns instead of 117.
        let _no_stats = Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "0")?;
        prog_cost(ctx, &peer, repeat)?;
    }
    ctx.check()?;
    maglev_quality(ctx, &peer, flows)?;
    ctx.check()?;
    conn_rate(ctx, secs, conns, rounds)
}

/// Build the example peer (the library half) and return its path.
fn lb_bench() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("bench lb: building the lb_bench example");
    out(Command::new(cargo).current_dir(root()).args([
        "build",
        "--release",
        "-q",
        "-p",
        "wirelab",
        "--example",
        "lb_bench",
    ]))?;
    Ok(root().join("target/release/examples/lb_bench"))
}

/// One JSON object per line of `c`'s output.
fn json_lines(c: &mut Command) -> Result<Vec<Value>> {
    out(c)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("JSON line {l:?}")))
        .collect()
}

fn verdict(prog: &str, v: i64) -> &'static str {
    match (prog, v) {
        ("lb", -1) => "pass",
        ("lb", 0) => "ok (routed)",
        ("lb", 2) => "drop",
        ("lb", 7) => "redirect",
        ("lb_xdp", 1) => "drop",
        ("lb_xdp", 2) => "pass",
        ("lb_xdp", 3) => "tx",
        _ => "?",
    }
}

fn katran_ratio(ns: f64) -> String {
    format!("{:.1}–{:.1}×", ns / KATRAN_NS.1, ns / KATRAN_NS.0)
}

fn prog_cost(ctx: &Ctx, peer: &Path, repeat: u64) -> Result<()> {
    eprintln!("== lb program cost (BPF_PROG_TEST_RUN) ==");
    let rows = json_lines(Command::new(peer).args([
        "prog",
        "--repeat",
        &repeat.to_string(),
        "--rounds",
        "9",
        "--calls",
        &(repeat / 10).max(1000).to_string(),
    ]))?;
    let find = |path: &str, prog: &str| {
        rows.iter()
            .find(|r| r["path"] == path && r["prog"] == prog)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut tb = Table::new(
        "Program cost per packet (BPF_PROG_TEST_RUN, one frame repeated; median of 9 runs taken in rounds over the paths)",
        &format!("target/release/examples/lb_bench prog --repeat {repeat} --rounds 9"),
        &[
            "path",
            "tc `lb` ns/packet",
            "tc verdict",
            "XDP `lb_xdp` ns/packet",
            "tc vs Katran's tester (101–119 ns)",
        ],
    );
    let mut tracked = f64::NAN;
    for path in [
        "miss (non-VIP)",
        "new flow (SYN)",
        "tracked flow",
        "all backends down",
        "IPv6 tracked flow",
    ] {
        let (tc, x) = (find(path, "lb"), find(path, "lb_xdp"));
        let ns = num(&tc, &["ns"]);
        if path == "tracked flow" {
            tracked = ns;
        }
        tb.row(vec![
            path.into(),
            f(ns, 0),
            verdict("lb", tc["verdict"].as_i64().unwrap_or(99)).into(),
            f(num(&x, &["ns"]), 0),
            katran_ratio(ns),
        ]);
    }
    tb.note(
        "Each number includes BPF_PROG_TEST_RUN's own per-run work (for tc: resetting the skb \
         around every run), as Katran's does for XDP. \"new flow (SYN)\" repeats one SYN, so \
         after the first run its LRU insert updates an existing entry. The XDP entry point \
         makes the same decision with XDP_TX; the command attaches the tc program.",
    );
    tb.note(format!(
        "Goal: tracked flow ≤ 100 ns/packet: {} ({} ns on the tc program).",
        if tracked <= 100.0 { "met" } else { "missed" },
        f(tracked, 0)
    ));
    ctx.emit(&tb.render());
    let mut tb = Table::new(
        "NAT paths (one run per call, averaged: a repeated run would reuse the skb the first run translated)",
        &format!(
            "target/release/examples/lb_bench prog --calls {}",
            (repeat / 10).max(1000)
        ),
        &["path", "ns/packet", "verdict", "vs DSR tracked (same method)"],
    );
    let dsr = num(&find("DSR tracked flow", "lb"), &["ns"]);
    for path in ["DSR tracked flow", "NAT tracked flow", "NAT reply"] {
        let r = find(path, "lb");
        let ns = num(&r, &["ns"]);
        tb.row(vec![
            path.into(),
            f(ns, 0),
            verdict("lb", r["verdict"].as_i64().unwrap_or(99)).into(),
            format!("{:.2}×", ns / dsr),
        ]);
    }
    tb.note(
        "One run per call carries the syscall's timer overhead in every number: compare the \
         rows of this table with each other, not with the table above.",
    );
    ctx.emit(&tb.render());
    Ok(())
}

fn maglev_quality(ctx: &Ctx, peer: &Path, flows: u64) -> Result<()> {
    eprintln!("== Maglev quality ==");
    let rows = json_lines(Command::new(peer).args(["maglev", "--flows", &flows.to_string()]))?;
    let mut tb = Table::new(
        &format!(
            "Maglev vs hash mod N: one of N equal backends removed, or down ({flows} sample flows)"
        ),
        &format!("target/release/examples/lb_bench maglev --flows {flows}"),
        &[
            "N",
            "M",
            "build ms",
            "Maglev slots moved (×1/N)",
            "Maglev flows moved (×1/N)",
            "hash mod N flows moved (×1/N)",
            "Maglev slots max/avg",
            "Maglev flows max/avg",
            "hash mod N flows max/avg",
            "one down or removed by a reload: Maglev slots moved (×1/N)",
            "one down or removed by a reload: Maglev flows moved (×1/N)",
            "one down or removed by a reload: slots max/avg",
            "goals (M ≥ 100·N: moved ≤ 1.1/N, max/avg ≤ 1.01)",
        ],
    );
    let times = |share: f64, n: f64| format!("{:.2}% ({:.2}×)", share * 100.0, share * n);
    for r in &rows {
        let (n, m) = (num(r, &["n"]), num(r, &["m"]));
        let moved = num(r, &["slots_moved"]);
        let bal = num(r, &["slot_max_avg"]);
        let down_moved = num(r, &["down_slots_moved"]);
        let down_bal = num(r, &["down_slot_max_avg"]);
        let met = |ok: bool| if ok { "met" } else { "missed" };
        let goals = if m >= 100.0 * n {
            format!(
                "moved: removed {}, down {}; max/avg {}",
                met(moved <= 1.1 / n),
                met(down_moved <= 1.1 / n),
                met(bal <= 1.01 && down_bal <= 1.01)
            )
        } else {
            "M < 100·N".into()
        };
        tb.row(vec![
            f(n, 0),
            f(m, 0),
            f(num(r, &["build_ms"]), 2),
            times(moved, n),
            times(num(r, &["flows_moved"]), n),
            times(num(r, &["modn_flows_moved"]), n),
            f(bal, 4),
            f(num(r, &["flow_max_avg"]), 3),
            f(num(r, &["modn_flow_max_avg"]), 3),
            times(down_moved, n),
            times(num(r, &["down_flows_moved"]), n),
            f(down_bal, 4),
            goals,
        ]);
    }
    tb.note(
        "Skipped: N = 1000 with M = 251 (a table smaller than N cannot give every backend a \
         slot). The removed backend is backend N/2; ideal disruption is 1/N (its own flows), \
         hash mod N moves about 1 − 1/N. Removed: taken out of the config, the table laid \
         out afresh (Maglev's own disruption; a balancer started from the smaller file). \
         Down: failed its health checks, or removed by a reload of a running balancer (its \
         place kept in the layout); the table keeps every other slot and hands its slots to \
         the backends up in Maglev order. Slot max/avg is the table's own balance (exact); the \
         flow columns carry the sampling noise of flows/N flows per backend. Both schemes use \
         the program's flow hash (MurmurHash3 of the 5-tuple); nftables' `jhash … mod N` \
         renumbers its map the same way when a backend goes. Build time: the median of 5 \
         builds, one thread (the paper: 1.8 ms at M = 65,537).",
    );
    ctx.emit(&tb.render());
    Ok(())
}

/// CPU time of the whole machine from /proc/stat: (busy, softirq, all) in seconds.
fn machine_cpu() -> (f64, f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0) / hz;
    let all: f64 = v.iter().take(8).sum::<f64>() / hz;
    // user nice system idle iowait irq softirq steal
    (all - at(3) - at(4), at(6), all)
}

/// CPU seconds of every process in namespace `ns` (`ip netns pids`).
fn ns_cpu(ns: &str) -> f64 {
    out(Command::new("ip").args(["netns", "pids", ns]))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .map(cpu_seconds)
        .filter(|x| x.is_finite())
        .sum()
}

/// CPU seconds of reaped children (wrk, once waited for).
fn children_cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// One wrk run's numbers.
#[derive(Default)]
struct Wrk {
    requests: f64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn ms(v: &str) -> f64 {
    let (n, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

fn parse_wrk(text: &str) -> Wrk {
    let mut w = Wrk {
        requests: f64::NAN,
        rate: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: 0,
    };
    for l in text.lines().map(str::trim) {
        let t: Vec<&str> = l.split_whitespace().collect();
        match t.as_slice() {
            ["50%", v] => w.p50_ms = ms(v),
            ["99%", v] => w.p99_ms = ms(v),
            ["Requests/sec:", v] => w.rate = v.parse().unwrap_or(f64::NAN),
            [n, "requests", "in", ..] => w.requests = n.parse().unwrap_or(f64::NAN),
            ["Socket", "errors:", rest @ ..] => {
                w.errors += rest
                    .iter()
                    .filter_map(|x| x.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => w.errors += n.parse().unwrap_or(0),
            _ => {}
        }
    }
    w
}

/// A measured case.
struct Case {
    label: String,
    wrk: Wrk,
    /// Seconds: wrk's CPU, the backends' processes, the balancer's processes, its program
    /// (BPF run time), the machine busy / softirq, the wall.
    gen_cpu: f64,
    backends_cpu: f64,
    lb_cpu: Option<f64>,
    /// (seconds, runs) of the wirelab program.
    lb_prog: Option<(f64, f64)>,
    busy: f64,
    softirq: f64,
    wall: f64,
    /// The client's SYN retransmissions (TcpExt TCPSynRetrans) during the run: each one is a
    /// connection that waited a retransmission timeout (1 s) for its handshake.
    syn_retrans: u64,
}

/// The TcpExt counters of namespace `ns` (`/proc/net/netstat`); empty when unreadable.
fn tcp_ext_all(ns: &str) -> std::collections::BTreeMap<String, u64> {
    let text = out(&mut in_ns(ns, &["cat", "/proc/net/netstat"])).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = lines[..] else {
        return Default::default();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
        .collect()
}

/// TcpExt counter `name` of namespace `ns`; 0 when unreadable.
fn tcp_ext(ns: &str, name: &str) -> u64 {
    tcp_ext_all(ns).get(name).copied().unwrap_or(0)
}

/// The TcpExt counters of `ns` that moved since `before`, for the bench's stderr.
fn tcp_ext_moved(ns: &str, before: &std::collections::BTreeMap<String, u64>) -> String {
    tcp_ext_all(ns)
        .into_iter()
        .filter_map(|(n, v)| {
            let d = v.saturating_sub(before.get(&n).copied().unwrap_or(0));
            (d > 0).then(|| format!("{n} {d}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

struct Run<'a> {
    lab: &'a Lab,
    backends: &'a [&'a str],
    secs: u64,
    conns: u64,
}

impl<'a> Run<'a> {
    /// nginx on the backends; `(secs, conns)`: wrk's duration and connections.
    fn start(
        lab: &'a Lab,
        dir: &TempDir,
        backends: &'a [&'a str],
        (secs, conns): (u64, u64),
    ) -> Result<(Self, Vec<Bg>)> {
        let ng = nginx(lab, dir, backends)?;
        let r = Run {
            lab,
            backends,
            secs,
            conns,
        };
        Ok((r, ng))
    }

    /// The no-balancer row: the client straight to b1 at `addr`, `how`.
    fn baseline(&self, how: &str, addr: &str) -> Result<Case> {
        self.case(
            &format!("no balancer (client → b1, {how})"),
            &format!("http://{addr}/"),
            false,
            None,
        )
    }

    /// wrk from the client to `url` for `secs`, one new connection per request; `lb_pid`: the
    /// wirelab lb process (its BPF program's run time is read), `lb_ns`: count the balancer
    /// host's processes (HAProxy, wirelab lb).
    fn case(&self, label: &str, url: &str, lb_ns: bool, lb_pid: Option<u32>) -> Result<Case> {
        eprintln!("  {label}: wrk {url}");
        let lbns = self.lab.ns("lb");
        let back = || {
            self.backends
                .iter()
                .map(|b| ns_cpu(&self.lab.ns(b)))
                .sum::<f64>()
        };
        let prog = |pid: u32| {
            prog_stats(pid)
                .get(&PROG_SCHED_CLS)
                .map(|x| (x.1 as f64 / 1e9, x.0 as f64))
                .unwrap_or((f64::NAN, f64::NAN))
        };
        let (b0, l0, p0, m0, g0) = (
            back(),
            ns_cpu(&lbns),
            lb_pid.map(prog),
            machine_cpu(),
            children_cpu(),
        );
        let syn0 = tcp_ext(&self.lab.ns("client"), "TCPSynRetrans");
        let b1_0 = tcp_ext_all(&self.lab.ns(self.backends[0]));
        let t0 = std::time::Instant::now();
        let text = out(&mut in_ns(
            &self.lab.ns("client"),
            &[
                "timeout",
                &(self.secs + 30).to_string(),
                "wrk",
                "-t1",
                &format!("-c{}", self.conns),
                &format!("-d{}s", self.secs),
                "--timeout",
                "2s",
                "--latency",
                "-H",
                "Connection: close",
                url,
            ],
        ))?;
        let wall = t0.elapsed().as_secs_f64();
        let m1 = machine_cpu();
        let c = Case {
            label: label.into(),
            wrk: parse_wrk(&text),
            gen_cpu: children_cpu() - g0,
            backends_cpu: back() - b0,
            lb_cpu: lb_ns.then(|| ns_cpu(&lbns) - l0),
            lb_prog: lb_pid
                .map(prog)
                .zip(p0)
                .map(|(a, b)| (a.0 - b.0, a.1 - b.1)),
            busy: m1.0 - m0.0,
            softirq: m1.1 - m0.1,
            wall,
            syn_retrans: tcp_ext(&self.lab.ns("client"), "TCPSynRetrans").saturating_sub(syn0),
        };
        if !c.wrk.requests.is_finite() {
            bail!("{label}: no result from wrk: {text}");
        }
        eprintln!(
            "    {} TcpExt counters that moved: {}",
            self.backends[0],
            tcp_ext_moved(&self.lab.ns(self.backends[0]), &b1_0)
        );
        eprintln!(
            "    {:.0} conn/s, p50 {:.2} ms, p99 {:.2} ms, {} errors, {} SYN retransmits; wrk CPU {:.0}%, machine busy {:.0}%",
            c.wrk.rate,
            c.wrk.p50_ms,
            c.wrk.p99_ms,
            c.wrk.errors,
            c.syn_retrans,
            c.gen_cpu / wall * 100.0,
            c.busy / (m1.2 - m0.2).max(1e-9) * 100.0
        );
        Ok(c)
    }
}

/// A single-process nginx on port 80 of each backend, answering every request with its
/// name; started, then polled from the backend's namespace until it answers.
fn nginx(lab: &Lab, dir: &TempDir, backends: &[&str]) -> Result<Vec<Bg>> {
    let mut v = vec![];
    for b in backends {
        let conf = dir.file(
            &format!("{b}.conf"),
            &format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/{b}.pid;\nerror_log {d}/{b}.err warn;\n\
                 events {{ worker_connections 8192; }}\n\
                 http {{\n  access_log off;\n  keepalive_timeout 0;\n  server {{\n    listen 80 backlog=4096;\n    location / {{ return 200 \"{b}\\n\"; }}\n  }}\n}}\n",
                d = dir.path().display()
            ),
        );
        let child = in_ns(
            &lab.ns(b),
            &[
                "nginx",
                "-e",
                &format!("{}/{b}.err", dir.path().display()),
                "-p",
            ],
        )
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
        v.push(Bg::from_child(child));
        let ns = lab.ns(b);
        if !eventually(Duration::from_secs(10), || {
            out(&mut in_ns(
                &ns,
                &["curl", "-s", "--max-time", "1", "http://127.0.0.1/"],
            ))
            .is_ok()
        }) {
            bail!(
                "nginx on {b} does not answer: {}",
                std::fs::read_to_string(dir.join(&format!("{b}.err"))).unwrap_or_default()
            );
        }
    }
    Ok(v)
}

/// Until `url` answers from the client (a balancer just started).
fn answers(lab: &Lab, url: &str) -> Result<()> {
    let ns = lab.ns("client");
    if !eventually(Duration::from_secs(10), || {
        out(&mut in_ns(&ns, &["curl", "-s", "--max-time", "1", url])).is_ok()
    }) {
        bail!("{url} does not answer from the client");
    }
    Ok(())
}

fn start_lb(lab: &Lab, config: &Path, nat: bool) -> Result<Bg> {
    let mut c = wirelab();
    c.args(["lb", "--netns", &lab.ns("lb"), "--iface", "eth0"]);
    if nat {
        c.args(["--nat-iface", "eth1"]);
    }
    c.arg("--config")
        .arg(config)
        .args(["--interval", "1h", "--duration", "10m"]);
    spawn_ready(c, Ready::Stderr, "lb attached", Duration::from_secs(60))
}

/// Client tuning: many ephemeral ports; TIME_WAIT sockets reused.
fn client_sysctls(lab: &Lab) -> Result<()> {
    out(&mut in_ns(
        &lab.ns("client"),
        &[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_local_port_range=1024 65000",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    ))?;
    Ok(())
}

fn lab(prefix: &str, topology: &str) -> Result<Lab> {
    Lab::up(
        &wirelab_bin(),
        &format!("{prefix}{}", std::process::id()),
        Some(&root().join("docs/examples").join(topology)),
    )
}

/// The connection-rate rows, in `rounds` rounds: each round runs every case of a lab once,
/// its no-balancer row first, so each balancer is compared with a baseline measured beside it
/// (this host's rate moves by tens of percent over minutes).
fn conn_rate(ctx: &Ctx, secs: u64, conns: u64, rounds: u64) -> Result<()> {
    eprintln!("== connection rate ({rounds} rounds) ==");
    let _stats = Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let backends = ["b1", "b2", "b3"];
    let dir = TempDir::new("wirelab-bench-lb-");
    let url = format!("http://{VIP}/");
    let mut cases: Vec<(Case, &str, u64)> = vec![];
    {
        // DSR lab: everything on one bridge; the backends hold the VIP on lo.
        let lab = lab("bld", "lb-lab.toml")?;
        client_sysctls(&lab)?;
        for b in backends {
            out(&mut in_ns(
                &lab.ns(b),
                &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"],
            ))?;
        }
        let (r, _ng) = Run::start(&lab, &dir, &backends, (secs, conns))?;
        let cfg = root().join("docs/examples/lb.toml");
        for round in 0..rounds {
            eprintln!(" dsr lab, round {}/{rounds}", round + 1);
            cases.push((r.baseline("over the bridge", "198.18.0.21")?, "dsr", round));
            ctx.check()?;
            let lb = start_lb(&lab, &cfg, false)?;
            answers(&lab, &url)?;
            cases.push((
                r.case("wirelab lb, dsr", &url, true, Some(lb.pid()))?,
                "dsr",
                round,
            ));
            drop(lb);
            ctx.check()?;
        }
    }
    {
        // NAT lab: the balancer host routes between the client and the backends' segment.
        let lab = lab("bln", "lb-nat-lab.toml")?;
        client_sysctls(&lab)?;
        // For the no-balancer row: the backends' segment through the lb host, from the
        // client's second address. From the first one, the baseline's connections would leave
        // TIME_WAIT sockets on b1 for the very tuples (client address and port, b1:80) the NAT
        // rows reuse a few seconds later, with the client's timestamps of another offset (the
        // kernel's offset is per address pair, and the client addressed b1, not the VIP): b1
        // then refused thousands of their SYNs by PAWS (PAWSTimewait), each costing a 1 s
        // retransmission, and wirelab nat and nftables DNAT measured 48-71 % of the baseline.
        out(&mut in_ns(
            &lab.ns("client"),
            &[
                "ip",
                "route",
                "add",
                "198.18.2.0/24",
                "via",
                "198.18.0.10",
                "src",
                "198.18.0.2",
            ],
        ))?;
        let (r, _ng) = Run::start(&lab, &dir, &backends, (secs, conns))?;
        // The lab's config without health checks (their probes would be load of their own).
        let text = std::fs::read_to_string(root().join("docs/examples/lb-nat.toml"))?;
        let cfg = dir.file(
            "lb-nat.toml",
            &text
                .lines()
                .filter(|l| !l.starts_with("health"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        for round in 0..rounds {
            eprintln!(" nat lab, round {}/{rounds}", round + 1);
            for (case, label) in nat_round(ctx, &lab, &r, &dir, &cfg, &url)? {
                cases.push((case, label, round));
            }
        }
    }
    conn_table(ctx, &cases, secs, conns, rounds);
    Ok(())
}

/// One round of the NAT lab: no balancer (routed by the lb host), wirelab lb nat, nftables
/// DNAT and HAProxy, each once; the labels with their lab.
fn nat_round(
    ctx: &Ctx,
    lab: &Lab,
    r: &Run<'_>,
    dir: &TempDir,
    cfg: &Path,
    url: &str,
) -> Result<Vec<(Case, &'static str)>> {
    let lbns = lab.ns("lb");
    let mut cases = vec![(r.baseline("routed by the lb host", "198.18.2.21")?, "nat")];
    ctx.check()?;
    {
        let lb = start_lb(lab, cfg, true)?;
        answers(lab, url)?;
        cases.push((r.case("wirelab lb, nat", url, true, Some(lb.pid()))?, "nat"));
    }
    ctx.check()?;
    let nft = dir.file(
        "dnat.nft",
        &format!(
            "table ip wlbench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
             ip daddr {VIP} tcp dport 80 dnat to jhash ip saddr . tcp sport mod 3 map {{ 0 : 198.18.2.21, 1 : 198.18.2.22, 2 : 198.18.2.23 }}\n  }}\n}}\n"
        ),
    );
    out(in_ns(&lbns, &["nft", "-f"]).arg(&nft))?;
    let res =
        answers(lab, url).and_then(|_| r.case("nftables DNAT (jhash mod 3)", url, false, None));
    let _ = out(&mut in_ns(
        &lbns,
        &["nft", "delete", "table", "ip", "wlbench"],
    ));
    cases.push((res?, "nat"));
    ctx.check()?;
    // HAProxy binds the VIP, on the balancer's lo for its run only.
    let vip = format!("{VIP}/32");
    out(&mut in_ns(&lbns, &["ip", "addr", "add", &vip, "dev", "lo"]))?;
    let hcfg = dir.file(
        "haproxy.cfg",
        &format!(
            "global\n  maxconn 4096\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\n\
             frontend web\n  bind {VIP}:80\n  default_backend b\n\nbackend b\n  balance roundrobin\n  \
             server b1 198.18.2.21:80\n  server b2 198.18.2.22:80\n  server b3 198.18.2.23:80\n"
        ),
    );
    let log = dir.join("haproxy.log");
    let child = in_ns(&lbns, &["haproxy", "-db", "-f"])
        .arg(&hcfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting haproxy")?;
    let hp = Bg::from_child(child);
    let res = answers(lab, url)
        .with_context(|| {
            format!(
                "haproxy: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .and_then(|_| r.case("HAProxy mode tcp (roundrobin)", url, true, None));
    drop(hp);
    let _ = out(&mut in_ns(&lbns, &["ip", "addr", "del", &vip, "dev", "lo"]));
    cases.push((res?, "nat"));
    Ok(cases)
}

/// One row of the connection-rate table: a case over its rounds.
struct Row<'a> {
    label: &'a str,
    lab: &'a str,
    /// (case, its round's no-balancer case) per round.
    runs: Vec<(&'a Case, Option<&'a Case>)>,
}

impl Row<'_> {
    fn is_base(&self) -> bool {
        self.label.starts_with("no balancer")
    }

    /// Rate over the same round's no-balancer rate, per round.
    fn ratios(&self) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|(c, b)| Some(c.wrk.rate / (*b)?.wrk.rate))
            .collect()
    }

    /// The round shown in full: the one with the median ratio (no-balancer rows: the median
    /// rate), the upper one of an even count, as [`median`] takes.
    fn shown(&self) -> (&Case, Option<&Case>) {
        let key = |(c, b): &(&Case, Option<&Case>)| {
            b.filter(|_| !self.is_base())
                .map_or(c.wrk.rate, |b| c.wrk.rate / b.wrk.rate)
        };
        let mut v = self.runs.clone();
        v.sort_by(|a, b| key(a).total_cmp(&key(b)));
        v[v.len() / 2]
    }

    /// Over all rounds: the balancer's program and process CPU seconds (where measured), its
    /// program runs, and the requests served.
    fn balancer(&self) -> (Option<f64>, Option<f64>, f64, f64) {
        let sum = |f: &dyn Fn(&Case) -> Option<f64>| -> Option<f64> {
            self.runs.iter().map(|(c, _)| f(c)).sum()
        };
        let prog = sum(&|c| c.lb_prog.map(|p| p.0));
        let runs = sum(&|c| c.lb_prog.map(|p| p.1)).unwrap_or(0.0);
        let requests = self.runs.iter().map(|(c, _)| c.wrk.requests.max(0.0)).sum();
        (prog, sum(&|c| c.lb_cpu), runs, requests)
    }
}

fn conn_table(ctx: &Ctx, cases: &[(Case, &str, u64)], secs: u64, conns: u64, rounds: u64) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let busy = format!("machine busy ({cpus} CPUs = {}%)", cpus * 100);
    let mut rows: Vec<Row<'_>> = vec![];
    for (c, lab, round) in cases {
        let base = cases
            .iter()
            .find(|(b, l, r)| l == lab && r == round && b.label.starts_with("no balancer"))
            .map(|(b, _, _)| b);
        match rows
            .iter_mut()
            .find(|r| r.label == c.label && r.lab == *lab)
        {
            Some(r) => r.runs.push((c, base)),
            None => rows.push(Row {
                label: &c.label,
                lab,
                runs: vec![(c, base)],
            }),
        }
    }
    let mut tb = Table::new(
        &format!(
            "Connection rate: a new TCP connection per HTTP request, client → VIP:80 → 3 nginx \
             backends ({rounds} rounds)"
        ),
        &format!(
            "wrk -t1 -c{conns} -d{secs}s --latency -H 'Connection: close' http://{VIP}/ (inside the lab)"
        ),
        &[
            "path",
            "lab",
            "connections/s",
            "vs no balancer (median of rounds)",
            "each round: connections/s (vs its no balancer)",
            "p50 ms (added)",
            "p99 ms (added)",
            "errors",
            "client SYN retransmits",
            "balancer CPU s /100k conn (all rounds)",
            "wrk CPU",
            "backends CPU",
            &busy,
            "machine softirq s /100k conn",
        ],
    );
    let per100k = |s: f64, c: &Case| s / c.wrk.requests.max(1.0) * 1e5;
    let mut haproxy = f64::NAN;
    let mut wirelab_best = f64::NAN;
    let mut rate_ratio: Vec<(String, f64)> = vec![];
    for row in &rows {
        let (c, base) = row.shown();
        let is_base = row.is_base();
        let base = base.map(|b| &b.wrk);
        let added = |v: f64, b: Option<f64>| match b {
            Some(b) if !is_base => format!("{} ({:+.2})", f(v, 2), v - b),
            _ => f(v, 2),
        };
        let (prog, process, runs, requests) = row.balancer();
        let per = |s: f64| s / requests.max(1.0) * 1e5;
        let balancer = match (prog, process) {
            (Some(p), Some(u)) => {
                let total = per(p + u);
                wirelab_best = if wirelab_best.is_finite() {
                    wirelab_best.max(total)
                } else {
                    total
                };
                format!(
                    "{} (program {} + process {}; {:.1} packets/conn at {:.0} ns)",
                    f(total, 3),
                    f(per(p), 3),
                    f(per(u), 3),
                    runs / requests.max(1.0),
                    p * 1e9 / runs.max(1.0)
                )
            }
            (None, Some(u)) => {
                haproxy = per(u);
                format!("{} (process)", f(haproxy, 3))
            }
            _ if c.label.starts_with("nftables") => "n/a (softirq)".into(),
            _ => "—".into(),
        };
        let ratio = median(row.ratios());
        let vs = if is_base || !ratio.is_finite() {
            "—".into()
        } else {
            rate_ratio.push((c.label.clone(), ratio));
            format!("{:.0}%", ratio * 100.0)
        };
        let each = row
            .runs
            .iter()
            .map(|(c, b)| match b {
                Some(b) if !is_base => {
                    format!(
                        "{:.0} ({:.0}%)",
                        c.wrk.rate,
                        100.0 * c.wrk.rate / b.wrk.rate
                    )
                }
                _ => format!("{:.0}", c.wrk.rate),
            })
            .collect::<Vec<_>>()
            .join(" · ");
        tb.row(vec![
            c.label.clone(),
            row.lab.into(),
            f(c.wrk.rate, 0),
            vs,
            each,
            added(c.wrk.p50_ms, base.map(|b| b.p50_ms)),
            added(c.wrk.p99_ms, base.map(|b| b.p99_ms)),
            c.errors_text(),
            c.syn_retrans.to_string(),
            balancer,
            pct(c.gen_cpu, c.wall),
            pct(c.backends_cpu, c.wall),
            pct(c.busy, c.wall),
            f(per100k(c.softirq, c), 2),
        ]);
    }
    tb.note(
        "Rounds: each round ran every case of a lab once, back to back for the same time, its \
         no-balancer row first; a rate is compared with the no-balancer row of the same lab \
         (dsr: one bridge; nat: the lb host routes) and the same round, and the median of the \
         rounds' ratios is given. The other columns are the round with the median ratio (the \
         no-balancer rows: the median rate), except the balancer's CPU, summed over all rounds. \
         Latency is wrk's per request, from the request's first byte on the established \
         connection to the response (the handshake is not in it). wrk CPU 100% = its one thread \
         saturated a core (the generator is the limit); backends CPU is the three nginx \
         processes together (each at most 100%); when the machine is busy near 100% per CPU, \
         the CPUs are the limit, shared by generator, backends, the kernel and other work on \
         the machine.",
    );
    tb.note(
        "Balancer CPU: wirelab = the tc program's run time (kernel.bpf_stats_enabled, \
         /proc/PID/fdinfo) + the lb process (it idles between interval ticks); HAProxy = its \
         process CPU (user + system), which leaves out part of the kernel's TCP work for its \
         sockets done in softirq; nftables DNAT runs in softirq and conntrack, so it has no \
         process to measure: the machine-wide softirq column (everything on the machine, \
         noisy) is the only hint, next to the no-balancer rows.",
    );
    let goal_cpu = if haproxy.is_finite() && wirelab_best.is_finite() {
        format!(
            "wirelab's worst {} s vs HAProxy {} s per 100k connections ({:.2} of HAProxy's): {}",
            f(wirelab_best, 3),
            f(haproxy, 3),
            wirelab_best / haproxy,
            if wirelab_best <= haproxy / 5.0 {
                "met"
            } else {
                "missed"
            }
        )
    } else {
        "not measured".into()
    };
    let rates: Vec<String> = rate_ratio
        .iter()
        .filter(|(l, _)| l.starts_with("wirelab"))
        .map(|(l, r)| {
            format!(
                "{l} {:.0}% ({})",
                r * 100.0,
                if *r >= 0.9 { "met" } else { "missed" }
            )
        })
        .collect();
    tb.note(format!(
        "Goals: balancer CPU per connection ≤ 1/5 of HAProxy's: {goal_cpu}. Connection rate \
         within 10 % of no balancer: {}.",
        rates.join(", ")
    ));
    ctx.emit(&tb.render());
}

impl Case {
    fn errors_text(&self) -> String {
        format!(
            "{} of {}",
            self.wrk.errors,
            if self.wrk.requests.is_finite() {
                format!("{:.0}", self.wrk.requests)
            } else {
                "?".into()
            }
        )
    }
}
