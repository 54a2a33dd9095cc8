//! The control socket: `fw stats` and `fw reload` talk to the running firewall over an
//! abstract unix socket in its namespace.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixStream},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::*;
use crate::runtime::bpf::AttachMode;

/// Abstract socket name of the firewall on `iface` (per network namespace).
pub fn socket_name(iface: &str) -> String {
    format!("wirelab-fw/{iface}")
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Request {
    cmd: String,
    #[serde(default)]
    rules: Option<String>,
    #[serde(default)]
    base: Option<PathBuf>,
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

pub(super) fn serve(
    fw: &mut Firewall,
    bpf: &aya::Ebpf,
    s: UnixStream,
    opts: &Options,
    mode: AttachMode,
) -> Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let req: Request = serde_json::from_str(&line).context("bad request")?;
    let resp = match req.cmd.as_str() {
        "stats" => match fw.stats() {
            Ok(mut v) => {
                v["ok"] = json!(true);
                v["program"] = program_stats(bpf);
                v["iface"] = json!(opts.iface);
                v["mode"] = json!(mode);
                v
            }
            Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
        },
        "reload" => {
            let text = req.rules.unwrap_or_default();
            match rules::parse(&text, req.base.as_deref()) {
                Err(e) => {
                    tracing::warn!("reload refused, old rules stay in force: {e:#}");
                    json!({"ok": false, "error": format!("{e:#}")})
                }
                Ok(rs) => match fw.install(&rs) {
                    Ok(v) => {
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
                        v
                    }
                    Err(e) => json!({"ok": false, "error": format!("installing: {e:#}")}),
                },
            }
        }
        o => json!({"ok": false, "error": format!("unknown command {o:?}")}),
    };
    let mut w = &s;
    writeln!(w, "{resp}")?;
    Ok(())
}

/// Find the control socket of the firewall in the current namespace.
pub(super) fn find_socket(iface: Option<&str>) -> Result<String> {
    if let Some(i) = iface {
        return Ok(socket_name(i));
    }
    let text = std::fs::read_to_string("/proc/self/net/unix").unwrap_or_default();
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter_map(|p| p.strip_prefix("@wirelab-fw/"))
        .map(socket_name)
        .collect();
    names.sort();
    names.dedup();
    match names.len() {
        0 => bail!("no wirelab fw runs in this network namespace (use --netns NAME?)"),
        1 => Ok(names.remove(0)),
        _ => bail!(
            "several firewalls run here ({}); pick one with --iface",
            names.join(", ")
        ),
    }
}

/// Send one request to a running firewall and return its answer.
pub(super) fn request(iface: Option<&str>, req: &Request) -> Result<serde_json::Value> {
    let name = find_socket(iface)?;
    let s = UnixStream::connect_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)
        .with_context(|| format!("connecting to @{name}: is wirelab fw running?"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut w = &s;
    writeln!(w, "{}", serde_json::to_string(req)?)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line).context("bad answer from fw")?;
    if v["ok"] != true {
        bail!("{}", v["error"].as_str().unwrap_or("request failed"));
    }
    Ok(v)
}

pub fn stats(iface: Option<&str>) -> Result<serde_json::Value> {
    request(
        iface,
        &Request {
            cmd: "stats".into(),
            rules: None,
            base: None,
        },
    )
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
    request(
        iface,
        &Request {
            cmd: "reload".into(),
            rules: Some(text),
            base,
        },
    )
    .context("reload refused, the old rules stay in force")
}
