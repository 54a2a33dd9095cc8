//! The control socket: `lb stats`, `lb reload` and `lb which` talk to the running balancer
//! over the runtime's abstract unix socket `@wirelab-lb/IFACE` in its namespace, with typed
//! requests and answers.
use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{config::Proto, Balancer, Config, Stats, Which};
use crate::runtime::{control, tap::TapInfo};

/// Abstract socket name of the balancer on `iface` (per network namespace).
pub fn socket_name(iface: &str) -> String {
    format!("wirelab-lb/{iface}")
}

/// What `lb stats`, `lb reload` and `lb which` ask the running balancer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub(super) enum Request {
    /// Counters per service and backend, health, generation.
    Stats,
    /// Validate and install this config text (`dry_run`: only say what would change).
    Reload {
        config: String,
        #[serde(default)]
        dry_run: bool,
    },
    /// Which backend a new flow `from` → `to` would get, and its tracked flow.
    Which {
        from: SocketAddr,
        to: SocketAddr,
        proto: Proto,
    },
    /// Where the capture tap is (`wirelab_common::tap`), for a capture on `iface`.
    Tap { iface: String },
}

/// What the running balancer answers (inside the runtime's reply envelope).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "lowercase")]
pub(super) enum Answer {
    Stats(Box<StatsReply>),
    Reload(Box<ReloadReport>),
    Which(Box<Which>),
    Tap(Box<TapInfo>),
}

/// `lb stats`: the cumulative counters and the state of the tables.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsReply {
    pub iface: String,
    /// Table generation in force (0 or 1).
    pub generation: u32,
    /// Reloads installed since start.
    pub reloads: u64,
    /// Table rebuilds caused by health transitions since start.
    pub health_changes: u64,
    pub uptime_s: f64,
    #[serde(flatten)]
    pub stats: Stats,
}

named_enum! {
    /// What a reload does to a service.
    pub enum ServiceFate {
        Added = "added",
        Removed = "removed",
        /// In both files (its backends may change).
        Kept = "kept",
    }
}

/// What a reload changed (or, with `dry_run`, would change) in one service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceChange {
    pub name: String,
    /// `VIP:port/proto`.
    pub service: String,
    pub change: ServiceFate,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Backends whose weight changed.
    pub reweighted: Vec<String>,
    /// Share of the Maglev slots that point to another backend afterwards (percent; new
    /// flows hashing there go elsewhere, tracked flows stay).
    pub slots_moved_pct: f64,
    /// Backends gone from the file that keep their place in the table's layout while the
    /// balancer runs, so that removing one moves only its own slots
    /// ([`super::config::ServiceConf::layout_after`]).
    #[serde(default)]
    pub departed: Vec<String>,
}

/// `lb reload`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReloadReport {
    pub dry_run: bool,
    /// Generation in force afterwards (unchanged by a dry run).
    pub generation: u32,
    pub services: Vec<ServiceChange>,
    /// Flows in the tracking table at the reload.
    pub tracked_flows: u64,
    /// Of those, flows whose backend is down (failed health checks): their next packet
    /// hashes afresh. Flows of removed or drained backends stay on them.
    pub tracked_flows_moved: u64,
    pub install_ms: f64,
}

/// The names of `s`'s backends that `pick` keeps, in order.
fn names(
    s: &super::InstalledService,
    pick: impl Fn(&super::InstalledBackend) -> bool,
) -> Vec<String> {
    s.backends
        .iter()
        .filter(|b| pick(b))
        .map(|b| b.name.clone())
        .collect()
}

/// Per-service changes from `prev` to `next` (both planned with stable ids).
pub(super) fn diff(prev: &Balancer, next: &Balancer) -> Vec<ServiceChange> {
    let mut out = Vec::new();
    for n in &next.services {
        let p = prev.services.iter().find(|p| p.id == n.id);
        let Some(p) = p else {
            out.push(ServiceChange {
                name: n.conf.name.clone(),
                service: n.conf.label(),
                change: ServiceFate::Added,
                added: names(n, |_| true),
                removed: vec![],
                reweighted: vec![],
                slots_moved_pct: 100.0,
                departed: vec![],
            });
            continue;
        };
        let moved = if p.table.len() == n.table.len() {
            p.table.iter().zip(&n.table).filter(|(a, b)| a != b).count()
        } else {
            n.table.len()
        };
        out.push(ServiceChange {
            name: n.conf.name.clone(),
            service: n.conf.label(),
            change: ServiceFate::Kept,
            added: names(n, |b| !p.backends.iter().any(|x| x.id == b.id)),
            removed: names(p, |b| !n.backends.iter().any(|x| x.id == b.id)),
            reweighted: names(n, |b| {
                p.backends
                    .iter()
                    .any(|x| x.id == b.id && x.weight != b.weight)
            }),
            slots_moved_pct: 100.0 * moved as f64 / n.table.len().max(1) as f64,
            departed: n
                .layout
                .iter()
                .filter(|l| !n.backends.iter().any(|b| b.name == l.name))
                .map(|l| l.name.clone())
                .collect(),
        });
    }
    for p in &prev.services {
        if !next.services.iter().any(|n| n.id == p.id) {
            out.push(ServiceChange {
                name: p.conf.name.clone(),
                service: p.conf.label(),
                change: ServiceFate::Removed,
                added: vec![],
                removed: names(p, |_| true),
                reweighted: vec![],
                slots_moved_pct: 100.0,
                departed: vec![],
            });
        }
    }
    out
}

/// Send one request to the balancer on `iface` (or the only one running here).
fn request(iface: Option<&str>, req: &Request) -> Result<Answer> {
    let name = control::pick(
        "wirelab-lb/",
        iface.map(socket_name),
        "wirelab lb",
        "--iface",
    )?;
    control::request(&name, req, Duration::from_secs(30))
}

/// Ask the balancer on `iface` (in this namespace) where its capture tap is. Refused when it
/// runs on its tc path (the tap is the XDP path's).
pub fn tap(iface: &str) -> Result<TapInfo> {
    let req = Request::Tap {
        iface: iface.to_string(),
    };
    match request(Some(iface), &req)? {
        Answer::Tap(t) => Ok(*t),
        _ => bail!("the balancer answered a tap request with something else"),
    }
}

pub fn stats(iface: Option<&str>) -> Result<StatsReply> {
    match request(iface, &Request::Stats)? {
        Answer::Stats(s) => Ok(*s),
        _ => bail!("the balancer answered a stats request with something else"),
    }
}

/// Validate `path` here, then ask the running balancer to install it (or, `dry_run`, to say
/// what it would change). A refused file changes nothing.
pub fn reload(iface: Option<&str>, path: &Path, dry_run: bool) -> Result<ReloadReport> {
    Config::load(path).context("reload refused, the running config stays")?;
    let text = crate::util::read_user_file(path, crate::util::limit::CONFIG)?;
    match request(
        iface,
        &Request::Reload {
            config: text,
            dry_run,
        },
    )
    .context("reload refused, the running config stays")?
    {
        Answer::Reload(r) => Ok(*r),
        _ => bail!("the balancer answered a reload request with something else"),
    }
}

pub fn which(iface: Option<&str>, from: SocketAddr, to: SocketAddr, proto: Proto) -> Result<Which> {
    match request(iface, &Request::Which { from, to, proto })? {
        Answer::Which(w) => Ok(*w),
        _ => bail!("the balancer answered a which request with something else"),
    }
}
