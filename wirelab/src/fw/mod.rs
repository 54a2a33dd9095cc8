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
pub use control::{reload, socket_name, stats, tap};
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

/// Write one JSON line on stdout (`--json`).
fn print_line(l: &Line) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(l)?)?;
    out.flush()?;
    Ok(())
}

use crate::runtime::{control as ctl, prelude::*};

pub struct Options {
    pub iface: String,
    pub rules: PathBuf,
    pub mode: Option<AttachMode>,
    /// Interval, duration, `--json`, and the record (rules, reloads, per-interval hits, final
    /// counters) and metrics.
    pub report: Reporting,
}

/// The configuration recorded with `--record`.
#[derive(serde::Serialize)]
struct RecordConfig<'a> {
    iface: &'a str,
    mode: AttachMode,
    rules_file: &'a std::path::Path,
    rules: String,
    interval_s: f64,
}

/// The running firewall as the runtime drives it: counters sampled each interval (recorded,
/// published), log samples and control requests handled between ticks.
struct FwTool<'a> {
    opts: &'a Options,
    bpf: &'a aya::Ebpf,
    fw: Firewall,
    listener: std::os::unix::net::UnixListener,
    mode: AttachMode,
    metrics: Option<FwMetrics>,
    start: Instant,
    /// Last check that a capture holding the tap is still alive.
    tap_checked: Instant,
}

impl Sampled for FwTool<'_> {
    type Snapshot = Stats;
    type Line = Interval;
    type Final = Line;
    /// Stdout carries log samples and reloads; intervals go to the record and metrics.
    const PRINTS_INTERVALS: bool = false;

    fn read(&mut self) -> Result<Stats> {
        self.fw.stats()
    }

    fn interval(&self, tick: &Tick, cur: &Stats, prev: &Stats) -> Interval {
        interval_line(tick.t, cur, prev)
    }

    fn publish(&mut self, cur: &Stats) {
        if let Some(m) = self.metrics.as_mut() {
            m.publish(&self.opts.iface, cur);
        }
    }

    fn poll_every(&self) -> Option<Duration> {
        Some(Duration::from_millis(20))
    }

    fn poll(&mut self, obs: &mut Observer) -> Result<()> {
        if self.tap_checked.elapsed() >= Duration::from_secs(1) {
            self.tap_checked = Instant::now();
            let (p, f) = (
                wirelab_common::maps::FW_TAP,
                wirelab_common::maps::FW_TAP_ON,
            );
            let tap = crate::runtime::tap::TapInfo::of(self.bpf, p, f);
            if let Err(e) = tap.and_then(|t| crate::runtime::tap::release_dead(&t)) {
                tracing::warn!("checking the capture tap: {e:#}");
            }
        }
        for v in self.fw.drain_log() {
            if self.opts.report.json {
                print_line(&Line::Log(Box::new(v)))?;
            } else {
                crate::runtime::observe::to_stdout(|out| writeln!(out, "{}", v.text()))?;
            }
        }
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    let reloads = self.fw.reloads;
                    if let Err(e) = serve(&mut self.fw, self.bpf, s, self.opts, self.mode) {
                        tracing::warn!("control request failed: {e:#}");
                    }
                    if self.fw.reloads != reloads {
                        let st = self.fw.stats()?;
                        obs.change(&ReloadChange {
                            t: self.start.elapsed().as_secs_f64(),
                            generation: st.generation,
                            rules: st.rules,
                        })?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e).context("control socket"),
            }
        }
    }

    fn finish(&mut self, total: &Stats, secs: f64) -> Result<(Line, Vec<crate::record::Quantity>)> {
        let mut s = total.clone();
        s.iface = Some(self.opts.iface.clone());
        s.mode = Some(self.mode);
        s.duration_s = Some(secs);
        Ok((Line::Final(Box::new(s)), vec![]))
    }

    fn final_table(&self, fin: &Line, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        match fin {
            Line::Final(s) => print_stats(out, s).map_err(std::io::Error::other),
            _ => Ok(()),
        }
    }
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
    let mut bpf = ebpf::load(ebpf::Object::Fw)?;
    let fw = Firewall::new(&mut bpf, &rs)?;
    let mode = bpf::attach_xdp(&mut bpf, "fw", &opts.iface, opts.mode)?;
    tracing::info!(
        iface = %opts.iface, %mode, rules = rs.rules.len(), prefixes = rs.prefixes(),
        "fw attached (control socket @{name})"
    );
    if opts.report.json {
        print_line(&Line::Start {
            iface: opts.iface.clone(),
            mode: mode.to_string(),
            rules: rs.rules.len(),
            prefixes: rs.prefixes(),
        })?;
    }
    let obs = opts.report.observer(
        "fw",
        &RecordConfig {
            iface: &opts.iface,
            mode,
            rules_file: &opts.rules,
            rules: crate::util::read_user_file(&opts.rules, crate::util::limit::CONFIG)
                .unwrap_or_default(),
            interval_s: opts.report.interval.as_secs_f64(),
        },
    )?;
    let metrics = match &opts.report.metrics {
        Some(ep) => {
            let m = FwMetrics::serve("fw", ep)?;
            tracing::info!("metrics on http://{}/metrics", ep.addr);
            Some(m)
        }
        None => None,
    };
    let mut tool = FwTool {
        opts,
        bpf: &bpf,
        fw,
        listener,
        mode,
        metrics,
        start: Instant::now(),
        tap_checked: Instant::now(),
    };
    let (fin, _) = sampled::drive(&mut tool, opts.report.ticker(), stop, obs)?;
    drop(tool);
    drop(bpf);
    tracing::info!(iface = %opts.iface, "fw detached");
    match fin {
        Line::Final(s) => Ok(*s),
        _ => bail!("fw ended without its final counters"),
    }
}
