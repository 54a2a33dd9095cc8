//! `cargo xtask bench capture`: wirelab capture vs `tcpdump -w` (default buffer and
//! `-B 65536`) and `dumpcap`, on the receiving end of one veth pair, at the same offered loads
//! (`wirelab gen`, XDP live frames, `--rate`, bounded by `--count`), for 64- and 1500-byte
//! frames; then iperf3 throughput with a capture on and off. Tables go to stdout and
//! `target/bench/capture.md`; docs/benchmarks-capture.md records a run.
//!
//! Per run: frames sent (gen), frames that arrived (rx0's `rx_packets`), frames in the file
//! (`capinfos`), the loss the tool states (wirelab: ring-full `lost` + perf `lost`; tcpdump:
//! "dropped by kernel"; dumpcap: "dropped" of its interface line) and rx0's `rx_dropped`.
//! A rate is loss-free when the file holds every frame sent.
//!
//! Knobs (environment): `WIRELAB_BENCH_CAPTURE_ROUNDS` (iperf3 rounds, default 3),
//! `WIRELAB_BENCH_CAPTURE_IPERF_SECS` (seconds per iperf3 run, default 4).
//!
//! Topology: `bench fw`'s (namespaces `wlb<pid>-tx`/`-rx`), removed on exit and Ctrl-C.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    cpu_seconds, f, fw::Topo, in_ns, json, knob, machine, median, num, out, spawn_ready, wirelab,
    Bg, Ctx, Ready, Table,
};

/// Seconds of traffic per run.
const SECS: u64 = 2;
/// Offered rates (pps) tried per frame size, lowest first; a tool's ladder stops at its first
/// loss. 0: as fast as the generator goes (for SECS seconds). 1500-byte frames are stepped
/// finely where the tools start to lose (200k-400k pps here).
fn rates(size: u32) -> &'static [u64] {
    if size >= 1000 {
        &[
            25_000, 50_000, 100_000, 200_000, 250_000, 300_000, 350_000, 400_000, 500_000, 0,
        ]
    } else {
        &[
            25_000, 50_000, 100_000, 200_000, 400_000, 600_000, 800_000, 1_000_000, 0,
        ]
    }
}
const FILTER: &str = "udp port 9";
/// Bytes kept of each iperf3 segment (headers): the cost measured is the capture path, not
/// the disk.
const IPERF_SNAPLEN: u32 = 128;

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    /// Default hooks: ingress at tc/TCX.
    Wirelab,
    /// Rings as large in all as `tcpdump -B 65536`'s one (64 MiB): `--buffer-size` 64 MiB
    /// over the CPUs.
    WirelabBig,
    /// `--ingress xdp` (the iperf3 table only: the earlier default, for comparison).
    WirelabXdp,
    Tcpdump,
    TcpdumpBig,
    Dumpcap,
}

const TOOLS: [Tool; 5] = [
    Tool::Wirelab,
    Tool::WirelabBig,
    Tool::Tcpdump,
    Tool::TcpdumpBig,
    Tool::Dumpcap,
];

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Wirelab => "wirelab capture",
            Tool::WirelabBig => "wirelab capture, 64 MiB of rings",
            Tool::WirelabXdp => "wirelab capture --ingress xdp",
            Tool::Tcpdump => "tcpdump -w",
            Tool::TcpdumpBig => "tcpdump -B 65536 -w",
            Tool::Dumpcap => "dumpcap",
        }
    }

    /// Capture `filter` on rx0 into `file`, `snaplen` bytes of each frame.
    fn start(self, t: &Topo, file: &Path, filter: &str, snaplen: u32) -> Result<Bg> {
        let f = file.to_str().context("file name")?;
        let s = snaplen.to_string();
        let (c, ready) = match self {
            Tool::Wirelab | Tool::WirelabXdp | Tool::WirelabBig => {
                let mut c = wirelab();
                c.arg("capture");
                if self == Tool::WirelabXdp {
                    c.args(["--ingress", "xdp"]);
                }
                if self == Tool::WirelabBig {
                    c.args(["--buffer-size", &big_ring_mib().to_string()]);
                }
                c.args([
                    "--netns",
                    &t.rx,
                    "--iface",
                    "rx0",
                    "--filter",
                    filter,
                    "--snaplen",
                    &s,
                    "--json",
                    "-w",
                    f,
                ]);
                (c, "capture attached")
            }
            Tool::Tcpdump | Tool::TcpdumpBig => {
                let mut args = vec![
                    "tcpdump", "-i", "rx0", "-n", "-Z", "root", "-s", &s, "-w", f,
                ];
                if self == Tool::TcpdumpBig {
                    args.extend(["-B", "65536"]);
                }
                args.push(filter);
                (in_ns(&t.rx, &args), "listening on")
            }
            Tool::Dumpcap => (
                in_ns(
                    &t.rx,
                    &["dumpcap", "-i", "rx0", "-f", filter, "-s", &s, "-w", f],
                ),
                "Capturing on",
            ),
        };
        spawn_ready(c, Ready::Stderr, ready, Duration::from_secs(60))
    }
}

/// MiB per CPU for [`Tool::WirelabBig`]: 64 MiB over the CPUs, rounded down to a power of two
/// (as `--buffer-size` rounds).
fn big_ring_mib() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mib = (64 / cpus).max(1);
    1 << (63 - mib.leading_zeros())
}

/// rx0's (rx_packets, rx_dropped).
fn rx_counters(t: &Topo) -> Result<(u64, u64)> {
    let v = json(
        in_ns(&t.rx, &["ip", "-s", "-j", "link", "show", "rx0"]).stdin(std::process::Stdio::null()),
    )?;
    let s = &v[0]["stats64"]["rx"];
    Ok((
        s["packets"].as_u64().unwrap_or(0),
        s["dropped"].as_u64().unwrap_or(0),
    ))
}

/// Frames in a capture file.
fn frames_in(file: &Path) -> Result<u64> {
    let o = out(Command::new("capinfos").args(["-c", "-M"]).arg(file))?;
    o.lines()
        .find_map(|l| l.strip_prefix("Number of packets:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("capinfos said: {o}"))
}

/// The loss a tool reports about itself, from its final output.
fn stated_loss(tool: Tool, stdout: &str, stderr: &[String]) -> Option<u64> {
    match tool {
        Tool::Wirelab | Tool::WirelabXdp | Tool::WirelabBig => {
            let v: serde_json::Value = serde_json::from_str(stdout.trim()).ok()?;
            // The kernel's count of samples a full buffer refused, and the perf buffers' own
            // count of the same samples: two views of one loss.
            let kernel = num(&v, &["ingress", "lost"]) + num(&v, &["egress", "lost"]);
            Some(kernel.max(num(&v, &["perf_lost"])) as u64)
        }
        // "N packets dropped by kernel"
        Tool::Tcpdump | Tool::TcpdumpBig => stderr.iter().find_map(|l| {
            l.strip_suffix(" packets dropped by kernel")
                .and_then(|n| n.trim().parse().ok())
        }),
        // "Packets received/dropped on interface 'rx0': 1000/0 (...)"
        Tool::Dumpcap => stderr.iter().find_map(|l| {
            let (_, rest) = l.split_once("Packets received/dropped on interface")?;
            let (_, nums) = rest.split_once(": ")?;
            let pair = nums.split_whitespace().next()?;
            pair.split_once('/')?.1.parse().ok()
        }),
    }
}

struct Run {
    /// Delivered rate the generator reached.
    pps: f64,
    sent: u64,
    arrived: u64,
    in_file: u64,
    stated: Option<u64>,
    if_dropped: u64,
}

impl Run {
    fn loss_free(&self) -> bool {
        self.sent > 0 && self.in_file >= self.sent
    }
}

fn one(t: &Topo, tool: Tool, size: u32, pps: u64) -> Result<Run> {
    let file = t.dir.join(format!("run-{size}-{pps}.pcap"));
    let _ = std::fs::remove_file(&file);
    let bg = tool.start(t, &file, FILTER, 2048)?;
    let lines = bg.lines.clone();
    let (rx0, drop0) = rx_counters(t)?;
    let mut gen = super::fw::gen_cmd(t, "198.18.10.1", "198.18.10.2", size)?;
    if pps == 0 {
        gen.args(["--duration", &format!("{SECS}s")]);
    } else {
        gen.args([
            "--rate",
            &pps.to_string(),
            "--count",
            &(pps * SECS).to_string(),
        ]);
    }
    let g = json(&mut gen)?;
    // Let the tool drain what it has buffered before it is stopped.
    std::thread::sleep(Duration::from_secs(1));
    let (rx1, drop1) = rx_counters(t)?;
    let stopped = bg.stop()?;
    let stderr = lines.lock().map(|v| v.clone()).unwrap_or_default();
    let run = Run {
        pps: num(&g, &["pps"]),
        sent: num(&g, &["sent"]) as u64,
        arrived: rx1.saturating_sub(rx0),
        in_file: frames_in(&file).unwrap_or(0),
        stated: stated_loss(tool, &stopped.text(), &stderr),
        if_dropped: drop1.saturating_sub(drop0),
    };
    let _ = std::fs::remove_file(&file);
    Ok(run)
}

/// Every frame rx0 receives dropped at its nftables netdev ingress hook, which comes after
/// every capture tool's tap (AF_PACKET's `ptype_all` taps, then tc/TCX ingress): the tools
/// see every frame, and the IP stack's work per frame (a UDP lookup, an ICMP error) no longer
/// limits the generator (64-byte frames on this VM: about 0.5M pps without, 1.27M with).
/// Removed when dropped (the iperf3 cost needs the stack).
struct DropAfterTaps(String);

impl DropAfterTaps {
    fn install(t: &Topo) -> Result<Self> {
        let f = t.file(
            "drop-after-taps.nft",
            "table netdev wlcapture {\n  chain ingress {\n    type filter hook ingress device \"rx0\" priority 0; policy drop;\n  }\n}\n",
        )?;
        super::fw::sh(&t.rx, &["nft", "-f", f.to_str().context("file name")?])?;
        Ok(Self(t.rx.clone()))
    }
}

impl Drop for DropAfterTaps {
    fn drop(&mut self) {
        let _ = super::fw::sh(&self.0, &["nft", "delete", "table", "netdev", "wlcapture"]);
    }
}

/// iperf3 TCP throughput (Mbit/s) from tx to rx for `secs` seconds.
fn iperf(t: &Topo, secs: u64) -> Result<f64> {
    let _srv = spawn_ready(
        in_ns(
            &t.rx,
            &["iperf3", "-s", "-1", "-B", "198.18.10.2", "--forceflush"],
        ),
        Ready::Stdout,
        "Server listening",
        Duration::from_secs(10),
    )?;
    let v = json(&mut in_ns(
        &t.tx,
        &["iperf3", "-c", "198.18.10.2", "-t", &secs.to_string(), "-J"],
    ))?;
    Ok(num(&v, &["end", "sum_received", "bits_per_second"]) / 1e6)
}

pub fn run(ctx: &Ctx) -> Result<()> {
    for bin in ["tcpdump", "dumpcap", "capinfos", "iperf3"] {
        if which(bin).is_none() {
            bail!("{bin} is missing: run `cargo xtask setup`");
        }
    }
    let t = Topo::up_for("capture")?;
    // The veth takes the generator's XDP frames only with an XDP program or GRO on rx0: GRO,
    // so every tool sees the same path.
    out(&mut in_ns(&t.rx, &["ethtool", "-K", "rx0", "gro", "on"]))?;
    let started = Instant::now();
    let dropped_after_taps = DropAfterTaps::install(&t)?;
    for size in [64u32, 1500] {
        let mut tab = Table::new(
            &format!("Capture rate, {size}-byte frames: highest offered rate with no capture loss"),
            "cargo xtask bench capture",
            &[
                "tool",
                "offered pps",
                "reached pps",
                "sent",
                "arrived (rx0)",
                "in file",
                "tool says lost",
                "rx0 dropped",
            ],
        );
        let mut best: Vec<(Tool, u64)> = vec![];
        for tool in TOOLS {
            let mut top = 0;
            for &pps in rates(size) {
                ctx.check()?;
                let r = one(&t, tool, size, pps)?;
                tab.row(vec![
                    tool.name().into(),
                    if pps == 0 {
                        "max".into()
                    } else {
                        pps.to_string()
                    },
                    f(r.pps, 0),
                    r.sent.to_string(),
                    r.arrived.to_string(),
                    r.in_file.to_string(),
                    r.stated.map_or("?".into(), |n| n.to_string()),
                    r.if_dropped.to_string(),
                ]);
                if !r.loss_free() {
                    break;
                }
                top = top.max(r.pps as u64);
            }
            best.push((tool, top));
        }
        let of = |which: Tool| best.iter().find(|(t, _)| *t == which).map_or(0, |b| b.1);
        let (wl, wl_big) = (of(Tool::Wirelab), of(Tool::WirelabBig));
        for (tool, top) in &best {
            let mut vs = String::new();
            if !matches!(tool, Tool::Wirelab | Tool::WirelabBig) && *top > 0 {
                vs = format!(" (wirelab: {}x", f(wl as f64 / *top as f64, 2));
                if *tool == Tool::TcpdumpBig {
                    vs += &format!(
                        "; with as much ring, {}x",
                        f(wl_big as f64 / *top as f64, 2)
                    );
                }
                vs += ")";
            }
            tab.note(format!(
                "{}: loss-free up to {} pps reached{vs}",
                tool.name(),
                top
            ));
        }
        tab.note(format!(
            "{SECS} s per run (wirelab gen, XDP, --rate, --count = {SECS} x rate; `max`: no --rate), \
             filter `{FILTER}`; `{}` is `wirelab capture --buffer-size {}` (MiB per CPU, as much \
             in all as `tcpdump -B 65536`'s 64 MiB); a tool's ladder stops at its first run with \
             fewer frames in the file than sent; loss-free rates are the rates the generator \
             reached. rx0 drops every frame at its nftables netdev ingress hook, after every \
             tool's tap (AF_PACKET's and tc/TCX ingress come first), so that the IP stack's \
             work does not hold the generator back. {}",
            Tool::WirelabBig.name(),
            big_ring_mib(),
            machine()
        ));
        ctx.emit(&tab.render());
    }
    drop(dropped_after_taps);

    cost(ctx, &t)?;
    eprintln!(
        "bench capture took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The cost: iperf3 with and without a capture of every segment on rx0. One iperf3 run
/// swings by tens of percent on a shared VM, so the cases take turns for `rounds` rounds
/// (each round in another order) and each capture is compared with the run without one of
/// its own round; the table gives the median and the range of those ratios, and the CPU
/// time of the capture's process per GB received.
fn cost(ctx: &Ctx, t: &Topo) -> Result<()> {
    let rounds = knob("WIRELAB_BENCH_CAPTURE_ROUNDS", 3)?.clamp(1, 20) as usize;
    let secs = knob("WIRELAB_BENCH_CAPTURE_IPERF_SECS", 4)?.clamp(1, 60);
    let cases: [Option<Tool>; 4] = [
        None,
        Some(Tool::Wirelab),
        Some(Tool::WirelabXdp),
        Some(Tool::Tcpdump),
    ];
    // mbits[case][round], cpu_per_gb[case][round].
    let mut mbits = vec![vec![f64::NAN; rounds]; cases.len()];
    let mut cpu = vec![vec![f64::NAN; rounds]; cases.len()];
    for r in 0..rounds {
        for k in 0..cases.len() {
            let c = (r + k) % cases.len();
            ctx.check()?;
            let file = t.dir.join("iperf.pcap");
            let bg = cases[c]
                .map(|tool| tool.start(t, &file, "tcp", IPERF_SNAPLEN))
                .transpose()?;
            let cpu0 = bg.as_ref().map_or(0.0, |b| cpu_seconds(b.pid()));
            let v = iperf(t, secs)?;
            if let Some(b) = &bg {
                let gb = v * secs as f64 / 8e3;
                cpu[c][r] = (cpu_seconds(b.pid()) - cpu0) / gb.max(1e-9);
            }
            drop(bg);
            let _ = std::fs::remove_file(&file);
            mbits[c][r] = v;
        }
    }
    let mut tab = Table::new(
        "iperf3 throughput with a capture on rx0",
        "cargo xtask bench capture",
        &[
            "capture",
            "Mbit/s per round",
            "median Mbit/s",
            "vs none (median of rounds, range)",
            "capture process CPU s per GB",
        ],
    );
    for (c, case) in cases.iter().enumerate() {
        let ratios: Vec<f64> = (0..rounds)
            .map(|r| 100.0 * mbits[c][r] / mbits[0][r].max(1e-9))
            .collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        tab.row(vec![
            case.map_or("none", |t| t.name()).into(),
            mbits[c]
                .iter()
                .map(|v| f(*v, 0))
                .collect::<Vec<_>>()
                .join(" / "),
            f(median(mbits[c].clone()), 0),
            if case.is_none() {
                "100%".into()
            } else {
                format!("{}% ({}-{}%)", f(median(ratios), 1), f(lo, 1), f(hi, 1))
            },
            if case.is_none() {
                "-".into()
            } else {
                f(median(cpu[c].clone()), 3)
            },
        ]);
    }
    tab.note(format!(
        "iperf3 TCP, {secs} s per run, tx -> rx, {rounds} rounds, the cases in turn (each round \
         starts one case later); the capture keeps every segment (filter `tcp`, {IPERF_SNAPLEN} \
         bytes of each). CPU: user + system time of the capture's process over the run (its \
         threads and system calls; the kernel's work per frame in softirq is on iperf3's \
         time) per GB iperf3 received. {}",
        machine()
    ));
    ctx.emit(&tab.render());
    Ok(())
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|c| c.is_file())
    })
}
