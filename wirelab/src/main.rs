use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use wirelab::{
    ebpf::AttachMode, fw, inspect, lab, metrics, netns, probe, record, report, util, wan,
};

#[derive(Parser)]
#[command(
    name = "wirelab",
    version,
    about = "Rust + eBPF network lab toolkit: namespace labs, packet inspection, WAN emulation",
    after_help = "Examples:\n  wirelab lab up                         # default lab: client — wan — server\n  wirelab inspect --netns wirelab-wan --iface to-client --duration 10s\n  wirelab probe server --netns wirelab-server --bind 198.18.0.2:7000 &\n  wirelab wan --netns wirelab-wan --between to-client to-server --both \"delay 40ms 5ms loss 0.5%\" &\n  wirelab probe client --netns wirelab-client --to 198.18.0.2:7000 --rate 200 --count 2000\n  wirelab swarm run --netns wirelab-client --iface eth0 --pool 198.18.0.128/25 --clients 100 -- curl -s http://198.18.0.2/\n  wirelab fw --netns wirelab-server --iface eth0 --rules rules.toml\n  wirelab lab down\n\nLogs go to stderr; set WIRELAB_LOG=debug for more. Docs: README.md and docs/."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Network-namespace testbeds (up, down, status, exec).
    #[command(subcommand)]
    Lab(LabCmd),
    /// Count packets per class (ARP, IPv4, IPv6, ICMP, TCP, UDP, malformed, ...) with XDP.
    #[command(
        after_help = "Examples:\n  wirelab inspect --iface eth0 --duration 30s\n  wirelab inspect --netns wirelab-wan --iface to-client --interval 500ms --json\n\nCounts are of frames received on IFACE (XDP sees ingress only). A frame counts in every\nclass that applies (an ICMP echo counts in total, ipv4 and icmp)."
    )]
    Inspect(InspectArgs),
    /// WAN emulator between two interfaces: delay, jitter, loss models, rate, queues,
    /// reorder, duplication, corruption, blackholes; live changes with `wan set`.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  wirelab wan --netns wirelab-wan --between to-client to-server --both \"delay 20ms\"\n  wirelab wan --netns wirelab-wan --between to-client to-server \\\n      --a-to-b \"delay 40ms 5ms distribution normal loss 0.5% rate 20mbit\" --b-to-a \"delay 40ms\"\n  wirelab wan --netns wirelab-wan --between to-client to-server --config wan.toml --seed 7 --json\n  wirelab wan set --netns wirelab-wan --both \"delay 80ms\"\n\nSPEC words (tc-netem's): delay TIME [JITTER [CORR%]] [distribution uniform|normal|pareto|\nparetonormal|FILE.dist], loss P% [CORR%] | loss state p13 [p31 [p32 [p23 [p14]]]] | loss gemodel\np [r [1-h [1-k]]], duplicate P% [CORR%], corrupt P% [CORR%], reorder P% [CORR%] [gap N],\nrate RATE [OVERHEAD [CELLSIZE [CELLOVERHEAD]]], limit PACKETS|SIZE, and beyond netem:\nblackhole TIME every TIME, jitter-order keep|reorder (default keep).\nOrder: classify -> loss -> duplicate -> corrupt -> delay -> rate -> queue limit."
    )]
    Wan(WanArgs),
    /// Measurement traffic: one-way delay, loss, duplicates, reordering, corruption (UDP);
    /// goodput over time (TCP).
    #[command(subcommand)]
    Probe(ProbeCmd),
    /// Many client machines (own IP and MAC each) from one host, running unmodified programs.
    #[command(subcommand)]
    Swarm(SwarmCmd),
    /// XDP firewall: CIDR/port/protocol rules, per-source rate limits, live reload.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  wirelab fw --netns wirelab-server --iface eth0 --rules rules.toml\n  wirelab fw reload --netns wirelab-server --rules new.toml\n  wirelab fw stats --netns wirelab-server --json\n  wirelab fw --netns wirelab-server --iface eth0 --rules rules.toml \\\n      --metrics 127.0.0.1:9464 --record run1\n  wirelab fw check --rules rules.toml\n\nSee docs/fw.md for the rules file format and semantics."
    )]
    Fw(FwArgs),
    /// Fast packet generator (XDP live frames; AF_PACKET fallback) reporting achieved pps.
    #[command(
        after_help = "Examples:\n  wirelab gen --netns wirelab-client --iface eth0 --dst-mac 02:00:00:00:00:02 \\\n      --src 198.18.0.0/24 --dst 198.18.0.2 --proto udp --size 64 --duration 5s --flows 256\n  wirelab gen --iface veth0 --dst-mac ff:ff:ff:ff:ff:ff --src 198.18.1.1/32 --dst 198.18.0.2 \\\n      --proto tcp-syn --size 64 --rate 1000 --count 5000 --json\n  wirelab gen --netns wirelab-client --iface eth0 --dst-mac 02:00:00:00:00:02 \\\n      --src 2001:2::1:0/112 --flows 16 --dst 2001:2::2 --count 10000"
    )]
    Gen(GenArgs),
    /// HTML report (plots, configured vs measured) of a run directory written by --record;
    /// with two directories, a side-by-side comparison.
    #[command(
        after_help = "Examples:\n  wirelab report /tmp/run1                      # writes /tmp/run1/report.html + report-plots/\n  wirelab report /tmp/run1 --out run1.html\n  wirelab report /tmp/run1 /tmp/run2 --out compare.html\n\nA damaged or unfinished run directory is an error naming the file and line; --allow-partial\nreports what is there, under a PARTIAL DATA banner."
    )]
    Report(ReportArgs),
    /// Remove what a killed wirelab left behind (half-made labs; --all-labs: every lab).
    Cleanup {
        /// Also remove labs that are complete and may still be in use.
        #[arg(long)]
        all_labs: bool,
        /// JSON lines on stdout instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Create a lab from a TOML topology (default: client — wan (bridge) — server).
    #[command(
        after_help = "Examples:\n  wirelab lab up\n  wirelab lab up --name l2 topo.toml\n  wirelab lab up --print-default > topo.toml"
    )]
    Up {
        #[arg(long, default_value = lab::DEFAULT_LAB)]
        name: String,
        /// Topology file; the built-in default topology when omitted.
        file: Option<PathBuf>,
        /// Print the built-in default topology and exit.
        #[arg(long)]
        print_default: bool,
        /// Only validate the topology; create nothing.
        #[arg(long)]
        check: bool,
    },
    /// Remove a lab: its namespaces, links, and processes still running in them.
    Down {
        #[arg(long, default_value = lab::DEFAULT_LAB)]
        name: String,
    },
    /// Show labs, hosts, interfaces and addresses.
    Status {
        /// One lab only.
        #[arg(long)]
        name: Option<String>,
        /// JSON lines on stdout instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a lab host's network namespace.
    #[command(after_help = "Example:\n  wirelab lab exec client -- ping -c 3 198.18.0.2")]
    Exec {
        #[arg(long, default_value = lab::DEFAULT_LAB)]
        name: String,
        host: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
}

#[derive(Args)]
struct ReportArgs {
    /// Run directory (two: compare A and B).
    #[arg(required = true, num_args = 1..=2)]
    dirs: Vec<PathBuf>,
    /// Output HTML file (default: DIR/report.html, or DIR_A/compare.html).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Report an incomplete or damaged run directory anyway (marked PARTIAL DATA).
    #[arg(long)]
    allow_partial: bool,
}

/// `--record` / `--metrics`, shared by the long-running commands.
#[derive(Args, Clone)]
struct Observe {
    /// Write a run record (config, JSON-lines time series, summary.json) into DIR; several
    /// commands may record into the same DIR. See `wirelab report`.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Serve live counters in Prometheus text format on ADDR:PORT (e.g. 127.0.0.1:9464).
    /// Bound in the namespace wirelab was started in, before --netns is entered.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
}

impl Observe {
    fn endpoint(&self) -> Result<Option<metrics::Endpoint>> {
        self.metrics.map(metrics::Endpoint::bind).transpose()
    }
}

#[derive(Args)]
struct WanArgs {
    #[command(subcommand)]
    cmd: Option<WanCmd>,
    #[command(flatten)]
    run: WanRunArgs,
}

#[derive(Subcommand)]
enum WanCmd {
    /// Change a running emulator's profile atomically (nothing queued is lost).
    Set {
        /// Network namespace the emulator runs in.
        #[arg(long)]
        netns: Option<String>,
        /// Which emulator, when several run in the namespace.
        #[arg(long, num_args = 2, value_names = ["IF_A", "IF_B"])]
        between: Vec<String>,
        /// Class to change (default: the default class).
        #[arg(long)]
        class: Option<String>,
        #[command(flatten)]
        specs: SpecArgs,
    },
}

/// The SPECs of `wan` and `wan set`, by direction.
#[derive(Args)]
struct SpecArgs {
    /// SPEC for both directions (of the default class, or of --class for `wan set`).
    #[arg(long)]
    both: Option<String>,
    /// SPEC for frames from A to B.
    #[arg(long)]
    a_to_b: Option<String>,
    /// SPEC for frames from B to A.
    #[arg(long)]
    b_to_a: Option<String>,
}

impl From<SpecArgs> for wan::DirSpecs {
    fn from(a: SpecArgs) -> Self {
        Self {
            both: a.both,
            a_to_b: a.a_to_b,
            b_to_a: a.b_to_a,
        }
    }
}

#[derive(Args)]
struct WanRunArgs {
    /// The two interfaces: A then B. Frames arriving on A leave on B and vice versa.
    #[arg(long, num_args = 2, value_names = ["IF_A", "IF_B"])]
    between: Vec<String>,
    /// Network namespace (under /run/netns) to work in; wirelab enters it itself.
    #[arg(long)]
    netns: Option<String>,
    #[command(flatten)]
    specs: SpecArgs,
    /// TOML config: seed, [default], [[class]] (per-flow classes).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seed for every random decision (same seed + same packets = same decisions).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = util::parse_duration)]
    duration: Option<Duration>,
    #[arg(long, default_value = "1s", value_parser = util::parse_duration)]
    interval: Duration,
    /// JSON lines on stdout instead of tables.
    #[arg(long)]
    json: bool,
    /// UMEM frames (4 KiB each) for packets held in flight.
    #[arg(long, default_value_t = 32768)]
    frames: u64,
    /// Only validate the specs and config; attach nothing.
    #[arg(long)]
    check: bool,
    /// Do not raise the engine to SCHED_FIFO (real-time) priority.
    #[arg(long)]
    no_realtime: bool,
    #[command(flatten)]
    observe: Observe,
}

#[derive(Subcommand)]
enum ProbeCmd {
    /// Echo UDP probes and sink TCP probes on ADDR:PORT.
    #[command(
        after_help = "Example:\n  wirelab probe server --netns wirelab-server --bind 198.18.0.2:7000 --duration 60s"
    )]
    Server {
        /// Network namespace (under /run/netns) to work in; wirelab enters it itself.
        #[arg(long)]
        netns: Option<String>,
        /// Address and port to serve on (UDP echo and TCP sink).
        #[arg(long)]
        bind: std::net::SocketAddr,
        /// Stop after this long (default: until Ctrl-C / SIGTERM).
        #[arg(long, value_parser = util::parse_duration)]
        duration: Option<Duration>,
    },
    /// Send probes to a probe server and report.
    #[command(
        after_help = "Examples:\n  wirelab probe client --netns wirelab-client --to 198.18.0.2:7000 --rate 1000 --count 20000 --json\n  wirelab probe client --netns wirelab-client --to 198.18.0.2:7000 --tcp --duration 10s"
    )]
    Client {
        /// Network namespace (under /run/netns) to work in; wirelab enters it itself.
        #[arg(long)]
        netns: Option<String>,
        /// The probe server's address and port.
        #[arg(long)]
        to: std::net::SocketAddr,
        /// Probes per second (UDP).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Number of UDP probes (default: --duration × --rate, or 10 s worth).
        #[arg(long, conflicts_with = "duration")]
        count: Option<u64>,
        /// Stop after this long (default: until Ctrl-C / SIGTERM).
        #[arg(long, value_parser = util::parse_duration)]
        duration: Option<Duration>,
        /// UDP probe size in bytes (UDP payload).
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Measure TCP goodput instead.
        #[arg(long)]
        tcp: bool,
        /// How long to wait for late echoes after the last probe.
        #[arg(long, default_value = "1s", value_parser = util::parse_duration)]
        wait: Duration,
        /// JSON lines on stdout instead of tables.
        #[arg(long)]
        json: bool,
        /// Interval of the recorded time series (--record).
        #[arg(long, default_value = "1s", value_parser = util::parse_duration)]
        interval: Duration,
        /// Write a run record into DIR (see `wirelab report`).
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
    },
}

#[derive(Args)]
struct InspectArgs {
    /// Interface to attach to.
    #[arg(long)]
    iface: String,
    /// Network namespace (under /run/netns) the interface lives in.
    #[arg(long)]
    netns: Option<String>,
    /// Reporting interval.
    #[arg(long, default_value = "1s", value_parser = util::parse_duration)]
    interval: Duration,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = util::parse_duration)]
    duration: Option<Duration>,
    /// One JSON object per interval and a final one, on stdout.
    #[arg(long)]
    json: bool,
    /// Force an XDP mode instead of native-with-skb-fallback.
    #[arg(long, value_parser = parse_mode)]
    mode: Option<AttachMode>,
    #[command(flatten)]
    observe: Observe,
}

#[derive(Args)]
struct FwArgs {
    #[command(subcommand)]
    sub: Option<FwCmd>,
    /// Interface to protect (ingress).
    #[arg(long)]
    iface: Option<String>,
    /// Network namespace (under /run/netns) the interface lives in.
    #[arg(long)]
    netns: Option<String>,
    /// Rules file (TOML).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Force an XDP mode instead of native-with-skb-fallback.
    #[arg(long, value_parser = parse_mode)]
    mode: Option<AttachMode>,
    /// JSON lines on stdout: start, log samples, reloads, final counters.
    #[arg(long)]
    json: bool,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = util::parse_duration)]
    duration: Option<Duration>,
    /// Recorded: rules, reloads, per-interval hits per rule, final counters. Metrics: per-rule
    /// packets/bytes/dropped/logged, reloads (docs/metrics.md).
    #[command(flatten)]
    observe: Observe,
    /// Interval of the recorded series and of the metrics' updates.
    #[arg(long, default_value = "1s", value_parser = util::parse_duration)]
    interval: Duration,
}

#[derive(Subcommand)]
enum FwCmd {
    /// Validate a rules file and atomically swap it into the running firewall.
    Reload {
        /// Network namespace (under /run/netns) to work in; wirelab enters it itself.
        #[arg(long)]
        netns: Option<String>,
        /// The firewall's interface (needed only when several run in the namespace).
        #[arg(long)]
        iface: Option<String>,
        #[arg(long)]
        rules: PathBuf,
        /// JSON lines on stdout instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Per-rule, default, malformed and non-IP counters, and recent log samples.
    Stats {
        /// Network namespace (under /run/netns) to work in; wirelab enters it itself.
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        iface: Option<String>,
        /// JSON lines on stdout instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Validate a rules file and show how its address tables would be searched (nothing is
    /// attached).
    Check {
        /// Rules file (TOML).
        #[arg(long)]
        rules: PathBuf,
        /// One JSON object: counts and how each address table would be searched.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct GenArgs {
    /// Interface to transmit on.
    #[arg(long)]
    iface: String,
    /// Network namespace (under /run/netns) to work in; wirelab enters it itself.
    #[arg(long)]
    netns: Option<String>,
    /// Destination MAC address.
    #[arg(long)]
    dst_mac: String,
    /// Source MAC (default: the interface's).
    #[arg(long)]
    src_mac: Option<String>,
    /// Source addresses (IPv4 or IPv6 CIDR, or one address); --flows of them, from the
    /// first, are cycled through.
    #[arg(long)]
    src: String,
    /// Destination address (same family as --src).
    #[arg(long)]
    dst: std::net::IpAddr,
    /// udp or tcp-syn.
    #[arg(long, default_value = "udp")]
    proto: String,
    /// Frame size in bytes without FCS (60..=1514; 64 is the classic "64-byte" frame).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Packets per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// Packets to send.
    #[arg(long)]
    count: Option<u64>,
    /// Time to send for (default 5s when --count is absent).
    #[arg(long, value_parser = util::parse_duration)]
    duration: Option<Duration>,
    /// Number of distinct source addresses.
    #[arg(long, default_value_t = 1)]
    flows: u32,
    /// Destination UDP/TCP port.
    #[arg(long, default_value_t = 9)]
    dport: u16,
    /// Transmit method: auto (live frames, AF_PACKET if the peer can't take XDP frames),
    /// xdp, or packet.
    #[arg(long, default_value = "auto")]
    method: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_mode(s: &str) -> Result<AttachMode, String> {
    match s {
        "native" | "driver" | "drv" => Ok(AttachMode::Native),
        "skb" | "generic" => Ok(AttachMode::Skb),
        _ => Err(format!("{s:?}: use native or skb")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WIRELAB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Lab(c) => lab_cmd(c),
        Cmd::Inspect(a) => {
            check_interval(a.interval)?;
            let metrics = a.observe.endpoint()?;
            let stop = enter_netns(&a.netns)?;
            inspect::run(
                &inspect::Options {
                    iface: a.iface,
                    interval: a.interval,
                    duration: a.duration,
                    json: a.json,
                    mode: a.mode,
                    record: a.observe.record,
                    metrics,
                },
                &stop,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Wan(w) => wan_cmd(w),
        Cmd::Probe(p) => probe_cmd(p),
        Cmd::Swarm(c) => swarm_cli::run(c),
        Cmd::Fw(a) => fw_cmd(a),
        Cmd::Gen(a) => {
            let stop = enter_netns(&a.netns)?;
            let opts = wirelab::gen::Options {
                iface: a.iface,
                dst_mac: a.dst_mac,
                src_mac: a.src_mac,
                src: a.src,
                dst: a.dst,
                proto: a.proto,
                size: a.size,
                rate: a.rate,
                count: a.count,
                duration: a.duration,
                flows: a.flows,
                dport: a.dport,
                method: a.method,
            };
            let r = wirelab::gen::run(&opts, &stop)?;
            if a.json {
                emit(&serde_json::to_string(&r)?)?;
            } else {
                emit(&r.to_string())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Report(a) => report_cmd(a),
        Cmd::Cleanup { all_labs, json } => {
            let r = wirelab::cleanup::run(all_labs)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "removed labs: {:?}; namespaces: {:?}; kept labs: {:?}; swarm runs: {:?}; bench namespaces: {:?}",
                    r.labs_removed, r.namespaces_removed, r.kept_labs, r.swarm_removed, r.bench_namespaces_removed
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn probe_cmd(p: ProbeCmd) -> Result<ExitCode> {
    match p {
        ProbeCmd::Server {
            netns,
            bind,
            duration,
        } => {
            let stop = enter_netns(&netns)?;
            probe::server(bind, duration, &stop)?;
        }
        ProbeCmd::Client {
            netns,
            to,
            rate,
            count,
            duration,
            size,
            tcp,
            wait,
            json,
            interval,
            record: record_dir,
        } => {
            check_interval(interval)?;
            let stop = enter_netns(&netns)?;
            if tcp {
                let dur = duration.unwrap_or(Duration::from_secs(10));
                let rec = record_dir
                    .as_deref()
                    .map(|d| {
                        record::Recorder::create(
                            d,
                            "probe-tcp",
                            "probe-tcp",
                            serde_json::json!({"to": to, "duration_s": dur.as_secs_f64()}),
                        )
                    })
                    .transpose()?;
                let t_start = util::unix_now();
                let r = probe::tcp_client(to, dur, &stop)?;
                if let Some(mut rec) = rec {
                    for (i, m) in r.per_second_mbps.iter().enumerate() {
                        rec.interval(&serde_json::json!({
                            "type": "interval",
                            "t": (i + 1) as f64,
                            "unix": t_start + (i + 1) as f64,
                            "interval_s": 1.0,
                            "goodput_mbps": m,
                        }))?;
                    }
                    rec.finish(&serde_json::to_value(&r)?, vec![], probe::tcp_measured(&r))?;
                }
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "tcp probe to {}: {} bytes in {:.2}s = {:.2} Mbit/s goodput",
                        r.to, r.bytes, r.seconds, r.goodput_mbps
                    );
                    let per: Vec<String> = r
                        .per_second_mbps
                        .iter()
                        .map(|m| format!("{m:.1}"))
                        .collect();
                    println!("  per second (Mbit/s): {}", per.join(" "));
                }
            } else {
                let o = probe::ClientOptions {
                    to,
                    rate,
                    count,
                    duration,
                    size,
                    wait,
                };
                let r = match record_dir.as_deref() {
                    None => probe::udp_client(&o, &stop)?,
                    Some(d) => {
                        let mut rec = record::Recorder::create(
                            d,
                            "probe-udp",
                            "probe-udp",
                            serde_json::json!({
                                "to": to, "rate_pps": rate, "count": count,
                                "duration_s": duration.map(|d| d.as_secs_f64()),
                                "size": size, "wait_s": wait.as_secs_f64(),
                                "interval_s": interval.as_secs_f64(),
                                "direction_mapping": {"forward": "a_to_b", "reverse": "b_to_a"},
                            }),
                        )?;
                        let mut err = None;
                        let mut sink = |v: serde_json::Value| {
                            if let Err(e) = rec.interval(&v) {
                                err.get_or_insert(e);
                            }
                        };
                        let r = probe::udp_client_with(&o, &stop, Some((interval, &mut sink)))?;
                        if let Some(e) = err {
                            return Err(e.context("writing the run record"));
                        }
                        let mut fin = serde_json::to_value(&r)?;
                        fin["delay_hist_ms"] = serde_json::json!({
                            "forward": r.delay_hist_ms[0],
                            "reverse": r.delay_hist_ms[1],
                        });
                        fin["send_start_unix"] = serde_json::json!(r.send_start_unix);
                        rec.finish(&fin, vec![], probe::udp_measured(&r))?;
                        r
                    }
                };
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    probe::print_udp(&r);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn wan_cmd(w: WanArgs) -> Result<ExitCode> {
    if let Some(WanCmd::Set {
        netns,
        between,
        class,
        specs,
    }) = w.cmd
    {
        let req = wan::SetRequest {
            class,
            both: specs.both,
            a_to_b: specs.a_to_b,
            b_to_a: specs.b_to_a,
        };
        if let Some(ns) = &netns {
            netns::enter(ns)?;
        }
        let pair = match between.as_slice() {
            [a, b] => Some((a.as_str(), b.as_str())),
            _ => None,
        };
        let applied = wan::send_set(pair, &req)?;
        println!("applied: {applied}");
        return Ok(ExitCode::SUCCESS);
    }
    let a = w.run;
    check_interval(a.interval)?;
    let specs = wan::DirSpecs::from(a.specs);
    let cfg = wan::load_config(a.config.as_deref())?;
    let plan = wan::plan(&cfg, &specs, a.seed)?;
    wan::engine::frames_hint(a.frames)?;
    if a.check {
        // Build every profile too (distribution files are read here).
        for (d, v) in plan.specs.iter().enumerate() {
            for (c, s) in v.iter().enumerate() {
                wan::engine::Profile::new(s.clone(), a.frames)
                    .with_context(|| format!("class {} {}", plan.names[c], wan::DIRS[d]))?;
            }
        }
        println!("config OK: {} classes", plan.names.len());
        for wmsg in wan::warnings(&plan.names, &plan.specs) {
            println!("warning: {wmsg}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.between.len() != 2 {
        bail!("--between IF_A IF_B is required");
    }
    let metrics = a.observe.endpoint()?;
    let stop = enter_netns(&a.netns)?;
    wan::run(
        &wan::Options {
            iface_a: a.between[0].clone(),
            iface_b: a.between[1].clone(),
            netns: a.netns.clone(),
            specs,
            config: a.config,
            seed: a.seed,
            duration: a.duration,
            interval: a.interval,
            json: a.json,
            frames: a.frames,
            realtime: !a.no_realtime,
            record: a.observe.record,
            metrics,
        },
        &stop,
    )?;
    Ok(ExitCode::SUCCESS)
}

mod swarm_cli;
use swarm_cli::SwarmCmd;

/// Print to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn fw_cmd(a: FwArgs) -> Result<ExitCode> {
    match a.sub {
        Some(FwCmd::Check { rules, json }) => {
            let rs = fw::rules::load(&rules)?;
            let lookup = fw::lookup_plan(&rs);
            if json {
                emit(
                    &serde_json::json!({"ok": true, "rules": rs.rules.len(),
                        "prefixes": rs.prefixes(), "lookup": lookup})
                    .to_string(),
                )?;
            } else {
                let l = fw::lookup_text(&lookup);
                emit(&format!(
                    "rules OK: {} rules, {} prefixes{}",
                    rs.rules.len(),
                    rs.prefixes(),
                    if l.is_empty() {
                        String::new()
                    } else {
                        format!("; lookup: {l}")
                    }
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(FwCmd::Reload {
            netns,
            iface,
            rules,
            json,
        }) => {
            // Read the file before entering the namespace (paths are the caller's).
            let rules = std::fs::canonicalize(&rules)
                .with_context(|| format!("rules file {}", rules.display()))?;
            if let Some(ns) = &netns {
                netns::enter(ns)?;
            }
            let v = fw::reload(iface.as_deref(), &rules)?;
            if json {
                emit(&v.to_string())?;
            } else {
                emit(&format!(
                    "reloaded: generation {}, {} rules, {} prefixes (kept {}, added {}, removed {}) in {:.1} ms",
                    v["generation"], v["rules"], v["prefixes"], v["kept"], v["added"], v["removed"],
                    v["install_ms"].as_f64().unwrap_or(0.0)
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(FwCmd::Stats { netns, iface, json }) => {
            if let Some(ns) = &netns {
                netns::enter(ns)?;
            }
            let v = fw::stats(iface.as_deref())?;
            if json {
                emit(&v.to_string())?;
            } else {
                let mut buf = Vec::new();
                fw::print_stats(&mut buf, &v)?;
                emit(String::from_utf8_lossy(&buf).trim_end())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let (Some(iface), Some(rules)) = (a.iface, a.rules) else {
                bail!("wirelab fw needs --iface IF and --rules FILE (or a subcommand: reload, stats, check)");
            };
            let rules = std::fs::canonicalize(&rules)
                .with_context(|| format!("rules file {}", rules.display()))?;
            // Validate fully before touching anything.
            fw::rules::load(&rules)?;
            check_interval(a.interval)?;
            let metrics = a.observe.endpoint()?;
            let stop = enter_netns(&a.netns)?;
            fw::run(
                &fw::Options {
                    iface,
                    rules,
                    mode: a.mode,
                    json: a.json,
                    duration: a.duration,
                    record: a.observe.record,
                    metrics,
                    interval: a.interval,
                },
                &stop,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Enter `--netns` (before any thread exists, so the whole process moves) and install the
/// SIGINT/SIGTERM stop flag: the common start of every command that runs until stopped.
fn enter_netns(ns: &Option<String>) -> Result<util::Stop> {
    if let Some(ns) = ns {
        netns::enter(ns)?;
    }
    util::Stop::install()
}

/// Reporting intervals below 10 ms would turn a measurement into a flood of output.
fn check_interval(i: Duration) -> Result<()> {
    if i < Duration::from_millis(10) {
        bail!("--interval must be at least 10ms (got {i:?})");
    }
    Ok(())
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("this command needs root (it creates network namespaces); run it with sudo");
    }
    Ok(())
}

fn lab_cmd(c: LabCmd) -> Result<ExitCode> {
    match c {
        LabCmd::Up {
            name,
            file,
            print_default,
            check,
        } => {
            if print_default {
                print!("{}", lab::DEFAULT_TOPOLOGY.trim_start());
                return Ok(ExitCode::SUCCESS);
            }
            lab::validate_lab_name(&name)?;
            let topo = match &file {
                Some(f) => lab::Topology::load(f)?,
                None => lab::Topology::default_topology(),
            };
            if check {
                topo.check_kernel()?;
                println!(
                    "topology OK: {} hosts, {} links",
                    topo.host.len(),
                    topo.link.len()
                );
                return Ok(ExitCode::SUCCESS);
            }
            require_root()?;
            let st = lab::up(&name, &topo)?;
            println!("lab {name} is up:");
            for (h, ns) in &st.namespaces {
                println!("  host {h:<10} netns {ns}");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Down { name } => {
            require_root()?;
            let removed = lab::down(&name)?;
            println!("lab {name} is down (removed {})", removed.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Status { name, json } => {
            let labs = match name {
                Some(n) => vec![n],
                None => lab::list_labs(),
            };
            let mut all = vec![];
            for l in &labs {
                all.push(lab::status(l)?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no labs are up");
            } else {
                let mut out = std::io::stdout().lock();
                for l in &all {
                    writeln!(
                        out,
                        "lab {}{}",
                        l.name,
                        if l.complete { "" } else { " (incomplete)" }
                    )?;
                    for h in &l.hosts {
                        writeln!(
                            out,
                            "  host {} (netns {}{}, {} processes)",
                            h.host,
                            h.netns,
                            if h.present { "" } else { ", MISSING" },
                            h.processes
                        )?;
                        for i in &h.interfaces {
                            writeln!(
                                out,
                                "    {:<12} {:<6} {:<4} {} mtu {}{} {}",
                                i.name,
                                if i.kind.is_empty() { "-" } else { &i.kind },
                                if i.up { "UP" } else { "DOWN" },
                                i.mac,
                                i.mtu,
                                i.master
                                    .as_ref()
                                    .map(|m| format!(" master {m}"))
                                    .unwrap_or_default(),
                                i.addresses.join(" ")
                            )?;
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Exec { name, host, cmd } => {
            let Some(st) = lab::read_state(&name)? else {
                bail!("no lab named {name:?} is up");
            };
            let Some(ns) = st.namespaces.get(&host) else {
                bail!(
                    "lab {name} has no host {host:?} (hosts: {})",
                    st.namespaces.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            };
            netns::enter(ns)?;
            use std::os::unix::process::CommandExt as _;
            let err = std::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .env("WIRELAB_LAB", &name)
                .env("WIRELAB_HOST", &host)
                .exec();
            Err(err).with_context(|| format!("running {:?}", cmd[0]))
        }
    }
}

fn report_cmd(a: ReportArgs) -> Result<ExitCode> {
    let mut runs = vec![];
    for d in &a.dirs {
        runs.push(report::load(d, a.allow_partial)?);
    }
    let out = a.out.clone().unwrap_or_else(|| {
        a.dirs[0].join(if runs.len() > 1 {
            "compare.html"
        } else {
            "report.html"
        })
    });
    let o = report::write(&runs, &out)?;
    for r in &runs {
        for p in &r.problems {
            eprintln!("warning: partial data: {p}");
        }
    }
    if let Some(n) = &o.png_note {
        eprintln!("note: {n}");
    }
    println!("{}", o.html.display());
    println!(
        "  {} plot files in {}",
        o.plots.len(),
        o.plots
            .first()
            .and_then(|p| p.parent())
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
