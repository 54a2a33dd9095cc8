//! The control socket: `fw stats` and `fw reload` talk to the running firewall over an
//! abstract unix socket in its namespace.
use std::{
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::*;
use crate::runtime::{
    bpf::AttachMode,
    control::{self, Reply},
};

/// Abstract socket name of the firewall on `iface` (per network namespace).
pub fn socket_name(iface: &str) -> String {
    format!("wirelab-fw/{iface}")
}

/// What `fw stats` and `fw reload` ask the running firewall.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub(super) enum Request {
    /// Counters, log samples, lookup plan.
    Stats,
    /// Install this rules text (relative `src_file`s resolved against `base`).
    Reload {
        rules: String,
        #[serde(default)]
        base: Option<PathBuf>,
    },
    /// The ids of the capture tap's maps (`wirelab capture` on this interface).
    Tap,
}

/// What the running firewall answers (inside the runtime's reply envelope).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "lowercase")]
pub(super) enum Answer {
    Stats(Box<Stats>),
    Reload(Box<InstallReport>),
    Tap(TapInfo),
}

/// Run count and time of the `fw` program (kept by the kernel while
/// `kernel.bpf_stats_enabled` is 1).
pub(super) fn program_stats(bpf: &aya::Ebpf) -> Option<ProgramStats> {
    let info = bpf
        .program("fw")
        .and_then(|p| <&aya::programs::Xdp>::try_from(p).ok())
        .and_then(|x| x.info().ok());
    info.map(|i| {
        let runs = i.run_count();
        let run_time_ns = i.run_time().as_nanos() as u64;
        ProgramStats {
            runs,
            run_time_ns,
            ns_per_packet: if runs > 0 {
                run_time_ns as f64 / runs as f64
            } else {
                0.0
            },
        }
    })
}

/// Answer one request on an accepted connection.
pub(super) fn serve(
    fw: &mut Firewall,
    bpf: &aya::Ebpf,
    s: UnixStream,
    opts: &Options,
    mode: AttachMode,
) -> Result<()> {
    let answer = match control::read_request::<Request>(&s, Duration::from_secs(5)) {
        Err(e) => Err(e),
        Ok(Request::Stats) => fw.stats().map(|mut v| {
            v.program = program_stats(bpf);
            v.iface = Some(opts.iface.clone());
            v.mode = Some(mode);
            Answer::Stats(Box::new(v))
        }),
        Ok(Request::Tap) => tap_info(bpf, mode).map(Answer::Tap),
        Ok(Request::Reload { rules, base }) => rules::parse(&rules, base.as_deref())
            .inspect_err(|e| tracing::warn!("reload refused, old rules stay in force: {e:#}"))
            .and_then(|rs| {
                let v = fw.install(&rs).context("installing")?;
                tracing::info!(
                    generation = fw.generation(),
                    rules = rs.rules.len(),
                    "rules reloaded"
                );
                if opts.report.json {
                    let _ = print_line(&Line::Reload(Box::new(v.clone())));
                }
                Ok(Answer::Reload(Box::new(v)))
            }),
    };
    control::reply(&s, &Reply::from_result(answer))
}

/// Send one request to the firewall on `iface` (or the only one running here).
fn request(iface: Option<&str>, req: &Request) -> Result<Answer> {
    let name = control::pick(
        "wirelab-fw/",
        iface.map(socket_name),
        "wirelab fw",
        "--iface",
    )?;
    control::request(&name, req, Duration::from_secs(60))
}

pub fn stats(iface: Option<&str>) -> Result<Stats> {
    match request(iface, &Request::Stats)? {
        Answer::Stats(s) => Ok(*s),
        _ => bail!("the firewall answered a stats request with something else"),
    }
}

/// The kernel ids of this firewall's tap maps.
fn tap_info(bpf: &aya::Ebpf, mode: AttachMode) -> Result<TapInfo> {
    let mut t = TapInfo::of(
        bpf,
        wirelab_common::maps::FW_TAP,
        wirelab_common::maps::FW_TAP_ON,
    )?;
    t.mode = Some(mode);
    Ok(t)
}

/// Ask the firewall on `iface` (in this namespace) for its tap's map ids.
pub fn tap(iface: &str) -> Result<TapInfo> {
    match request(Some(iface), &Request::Tap)? {
        Answer::Tap(t) => Ok(t),
        _ => bail!("the firewall answered a tap request with something else"),
    }
}

/// Validate `path` here, then ask the running firewall to install it.
pub fn reload(iface: Option<&str>, path: &Path) -> Result<InstallReport> {
    rules::load(path).context("reload refused, the old rules stay in force")?;
    let text = crate::util::read_user_file(path, crate::util::limit::CONFIG)?;
    let base = path
        .parent()
        .map(|p| {
            std::fs::canonicalize(if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            })
        })
        .transpose()?;
    match request(iface, &Request::Reload { rules: text, base })
        .context("reload refused, the old rules stay in force")?
    {
        Answer::Reload(r) => Ok(*r),
        _ => bail!("the firewall answered a reload request with something else"),
    }
}
