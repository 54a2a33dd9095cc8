//! `wirelab lb`: an L4 load balancer (tc ingress) with weighted Maglev hashing, connection
//! tracking and direct server return. See docs/lb.md.
//!
//! The configuration is validated in full, backend MACs are resolved, every map is filled
//! and only then is the program attached (TCX ingress, a bpf_link: a killed process leaves
//! nothing attached). The run is driven by the runtime ([`sampled::drive`]): per-interval
//! counters as a table or `--json` lines, `--record` series, and a final table.
pub mod config;
pub mod maglev;

use std::{
    io::Write,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::TcAttachType,
    Ebpf,
};
use serde::Serialize;
use wirelab_common::{
    lb::{
        backend_flag, event, flow_hash, mode, Backend, FlowKey, LbConf, LbCounter, ServiceMeta,
        VipKey, FAMILY_IPV4, FAMILY_IPV6, MAX_SERVICES, MAX_TABLE_SIZE, NO_BACKEND, VIP_ADDR_MARK,
    },
    maps,
};

pub use config::Config;
use config::{format_mac, ServiceConf};

use crate::{
    ebpf,
    record::Quantity,
    runtime::{
        bpf::{self as rbpf, PerCpuSum},
        observe::Observer,
        sampled::{self, Sampled},
        Tick, Ticker,
    },
    util::Stop,
};

/// The tc program's name in the object.
pub const PROG: &str = "lb";
/// The XDP entry point in the object (`XDP_TX`), tested through BPF_PROG_TEST_RUN but not
/// offered by the command yet: in the lab its frames did not reach the backends, even with
/// GRO on the peer veth (docs/lb.md).
pub const PROG_XDP: &str = "lb_xdp";

/// How forwarded frames leave: back out of the interface they came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// tc ingress, `bpf_redirect` to the interface's egress: the normal transmit path, so
    /// any peer receives the frames.
    Tc,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Tc => "tc",
        })
    }
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

/// A backend as installed: its id in `LB_BACKENDS`.
#[derive(Debug, Clone)]
pub struct InstalledBackend {
    pub id: u32,
    pub name: String,
    pub addr: IpAddr,
    pub mac: [u8; 6],
    pub weight: u32,
    /// Maglev slots it holds.
    pub slots: u32,
}

/// A service as installed.
#[derive(Debug, Clone)]
pub struct InstalledService {
    pub conf: ServiceConf,
    pub backends: Vec<InstalledBackend>,
    /// Slot → backend id ([`NO_BACKEND`] when no backend has weight).
    pub table: Vec<u32>,
}

impl InstalledService {
    /// The backend a new flow with `key` goes to, as the program computes it (the flow hash
    /// of `wirelab_common::lb`, the same table).
    pub fn predict(&self, key: &FlowKey) -> Option<&InstalledBackend> {
        let slot = flow_hash(key, self.conf.seed as u32) % self.conf.table_size;
        let id = self.table[slot as usize];
        self.backends.iter().find(|b| b.id == id)
    }
}

/// The balancer's maps, filled from a configuration.
pub struct Balancer {
    pub services: Vec<InstalledService>,
    /// Generation in force (`LB_GEN[0]`).
    pub gen: u32,
}

fn map_mut<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    bpf.map_mut(name)
        .with_context(|| format!("map {name} missing from the object"))
}

impl Balancer {
    /// Fill every map from `config` (every backend MAC known) for the interface whose MAC
    /// is `iface_mac`: the tables go into the idle generation, then `LB_GEN` flips in one
    /// write.
    pub fn install(bpf: &mut Ebpf, config: &Config, iface_mac: [u8; 6]) -> Result<Self> {
        let mut services = Vec::new();
        let mut next_id = 0u32;
        for s in &config.services {
            let slots = s.table()?;
            let mut backends = Vec::new();
            for (j, b) in s.backends.iter().enumerate() {
                let Some(mac) = b.mac else {
                    bail!(
                        "service[{}].backend[{j}].mac: unknown (not given, not resolved)",
                        services.len()
                    );
                };
                backends.push(InstalledBackend {
                    id: next_id,
                    name: b.name.clone(),
                    addr: b.addr,
                    mac,
                    weight: b.weight,
                    slots: 0,
                });
                next_id += 1;
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
                conf: s.clone(),
                backends,
                table,
            });
        }

        let cur = Array::<&mut MapData, u32>::try_from(map_mut(bpf, maps::LB_GEN)?)?
            .get(&0, 0)
            .context("reading LB_GEN")?
            & 1;
        let gen = cur ^ 1;

        let mut conf: Array<&mut MapData, LbConf> = Array::try_from(map_mut(bpf, maps::LB_CONF)?)?;
        conf.set(
            0,
            LbConf {
                iface_mac,
                services: services.len() as u32,
                ..Default::default()
            },
            0,
        )
        .context("writing LB_CONF")?;
        let mut bmap: Array<&mut MapData, Backend> =
            Array::try_from(map_mut(bpf, maps::LB_BACKENDS)?)?;
        for s in &services {
            for b in &s.backends {
                let (addr, family) = addr16(b.addr);
                bmap.set(
                    b.id,
                    Backend {
                        mac: b.mac,
                        port: s.conf.port,
                        addr,
                        family,
                        flags: backend_flag::UP,
                        ..Default::default()
                    },
                    0,
                )
                .with_context(|| format!("writing backend {}", b.name))?;
            }
        }
        let mut table: Array<&mut MapData, u32> = Array::try_from(map_mut(bpf, maps::LB_TABLE)?)?;
        for (i, s) in services.iter().enumerate() {
            let base = (gen * MAX_SERVICES + i as u32) * MAX_TABLE_SIZE;
            for (slot, id) in s.table.iter().enumerate() {
                table
                    .set(base + slot as u32, id, 0)
                    .context("writing LB_TABLE")?;
            }
        }
        let mut meta: Array<&mut MapData, ServiceMeta> =
            Array::try_from(map_mut(bpf, maps::LB_SERVICES)?)?;
        for (i, s) in services.iter().enumerate() {
            meta.set(
                gen * MAX_SERVICES + i as u32,
                ServiceMeta {
                    table_size: s.conf.table_size,
                    mode: mode::DSR,
                    hash_seed: s.conf.seed as u32,
                    active: s.backends.iter().filter(|b| b.weight > 0).count() as u32,
                },
                0,
            )
            .context("writing LB_SERVICES")?;
        }
        let mut vips: BpfHashMap<&mut MapData, VipKey, u32> =
            BpfHashMap::try_from(map_mut(bpf, maps::LB_VIPS)?)?;
        for (i, s) in services.iter().enumerate() {
            let (addr, family) = addr16(s.conf.vip);
            let key = VipKey {
                addr,
                port: s.conf.port,
                proto: s.conf.proto.number(),
                family,
            };
            vips.insert(key, i as u32, 0).context("writing LB_VIPS")?;
            let mark = VipKey {
                addr,
                port: 0,
                proto: 0,
                family,
            };
            vips.insert(mark, VIP_ADDR_MARK, 0)
                .context("writing LB_VIPS")?;
        }
        // The switch: one word.
        let mut gen_map: Array<&mut MapData, u32> = Array::try_from(map_mut(bpf, maps::LB_GEN)?)?;
        gen_map.set(0, gen, 0).context("writing LB_GEN")?;
        Ok(Self { services, gen })
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
        let mut services = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            let c = rbpf::sum(&svc, i as u32)?;
            let mut backends = Vec::new();
            for b in &s.backends {
                backends.push(BackendStats {
                    name: b.name.clone(),
                    addr: b.addr,
                    mac: format_mac(&b.mac),
                    weight: b.weight,
                    slots: b.slots,
                    count: rbpf::sum(&be, b.id)?.into(),
                });
            }
            services.push(ServiceStats {
                name: s.conf.name.clone(),
                service: s.conf.label(),
                count: c.into(),
                backends,
            });
        }
        Ok(Stats {
            services,
            events: Events::from_slice(&events),
        })
    }
}

/// Counters of a service or a backend.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
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
}

impl Events {
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
        }
    }

    fn minus(&self, o: &Events) -> Events {
        Events {
            non_ip: self.non_ip.saturating_sub(o.non_ip),
            non_vip: self.non_vip.saturating_sub(o.non_vip),
            malformed: self.malformed.saturating_sub(o.malformed),
            drop_fragment: self.drop_fragment.saturating_sub(o.drop_fragment),
            drop_no_backend: self.drop_no_backend.saturating_sub(o.drop_no_backend),
            drop_error: self.drop_error.saturating_sub(o.drop_error),
            forwarded: self.forwarded.saturating_sub(o.forwarded),
            rehashed: self.rehashed.saturating_sub(o.rehashed),
            ip_options: self.ip_options.saturating_sub(o.ip_options),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackendStats {
    pub name: String,
    pub addr: IpAddr,
    pub mac: String,
    pub weight: u32,
    /// Maglev slots held.
    pub slots: u32,
    #[serde(flatten)]
    pub count: Count,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceStats {
    pub name: String,
    /// `VIP:port/proto`.
    pub service: String,
    #[serde(flatten)]
    pub count: Count,
    pub backends: Vec<BackendStats>,
}

/// Cumulative counters of every service and backend.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
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

/// `{"type": "interval", ...}`.
#[derive(Debug, Serialize)]
pub struct IntervalLine {
    pub r#type: &'static str,
    pub seq: u64,
    pub t: f64,
    pub interval_s: f64,
    #[serde(flatten)]
    pub stats: Stats,
}

/// `{"type": "final", ...}`.
#[derive(Debug, Serialize)]
pub struct FinalLine {
    pub r#type: &'static str,
    pub iface: String,
    /// "tc" (the only path offered yet).
    pub path: Path,
    /// How the program is attached: "tcx" or "clsact".
    pub attach: String,
    pub duration_s: f64,
    #[serde(flatten)]
    pub stats: Stats,
}

fn pct(part: u64, whole: u64) -> f64 {
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
        "  {:<28} {:>10} {:>12} {:>10} {:>7} {:>7} {:>8}",
        "service / backend", "packets", "bytes", "new flows", "flows%", "slots%", "drops"
    )?;
    for svc in &s.services {
        writeln!(
            out,
            "  {:<28} {:>10} {:>12} {:>10} {:>7} {:>7} {:>8}",
            format!("{} {}", svc.name, svc.service),
            svc.count.packets,
            svc.count.bytes,
            svc.count.new_flows,
            "",
            "",
            svc.count.drops
        )?;
        let slots: u64 = svc.backends.iter().map(|b| b.slots as u64).sum();
        for b in &svc.backends {
            writeln!(
                out,
                "    {:<26} {:>10} {:>12} {:>10} {:>7.1} {:>7.1} {:>8}",
                format!("{} (w {})", b.name, b.weight),
                b.count.packets,
                b.count.bytes,
                b.count.new_flows,
                pct(b.count.new_flows, svc.count.new_flows),
                pct(b.slots as u64, slots),
                ""
            )?;
        }
    }
    let e = &s.events;
    writeln!(
        out,
        "  passed: non-ip {} non-vip {} malformed {} | dropped: fragment {} no-backend {} error {} | rehashed {} ip-options {}",
        e.non_ip, e.non_vip, e.malformed, e.drop_fragment, e.drop_no_backend, e.drop_error, e.rehashed, e.ip_options
    )
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

/// The complete neighbour entry of `addr` on `iface` in /proc/net/arp (this namespace's).
fn arp_entry(addr: std::net::Ipv4Addr, iface: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string("/proc/net/arp").ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // IP address, HW type, Flags (0x2 = complete), HW address, Mask, Device
        if f.len() >= 6 && f[0] == addr.to_string() && f[5] == iface && f[2] == "0x2" {
            config::parse_mac(f[3]).ok()
        } else {
            None
        }
    })
}

/// Fill in the MACs not given in the config from the neighbour table, sending a datagram to
/// the discard port of each such backend to make the kernel ask (IPv4 only; within
/// `limit`). Errors name the field.
pub fn resolve_macs(config: &mut Config, iface: &str, limit: Duration) -> Result<()> {
    for (i, s) in config.services.iter_mut().enumerate() {
        for (j, b) in s.backends.iter_mut().enumerate() {
            if b.mac.is_some() {
                continue;
            }
            let IpAddr::V4(a) = b.addr else {
                bail!("service[{i}].backend[{j}].mac: required for IPv6 backends");
            };
            let start = Instant::now();
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").context("UDP socket for ARP")?;
            let mut mac = arp_entry(a, iface);
            let mut sent = Instant::now() - Duration::from_secs(1);
            while mac.is_none() && start.elapsed() < limit {
                if sent.elapsed() >= Duration::from_millis(300) {
                    let _ = sock.send_to(b"wirelab-lb", (a, 9));
                    sent = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(20));
                mac = arp_entry(a, iface);
            }
            let Some(mac) = mac else {
                bail!(
                    "service[{i}].backend[{j}].mac: not given, and {a} did not answer ARP on {iface} within {limit:?}"
                );
            };
            tracing::info!(backend = %b.name, addr = %a, mac = %format_mac(&mac), "resolved");
            b.mac = Some(mac);
        }
    }
    Ok(())
}

pub struct Options {
    pub iface: String,
    pub path: Path,
    pub config: PathBuf,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub json: bool,
    pub record: Option<PathBuf>,
}

/// The configuration recorded with `--record`.
#[derive(Serialize)]
struct RecordConfig<'a> {
    iface: &'a str,
    config_file: &'a std::path::Path,
    path: Path,
    attach: &'a str,
    services: Vec<String>,
    interval_s: f64,
}

/// The balancer as the runtime drives it.
struct LbTool<'a> {
    opts: &'a Options,
    bpf: &'a Ebpf,
    lb: &'a Balancer,
    path: Path,
    attach: String,
}

impl Sampled for LbTool<'_> {
    type Snapshot = Stats;
    type Line = IntervalLine;
    type Final = FinalLine;

    fn read(&mut self) -> Result<Stats> {
        self.lb.read(self.bpf)
    }

    fn interval(&self, tick: &Tick, cur: &Stats, prev: &Stats) -> IntervalLine {
        IntervalLine {
            r#type: "interval",
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
                r#type: "final",
                iface: self.opts.iface.clone(),
                path: self.path,
                attach: self.attach.clone(),
                duration_s: secs,
                stats: total.clone(),
            },
            measured,
        ))
    }

    fn final_table(&self, fin: &FinalLine, out: &mut dyn Write) -> std::io::Result<()> {
        let title = format!(
            "total on {} over {:.2}s ({} path, {}; DSR)",
            fin.iface, fin.duration_s, fin.path, fin.attach
        );
        print_stats(out, &title, &fin.stats)
    }
}

/// Run the balancer until `duration`, SIGINT or SIGTERM; returns the totals.
pub fn run(opts: &Options, stop: &Stop) -> Result<Stats> {
    // Everything is checked before anything is attached.
    let mut config = Config::load(&opts.config)?;
    let mac = iface_mac(&opts.iface)?;
    resolve_macs(&mut config, &opts.iface, Duration::from_secs(3))?;
    let mut bpf = ebpf::load()?;
    let lb = Balancer::install(&mut bpf, &config, mac)?;
    let attach = match opts.path {
        Path::Tc => {
            rbpf::attach_tc(&mut bpf, PROG, &opts.iface, TcAttachType::Ingress)?.to_string()
        }
    };
    let path = opts.path;
    for s in &lb.services {
        tracing::info!(
            service = %s.conf.label(),
            backends = s.backends.len(),
            table_size = s.conf.table_size,
            "serving"
        );
    }
    let how = match path {
        Path::Tc => {
            "tc ingress, DSR frames sent back out with bpf_redirect (works with plain veth peers)"
        }
    };
    tracing::info!(iface = %opts.iface, %path, %attach, "lb attached: {how}");
    let obs = Observer::new(
        opts.json,
        opts.record.as_deref(),
        "lb",
        &RecordConfig {
            iface: &opts.iface,
            config_file: &opts.config,
            path,
            attach: &attach,
            services: lb.services.iter().map(|s| s.conf.label()).collect(),
            interval_s: opts.interval.as_secs_f64(),
        },
    )?;
    let mut tool = LbTool {
        opts,
        bpf: &bpf,
        lb: &lb,
        path,
        attach: attach.clone(),
    };
    let (_, total) = sampled::drive(
        &mut tool,
        Ticker::new(opts.interval, opts.duration),
        stop,
        obs,
    )?;
    // Dropping `bpf` closes the TCX link: the program detaches here.
    drop(bpf);
    tracing::info!(iface = %opts.iface, "lb detached");
    Ok(total)
}

/// One backend's share as `lb check` reports it.
#[derive(Debug, Serialize)]
pub struct CheckBackend {
    pub name: String,
    pub addr: IpAddr,
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
    pub mode: config::Mode,
    pub table_size: u32,
    pub seed: u64,
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
                mode: s.mode,
                table_size: s.table_size,
                seed: s.seed,
                backends: s
                    .backends
                    .iter()
                    .zip(slots)
                    .map(|(b, n)| CheckBackend {
                        name: b.name.clone(),
                        addr: b.addr,
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
        writeln!(
            out,
            "  {:<16} {:<40} {:>6} {:>8} {:>8} {:>8}",
            "backend", "addr", "weight", "slots", "share%", "weight%"
        )?;
        for b in &s.backends {
            writeln!(
                out,
                "  {:<16} {:<40} {:>6} {:>8} {:>8.2} {:>8.2}",
                b.name, b.addr, b.weight, b.slots, b.share_pct, b.weight_pct
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
