//! The control socket: `fw stats` and `fw reload` talk to the running firewall over an
//! abstract unix socket in its namespace.
use std::{
    io::Write as _,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

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
}

/// Run count and time of the `fw` program (kept by the kernel while
/// `kernel.bpf_stats_enabled` is 1).
pub(super) fn program_stats(bpf: &aya::Ebpf) -> serde_json::Value {
    let info = bpf
        .program("fw")
        .and_then(|p| <&aya::programs::Xdp>::try_from(p).ok())
        .and_then(|x| x.info().ok());
    match info {
        Some(i) => {
            let n = i.run_count();
            let t = i.run_time().as_nanos() as u64;
            json!({"runs": n, "run_time_ns": t,
                "ns_per_packet": if n > 0 { t as f64 / n as f64 } else { 0.0 }})
        }
        None => serde_json::Value::Null,
    }
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
            v["program"] = program_stats(bpf);
            v["iface"] = json!(opts.iface);
            v["mode"] = json!(mode);
            v
        }),
        Ok(Request::Reload { rules, base }) => rules::parse(&rules, base.as_deref())
            .inspect_err(|e| tracing::warn!("reload refused, old rules stay in force: {e:#}"))
            .and_then(|rs| {
                let v = fw.install(&rs).context("installing")?;
                tracing::info!(
                    generation = fw.generation(),
                    rules = rs.rules.len(),
                    "rules reloaded"
                );
                if opts.json {
                    let mut e = v.clone();
                    e["type"] = json!("reload");
                    let _ = writeln!(std::io::stdout().lock(), "{e}");
                }
                Ok(v)
            }),
    };
    control::reply(&s, &Reply::from_result(answer))
}

/// Send one request to the firewall on `iface` (or the only one running here).
fn request(iface: Option<&str>, req: &Request) -> Result<serde_json::Value> {
    let name = control::pick(
        "wirelab-fw/",
        iface.map(socket_name),
        "wirelab fw",
        "--iface",
    )?;
    control::request(&name, req, Duration::from_secs(60))
}

pub fn stats(iface: Option<&str>) -> Result<serde_json::Value> {
    request(iface, &Request::Stats)
}

/// Validate `path` here, then ask the running firewall to install it.
pub fn reload(iface: Option<&str>, path: &Path) -> Result<serde_json::Value> {
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
    request(iface, &Request::Reload { rules: text, base })
        .context("reload refused, the old rules stay in force")
}
