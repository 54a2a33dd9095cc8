//! `wirelab fw`: the XDP firewall, and `fw reload`, `fw stats`, `fw check`.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use wirelab::fw;

use super::{parse_duration, print, written, JsonArg, NetnsArg, Observe, Running, XdpModeArg};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  wirelab fw --netns wirelab-server --iface eth0 --rules rules.toml\n  wirelab fw reload --netns wirelab-server --rules new.toml\n  wirelab fw stats --netns wirelab-server --json\n  wirelab fw --netns wirelab-server --iface eth0 --rules rules.toml \\\n      --metrics 127.0.0.1:9464 --record run1\n  wirelab fw check --rules rules.toml\n\nSee docs/fw.md for the rules file format and semantics."
)]
pub struct FwArgs {
    #[command(subcommand)]
    sub: Option<FwCmd>,
    /// Interface to protect (ingress).
    #[arg(long)]
    iface: Option<String>,
    #[command(flatten)]
    netns: NetnsArg,
    /// Rules file (TOML).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Force an XDP mode instead of native with a fallback to skb.
    #[arg(long, value_enum)]
    mode: Option<XdpModeArg>,
    /// JSON lines on stdout: start, log samples, reloads, final counters.
    #[arg(long)]
    json: bool,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Recorded: rules, reloads, per-interval hits per rule, final counters. Metrics: per-rule
    /// packets/bytes/dropped/logged, reloads (docs/metrics.md).
    #[command(flatten)]
    observe: Observe,
}

#[derive(Subcommand)]
enum FwCmd {
    /// Validate a rules file and atomically swap it into the running firewall.
    #[command(
        after_help = "Examples:\n  wirelab fw reload --netns wirelab-server --rules rules-v2.toml\n  wirelab fw reload --netns wirelab-server --iface eth0 --rules rules-v2.toml --json\n\nA file that fails validation changes nothing: the running rules stay in force."
    )]
    Reload {
        #[command(flatten)]
        at: Running,
        /// The new rules file (TOML), validated in full before anything changes.
        #[arg(long)]
        rules: PathBuf,
    },
    /// Per-rule, default, malformed and non-IP counters, and recent log samples.
    #[command(
        after_help = "Examples:\n  wirelab fw stats --netns wirelab-server\n  wirelab fw stats --netns wirelab-server --iface eth0 --json"
    )]
    Stats {
        #[command(flatten)]
        at: Running,
    },
    /// Validate a rules file and show how its address tables would be searched (nothing is
    /// attached).
    #[command(
        after_help = "Examples:\n  wirelab fw check --rules rules.toml\n  wirelab fw check --rules rules.toml --json"
    )]
    Check {
        /// Rules file (TOML).
        #[arg(long)]
        rules: PathBuf,
        /// One JSON object: counts and how each address table would be searched.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(a: FwArgs) -> Result<ExitCode> {
    match a.sub {
        Some(FwCmd::Check { rules, json }) => {
            let rs = fw::rules::load(&rules)?;
            let report = fw::CheckReport {
                ok: true,
                rules: rs.rules.len(),
                prefixes: rs.prefixes(),
                lookup: fw::lookup_plan(&rs),
            };
            print(json, &report, || {
                let l = report.lookup.text();
                Ok(format!(
                    "rules OK: {} rules, {} prefixes{}",
                    report.rules,
                    report.prefixes,
                    if l.is_empty() {
                        String::new()
                    } else {
                        format!("; lookup: {l}")
                    }
                ))
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(FwCmd::Reload {
            at: Running { netns, iface, json },
            rules,
        }) => {
            // Read the file before entering the namespace (paths are the caller's).
            let rules = std::fs::canonicalize(&rules)
                .with_context(|| format!("rules file {}", rules.display()))?;
            netns.enter()?;
            let v = fw::reload(iface.as_deref(), &rules)?;
            print(json.json, &v, || {
                Ok(format!(
                    "reloaded: generation {}, {} rules, {} prefixes (kept {}, added {}, removed {}) in {:.1} ms",
                    v.generation,
                    v.rules,
                    v.prefixes,
                    serde_json::to_string(&v.kept)?,
                    serde_json::to_string(&v.added)?,
                    serde_json::to_string(&v.removed)?,
                    v.install_ms
                ))
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(FwCmd::Stats {
            at: Running { netns, iface, json },
        }) => {
            netns.enter()?;
            let v = fw::stats(iface.as_deref())?;
            print(json.json, &v, || written(|buf| fw::print_stats(buf, &v)))?;
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
            let report = a.observe.reporting(JsonArg { json: a.json }, a.duration)?;
            let stop = a.netns.enter_until_stopped()?;
            fw::run(
                &fw::Options {
                    iface,
                    rules,
                    mode: a.mode.map(Into::into),
                    report,
                },
                &stop,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
