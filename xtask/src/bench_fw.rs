//! `cargo xtask bench fw`: wirelab fw vs nftables (netdev ingress) on one veth pair, driven by
//! the same generator (`wirelab gen`, XDP live frames), plus cost vs prefix count and the
//! generator next to trafgen. Prints a table and the ratios; docs/benchmarks-fw.md records a run.
//!
//! Topology: namespaces `wlb<pid>-tx` (tx0, 198.18.10.1) and `wlb<pid>-rx` (rx0,
//! 198.18.10.2), one veth pair. Everything is removed on exit.
use std::{
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::root;

const SECS: u64 = 3;

fn wirelab() -> Command {
    Command::new(root().join("target/release/wirelab"))
}

fn sh(ns: &str, args: &[&str]) -> Result<String> {
    let o = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .with_context(|| format!("{args:?}"))?;
    if !o.status.success() {
        bail!(
            "{args:?} in {ns}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).to_string())
}

struct Topo {
    tx: String,
    rx: String,
    dir: PathBuf,
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
    fn up() -> Result<Self> {
        let p = std::process::id();
        let t = Topo {
            tx: format!("wlb{p}-tx"),
            rx: format!("wlb{p}-rx"),
            dir: std::env::temp_dir().join(format!("wirelab-bench-fw-{p}")),
        };
        std::fs::create_dir_all(&t.dir)?;
        for ns in [&t.tx, &t.rx] {
            crate::run(Command::new("ip").args(["netns", "add", ns]))?;
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

    fn rx_mac(&self) -> Result<String> {
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
    let mac = t.rx_mac()?;
    let s0 = softirq_ns()?;
    let o = wirelab()
        .args([
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
            "64",
            "--dport",
            "9",
            "--method",
            "xdp",
            "--duration",
            &format!("{SECS}s"),
            "--flows",
            &flows.to_string(),
            "--json",
        ])
        .stderr(Stdio::inherit())
        .output()?;
    if !o.status.success() {
        bail!("wirelab gen failed");
    }
    let s1 = softirq_ns()?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let delivered = v["delivered"].as_u64().unwrap_or(0);
    Ok(Res {
        pps: v["pps"].as_f64().unwrap_or(0.0),
        delivered,
        softirq_ns_per_pkt: (s1 - s0) as f64 / delivered.max(1) as f64,
    })
}

struct Fw(Child);
impl Drop for Fw {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn start_fw(t: &Topo, rules: &str) -> Result<Fw> {
    let f = t.dir.join("rules.toml");
    std::fs::write(&f, rules)?;
    let mut c = wirelab()
        .args([
            "fw", "--netns", &t.rx, "--iface", "rx0", "--mode", "native", "--rules",
        ])
        .arg(&f)
        .args(["--duration", "600s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let err = c.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let t0 = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) if l.contains("fw attached") => break,
            Ok(l) => eprintln!("fw: {l}"),
            Err(_) if t0.elapsed() > Duration::from_secs(120) => bail!("fw did not start"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!("fw exited"),
            Err(_) => {}
        }
    }
    Ok(Fw(c))
}

fn fw_dropped(t: &Topo) -> Result<u64> {
    Ok(fw_stats(t)?["rules"][0]["dropped"].as_u64().unwrap_or(0))
}

fn fw_stats(t: &Topo) -> Result<serde_json::Value> {
    let o = wirelab()
        .args(["fw", "stats", "--netns", &t.rx, "--json"])
        .output()?;
    Ok(serde_json::from_slice(&o.stdout)?)
}

/// In-kernel run time of the fw program per packet (needs kernel.bpf_stats_enabled=1).
fn fw_prog_ns(t: &Topo) -> Result<f64> {
    Ok(fw_stats(t)?["program"]["ns_per_packet"]
        .as_f64()
        .unwrap_or(0.0))
}

/// Turns kernel.bpf_stats_enabled on for the run and restores it.
struct BpfStats(String);
impl BpfStats {
    fn on() -> Result<Self> {
        let p = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(p)?.trim().to_string();
        std::fs::write(p, "1")?;
        Ok(Self(old))
    }
}
impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

struct Nft(String);
impl Drop for Nft {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "nft", "delete", "table", "netdev", "wlbench",
            ])
            .status();
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "ethtool", "-K", "rx0", "gro", "off",
            ])
            .status();
    }
}

fn nft_load(t: &Topo, sets: &str, rules: &str) -> Result<Nft> {
    let f = t.dir.join("rules.nft");
    std::fs::write(
        &f,
        format!(
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

pub fn run() -> Result<()> {
    if !Command::new("id")
        .arg("-u")
        .output()?
        .stdout
        .starts_with(b"0")
    {
        bail!("cargo xtask bench fw needs root");
    }
    crate::build()?;
    let t = Topo::up()?;
    let _stats = BpfStats::on()?;
    let mut report = String::new();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    writeln!(
        report,
        "machine: {cpus} CPUs, kernel {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()
    )?;
    writeln!(report, "64-byte UDP, {FLOWS} source addresses, {SECS}s per run, generator: wirelab gen (XDP live frames) on tx0 -> rx0\n")?;

    // 1. Drop all generator traffic: fw (1 CIDR rule) vs nft (1 rule).
    println!("== drop rate: wirelab fw vs nftables netdev ingress ==");
    // Three rounds, fw and nftables alternating; the median of each (softirq time is
    // tick-sampled, so single runs vary by +-20 %).
    let mut fw_runs = vec![];
    let mut nft_runs = vec![];
    for round in 1..=ROUNDS {
        let _fw = start_fw(&t, &format!("default = \"allow\"\n[[rule]]\nname = \"drop\"\naction = \"deny\"\nsrc = \"{GEN_SRC}\"\n"))?;
        let r = gen(&t, GEN_SRC, FLOWS)?;
        let d = fw_dropped(&t)?;
        let prog = fw_prog_ns(&t)?;
        println!(
            "  [{round}/{ROUNDS}] wirelab fw: {:.0} pps ({} delivered), {} dropped, receiver softirq {:.0} ns/pkt, program {prog:.1} ns/pkt",
            r.pps, r.delivered, d, r.softirq_ns_per_pkt
        );
        fw_runs.push((r, prog));
        drop(_fw);
        let _n = nft_load(&t, "", &format!("    ip saddr {GEN_SRC} counter drop"))?;
        let r = gen(&t, GEN_SRC, FLOWS)?;
        let d = nft_dropped(&t)?;
        println!(
            "  [{round}/{ROUNDS}] nftables:   {:.0} pps ({} delivered), {} dropped, receiver softirq {:.0} ns/pkt",
            r.pps, r.delivered, d, r.softirq_ns_per_pkt
        );
        nft_runs.push(r);
    }
    let med = |mut v: Vec<f64>| -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let fw_res = Res {
        pps: med(fw_runs.iter().map(|r| r.0.pps).collect()),
        delivered: 0,
        softirq_ns_per_pkt: med(fw_runs.iter().map(|r| r.0.softirq_ns_per_pkt).collect()),
    };
    let fw_prog = med(fw_runs.iter().map(|r| r.1).collect());
    let nft_res = Res {
        pps: med(nft_runs.iter().map(|r| r.pps).collect()),
        delivered: 0,
        softirq_ns_per_pkt: med(nft_runs.iter().map(|r| r.softirq_ns_per_pkt).collect()),
    };
    writeln!(
        report,
        "| drop, 1 rule (median of {ROUNDS} runs each) | pps | receiver softirq ns/pkt |\n|---|---|---|"
    )?;
    writeln!(
        report,
        "| wirelab fw (XDP native) | {:.0} | {:.0} |",
        fw_res.pps, fw_res.softirq_ns_per_pkt
    )?;
    writeln!(
        report,
        "| nftables netdev ingress | {:.0} | {:.0} |",
        nft_res.pps, nft_res.softirq_ns_per_pkt
    )?;
    writeln!(
        report,
        "| ratio fw/nft | {:.2}x | {:.2}x less CPU |",
        fw_res.pps / nft_res.pps.max(1.0),
        nft_res.softirq_ns_per_pkt / fw_res.softirq_ns_per_pkt.max(1.0)
    )?;

    writeln!(
        report,
        "\nfw program run time (kernel.bpf_stats_enabled): {fw_prog:.1} ns/packet\n"
    )?;
    // What the receiver spends outside the program (the veth's XDP frame handling) bounds
    // the ratio any XDP program can reach on this path; the no-rule run is fw's own floor.
    let floor = {
        let _fw = start_fw(&t, "default = \"deny\"\n")?;
        let r = gen(&t, GEN_SRC, FLOWS)?;
        let prog = fw_prog_ns(&t)?;
        println!(
            "  wirelab fw, no rules (default deny): {:.0} pps, receiver softirq {:.0} ns/pkt, program {prog:.1} ns/pkt",
            r.pps, r.softirq_ns_per_pkt
        );
        (r, prog)
    };
    let outside = (fw_res.softirq_ns_per_pkt - fw_prog).max(1.0);
    writeln!(
        report,
        "| receiver cost per packet | ns |\n|---|---|\n\
         | nftables netdev ingress (whole receive path) | {:.0} |\n\
         | wirelab fw, 1 rule: whole receive path | {:.0} |\n\
         | of which the fw program | {fw_prog:.1} |\n\
         | of which the veth's XDP frame handling (the rest) | {outside:.0} |\n\
         | wirelab fw, no rules (default deny): program | {:.1} |\n\
         | upper bound of the ratio for a 0 ns program: nft / veth share | {:.2}x |\n",
        nft_res.softirq_ns_per_pkt,
        fw_res.softirq_ns_per_pkt,
        floor.1,
        nft_res.softirq_ns_per_pkt / outside,
    )?;

    // 1b. The same over IPv6: 64-byte frames (14 + 40 + 8 + 2 bytes), one /64 rule.
    println!("== drop rate over IPv6 ==");
    let v6src = "2001:2::/64";
    let fw6 = {
        let _fw = start_fw(&t, &format!("default = \"allow\"\n[[rule]]\nname = \"drop\"\naction = \"deny\"\nsrc = \"{v6src}\"\n"))?;
        let r = gen_to(&t, v6src, "2001:2::2", FLOWS)?;
        let prog = fw_prog_ns(&t)?;
        println!(
            "  wirelab fw IPv6: {:.0} pps, receiver softirq {:.0} ns/pkt, program {prog:.1} ns/pkt",
            r.pps, r.softirq_ns_per_pkt
        );
        (r, prog)
    };
    let nft6 = {
        let _n = nft_load(&t, "", &format!("    ip6 saddr {v6src} counter drop"))?;
        let r = gen_to(&t, v6src, "2001:2::2", FLOWS)?;
        println!(
            "  nftables IPv6: {:.0} pps, receiver softirq {:.0} ns/pkt",
            r.pps, r.softirq_ns_per_pkt
        );
        r
    };
    writeln!(
        report,
        "| drop over IPv6, 1 rule (/64, {FLOWS} sources) | pps | receiver softirq ns/pkt | program ns/pkt |\n|---|---|---|---|\n\
         | wirelab fw (XDP native) | {:.0} | {:.0} | {:.1} |\n\
         | nftables netdev ingress | {:.0} | {:.0} | |\n\
         | ratio fw/nft | {:.2}x | {:.2}x less CPU | |\n",
        fw6.0.pps,
        fw6.0.softirq_ns_per_pkt,
        fw6.1,
        nft6.pps,
        nft6.softirq_ns_per_pkt,
        fw6.0.pps / nft6.pps.max(1.0),
        nft6.softirq_ns_per_pkt / fw6.0.softirq_ns_per_pkt.max(1.0)
    )?;

    // 2. Cost vs prefix count.
    println!("== cost vs prefixes ==");
    writeln!(report, "| prefixes | fw lookup | fw pps | fw softirq ns/pkt | fw program ns/pkt | fw program ns/pkt, 1 source | nft set pps | nft set ns/pkt | nft rules pps | nft rules ns/pkt |\n|---|---|---|---|---|---|---|---|---|---|")?;
    let mut fw_base = 0.0;
    for n in [1usize, 1000, 100_000, MIXED] {
        let list = prefixes(n);
        let label = if n == MIXED {
            "1000 mixed /12-/32".to_string()
        } else {
            n.to_string()
        };
        let f = t.dir.join("big.txt");
        std::fs::write(&f, list.join("\n"))?;
        let fr = {
            let _fw = start_fw(&t, &format!("default = \"allow\"\n[[rule]]\nname = \"drop\"\naction = \"deny\"\nsrc_file = \"{}\"\n", f.display()))?;
            let r = gen(&t, GEN_SRC, FLOWS)?;
            let p = fw_prog_ns(&t)?;
            let l = &fw_stats(&t)?["lookup"]["src4"];
            let plan = format!(
                "{} {} ({} entries)",
                l["method"].as_str().unwrap_or("?"),
                l["lengths"],
                l["entries"]
            );
            // The same table hit by a single source: table size without cache misses.
            let runs0 = fw_stats(&t)?["program"].clone();
            gen(&t, "198.18.0.7", 1)?;
            let runs1 = fw_stats(&t)?["program"].clone();
            let dn = runs1["runs"].as_u64().unwrap_or(0) - runs0["runs"].as_u64().unwrap_or(0);
            let dt = runs1["run_time_ns"].as_u64().unwrap_or(0)
                - runs0["run_time_ns"].as_u64().unwrap_or(0);
            (r, p, dt as f64 / dn.max(1) as f64, plan)
        };
        let (fr, fprog, fprog1, plan) = fr;
        if n == 1 {
            fw_base = fr.pps;
        }
        println!(
            "  fw {label} prefixes ({plan}): {:.0} pps ({:+.1}% vs 1), {:.0} ns/pkt, program {fprog:.1} ns/pkt",
            fr.pps,
            (fr.pps / fw_base - 1.0) * 100.0,
            fr.softirq_ns_per_pkt
        );
        let sr = {
            let set = format!(
                "  set bad {{ type ipv4_addr; flags interval; elements = {{ {} }} }}",
                list.join(", ")
            );
            let _n = nft_load(&t, &set, "    ip saddr @bad counter drop")?;
            gen(&t, GEN_SRC, FLOWS)?
        };
        println!(
            "  nft set {label}: {:.0} pps, {:.0} ns/pkt",
            sr.pps, sr.softirq_ns_per_pkt
        );
        // One rule per prefix; 100,000 rules take nft minutes to load and make each packet
        // walk them all, so that row uses 10,000.
        let nr_n = if n == MIXED { 1000 } else { n.min(10_000) };
        let rr = {
            let rules: String = prefixes(if n == MIXED { n } else { nr_n })
                .iter()
                .map(|p| format!("    ip saddr {p} counter drop\n"))
                .collect();
            let _n = nft_load(&t, "", &rules)?;
            gen(&t, GEN_SRC, FLOWS)?
        };
        println!(
            "  nft {nr_n} rules: {:.0} pps, {:.0} ns/pkt",
            rr.pps, rr.softirq_ns_per_pkt
        );
        writeln!(
            report,
            "| {label} | {plan} | {:.0} | {:.0} | {fprog:.1} | {fprog1:.1} | {:.0} | {:.0} | {:.0}{} | {:.0} |",
            fr.pps,
            fr.softirq_ns_per_pkt,
            sr.pps,
            sr.softirq_ns_per_pkt,
            rr.pps,
            if nr_n != n && n != MIXED {
                format!(" ({nr_n} rules)")
            } else {
                String::new()
            },
            rr.softirq_ns_per_pkt
        )?;
    }

    // 3. Generator vs trafgen into the same firewall.
    println!("== generator: wirelab gen vs trafgen ==");
    let (g, tg) = {
        let _fw = start_fw(&t, &format!("default = \"allow\"\n[[rule]]\nname = \"drop\"\naction = \"deny\"\nsrc = \"{GEN_SRC}\"\n"))?;
        let g = gen(&t, "198.18.10.1", 1)?;
        let before = fw_dropped(&t)?;
        let mac = t.rx_mac()?;
        let cfg = t.dir.join("trafgen.cfg");
        let m: Vec<String> = mac.split(':').map(|b| format!("0x{b}")).collect();
        let tx_mac = sh(&t.tx, &["ip", "-br", "link", "show", "tx0"])?
            .split_whitespace()
            .nth(2)
            .unwrap_or("")
            .to_string();
        let sm: Vec<String> = tx_mac.split(':').map(|b| format!("0x{b}")).collect();
        std::fs::write(
            &cfg,
            format!(
                "{{ {}, {}, 0x08, 0x00, 0x45, 0x00, 0x00, 0x32, 0x00, 0x01, 0x00, 0x00, 0x40, 0x11, csumip(14, 33), 198, 18, 10, 1, 198, 18, 10, 2, 0x9c, 0x40, 0x00, 0x09, 0x00, 0x1e, 0x00, 0x00, fill(0x00, 22) }}\n",
                m.join(", "),
                sm.join(", ")
            ),
        )?;
        let t0 = Instant::now();
        let st = Command::new("ip")
            .args([
                "netns", "exec", &t.tx, "timeout", "20", "trafgen", "--dev", "tx0", "--conf",
            ])
            .arg(&cfg)
            .args(["--cpus", "1", "--num", "3000000", "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let secs = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(300));
        let got = fw_dropped(&t)? - before;
        if !st.success() {
            eprintln!("trafgen exited with {st}");
        }
        (g, got as f64 / secs)
    };
    println!("  wirelab gen: {:.0} pps; trafgen: {tg:.0} pps", g.pps);
    writeln!(
        report,
        "\n| generator (1 flow, into wirelab fw drop) | pps |\n|---|---|"
    )?;
    writeln!(report, "| wirelab gen (XDP live frames) | {:.0} |", g.pps)?;
    writeln!(report, "| trafgen (netsniff-ng, 1 CPU) | {tg:.0} |")?;
    writeln!(report, "| ratio | {:.2}x |", g.pps / tg.max(1.0))?;
    println!("\n{report}");
    Ok(())
}
