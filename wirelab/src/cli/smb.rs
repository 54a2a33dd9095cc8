//! `wirelab smb`: per-client SMB2/3 activity on a link (live, or from a pcapng).
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Result};
use clap::Args;
use wirelab::{
    smb::{self, Source},
    util::Stop,
};

use super::{parse_duration, JsonArg, NetnsArg};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  wirelab smb --netns wirelab-server --iface eth0 --interval 1s\n  wirelab smb --netns wirelab-server --iface eth0 --duration 30s --json\n  wirelab smb --netns wirelab-server --iface eth0 --duration 60s --record smb-run\n  wirelab report smb-run\n  wirelab smb --read server.pcapng --top 50\n  wirelab smb --netns wirelab-server --iface eth0 --metrics 127.0.0.1:9466\n  wirelab capture --netns wirelab-server --iface eth0 --filter 'tcp port 445' -w - \\\n      | wirelab smb --read -\n\nPer client address: dialect, connections, sessions / tree connects / opens (live now and\nin total), commands and commands per second, errors by NTSTATUS, encrypted sessions; per\ncommand: latency from request to response by MessageId (p50, p99, max); per share: tree\nconnects live, in total and at most; server-wide: live tree connects over time and their\npeak; --metrics serves them live. See docs/smb.md."
)]
pub struct SmbArgs {
    /// Capture on this interface (runs `wirelab capture` with `tcp port PORT` in the kernel).
    #[arg(long, conflicts_with = "read", required_unless_present = "read")]
    iface: Option<String>,
    #[command(flatten)]
    netns: NetnsArg,
    /// Read a capture instead, pcapng or pcap (`-`: standard input), e.g. `wirelab capture -w -`.
    #[arg(short = 'r', long, value_name = "FILE")]
    read: Option<PathBuf>,
    /// The SMB servers' TCP port.
    #[arg(long, default_value_t = 445, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Live: stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = parse_duration, conflicts_with = "read")]
    duration: Option<Duration>,
    /// Print the server-wide line (clients, sessions, tree connects, opens, cmd/s) this often.
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,
    /// Clients in the final table (most commands first).
    #[arg(long, default_value_t = 20)]
    top: usize,
    #[command(flatten)]
    json: JsonArg,
    /// Write a run record (configuration, the server-wide interval lines, the final line)
    /// into DIR; `wirelab report DIR` plots live tree connects, sessions and opens over time.
    /// The interval is 1 s unless --interval says otherwise.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Serve the server-wide figures and live tree connects per share in OpenMetrics text
    /// format (docs/metrics.md) on ADDR:PORT, updated every interval (1 s unless --interval
    /// says otherwise).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
}

pub fn run(a: SmbArgs) -> Result<ExitCode> {
    if a.interval.is_some_and(|i| i.is_zero()) {
        bail!("--interval must be above 0");
    }
    let source = match (a.read, a.iface) {
        (Some(p), _) => {
            if a.netns.netns.is_some() {
                bail!("--netns goes with --iface (a file is read as it is)");
            }
            Source::File(p)
        }
        (None, Some(iface)) => Source::Live {
            iface,
            netns: a.netns.netns,
            duration: a.duration,
        },
        (None, None) => bail!("wirelab smb needs --iface IF or --read FILE"),
    };
    let stop = Stop::install()?;
    let opts = smb::Options {
        source,
        port: a.port,
        interval: a.interval,
        json: a.json.json,
        top: a.top,
        record: a.record,
        metrics: a
            .metrics
            .map(wirelab::metrics::Endpoint::bind)
            .transpose()?,
    };
    smb::run(&opts, &stop)?;
    Ok(ExitCode::SUCCESS)
}
