//! `wirelab inspect`: per-class packet counts with XDP.
use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Args;
use wirelab::inspect;

use super::{parse_duration, JsonArg, NetnsArg, Observe, XdpModeArg};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  wirelab inspect --iface eth0 --duration 30s\n  wirelab inspect --netns wirelab-wan --iface to-client --interval 500ms --json\n\nCounts are of frames received on IFACE (XDP sees ingress only). A frame counts in every\nclass that applies (an ICMP echo counts in total, ipv4 and icmp)."
)]
pub struct InspectArgs {
    /// Interface to attach to.
    #[arg(long)]
    iface: String,
    #[command(flatten)]
    netns: NetnsArg,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    #[command(flatten)]
    json: JsonArg,
    /// Force an XDP mode instead of native with a fallback to skb.
    #[arg(long, value_enum)]
    mode: Option<XdpModeArg>,
    #[command(flatten)]
    observe: Observe,
}

pub fn run(a: InspectArgs) -> Result<ExitCode> {
    let report = a.observe.reporting(a.json, a.duration)?;
    let stop = a.netns.enter_until_stopped()?;
    inspect::run(
        &inspect::Options {
            iface: a.iface,
            mode: a.mode.map(Into::into),
            report,
        },
        &stop,
    )?;
    Ok(ExitCode::SUCCESS)
}
