//! The balancer's configuration file, parsed and validated in full before anything is
//! attached. Every error names the field at fault (`service[0].backend[2].weight: ...`).
//!
//! ```toml
//! [[service]]
//! name = "web"              # optional; default "service0", "service1", ...
//! vip = "198.18.1.100"      # IPv4 or IPv6
//! port = 80
//! proto = "tcp"             # tcp | udp
//! mode = "dsr"              # dsr | nat
//! table_size = 65537        # Maglev table size M: a prime, N..=65537 (default 65537)
//! seed = 0                  # hash seed: same config + seed = same backend choice
//! snat = "198.18.2.250"     # nat, optional: new flows get this balancer address as their
//!                           # source, for backends whose replies do not route through it;
//!                           # a list (up to 8) is a pool: each flow gets one by its hash
//!
//! [[service.backend]]
//! name = "web1"             # unique within the service; seeds its Maglev permutation
//! addr = "198.18.0.21"      # same family as the VIP
//! port = 8080               # nat, optional: the port it listens on (default: the service's)
//! mac = "02:00:00:00:00:21" # dsr, optional: resolved from the neighbour table when missing
//! weight = 1                # 0 drains: no new flows, tracked flows stay (default 1)
//! ```
//!
//! A service may have health checks (probes from the balancer's namespace):
//!
//! ```toml
//! health = { kind = "http", path = "/", expect_status = 200, interval = "1s", rise = 2, fall = 3, timeout = "500ms" }
//! ```
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::Deserialize;
use wirelab_common::lb::{MAX_BACKENDS, MAX_SERVICES, MAX_TABLE_SIZE, SNAT_POOL_MAX};

use super::maglev::{self, DEFAULT_TABLE_SIZE};
use crate::lab::FieldError;

/// Largest weight of a backend (keeps M·w within u64 with room, and weights readable).
pub const MAX_WEIGHT: u32 = 10_000;

fn ferr(field: impl Into<String>, reason: impl Into<String>) -> anyhow::Error {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
    .into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    new_flow_limit: Option<i64>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    vip: String,
    port: i64,
    proto: String,
    #[serde(default = "default_mode")]
    mode: String,
    table_size: Option<i64>,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    backend: Vec<RawBackend>,
    health: Option<RawHealth>,
    udp_idle_timeout: Option<String>,
    snat: Option<RawSnat>,
}

/// `snat = "ADDR"` or `snat = ["ADDR", ...]` (a pool).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSnat {
    One(String),
    Pool(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: String,
    path: Option<String>,
    expect_status: Option<i64>,
    interval: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
    timeout: Option<String>,
    port: Option<i64>,
}

/// What a health probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    /// A TCP connect within the timeout.
    Tcp,
    /// `GET path HTTP/1.0` answered with `expect_status` within the timeout.
    Http { path: String, expect_status: u16 },
}

/// A service's health checks: every backend probed each `interval` from the balancer's
/// namespace; `fall` failures in a row take it out of the table, `rise` successes bring it
/// back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConf {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Port probed (default: the service's port).
    pub port: Option<u16>,
}

impl std::fmt::Display for HealthConf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            HealthKind::Tcp => write!(f, "tcp connect")?,
            HealthKind::Http {
                path,
                expect_status,
            } => write!(f, "http GET {path} expecting {expect_status}")?,
        }
        write!(
            f,
            " every {:?} (timeout {:?}), rise {}, fall {}",
            self.interval, self.timeout, self.rise, self.fall
        )?;
        if let Some(p) = self.port {
            write!(f, ", port {p}")?;
        }
        Ok(())
    }
}

/// Idle timeout of tracked UDP flows when the config does not set one.
pub const DEFAULT_UDP_IDLE: Duration = Duration::from_secs(30);

/// Health check bounds.
pub const HEALTH_MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const HEALTH_MAX_INTERVAL: Duration = Duration::from_secs(3600);
pub const HEALTH_MAX_COUNT: i64 = 100;

fn parse_health(h: RawHealth, f: &dyn Fn(&str) -> String) -> Result<HealthConf> {
    let dur = |k: &str, v: Option<String>, default: Duration| -> Result<Duration> {
        match v {
            None => Ok(default),
            Some(t) => crate::util::parse_duration(&t).map_err(|e| ferr(f(k), e)),
        }
    };
    let interval = dur("health.interval", h.interval, Duration::from_secs(1))?;
    if !(HEALTH_MIN_INTERVAL..=HEALTH_MAX_INTERVAL).contains(&interval) {
        return Err(ferr(
            f("health.interval"),
            format!("{interval:?}: must be 100ms..=1h"),
        ));
    }
    let timeout = dur(
        "health.timeout",
        h.timeout,
        interval.min(Duration::from_secs(1)),
    )?;
    if timeout < Duration::from_millis(10) || timeout > interval {
        return Err(ferr(
            f("health.timeout"),
            format!("{timeout:?}: must be at least 10ms and at most the interval ({interval:?})"),
        ));
    }
    let count = |k: &str, v: Option<i64>, default: u32| -> Result<u32> {
        match v {
            None => Ok(default),
            Some(n) if (1..=HEALTH_MAX_COUNT).contains(&n) => Ok(n as u32),
            Some(n) => Err(ferr(f(k), format!("{n}: must be 1..={HEALTH_MAX_COUNT}"))),
        }
    };
    let rise = count("health.rise", h.rise, 2)?;
    let fall = count("health.fall", h.fall, 3)?;
    let port = h
        .port
        .map(|p| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| ferr(f("health.port"), format!("{p} is not a port (1-65535)")))
        })
        .transpose()?;
    let kind = match h.kind.as_str() {
        "tcp" => {
            if h.path.is_some() {
                return Err(ferr(f("health.path"), "only for kind = \"http\""));
            }
            if h.expect_status.is_some() {
                return Err(ferr(f("health.expect_status"), "only for kind = \"http\""));
            }
            HealthKind::Tcp
        }
        "http" => {
            let path = h.path.unwrap_or_else(|| "/".into());
            if !path.starts_with('/')
                || path.len() > 1024
                || path.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ferr(
                    f("health.path"),
                    format!("{path:?}: must start with / and hold no spaces or control characters (at most 1024 bytes)"),
                ));
            }
            let expect_status = match h.expect_status {
                None => 200,
                Some(c) if (100..=599).contains(&c) => c as u16,
                Some(c) => {
                    return Err(ferr(
                        f("health.expect_status"),
                        format!("{c}: an HTTP status is 100..=599"),
                    ))
                }
            };
            HealthKind::Http {
                path,
                expect_status,
            }
        }
        o => {
            return Err(ferr(
                f("health.kind"),
                format!("{o:?}: expected \"tcp\" or \"http\""),
            ))
        }
    };
    Ok(HealthConf {
        kind,
        interval,
        timeout,
        rise,
        fall,
        port,
    })
}

/// A service's `snat` pool (one address or a list of 1 to [`SNAT_POOL_MAX`]): NAT services
/// only, each address of the VIP's family, neither the VIP nor a backend's, none twice.
fn parse_snat(
    raw: RawSnat,
    vip: IpAddr,
    mode: Mode,
    backends: &[BackendConf],
    f: &dyn Fn(&str) -> String,
) -> Result<Vec<IpAddr>> {
    if mode != Mode::Nat {
        return Err(ferr(
            f("snat"),
            "only for mode = \"nat\" (DSR backends reply to the client themselves)",
        ));
    }
    let (texts, one) = match raw {
        RawSnat::One(t) => (vec![t], true),
        RawSnat::Pool(ts) => (ts, false),
    };
    if !(1..=SNAT_POOL_MAX).contains(&texts.len()) {
        return Err(ferr(
            f("snat"),
            format!(
                "{} addresses: a pool holds 1 to {SNAT_POOL_MAX}",
                texts.len()
            ),
        ));
    }
    let mut pool: Vec<IpAddr> = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let field = if one {
            f("snat")
        } else {
            f(&format!("snat[{i}]"))
        };
        let a: IpAddr = text
            .parse()
            .map_err(|_| ferr(&field, format!("{text:?} is not an IP address")))?;
        if a.is_ipv4() != vip.is_ipv4() {
            return Err(ferr(
                &field,
                format!("{a} is not of the VIP's address family ({vip})"),
            ));
        }
        if a == vip
            || backends.iter().any(|b| b.addr == a)
            || a.is_unspecified()
            || a.is_multicast()
        {
            return Err(ferr(
                &field,
                format!("{a}: must be an address of the balancer's own, not the VIP, a backend's, unspecified or multicast"),
            ));
        }
        if pool.contains(&a) {
            return Err(ferr(&field, format!("{a} is already in the pool")));
        }
        pool.push(a);
    }
    Ok(pool)
}

fn default_mode() -> String {
    "dsr".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: String,
    addr: String,
    port: Option<i64>,
    mac: Option<String>,
    weight: Option<i64>,
}

named_enum! {
    /// Transport protocol of a service.
    #[derive(Hash)]
    pub enum Proto {
        Tcp = "tcp",
        Udp = "udp",
    }
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

named_enum! {
    /// Forwarding mode of a service.
    pub enum Mode {
        Dsr = "dsr",
        Nat = "nat",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConf {
    pub name: String,
    pub addr: IpAddr,
    /// The port it listens on: the service's unless given (NAT only: the balancer
    /// translates the service port to it and back).
    pub port: u16,
    /// `None`: resolved from the neighbour table at start.
    pub mac: Option<[u8; 6]>,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConf {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub mode: Mode,
    pub table_size: u32,
    pub seed: u64,
    pub backends: Vec<BackendConf>,
    /// `None`: no health checks (every backend counts as up).
    pub health: Option<HealthConf>,
    /// UDP services: tracked flows idle this long are forgotten (default 30 s).
    pub udp_idle_timeout: Option<Duration>,
    /// NAT services: the balancer's addresses that new flows get as their source (SNAT), so
    /// backends reply to the balancer whatever their routes; each flow gets one of them by
    /// its hash. Empty: the client's address stays.
    pub snat: Vec<IpAddr>,
}

impl ServiceConf {
    /// `VIP:port/proto`.
    pub fn label(&self) -> String {
        match self.vip {
            IpAddr::V4(a) => format!("{a}:{}/{}", self.port, self.proto),
            IpAddr::V6(a) => format!("[{a}]:{}/{}", self.port, self.proto),
        }
    }

    /// The Maglev table of this service (slot → index into `backends`).
    pub fn table(&self) -> Result<Vec<Option<u32>>> {
        self.table_without(&|_| false)
    }

    /// The weight a drained backend (weight 0) fills a fresh layout with: the service's
    /// smallest weight (1 if every backend is drained).
    fn layout_weight(&self) -> u32 {
        self.backends
            .iter()
            .map(|b| b.weight)
            .filter(|w| *w > 0)
            .min()
            .unwrap_or(1)
    }

    /// The layout a fresh start gives: the configured backends in file order, a drained one
    /// at [`Self::layout_weight`].
    pub fn layout(&self) -> Vec<Place> {
        let w = self.layout_weight();
        self.backends
            .iter()
            .map(|b| Place {
                name: b.name.clone(),
                weight: if b.weight == 0 { w } else { b.weight },
            })
            .collect()
    }

    /// The layout after a reload from `prev` (the running service) with `prev_layout`: every
    /// place stays where it was. A backend still configured fills with its new weight (a
    /// drained one with the weight it filled with before); a backend gone from the file
    /// keeps its place and weight as a departed place, out of the table the way a backend
    /// down is; a new backend takes a place at the end (a departed one coming back takes its
    /// old place again). So removing one of N backends from the file moves exactly its own
    /// slots, as its going down does, where a table laid out afresh without it moves 1.6/N
    /// of them at N = 100 (the algorithm's turns shift). A changed `table_size` or `seed`
    /// lays the table out afresh, and so does a restart. At most [`MAX_DEPARTED`] departed
    /// places are kept, the earliest forgotten first.
    pub fn layout_after(&self, prev: &ServiceConf, prev_layout: &[Place]) -> Vec<Place> {
        if prev.table_size != self.table_size || prev.seed != self.seed {
            return self.layout();
        }
        let mut out: Vec<Place> = prev_layout
            .iter()
            .map(|p| match self.backends.iter().find(|b| b.name == p.name) {
                Some(b) if b.weight > 0 => Place {
                    name: p.name.clone(),
                    weight: b.weight,
                },
                _ => p.clone(),
            })
            .collect();
        let w = self.layout_weight();
        for b in &self.backends {
            if !out.iter().any(|p| p.name == b.name) {
                out.push(Place {
                    name: b.name.clone(),
                    weight: if b.weight == 0 { w } else { b.weight },
                });
            }
        }
        let departed = |p: &Place| !self.backends.iter().any(|b| b.name == p.name);
        let mut excess = out
            .iter()
            .filter(|p| departed(p))
            .count()
            .saturating_sub(MAX_DEPARTED);
        out.retain(|p| {
            let forget = excess > 0 && departed(p);
            excess -= usize::from(forget);
            !forget
        });
        out
    }

    /// The Maglev table with the backends `down` says are down out of it: their slots handed
    /// to the backends up, every other slot unchanged ([`maglev::build_with_down`]), laid out
    /// afresh ([`Self::layout`]).
    ///
    /// A drained backend (weight 0) is out of it the same way: it keeps its place in the
    /// table's layout at the service's smallest weight, and its slots are handed on. So
    /// draining one of N equally weighted backends moves exactly its own slots, as a backend
    /// going down does; with unequal weights the layout changes with the weight, as any
    /// reweighting changes it (a running balancer keeps the weight it filled with: see
    /// [`Self::layout_after`]). The shares are the same either way: each backend up holds
    /// its weighted share of the table among the backends up.
    pub fn table_without(&self, down: &dyn Fn(&str) -> bool) -> Result<Vec<Option<u32>>> {
        self.table_in(&self.layout(), down)
    }

    /// The Maglev table filled along `layout` (slot → index into `backends`): a place whose
    /// name is not configured (departed), a drained backend and a backend `down` names are
    /// out of it, their slots handed to the backends up.
    pub fn table_in(
        &self,
        layout: &[Place],
        down: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Option<u32>>> {
        let index: Vec<Option<usize>> = layout
            .iter()
            .map(|p| self.backends.iter().position(|b| b.name == p.name))
            .collect();
        let bs: Vec<(&str, u32)> = layout
            .iter()
            .map(|p| (p.name.as_str(), p.weight.max(1)))
            .collect();
        let table = maglev::build_with_down(self.table_size, self.seed, &bs, &|i| {
            index[i].is_none_or(|j| {
                let b = &self.backends[j];
                b.weight == 0 || down(&b.name)
            })
        })?;
        Ok(table
            .into_iter()
            .map(|s| s.and_then(|i| index[i as usize].map(|j| j as u32)))
            .collect())
    }
}

/// Departed places (backends removed from the file while the balancer runs) a service's
/// layout keeps ([`ServiceConf::layout_after`]).
pub const MAX_DEPARTED: usize = MAX_BACKENDS as usize;

/// One place in a service's Maglev layout: the name whose permutation fills the table and
/// the weight it fills with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub name: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub services: Vec<ServiceConf>,
    /// New flows entered into the tracking table per second and CPU; `None`: no limit.
    pub new_flow_limit: Option<u32>,
}

/// Can `a` be a service's or a backend's address (one host's: not unspecified, loopback,
/// multicast or the IPv4 broadcast)?
fn unicast(a: &IpAddr) -> bool {
    !(a.is_unspecified()
        || a.is_multicast()
        || a.is_loopback()
        || matches!(a, IpAddr::V4(v4) if v4.is_broadcast()))
}

/// `aa:bb:cc:dd:ee:ff` (or with `-`), a unicast, non-zero address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        m[i] = u8::from_str_radix(p, 16)
            .map_err(|_| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    }
    if m[0] & 1 != 0 {
        return Err(format!(
            "{s:?} is a multicast/broadcast address, not a backend's"
        ));
    }
    if m == [0; 6] {
        return Err(format!("{s:?} is the zero address"));
    }
    Ok(m)
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Config {
    /// Some service translates (NAT): the kernel must forward, and `lb_egress` must run.
    pub fn has_nat(&self) -> bool {
        self.services.iter().any(|s| s.mode == Mode::Nat)
    }

    /// A NAT service gives new flows an SNAT address (errors about them come through `lo`).
    pub fn has_snat(&self) -> bool {
        self.services.iter().any(|s| !s.snat.is_empty())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::util::read_user_file(path, crate::util::limit::CONFIG)?;
        Self::parse(&text).with_context(|| format!("invalid lb config {}", path.display()))
    }

    /// Parse and validate the whole file.
    pub fn parse(text: &str) -> Result<Self> {
        let mut raw: RawFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        if raw.service.is_empty() {
            return Err(ferr("service", "the config needs at least one [[service]]"));
        }
        if raw.service.len() > MAX_SERVICES as usize {
            return Err(ferr(
                "service",
                format!(
                    "{} services; at most {MAX_SERVICES} are supported",
                    raw.service.len()
                ),
            ));
        }
        let mut services = Vec::new();
        let mut vips = HashSet::new();
        let mut names = HashSet::new();
        let mut total_backends = 0usize;
        for (i, s) in std::mem::take(&mut raw.service).into_iter().enumerate() {
            let f = |k: &str| format!("service[{i}].{k}");
            let name = s.name.unwrap_or_else(|| format!("service{i}"));
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(ferr(f("name"), format!("{name:?} is empty or used twice")));
            }
            let vip: IpAddr = s
                .vip
                .parse()
                .map_err(|_| ferr(f("vip"), format!("{:?} is not an IP address", s.vip)))?;
            if !unicast(&vip) {
                return Err(ferr(f("vip"), format!("{vip} cannot be a service address")));
            }
            let port = u16::try_from(s.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| ferr(f("port"), format!("{} is not a port (1-65535)", s.port)))?;
            let proto = match s.proto.as_str() {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                o => {
                    return Err(ferr(
                        f("proto"),
                        format!("{o:?}: expected \"tcp\" or \"udp\""),
                    ))
                }
            };
            let mode = match s.mode.as_str() {
                "dsr" => Mode::Dsr,
                "nat" => Mode::Nat,
                o => {
                    return Err(ferr(
                        f("mode"),
                        format!("{o:?}: expected \"dsr\" or \"nat\" (there is no tunnel mode: this kernel has no IPIP/GRE/FOU)"),
                    ))
                }
            };
            if !vips.insert((vip, port, proto)) {
                return Err(ferr(
                    f("vip"),
                    format!("{vip}:{port}/{proto} is already a service"),
                ));
            }
            let table_size = match s.table_size {
                None => DEFAULT_TABLE_SIZE,
                Some(m) => u32::try_from(m)
                    .ok()
                    .filter(|m| maglev::is_prime(*m) && *m <= MAX_TABLE_SIZE)
                    .ok_or_else(|| {
                        ferr(
                            f("table_size"),
                            format!("{m}: must be a prime of at most {MAX_TABLE_SIZE}"),
                        )
                    })?,
            };
            if s.backend.is_empty() {
                return Err(ferr(f("backend"), "a service needs at least one backend"));
            }
            if s.backend.len() > table_size as usize {
                return Err(ferr(
                    f("table_size"),
                    format!(
                        "{table_size} slots for {} backends: make it larger (about 100 per backend)",
                        s.backend.len()
                    ),
                ));
            }
            let mut backends = Vec::new();
            let mut bnames = HashSet::new();
            let mut baddrs = HashMap::new();
            for (j, b) in s.backend.into_iter().enumerate() {
                let g = |k: &str| format!("service[{i}].backend[{j}].{k}");
                if b.name.is_empty() || !bnames.insert(b.name.clone()) {
                    return Err(ferr(
                        g("name"),
                        format!("{:?} is empty or used twice", b.name),
                    ));
                }
                let addr: IpAddr = b
                    .addr
                    .parse()
                    .map_err(|_| ferr(g("addr"), format!("{:?} is not an IP address", b.addr)))?;
                if addr.is_ipv4() != vip.is_ipv4() {
                    return Err(ferr(
                        g("addr"),
                        format!("{addr} is not of the VIP's address family ({vip})"),
                    ));
                }
                if addr == vip || !unicast(&addr) {
                    return Err(ferr(
                        g("addr"),
                        format!("{addr}: a backend's own address, not the VIP, unspecified, loopback, multicast or broadcast"),
                    ));
                }
                let bport = match b.port {
                    None => port,
                    Some(n) => {
                        let p = u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| {
                            ferr(g("port"), format!("{n} is not a port (1-65535)"))
                        })?;
                        if mode == Mode::Dsr && p != port {
                            return Err(ferr(
                                g("port"),
                                format!("{p}: a DSR backend answers the client itself, from the VIP: it listens on the service port ({port}); only mode = \"nat\" translates ports"),
                            ));
                        }
                        p
                    }
                };
                if let Some(k) = baddrs.insert((addr, bport), j) {
                    return Err(ferr(
                        g("addr"),
                        format!("{addr} port {bport} is already backend[{k}]'s"),
                    ));
                }
                if mode == Mode::Nat && b.mac.is_some() {
                    return Err(ferr(
                        g("mac"),
                        "only for mode = \"dsr\" (a NAT backend is reached by the kernel's routing, which finds its MAC)",
                    ));
                }
                let mac = b
                    .mac
                    .as_deref()
                    .map(parse_mac)
                    .transpose()
                    .map_err(|e| ferr(g("mac"), e))?;
                let weight = match b.weight {
                    None => 1,
                    Some(w) => u32::try_from(w)
                        .ok()
                        .filter(|w| *w <= MAX_WEIGHT)
                        .ok_or_else(|| {
                            ferr(g("weight"), format!("{w}: must be 0..={MAX_WEIGHT}"))
                        })?,
                };
                backends.push(BackendConf {
                    name: b.name,
                    addr,
                    port: bport,
                    mac,
                    weight,
                });
            }
            total_backends += backends.len();
            if total_backends > MAX_BACKENDS as usize {
                return Err(ferr(
                    f("backend"),
                    format!("more than {MAX_BACKENDS} backends over all services"),
                ));
            }
            let health = s.health.map(|h| parse_health(h, &f)).transpose()?;
            let udp_idle_timeout = match (proto, s.udp_idle_timeout) {
                (Proto::Tcp, Some(_)) => {
                    return Err(ferr(
                        f("udp_idle_timeout"),
                        "only for proto = \"udp\" (TCP flows end with FIN/RST and age out of the LRU table)",
                    ))
                }
                (Proto::Tcp, None) => None,
                (Proto::Udp, None) => Some(DEFAULT_UDP_IDLE),
                (Proto::Udp, Some(t)) => {
                    let d = crate::util::parse_duration(&t)
                        .map_err(|e| ferr(f("udp_idle_timeout"), e))?;
                    if !(Duration::from_millis(10)..=Duration::from_secs(86_400)).contains(&d) {
                        return Err(ferr(
                            f("udp_idle_timeout"),
                            format!("{d:?}: must be 10ms..=24h"),
                        ));
                    }
                    Some(d)
                }
            };
            let snat = s
                .snat
                .map(|a| parse_snat(a, vip, mode, &backends, &f))
                .transpose()?
                .unwrap_or_default();
            services.push(ServiceConf {
                name,
                vip,
                port,
                proto,
                mode,
                table_size,
                seed: s.seed,
                backends,
                health,
                udp_idle_timeout,
                snat,
            });
        }
        let new_flow_limit = raw
            .new_flow_limit
            .map(|n| {
                u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=100_000_000).contains(n))
                    .ok_or_else(|| {
                        ferr(
                            "new_flow_limit",
                            format!("{n}: must be 1..=100000000 (flows per second and CPU)"),
                        )
                    })
            })
            .transpose()?;
        Ok(Config {
            services,
            new_flow_limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../../tests/data/lb-config-unit.toml");

    #[test]
    fn a_good_config() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.services.len(), 2);
        let s = &c.services[0];
        assert_eq!(s.label(), "198.18.1.100:80/tcp");
        assert_eq!((s.table_size, s.seed, s.mode), (251, 9, Mode::Dsr));
        assert_eq!(s.backends[0].mac, Some([2, 0, 0, 0, 0, 0x21]));
        assert_eq!((s.backends[0].weight, s.backends[1].weight), (1, 3));
        assert_eq!(s.backends[1].mac, None);
        let v6 = &c.services[1];
        assert_eq!(v6.name, "service1");
        assert_eq!(v6.table_size, DEFAULT_TABLE_SIZE);
        assert_eq!(v6.label(), "[2001:2::100]:53/udp");
        assert_eq!(v6.backends[0].weight, 0);
        let shares = maglev::shares(&s.table().unwrap(), 2);
        assert_eq!(shares.iter().sum::<u32>(), 251);
        assert!((62..=63).contains(&shares[0]), "{shares:?}");
    }

    /// [`GOOD`] with its first service in NAT mode (its backend's `mac`, for DSR only, left
    /// out).
    fn nat_good() -> String {
        GOOD.replacen("seed = 9", "seed = 9\nmode = \"nat\"", 1)
            .replacen("mac = \"02:00:00:00:00:21\"\n", "", 1)
    }

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    /// A service of `weights.len()` backends `b0`, `b1`, … with these weights, M = 16,381.
    fn service(weights: &[u32]) -> ServiceConf {
        let mut text = String::from(
            "[[service]]\nvip = \"198.18.1.100\"\nport = 80\nproto = \"tcp\"\ntable_size = 16381\n",
        );
        for (i, w) in weights.iter().enumerate() {
            text += &format!(
                "[[service.backend]]\nname = \"b{i}\"\naddr = \"198.18.2.{}\"\nweight = {w}\n",
                i + 1
            );
        }
        Config::parse(&text).unwrap().services.remove(0)
    }

    /// Backend names by slot.
    fn named(t: &[Option<u32>], s: &ServiceConf) -> Vec<Option<String>> {
        t.iter()
            .map(|i| i.map(|i| s.backends[i as usize].name.clone()))
            .collect()
    }

    /// While the balancer runs, removing one of N backends from the file moves exactly its
    /// own slots (it keeps its place in the layout, out of the table as if down), where a
    /// fresh layout without it moves about twice as many; putting it back restores the table
    /// it left; a new backend takes a place at the end.
    #[test]
    fn a_removed_backend_keeps_its_place_while_the_balancer_runs() {
        let all = service(&[1; 100]);
        let full = named(&all.table().unwrap(), &all);
        let own = full.iter().filter(|n| n.as_deref() == Some("b50")).count();
        let mut less = all.clone();
        less.backends.remove(50);
        let layout = less.layout_after(&all, &all.layout());
        assert_eq!(layout, all.layout(), "b50 keeps its place and weight");
        let kept = named(&less.table_in(&layout, &|_| false).unwrap(), &less);
        for (a, b) in full.iter().zip(&kept) {
            assert!(
                a == b || a.as_deref() == Some("b50"),
                "only b50's slots move"
            );
            assert!(b.is_some());
        }
        let moved = |t: &[Option<String>]| full.iter().zip(t).filter(|(a, b)| a != b).count();
        assert_eq!(moved(&kept), own);
        let fresh = named(&less.table().unwrap(), &less);
        assert!(
            moved(&fresh) as f64 > 1.5 * own as f64,
            "a fresh layout moves more: {} vs {own}",
            moved(&fresh)
        );
        // Back again: its old place, the old table.
        let back = all.layout_after(&less, &layout);
        assert_eq!(back, all.layout());
        assert_eq!(named(&all.table_in(&back, &|_| false).unwrap(), &all), full);
        // A new backend goes at the end, after the departed place.
        let mut plus = less.clone();
        let mut n = plus.backends[0].clone();
        n.name = "new".into();
        plus.backends.push(n);
        let l = plus.layout_after(&less, &layout);
        assert_eq!(l.len(), 101);
        assert_eq!((l[50].name.as_str(), l[100].name.as_str()), ("b50", "new"));
        let t = plus.table_in(&l, &|_| false).unwrap();
        assert!(maglev::shares(&t, 100)
            .iter()
            .all(|c| (163..=165).contains(c)));
        // Another seed or table size lays the table out afresh.
        let mut reseeded = less.clone();
        reseeded.seed += 1;
        assert_eq!(reseeded.layout_after(&all, &layout), reseeded.layout());
    }

    /// A drained backend keeps the weight it filled with, so with unequal weights too it
    /// hands on exactly its own slots while the balancer runs; departed places are bounded.
    #[test]
    fn a_running_layout_keeps_weights_and_forgets_the_earliest_departed() {
        let s = service(&[1, 3, 2, 5]);
        let full = named(&s.table().unwrap(), &s);
        let mut drained = s.clone();
        drained.backends[1].weight = 0;
        let l = drained.layout_after(&s, &s.layout());
        assert_eq!(l, s.layout());
        let t = named(&drained.table_in(&l, &|_| false).unwrap(), &drained);
        for (a, b) in full.iter().zip(&t) {
            assert!(a == b || a.as_deref() == Some("b1"), "only b1's slots move");
        }
        let gone: Vec<Place> = (0..MAX_DEPARTED + 5)
            .map(|i| Place {
                name: format!("gone{i}"),
                weight: 1,
            })
            .chain(s.layout())
            .collect();
        let l = s.layout_after(&s, &gone);
        assert_eq!(l.len(), MAX_DEPARTED + 4);
        assert_eq!(l[0].name, "gone5", "the earliest forgotten first");
    }

    /// Draining one of N equal backends moves exactly its own slots (as it going down does),
    /// and undraining moves them back; with unequal weights the shares still follow them.
    #[test]
    fn a_drained_backend_hands_on_its_own_slots() {
        let full = service(&[1; 10]).table().unwrap();
        let mut w = vec![1; 10];
        w[4] = 0;
        let drained = service(&w).table().unwrap();
        assert_eq!(
            drained,
            service(&[1; 10]).table_without(&|b| b == "b4").unwrap(),
            "drained = down"
        );
        for (a, b) in full.iter().zip(&drained) {
            assert!(a == b || *a == Some(4), "only b4's slots move");
            assert_ne!(*b, Some(4));
        }
        let s = service(&[2, 0, 4, 2]);
        let shares = maglev::shares(&s.table().unwrap(), 4);
        assert_eq!(shares[1], 0);
        // M·w/W with W = 8: 4095.25, 8190.5, 4095.25 (within a slot of either side).
        assert!((4094..=4097).contains(&shares[0]), "{shares:?}");
        assert!((8189..=8192).contains(&shares[2]), "{shares:?}");
        assert!((4094..=4097).contains(&shares[3]), "{shares:?}");
        assert_eq!(shares.iter().sum::<u32>(), 16381);
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("weight = 3", "weight = -1", "service[0].backend[1].weight"),
            (
                "weight = 3",
                "weight = 20000",
                "service[0].backend[1].weight",
            ),
            (
                "table_size = 251",
                "table_size = 250",
                "service[0].table_size",
            ),
            (
                "table_size = 251",
                "table_size = 131071",
                "service[0].table_size",
            ),
            (
                "table_size = 251",
                "table_size = 1",
                "service[0].table_size",
            ),
            ("port = 80", "port = 0", "service[0].port"),
            ("port = 80", "port = 70000", "service[0].port"),
            ("proto = \"tcp\"", "proto = \"sctp\"", "service[0].proto"),
            ("vip = \"198.18.1.100\"", "vip = \"nope\"", "service[0].vip"),
            (
                "vip = \"198.18.1.100\"",
                "vip = \"0.0.0.0\"",
                "service[0].vip",
            ),
            (
                "mac = \"02:00:00:00:00:21\"",
                "mac = \"01:00:00:00:00:21\"",
                "service[0].backend[0].mac",
            ),
            (
                "mac = \"02:00:00:00:00:21\"",
                "mac = \"02:00:00:00:21\"",
                "service[0].backend[0].mac",
            ),
            (
                "addr = \"198.18.0.22\"",
                "addr = \"2001:2::22\"",
                "service[0].backend[1].addr",
            ),
            ("name = \"b\"", "name = \"a\"", "service[0].backend[1].name"),
            (
                "vip = \"198.18.1.100\"",
                "vip = \"255.255.255.255\"",
                "service[0].vip",
            ),
            // A backend that is the VIP, or the same address and port as another.
            (
                "addr = \"198.18.0.22\"",
                "addr = \"198.18.1.100\"",
                "service[0].backend[1].addr",
            ),
            (
                "addr = \"198.18.0.22\"",
                "addr = \"198.18.0.21\"",
                "service[0].backend[1].addr",
            ),
            (
                "addr = \"198.18.0.22\"",
                "addr = \"127.0.0.1\"",
                "service[0].backend[1].addr",
            ),
            // `mac` is for DSR backends only.
            (
                "seed = 9",
                "seed = 9\nmode = \"nat\"",
                "service[0].backend[0].mac",
            ),
            (
                "port = 53",
                "port = 80\nmode = \"dsr\"\nname = \"web\"",
                "service[1].name",
            ),
        ];
        for (from, to, field) in cases {
            assert!(GOOD.contains(from), "{from}");
            let e = err(&GOOD.replacen(from, to, 1));
            assert!(e.contains(&format!("{field}:")), "{from} -> {to}: {e}");
        }
    }

    #[test]
    fn nat_mode_and_unknown_modes() {
        let c = Config::parse(&nat_good()).unwrap();
        assert_eq!(c.services[0].mode, Mode::Nat);
        let e = err(&GOOD.replacen("seed = 9", "seed = 9\nmode = \"tunnel\"", 1));
        assert!(
            e.contains("service[0].mode:") && e.contains("no tunnel mode"),
            "{e}"
        );
        // NAT backends are reached by routing, DSR ones by the MAC neighbour discovery finds
        // when the config gives none: neither needs `mac`, IPv6 ones included.
        let v6 = GOOD.replacen("mac = \"02-00-00-00-00-21\"\n", "", 1);
        assert!(Config::parse(&v6).is_ok(), "{}", err(&v6));
        let v6 = v6.replacen("port = 53", "port = 53\nmode = \"nat\"", 1);
        assert!(Config::parse(&v6).is_ok(), "{}", err(&v6));
    }

    /// A NAT backend may listen on another port than the service's (the balancer translates
    /// it); a DSR one cannot (it answers from the VIP itself), unless it is the same port.
    #[test]
    fn a_nat_backend_may_listen_on_another_port() {
        let nat = nat_good();
        let with = |c: &str, port: &str| {
            c.replacen(
                "addr = \"198.18.0.22\"",
                &format!("addr = \"198.18.0.22\"\nport = {port}"),
                1,
            )
        };
        let c = Config::parse(&with(&nat, "8080")).unwrap();
        let ports: Vec<u16> = c.services[0].backends.iter().map(|b| b.port).collect();
        assert_eq!(ports, [80, 8080], "the service's port unless given");
        assert_eq!(c.services[1].backends[0].port, 53);
        let c = Config::parse(&with(GOOD, "80")).unwrap();
        assert_eq!(
            c.services[0].backends[1].port, 80,
            "DSR: the service's port"
        );
        for (config, port, why) in [
            (GOOD, "8080", "only mode = \"nat\" translates ports"),
            (nat.as_str(), "0", "not a port"),
            (nat.as_str(), "65536", "not a port"),
        ] {
            let e = err(&with(config, port));
            assert!(
                e.contains("service[0].backend[1].port:") && e.contains(why),
                "{port}: {e}"
            );
        }
    }

    #[test]
    fn health_checks_parse_with_defaults_and_errors_name_the_field() {
        let with = |h: &str| GOOD.replacen("seed = 9", &format!("seed = 9\nhealth = {{ {h} }}"), 1);
        let c = Config::parse(&with("kind = \"tcp\"")).unwrap();
        let h = c.services[0].health.clone().unwrap();
        assert_eq!(h.kind, HealthKind::Tcp);
        assert_eq!((h.rise, h.fall, h.port), (2, 3, None));
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_secs(1), Duration::from_secs(1))
        );
        assert!(c.services[1].health.is_none());
        let c = Config::parse(&with(
            "kind = \"http\", path = \"/health\", expect_status = 204, interval = \"200ms\", rise = 1, fall = 2, timeout = \"100ms\", port = 8080",
        ))
        .unwrap();
        let h = c.services[0].health.clone().unwrap();
        assert_eq!(
            h.kind,
            HealthKind::Http {
                path: "/health".into(),
                expect_status: 204
            }
        );
        assert_eq!((h.rise, h.fall, h.port), (1, 2, Some(8080)));
        assert_eq!(h.interval, Duration::from_millis(200));
        assert_eq!(h.timeout, Duration::from_millis(100));
        let cases = [
            ("kind = \"icmp\"", "service[0].health.kind"),
            ("kind = \"tcp\", path = \"/\"", "service[0].health.path"),
            (
                "kind = \"tcp\", expect_status = 200",
                "service[0].health.expect_status",
            ),
            (
                "kind = \"http\", path = \"health\"",
                "service[0].health.path",
            ),
            ("kind = \"http\", path = \"/a b\"", "service[0].health.path"),
            (
                "kind = \"http\", expect_status = 99",
                "service[0].health.expect_status",
            ),
            (
                "kind = \"tcp\", interval = \"10ms\"",
                "service[0].health.interval",
            ),
            (
                "kind = \"tcp\", interval = \"soon\"",
                "service[0].health.interval",
            ),
            (
                "kind = \"tcp\", interval = \"1s\", timeout = \"2s\"",
                "service[0].health.timeout",
            ),
            ("kind = \"tcp\", rise = 0", "service[0].health.rise"),
            ("kind = \"tcp\", fall = 101", "service[0].health.fall"),
            ("kind = \"tcp\", port = 0", "service[0].health.port"),
        ];
        for (h, field) in cases {
            let e = err(&with(h));
            assert!(e.contains(&format!("{field}:")), "{h}: {e}");
        }
        assert!(err(&with("kind = \"tcp\", bogus = 1")).contains("bogus"));
    }

    #[test]
    fn new_flow_limit() {
        assert_eq!(Config::parse(GOOD).unwrap().new_flow_limit, None);
        let c = Config::parse(&format!("new_flow_limit = 5000\n{GOOD}")).unwrap();
        assert_eq!(c.new_flow_limit, Some(5000));
        let e = err(&format!("new_flow_limit = 0\n{GOOD}"));
        assert!(e.contains("new_flow_limit:"), "{e}");
    }

    #[test]
    fn udp_idle_timeout() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.services[0].udp_idle_timeout, None, "TCP: none");
        assert_eq!(c.services[1].udp_idle_timeout, Some(DEFAULT_UDP_IDLE));
        let set = GOOD.replacen("port = 53", "port = 53\nudp_idle_timeout = \"2s\"", 1);
        assert_eq!(
            Config::parse(&set).unwrap().services[1].udp_idle_timeout,
            Some(Duration::from_secs(2))
        );
        let e = err(&GOOD.replacen("seed = 9", "seed = 9\nudp_idle_timeout = \"2s\"", 1));
        assert!(e.contains("service[0].udp_idle_timeout:"), "{e}");
        let e = err(&GOOD.replacen("port = 53", "port = 53\nudp_idle_timeout = \"1ms\"", 1));
        assert!(e.contains("service[1].udp_idle_timeout:"), "{e}");
    }

    #[test]
    fn snat_is_for_nat_services_in_the_vips_family() {
        let nat = nat_good();
        let with = |a: &str| nat.replacen("seed = 9", &format!("seed = 9\nsnat = \"{a}\""), 1);
        let c = Config::parse(&with("198.18.2.250")).unwrap();
        assert_eq!(
            c.services[0].snat,
            ["198.18.2.250".parse::<IpAddr>().unwrap()]
        );
        assert!(Config::parse(&nat).unwrap().services[0].snat.is_empty());
        for (bad, why) in [
            ("2001:2::1", "family"),
            ("not-an-address", "not an IP address"),
            ("0.0.0.0", "own"),
        ] {
            let e = err(&with(bad));
            assert!(
                e.contains("service[0].snat:") && e.contains(why),
                "{bad}: {e}"
            );
        }
        let dsr = GOOD.replacen("seed = 9", "seed = 9\nsnat = \"198.18.2.250\"", 1);
        let e = err(&dsr);
        assert!(
            e.contains("service[0].snat:") && e.contains("only for mode"),
            "{e}"
        );
    }

    #[test]
    fn an_snat_pool_is_a_list_of_distinct_addresses() {
        let nat = nat_good();
        let with = |l: &str| nat.replacen("seed = 9", &format!("seed = 9\nsnat = [{l}]"), 1);
        let c = Config::parse(&with("\"198.18.2.250\", \"198.18.2.251\"")).unwrap();
        let want: Vec<IpAddr> = vec![
            "198.18.2.250".parse().unwrap(),
            "198.18.2.251".parse().unwrap(),
        ];
        assert_eq!(c.services[0].snat, want);
        for (bad, field, why) in [
            (
                "\"198.18.2.250\", \"198.18.2.250\"",
                "service[0].snat[1]:",
                "already",
            ),
            (
                "\"198.18.2.250\", \"2001:2::9\"",
                "service[0].snat[1]:",
                "family",
            ),
            (
                "\"198.18.2.250\", \"x\"",
                "service[0].snat[1]:",
                "not an IP address",
            ),
            ("", "service[0].snat:", "1 to 8"),
        ] {
            let e = err(&with(bad));
            assert!(e.contains(field) && e.contains(why), "{bad}: {e}");
        }
        let nine: Vec<String> = (1..=9).map(|i| format!("\"198.18.2.{i}\"")).collect();
        let e = err(&with(&nine.join(", ")));
        assert!(
            e.contains("service[0].snat:") && e.contains("9 addresses"),
            "{e}"
        );
    }

    #[test]
    fn structure_errors() {
        assert!(err("").contains("service:"));
        assert!(
            err("[[service]]\nvip = \"198.18.1.1\"\nport = 1\nproto = \"tcp\"\n")
                .contains("service[0].backend:")
        );
        assert!(err(&GOOD.replacen("seed = 9", "seed = 9\nbogus = 1", 1)).contains("bogus"));
        let dup = GOOD.replacen(
            "vip = \"2001:2::100\"\nport = 53\nproto = \"udp\"",
            "vip = \"198.18.1.100\"\nport = 80\nproto = \"tcp\"",
            1,
        );
        assert!(err(&dup).contains("service[1].vip:"), "{}", err(&dup));
    }
}
