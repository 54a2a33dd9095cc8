//! The command line: one file per command, the argument groups they share, and the
//! helpers every command uses (entering `--netns`, printing to a pipe that may close).
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use wirelab::{
    metrics, netns,
    runtime::{bpf::AttachMode, Reporting},
    util,
};

mod capture;
mod cleanup;
mod doctor;
mod flows;
mod fw;
mod gen;
mod inspect;
mod lab;
mod lb;
mod probe;
mod report;
mod smb;
mod swarm;
mod sweep;
mod wan;

#[derive(Parser)]
#[command(
    name = "wirelab",
    version,
    about = "Rust + eBPF network lab toolkit: namespace labs, packet inspection, WAN emulation",
    after_help = "Examples:\n  wirelab lab up                         # default lab: client — wan — server\n  wirelab inspect --netns wirelab-wan --iface to-client --duration 10s\n  wirelab probe server --netns wirelab-server --bind 198.18.0.2:7000 &\n  wirelab wan --netns wirelab-wan --between to-client to-server \\\n      --both \"delay 40ms 5ms loss 0.5%\" &\n  wirelab probe client --netns wirelab-client --to 198.18.0.2:7000 --rate 200 --count 2000\n  wirelab swarm run --netns wirelab-client --iface eth0 --pool 198.18.0.128/25 --clients 100 \\\n      -- curl -s http://198.18.0.2/\n  wirelab fw --netns wirelab-server --iface eth0 --rules rules.toml\n  wirelab lab down\n\nLogs go to stderr; set WIRELAB_LOG=debug for more. Docs: README.md and docs/."
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Network-namespace testbeds (up, down, status, exec).
    #[command(subcommand)]
    Lab(lab::LabCmd),
    /// Count packets per class (ARP, IPv4, IPv6, ICMP, TCP, UDP, malformed, ...) with XDP.
    Inspect(inspect::InspectArgs),
    /// Capture what an interface receives and sends (tc; XDP with --ingress xdp) to pcapng,
    /// filtered in the kernel with tcpdump's words; `-w -` writes to stdout for tshark or
    /// Wireshark; frames carry fw's, lb's and wan's decisions as comments.
    Capture(capture::CaptureArgs),
    /// SMB2/3 per client address: dialect, sessions, tree connects, opens, commands and
    /// their latency, errors by NTSTATUS; live tree connects over time (live or from pcapng).
    Smb(smb::SmbArgs),
    /// Live table of bidirectional flows (top-like): packets and bytes per direction,
    /// Zeek-style state and history, handshake and running RTT, retransmissions,
    /// out-of-order segments, zero windows and resets by side.
    Flows(flows::FlowsArgs),
    /// WAN emulator between two interfaces: delay, jitter, loss models, rate, queues,
    /// reorder, duplication, corruption, blackholes; live changes with `wan set`.
    #[command(args_conflicts_with_subcommands = true)]
    Wan(wan::WanArgs),
    /// Measurement traffic: one-way delay, loss, duplicates, reordering, corruption (UDP);
    /// goodput over time (TCP).
    #[command(subcommand)]
    Probe(probe::ProbeCmd),
    /// Many client machines (own IP and MAC each) from one host, running unmodified programs.
    #[command(subcommand)]
    Swarm(swarm::SwarmCmd),
    /// XDP firewall: CIDR/port/protocol rules, per-source rate limits, live reload.
    #[command(args_conflicts_with_subcommands = true)]
    Fw(fw::FwArgs),
    /// L4 load balancer (XDP or tc): weighted Maglev hashing, connection tracking, direct
    /// server return or NAT, health checks; `lb check` validates a config and shows each
    /// backend's share.
    #[command(args_conflicts_with_subcommands = true)]
    Lb(lb::LbArgs),
    /// Fast packet generator (XDP live frames; AF_PACKET fallback) reporting achieved pps.
    Gen(gen::GenArgs),
    /// Matrices of wan conditions: axes over SPEC clauses crossed into cells, workloads run
    /// in each, repeated in a seeded random order on one live-changed lab, with stability
    /// figures per cell; --resume after an interruption.
    Sweep(sweep::SweepArgs),
    /// HTML report (plots, configured vs measured) of a run directory written by --record;
    /// with two directories, a side-by-side comparison.
    Report(report::ReportArgs),
    /// Remove what a killed wirelab left behind (half-made labs; --all-labs: every lab).
    Cleanup(cleanup::CleanupArgs),
    /// Check this machine: kernel version and features, root, bpffs, cgroup v2, limits, tools.
    Doctor(doctor::DoctorArgs),
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Lab(c) => lab::run(c),
        Cmd::Inspect(a) => inspect::run(a),
        Cmd::Capture(a) => capture::run(a),
        Cmd::Smb(a) => smb::run(a),
        Cmd::Flows(a) => flows::run(a),
        Cmd::Wan(a) => wan::run(a),
        Cmd::Probe(c) => probe::run(c),
        Cmd::Swarm(c) => swarm::run(c),
        Cmd::Fw(a) => fw::run(a),
        Cmd::Lb(a) => lb::run(a),
        Cmd::Gen(a) => gen::run(a),
        Cmd::Sweep(a) => sweep::run(a),
        Cmd::Report(a) => report::run(a),
        Cmd::Cleanup(a) => cleanup::run(a),
        Cmd::Doctor(a) => doctor::run(a),
    }
}

/// `--iface`, `--netns` and `--filter`: where a command that watches frames watches, and
/// which frames (capture, flows).
#[derive(Args, Clone, Debug)]
pub struct TapArgs {
    /// Interface to watch, both directions (received: tc or XDP ingress; sent: tc egress).
    #[arg(long)]
    pub iface: String,
    #[command(flatten)]
    pub netns: NetnsArg,
    /// tcpdump-style filter, evaluated in the kernel (the words: docs/capture.md); an
    /// expression outside the subset is refused with the column of the problem.
    #[arg(long, value_name = "EXPR", default_value = "")]
    pub filter: String,
}

impl TapArgs {
    /// Refuse a bad filter before anything is touched (it is compiled again when the
    /// programs are loaded).
    pub fn check(&self) -> Result<()> {
        wirelab::capture::compile(&self.filter)?;
        Ok(())
    }
}

/// `--netns`: the namespace a command works in.
#[derive(Args, Clone, Debug, Default)]
pub struct NetnsArg {
    /// Network namespace (under /run/netns) to work in; wirelab enters it itself (a lab host
    /// is LAB-HOST, e.g. wirelab-server).
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
}

impl NetnsArg {
    /// Enter the namespace (before any thread exists, so the whole process moves).
    pub fn enter(&self) -> Result<()> {
        if let Some(ns) = &self.netns {
            netns::enter(ns)?;
        }
        Ok(())
    }

    /// Enter the namespace and install the SIGINT/SIGTERM stop flag: the common start of
    /// every command that runs until stopped.
    pub fn enter_until_stopped(&self) -> Result<util::Stop> {
        self.enter()?;
        util::Stop::install()
    }
}

/// `--json`: machine-readable output.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct JsonArg {
    /// Machine-readable output on stdout instead of tables: JSON lines (an object per line;
    /// a list, as one line, where the answer is a list: `lab status`, `lb check`).
    #[arg(long)]
    pub json: bool,
}

/// Which running instance a control command talks to: `--netns`, `--iface` (when several run
/// in the namespace) and `--json` for the answer.
#[derive(Args, Clone, Debug)]
pub struct Running {
    #[command(flatten)]
    pub netns: NetnsArg,
    /// The interface the running instance is attached to (needed only when several run in
    /// the namespace).
    #[arg(long)]
    pub iface: Option<String>,
    #[command(flatten)]
    pub json: JsonArg,
}

/// `--interval`, `--record` and `--metrics`: how a long-running command reports.
#[derive(Args, Clone, Debug)]
pub struct Observe {
    /// Reporting interval: each table or JSON line, recorded series line and metrics update
    /// (at least 10ms; e.g. 500ms, 1s, 2m).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Write a run record (config, JSON-lines time series, summary.json) into DIR; several
    /// commands may record into the same DIR. See `wirelab report`.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// Serve live counters in OpenMetrics text format (docs/metrics.md) on ADDR:PORT (e.g.
    /// 127.0.0.1:9464).
    /// Bound in the namespace wirelab was started in, before --netns is entered.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
}

impl Observe {
    /// Bind the metrics endpoint (before `--netns` is entered).
    pub fn endpoint(&self) -> Result<Option<metrics::Endpoint>> {
        self.metrics.map(metrics::Endpoint::bind).transpose()
    }

    /// The library's [`Reporting`], with the metrics endpoint bound (call it before
    /// `--netns` is entered).
    pub fn reporting(self, json: JsonArg, duration: Option<Duration>) -> Result<Reporting> {
        Ok(Reporting {
            interval: self.interval,
            duration,
            json: json.json,
            metrics: self.endpoint()?,
            record: self.record,
        })
    }
}

/// `--duration` and other times: `1s`, `250ms`, `2m`, `1h30m`, or seconds (`0.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    util::parse_duration(s)
}

/// Reporting intervals below 10 ms would turn a measurement into a flood of output.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = util::parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!("{s:?}: an interval must be at least 10ms"));
    }
    Ok(d)
}

/// XDP attach mode, when forced.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpModeArg {
    /// In the driver (fast; veth supports it).
    #[value(alias = "driver", alias = "drv")]
    Native,
    /// Generic XDP on the skb (works on every interface, slower).
    #[value(alias = "generic")]
    Skb,
}

impl From<XdpModeArg> for AttachMode {
    fn from(m: XdpModeArg) -> Self {
        match m {
            XdpModeArg::Native => AttachMode::Native,
            XdpModeArg::Skb => AttachMode::Skb,
        }
    }
}

/// Print a line to stdout; a closed pipe (`| head`) ends the output quietly instead of
/// panicking.
pub fn emit(text: &str) -> Result<()> {
    wirelab::runtime::observe::to_stdout(|out| writeln!(out, "{text}"))
}

/// `v` as one JSON line with `--json`, else the text `text` makes of it (trailing white space
/// cut).
pub fn print(
    json: bool,
    v: &impl serde::Serialize,
    text: impl FnOnce() -> Result<String>,
) -> Result<()> {
    if json {
        emit(&serde_json::to_string(v)?)
    } else {
        emit(text()?.trim_end())
    }
}

/// What a table printer writes, as text.
pub fn written<E>(print: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<String>
where
    anyhow::Error: From<E>,
{
    let mut buf = Vec::new();
    print(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("this command needs root (it creates network namespaces); run it with sudo");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn intervals_are_checked_when_parsed() {
        assert!(parse_interval("5ms").is_err());
        assert_eq!(parse_interval("10ms").unwrap(), Duration::from_millis(10));
        assert!(
            Cli::try_parse_from(["wirelab", "inspect", "--iface", "x", "--interval", "1ms"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from(["wirelab", "inspect", "--iface", "x", "--mode", "bogus"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["wirelab", "inspect", "--iface", "x", "--mode", "generic"])
                .is_ok()
        );
    }

    /// Every command a user can run: its help has examples, and every option says what it
    /// is (the newcomer's `--help` is the first manual).
    #[test]
    fn every_command_has_examples_and_every_option_a_description() {
        let mut missing = vec![];
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", c.get_name());
            let leaf = !c.has_subcommands() || c.is_args_conflicts_with_subcommands_set();
            if leaf {
                let after = c
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if !after.contains("Examples:") {
                    missing.push(format!("{path}: no examples"));
                }
                for a in c.get_arguments() {
                    let id = a.get_id().as_str();
                    if id == "help" || id == "version" {
                        continue;
                    }
                    if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                        missing.push(format!("{path} {id}: no description"));
                    }
                }
            }
            for s in c.get_subcommands() {
                if s.get_name() != "help" {
                    walk(s, &path, missing);
                }
            }
        }
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
