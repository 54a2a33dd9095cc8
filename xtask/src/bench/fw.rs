//! `cargo xtask bench fw`: wirelab fw vs nftables (netdev ingress) on one veth pair, driven by
//! the same generator (`wirelab gen`, XDP live frames), plus cost vs prefix count and the
//! generator next to trafgen. Tables go to stdout and `target/bench/fw.md`; docs/benchmarks-fw.md
//! records a run.
//!
//! Topology: namespaces `wlb<pid>-tx` (tx0, 198.18.10.1) and `wlb<pid>-rx` (rx0,
//! 198.18.10.2), one veth pair. Everything is removed on exit, also on Ctrl-C (checked
//! between runs).
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use super::{
    f, in_ns, json, machine, median, num, out, spawn_ready, wirelab, Bg, Ctx, Ready, Sysctl, Table,
};

const SECS: u64 = 3;

pub(super) fn sh(ns: &str, args: &[&str]) -> Result<String> {
    out(&mut in_ns(ns, args))
}

/// Two namespaces joined by one veth pair (shared with `bench capture`).
pub(super) struct Topo {
    pub(super) tx: String,
    pub(super) rx: String,
    pub(super) dir: PathBuf,
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in [&self.tx, &self.rx] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Topo {
    /// Write `text` to file `name` of the scratch directory; returns its path.
    pub(super) fn file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let f = self.dir.join(name);
        std::fs::write(&f, text)?;
        Ok(f)
    }

    fn up() -> Result<Self> {
        Self::up_for("fw")
    }

    /// The topology, its scratch directory named after the bench `tool`.
    pub(super) fn up_for(tool: &str) -> Result<Self> {
        let p = std::process::id();
        let t = Topo {
            tx: format!("wlb{p}-tx"),
            rx: format!("wlb{p}-rx"),
            dir: std::env::temp_dir().join(format!("wirelab-bench-{tool}-{p}")),
        };
        std::fs::create_dir_all(&t.dir)?;
        for ns in [&t.tx, &t.rx] {
            out(Command::new("ip").args(["netns", "add", ns]))?;
        }
        sh(
            &t.tx,
            &[
                "ip", "link", "add", "tx0", "type", "veth", "peer", "name", "rx0", "netns", &t.rx,
            ],
        )?;
        sh(
            &t.tx,
            &["ip", "addr", "add", "198.18.10.1/24", "dev", "tx0"],
        )?;
        sh(
            &t.rx,
            &["ip", "addr", "add", "198.18.10.2/24", "dev", "rx0"],
        )?;
        sh(&t.tx, &["ip", "link", "set", "tx0", "up"])?;
        sh(&t.rx, &["ip", "link", "set", "rx0", "up"])?;
        sh(&t.tx, &["ip", "link", "set", "lo", "up"])?;
        sh(&t.rx, &["ip", "link", "set", "lo", "up"])?;
        Ok(t)
    }

    pub(super) fn rx_mac(&self) -> Result<String> {
        let o = sh(&self.rx, &["ip", "-br", "link", "show", "rx0"])?;
        Ok(o.split_whitespace().nth(2).unwrap_or("").to_string())
    }
}

/// Softirq ticks (all CPUs) from /proc/stat, in nanoseconds.
fn softirq_ns() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/stat")?;
    let l = s.lines().next().unwrap_or("");
    let v: Vec<u64> = l
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let hz = 100; // USER_HZ
    Ok(v.get(6).copied().unwrap_or(0) * 1_000_000_000 / hz)
}

#[derive(Default, Clone)]
struct Res {
    pps: f64,
    delivered: u64,
    softirq_ns_per_pkt: f64,
}

/// Run the generator for SECS seconds; returns delivered pps and receiver softirq time/pkt.
fn gen(t: &Topo, src: &str, flows: u32) -> Result<Res> {
    gen_to(t, src, "198.18.10.2", flows)
}

/// [`gen`] to destination `dst` (IPv6 runs use 2001:2::2 with a 2001:2::/64 source).
fn gen_to(t: &Topo, src: &str, dst: &str, flows: u32) -> Result<Res> {
    let s0 = softirq_ns()?;
    let v = json(gen_cmd(t, src, dst, 64)?.args([
        "--duration",
        &format!("{SECS}s"),
        "--flows",
        &flows.to_string(),
    ]))?;
    let s1 = softirq_ns()?;
    let delivered = num(&v, &["delivered"]) as u64;
    Ok(Res {
        pps: num(&v, &["pps"]),
        delivered,
        softirq_ns_per_pkt: (s1 - s0) as f64 / delivered.max(1) as f64,
    })
}

/// `wirelab gen` from tx0 to rx0: UDP to port 9, `size`-byte frames, XDP live frames, JSON
/// report; the caller adds how long or how many.
pub(super) fn gen_cmd(t: &Topo, src: &str, dst: &str, size: u32) -> Result<Command> {
    let mac = t.rx_mac()?;
    let mut c = wirelab();
    c.args([
        "gen",
        "--netns",
        &t.tx,
        "--iface",
        "tx0",
        "--dst-mac",
        &mac,
        "--src",
        src,
        "--dst",
        dst,
        "--proto",
        "udp",
        "--size",
    ])
    .arg(size.to_string())
    .args(["--dport", "9", "--method", "xdp", "--json"]);
    Ok(c)
}

fn start_fw(t: &Topo, rules: &str) -> Result<Bg> {
    let f = t.file("rules.toml", rules)?;
    let mut c = wirelab();
    c.args([
        "fw", "--netns", &t.rx, "--iface", "rx0", "--mode", "native", "--rules",
    ])
    .arg(&f)
    .args(["--duration", "600s"]);
    spawn_ready(c, Ready::Stderr, "fw attached", Duration::from_secs(120))
}

fn fw_dropped(t: &Topo) -> Result<u64> {
    Ok(fw_stats(t)?["rules"][0]["dropped"].as_u64().unwrap_or(0))
}

fn fw_stats(t: &Topo) -> Result<serde_json::Value> {
    json(wirelab().args(["fw", "stats", "--netns", &t.rx, "--json"]))
}

/// In-kernel run time of the fw program per packet (needs kernel.bpf_stats_enabled=1).
fn fw_prog_ns(t: &Topo) -> Result<f64> {
    Ok(num(&fw_stats(t)?, &["program", "ns_per_packet"]))
}

struct Nft(String);
impl Drop for Nft {
    fn drop(&mut self) {
        let _ = sh(&self.0, &["nft", "delete", "table", "netdev", "wlbench"]);
        let _ = sh(&self.0, &["ethtool", "-K", "rx0", "gro", "off"]);
    }
}

fn nft_load(t: &Topo, sets: &str, rules: &str) -> Result<Nft> {
    let f = t.file(
        "rules.nft",
        &format!(
            "table netdev wlbench {{\n{sets}\n  chain ingress {{\n    type filter hook ingress device \"rx0\" priority 0; policy accept;\n{rules}\n  }}\n}}\n"
        ),
    )?;
    let g = Nft(t.rx.clone());
    // The generator's XDP frames need NAPI on the receiving veth: GRO on gives it without XDP.
    sh(&t.rx, &["ethtool", "-K", "rx0", "gro", "on"])?;
    let t0 = Instant::now();
    sh(&t.rx, &["nft", "-f", f.to_str().unwrap_or("")])?;
    eprintln!("  nft ruleset loaded in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(g)
}

fn nft_dropped(t: &Topo) -> Result<u64> {
    let o = sh(
        &t.rx,
        &["nft", "list", "chain", "netdev", "wlbench", "ingress"],
    )?;
    let mut n = 0;
    for l in o.lines() {
        if let Some(i) = l.find("counter packets ") {
            n += l[i + 16..]
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(n)
}

/// Prefix lists that together cover the generator's 100,000 sources 198.18.0.0 + i
/// (i < 100,000): `n` prefixes, or with `MIXED` 1,000 prefixes of many lengths.
fn prefixes(n: usize) -> Vec<String> {
    match n {
        1 => vec!["198.18.0.0/15".into()],
        MIXED => {
            // The sources as the shortest CIDR cover (/16 /17 /22 /23 /25 /27), plus 994
            // decoys of lengths /12 to /32 elsewhere.
            let mut v: Vec<String> = [
                "198.18.0.0/16",
                "198.19.0.0/17",
                "198.19.128.0/22",
                "198.19.132.0/23",
                "198.19.134.0/25",
                "198.19.134.128/27",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            // Decoy i sits at the start of its own /12 block from 1.0.0.0 on (blocks 16 to
            // 1,009: no overlap with each other or with 198.18.0.0/15, which nftables
            // interval sets would refuse), its length cycling through /12 to /32.
            for i in 0..994u32 {
                let len = 12 + i % 21;
                v.push(format!(
                    "{}/{len}",
                    std::net::Ipv4Addr::from((16 + i) << 20)
                ));
            }
            v
        }
        1000 => {
            // 782 /25s cover 100,096 addresses; 218 more decoys elsewhere.
            let mut v: Vec<String> = (0..782u32)
                .map(|i| format!("{}/25", std::net::Ipv4Addr::from(0xc612_0000u32 + i * 128)))
                .collect();
            v.extend(
                (0..218u32)
                    .map(|i| format!("{}/24", std::net::Ipv4Addr::from(0x0a00_0000u32 + (i << 8)))),
            );
            v
        }
        _ => (0..n as u32)
            .map(|i| format!("{}/32", std::net::Ipv4Addr::from(0xc612_0000u32 + i)))
            .collect(),
    }
}

const FLOWS: u32 = 100_000;
/// Rounds of the headline drop comparison (medians reported).
const ROUNDS: usize = 3;
/// `prefixes()` argument for the mixed-length list of 1,000 prefixes.
const MIXED: usize = 1001;
const GEN_SRC: &str = "198.18.0.0/15";

const DROP_ALL: &str =
    "default = \"allow\"\n[[rule]]\nname = \"drop\"\naction = \"deny\"\nsrc = \"198.18.0.0/15\"\n";

pub fn run(ctx: &Ctx) -> Result<()> {
    let t = Topo::up()?;
    let _stats = Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    ctx.emit(&format!(
        "machine: {}\n\n64-byte UDP, {FLOWS} source addresses, {SECS}s per run, generator: wirelab gen (XDP live frames) on tx0 -> rx0",
        machine()
    ));
    drop_rate(ctx, &t)?;
    ctx.check()?;
    drop_rate6(ctx, &t)?;
    ctx.check()?;
    cost_vs_prefixes(ctx, &t)?;
    ctx.check()?;
    generator(ctx, &t)
}

/// Drop all generator traffic (1): fw (1 CIDR rule) vs nft (1 rule), rounds alternating, the
/// median of each (softirq time is tick-sampled, so single runs vary by ±20 %); then what
/// the receiver spends outside the program.
fn drop_rate(ctx: &Ctx, t: &Topo) -> Result<()> {
    eprintln!("== drop rate: wirelab fw vs nftables netdev ingress ==");
    let mut fw_runs = vec![];
    let mut nft_runs = vec![];
    for round in 1..=ROUNDS {
        ctx.check()?;
        let fw = start_fw(t, DROP_ALL)?;
        let r = gen(t, GEN_SRC, FLOWS)?;
        let d = fw_dropped(t)?;
        let prog = fw_prog_ns(t)?;
        eprintln!(
            "  [{round}/{ROUNDS}] wirelab fw: {:.0} pps ({} delivered), {d} dropped, receiver softirq {:.0} ns/pkt, program {prog:.1} ns/pkt",
            r.pps, r.delivered, r.softirq_ns_per_pkt
        );
        fw_runs.push((r, prog));
        drop(fw);
        let _n = nft_load(t, "", &format!("    ip saddr {GEN_SRC} counter drop"))?;
        let r = gen(t, GEN_SRC, FLOWS)?;
        let d = nft_dropped(t)?;
        eprintln!(
            "  [{round}/{ROUNDS}] nftables:   {:.0} pps ({} delivered), {d} dropped, receiver softirq {:.0} ns/pkt",
            r.pps, r.delivered, r.softirq_ns_per_pkt
        );
        nft_runs.push(r);
    }
    let fw_pps = median(fw_runs.iter().map(|r| r.0.pps).collect());
    let fw_ns = median(fw_runs.iter().map(|r| r.0.softirq_ns_per_pkt).collect());
    let fw_prog = median(fw_runs.iter().map(|r| r.1).collect());
    let nft_pps = median(nft_runs.iter().map(|r| r.pps).collect());
    let nft_ns = median(nft_runs.iter().map(|r| r.softirq_ns_per_pkt).collect());
    let mut tb = Table::new(
        &format!("Drop, 1 rule (median of {ROUNDS} runs each)"),
        "cargo xtask bench fw",
        &["", "pps", "receiver softirq ns/pkt"],
    );
    tb.row(vec![
        "wirelab fw (XDP native)".into(),
        f(fw_pps, 0),
        f(fw_ns, 0),
    ]);
    tb.row(vec![
        "nftables netdev ingress".into(),
        f(nft_pps, 0),
        f(nft_ns, 0),
    ]);
    tb.row(vec![
        "ratio fw/nft".into(),
        format!("{:.2}x", fw_pps / nft_pps.max(1.0)),
        format!("{:.2}x less CPU", nft_ns / fw_ns.max(1.0)),
    ]);
    tb.note(format!(
        "fw program run time (kernel.bpf_stats_enabled): {fw_prog:.1} ns/packet"
    ));
    ctx.emit(&tb.render());
    // What the receiver spends outside the program (the veth's XDP frame handling) bounds
    // the ratio any XDP program can reach on this path; the no-rule run is fw's own floor.
    let floor = {
        let _fw = start_fw(t, "default = \"deny\"\n")?;
        let r = gen(t, GEN_SRC, FLOWS)?;
        let prog = fw_prog_ns(t)?;
        eprintln!(
            "  wirelab fw, no rules (default deny): {:.0} pps, receiver softirq {:.0} ns/pkt, program {prog:.1} ns/pkt",
            r.pps, r.softirq_ns_per_pkt
        );
        prog
    };
    let outside = (fw_ns - fw_prog).max(1.0);
    let mut tb = Table::new(
        "Receiver cost per packet",
        "cargo xtask bench fw",
        &["", "ns"],
    );
    for (what, v, d) in [
        ("nftables netdev ingress (whole receive path)", nft_ns, 0),
        ("wirelab fw, 1 rule: whole receive path", fw_ns, 0),
        ("of which the fw program", fw_prog, 1),
        (
            "of which the veth's XDP frame handling (the rest)",
            outside,
            0,
        ),
        ("wirelab fw, no rules (default deny): program", floor, 1),
    ] {
        tb.row(vec![what.into(), f(v, d)]);
    }
    tb.row(vec![
        "upper bound of the ratio for a 0 ns program: nft / veth share".into(),
        format!("{:.2}x", nft_ns / outside),
    ]);
    ctx.emit(&tb.render());
    Ok(())
}

/// The same over IPv6 (1b): 64-byte frames (14 + 40 + 8 + 2 bytes), one /64 rule.
fn drop_rate6(ctx: &Ctx, t: &Topo) -> Result<()> {
    eprintln!("== drop rate over IPv6 ==");
    let v6src = "2001:2::/64";
    let (fw6, prog6) = {
        let _fw = start_fw(t, &format!("default = \"allow\"\n[[rule]]\nname = \"drop\"\naction = \"deny\"\nsrc = \"{v6src}\"\n"))?;
        let r = gen_to(t, v6src, "2001:2::2", FLOWS)?;
        (r, fw_prog_ns(t)?)
    };
    let nft6 = {
        let _n = nft_load(t, "", &format!("    ip6 saddr {v6src} counter drop"))?;
        gen_to(t, v6src, "2001:2::2", FLOWS)?
    };
    let mut tb = Table::new(
        &format!("Drop over IPv6, 1 rule (/64, {FLOWS} sources)"),
        "cargo xtask bench fw",
        &["", "pps", "receiver softirq ns/pkt", "program ns/pkt"],
    );
    tb.row(vec![
        "wirelab fw (XDP native)".into(),
        f(fw6.pps, 0),
        f(fw6.softirq_ns_per_pkt, 0),
        f(prog6, 1),
    ]);
    tb.row(vec![
        "nftables netdev ingress".into(),
        f(nft6.pps, 0),
        f(nft6.softirq_ns_per_pkt, 0),
        String::new(),
    ]);
    tb.row(vec![
        "ratio fw/nft".into(),
        format!("{:.2}x", fw6.pps / nft6.pps.max(1.0)),
        format!(
            "{:.2}x less CPU",
            nft6.softirq_ns_per_pkt / fw6.softirq_ns_per_pkt.max(1.0)
        ),
        String::new(),
    ]);
    ctx.emit(&tb.render());
    Ok(())
}

/// fw with `n` prefixes (see [`prefixes`]): (result, program ns/pkt, program ns/pkt with one
/// source, lookup plan).
fn fw_with_prefixes(t: &Topo, list: &[String]) -> Result<(Res, f64, f64, String)> {
    let file = t.file("big.txt", &list.join("\n"))?;
    let _fw = start_fw(t, &format!("default = \"allow\"\n[[rule]]\nname = \"drop\"\naction = \"deny\"\nsrc_file = \"{}\"\n", file.display()))?;
    let r = gen(t, GEN_SRC, FLOWS)?;
    let p = fw_prog_ns(t)?;
    let st = fw_stats(t)?;
    let l = &st["lookup"]["src4"];
    let plan = format!(
        "{} {} ({} entries)",
        l["method"].as_str().unwrap_or("?"),
        l["lengths"],
        l["entries"]
    );
    // The same table hit by a single source: table size without cache misses.
    let (runs0, ns0) = (
        num(&st, &["program", "runs"]),
        num(&st, &["program", "run_time_ns"]),
    );
    gen(t, "198.18.0.7", 1)?;
    let st = fw_stats(t)?;
    let dn = num(&st, &["program", "runs"]) - runs0;
    let dt = num(&st, &["program", "run_time_ns"]) - ns0;
    Ok((r, p, dt / dn.max(1.0), plan))
}

/// Cost vs prefix count (2): fw's lookup against an nftables interval set and one nftables
/// rule per prefix.
fn cost_vs_prefixes(ctx: &Ctx, t: &Topo) -> Result<()> {
    eprintln!("== cost vs prefixes ==");
    let mut tb = Table::new(
        "Cost vs prefixes",
        "cargo xtask bench fw",
        &[
            "prefixes",
            "fw lookup",
            "fw pps",
            "fw softirq ns/pkt",
            "fw program ns/pkt",
            "fw program ns/pkt, 1 source",
            "nft set pps",
            "nft set ns/pkt",
            "nft rules pps",
            "nft rules ns/pkt",
        ],
    );
    for n in [1usize, 1000, 100_000, MIXED] {
        ctx.check()?;
        let list = prefixes(n);
        let label = if n == MIXED {
            "1000 mixed /12-/32".to_string()
        } else {
            n.to_string()
        };
        let (fr, fprog, fprog1, plan) = fw_with_prefixes(t, &list)?;
        eprintln!(
            "  fw {label} prefixes ({plan}): {:.0} pps, {:.0} ns/pkt, program {fprog:.1} ns/pkt",
            fr.pps, fr.softirq_ns_per_pkt
        );
        let sr = {
            let set = format!(
                "  set bad {{ type ipv4_addr; flags interval; elements = {{ {} }} }}",
                list.join(", ")
            );
            let _n = nft_load(t, &set, "    ip saddr @bad counter drop")?;
            gen(t, GEN_SRC, FLOWS)?
        };
        // One rule per prefix; 100,000 rules take nft minutes to load and make each packet
        // walk them all, so that row uses 10,000.
        let nr_n = if n == MIXED { 1000 } else { n.min(10_000) };
        let rr = {
            let rules: String = prefixes(if n == MIXED { n } else { nr_n })
                .iter()
                .map(|p| format!("    ip saddr {p} counter drop\n"))
                .collect();
            let _n = nft_load(t, "", &rules)?;
            gen(t, GEN_SRC, FLOWS)?
        };
        let fewer = if nr_n != n && n != MIXED {
            format!(" ({nr_n} rules)")
        } else {
            String::new()
        };
        tb.row(vec![
            label,
            plan,
            f(fr.pps, 0),
            f(fr.softirq_ns_per_pkt, 0),
            f(fprog, 1),
            f(fprog1, 1),
            f(sr.pps, 0),
            f(sr.softirq_ns_per_pkt, 0),
            format!("{}{fewer}", f(rr.pps, 0)),
            f(rr.softirq_ns_per_pkt, 0),
        ]);
    }
    ctx.emit(&tb.render());
    Ok(())
}

/// The trafgen configuration of one 64-byte UDP frame tx0 → rx0.
fn trafgen_cfg(t: &Topo) -> Result<PathBuf> {
    let hex = |mac: String| -> String {
        mac.split(':')
            .map(|b| format!("0x{b}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let dst = hex(t.rx_mac()?);
    let src = hex(sh(&t.tx, &["ip", "-br", "link", "show", "tx0"])?
        .split_whitespace()
        .nth(2)
        .unwrap_or("")
        .to_string());
    t.file(
        "trafgen.cfg",
        &format!(
            "{{ {dst}, {src}, 0x08, 0x00, 0x45, 0x00, 0x00, 0x32, 0x00, 0x01, 0x00, 0x00, 0x40, 0x11, csumip(14, 33), 198, 18, 10, 1, 198, 18, 10, 2, 0x9c, 0x40, 0x00, 0x09, 0x00, 0x1e, 0x00, 0x00, fill(0x00, 22) }}\n"
        ),
    )
}

/// Generator vs trafgen (3) into the same firewall.
fn generator(ctx: &Ctx, t: &Topo) -> Result<()> {
    eprintln!("== generator: wirelab gen vs trafgen ==");
    let _fw = start_fw(t, DROP_ALL)?;
    let g = gen(t, "198.18.10.1", 1)?;
    let before = fw_dropped(t)?;
    let cfg = trafgen_cfg(t)?;
    let t0 = Instant::now();
    let st = in_ns(
        &t.tx,
        &["timeout", "20", "trafgen", "--dev", "tx0", "--conf"],
    )
    .arg(&cfg)
    .args(["--cpus", "1", "--num", "3000000", "-q"])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .status()?;
    let secs = t0.elapsed().as_secs_f64();
    if !st.success() {
        bail!("trafgen exited with {st}");
    }
    // The last frames are counted once the receiver has handled them.
    let mut got = 0;
    for _ in 0..50 {
        let now = fw_dropped(t)? - before;
        if now == got && now > 0 {
            break;
        }
        got = now;
        std::thread::sleep(Duration::from_millis(100));
    }
    let tg = got as f64 / secs;
    let mut tb = Table::new(
        "Generator (1 flow, into wirelab fw drop)",
        "cargo xtask bench fw",
        &["", "pps"],
    );
    tb.row(vec!["wirelab gen (XDP live frames)".into(), f(g.pps, 0)]);
    tb.row(vec!["trafgen (netsniff-ng, 1 CPU)".into(), f(tg, 0)]);
    tb.row(vec!["ratio".into(), format!("{:.2}x", g.pps / tg.max(1.0))]);
    ctx.emit(&tb.render());
    Ok(())
}
