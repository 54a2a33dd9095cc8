//! The library half of `cargo xtask bench lb` (xtask does not link the wirelab library, so it
//! runs this example): `lb_bench prog` times the lb program's paths through
//! BPF_PROG_TEST_RUN on the maps `Balancer::install` fills, as `tests/lb_prog.rs` does;
//! `lb_bench maglev` measures Maglev's quality (`wirelab::lb::maglev::quality`). Each prints
//! one JSON object per line.
//!
//! `cargo build --release -p wirelab --example lb_bench && sudo target/release/examples/lb_bench prog --repeat 200000`
use anyhow::{bail, Context as _, Result};
use aya::{
    programs::{Program, SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use clap::Parser;
use etherparse::PacketBuilder;
use serde::Serialize;
use wirelab::ebpf::LoadRetrying as _;
use wirelab::lb::{maglev, Balancer, Config};
use wirelab_testkit::frames::{
    lb::{CLIENT, CLIENT6, IFACE_MAC, OTHER, VIP, VIP6, VIP_DOWN},
    DST, SRC,
};

#[derive(Parser)]
#[command(about = "lb benchmark peer of `cargo xtask bench lb` (not for direct use)")]
enum Cmd {
    /// Time each path of the lb program (tc `lb` and XDP `lb_xdp`) on one frame.
    Prog {
        /// BPF_PROG_TEST_RUN repeat count of one timed run (the kernel's average is taken).
        #[arg(long, default_value_t = 200_000)]
        repeat: u32,
        /// Timed runs per path, taken in rounds over all paths (the median is printed).
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// Calls of one run each, for the NAT paths (a repeated run reuses one skb, which the
        /// first run translates).
        #[arg(long, default_value_t = 20_000)]
        calls: u32,
        /// Time only the repeated paths whose "prog: path" contains this (for profiling one
        /// path with `perf record`); the NAT paths are left out with it.
        #[arg(long)]
        only: Option<String>,
    },
    /// Maglev's disruption, balance and build time against hash mod N.
    Maglev {
        /// Sample flows per row.
        #[arg(long, default_value_t = 1_000_000)]
        flows: u32,
    },
}

/// One timed path.
#[derive(Serialize)]
struct Cost {
    path: &'static str,
    /// `lb` (tc) or `lb_xdp`.
    prog: &'static str,
    /// `repeat` (one run of `runs` repeats, the kernel's average) or `calls` (`runs` calls of
    /// one run each, their times averaged).
    how: &'static str,
    runs: u32,
    ns: f64,
    verdict: i32,
}

/// The program tests' configs (tests/data): DSR (a TCP and a UDP service, a service whose
/// backends all have weight 0, an IPv6 service) and NAT.
const DSR: &str = include_str!("../tests/data/lb-prog.toml");
const NAT: &str = include_str!("../tests/data/lb-prog-nat.toml");

/// A TCP frame with a small payload: a SYN, or an ACK (`syn` false).
fn tcp(src: &[u8], dst: &[u8], sport: u16, dport: u16, syn: bool) -> Result<Vec<u8>> {
    let eth = PacketBuilder::ethernet2(SRC, DST);
    let ip = match (src.len(), dst.len()) {
        (4, 4) => eth.ipv4(src.try_into()?, dst.try_into()?, 64),
        (16, 16) => eth.ipv6(src.try_into()?, dst.try_into()?, 64),
        _ => bail!("addresses of different families"),
    };
    let b = ip.tcp(sport, dport, 1, 1024);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, b"GET / HTTP/1.0\r\n\r\n")?;
    Ok(v)
}

/// The lb object with `config` installed, with the default table size (65,537 slots) where
/// the tests use 251, and both programs loaded (not attached).
fn loaded(config: &str) -> Result<Ebpf> {
    let mut bpf = wirelab::ebpf::load(wirelab::ebpf::Object::Lb)?;
    let c = Config::parse(&config.replace("table_size = 251\n", ""))?;
    Balancer::install(&mut bpf, &c, IFACE_MAC)?;
    let t: &mut SchedClassifier = bpf.program_mut("lb").context("lb")?.try_into()?;
    t.load_retrying().context("loading lb")?;
    let x: &mut Xdp = bpf.program_mut("lb_xdp").context("lb_xdp")?.try_into()?;
    x.load_retrying().context("loading lb_xdp")?;
    Ok(bpf)
}

/// One BPF_PROG_TEST_RUN of `prog` on `frame`, `repeat` times: (verdict, ns per run, the
/// frame as the program left it).
fn run(bpf: &Ebpf, prog: &str, frame: &[u8], repeat: u32) -> Result<(i32, f64, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..Default::default()
    };
    let r = match bpf.program(prog) {
        Some(p @ Program::Xdp(_)) => <&Xdp>::try_from(p)?.test_run(opts)?,
        Some(p @ Program::SchedClassifier(_)) => <&SchedClassifier>::try_from(p)?.test_run(opts)?,
        _ => bail!("no XDP or tc program {prog}"),
    };
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value as i32, r.duration.as_nanos() as f64, out))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn emit(c: &Cost) -> Result<()> {
    println!("{}", serde_json::to_string(c)?);
    Ok(())
}

fn prog(repeat: u32, rounds: usize, calls: u32, only: Option<&str>) -> Result<()> {
    let dsr = loaded(DSR)?;
    // Enter the flows the tracked cases hit.
    for (p, f) in [
        ("lb", tcp(&CLIENT, &VIP, 40000, 80, true)?),
        ("lb", tcp(&CLIENT6, &VIP6, 40000, 80, true)?),
    ] {
        run(&dsr, p, &f, 1)?;
    }
    let cases = [
        ("miss (non-VIP)", tcp(&CLIENT, &OTHER, 40000, 80, false)?),
        ("new flow (SYN)", tcp(&CLIENT, &VIP, 40000, 80, true)?),
        ("tracked flow", tcp(&CLIENT, &VIP, 40000, 80, false)?),
        (
            "all backends down",
            tcp(&CLIENT, &VIP_DOWN, 40000, 80, true)?,
        ),
        ("IPv6 tracked flow", tcp(&CLIENT6, &VIP6, 40000, 80, false)?),
    ];
    // Rounds interleaved over the paths (one run of each, then the next round), so a slow
    // stretch of the host falls on every path alike rather than on all rounds of one.
    struct Timed<'a> {
        prog: &'static str,
        path: &'static str,
        frame: &'a [u8],
        ns: Vec<f64>,
        verdict: i32,
    }
    let mut timed = vec![];
    for prog in ["lb", "lb_xdp"] {
        for (path, frame) in &cases {
            if only.is_none_or(|o| format!("{prog}: {path}").contains(o)) {
                timed.push(Timed {
                    prog,
                    path,
                    frame,
                    ns: vec![],
                    verdict: 0,
                });
            }
        }
    }
    for _ in 0..rounds.max(1) {
        for t in timed.iter_mut() {
            let (v, ns, _) = run(&dsr, t.prog, t.frame, repeat)?;
            t.verdict = v;
            t.ns.push(ns);
        }
    }
    for t in timed {
        emit(&Cost {
            path: t.path,
            prog: t.prog,
            how: "repeat",
            runs: repeat,
            ns: median(t.ns),
            verdict: t.verdict,
        })?;
    }
    if only.is_some() {
        return Ok(());
    }
    // NAT: one run per call, next to the DSR tracked flow timed the same way.
    let nat = loaded(NAT)?;
    let (_, _, out) = run(&nat, "lb", &tcp(&CLIENT, &VIP, 40000, 80, true)?, 1)?;
    // The SYN's destination address after DNAT: the backend the reply comes from.
    let backend: [u8; 4] = out.get(30..34).context("NAT SYN output")?.try_into()?;
    for (bpf, path, f) in [
        (
            &dsr,
            "DSR tracked flow",
            tcp(&CLIENT, &VIP, 40000, 80, false)?,
        ),
        (
            &nat,
            "NAT tracked flow",
            tcp(&CLIENT, &VIP, 40000, 80, false)?,
        ),
        (&nat, "NAT reply", tcp(&backend, &CLIENT, 80, 40000, false)?),
    ] {
        let mut total = 0.0;
        let mut verdict = 0;
        for _ in 0..calls.max(1) {
            let (v, t, _) = run(bpf, "lb", &f, 1)?;
            verdict = v;
            total += t;
        }
        emit(&Cost {
            path,
            prog: "lb",
            how: "calls",
            runs: calls,
            ns: total / calls.max(1) as f64,
            verdict,
        })?;
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cmd::parse() {
        Cmd::Prog {
            repeat,
            rounds,
            calls,
            only,
        } => prog(repeat, rounds, calls, only.as_deref()),
        Cmd::Maglev { flows } => {
            for m in [251u32, 16381, 65537] {
                for n in [3u32, 10, 100, 1000] {
                    // N > M cannot fill a table where every backend has a slot.
                    if n > m {
                        continue;
                    }
                    let q = maglev::quality(n, m, 1, flows)?;
                    println!("{}", serde_json::to_string(&q)?);
                }
            }
            Ok(())
        }
    }
}
