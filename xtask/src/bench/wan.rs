//! `cargo xtask bench wan`: `wirelab wan` against the kernel bridge (and `tc tbf` for rates)
//! in the same default lab: client — wan host (bridge br0 over to-client/to-server) — server.
//!
//! Every comparison runs its two sides back to back in one lab; the bridge is the reference
//! because it is what carries the lab's traffic when wirelab is not running.
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::{
    cli, f, in_ns, json, lab_up, mean, num, out, pct, prog_stats, spawn_ready, wirelab, Bg, Ctx,
    Lab, Ready, Table, TempDir,
};

const SERVER: &str = "198.18.0.2";
const TCP_SECS: u32 = 5;
const UDP_SECS: u32 = 4;
const ROUNDS: usize = 2;
/// BPF program types in /proc/PID/fdinfo.
const PROG_SCHED_CLS: u32 = 3;
const PROG_XDP: u32 = 6;

/// The paths compared: None = the kernel bridge (no wirelab running).
const MODES: [(&str, Option<&str>); 3] = [
    ("kernel bridge", None),
    ("wirelab, empty spec (tc fast path)", Some("")),
    ("wirelab, `delay 1us` (AF_XDP engine)", Some("delay 1us")),
];

/// Keeps BPF run-time statistics on while held (`BPF_ENABLE_STATS`; reference counted by the
/// kernel, so other users of `kernel.bpf_stats_enabled` are not disturbed).
struct BpfStats(i32);

impl BpfStats {
    fn enable() -> Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // union bpf_attr { struct { __u32 type; } enable_stats; }, BPF_STATS_RUN_TIME = 0.
        let attr = [0u32; 4];
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                std::mem::size_of_val(&attr) as u32,
            )
        };
        if fd < 0 {
            bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
        }
        Ok(Self(fd as i32))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}

struct Wan {
    bg: Bg,
}

impl Wan {
    fn start(lab: &Lab, extra: &[&str]) -> Result<Self> {
        let mut c = wirelab();
        c.args(cli::wan(&lab.ns("wan")));
        c.args(["--json", "--interval", "1h", "--duration", "10m"]);
        c.args(extra);
        let bg = spawn_ready(c, Ready::Stderr, "wan running", Duration::from_secs(180))?;
        Ok(Self { bg })
    }

    /// Stop it and return its final report (one row per direction and class).
    fn stop(self) -> Result<Value> {
        let so = self.bg.stop()?.text();
        let line = so
            .lines()
            .rfind(|l| l.contains("\"final\""))
            .with_context(|| format!("no final report from wirelab wan: {so}"))?;
        Ok(serde_json::from_str(line)?)
    }
}

/// The default lab with an iperf3 server on the server host.
fn lab_with_iperf(prefix: &str) -> Result<(Lab, Bg)> {
    let lab = lab_up(prefix)?;
    let iperf = spawn_ready(
        {
            let mut c = in_ns(&lab.ns("server"), &["iperf3"]);
            c.args(["-s", "-p", "5201", "--forceflush"]);
            c
        },
        Ready::Stdout,
        "Server listening",
        Duration::from_secs(10),
    )?;
    Ok((lab, iperf))
}

/// Queue drops of direction `dir` (all classes).
fn queue_drops(fin: &Value, dir: &str) -> u64 {
    dir_sum(fin, dir, "drops_queue")
}

/// `cargo xtask bench wan-trace`: trace replay (`rate trace FILE`) at 10, 100 and 500 Mbit/s
/// against `rate R -14` (the same IP-byte accounting) and the rate itself, TCP client → server.
pub fn trace(ctx: &Ctx) -> Result<()> {
    const SECS: u32 = 8;
    if Command::new("iperf3").arg("--version").output().is_err() {
        bail!("iperf3 is not installed (cargo xtask setup)");
    }
    ctx.emit(&format!(
        "\n## wan trace replay (`cargo xtask bench wan-trace`)\n\nMachine: {}.\n",
        super::machine()
    ));
    let (lab, _iperf) = lab_with_iperf("bt")?;
    let dir = TempDir::new("wirelab-bench-trace-");
    let mut t = Table::new(
        "Trace replay accuracy: a constant-rate trace vs `rate` at the same rate, TCP client → server",
        &format!(
            "wirelab wan trace --rate R --duration 1s -o R.trace; wirelab wan --a-to-b \"rate trace R.trace\" vs --a-to-b \"rate R -14\"; iperf3 -c {SERVER} -t {SECS} -O 2"
        ),
        &[
            "rate",
            "expected TCP goodput Mbit/s",
            "trace Mbit/s",
            "trace / expected",
            "`rate R -14` Mbit/s",
            "trace / rate",
            "trace queue drops",
            "rate queue drops",
        ],
    );
    for r in ["10mbit", "100mbit", "500mbit"] {
        ctx.check()?;
        eprintln!("bench wan-trace: {r}");
        let file = dir.join(&format!("{r}.trace"));
        out(wirelab()
            .args(["wan", "trace", "--rate", r, "--duration", "1s", "-o"])
            .arg(&file))?;
        let run = |spec: String| -> Result<(f64, u64)> {
            let w = Wan::start(&lab, &["--a-to-b", &spec])?;
            let got = iperf_tcp(&lab, SECS, 2);
            let fin = w.stop()?;
            Ok((got?.0, queue_drops(&fin, "a_to_b")))
        };
        let (tr, tr_drops) = run(format!("rate trace {}", file.display()))?;
        let (rt, rt_drops) = run(format!("rate {r} -14"))?;
        let bits: f64 = r.trim_end_matches("mbit").parse::<f64>()? * 1e6;
        // 1448 bytes of TCP payload per 1500-byte IP packet (one opportunity each).
        let expected = bits * 1448.0 / 1500.0 / 1e6;
        t.row(vec![
            r.into(),
            f(expected, 2),
            f(tr, 2),
            format!("{}%", f(tr / expected * 100.0, 1)),
            f(rt, 2),
            format!("{}%", f(tr / rt * 100.0, 1)),
            tr_drops.to_string(),
            rt_drops.to_string(),
        ]);
    }
    t.note(
        "A trace's opportunities carry 1500 bytes of IP packet, as in mm-link; `rate R -14` \
         counts the same bytes (the frame without its Ethernet header). Expected: R × 1448/1500 \
         (TCP payload per full-size packet, timestamps on). Queues are left at their default \
         (twice the bandwidth-delay product, at least 50 ms of the rate and 64 KiB).",
    );
    ctx.emit(&t.render());
    Ok(())
}

/// Frames wirelab received in direction `dir` (all classes).
fn wan_rx(fin: &Value, dir: &str) -> u64 {
    dir_sum(fin, dir, "rx")
}

/// A counter of a final report summed over the classes of direction `dir`.
fn dir_sum(fin: &Value, dir: &str, field: &str) -> u64 {
    fin["classes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["dir"] == dir)
                .map(|r| r[field].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn server_rx_packets(lab: &Lab) -> Result<u64> {
    let v = json(Command::new("ip").args([
        "-n",
        &lab.ns("server"),
        "-s",
        "-j",
        "link",
        "show",
        "eth0",
    ]))?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .context("stats64.rx.packets")
}

fn iperf_client(lab: &Lab) -> Command {
    let mut c = in_ns(&lab.ns("client"), &["iperf3"]);
    c.args(["-c", SERVER, "-J"]);
    c
}

/// TCP client→server: receiver goodput (Mbit/s) and sender retransmits.
fn iperf_tcp(lab: &Lab, secs: u32, omit: u32) -> Result<(f64, f64)> {
    let v = json(iperf_client(lab).args(["-t", &secs.to_string(), "-O", &omit.to_string()]))?;
    Ok((
        num(&v, &["end", "sum_received", "bits_per_second"]) / 1e6,
        num(&v, &["end", "sum_sent", "retransmits"]),
    ))
}

struct Udp {
    offered_pps: f64,
    wire_pps: f64,
    app_pps: f64,
    packets: f64,
}

/// 64-byte UDP payloads (106-byte frames) client→server as fast as iperf3 sends them.
fn iperf_udp(lab: &Lab, secs: u32) -> Result<Udp> {
    let rx0 = server_rx_packets(lab)?;
    let t0 = Instant::now();
    let v = json(iperf_client(lab).args(["-u", "-l", "64", "-b", "0", "-t", &secs.to_string()]))?;
    let wall = t0.elapsed().as_secs_f64();
    let rx1 = server_rx_packets(lab)?;
    let sent = num(&v, &["end", "sum_sent", "packets"]);
    let secs_sent = num(&v, &["end", "sum_sent", "seconds"]);
    let got = num(&v, &["end", "sum_received", "packets"])
        - num(&v, &["end", "sum_received", "lost_packets"]);
    let secs_rx = num(&v, &["end", "sum_received", "seconds"]);
    // Frames that reached the server's interface: the path's delivery, independent of
    // whether the iperf3 receiver kept up. The few control frames of the run are included.
    let wire = (rx1 - rx0) as f64;
    Ok(Udp {
        offered_pps: sent / secs_sent,
        wire_pps: wire / secs_sent.max(wall - 0.5).min(wall),
        app_pps: got / secs_rx,
        packets: wire,
    })
}

struct Lat {
    fwd: (f64, f64),
    rev: (f64, f64),
    rtt: (f64, f64),
    lost: f64,
}

fn probe(lab: &Lab) -> Result<Lat> {
    let mut c = wirelab();
    c.args(cli::probe_client(
        &lab.ns("client"),
        &format!("{SERVER}:7000"),
    ));
    let v = json(c.args([
        "--rate", "1000", "--count", "3000", "--size", "72", "--json",
    ]))?;
    let p = |d: &str, q: &str| num(&v, &[d, "delay_ms", q]);
    Ok(Lat {
        fwd: (p("forward", "p50"), p("forward", "p99")),
        rev: (p("reverse", "p50"), p("reverse", "p99")),
        rtt: (num(&v, &["rtt_ms", "p50"]), num(&v, &["rtt_ms", "p99"])),
        lost: num(&v, &["no_echo"]),
    })
}

fn offloads(lab: &Lab, host: &str, iface: &str) -> Result<String> {
    let t = out(in_ns(&lab.ns(host), &["ethtool"]).args(["-k", iface]))?;
    let pick = |k: &str| {
        t.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{k}: ")))
            .map(|v| v.replace("[requested on]", "(requested on)"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    Ok(format!(
        "tx-checksumming {}, TSO {}, GSO {}, GRO {}",
        pick("tx-checksumming"),
        pick("tx-tcp-segmentation"),
        pick("generic-segmentation-offload"),
        pick("generic-receive-offload")
    ))
}

fn set_tx(lab: &Lab, on: bool) -> Result<()> {
    for h in ["client", "server"] {
        out(in_ns(&lab.ns(h), &["ethtool"]).args([
            "-K",
            "eth0",
            "tx",
            if on { "on" } else { "off" },
        ]))?;
    }
    Ok(())
}

#[derive(Default)]
struct ModeResult {
    tcp: Vec<f64>,
    retrans: Vec<f64>,
    udp_offered: Vec<f64>,
    udp_wire: Vec<f64>,
    udp_app: Vec<f64>,
    xdp_ns: Vec<f64>,
    tc_ns: Vec<f64>,
    cpu_ns: Vec<f64>,
    lat: Option<Lat>,
}

pub fn run(ctx: &Ctx) -> Result<()> {
    if Command::new("iperf3").arg("--version").output().is_err() {
        bail!("iperf3 is not installed (cargo xtask setup)");
    }
    ctx.emit(&format!(
        "\n## wan (`cargo xtask bench wan`)\n\nMachine: {}.\n",
        super::machine()
    ));
    let _stats = BpfStats::enable()?;
    let (lab, _iperf) = lab_with_iperf("bw")?;
    let bind = format!("{SERVER}:7000");
    let _probe = cli::start_probe_server(wirelab(), &lab.ns("server"), &bind, "15m")?;
    out(in_ns(&lab.ns("client"), &["ping"]).args(["-c", "3", "-i", "0.2", "-q", SERVER]))?;

    let mut off = Table::new(
        "Offload settings in the lab",
        "ethtool -k IFACE (inside the lab namespaces)",
        &["interface", "settings"],
    );
    for (h, i) in [
        ("client", "eth0"),
        ("server", "eth0"),
        ("wan", "to-client"),
        ("wan", "to-server"),
    ] {
        off.row(vec![format!("{h} {i}"), offloads(&lab, h, i)?]);
    }
    off.note(
        "The default lab turns TX checksum offload off on the endpoints (the AF_XDP engine \
         forwards frames as they are, so partial checksums must be finished by the sender); \
         without TX checksumming the kernel also turns TSO off, so TCP leaves the endpoints as \
         MTU-sized segments (GSO in software). Every row below uses these settings unless it \
         says otherwise, for the bridge and for wirelab alike.",
    );
    ctx.emit(&off.render());

    // 1. Throughput and latency: bridge, fast path, engine, ROUNDS interleaved rounds.
    let mut res: Vec<ModeResult> = (0..MODES.len()).map(|_| ModeResult::default()).collect();
    for round in 0..ROUNDS {
        for (i, (name, spec)) in MODES.iter().enumerate() {
            ctx.check()?;
            eprintln!("bench wan: round {} {name}", round + 1);
            let wan = match spec {
                None => None,
                Some("") => Some(Wan::start(&lab, &[])?),
                Some(s) => Some(Wan::start(&lab, &["--both", s])?),
            };
            let (mbps, rt) = iperf_tcp(&lab, TCP_SECS, 1)?;
            res[i].tcp.push(mbps);
            res[i].retrans.push(rt);
            let pid = wan.as_ref().map(|w| w.bg.pid());
            let (p0, c0) = pid
                .map(|p| (prog_stats(p), super::cpu_seconds(p)))
                .unwrap_or_default();
            let u = iperf_udp(&lab, UDP_SECS)?;
            if let Some(p) = pid {
                let p1 = prog_stats(p);
                let c1 = super::cpu_seconds(p);
                let per = |ty: u32| {
                    let (a, b) = (p0.get(&ty), p1.get(&ty));
                    match (a, b) {
                        (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0) as f64,
                        _ => f64::NAN,
                    }
                };
                res[i].xdp_ns.push(per(PROG_XDP));
                res[i].tc_ns.push(per(PROG_SCHED_CLS));
                res[i].cpu_ns.push((c1 - c0) * 1e9 / u.packets);
            }
            res[i].udp_offered.push(u.offered_pps);
            res[i].udp_wire.push(u.wire_pps);
            res[i].udp_app.push(u.app_pps);
            if round == 0 {
                res[i].lat = Some(probe(&lab)?);
            }
            if let Some(w) = wan {
                let fin = w.stop()?;
                let rx = wan_rx(&fin, "a_to_b");
                if (rx as f64) < u.packets * 0.9 {
                    bail!("{name}: wirelab saw {rx} frames a→b, fewer than the {} of the UDP run: traffic did not cross it", u.packets);
                }
            }
        }
    }

    // TCP with TX checksum offload (and so TSO) on at the endpoints: bridge and fast path.
    set_tx(&lab, true)?;
    let tso_bridge = iperf_tcp(&lab, TCP_SECS, 1);
    let tso_fast = Wan::start(&lab, &[]).and_then(|w| {
        let r = iperf_tcp(&lab, TCP_SECS, 1);
        w.stop()?;
        r
    });
    set_tx(&lab, false)?;
    let (tso_bridge, tso_fast) = (tso_bridge?, tso_fast?);

    let mut t = Table::new(
        "Throughput at 0 impairment, client → server, wirelab vs the kernel bridge",
        &format!(
            "iperf3 -c {SERVER} -t {TCP_SECS} -O 1 (TCP); iperf3 -c {SERVER} -u -l 64 -b 0 -t {UDP_SECS} (UDP); {ROUNDS} interleaved rounds, mean"
        ),
        &[
            "path",
            "TCP Mbit/s (rounds)",
            "TCP vs bridge",
            "UDP offered pps",
            "UDP pps at server eth0",
            "UDP pps vs bridge",
            "UDP pps received by iperf3",
        ],
    );
    let b_tcp = mean(&res[0].tcp);
    let b_udp = mean(&res[0].udp_wire);
    for (i, (name, _)) in MODES.iter().enumerate() {
        let r = &res[i];
        t.row(vec![
            name.to_string(),
            format!(
                "{} ({})",
                f(mean(&r.tcp), 0),
                r.tcp
                    .iter()
                    .map(|x| f(*x, 0))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            pct(mean(&r.tcp), b_tcp),
            f(mean(&r.udp_offered), 0),
            f(mean(&r.udp_wire), 0),
            pct(mean(&r.udp_wire), b_udp),
            f(mean(&r.udp_app), 0),
        ]);
    }
    t.row(vec![
        "kernel bridge, TX csum + TSO on at the endpoints".into(),
        f(tso_bridge.0, 0),
        pct(tso_bridge.0, b_tcp),
        "".into(),
        "".into(),
        "".into(),
        "".into(),
    ]);
    t.row(vec![
        "wirelab fast path, TX csum + TSO on at the endpoints".into(),
        f(tso_fast.0, 0),
        format!("{} (of TSO bridge)", pct(tso_fast.0, tso_bridge.0)),
        "".into(),
        "".into(),
        "".into(),
        "".into(),
    ]);
    t.note(
        "UDP: one iperf3 sender on this 2-core VM offers what it can; \"pps at server eth0\" \
         counts the frames the path delivered to the server's interface (receiver-independent), \
         \"received by iperf3\" what the iperf3 server read (it drops the rest in its socket \
         buffer on every path). When delivered ≈ offered, the sender, not the path, was the limit.",
    );
    ctx.emit(&t.render());

    let mut c = Table::new(
        "Per-packet cost of each path (the UDP runs above)",
        "BPF run time from /proc/PID/fdinfo of the wirelab process (BPF_ENABLE_STATS); wirelab CPU time from /proc/PID/stat",
        &[
            "path",
            "wan_xdp ns/frame",
            "wan_fwd (tc) ns/frame",
            "wirelab process CPU ns/frame",
        ],
    );
    for (i, (name, spec)) in MODES.iter().enumerate() {
        if spec.is_none() {
            continue;
        }
        let r = &res[i];
        c.row(vec![
            name.to_string(),
            f(mean(&r.xdp_ns), 0),
            f(mean(&r.tc_ns), 0),
            f(mean(&r.cpu_ns), 0),
        ]);
    }
    ctx.emit(&c.render());

    let mut l = Table::new(
        "Latency at 0 impairment (one-way, kernel receive timestamps), wirelab vs the kernel bridge",
        &format!("wirelab probe client --to {SERVER}:7000 --rate 1000 --count 3000 --size 72 --json"),
        &[
            "path",
            "fwd p50 ms",
            "fwd p99 ms",
            "rev p50 ms",
            "rev p99 ms",
            "RTT p50 ms",
            "RTT p99 ms",
            "added fwd p50 / p99 ms",
            "no echo",
        ],
    );
    let b = res[0].lat.as_ref().context("bridge latency")?;
    for (i, (name, _)) in MODES.iter().enumerate() {
        let x = res[i].lat.as_ref().context("latency")?;
        l.row(vec![
            name.to_string(),
            f(x.fwd.0, 3),
            f(x.fwd.1, 3),
            f(x.rev.0, 3),
            f(x.rev.1, 3),
            f(x.rtt.0, 3),
            f(x.rtt.1, 3),
            if i == 0 {
                "—".into()
            } else {
                format!("{} / {}", f(x.fwd.0 - b.fwd.0, 3), f(x.fwd.1 - b.fwd.1, 3))
            },
            f(x.lost, 0),
        ]);
    }
    ctx.emit(&l.render());

    classes(ctx, &lab)?;
    rate(ctx, &lab)?;
    Ok(())
}

/// Per-packet cost with 1 and 65,536 classes. The traffic matches a /32 class for the server
/// (198.18.0.2); in the large config that class sits among 65,536 /32s covering 198.18.0.0/16,
/// so the LPM lookup walks a fully populated trie.
fn classes(ctx: &Ctx, lab: &Lab) -> Result<()> {
    let dir = TempDir::new("wirelab-bench-");
    let write = |n: u32, spec: &str| -> Result<PathBuf> {
        let mut s = String::new();
        let both = if spec.is_empty() {
            String::new()
        } else {
            format!("both = \"{spec}\"\n")
        };
        s += &format!("[default]\n{both}\n");
        let list: Vec<u32> = if n == 1 { vec![2] } else { (0..n).collect() };
        for i in list {
            s += &format!(
                "[[class]]\nname = \"c{i}\"\nnet = \"198.18.{}.{}/32\"\n{both}\n",
                i >> 8,
                i & 255
            );
        }
        let p = dir
            .0
            .join(format!("classes-{n}-{}.toml", spec.replace(' ', "_")));
        std::fs::write(&p, s)?;
        Ok(p)
    };
    let mut t = Table::new(
        "Per-packet cost with 1 vs 65,536 classes",
        &format!(
            "wirelab wan --config classes-N.toml; iperf3 -c {SERVER} -u -l 64 -b 0 -t {UDP_SECS}; the class of the traffic is the /32 of the server, alone (N = 1) or among 65,536 /32s of 198.18.0.0/16"
        ),
        &[
            "path",
            "classes",
            "start-up s",
            "UDP pps at server eth0",
            "wan_xdp ns/frame",
            "wan_fwd ns/frame",
            "wirelab CPU ns/frame",
            "ns/frame vs 1 class",
        ],
    );
    for (name, spec) in [("tc fast path", ""), ("AF_XDP engine", "delay 1us")] {
        let mut base = f64::NAN;
        for n in [1u32, 65_536] {
            ctx.check()?;
            eprintln!("bench wan: {n} classes, {name}");
            let cfg = write(n, spec)?;
            let w = Wan::start(lab, &["--config", &cfg.to_string_lossy()])?;
            let startup = w.bg.ready_after.as_secs_f64();
            let pid = w.bg.pid();
            let (p0, c0) = (prog_stats(pid), super::cpu_seconds(pid));
            let u = iperf_udp(lab, UDP_SECS)?;
            let (p1, c1) = (prog_stats(pid), super::cpu_seconds(pid));
            let fin = w.stop()?;
            let in_class: u64 = fin["classes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|r| r["dir"] == "a_to_b" && r["class"] == "c2")
                        .map(|r| r["rx"].as_u64().unwrap_or(0))
                        .sum()
                })
                .unwrap_or(0);
            if (in_class as f64) < u.packets * 0.9 {
                bail!(
                    "{n} classes: only {in_class} frames were classified as c2 (of {})",
                    u.packets
                );
            }
            let per = |ty: u32| match (p0.get(&ty), p1.get(&ty)) {
                (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0) as f64,
                _ => f64::NAN,
            };
            let xdp = per(PROG_XDP);
            let tc = per(PROG_SCHED_CLS);
            let cpu = (c1 - c0) * 1e9 / u.packets;
            // The cost the class count can change: the XDP program (classification) plus,
            // on the engine path, the engine's own CPU per frame.
            let cost = xdp + if spec.is_empty() { 0.0 } else { cpu };
            if n == 1 {
                base = cost;
            }
            t.row(vec![
                name.into(),
                n.to_string(),
                f(startup, 2),
                f(u.wire_pps, 0),
                f(xdp, 0),
                f(tc, 0),
                if spec.is_empty() {
                    "—".into()
                } else {
                    f(cpu, 0)
                },
                if n == 1 {
                    "—".into()
                } else {
                    pct(cost, base)
                },
            ]);
        }
    }
    t.note(
        "\"ns/frame vs 1 class\" compares what the class count can change: wan_xdp's run time \
         per frame (classification is three LPM lookups per side, whatever the number of \
         classes), plus the engine's CPU per frame on the engine path.",
    );
    ctx.emit(&t.render());
    Ok(())
}

/// `rate R` in wirelab against `tc qdisc tbf rate R` on the bridged lab's server-side veth.
fn rate(ctx: &Ctx, lab: &Lab) -> Result<()> {
    const SECS: u32 = 8;
    let mut t = Table::new(
        "`rate` accuracy: wirelab vs tc tbf at the same rate, TCP client → server",
        &format!(
            "wirelab wan --a-to-b \"rate R\" vs tc qdisc add dev to-server root tbf rate R burst 15k limit 125000 (bridge); iperf3 -c {SERVER} -t {SECS} -O 2"
        ),
        &[
            "rate",
            "expected TCP goodput Mbit/s",
            "wirelab Mbit/s",
            "wirelab / expected",
            "tbf Mbit/s",
            "tbf / expected",
            "wirelab / tbf",
            "wirelab queue drops",
            "tbf drops",
        ],
    );
    for r in ["20mbit", "100mbit"] {
        ctx.check()?;
        eprintln!("bench wan: rate {r}");
        let bits: f64 = r.trim_end_matches("mbit").parse::<f64>()? * 1e6;
        // 1448 bytes of payload (MSS with timestamps) per 1514-byte frame; both shapers count
        // the Ethernet frame without FCS.
        let expected = bits * 1448.0 / 1514.0 / 1e6;
        let w = Wan::start(lab, &["--a-to-b", &format!("rate {r}")])?;
        let wl = iperf_tcp(lab, SECS, 2);
        let fin = w.stop()?;
        let wl = wl?.0;
        let qd = queue_drops(&fin, "a_to_b");
        let ns = lab.ns("wan");
        out(Command::new("tc").args([
            "-n",
            &ns,
            "qdisc",
            "add",
            "dev",
            "to-server",
            "root",
            "tbf",
            "rate",
            r,
            "burst",
            "15k",
            "limit",
            "125000",
        ]))?;
        let tb = iperf_tcp(lab, SECS, 2);
        let st = json(Command::new("tc").args([
            "-n",
            &ns,
            "-s",
            "-j",
            "qdisc",
            "show",
            "dev",
            "to-server",
        ]));
        out(Command::new("tc").args(["-n", &ns, "qdisc", "del", "dev", "to-server", "root"]))?;
        let tb = tb?.0;
        let drops = st
            .ok()
            .and_then(|v| {
                v.as_array().and_then(|a| {
                    a.iter()
                        .find(|q| q["kind"] == "tbf")
                        .and_then(|q| q["drops"].as_u64())
                })
            })
            .map(|d| d.to_string())
            .unwrap_or_else(|| "?".into());
        t.row(vec![
            r.into(),
            f(expected, 2),
            f(wl, 2),
            pct(wl, expected),
            f(tb, 2),
            pct(tb, expected),
            pct(wl, tb),
            qd.to_string(),
            drops,
        ]);
    }
    t.note(
        "Expected goodput: the rate × 1448/1514 (TCP payload per full Ethernet frame, TCP \
         timestamps on). wirelab's queue limit is left unset (sized from the bandwidth-delay \
         product, at least 64 KiB); tbf gets a 125,000-byte queue (wirelab's size at 20 mbit).",
    );
    ctx.emit(&t.render());
    Ok(())
}
