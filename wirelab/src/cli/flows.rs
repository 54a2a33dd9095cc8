//! `wirelab flows`: a live table of bidirectional flows with TCP health.
use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Args;
use wirelab::flows;

use super::{parse_duration, JsonArg, Observe, TapArgs, XdpModeArg};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  wirelab flows --netns wirelab-client --iface eth0\n  wirelab flows --netns wirelab-server --iface eth0 --filter 'tcp port 5201' --sort rate --top 5\n  wirelab flows --netns wirelab-client --iface eth0 --duration 10s --json --record run1\n  wirelab flows --netns wirelab-client --iface eth0 --top 20 --metrics 127.0.0.1:9467\n\nState and history follow Zeek's conn.log (upper-case letters: the originator); retx, ooo,\nzwin and rst are originator/responder; rtt> is the running RTT (TCP timestamps, the pping\nmethod) from this interface to the responder and back, rtt< to the originator and back.\nSee docs/flows.md."
)]
pub struct FlowsArgs {
    #[command(flatten)]
    tap: TapArgs,
    /// Order of the table: bytes so far, rate in the last interval, or packets so far.
    #[arg(long, value_enum, default_value = "bytes")]
    sort: flows::SortBy,
    /// Rows in each interval's table or JSON line (the final table has every flow).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100000))]
    top: u64,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    #[command(flatten)]
    json: JsonArg,
    /// `--interval` (between tables), `--record` (the interval lines and the final flows),
    /// `--metrics` (the table's counters and each interval's --top flows: rate, bytes, RTT,
    /// retransmissions).
    #[command(flatten)]
    observe: Observe,
    /// Force an XDP mode for the ingress program instead of native with a fallback to skb.
    #[arg(long, value_enum)]
    mode: Option<XdpModeArg>,
}

pub fn run(a: FlowsArgs) -> Result<ExitCode> {
    a.tap.check()?;
    let report = a.observe.reporting(a.json, a.duration)?;
    let stop = a.tap.netns.enter_until_stopped()?;
    flows::run(
        &flows::Options {
            iface: a.tap.iface,
            filter: a.tap.filter,
            sort: a.sort,
            top: a.top as usize,
            mode: a.mode.map(Into::into),
            report,
        },
        &stop,
    )?;
    Ok(ExitCode::SUCCESS)
}
