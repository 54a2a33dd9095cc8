//! `wirelab swarm`: thousands of distinct client machines, each with its own IP and MAC, from
//! one host, running unmodified programs.
//!
//! Setup ([`Swarm::setup`]), in this order, after every check has passed:
//! 1. a state file under `/run/wirelab/swarm/` (so `wirelab cleanup` can undo a kill -9);
//! 2. a per-run parent cgroup `wirelab-swarm-PID-X` in the cgroup v2 hierarchy;
//! 3. the kernel programs: `cgroup/connect4` and `cgroup/sendmsg4` on that cgroup, XDP on the
//!    interface (destination MAC rewrite), tc ingress (ARP replies), tc egress (source MAC),
//!    all through bpf_links;
//! 4. one AnyIP route `local POOL dev lo`, and promiscuous mode on the interface.
//!
//! [`Swarm`]'s `Drop` undoes all of it, in reverse order.
pub mod cgroup;
pub mod connect;
pub mod run;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};
use wirelab_common::maps;

use crate::ebpf::LoadRetrying as _;
use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{links::CgroupAttachMode, CgroupSockAddr, TcAttachType},
    Ebpf,
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use wirelab_common::swarm::{
    derive_mac, SwarmConfig, DEFAULT_MAC_PREFIX, MODE_CGROUP, MODE_PROCESS, NUM_STATS, STAT_NAMES,
};

use crate::{ebpf, netns, nl, runtime::bpf};

pub const STATE_DIR: &str = "/run/wirelab/swarm";
/// Every swarm cgroup is named `wirelab-swarm-PID-SUFFIX`.
pub const CGROUP_PREFIX: &str = "wirelab-swarm-";

/// The client addresses: the host addresses of a CIDR (network and broadcast addresses are
/// left out for prefixes shorter than /31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub net: Ipv4Net,
    pub first: u32,
    pub count: u32,
}

impl Pool {
    pub fn parse(s: &str) -> Result<Self> {
        let net: Ipv4Net = s
            .trim()
            .parse()
            .with_context(|| format!("--pool {s:?}: not an IPv4 CIDR such as 198.18.4.0/22"))?;
        if net.network() != net.addr() {
            bail!(
                "--pool {s}: host bits are set; did you mean {}/{}?",
                net.network(),
                net.prefix_len()
            );
        }
        if net.prefix_len() < 8 {
            bail!("--pool {s}: larger than a /8 is not supported");
        }
        let (first, last) = if net.prefix_len() >= 31 {
            (u32::from(net.network()), u32::from(net.broadcast()))
        } else {
            (u32::from(net.network()) + 1, u32::from(net.broadcast()) - 1)
        };
        Ok(Self {
            net,
            first,
            count: last - first + 1,
        })
    }

    /// The address of client `n` (0-based).
    pub fn addr(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.first + n)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(self.first) < self.count
    }
}

/// Parse a MAC prefix `02:57`: two bytes, the first locally administered and unicast.
pub fn parse_mac_prefix(s: &str) -> Result<[u8; 2]> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 2 {
        bail!("--mac-prefix {s:?}: give two bytes, e.g. 02:57");
    }
    let mut out = [0u8; 2];
    for (i, p) in parts.iter().enumerate() {
        out[i] = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .with_context(|| format!("--mac-prefix {s:?}: {p:?} is not a hex byte"))?;
    }
    if out[0] & 0x01 != 0 {
        bail!("--mac-prefix {s}: the first byte has the multicast bit set (use e.g. 02)");
    }
    if out[0] & 0x02 == 0 {
        bail!(
            "--mac-prefix {s}: the first byte lacks the locally administered bit 0x02 (use e.g. {:02x})",
            out[0] | 0x02
        );
    }
    Ok(out)
}

pub fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The MAC of a client address under `prefix`.
pub fn client_mac(prefix: [u8; 2], ip: Ipv4Addr) -> String {
    mac_string(derive_mac(prefix, ip.octets()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Identity {
    /// One cgroup per client; every process in it (and its children) is that client.
    Cgroup,
    /// Each process (TGID) that connects gets the next pool address.
    Process,
}

pub fn parse_identity(s: &str) -> Result<Identity, String> {
    match s {
        "cgroup" => Ok(Identity::Cgroup),
        "process" | "tgid" => Ok(Identity::Process),
        _ => Err(format!("{s:?}: use cgroup or process")),
    }
}

/// What the user asked for; validated by [`Swarm::setup`] before anything changes.
#[derive(Debug, Clone)]
pub struct Options {
    pub iface: String,
    /// The namespace already entered by the caller (recorded for cleanup).
    pub netns: Option<String>,
    pub pool: Pool,
    pub clients: u32,
    pub mac_prefix: [u8; 2],
    pub identity: Identity,
    /// A lab host namespace acting as server: its neighbour table limit is checked.
    pub server_netns: Option<String>,
    /// `gc_thresh3` of the namespace wirelab started in (host-wide when that is the initial
    /// one), read before entering `--netns`.
    pub host_gc_thresh3: Option<u32>,
}

impl Options {
    pub fn new(iface: &str, pool: Pool, clients: u32) -> Self {
        Self {
            iface: iface.to_string(),
            netns: None,
            pool,
            clients,
            mac_prefix: DEFAULT_MAC_PREFIX,
            identity: Identity::Cgroup,
            server_netns: None,
            host_gc_thresh3: own_gc_thresh3(),
        }
    }
}

/// What a run leaves in `/run/wirelab/swarm/RUN.json` until it has cleaned up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub run_id: String,
    pub pid: u32,
    pub netns: Option<String>,
    pub iface: String,
    pub pool: Pool,
    pub cgroup: PathBuf,
    /// True once the AnyIP route was added by this run.
    pub route: bool,
    /// True when this run turned promiscuous mode on (it was off).
    pub promisc_set: bool,
}

fn state_path(run_id: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{run_id}.json"))
}

fn write_state(s: &State) -> Result<()> {
    std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    let p = state_path(&s.run_id);
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
}

pub fn read_states() -> Vec<State> {
    let mut v = vec![];
    if let Ok(rd) = std::fs::read_dir(STATE_DIR) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "json") {
                if let Ok(b) = std::fs::read(e.path()) {
                    if let Ok(s) = serde_json::from_slice::<State>(&b) {
                        v.push(s);
                    }
                }
            }
        }
    }
    v
}

/// Facts gathered by the preflight checks.
#[derive(Debug, Clone, Serialize)]
pub struct Preflight {
    pub cgroup_root: PathBuf,
    pub ifindex: u32,
    pub iface_mac: [u8; 6],
    pub iface_addresses: Vec<String>,
    pub warnings: Vec<String>,
}

/// Every check that can be made without changing anything. Errors name what is wrong.
pub fn preflight(o: &Options) -> Result<Preflight> {
    if !nix::unistd::geteuid().is_root() {
        bail!("wirelab swarm needs root (cgroups, eBPF, routes); run it with sudo");
    }
    if o.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if o.clients > o.pool.count {
        bail!(
            "--clients {} is larger than the pool {} ({} addresses)",
            o.clients,
            o.pool.net,
            o.pool.count
        );
    }
    let ifaces = nl::with(None, |h| async move { nl::interfaces(&h).await })?;
    let Some(iface) = ifaces.iter().find(|i| i.name == o.iface) else {
        bail!(
            "no interface named {:?} in this network namespace{} (use --netns NAME for a lab host)",
            o.iface,
            o.netns
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    };
    let mut mac = [0u8; 6];
    let parts: Vec<u8> = iface
        .mac
        .split(':')
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    if parts.len() != 6 {
        bail!(
            "interface {} has no Ethernet address (swarm needs an Ethernet interface)",
            o.iface
        );
    }
    mac.copy_from_slice(&parts);
    if !iface.up {
        bail!("interface {} is down", o.iface);
    }
    let mut warnings = vec![];
    // The pool must not hold any address this namespace already has.
    let mut in_subnet = false;
    for i in &ifaces {
        for a in &i.addresses {
            let Ok(n) = a.parse::<Ipv4Net>() else {
                continue;
            };
            if o.pool.net.contains(&n.addr()) {
                bail!(
                    "--pool {} overlaps address {a} of interface {}: pick a range without this host's own addresses",
                    o.pool.net,
                    i.name
                );
            }
            if i.name == o.iface && n.contains(&o.pool.net) {
                in_subnet = true;
            }
        }
    }
    if !in_subnet {
        warnings.push(format!(
            "the pool {} is outside the subnets of {}: peers need an on-link route for it (e.g. `ip route add {} dev IFACE` on the server)",
            o.pool.net, o.iface, o.pool.net
        ));
    }
    // sysctls of this namespace.
    let rp = |k: &str| {
        netns::read_sysctl(&format!("net.ipv4.conf.{k}.rp_filter"))
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let rp_eff = rp("all").max(rp(&o.iface));
    if rp_eff == 1 {
        warnings.push(format!(
            "rp_filter is strict (1) on {}: replies to clients must arrive on {} (they do on one L2 segment)",
            o.iface, o.iface
        ));
    }
    if let Ok(v) = netns::read_sysctl(&format!("net.ipv4.conf.{}.arp_ignore", o.iface)) {
        if v == "8" {
            bail!(
                "arp_ignore=8 on {} makes the kernel drop all ARP; set it to 0",
                o.iface
            );
        }
    }
    if let Some(ns) = &o.server_netns {
        let g = server_gc_thresh3(ns, o.host_gc_thresh3)?;
        if let Some(g) = g.filter(|g| *g < o.clients) {
            warnings.push(format!(
                "server namespace {ns}: the neighbour table limit gc_thresh3={g} is below {} clients: expect \"neighbour table overflow\" there; raise net.ipv4.neigh.default.gc_thresh3 (host-wide: the table is shared by all namespaces)",
                o.clients
            ));
        }
    }
    let cgroup_root = cgroup::root()?;
    Ok(Preflight {
        cgroup_root,
        ifindex: iface.index,
        iface_mac: mac,
        iface_addresses: iface.addresses.clone(),
        warnings,
    })
}

pub const GC_THRESH3: &str = "net.ipv4.neigh.default.gc_thresh3";

/// Read this namespace's `gc_thresh3`, if it has one (only the initial namespace does).
pub fn own_gc_thresh3() -> Option<u32> {
    netns::read_sysctl(GC_THRESH3)
        .ok()
        .and_then(|v| v.parse().ok())
}

/// The neighbour table limit a lab server in namespace `ns` is held to. The ARP table is one
/// per host and Linux exposes `gc_thresh3` only in the initial namespace, so the host's value
/// (read before entering `--netns`) stands in when `ns` has none.
pub fn server_gc_thresh3(ns: &str, host: Option<u32>) -> Result<Option<u32>> {
    let own = netns::run_in(Some(ns), || Ok(own_gc_thresh3()))
        .with_context(|| format!("entering server namespace {ns}"))?;
    Ok(own.or(host))
}

/// A set-up swarm: programs attached, route and cgroups in place. Dropping it undoes all.
pub struct Swarm {
    pub opts: Options,
    pub state: State,
    pub pre: Preflight,
    ids: BpfHashMap<MapData, u64, u32>,
    socks: Option<BpfHashMap<MapData, u64, u32>>,
    stats: PerCpuArray<MapData, u64>,
    bpf: Option<Ebpf>,
    /// Where this process was in the cgroup tree before [`Swarm::enter_cgroup`].
    home_cgroup: Option<PathBuf>,
}

impl Swarm {
    /// Check everything, then set up. On error, whatever was made is removed again.
    pub fn setup(opts: Options) -> Result<Self> {
        crate::kernel::require(&[
            crate::kernel::feature::CGROUP_SOCK_ADDR_CGROUP_ID,
            crate::kernel::feature::BPF_LINK_XDP,
        ])?;
        let pre = preflight(&opts)?;
        for w in &pre.warnings {
            tracing::warn!("{w}");
        }
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let run_id = format!("{CGROUP_PREFIX}{pid}-{:x}", nanos & 0xffffff);
        let state = State {
            run_id: run_id.clone(),
            pid,
            netns: opts.netns.clone(),
            iface: opts.iface.clone(),
            pool: opts.pool,
            cgroup: pre.cgroup_root.join(&run_id),
            route: false,
            promisc_set: false,
        };
        write_state(&state)?;
        // Until `Swarm` exists, a failure cleans up through a partial teardown.
        let mut partial = Teardown {
            state: state.clone(),
        };
        let mut bpf = ebpf::load(ebpf::Object::Swarm)?;
        std::fs::create_dir(&state.cgroup)
            .with_context(|| format!("creating cgroup {}", state.cgroup.display()))?;
        let cfg = SwarmConfig {
            pool_first: opts.pool.first,
            pool_count: opts.pool.count,
            process_limit: opts.clients,
            ifindex: pre.ifindex,
            iface_mac: pre.iface_mac,
            mac_prefix: opts.mac_prefix,
            mode: match opts.identity {
                Identity::Cgroup => MODE_CGROUP,
                Identity::Process => MODE_PROCESS,
            },
            _pad: [0; 7],
        };
        {
            let mut c: Array<_, SwarmConfig> = Array::try_from(
                bpf.map_mut(maps::SWARM_CONFIG)
                    .context("SWARM_CONFIG missing")?,
            )?;
            c.set(0, cfg, 0).context("writing the swarm config map")?;
        }
        let cg = std::fs::File::open(&state.cgroup)
            .with_context(|| format!("opening cgroup {}", state.cgroup.display()))?;
        for name in ["swarm_connect4", "swarm_sendmsg4"] {
            let p: &mut CgroupSockAddr = bpf
                .program_mut(name)
                .with_context(|| format!("{name} missing"))?
                .try_into()?;
            p.load_retrying().with_context(|| {
                format!("loading {name} (the kernel needs cgroup sock_addr hooks and bpf_bind)")
            })?;
            p.attach(&cg, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", state.cgroup.display()))?;
        }
        let mode = bpf::attach_xdp(&mut bpf, "swarm_xdp", &opts.iface, None)?;
        tracing::debug!(%mode, "swarm_xdp attached");
        // TCX where the kernel has it (6.6+), a clsact filter before.
        let mut tc_mode = bpf::TcMode::Tcx;
        for (name, at) in [
            ("swarm_arp", TcAttachType::Ingress),
            ("swarm_egress", TcAttachType::Egress),
        ] {
            tc_mode = bpf::attach_tc(&mut bpf, name, &opts.iface, at)?;
        }

        // Network changes last; recorded in the state file before they are made.
        let pool = opts.pool.net;
        nl::with(None, move |h| async move {
            nl::add_local_route(&h, pool, "lo").await
        })
        .context("making the pool local (is another swarm run using this pool?)")?;
        partial.state.route = true;
        write_state(&partial.state)?;
        let iface = opts.iface.clone();
        let was = nl::with(None, move |h| async move {
            let was = nl::is_promisc(&h, &iface).await?;
            if !was {
                nl::set_promisc(&h, &iface, true).await?;
            }
            Ok(was)
        })?;
        partial.state.promisc_set = !was;
        write_state(&partial.state)?;
        let ids =
            BpfHashMap::try_from(bpf.take_map(maps::SWARM_IDS).context("SWARM_IDS missing")?)?;
        let socks = BpfHashMap::try_from(
            bpf.take_map(maps::SWARM_SOCKS)
                .context("SWARM_SOCKS missing")?,
        )?;
        let stats = PerCpuArray::try_from(
            bpf.take_map(maps::SWARM_STATS)
                .context("SWARM_STATS missing")?,
        )?;
        let state = partial.state.clone();
        // Set up completely: the guard's work now belongs to `Swarm`'s own Drop.
        #[allow(clippy::mem_forget, reason = "disarming the teardown guard on success")]
        std::mem::forget(partial);
        tracing::info!(
            run = %state.run_id,
            iface = %opts.iface,
            pool = %opts.pool.net,
            clients = opts.clients,
            tc = %tc_mode,
            "swarm ready"
        );
        Ok(Self {
            opts,
            state,
            pre,
            ids,
            socks: Some(socks),
            stats,
            bpf: Some(bpf),
            home_cgroup: None,
        })
    }

    /// Map the cgroup with id `cgid` (its inode) to client address `ip`.
    pub fn map_cgroup(&mut self, cgid: u64, ip: Ipv4Addr) -> Result<()> {
        self.ids
            .insert(cgid, u32::from(ip).to_be(), 0)
            .context("adding a client to the identity map")
    }

    pub fn unmap_cgroup(&mut self, cgid: u64) {
        let _ = self.ids.remove(&cgid);
    }

    /// Process mode: the addresses handed out so far.
    pub fn process_addresses(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self
            .ids
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, ip)| Ipv4Addr::from(u32::from_be(ip)))
            .collect();
        v.sort();
        v
    }

    pub fn take_socket_map(&mut self) -> Option<BpfHashMap<MapData, u64, u32>> {
        self.socks.take()
    }

    pub fn stats(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for i in 0..NUM_STATS {
            let v = bpf::sum(&self.stats, i).unwrap_or(0);
            m.insert(STAT_NAMES[i as usize].to_string(), v);
        }
        m
    }

    /// Move this very process into the run's cgroup (for `swarm connect`, whose sockets are
    /// mapped one by one by cookie).
    pub fn enter_cgroup(&mut self) -> Result<()> {
        let home = cgroup::own_cgroup(&self.pre.cgroup_root)?;
        let dir = self.state.cgroup.join("self");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        cgroup::move_pid(&dir, 0)?;
        self.home_cgroup = Some(home);
        Ok(())
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if let Some(home) = self.home_cgroup.take() {
            if let Err(e) = cgroup::move_pid(&home, 0) {
                tracing::warn!("moving back to cgroup {}: {e:#}", home.display());
            }
        }
        // Programs first (links close with the object), then the rest.
        drop(self.bpf.take());
        let t = Teardown {
            state: self.state.clone(),
        };
        drop(t);
    }
}

/// Undo what a state file says was done. Used by `Drop`, failed setups and `wirelab cleanup`.
struct Teardown {
    state: State,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Err(e) = teardown(&self.state, false) {
            tracing::warn!("swarm cleanup: {e:#}");
        }
    }
}

/// Remove the run's cgroups, route and promiscuous mode, then its state file. `other_ns`:
/// the caller is not inside the run's namespace (cleanup from the root namespace).
pub fn teardown(s: &State, other_ns: bool) -> Result<()> {
    let mut errs = vec![];
    if let Err(e) = cgroup::remove_tree(&s.cgroup) {
        errs.push(format!("{e:#}"));
    }
    let ns = if other_ns { s.netns.clone() } else { None };
    let ns_gone = other_ns && s.netns.as_ref().is_some_and(|n| !netns::exists(n));
    if !ns_gone && (s.route || s.promisc_set) {
        let (pool, iface, route, promisc) = (s.pool.net, s.iface.clone(), s.route, s.promisc_set);
        let r = nl::with(ns.as_deref(), move |h| async move {
            if route {
                nl::del_local_route(&h, pool, "lo").await?;
            }
            if promisc {
                // The interface may be gone with its namespace peer; not an error.
                if nl::index_of(&h, &iface).await.is_ok() {
                    nl::set_promisc(&h, &iface, false).await?;
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            errs.push(format!("{e:#}"));
        }
    }
    // A killed run on a kernel without TCX leaves its clsact filters: remove them by name.
    if other_ns && !ns_gone && !bpf::tcx_in_use() {
        let iface = s.iface.clone();
        let removed = netns::run_in(ns.as_deref(), move || {
            Ok(["swarm_arp", "swarm_egress"]
                .iter()
                .map(|p| bpf::detach_tc_filters(&iface, p))
                .sum::<usize>())
        });
        match removed {
            Ok(n) if n > 0 => {
                tracing::info!(iface = %s.iface, n, "removed clsact filters of a killed run");
            }
            Ok(_) => {}
            Err(e) => errs.push(format!("{e:#}")),
        }
    }
    if errs.is_empty() {
        let _ = std::fs::remove_file(state_path(&s.run_id));
        Ok(())
    } else {
        bail!("{}", errs.join("; "))
    }
}

/// `wirelab cleanup`: undo swarm runs whose process is gone; remove stray swarm cgroups.
/// With `dry_run`, only name them.
pub fn cleanup_stale(dry_run: bool) -> Result<Vec<String>> {
    let mut done = vec![];
    for s in read_states() {
        if crate::util::alive(s.pid) {
            continue;
        }
        if !dry_run {
            teardown(&s, true).with_context(|| format!("cleaning up swarm run {}", s.run_id))?;
        }
        done.push(s.run_id);
    }
    if let Ok(root) = cgroup::root_no_mount() {
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Some(rest) = name.strip_prefix(CGROUP_PREFIX) else {
                    continue;
                };
                let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
                // (A stale run's cgroup is named by its run id: listed above already.)
                if pid.is_some_and(crate::util::alive) || done.contains(&name) {
                    continue;
                }
                if !dry_run {
                    cgroup::remove_tree(&e.path())?;
                }
                done.push(name);
            }
        }
    }
    Ok(done)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The failures of a summary, one reason per line, counts aligned after `width` columns.
fn write_failures<N: std::fmt::Display>(
    out: &mut dyn std::io::Write,
    failures: &std::collections::BTreeMap<String, N>,
    width: usize,
) -> std::io::Result<()> {
    for (reason, n) in failures {
        writeln!(out, "    {reason:<width$} {n}")?;
    }
    Ok(())
}

/// The kernel counters of a summary on one line, `name=value` for each that is not zero.
fn write_kernel_stats(
    out: &mut dyn std::io::Write,
    stats: &std::collections::BTreeMap<String, u64>,
) -> std::io::Result<()> {
    let st: Vec<String> = stats
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    writeln!(out, "  kernel: {}", st.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools() {
        let p = Pool::parse("198.18.4.0/22").unwrap();
        assert_eq!(p.count, 1022);
        assert_eq!(p.addr(0), Ipv4Addr::new(198, 18, 4, 1));
        assert_eq!(p.addr(1021), Ipv4Addr::new(198, 18, 7, 254));
        assert!(p.contains(Ipv4Addr::new(198, 18, 5, 0)));
        assert!(!p.contains(Ipv4Addr::new(198, 18, 4, 0)));
        assert_eq!(Pool::parse("198.18.0.8/31").unwrap().count, 2);
        assert!(Pool::parse("198.18.4.1/22").is_err());
        assert!(Pool::parse("nonsense").is_err());
        assert!(Pool::parse("10.0.0.0/4").is_err());
    }

    #[test]
    fn mac_prefixes() {
        assert_eq!(parse_mac_prefix("02:57").unwrap(), [2, 0x57]);
        assert!(parse_mac_prefix("01:00").is_err());
        assert!(parse_mac_prefix("00:57").is_err());
        assert!(parse_mac_prefix("02").is_err());
        assert!(parse_mac_prefix("02:zz").is_err());
        assert_eq!(
            client_mac([2, 0x57], Ipv4Addr::new(198, 18, 4, 1)),
            "02:57:c6:12:04:01"
        );
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }
}
