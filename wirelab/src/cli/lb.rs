//! `wirelab lb`: the L4 load balancer, and `lb check`.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use wirelab::lb;

use super::{emit, parse_duration, JsonArg, NetnsArg, Observe};

#[derive(Args)]
pub struct LbArgs {
    #[command(subcommand)]
    sub: Option<LbCmd>,
    /// Interface the VIP traffic arrives on (tc ingress); DSR frames leave through it too.
    #[arg(long)]
    iface: Option<String>,
    #[command(flatten)]
    netns: NetnsArg,
    /// Services and backends (TOML, docs/lb.md), validated in full before anything is
    /// attached.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    json: JsonArg,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Recorded: the services, per-interval counters per service and backend, final totals.
    /// (--metrics is not implemented for lb yet.)
    #[command(flatten)]
    observe: Observe,
}

#[derive(Subcommand)]
enum LbCmd {
    /// Validate a config and print each backend's share of the Maglev table (nothing is
    /// attached).
    #[command(
        after_help = "Examples:\n  wirelab lb check --config lb.toml\n  wirelab lb check --config lb.toml --json"
    )]
    Check {
        /// Services and backends (TOML).
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        json: JsonArg,
    },
}

pub fn run(a: LbArgs) -> Result<ExitCode> {
    match a.sub {
        Some(LbCmd::Check { config, json }) => {
            let c = lb::Config::load(&config)?;
            let report = lb::check(&c)?;
            if json.json {
                emit(&serde_json::to_string(&report)?)?;
            } else {
                let mut buf = Vec::new();
                lb::print_check(&mut buf, &report)?;
                emit(String::from_utf8_lossy(&buf).trim_end())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let (Some(iface), Some(config)) = (a.iface, a.config) else {
                bail!("wirelab lb needs --iface IF and --config FILE (or a subcommand: check)");
            };
            if a.observe.metrics.is_some() {
                bail!("--metrics is not implemented for lb yet (use --json or --record)");
            }
            let config = std::fs::canonicalize(&config)
                .with_context(|| format!("config file {}", config.display()))?;
            // Validate fully before touching anything.
            lb::Config::load(&config)?;
            let stop = a.netns.enter_until_stopped()?;
            lb::run(
                &lb::Options {
                    iface,
                    path: lb::Path::Tc,
                    config,
                    interval: a.observe.interval,
                    duration: a.duration,
                    json: a.json.json,
                    record: a.observe.record,
                },
                &stop,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
