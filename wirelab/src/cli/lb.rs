//! `wirelab lb`: the L4 load balancer, and `lb check`, `lb reload`, `lb stats`, `lb which`.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use wirelab::lb;

use super::{parse_duration, print, written, JsonArg, NetnsArg, Observe, Running};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  wirelab lb --netns wirelab-lb --iface eth0 --config lb.toml\n  wirelab lb --netns wirelab-lb --iface eth0 --config lb.toml --json --interval 2s --duration 60s\n  wirelab lb --netns wirelab-lb --iface eth0 --config lb.toml --path tc\n  wirelab lb check --config lb.toml\n\nSee docs/lb.md for the config format, the packet path and what is not done yet."
)]
pub struct LbArgs {
    #[command(subcommand)]
    sub: Option<LbCmd>,
    /// Interface the VIP traffic arrives on (tc ingress); DSR frames leave through it too
    /// (NAT: translated packets are routed by the kernel).
    #[arg(long)]
    iface: Option<String>,
    /// Also watch this interface (repeatable): NAT replies from backends on another segment
    /// arrive there and get the VIP back as their source.
    #[arg(long, value_name = "IF")]
    nat_iface: Vec<String>,
    /// Where the balancer runs: `xdp` (native XDP: DSR frames out with `XDP_TX`, NAT
    /// translated in XDP), `tc` (tc ingress, `bpf_redirect`), or `auto`: XDP unless a watched
    /// interface is a veth whose peer sends partial checksums (TX checksum offload on: XDP
    /// cannot finish them), or, for DSR, runs no NAPI (GRO off, no XDP program: XDP_TX frames
    /// would be lost). The choice and why are printed.
    #[arg(long, value_enum, default_value = "auto")]
    path: lb::PathChoice,
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
    /// Recorded: the services, per-interval counters per service and backend, health
    /// transitions and reloads, final totals. Metrics: per-service and per-backend counters,
    /// backend health, events, reloads (docs/metrics.md).
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
    /// Validate a config and swap it into the running balancer atomically (tracked flows
    /// stay on their backends unless the backend is removed).
    #[command(
        after_help = "Examples:\n  wirelab lb reload --netns lbt-lb --config lb-v2.toml\n  wirelab lb reload --netns lbt-lb --config lb-v2.toml --dry-run --json\n\nA file that fails validation (here or in the balancer, e.g. a backend that does not answer ARP) changes nothing."
    )]
    Reload {
        #[command(flatten)]
        at: Running,
        /// The new config (TOML), validated in full before anything changes.
        #[arg(long)]
        config: PathBuf,
        /// Only say what would change: per service the backends added/removed/reweighted
        /// and the share of Maglev slots moved, and the tracked flows that would move.
        #[arg(long)]
        dry_run: bool,
    },
    /// Per-service and per-backend counters (packets, bytes, new flows, drops), health, and
    /// the frames passed or dropped by reason.
    #[command(
        after_help = "Examples:\n  wirelab lb stats --netns lbt-lb\n  wirelab lb stats --netns lbt-lb --json"
    )]
    Stats {
        #[command(flatten)]
        at: Running,
    },
    /// Which backend a new flow FROM -> TO would get now, and whether a tracked flow of that
    /// 5-tuple exists (and where it goes).
    #[command(
        after_help = "Examples:\n  wirelab lb which --netns lbt-lb --from 198.18.0.1:40000 --to 198.18.1.100:80\n  wirelab lb which --netns lbt-lb --from [2001:2::1]:40000 --to [2001:2::100]:80 \\\n      --proto tcp --json"
    )]
    Which {
        #[command(flatten)]
        at: Running,
        /// Client address and port.
        #[arg(long, value_name = "IP:PORT")]
        from: SocketAddr,
        /// Service VIP and port.
        #[arg(long, value_name = "VIP:PORT")]
        to: SocketAddr,
        /// The flow's protocol.
        #[arg(long, value_enum, default_value = "tcp")]
        proto: ProtoArg,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
}

pub fn run(a: LbArgs) -> Result<ExitCode> {
    match a.sub {
        Some(LbCmd::Check { config, json }) => {
            let c = lb::Config::load(&config)?;
            let report = lb::check(&c)?;
            print(json.json, &report, || {
                written(|buf| lb::print_check(buf, &report))
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(LbCmd::Reload {
            at: Running { netns, iface, json },
            config,
            dry_run,
        }) => {
            // Read the file before entering the namespace (paths are the caller's).
            let config = std::fs::canonicalize(&config)
                .with_context(|| format!("config file {}", config.display()))?;
            netns.enter()?;
            let r = lb::reload(iface.as_deref(), &config, dry_run)?;
            print(json.json, &r, || Ok(reload_text(&r)))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(LbCmd::Stats {
            at: Running { netns, iface, json },
        }) => {
            netns.enter()?;
            let v = lb::stats(iface.as_deref())?;
            print(json.json, &v, || {
                let title = format!(
                    "{}: generation {}, {} reloads, {} health changes, up {:.1}s",
                    v.iface, v.generation, v.reloads, v.health_changes, v.uptime_s
                );
                written(|buf| lb::print_stats(buf, &title, &v.stats))
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(LbCmd::Which {
            at: Running { netns, iface, json },
            from,
            to,
            proto,
        }) => {
            netns.enter()?;
            let proto = match proto {
                ProtoArg::Tcp => lb::config::Proto::Tcp,
                ProtoArg::Udp => lb::config::Proto::Udp,
            };
            let w = lb::which(iface.as_deref(), from, to, proto)?;
            print(json.json, &w, || Ok(which_text(&from, &w)))?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let (Some(iface), Some(config)) = (a.iface, a.config) else {
                bail!("wirelab lb needs --iface IF and --config FILE (or a subcommand: check, reload, stats, which)");
            };
            let config = std::fs::canonicalize(&config)
                .with_context(|| format!("config file {}", config.display()))?;
            // Validate fully before touching anything.
            lb::Config::load(&config)?;
            let report = a.observe.reporting(a.json, a.duration)?;
            let stop = a.netns.enter_until_stopped()?;
            lb::run(
                &lb::Options {
                    iface,
                    nat_ifaces: a.nat_iface,
                    path: a.path,
                    config,
                    report,
                },
                &stop,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `lb reload`'s report as text.
fn reload_text(r: &lb::ReloadReport) -> String {
    let mut t = format!(
        "{}generation {} ({:.1} ms); tracked flows {}, of which {} move",
        if r.dry_run {
            "dry run, nothing changed: "
        } else {
            "reloaded: "
        },
        r.generation,
        r.install_ms,
        r.tracked_flows,
        r.tracked_flows_moved
    );
    for c in &r.services {
        t += &format!(
            "\n  {} {}: {}; added {:?}, removed {:?}, reweighted {:?}; {:.2}% of slots move",
            c.name, c.service, c.change, c.added, c.removed, c.reweighted, c.slots_moved_pct
        );
        if !c.departed.is_empty() {
            t += &format!("; departed places kept {:?}", c.departed);
        }
    }
    t
}

/// `lb which`'s answer as text.
fn which_text(from: &SocketAddr, w: &lb::Which) -> String {
    let new = match &w.new_flow {
        Some(b) => format!("{} ({}, {})", b.name, b.addr, b.health),
        None => "none (no backend up with weight > 0: dropped)".into(),
    };
    let tracked = match &w.tracked {
        Some(t) => format!(
            "tracked flow to {} (age {:.1}s, TCP flags {:#04x}){}",
            t.backend,
            t.age_s,
            t.tcp_flags,
            if t.stays {
                ""
            } else {
                ": its backend is down or gone, the next packet hashes afresh"
            }
        ),
        None => "no tracked flow".into(),
    };
    let model = if w.model_agrees {
        ""
    } else {
        "\nwarning: the userspace model of the table picks another backend: please report it"
    };
    format!(
        "{from} -> {} ({}): slot {} of {}; a new flow goes to {new}; {tracked} (asked the loaded program){model}",
        w.label, w.service, w.slot, w.table_size
    )
}
