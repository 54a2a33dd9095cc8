//! `wirelab fw`: an XDP firewall with CIDR/port/protocol/flag/ICMP rules, per-source rate
//! limits, sampled logging, per-rule counters and atomic live reload.
//!
//! The running `fw` process owns the program (through a bpf_link) and its maps, and serves
//! `reload` and `stats` on an abstract unix socket `@wirelab-fw/IFACE` inside its network
//! namespace. Abstract sockets and bpf_links vanish with the process, so SIGINT, SIGTERM and
//! kill -9 leave nothing behind: no pinned files, nothing attached.
mod control;
mod firewall;
mod log;
mod metrics;
pub mod plan;
pub mod rules;
mod stats;
pub mod types;

use control::*;
pub use control::{reload, socket_name, stats};
pub use firewall::lookup_plan;
pub use firewall::{Firewall, FwMaps};
use log::*;
use metrics::*;
pub use stats::print_stats;
use stats::*;
pub use types::*;

use std::{
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

/// Write one JSON line on stdout (`--json`).
fn print_line(l: &Line) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(l)?)?;
    out.flush()?;
    Ok(())
}

use crate::{
    ebpf,
    runtime::{
        bpf::{self, AttachMode},
        control as ctl,
    },
    util::Stop,
};

pub struct Options {
    pub iface: String,
    pub rules: PathBuf,
    pub mode: Option<AttachMode>,
    pub json: bool,
    pub duration: Option<Duration>,
    /// Run record directory (`--record`): rules, reloads, per-interval hits, final counters.
    pub record: Option<PathBuf>,
    /// Prometheus endpoint (`--metrics`), bound before entering the namespace.
    pub metrics: Option<crate::metrics::Endpoint>,
    /// Interval of the recorded series and of the metrics' updates.
    pub interval: Duration,
}

/// Run the firewall until `duration`, SIGINT or SIGTERM.
pub fn run(opts: &Options, stop: &Stop) -> Result<Stats> {
    let rs = rules::load(&opts.rules)?;
    if nix::net::if_::if_nametoindex(opts.iface.as_str()).is_err() {
        bail!(
            "no interface named {:?} in this network namespace (use --netns NAME for a lab host)",
            opts.iface
        );
    }
    let name = socket_name(&opts.iface);
    let listener = ctl::bind(&name, &format!("a wirelab fw on {}", opts.iface))?;
    let mut bpf = ebpf::load()?;
    let mut fw = Firewall::new(&mut bpf, &rs)?;
    let mode = bpf::attach_xdp(&mut bpf, "fw", &opts.iface, opts.mode)?;
    tracing::info!(
        iface = %opts.iface, %mode, rules = rs.rules.len(), prefixes = rs.prefixes(),
        "fw attached (control socket @{name})"
    );
    let start = Instant::now();
    let stdout = std::io::stdout();
    if opts.json {
        print_line(&Line::Start {
            iface: opts.iface.clone(),
            mode: mode.to_string(),
            rules: rs.rules.len(),
            prefixes: rs.prefixes(),
        })?;
    }
    let mut rec = match &opts.record {
        Some(dir) => Some(crate::record::Recorder::create(
            dir,
            "fw",
            "fw",
            json!({"iface": opts.iface, "mode": mode, "rules_file": opts.rules,
                "rules": crate::util::read_user_file(&opts.rules, crate::util::limit::CONFIG).unwrap_or_default(),
                "interval_s": opts.interval.as_secs_f64()}),
        )?),
        None => None,
    };
    let mut prev = fw.stats()?;
    let mut metrics = match &opts.metrics {
        Some(ep) => {
            let mut m = FwMetrics::start(ep)?;
            m.publish(&opts.iface, &prev);
            tracing::info!("metrics on http://{}/metrics", ep.addr);
            Some(m)
        }
        None => None,
    };
    let mut last_line = Instant::now();
    loop {
        let stopped = stop.sleep(Duration::from_millis(20));
        for v in fw.drain_log() {
            if opts.json {
                print_line(&Line::Log(Box::new(v)))?;
            } else {
                let mut out = stdout.lock();
                writeln!(out, "{}", v.text())?;
                out.flush()?;
            }
        }
        loop {
            match listener.accept() {
                Ok((s, _)) => {
                    let reloads = fw.reloads;
                    if let Err(e) = serve(&mut fw, &bpf, s, opts, mode) {
                        tracing::warn!("control request failed: {e:#}");
                    }
                    if fw.reloads != reloads {
                        if let Some(r) = rec.as_mut() {
                            let st = fw.stats()?;
                            r.change(&ReloadChange {
                                t: start.elapsed().as_secs_f64(),
                                generation: st.generation,
                                rules: st.rules,
                            })?;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("control socket"),
            }
        }
        if (rec.is_some() || metrics.is_some()) && last_line.elapsed() >= opts.interval {
            last_line = Instant::now();
            let cur = fw.stats()?;
            if let Some(m) = metrics.as_mut() {
                m.publish(&opts.iface, &cur);
            }
            let line = interval_line(start.elapsed().as_secs_f64(), &cur, &prev);
            prev = cur;
            if let Some(r) = rec.as_mut() {
                r.interval(&line)?;
            }
        }
        if stopped || opts.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
    }
    for v in fw.drain_log() {
        if opts.json {
            print_line(&Line::Log(Box::new(v)))?;
        }
    }
    let mut s = fw.stats()?;
    s.iface = Some(opts.iface.clone());
    s.mode = Some(mode.to_string());
    s.duration_s = Some(start.elapsed().as_secs_f64());
    if opts.json {
        print_line(&Line::Final(Box::new(s.clone())))?;
    } else {
        let mut out = stdout.lock();
        print_stats(&mut out, &s)?;
        out.flush()?;
    }
    if let Some(r) = rec {
        let path = r.finish(&s, vec![], vec![])?;
        tracing::info!(summary = %path.display(), "record written");
    }
    drop(listener);
    drop(bpf);
    tracing::info!(iface = %opts.iface, "fw detached");
    Ok(s)
}
