//! `wirelab lb`: an L4 load balancer (tc ingress) with weighted Maglev hashing, connection
//! tracking, direct server return or NAT, health checks, and `lb reload/stats/which` over a
//! control socket. See docs/lb.md.
//!
//! The configuration is validated in full, backend MACs are resolved, every map is filled
//! and only then is the program attached (TCX ingress, a bpf_link: a killed process leaves
//! nothing attached). The run is driven by the runtime ([`sampled::drive`]): per-interval
//! counters as a table or `--json` lines, `--record` series, and a final table.
pub mod config;
mod control;
pub mod health;
pub mod maglev;
mod metrics;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::ebpf::LoadRetrying as _;
use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{TcAttachType, TestRun, TestRunOptions, Xdp},
    util::nr_cpus as aya_nr_cpus,
    Ebpf,
};
use serde::{Deserialize, Serialize};
use wirelab_common::{
    lb::{
        backend_flag, event, flow_hash, mode, vip_bloom_bit, which, xdp_out, Backend, FlowKey,
        FlowValue, LbConf, LbCounter, ServiceMeta, VipKey, FAMILY_IPV4, FAMILY_IPV6, MAX_BACKENDS,
        MAX_SERVICES, MAX_TABLE_SIZE, NO_BACKEND, VIP_ADDR_MARK, VIP_BLOOM_WORDS,
    },
    maps,
};

pub use config::Config;
use config::{format_mac, ServiceConf};
pub use control::{
    reload, socket_name, stats, tap, which, ReloadReport, ServiceChange, StatsReply,
};
pub use health::Health;

fn nr_cpus() -> Result<usize> {
    aya_nr_cpus().map_err(|(_, e)| anyhow::anyhow!("counting CPUs: {e}"))
}

/// A [`VipKey`]'s bytes (an ordering key for sets).
fn vip_bytes(k: &VipKey) -> Vec<u8> {
    let mut v = k.addr.to_vec();
    v.extend_from_slice(&k.port.to_be_bytes());
    v.push(k.proto);
    v.push(k.family);
    v
}

/// `lb which`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Which {
    pub service: String,
    /// `VIP:port/proto`.
    pub label: String,
    /// The flow's Maglev slot (hash % M).
    pub slot: u32,
    pub table_size: u32,
    /// The backend a new flow (a SYN) would get now; `None`: no backend is up with weight.
    pub new_flow: Option<WhichBackend>,
    /// The tracked flow of this 5-tuple, if the conntrack table holds one.
    pub tracked: Option<TrackedFlow>,
    /// Who answered: the loaded program, run through BPF_PROG_TEST_RUN.
    pub asked: String,
    /// The userspace model of the table (the same flow hash over the installed table) gives
    /// the new flow the same backend as the program did.
    pub model_agrees: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WhichBackend {
    pub name: String,
    pub addr: IpAddr,
    pub health: Health,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrackedFlow {
    pub backend: String,
    /// Its next packet stays on that backend (it is up); otherwise it hashes afresh.
    pub stays: bool,
    /// TCP flags seen on the flow (FIN 0x01, SYN 0x02, RST 0x04, ...).
    pub tcp_flags: u32,
    /// Seconds since the entry was made.
    pub age_s: f64,
}

use crate::runtime::{
    bpf::{self as rbpf, Attached, PerCpuSum},
    prelude::*,
};

/// IP protocol number of TCP, and the TCP flags `FlowValue::tcp_flags` collects.
const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u32 = 0x01;
const TCP_RST: u32 = 0x04;

/// The tc program's name in the object.
pub const PROG: &str = "lb";
/// The XDP entry point in the object (`XDP_TX` for DSR, `XDP_PASS` after translating for NAT).
pub const PROG_XDP: &str = "lb_xdp";
/// ICMP errors' programs (tc, XDP), which [`PROG`] and [`PROG_XDP`] reach by a tail call:
/// errors about NAT flows translated, errors to a VIP about DSR flows sent to the backend.
pub const PROG_ICMP: &str = "lb_icmp";
pub const PROG_ICMP_XDP: &str = "lb_icmp_xdp";
/// tc egress, with NAT services: ICMP errors this host's own kernel sends about NAT flows
/// (a smaller MTU towards the backends) get their quote translated back to the VIP.
pub const PROG_EGRESS: &str = "lb_egress";
/// The tc programs a run attaches (what `wirelab cleanup` looks for after a kill).
pub const TC_PROGS: [&str; 2] = [PROG, PROG_EGRESS];

/// The interfaces (`--iface`) of the balancers running in this network namespace.
pub fn running() -> Vec<String> {
    crate::runtime::control::listening("wirelab-lb/")
}
/// The decision without effects, for `lb which` (run through BPF_PROG_TEST_RUN, never
/// attached).
pub const PROG_WHICH: &str = "lb_which";

/// The path asked for on the command line (`--path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathChoice {
    /// XDP where its frames can arrive whole, else tc (the rules: `choose_path`).
    #[default]
    Auto,
    /// Native XDP (`XDP_TX`), whatever the peer.
    Xdp,
    /// tc ingress with `bpf_redirect`.
    Tc,
}

named_enum! {
    /// How forwarded frames leave: back out of the interface they came in on.
    pub enum Path {
        /// Native XDP: DSR frames bounced with `XDP_TX`, NAT packets translated in XDP and
        /// passed to the kernel's routing. Into a veth, only a peer running NAPI (an XDP program
        /// or GRO on) receives `XDP_TX` frames.
        Xdp = "xdp",
        /// tc ingress, `bpf_redirect` to the interface's egress: the normal transmit path, so
        /// any peer receives the frames.
        Tc = "tc",
    }
}

/// Pick the path for `iface` (in the calling thread's namespace; `nat_ifaces`: the other
/// interfaces the program watches, where only NAT replies arrive): the path and why.
///
/// - `tc` and `xdp` are taken as asked (`xdp` where `auto` would not choose it is allowed,
///   with a warning saying what will go wrong).
/// - `auto`: XDP where every watched interface is not a veth (a NIC delivers finished
///   checksums and transmits what XDP sends), or a veth whose peer (checked in its namespace,
///   found among the named ones) transmits finished checksums (TX checksum offload off: an
///   XDP program cannot finish a partial checksum, and XDP drops the skb's note that it is
///   partial, so the receiver would drop the frame) and, for `iface` when `dsr` services
///   send frames back out of it, runs NAPI (GRO on, or a native XDP program: else those
///   frames wait in its ring). tc
///   otherwise, or when a peer cannot be checked.
pub fn choose_path(
    choice: PathChoice,
    iface: &str,
    nat_ifaces: &[String],
    dsr: bool,
) -> Result<(Path, String)> {
    // Why XDP would not work on `i` (None: it would).
    let obstacle = |i: &str, transmits: bool| -> Option<String> {
        match crate::nl::veth_peer_napi(i) {
            Ok(None) => None,
            Ok(Some(p)) if transmits && !p.napi() => Some(format!(
                "{i} is a veth whose peer {} runs no NAPI (GRO off, no XDP program), so frames sent back out from XDP would wait in its ring (`ethtool -K {} gro on` on the peer)",
                p.describe(),
                p.name
            )),
            Ok(Some(p)) if p.tx_csum => Some(format!(
                "{i} is a veth whose peer {} has TX checksum offload on (it may hand over unfinished checksums, which XDP cannot finish: receivers would drop those frames; `ethtool -K {} tx off` on the peer)",
                p.describe(),
                p.name
            )),
            Ok(Some(_)) => None,
            Err(e) => Some(format!(
                "{i} is a veth whose peer cannot be checked ({e:#})"
            )),
        }
    };
    let obstacles = || -> Vec<String> {
        std::iter::once(obstacle(iface, dsr))
            .chain(nat_ifaces.iter().map(|i| obstacle(i, false)))
            .flatten()
            .collect()
    };
    Ok(match choice {
        PathChoice::Tc => (Path::Tc, "asked for (--path tc)".to_string()),
        PathChoice::Xdp => {
            for o in obstacles() {
                tracing::warn!("--path xdp although {o}");
            }
            (Path::Xdp, "asked for (--path xdp)".to_string())
        }
        PathChoice::Auto => {
            let o = obstacles();
            if o.is_empty() {
                (
                    Path::Xdp,
                    format!(
                        "auto: {iface} can send frames back out from XDP and receives finished checksums"
                    ),
                )
            } else {
                (Path::Tc, format!("auto: {}", o.join("; ")))
            }
        }
    })
}

impl PerCpuSum for LbCounter {
    fn add(&mut self, other: &Self) {
        LbCounter::add(self, other);
    }
}

fn addr16(a: IpAddr) -> ([u8; 16], u8) {
    match a {
        IpAddr::V4(v) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.octets());
            (b, FAMILY_IPV4)
        }
        IpAddr::V6(v) => (v.octets(), FAMILY_IPV6),
    }
}

/// A service's key in `LB_VIPS`: its VIP, port and protocol.
fn vip_key(s: &InstalledService) -> VipKey {
    let (addr, family) = addr16(s.conf.vip);
    VipKey {
        addr,
        port: s.conf.port,
        proto: s.conf.proto.number(),
        family,
    }
}

/// A backend as installed: its id in `LB_BACKENDS` (kept across reloads and health
/// changes, so tracked flows keep their backend).
#[derive(Debug, Clone)]
pub struct InstalledBackend {
    pub id: u32,
    pub name: String,
    pub addr: IpAddr,
    /// The port it listens on (NAT may translate the service port to it).
    pub port: u16,
    pub mac: [u8; 6],
    pub weight: u32,
    /// Maglev slots it holds.
    pub slots: u32,
    pub health: Health,
}

impl InstalledBackend {
    /// May receive packets (the `UP` flag): not failed by health checks.
    pub fn up(&self) -> bool {
        self.health != Health::Down
    }
}

/// A service as installed.
#[derive(Debug, Clone)]
pub struct InstalledService {
    /// Index in `LB_SERVICES` / `LB_SVC_STATS` (kept across reloads).
    pub id: u32,
    pub conf: ServiceConf,
    pub backends: Vec<InstalledBackend>,
    /// Slot → backend id ([`NO_BACKEND`] when no backend has weight).
    pub table: Vec<u32>,
    /// The places the table was filled along, departed backends among them
    /// ([`ServiceConf::layout_after`]).
    pub layout: Vec<config::Place>,
}

impl InstalledService {
    /// The backend a new flow with `key` goes to, as the program computes it (the flow hash
    /// of `wirelab_common::lb`, the same table).
    pub fn predict(&self, key: &FlowKey) -> Option<&InstalledBackend> {
        let slot = flow_hash(key, self.conf.seed as u32) % self.conf.table_size;
        let id = self.table[slot as usize];
        self.backends.iter().find(|b| b.id == id)
    }

    fn key(&self) -> (IpAddr, u16, u8) {
        (self.conf.vip, self.conf.port, self.conf.proto.number())
    }
}

/// The balancer's maps, filled from a configuration.
#[derive(Debug, Clone)]
pub struct Balancer {
    pub services: Vec<InstalledService>,
    /// Generation in force (`LB_GEN[0]`).
    pub gen: u32,
    /// MAC of the interface (source MAC of forwarded frames).
    pub iface_mac: [u8; 6],
    /// Ids of removed backends whose entries still carry their tracked flows.
    pub retired: BTreeSet<u32>,
    /// `LbConf::new_flow_limit` (0: none).
    pub new_flow_limit: u32,
    /// `LbConf::xdp_out`: how the XDP path sends DSR frames back out.
    pub xdp_out: u8,
    /// `LbConf::reply_check_len`: NAT replies longer than this are checked against the route
    /// to their client (0: never; [`smallest_mtu`]).
    pub reply_check_len: u32,
}

fn map_mut<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    bpf.map_mut(name)
        .with_context(|| format!("map {name} missing from the object"))
}

/// Backends failed by health checks: (service name, backend name).
pub type DownSet = BTreeSet<(String, String)>;

/// Lowest id in `0..max` not in `used`.
fn free_id(used: &BTreeSet<u32>, max: u32) -> Option<u32> {
    (0..max).find(|i| !used.contains(i))
}

impl Balancer {
    /// Fill every map from `config` (every backend MAC known) for the interface whose MAC
    /// is `iface_mac`: the tables go into the idle generation, then `LB_GEN` flips in one
    /// write.
    pub fn install(bpf: &mut Ebpf, config: &Config, iface_mac: [u8; 6]) -> Result<Self> {
        Self::plan(config, iface_mac, None, &DownSet::new())?.write(bpf, None)
    }

    /// What `config` would install after `prev` (nothing is written): services and
    /// backends that stay keep their ids, new ones take ids `prev` does not use (so a
    /// tracked flow of a removed backend never lands on a new one), backends in `down`
    /// leave the tables.
    pub fn plan(
        config: &Config,
        iface_mac: [u8; 6],
        prev: Option<&Balancer>,
        down: &DownSet,
    ) -> Result<Self> {
        let prev_svc: BTreeMap<(IpAddr, u16, u8), &InstalledService> = prev
            .map(|p| p.services.iter().map(|s| (s.key(), s)).collect())
            .unwrap_or_default();
        // Service ids: kept by VIP:port/proto; new ones take the lowest free.
        let mut svc_ids: Vec<Option<u32>> = config
            .services
            .iter()
            .map(|s| {
                prev_svc
                    .get(&(s.vip, s.port, s.proto.number()))
                    .map(|p| p.id)
            })
            .collect();
        for (i, s) in config.services.iter().enumerate() {
            if let Some(p) = prev_svc.get(&(s.vip, s.port, s.proto.number())) {
                // Flows keep their pool address's index: the pool may only grow at its end.
                let kept = p.conf.snat.len() <= s.snat.len()
                    && s.snat.starts_with(&p.conf.snat)
                    && (p.conf.snat.is_empty() == s.snat.is_empty());
                if !kept {
                    let show = |a: &[IpAddr]| {
                        if a.is_empty() {
                            "none".to_string()
                        } else {
                            a.iter()
                                .map(|a| a.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        }
                    };
                    bail!(
                        "service[{i}].snat: {} -> {}: SNAT addresses cannot change while the balancer runs, only be added at the pool's end (the replies of its flows come back to the old ones); restart the balancer",
                        show(&p.conf.snat),
                        show(&s.snat)
                    );
                }
            }
        }
        let mut used: BTreeSet<u32> = svc_ids.iter().flatten().copied().collect();
        for id in svc_ids.iter_mut().filter(|i| i.is_none()) {
            let n = free_id(&used, MAX_SERVICES).context("no free service id")?;
            used.insert(n);
            *id = Some(n);
        }
        // Backend ids: kept by (service, name); new ones avoid every id `prev` used.
        let mut prev_used: BTreeSet<u32> = prev
            .map(|p| {
                p.services
                    .iter()
                    .flat_map(|s| s.backends.iter().map(|b| b.id))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(p) = prev {
            prev_used.extend(p.retired.iter().copied());
        }
        let mut be_ids: Vec<Vec<Option<u32>>> = config
            .services
            .iter()
            .map(|s| {
                let p = prev_svc.get(&(s.vip, s.port, s.proto.number()));
                s.backends
                    .iter()
                    .map(|b| {
                        p.and_then(|p| p.backends.iter().find(|x| x.name == b.name))
                            .map(|x| x.id)
                    })
                    .collect()
            })
            .collect();
        let mut used: BTreeSet<u32> = be_ids.iter().flatten().flatten().copied().collect();
        for id in be_ids.iter_mut().flatten().filter(|i| i.is_none()) {
            let avoid: BTreeSet<u32> = used.union(&prev_used).copied().collect();
            let n = free_id(&avoid, MAX_BACKENDS)
                .or_else(|| free_id(&used, MAX_BACKENDS))
                .context("no free backend id")?;
            used.insert(n);
            *id = Some(n);
        }

        let mut services = Vec::new();
        for (i, s) in config.services.iter().enumerate() {
            let is_down =
                |b: &str| s.health.is_some() && down.contains(&(s.name.clone(), b.to_string()));
            let layout = match prev_svc.get(&(s.vip, s.port, s.proto.number())) {
                Some(p) => s.layout_after(&p.conf, &p.layout),
                None => s.layout(),
            };
            let slots = s.table_in(&layout, &is_down)?;
            let mut backends = Vec::new();
            for (j, b) in s.backends.iter().enumerate() {
                let mac = match (b.mac, s.mode) {
                    (Some(m), _) => m,
                    (None, config::Mode::Nat) => [0; 6],
                    (None, config::Mode::Dsr) => {
                        bail!("service[{i}].backend[{j}].mac: unknown (not given, not resolved)")
                    }
                };
                backends.push(InstalledBackend {
                    id: be_ids[i][j].context("backend id")?,
                    name: b.name.clone(),
                    addr: b.addr,
                    port: b.port,
                    mac,
                    weight: b.weight,
                    slots: 0,
                    health: match (&s.health, is_down(&b.name)) {
                        (None, _) => Health::Unchecked,
                        (Some(_), true) => Health::Down,
                        (Some(_), false) => Health::Up,
                    },
                });
            }
            let counts = maglev::shares(&slots, backends.len());
            for (b, c) in backends.iter_mut().zip(counts) {
                b.slots = c;
            }
            let table = slots
                .iter()
                .map(|s| s.map_or(NO_BACKEND, |i| backends[i as usize].id))
                .collect();
            services.push(InstalledService {
                id: svc_ids[i].context("service id")?,
                conf: s.clone(),
                backends,
                table,
                layout,
            });
        }
        let in_use: BTreeSet<u32> = services
            .iter()
            .flat_map(|s: &InstalledService| s.backends.iter().map(|b| b.id))
            .collect();
        let retired = prev_used.difference(&in_use).copied().collect();
        Ok(Self {
            services,
            gen: prev.map_or(1, |p| p.gen ^ 1),
            iface_mac,
            retired,
            new_flow_limit: config.new_flow_limit.unwrap_or(0),
            xdp_out: prev.map_or(xdp_out::TX, |p| p.xdp_out),
            reply_check_len: prev.map_or(0, |p| p.reply_check_len),
        })
    }

    /// Write this plan into the idle generation and flip `LB_GEN` (after `prev`, the one in
    /// force, if any). Order: backends that come up or are new first, then the tables,
    /// service descriptions and VIP filter words (`LB_VIP_BLOOM`) of the idle generation,
    /// VIPs of removed services deleted, the flip (one word), then the new VIPs and the `UP`
    /// flags cleared of backends that went down or were removed (their tracked flows hash
    /// afresh).
    pub fn write(mut self, bpf: &mut Ebpf, prev: Option<&Balancer>) -> Result<Self> {
        let cur = Array::<&mut MapData, u32>::try_from(map_mut(bpf, maps::LB_GEN)?)?
            .get(&0, 0)
            .context("reading LB_GEN")?
            & 1;
        let gen = cur ^ 1;
        self.gen = gen;
        let prev_backends: BTreeMap<u32, &InstalledBackend> = prev
            .map(|p| {
                p.services
                    .iter()
                    .flat_map(|s| s.backends.iter().map(|b| (b.id, b)))
                    .collect()
            })
            .unwrap_or_default();
        let prev_services: BTreeSet<u32> = prev
            .map(|p| p.services.iter().map(|s| s.id).collect())
            .unwrap_or_default();
        self.write_conf(bpf)?;
        let later = self.write_backends(bpf, &prev_backends)?;
        self.clear_new_counters(bpf, &prev_backends, &prev_services)?;
        self.write_generation(bpf, gen)?;
        self.switch(bpf, gen)?;
        let mut bmap: Array<&mut MapData, Backend> =
            Array::try_from(map_mut(bpf, maps::LB_BACKENDS)?)?;
        for (id, b) in later {
            bmap.set(id, b, 0).context("writing LB_BACKENDS")?;
        }
        Ok(self)
    }

    fn write_conf(&self, bpf: &mut Ebpf) -> Result<()> {
        let mut conf: Array<&mut MapData, LbConf> = Array::try_from(map_mut(bpf, maps::LB_CONF)?)?;
        conf.set(
            0,
            LbConf {
                iface_mac: self.iface_mac,
                services: self.services.len() as u32,
                new_flow_limit: self.new_flow_limit,
                xdp_out: self.xdp_out,
                reply_check_len: self.reply_check_len,
                ..Default::default()
            },
            0,
        )
        .context("writing LB_CONF")?;
        Ok(())
    }

    /// Every backend of the plan, `UP` as it will be, except that one going down keeps its
    /// flag until the flip: returns those, to be cleared after it.
    fn write_backends(
        &self,
        bpf: &mut Ebpf,
        prev_backends: &BTreeMap<u32, &InstalledBackend>,
    ) -> Result<Vec<(u32, Backend)>> {
        let backend = |b: &InstalledBackend, up: bool| {
            let (addr, family) = addr16(b.addr);
            Backend {
                mac: b.mac,
                port: b.port,
                addr,
                family,
                flags: if up { backend_flag::UP } else { 0 },
                ..Default::default()
            }
        };
        let mut later: Vec<(u32, Backend)> = Vec::new();
        {
            let mut bmap: Array<&mut MapData, Backend> =
                Array::try_from(map_mut(bpf, maps::LB_BACKENDS)?)?;
            for s in &self.services {
                for b in &s.backends {
                    // Until the flip, the table in force may still send flows to a backend
                    // going down: it keeps its flag until then.
                    let was_up = prev_backends.get(&b.id).is_some_and(|p| p.up());
                    bmap.set(b.id, backend(b, b.up() || was_up), 0)
                        .with_context(|| format!("writing backend {}", b.name))?;
                    if !b.up() && was_up {
                        later.push((b.id, backend(b, false)));
                    }
                }
            }
        }
        Ok(later)
    }

    /// Counters of ids new to this plan start at zero.
    fn clear_new_counters(
        &self,
        bpf: &mut Ebpf,
        prev_backends: &BTreeMap<u32, &InstalledBackend>,
        prev_services: &BTreeSet<u32>,
    ) -> Result<()> {
        let new_ids: BTreeSet<u32> = self
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.id))
            .collect();
        // Removed backends keep their entry (and `UP` flag): their tracked flows stay on them,
        // as with a drain, until they end or age out; [`Balancer::plan`] gives their ids to
        // new backends only when no other id is free.
        // Counters of ids new to this plan start at zero.
        {
            let mut be: PerCpuArray<&mut MapData, LbCounter> =
                PerCpuArray::try_from(map_mut(bpf, maps::LB_BACKEND_STATS)?)?;
            let n = nr_cpus()?;
            let zero = || PerCpuValues::try_from(vec![LbCounter::default(); n]);
            for id in new_ids.iter().filter(|id| !prev_backends.contains_key(id)) {
                be.set(*id, zero()?, 0)
                    .context("clearing LB_BACKEND_STATS")?;
            }
            let mut sv: PerCpuArray<&mut MapData, LbCounter> =
                PerCpuArray::try_from(map_mut(bpf, maps::LB_SVC_STATS)?)?;
            for s in self
                .services
                .iter()
                .filter(|s| !prev_services.contains(&s.id))
            {
                sv.set(s.id, zero()?, 0).context("clearing LB_SVC_STATS")?;
            }
        }
        Ok(())
    }

    /// The idle generation `gen`: Maglev tables, service descriptions, VIP filter words.
    fn write_generation(&self, bpf: &mut Ebpf, gen: u32) -> Result<()> {
        let mut table: Array<&mut MapData, u32> = Array::try_from(map_mut(bpf, maps::LB_TABLE)?)?;
        for s in &self.services {
            let base = (gen * MAX_SERVICES + s.id) * MAX_TABLE_SIZE;
            for (slot, id) in s.table.iter().enumerate() {
                table
                    .set(base + slot as u32, id, 0)
                    .context("writing LB_TABLE")?;
            }
        }
        let mut meta: Array<&mut MapData, ServiceMeta> =
            Array::try_from(map_mut(bpf, maps::LB_SERVICES)?)?;
        for id in 0..MAX_SERVICES {
            let m = match self.services.iter().find(|s| s.id == id) {
                Some(s) => ServiceMeta {
                    table_size: s.conf.table_size,
                    mode: match s.conf.mode {
                        config::Mode::Dsr => mode::DSR,
                        config::Mode::Nat => mode::NAT,
                    },
                    hash_seed: s.conf.seed as u32,
                    active: s.backends.iter().filter(|b| b.weight > 0 && b.up()).count() as u32,
                    udp_idle_ms: s
                        .conf
                        .udp_idle_timeout
                        .map_or(0, |d| d.as_millis().min(u32::MAX as u128) as u32),
                    snat: s.conf.snat.len() as u32,
                    vip: vip_key(s),
                    snat_addrs: std::array::from_fn(|i| {
                        s.conf.snat.get(i).map_or([0; 16], |&a| addr16(a).0)
                    }),
                },
                None => ServiceMeta::default(),
            };
            meta.set(gen * MAX_SERVICES + id, m, 0)
                .context("writing LB_SERVICES")?;
        }
        let mut words = [0u64; VIP_BLOOM_WORDS as usize];
        for s in &self.services {
            let bit = vip_bloom_bit(&vip_key(s));
            words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        let mut bloom: Array<&mut MapData, u64> =
            Array::try_from(map_mut(bpf, maps::LB_VIP_BLOOM)?)?;
        for (i, w) in words.into_iter().enumerate() {
            bloom
                .set(gen * VIP_BLOOM_WORDS + i as u32, w, 0)
                .context("writing LB_VIP_BLOOM")?;
        }
        Ok(())
    }

    /// VIPs of removed services out, the flip to `gen` (one word), then the new VIPs in.
    fn switch(&self, bpf: &mut Ebpf, gen: u32) -> Result<()> {
        // VIP keys: removed services' go before the flip, new ones after it.
        let mark = |a: IpAddr| {
            let (addr, family) = addr16(a);
            VipKey {
                addr,
                port: 0,
                proto: 0,
                family,
            }
        };
        let new_keys: BTreeMap<Vec<u8>, (VipKey, u32)> = self
            .services
            .iter()
            .map(|s| {
                let k = vip_key(s);
                (vip_bytes(&k), (k, s.id))
            })
            .collect();
        let new_marks: BTreeSet<Vec<u8>> = self
            .services
            .iter()
            .map(|s| vip_bytes(&mark(s.conf.vip)))
            .collect();
        let mut vips: BpfHashMap<&mut MapData, VipKey, u32> =
            BpfHashMap::try_from(map_mut(bpf, maps::LB_VIPS)?)?;
        let old: Vec<(VipKey, u32)> = vips.iter().filter_map(|r| r.ok()).collect();
        for (k, v) in &old {
            let b = vip_bytes(k);
            let stays = if *v == VIP_ADDR_MARK {
                new_marks.contains(&b)
            } else {
                new_keys.get(&b).is_some_and(|(_, id)| id == v)
            };
            if !stays && *v != VIP_ADDR_MARK {
                vips.remove(k).context("removing from LB_VIPS")?;
            }
        }
        // The switch: one word.
        let mut gen_map: Array<&mut MapData, u32> = Array::try_from(map_mut(bpf, maps::LB_GEN)?)?;
        gen_map.set(0, gen, 0).context("writing LB_GEN")?;
        let mut vips: BpfHashMap<&mut MapData, VipKey, u32> =
            BpfHashMap::try_from(map_mut(bpf, maps::LB_VIPS)?)?;
        for (k, id) in new_keys.values() {
            vips.insert(k, id, 0).context("writing LB_VIPS")?;
        }
        for s in &self.services {
            vips.insert(mark(s.conf.vip), VIP_ADDR_MARK, 0)
                .context("writing LB_VIPS")?;
        }
        for (k, v) in &old {
            if *v == VIP_ADDR_MARK && !new_marks.contains(&vip_bytes(k)) {
                vips.remove(k).context("removing from LB_VIPS")?;
            }
        }
        Ok(())
    }

    /// Tracked flows now, and how many of them a switch to `next` would move (their backend
    /// down; flows of removed backends stay on them).
    pub fn tracked_flows(&self, bpf: &Ebpf, next: &Balancer) -> Result<(u64, u64)> {
        let flows: BpfHashMap<&MapData, FlowKey, FlowValue> = BpfHashMap::try_from(
            bpf.map(maps::LB_FLOWS)
                .context("map LB_FLOWS missing from the object")?,
        )?;
        let down: BTreeSet<u32> = next
            .services
            .iter()
            .flat_map(|s| s.backends.iter().filter(|b| !b.up()).map(|b| b.id))
            .collect();
        let (mut n, mut moved) = (0, 0);
        for r in flows.iter() {
            let Ok((_, v)) = r else { continue };
            n += 1;
            if down.contains(&v.backend) {
                moved += 1;
            }
        }
        Ok((n, moved))
    }

    /// Open tracked flows per backend id and per service id: TCP flows that have seen no FIN
    /// or RST, UDP flows seen within their service's idle timeout. One walk over `LB_FLOWS`
    /// (at most `MAX_FLOWS` entries, two syscalls each). Flows that stay on a backend a
    /// reload removed count for their service only.
    pub fn active_flows(&self, bpf: &Ebpf) -> Result<ActiveFlows> {
        let flows: BpfHashMap<&MapData, FlowKey, FlowValue> = BpfHashMap::try_from(
            bpf.map(maps::LB_FLOWS)
                .context("map LB_FLOWS missing from the object")?,
        )?;
        let idle: BTreeMap<u32, u64> = self
            .services
            .iter()
            .filter_map(|s| Some((s.id, s.conf.udp_idle_timeout?.as_nanos() as u64)))
            .collect();
        let now = crate::util::mono_ns();
        let mut open = ActiveFlows::default();
        for r in flows.iter() {
            let Ok((k, v)) = r else { continue };
            let alive = if k.proto == IPPROTO_TCP {
                v.tcp_flags & (TCP_FIN | TCP_RST) == 0
            } else {
                idle.get(&v.service)
                    .is_none_or(|t| now.saturating_sub(v.seen_ns.max(v.created_ns)) < *t)
            };
            if alive {
                *open.backends.entry(v.backend).or_default() += 1;
                *open.services.entry(v.service).or_default() += 1;
            }
        }
        Ok(open)
    }

    /// The backend a new flow `from` → `to` would get, and the tracked flow if there is one.
    pub fn which(
        &self,
        bpf: &Ebpf,
        from: SocketAddr,
        to: SocketAddr,
        proto: config::Proto,
    ) -> Result<Which> {
        if from.is_ipv4() != to.is_ipv4() {
            bail!("--from {from} and --to {to} are of different address families");
        }
        let Some(s) = self
            .services
            .iter()
            .find(|s| s.conf.vip == to.ip() && s.conf.port == to.port() && s.conf.proto == proto)
        else {
            bail!(
                "{to}/{proto} is not a service here (services: {})",
                self.services
                    .iter()
                    .map(|s| s.conf.label())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let (saddr, family) = addr16(from.ip());
        let (daddr, _) = addr16(to.ip());
        let key = FlowKey {
            saddr,
            daddr,
            sport: from.port(),
            dport: to.port(),
            proto: proto.number(),
            family,
            _pad: [0; 2],
        };
        let slot = flow_hash(&key, s.conf.seed as u32) % s.conf.table_size;
        let find = |id: u32| {
            self.services
                .iter()
                .flat_map(|s| &s.backends)
                .find(|b| b.id == id)
        };
        // The program answers twice: for the flow's next packet (its tracked flow, if any),
        // and for a SYN (a new flow hashes afresh).
        let next = ask_program(bpf, from, to, proto, false, self.iface_mac)?;
        let fresh = ask_program(bpf, from, to, proto, true, self.iface_mac)?;
        let picked = |ans: u32, how: u32| {
            (ans & which::HOW_MASK == how).then_some(ans & which::BACKEND_MASK)
        };
        let flows: BpfHashMap<&MapData, FlowKey, FlowValue> = BpfHashMap::try_from(
            bpf.map(maps::LB_FLOWS)
                .context("map LB_FLOWS missing from the object")?,
        )?;
        let tracked = match flows.get(&key, 0) {
            Ok(v) => {
                let now = crate::util::mono_ns();
                Some(TrackedFlow {
                    backend: find(v.backend).map_or_else(
                        || format!("#{} (removed from the config)", v.backend),
                        |b| b.name.clone(),
                    ),
                    stays: picked(next, which::TRACKED) == Some(v.backend),
                    tcp_flags: v.tcp_flags,
                    age_s: now.saturating_sub(v.created_ns) as f64 / 1e9,
                })
            }
            Err(aya::maps::MapError::KeyNotFound) => None,
            Err(e) => return Err(e).context("reading LB_FLOWS"),
        };
        let fresh_id = picked(fresh, which::HASHED);
        let chosen = match fresh_id {
            Some(id) => {
                let b = find(id).with_context(|| {
                    format!("the program picked backend #{id}, which the config does not hold")
                })?;
                Some(WhichBackend {
                    name: b.name.clone(),
                    addr: b.addr,
                    health: b.health,
                })
            }
            None if fresh == which::DROPPED => None,
            None => bail!(
                "the program did not balance {from} -> {to}/{proto} (answer {fresh:#x}): the service is not in its maps"
            ),
        };
        Ok(Which {
            service: s.conf.name.clone(),
            label: s.conf.label(),
            slot,
            table_size: s.conf.table_size,
            new_flow: chosen,
            tracked,
            asked: format!("{PROG_WHICH} (BPF_PROG_TEST_RUN on the loaded object)"),
            model_agrees: s.predict(&key).map(|b| b.id) == fresh_id,
        })
    }

    /// The counters now (per-CPU values summed).
    pub fn read(&self, bpf: &Ebpf) -> Result<Stats> {
        let get = |name: &str| {
            bpf.map(name)
                .with_context(|| format!("map {name} missing from the object"))
        };
        let svc: PerCpuArray<&MapData, LbCounter> =
            PerCpuArray::try_from(get(maps::LB_SVC_STATS)?)?;
        let be: PerCpuArray<&MapData, LbCounter> =
            PerCpuArray::try_from(get(maps::LB_BACKEND_STATS)?)?;
        let ev: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(get(maps::LB_EVENTS)?)?;
        let events = rbpf::sum_all(&ev, event::COUNT)?;
        let active = self.active_flows(bpf)?;
        let mut services = Vec::new();
        for s in &self.services {
            let c = rbpf::sum(&svc, s.id)?;
            let mut backends = Vec::new();
            for b in &s.backends {
                backends.push(BackendStats {
                    active_flows: active.backends.get(&b.id).copied().unwrap_or(0),
                    name: b.name.clone(),
                    addr: b.addr,
                    port: b.port,
                    mac: format_mac(&b.mac),
                    weight: b.weight,
                    slots: b.slots,
                    health: b.health,
                    count: rbpf::sum(&be, b.id)?.into(),
                });
            }
            services.push(ServiceStats {
                name: s.conf.name.clone(),
                service: s.conf.label(),
                count: c.into(),
                active_flows: active.services.get(&s.id).copied().unwrap_or(0),
                backends,
            });
        }
        Ok(Stats {
            services,
            events: Events::from_slice(&events),
        })
    }
}

/// Open tracked flows by backend id and by service id ([`Balancer::active_flows`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveFlows {
    pub backends: BTreeMap<u32, u64>,
    pub services: BTreeMap<u32, u64>,
}

/// Counters of a service or a backend.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
}

impl From<LbCounter> for Count {
    fn from(c: LbCounter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            drops: c.drops,
        }
    }
}

impl Count {
    fn minus(&self, o: &Count) -> Count {
        Count {
            packets: self.packets.saturating_sub(o.packets),
            bytes: self.bytes.saturating_sub(o.bytes),
            new_flows: self.new_flows.saturating_sub(o.new_flows),
            drops: self.drops.saturating_sub(o.drops),
        }
    }
}

/// Frames outside the services' counters, and drops by reason (`wirelab_common::lb::event`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Events {
    pub non_ip: u64,
    pub non_vip: u64,
    pub malformed: u64,
    pub drop_fragment: u64,
    pub drop_no_backend: u64,
    pub drop_error: u64,
    pub forwarded: u64,
    pub rehashed: u64,
    pub ip_options: u64,
    /// NAT replies translated back to the VIP.
    #[serde(default)]
    pub nat_replies: u64,
    /// UDP flows idle past their timeout, hashed afresh.
    #[serde(default)]
    pub udp_expired: u64,
    /// New DSR flows over the new-flow limit, forwarded but not tracked.
    #[serde(default)]
    pub untracked: u64,
    /// New NAT flows over the new-flow limit, dropped.
    #[serde(default)]
    pub drop_flow_limit: u64,
    /// New SNAT flows without a free source port towards their backend, dropped.
    #[serde(default)]
    pub drop_snat_port: u64,
    /// ICMP errors about NAT flows translated.
    #[serde(default)]
    pub icmp_translated: u64,
    /// ICMP errors to a VIP about DSR flows, forwarded to the flow's backend.
    #[serde(default)]
    pub icmp_forwarded: u64,
    /// Tracked NAT flows whose evicted reply entry was entered again.
    #[serde(default)]
    pub nat_reentered: u64,
    /// Later fragments of NAT replies translated.
    #[serde(default)]
    pub nat_fragments: u64,
    /// Later fragments of datagrams to a VIP sent where their first fragment went.
    #[serde(default)]
    pub vip_fragments: u64,
    /// NAT replies too big for the link to their client, passed untranslated so that the
    /// kernel's error reaches the backend.
    #[serde(default)]
    pub nat_too_big: u64,
}

impl Events {
    /// From the per-CPU sums of `LB_EVENTS`, by index.
    fn from_slice(v: &[u64]) -> Self {
        let g = |i: u32| v.get(i as usize).copied().unwrap_or(0);
        Self {
            non_ip: g(event::NON_IP),
            non_vip: g(event::NON_VIP),
            malformed: g(event::MALFORMED),
            drop_fragment: g(event::DROP_FRAGMENT),
            drop_no_backend: g(event::DROP_NO_BACKEND),
            drop_error: g(event::DROP_ERROR),
            forwarded: g(event::FORWARDED),
            rehashed: g(event::REHASHED),
            ip_options: g(event::IP_OPTIONS),
            nat_replies: g(event::NAT_REPLIES),
            udp_expired: g(event::UDP_EXPIRED),
            untracked: g(event::UNTRACKED),
            drop_flow_limit: g(event::DROP_FLOW_LIMIT),
            drop_snat_port: g(event::DROP_SNAT_PORT),
            icmp_translated: g(event::ICMP_TRANSLATED),
            icmp_forwarded: g(event::ICMP_FORWARDED),
            nat_reentered: g(event::NAT_REENTERED),
            nat_fragments: g(event::NAT_FRAGMENTS),
            vip_fragments: g(event::VIP_FRAGMENTS),
            nat_too_big: g(event::NAT_TOO_BIG),
        }
    }

    /// The counts by index, the inverse of [`Events::from_slice`].
    fn to_array(self) -> [u64; event::COUNT as usize] {
        let mut a = [0; event::COUNT as usize];
        for (i, v) in [
            (event::NON_IP, self.non_ip),
            (event::NON_VIP, self.non_vip),
            (event::MALFORMED, self.malformed),
            (event::DROP_FRAGMENT, self.drop_fragment),
            (event::DROP_NO_BACKEND, self.drop_no_backend),
            (event::DROP_ERROR, self.drop_error),
            (event::FORWARDED, self.forwarded),
            (event::REHASHED, self.rehashed),
            (event::IP_OPTIONS, self.ip_options),
            (event::NAT_REPLIES, self.nat_replies),
            (event::UDP_EXPIRED, self.udp_expired),
            (event::UNTRACKED, self.untracked),
            (event::DROP_FLOW_LIMIT, self.drop_flow_limit),
            (event::DROP_SNAT_PORT, self.drop_snat_port),
            (event::ICMP_TRANSLATED, self.icmp_translated),
            (event::ICMP_FORWARDED, self.icmp_forwarded),
            (event::NAT_REENTERED, self.nat_reentered),
            (event::NAT_FRAGMENTS, self.nat_fragments),
            (event::VIP_FRAGMENTS, self.vip_fragments),
            (event::NAT_TOO_BIG, self.nat_too_big),
        ] {
            a[i as usize] = v;
        }
        a
    }

    /// Every event with its name (the JSON key, `event::NAMES`), in index order.
    pub fn named(self) -> impl Iterator<Item = (&'static str, u64)> {
        event::NAMES.into_iter().zip(self.to_array())
    }

    fn minus(&self, o: &Events) -> Events {
        let (a, b) = (self.to_array(), o.to_array());
        let d: Vec<u64> = a.iter().zip(b).map(|(x, y)| x.saturating_sub(y)).collect();
        Events::from_slice(&d)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendStats {
    pub name: String,
    pub addr: IpAddr,
    /// The port it listens on (NAT: where the service port is translated to).
    #[serde(default)]
    pub port: u16,
    pub mac: String,
    pub weight: u32,
    /// Maglev slots held.
    pub slots: u32,
    /// `up`, `down` (failed health checks: out of the table) or `unchecked`.
    pub health: Health,
    /// Tracked flows still open now (TCP: no FIN or RST seen; UDP: within the idle timeout).
    #[serde(default)]
    pub active_flows: u64,
    #[serde(flatten)]
    pub count: Count,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStats {
    pub name: String,
    /// `VIP:port/proto`.
    pub service: String,
    #[serde(flatten)]
    pub count: Count,
    /// Its open tracked flows (also those staying on a backend a reload removed).
    #[serde(default)]
    pub active_flows: u64,
    pub backends: Vec<BackendStats>,
}

/// Cumulative counters of every service and backend.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub services: Vec<ServiceStats>,
    pub events: Events,
}

impl Stats {
    fn minus(&self, prev: &Stats) -> Stats {
        Stats {
            services: self
                .services
                .iter()
                .zip(&prev.services)
                .map(|(s, p)| ServiceStats {
                    count: s.count.minus(&p.count),
                    backends: s
                        .backends
                        .iter()
                        .zip(&p.backends)
                        .map(|(b, pb)| BackendStats {
                            count: b.count.minus(&pb.count),
                            ..b.clone()
                        })
                        .collect(),
                    ..s.clone()
                })
                .collect(),
            events: self.events.minus(&prev.events),
        }
    }
}

/// `{"type": "interval", ...}`: printed with `--json`, and the record's series line (read
/// back by `wirelab report`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IntervalLine {
    pub r#type: LineKind,
    /// The interval's number (the record's own `seq` stamp takes its place there).
    #[serde(default)]
    pub seq: u64,
    pub t: f64,
    pub interval_s: f64,
    #[serde(flatten)]
    pub stats: Stats,
}

/// `{"type": "final", ...}`: printed with `--json`, and the record's final result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinalLine {
    pub r#type: LineKind,
    pub iface: String,
    /// "xdp" or "tc".
    pub path: Path,
    /// Why that path (what `--path auto` found, or that it was asked for).
    pub path_reason: String,
    /// How the program is attached: "tcx" or "clsact" (tc), "native" or "skb" (XDP).
    pub attach: Attached,
    pub duration_s: f64,
    pub reloads: u64,
    pub health_changes: u64,
    #[serde(flatten)]
    pub stats: Stats,
}

/// `part` as a percentage of `whole` (0 when `whole` is).
pub(crate) fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The counters as a table: one line per service, one per backend with its share of the
/// service's new flows and of the Maglev slots.
pub fn print_stats(out: &mut dyn Write, title: &str, s: &Stats) -> std::io::Result<()> {
    writeln!(out, "{title}")?;
    writeln!(
        out,
        "  {:<28} {:>10} {:>12} {:>10} {:>7} {:>7} {:>7} {:>8} {:>9}",
        "service / backend",
        "packets",
        "bytes",
        "new flows",
        "flows%",
        "slots%",
        "active",
        "drops",
        "health"
    )?;
    for svc in &s.services {
        writeln!(
            out,
            "  {:<28} {:>10} {:>12} {:>10} {:>7} {:>7} {:>7} {:>8} {:>9}",
            format!("{} {}", svc.name, svc.service),
            svc.count.packets,
            svc.count.bytes,
            svc.count.new_flows,
            "",
            "",
            svc.active_flows,
            svc.count.drops,
            ""
        )?;
        let slots: u64 = svc.backends.iter().map(|b| b.slots as u64).sum();
        for b in &svc.backends {
            writeln!(
                out,
                "    {:<26} {:>10} {:>12} {:>10} {:>7.1} {:>7.1} {:>7} {:>8} {:>9}",
                format!("{} (w {})", b.name, b.weight),
                b.count.packets,
                b.count.bytes,
                b.count.new_flows,
                pct(b.count.new_flows, svc.count.new_flows),
                pct(b.slots as u64, slots),
                b.active_flows,
                "",
                b.health.to_string()
            )?;
        }
    }
    let e = &s.events;
    writeln!(
        out,
        "  passed: non-ip {} non-vip {} malformed {} | dropped: fragment {} no-backend {} error {} flow-limit {} snat-port {} | rehashed {} ip-options {} nat-replies {} udp-expired {} untracked {} icmp-translated {} icmp-forwarded {} nat-reentered {} nat-fragments {} vip-fragments {} nat-too-big {}",
        e.non_ip, e.non_vip, e.malformed, e.drop_fragment, e.drop_no_backend, e.drop_error, e.drop_flow_limit, e.drop_snat_port, e.rehashed, e.ip_options, e.nat_replies, e.udp_expired, e.untracked, e.icmp_translated, e.icmp_forwarded, e.nat_reentered, e.nat_fragments, e.vip_fragments, e.nat_too_big
    )
}

/// The smallest MTU of this namespace's interfaces but loopback (`LbConf::reply_check_len`):
/// a NAT reply no longer than that fits every link here, so it is not looked up. Read at
/// start and at each reload.
fn smallest_mtu() -> Result<u32> {
    let ifs = crate::nl::with(None, |h| async move { crate::nl::interfaces(&h).await })?;
    Ok(ifs
        .iter()
        .filter(|i| i.name != "lo")
        .map(|i| i.mtu)
        .min()
        .unwrap_or(0))
}

/// NAT hands translated packets to the kernel's routing: it must forward.
pub fn check_forwarding(config: &Config) -> Result<()> {
    for (i, s) in config.services.iter().enumerate() {
        if s.mode != config::Mode::Nat {
            continue;
        }
        let on = |key: &str| crate::netns::read_sysctl(key).is_ok_and(|v| v == "1");
        let key = if s.vip.is_ipv4() {
            "net.ipv4.ip_forward"
        } else {
            "net.ipv6.conf.all.forwarding"
        };
        if !on(key) {
            bail!(
                "service[{i}].mode: \"nat\" needs {key} = 1 in the balancer's namespace (translated packets are routed to the backends)"
            );
        }
        // An SNAT address the balancer holds is a local source to its own routing, which
        // drops such packets as martians unless accept_local is on.
        for a in &s.snat {
            let IpAddr::V4(a) = *a else { continue };
            let local = std::net::UdpSocket::bind((a, 0)).is_ok();
            if local && !on("net.ipv4.conf.all.accept_local") {
                bail!(
                    "service[{i}].snat: {a} is the balancer's own address, so translated packets leave with a local source, which the kernel drops unless net.ipv4.conf.all.accept_local = 1 in the balancer's namespace"
                );
            }
        }
    }
    Ok(())
}

/// MAC of `iface` in this namespace.
pub fn iface_mac(iface: &str) -> Result<[u8; 6]> {
    for a in nix::ifaddrs::getifaddrs().context("listing interfaces")? {
        if a.interface_name != iface {
            continue;
        }
        if let Some(mac) = a
            .address
            .as_ref()
            .and_then(|s| s.as_link_addr())
            .and_then(|l| l.addr())
        {
            return Ok(mac);
        }
    }
    bail!("no interface named {iface:?} with a MAC address in this network namespace (use --netns NAME for a lab host)")
}

/// Fill in the MACs not given in the config from the neighbour table (ARP for IPv4, neighbour
/// discovery for IPv6), sending a datagram to the discard port of each such backend every
/// 300 ms to make the kernel ask, all at once, within `limit`. Errors name the field.
pub fn resolve_macs(config: &mut Config, iface: &str, limit: Duration) -> Result<()> {
    // (service, backend) of every DSR backend without a MAC (NAT backends are reached
    // through the kernel's routing: no MAC needed).
    let wanted: Vec<(usize, usize)> = config
        .services
        .iter()
        .enumerate()
        .filter(|(_, s)| s.mode == config::Mode::Dsr)
        .flat_map(|(i, s)| {
            s.backends
                .iter()
                .enumerate()
                .filter(|(_, b)| b.mac.is_none())
                .map(move |(j, _)| (i, j))
        })
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    // A socket per family the backends need (a namespace may have IPv6 off).
    let family = |v4: bool| {
        wanted
            .iter()
            .any(|&(i, j)| config.services[i].backends[j].addr.is_ipv4() == v4)
    };
    let bind =
        |any: &str| std::net::UdpSocket::bind((any, 0)).context("UDP socket to ask for a MAC");
    let v4 = family(true).then(|| bind("0.0.0.0")).transpose()?;
    let v6 = family(false).then(|| bind("::")).transpose()?;
    let start = Instant::now();
    let mut asked = start - Duration::from_secs(1);
    let mut missing = wanted;
    loop {
        let table = crate::nl::neighbours(iface)?;
        missing.retain(|&(i, j)| {
            let b = &mut config.services[i].backends[j];
            let Some((_, mac)) = table.iter().find(|(a, _)| *a == b.addr) else {
                return true;
            };
            tracing::info!(backend = %b.name, addr = %b.addr, mac = %format_mac(mac), "resolved");
            b.mac = Some(*mac);
            false
        });
        let Some(&(i, j)) = missing.first() else {
            return Ok(());
        };
        if start.elapsed() >= limit {
            let a = config.services[i].backends[j].addr;
            let how = if a.is_ipv4() {
                "ARP"
            } else {
                "neighbour discovery"
            };
            bail!(
                "service[{i}].backend[{j}].mac: not given, and {a} did not answer {how} on {iface} within {limit:?}"
            );
        }
        if asked.elapsed() >= Duration::from_millis(300) {
            for &(i, j) in &missing {
                let a = config.services[i].backends[j].addr;
                if let Some(sock) = if a.is_ipv4() { &v4 } else { &v6 } {
                    let _ = sock.send_to(b"wirelab-lb", (a, 9));
                }
            }
            asked = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Options {
    pub iface: String,
    /// More interfaces the program watches (NAT: where the backends' replies arrive).
    pub nat_ifaces: Vec<String>,
    pub path: PathChoice,
    pub config: PathBuf,
    pub report: Reporting,
}

/// The configuration recorded with `--record`.
#[derive(Serialize)]
struct RecordConfig<'a> {
    iface: &'a str,
    config_file: &'a std::path::Path,
    path: Path,
    /// Why this path (`--path auto` says what it found).
    path_reason: &'a str,
    attach: Attached,
    services: Vec<String>,
    interval_s: f64,
}

/// A reload as printed (`--json`: `{"type":"reload",...}`) and recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReloadLine {
    /// Always "reload".
    pub r#type: String,
    /// Seconds since the balancer started.
    pub t: f64,
    #[serde(flatten)]
    pub report: ReloadReport,
}

/// A line of the record's `lb.changes.jsonl`: a health transition or an installed reload
/// (written and read back by `wirelab report` as this type).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Change {
    Health(health::Transition),
    Reload(ReloadLine),
}

/// The balancer as the runtime drives it: counters each interval; health outcomes and
/// control requests between ticks.
struct LbTool<'a> {
    opts: &'a Options,
    bpf: Ebpf,
    lb: Balancer,
    config: Config,
    listener: std::os::unix::net::UnixListener,
    checker: health::Checker,
    states: BTreeMap<(String, String), health::State>,
    down: DownSet,
    path: Path,
    path_reason: String,
    attach: Attached,
    start: Instant,
    reloads: u64,
    health_changes: u64,
    metrics: Option<metrics::LbMetrics>,
    /// When a dead capture's hold on the tap was last looked for.
    tap_checked: Instant,
    /// [`PROG_EGRESS`] is attached (a NAT service was configured at start or by a reload).
    egress_on: bool,
    /// [`PROG_EGRESS`] is attached at `lo` too (a service with `snat` came).
    lo_egress_on: bool,
}

/// Print one event line: JSON with `--json`, else `text`.
fn print_event(json: bool, v: &impl Serialize, text: &str) -> Result<()> {
    crate::runtime::observe::to_stdout(|out| {
        if json {
            serde_json::to_writer(&mut *out, v)?;
            writeln!(out)
        } else {
            writeln!(out, "{text}")
        }
    })
}

impl LbTool<'_> {
    /// The forwarding modes in use, e.g. "DSR" or "DSR+NAT".
    fn modes(&self) -> String {
        let mut m: Vec<&str> = self
            .config
            .services
            .iter()
            .map(|s| match s.mode {
                config::Mode::Dsr => "DSR",
                config::Mode::Nat => "NAT",
            })
            .collect();
        m.sort_unstable();
        m.dedup();
        m.join("+")
    }

    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Count one probe outcome; a transition rebuilds the tables without the backends that
    /// are down (or with the one back up) and is logged, printed and recorded.
    fn health(&mut self, o: health::Outcome, obs: &mut Observer) -> Result<()> {
        let Some(svc) = self.config.services.iter().find(|s| s.name == o.service) else {
            return Ok(());
        };
        let Some(h) = &svc.health else { return Ok(()) };
        let Some(b) = svc.backends.iter().find(|b| b.name == o.backend) else {
            return Ok(());
        };
        let key = (o.service.clone(), o.backend.clone());
        let st = self.states.entry(key.clone()).or_default();
        if let Err(e) = &o.result {
            st.last_error = Some(e.clone());
        }
        let Some(up) = st.count(o.result.is_ok(), h.rise, h.fall) else {
            return Ok(());
        };
        let reason = if up { None } else { st.last_error.clone() };
        if up {
            self.down.remove(&key);
        } else {
            self.down.insert(key);
        }
        let next = Balancer::plan(&self.config, self.lb.iface_mac, Some(&self.lb), &self.down)?
            .write(&mut self.bpf, Some(&self.lb))?;
        self.lb = next;
        self.health_changes += 1;
        let nup = svc
            .backends
            .iter()
            .filter(|x| !self.down.contains(&(svc.name.clone(), x.name.clone())))
            .count();
        let tr = health::Transition {
            r#type: "health".into(),
            t: self.t(),
            service: svc.name.clone(),
            backend: b.name.clone(),
            addr: b.addr,
            state: if up { Health::Up } else { Health::Down },
            probes: if up { h.rise } else { h.fall },
            reason: reason.clone(),
            up: nup,
            backends: svc.backends.len(),
        };
        if up {
            tracing::info!(service = %svc.name, backend = %b.name, addr = %b.addr, up = nup, "backend up: back in the table after {} good probes", h.rise);
        } else {
            tracing::warn!(service = %svc.name, backend = %b.name, addr = %b.addr, up = nup, reason = reason.as_deref().unwrap_or(""), "backend down: out of the table after {} failed probes", h.fall);
        }
        let text = format!(
            "[{:>7.2}s] health: {}/{} {} {} ({} of {} up){}",
            tr.t,
            tr.service,
            tr.backend,
            tr.addr,
            tr.state,
            tr.up,
            tr.backends,
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        );
        print_event(self.opts.report.json, &tr, &text)?;
        obs.change(&Change::Health(tr))?;
        Ok(())
    }

    /// Validate and (unless `dry_run`) install a new config. Nothing changes on an error:
    /// the file is parsed and validated in full, MACs resolved and the tables planned before
    /// any map is written.
    fn reload(&mut self, text: &str, dry_run: bool, obs: &mut Observer) -> Result<ReloadReport> {
        let t0 = Instant::now();
        let mut config = Config::parse(text)?;
        check_forwarding(&config)?;
        resolve_macs(&mut config, &self.opts.iface, Duration::from_secs(3))?;
        // Health state carries over for backends still checked under the same names.
        let checked: BTreeSet<(String, String)> = config
            .services
            .iter()
            .filter(|s| s.health.is_some())
            .flat_map(|s| s.backends.iter().map(|b| (s.name.clone(), b.name.clone())))
            .collect();
        let down: DownSet = self.down.intersection(&checked).cloned().collect();
        let mut next = Balancer::plan(&config, self.lb.iface_mac, Some(&self.lb), &down)?;
        next.reply_check_len = smallest_mtu()?;
        let services = control::diff(&self.lb, &next);
        let (tracked_flows, tracked_flows_moved) = self.lb.tracked_flows(&self.bpf, &next)?;
        let mut report = ReloadReport {
            dry_run,
            generation: self.lb.gen,
            services,
            tracked_flows,
            tracked_flows_moved,
            install_ms: 0.0,
        };
        if dry_run {
            return Ok(report);
        }
        if !self.egress_on && config.has_nat() {
            attach_egress(&mut self.bpf, self.opts)?;
            self.egress_on = true;
        }
        if !self.lo_egress_on && config.has_snat() {
            attach_egress_lo(&mut self.bpf)?;
            self.lo_egress_on = true;
        }
        let next = next.write(&mut self.bpf, Some(&self.lb))?;
        report.generation = next.gen;
        report.install_ms = t0.elapsed().as_secs_f64() * 1e3;
        self.lb = next;
        self.states.retain(|k, _| checked.contains(k));
        self.down = down;
        self.checker.stop();
        self.checker = health::Checker::start(&config).context("starting health checks")?;
        self.config = config;
        self.reloads += 1;
        tracing::info!(
            generation = report.generation,
            services = self.lb.services.len(),
            moved_flows = report.tracked_flows_moved,
            "config reloaded"
        );
        let line = ReloadLine {
            r#type: "reload".into(),
            t: self.t(),
            report: report.clone(),
        };
        let text = format!(
            "[{:>7.2}s] reload: generation {}, {} in {:.1} ms; tracked flows {} (moved {})",
            line.t,
            report.generation,
            report
                .services
                .iter()
                .map(|c| format!(
                    "{} {} (+{:?} -{:?}, slots moved {:.1}%)",
                    c.name, c.change, c.added, c.removed, c.slots_moved_pct
                ))
                .collect::<Vec<_>>()
                .join("; "),
            report.install_ms,
            report.tracked_flows,
            report.tracked_flows_moved
        );
        print_event(self.opts.report.json, &line, &text)?;
        obs.change(&Change::Reload(line))?;
        Ok(report)
    }

    /// The capture tap's maps on the path in use: the XDP program's, or the tc program's
    /// (its own program array, the flag shared).
    fn tap_maps(&self) -> Result<crate::runtime::tap::TapInfo> {
        if self.path == Path::Xdp {
            crate::runtime::tap::TapInfo::of(&self.bpf, maps::LB_TAP, maps::LB_TAP_ON)
        } else {
            let mut t =
                crate::runtime::tap::TapInfo::of(&self.bpf, maps::LB_TC_TAP, maps::LB_TAP_ON)?;
            t.tc = true;
            Ok(t)
        }
    }

    /// Where the capture tap is, with the backends' names (`service/backend`) by id.
    fn tap_info(&self, iface: &str) -> Result<crate::runtime::tap::TapInfo> {
        if iface != self.opts.iface && !self.opts.nat_ifaces.iter().any(|i| i == iface) {
            bail!("lb does not run on {iface}");
        }
        let mut t = self.tap_maps()?;
        t.mode = self.attach.xdp();
        t.names = self
            .lb
            .services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(|b| (b.id, format!("{}/{}", s.conf.name, b.name)))
            })
            .collect();
        Ok(t)
    }

    fn serve(&mut self, s: std::os::unix::net::UnixStream, obs: &mut Observer) -> Result<()> {
        use control::{Answer, Request};
        let answer =
            match crate::runtime::control::read_request::<Request>(&s, Duration::from_secs(5)) {
                Err(e) => Err(e),
                Ok(Request::Stats) => self.lb.read(&self.bpf).map(|st| {
                    Answer::Stats(Box::new(StatsReply {
                        iface: self.opts.iface.clone(),
                        generation: self.lb.gen,
                        reloads: self.reloads,
                        health_changes: self.health_changes,
                        uptime_s: self.t(),
                        stats: st,
                    }))
                }),
                Ok(Request::Reload { config, dry_run }) => self
                    .reload(&config, dry_run, obs)
                    .inspect_err(|e| {
                        tracing::warn!("reload refused, the running config stays: {e:#}");
                    })
                    .map(|r| Answer::Reload(Box::new(r))),
                Ok(Request::Which { from, to, proto }) => load_which(&mut self.bpf)
                    .and_then(|()| self.lb.which(&self.bpf, from, to, proto))
                    .map(|w| Answer::Which(Box::new(w))),
                Ok(Request::Tap { iface }) => {
                    self.tap_info(&iface).map(|t| Answer::Tap(Box::new(t)))
                }
            };
        crate::runtime::control::reply(&s, &crate::runtime::control::Reply::from_result(answer))
    }
}

impl Sampled for LbTool<'_> {
    type Snapshot = Stats;
    type Line = IntervalLine;
    type Final = FinalLine;

    fn read(&mut self) -> Result<Stats> {
        self.lb.read(&self.bpf)
    }

    fn interval(&self, tick: &Tick, cur: &Stats, prev: &Stats) -> IntervalLine {
        IntervalLine {
            r#type: LineKind::Interval,
            seq: tick.seq,
            t: tick.t,
            interval_s: tick.secs,
            stats: cur.minus(prev),
        }
    }

    fn table(&self, tick: &Tick, line: &IntervalLine, out: &mut dyn Write) -> std::io::Result<()> {
        let title = format!(
            "[{:>7.2}s] {} (last {:.2}s)",
            tick.t, self.opts.iface, tick.secs
        );
        print_stats(out, &title, &line.stats)
    }

    fn publish(&mut self, cur: &Stats) {
        let st = metrics::State {
            generation: self.lb.gen,
            reloads: self.reloads,
            health_changes: self.health_changes,
        };
        if let Some(m) = self.metrics.as_mut() {
            m.publish(&self.opts.iface, cur, &st);
        }
    }

    fn poll_every(&self) -> Option<Duration> {
        Some(Duration::from_millis(20))
    }

    fn poll(&mut self, obs: &mut Observer) -> Result<()> {
        if self.tap_checked.elapsed() >= Duration::from_secs(1) {
            self.tap_checked = Instant::now();
            let tap = self.tap_maps();
            if let Err(e) = tap.and_then(|t| crate::runtime::tap::release_dead(&t)) {
                tracing::warn!("checking the capture tap: {e:#}");
            }
        }
        while let Ok(o) = self.checker.rx.try_recv() {
            self.health(o, obs)?;
        }
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if let Err(e) = self.serve(s, obs) {
                        tracing::warn!("control request failed: {e:#}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e).context("control socket"),
            }
        }
    }

    fn finish(&mut self, total: &Stats, secs: f64) -> Result<(FinalLine, Vec<Quantity>)> {
        let mut measured = Vec::new();
        for s in &total.services {
            for b in &s.backends {
                measured.push(Quantity::new(
                    &format!("{}_{}_new_flows", s.name, b.name),
                    "",
                    b.count.new_flows as f64,
                    "flows",
                    &format!("new flows of {} sent to backend {}", s.service, b.name),
                ));
            }
        }
        Ok((
            FinalLine {
                r#type: LineKind::Final,
                iface: self.opts.iface.clone(),
                path: self.path,
                path_reason: self.path_reason.clone(),
                attach: self.attach,
                duration_s: secs,
                reloads: self.reloads,
                health_changes: self.health_changes,
                stats: total.clone(),
            },
            measured,
        ))
    }

    fn final_table(&self, fin: &FinalLine, out: &mut dyn Write) -> std::io::Result<()> {
        let title = format!(
            "total on {} over {:.2}s ({} path, {}; {}; {} reloads, {} health changes)",
            fin.iface,
            fin.duration_s,
            fin.path,
            fin.attach,
            self.modes(),
            fin.reloads,
            fin.health_changes
        );
        print_stats(out, &title, &fin.stats)
    }
}

/// Load (never attach) [`PROG_WHICH`], which `lb which` runs; nothing to do when it is loaded
/// already. The balancer loads it at the first `lb which`, not at start: the verifier's time
/// goes to the programs that carry traffic.
pub fn load_which(bpf: &mut Ebpf) -> Result<()> {
    let p: &mut Xdp = bpf
        .program_mut(PROG_WHICH)
        .with_context(|| format!("program {PROG_WHICH} missing from the object"))?
        .try_into()?;
    if p.is_loaded() {
        return Ok(());
    }
    p.load_retrying()
        .with_context(|| format!("loading {PROG_WHICH} (the decision `lb which` asks)"))
}

/// Load [`PROG_ICMP`] (for tc: the tc entry point and `lb_egress`) and, with `xdp`,
/// [`PROG_ICMP_XDP`] (for the XDP entry point), and enter them in the tail-call arrays the
/// entry points use for ICMP errors (without them errors are passed on untranslated).
pub fn load_icmp(bpf: &mut Ebpf, xdp: bool) -> Result<()> {
    use crate::runtime::bpf::{fill_tail_calls, Hook};
    fill_tail_calls(bpf, &[(PROG_ICMP, Hook::Tc, maps::LB_ICMP_TC)])?;
    if xdp {
        fill_tail_calls(bpf, &[(PROG_ICMP_XDP, Hook::Xdp, maps::LB_ICMP_XDP)])?;
    }
    Ok(())
}

/// Run [`PROG_WHICH`] on a crafted frame `from` → `to` (a SYN when `syn`, otherwise an ACK
/// of an established flow; UDP has no flags): the program's answer (`which::*`).
fn ask_program(
    bpf: &Ebpf,
    from: SocketAddr,
    to: SocketAddr,
    proto: config::Proto,
    syn: bool,
    mac: [u8; 6],
) -> Result<u32> {
    let b = etherparse::PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 1], mac);
    let b = match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => bail!("--from {from} and --to {to} are of different address families"),
    };
    let mut frame = Vec::with_capacity(96);
    match proto {
        config::Proto::Tcp => {
            let t = b.tcp(from.port(), to.port(), 1, 64240);
            let t = if syn { t.syn() } else { t.ack(1) };
            t.write(&mut frame, &[])
        }
        config::Proto::Udp => b.udp(from.port(), to.port()).write(&mut frame, &[]),
    }
    .context("building the probe frame")?;
    let p: &Xdp = bpf
        .program(PROG_WHICH)
        .with_context(|| format!("program {PROG_WHICH} missing from the object"))?
        .try_into()?;
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .with_context(|| format!("BPF_PROG_TEST_RUN of {PROG_WHICH}"))?;
    Ok(r.return_value)
}

/// Attach [`PROG_EGRESS`] at tc egress of every interface the balancer watches: once, for the
/// first NAT service (at start, or the reload that brings one).
fn attach_egress(bpf: &mut Ebpf, opts: &Options) -> Result<()> {
    let ifaces =
        std::iter::once(opts.iface.as_str()).chain(opts.nat_ifaces.iter().map(String::as_str));
    for i in ifaces {
        rbpf::attach_tc(bpf, PROG_EGRESS, i, TcAttachType::Egress)?;
    }
    tracing::info!(
        "lb_egress at tc egress: ICMP errors this host sends about NAT flows quote the VIP"
    );
    Ok(())
}

/// Attach [`PROG_EGRESS`] at `lo`'s egress too: the errors this host sends about SNAT flows go
/// to the SNAT address, its own. Once, for the first service with `snat` (at start or by a
/// reload): without one, what this host sends itself never passes the program.
fn attach_egress_lo(bpf: &mut Ebpf) -> Result<()> {
    rbpf::attach_tc(bpf, PROG_EGRESS, "lo", TcAttachType::Egress)?;
    tracing::info!(
        "lb_egress at lo's egress too: ICMP errors this host sends about SNAT flows go on to the client"
    );
    Ok(())
}

/// Run the balancer until `duration`, SIGINT or SIGTERM; returns the totals.
pub fn run(opts: &Options, stop: &Stop) -> Result<Stats> {
    // Everything is checked before anything is attached.
    let mut config = Config::load(&opts.config)?;
    let mac = iface_mac(&opts.iface)?;
    check_forwarding(&config)?;
    let name = socket_name(&opts.iface);
    let listener =
        crate::runtime::control::bind(&name, &format!("a wirelab lb on {}", opts.iface))?;
    resolve_macs(&mut config, &opts.iface, Duration::from_secs(3))?;
    let dsr = config.services.iter().any(|s| s.mode == config::Mode::Dsr);
    let (path, why) = choose_path(opts.path, &opts.iface, &opts.nat_ifaces, dsr)?;
    // XDP on a veth sends DSR frames back with a redirect to itself, not XDP_TX: the veth
    // kicks its peer's NAPI after a redirect, but after XDP_TX only when the peer has an XDP
    // program (with GRO alone the frames wait in the peer's ring: docs/lb.md).
    let veth = crate::nl::is_veth(&opts.iface)?;
    let mut bpf = ebpf::load(ebpf::Object::Lb)?;
    let mut plan = Balancer::plan(&config, mac, None, &DownSet::new())?;
    plan.xdp_out = if veth { xdp_out::REDIRECT } else { xdp_out::TX };
    plan.reply_check_len = smallest_mtu()?;
    let lb = plan.write(&mut bpf, None)?;
    load_icmp(&mut bpf, path == Path::Xdp)?;
    let attach: Attached = match path {
        Path::Tc => rbpf::attach_tc(&mut bpf, PROG, &opts.iface, TcAttachType::Ingress)?.into(),
        Path::Xdp => rbpf::attach_xdp(&mut bpf, PROG_XDP, &opts.iface, None)?.into(),
    };
    for i in &opts.nat_ifaces {
        match path {
            Path::Tc => {
                rbpf::attach_tc(&mut bpf, PROG, i, TcAttachType::Ingress)?;
            }
            Path::Xdp => {
                rbpf::attach_xdp(&mut bpf, PROG_XDP, i, None)?;
            }
        }
        tracing::info!(iface = %i, "lb also on {i} (NAT replies)");
    }
    let nat = config.has_nat();
    if nat {
        attach_egress(&mut bpf, opts)?;
    }
    let snat = config.has_snat();
    if snat {
        attach_egress_lo(&mut bpf)?;
    }
    for s in &lb.services {
        tracing::info!(
            service = %s.conf.label(),
            backends = s.backends.len(),
            table_size = s.conf.table_size,
            health = s.conf.health.as_ref().map_or("none".to_string(), |h| h.to_string()),
            "serving"
        );
    }
    let how = match (path, dsr, nat) {
        (Path::Tc, true, false) => {
            "tc ingress, DSR frames sent back out with bpf_redirect (works with plain veth peers)"
        }
        (Path::Tc, false, _) => "tc ingress, NAT packets translated and routed by the kernel",
        (Path::Tc, true, true) => {
            "tc ingress; DSR frames sent back out with bpf_redirect, NAT packets translated and routed by the kernel"
        }
        (Path::Xdp, true, false) if veth => {
            "XDP, DSR frames sent back out with XDP_REDIRECT to the same veth"
        }
        (Path::Xdp, true, false) => "XDP, DSR frames bounced with XDP_TX",
        (Path::Xdp, false, _) => "XDP, NAT packets translated in XDP and routed by the kernel",
        (Path::Xdp, true, true) if veth => {
            "XDP; DSR frames sent back out with XDP_REDIRECT to the same veth, NAT packets translated in XDP and routed by the kernel"
        }
        (Path::Xdp, true, true) => {
            "XDP; DSR frames bounced with XDP_TX, NAT packets translated in XDP and routed by the kernel"
        }
    };
    tracing::info!(iface = %opts.iface, %path, %attach, "lb attached ({path} path: {why}): {how} (control socket @{name})");
    let obs = opts.report.observer(
        "lb",
        &RecordConfig {
            iface: &opts.iface,
            config_file: &opts.config,
            path,
            path_reason: &why,
            attach,
            services: lb.services.iter().map(|s| s.conf.label()).collect(),
            interval_s: opts.report.interval.as_secs_f64(),
        },
    )?;
    // Probes start in this (the balancer's) namespace: the process entered it already.
    let checker = health::Checker::start(&config).context("starting health checks")?;
    let metrics = match &opts.report.metrics {
        Some(ep) => Some(metrics::LbMetrics::serve("lb", ep)?),
        None => None,
    };
    let mut tool = LbTool {
        opts,
        bpf,
        lb,
        config,
        listener,
        checker,
        states: BTreeMap::new(),
        down: DownSet::new(),
        path,
        path_reason: why.clone(),
        attach,
        start: Instant::now(),
        reloads: 0,
        health_changes: 0,
        metrics,
        tap_checked: Instant::now(),
        egress_on: nat,
        lo_egress_on: snat,
    };
    let (_, total) = sampled::drive(&mut tool, opts.report.ticker(), stop, obs)?;
    // Dropping the tool closes the TCX link (the program detaches) and stops the probers.
    drop(tool);
    tracing::info!(iface = %opts.iface, "lb detached");
    Ok(total)
}

/// One backend's share as `lb check` reports it.
#[derive(Debug, Serialize)]
pub struct CheckBackend {
    pub name: String,
    pub addr: IpAddr,
    /// The port it listens on (NAT translates the service port to it when they differ).
    pub port: u16,
    pub mac: Option<String>,
    pub weight: u32,
    pub slots: u32,
    /// Share of the Maglev slots, percent.
    pub share_pct: f64,
    /// Share the weights ask for, percent.
    pub weight_pct: f64,
}

#[derive(Debug, Serialize)]
pub struct CheckService {
    pub name: String,
    pub service: String,
    pub port: u16,
    pub mode: config::Mode,
    pub table_size: u32,
    pub seed: u64,
    /// The health checks, described (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// UDP services: the idle timeout of tracked flows, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_idle_timeout_s: Option<f64>,
    pub backends: Vec<CheckBackend>,
}

/// `lb check`: validate the file and compute every service's Maglev table.
pub fn check(config: &Config) -> Result<Vec<CheckService>> {
    config
        .services
        .iter()
        .map(|s| {
            let t = s.table()?;
            let slots = maglev::shares(&t, s.backends.len());
            let w: u64 = s.backends.iter().map(|b| b.weight as u64).sum();
            Ok(CheckService {
                name: s.name.clone(),
                service: s.label(),
                port: s.port,
                mode: s.mode,
                table_size: s.table_size,
                seed: s.seed,
                health: s.health.as_ref().map(|h| h.to_string()),
                udp_idle_timeout_s: s.udp_idle_timeout.map(|d| d.as_secs_f64()),
                backends: s
                    .backends
                    .iter()
                    .zip(slots)
                    .map(|(b, n)| CheckBackend {
                        name: b.name.clone(),
                        addr: b.addr,
                        port: b.port,
                        mac: b.mac.as_ref().map(format_mac),
                        weight: b.weight,
                        slots: n,
                        share_pct: pct(n as u64, s.table_size as u64),
                        weight_pct: pct(b.weight as u64, w),
                    })
                    .collect(),
            })
        })
        .collect()
}

/// `lb check` as a table.
pub fn print_check(out: &mut dyn Write, c: &[CheckService]) -> std::io::Result<()> {
    for s in c {
        writeln!(
            out,
            "{} {} ({}, M = {}, seed {})",
            s.name, s.service, s.mode, s.table_size, s.seed
        )?;
        if let Some(h) = &s.health {
            writeln!(out, "  health: {h}")?;
        }
        if let Some(t) = s.udp_idle_timeout_s {
            writeln!(out, "  udp idle timeout: {t}s")?;
        }
        writeln!(
            out,
            "  {:<16} {:<40} {:>6} {:>8} {:>8} {:>8}",
            "backend", "addr", "weight", "slots", "share%", "weight%"
        )?;
        for b in &s.backends {
            // The port only where the backend listens on another than the service's.
            let addr = if b.port == s.port {
                b.addr.to_string()
            } else {
                std::net::SocketAddr::new(b.addr, b.port).to_string()
            };
            writeln!(
                out,
                "  {:<16} {:<40} {:>6} {:>8} {:>8.2} {:>8.2}",
                b.name, addr, b.weight, b.slots, b.share_pct, b.weight_pct
            )?;
        }
        if s.backends.iter().all(|b| b.weight == 0) {
            writeln!(
                out,
                "  note: no backend has weight > 0: every new flow is dropped"
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event names of the metrics and the JSON keys are one list: every index lands in
    /// the field of its name, and back.
    #[test]
    fn events_by_index_name_and_field_agree() {
        let v: Vec<u64> = (1..=u64::from(event::COUNT)).collect();
        let e = Events::from_slice(&v);
        assert_eq!(e.to_array().to_vec(), v);
        let json = serde_json::to_value(e).unwrap();
        for (name, n) in e.named() {
            assert_eq!(json[name], n, "{name}");
        }
        assert_eq!(json.as_object().unwrap().len(), event::COUNT as usize);
        assert_eq!(e.minus(&Events::from_slice(&[1; 12])).to_array()[11], 11);
    }
}
