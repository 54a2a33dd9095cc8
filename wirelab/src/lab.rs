//! `wirelab lab`: testbeds of network namespaces described by a TOML topology.
//!
//! The topology is parsed and validated completely before anything is created; a bad file is
//! refused with the offending field named. `up` writes a state file first
//! (`/run/wirelab/labs/NAME.json`) so `down` can remove everything even after `up` crashed.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{netns, nl};

pub const STATE_DIR: &str = "/run/wirelab/labs";
pub const DEFAULT_LAB: &str = "wirelab";

/// The default topology: a bump in the wire.
/// client (198.18.0.1/24) — wan (to-client, to-server, bridged) — server (198.18.0.2/24)
pub const DEFAULT_TOPOLOGY: &str = r#"
# wirelab default lab: client — wan (bridge) — server on one 198.18.0.0/24 segment.
[[host]]
name = "client"

[[host]]
name = "wan"
[[host.bridge]]
name = "br0"
ports = ["to-client", "to-server"]

[[host]]
name = "server"

[[link]]
a = { host = "client", iface = "eth0", addresses = ["198.18.0.1/24"], tx_checksum = false }
b = { host = "wan", iface = "to-client" }

[[link]]
a = { host = "server", iface = "eth0", addresses = ["198.18.0.2/24"], tx_checksum = false }
b = { host = "wan", iface = "to-server" }
"#;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub host: Vec<Host>,
    #[serde(default)]
    pub link: Vec<Link>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub name: String,
    /// `net.*` sysctls set inside the namespace.
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    #[serde(default)]
    pub bridge: Vec<Bridge>,
    #[serde(default)]
    pub route: Vec<Route>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bridge {
    pub name: String,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// A CIDR or `default`.
    pub to: String,
    pub via: Option<String>,
    pub dev: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub host: String,
    pub iface: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Interface MAC address (`aa:bb:cc:dd:ee:ff`); random when unset.
    pub mac: Option<String>,
    /// TX checksum offload (ethtool `tx`); `false` for endpoints whose traffic crosses
    /// `wirelab wan` (AF_XDP passes veth's partial checksums on unfinished).
    pub tx_checksum: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub a: Endpoint,
    pub b: Endpoint,
    pub mtu: Option<u32>,
}

/// A validation failure naming the field, e.g. `link[1].a.iface`.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn ferr(field: impl Into<String>, reason: impl Into<String>) -> anyhow::Error {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
    .into()
}

pub fn validate_lab_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        bail!(
            "lab name {name:?}: use 1-24 characters a-z, 0-9, '-' or '_', starting with a letter or digit"
        );
    }
    Ok(())
}

fn check_ifname(field: &str, n: &str) -> Result<()> {
    if n.is_empty() || n.len() > 15 {
        return Err(ferr(
            field,
            format!("{n:?} must be 1 to 15 bytes (Linux IFNAMSIZ)"),
        ));
    }
    if n == "." || n == ".." || n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(ferr(field, format!("{n:?} is not a valid interface name")));
    }
    Ok(())
}

fn check_host_name(field: &str, n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 32
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(ferr(
            field,
            format!("{n:?}: use 1-32 characters a-z, A-Z, 0-9, '-' or '_'"),
        ));
    }
    Ok(())
}

fn parse_mac(field: &str, s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(ferr(
            field,
            format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
        ));
    }
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| {
            ferr(
                field,
                format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
            )
        })?;
    }
    if mac[0] & 1 == 1 {
        return Err(ferr(
            field,
            format!("{s:?} is a multicast (group) address; an interface needs a unicast MAC"),
        ));
    }
    if mac == [0; 6] {
        return Err(ferr(
            field,
            format!("{s:?} is the all-zero address, which the kernel refuses"),
        ));
    }
    Ok(mac)
}

/// The `addresses` list of one interface at `base`: each one assignable, none twice.
fn check_addresses(base: &str, addresses: &[String]) -> Result<Vec<IpNet>> {
    let mut seen = BTreeSet::new();
    let mut nets = vec![];
    for (j, a) in addresses.iter().enumerate() {
        let f = format!("{base}.addresses[{j}]");
        let net = parse_iface_addr(&f, a)?;
        if !seen.insert(net.addr()) {
            return Err(ferr(f, format!("{} is listed twice", net.addr())));
        }
        nets.push(net);
    }
    Ok(nets)
}

/// An interface address as the kernel accepts it: not multicast, unspecified or broadcast.
fn parse_iface_addr(field: &str, a: &str) -> Result<IpNet> {
    let net: IpNet = a.parse().map_err(|_| {
        ferr(
            field,
            format!("{a:?} is not an address with prefix (198.18.0.1/24)"),
        )
    })?;
    let ip = net.addr();
    let why = if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip == IpAddr::from([255, 255, 255, 255]) {
        Some("the broadcast address")
    } else {
        None
    };
    if let Some(why) = why {
        return Err(ferr(
            field,
            format!("{a:?} is {why}, which cannot be assigned to an interface"),
        ));
    }
    Ok(net)
}

/// A gateway the kernel accepts: on a prefix of `dev` (or of any interface of the host without
/// `dev`), not one of the host's own addresses; IPv6 link-local gateways need `dev`.
fn check_gateway(
    field: &str,
    host: &str,
    g: IpAddr,
    dev: Option<&str>,
    nets: &[(String, IpNet)],
) -> Result<()> {
    if nets.iter().any(|(_, n)| n.addr() == g) {
        return Err(ferr(
            field,
            format!("{g} is an address of host {host:?} itself"),
        ));
    }
    if let IpAddr::V6(v6) = g {
        if v6.segments()[0] & 0xffc0 == 0xfe80 {
            return match dev {
                Some(_) => Ok(()),
                None => Err(ferr(
                    field,
                    format!("{g} is link-local: name the interface with `dev`"),
                )),
            };
        }
    }
    let candidates: Vec<&IpNet> = nets
        .iter()
        .filter(|(i, _)| dev.is_none_or(|d| d == i))
        .map(|(_, n)| n)
        .collect();
    if candidates.iter().any(|n| n.contains(&g)) {
        return Ok(());
    }
    let on = match dev {
        Some(d) => format!("interface {d:?} of host {host:?}"),
        None => format!("any link of host {host:?}"),
    };
    let have: Vec<String> = candidates.iter().map(|n| n.trunc().to_string()).collect();
    Err(ferr(
        field,
        format!(
            "{g} is on no prefix of {on} (its prefixes: {}); the kernel could not reach it",
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            }
        ),
    ))
}

/// The device named in a per-device sysctl (`net.ipv4.conf.DEV.x`, `net.ipv6.conf.DEV.x`,
/// `net.ipv4.neigh.DEV.x`, `net.ipv6.neigh.DEV.x`), with the key rewritten to `default` so
/// it can be looked up before the device exists.
fn sysctl_device(key: &str) -> Option<(&str, String)> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.len() >= 5
        && parts[0] == "net"
        && (parts[1] == "ipv4" || parts[1] == "ipv6")
        && (parts[2] == "conf" || parts[2] == "neigh")
    {
        let mut generic = parts.clone();
        generic[3] = "default";
        return Some((parts[3], generic.join(".")));
    }
    None
}

/// Whitespace-separated integers (`1`, `4096 87380 6291456`): the shape of numeric sysctls.
fn int_fields(v: &str) -> Option<usize> {
    let f: Vec<&str> = v.split_whitespace().collect();
    (!f.is_empty() && f.iter().all(|x| x.parse::<i64>().is_ok())).then_some(f.len())
}

impl Topology {
    pub fn default_topology() -> Self {
        Self::parse(DEFAULT_TOPOLOGY).expect("the embedded default topology is valid")
    }

    /// Parse and validate. Errors name the field at fault.
    pub fn parse(text: &str) -> Result<Self> {
        let t: Topology = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        t.validate()?;
        Ok(t)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::util::read_user_file(path, crate::util::limit::CONFIG)?;
        Self::parse(&text).with_context(|| format!("invalid topology {}", path.display()))
    }

    pub fn validate(&self) -> Result<()> {
        if self.host.is_empty() {
            return Err(ferr("host", "a topology needs at least one [[host]]"));
        }
        // host name -> set of interface names
        let mut ifaces: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        // host name -> (interface, prefix) of every address it gets
        let mut connected: BTreeMap<&str, Vec<(String, IpNet)>> = BTreeMap::new();
        for (i, h) in self.host.iter().enumerate() {
            check_host_name(&format!("host[{i}].name"), &h.name)?;
            if ifaces.insert(&h.name, BTreeSet::new()).is_some() {
                return Err(ferr(
                    format!("host[{i}].name"),
                    format!("duplicate host {:?}", h.name),
                ));
            }
            for (k, v) in &h.sysctl {
                let f = format!("host[{i}].sysctl.\"{k}\"");
                if !k.starts_with("net.") {
                    return Err(ferr(
                        f,
                        "only net.* sysctls are per-namespace; others would change the whole machine",
                    ));
                }
                if k.contains("..")
                    || !k
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                {
                    return Err(ferr(f, "invalid sysctl name"));
                }
                if v.contains('\n') || v.is_empty() {
                    return Err(ferr(f, "value must be a non-empty single line"));
                }
            }
        }
        for (i, l) in self.link.iter().enumerate() {
            for (side, ep) in [("a", &l.a), ("b", &l.b)] {
                let base = format!("link[{i}].{side}");
                let Some(set) = ifaces.get_mut(ep.host.as_str()) else {
                    return Err(ferr(
                        format!("{base}.host"),
                        format!("no [[host]] named {:?}", ep.host),
                    ));
                };
                check_ifname(&format!("{base}.iface"), &ep.iface)?;
                if ep.iface == "lo" || !set.insert(ep.iface.clone()) {
                    return Err(ferr(
                        format!("{base}.iface"),
                        format!("host {:?} already has an interface {:?}", ep.host, ep.iface),
                    ));
                }
                let nets = check_addresses(&base, &ep.addresses)?;
                let on = connected.entry(ep.host.as_str()).or_default();
                on.extend(nets.into_iter().map(|n| (ep.iface.clone(), n)));
                if let Some(m) = &ep.mac {
                    parse_mac(&format!("{base}.mac"), m)?;
                }
            }
            if let Some(m) = l.mtu {
                if !(68..=65535).contains(&m) {
                    return Err(ferr(format!("link[{i}].mtu"), "must be 68..=65535"));
                }
            }
        }
        for (i, h) in self.host.iter().enumerate() {
            let set = ifaces.get(h.name.as_str()).cloned().unwrap_or_default();
            let mut all = set.clone();
            let mut used_ports = BTreeSet::new();
            for (j, b) in h.bridge.iter().enumerate() {
                let base = format!("host[{i}].bridge[{j}]");
                check_ifname(&format!("{base}.name"), &b.name)?;
                if !all.insert(b.name.clone()) {
                    return Err(ferr(
                        format!("{base}.name"),
                        format!("host {:?} already has an interface {:?}", h.name, b.name),
                    ));
                }
                for (k, p) in b.ports.iter().enumerate() {
                    if !set.contains(p) {
                        return Err(ferr(
                            format!("{base}.ports[{k}]"),
                            format!("host {:?} has no link interface {p:?}", h.name),
                        ));
                    }
                    if !used_ports.insert(p.clone()) {
                        return Err(ferr(
                            format!("{base}.ports[{k}]"),
                            format!("{p:?} is already a port of a bridge"),
                        ));
                    }
                }
                let nets = check_addresses(&base, &b.addresses)?;
                let on = connected.entry(h.name.as_str()).or_default();
                on.extend(nets.into_iter().map(|n| (b.name.clone(), n)));
            }
            for k in h.sysctl.keys() {
                if let Some((dev, _)) = sysctl_device(k) {
                    if !matches!(dev, "all" | "default" | "lo") && !all.contains(dev) {
                        return Err(ferr(
                            format!("host[{i}].sysctl.\"{k}\""),
                            format!("host {:?} has no interface {dev:?}", h.name),
                        ));
                    }
                }
            }
            let nets = connected.get(h.name.as_str()).cloned().unwrap_or_default();
            for (j, r) in h.route.iter().enumerate() {
                let base = format!("host[{i}].route[{j}]");
                let to_v6 = if r.to == "default" {
                    None
                } else {
                    let to = r.to.parse::<IpNet>().map_err(|_| {
                        ferr(
                            format!("{base}.to"),
                            format!("{:?}: use a CIDR or \"default\"", r.to),
                        )
                    })?;
                    if to != to.trunc() {
                        return Err(ferr(
                            format!("{base}.to"),
                            format!("{:?} has host bits set; the prefix is {}", r.to, to.trunc()),
                        ));
                    }
                    Some(to.addr().is_ipv6())
                };
                if let Some(v) = &r.via {
                    let g: IpAddr = v.parse().map_err(|_| {
                        ferr(format!("{base}.via"), format!("{v:?} is not an IP address"))
                    })?;
                    if to_v6.is_some_and(|t| t != g.is_ipv6()) {
                        return Err(ferr(
                            format!("{base}.via"),
                            "address family differs from `to`",
                        ));
                    }
                    check_gateway(&format!("{base}.via"), &h.name, g, r.dev.as_deref(), &nets)?;
                }
                if let Some(d) = &r.dev {
                    if !all.contains(d) {
                        return Err(ferr(
                            format!("{base}.dev"),
                            format!("host {:?} has no interface {d:?}", h.name),
                        ));
                    }
                }
                if r.via.is_none() && r.dev.is_none() {
                    return Err(ferr(base, "a route needs `via` or `dev`"));
                }
            }
        }
        self.check_segments()
    }

    /// No address and no MAC twice on one layer-2 segment (interfaces joined by links and
    /// bridges): the kernel takes both, and the lab would answer ARP from two places.
    /// (The same address on two separate segments is allowed: networks behind routers.)
    fn check_segments<'t>(&'t self) -> Result<()> {
        // Union-find over the interfaces, by (host, interface) name.
        type Iface<'a> = (&'a str, &'a str);
        fn root<'a>(p: &BTreeMap<Iface<'a>, Iface<'a>>, mut k: Iface<'a>) -> Iface<'a> {
            while let Some(&up) = p.get(&k).filter(|up| **up != k) {
                k = up;
            }
            k
        }
        let mut parent: BTreeMap<Iface<'t>, Iface<'t>> = BTreeMap::new();
        let mut join = |x: Iface<'t>, y: Iface<'t>| {
            let (rx, ry) = (root(&parent, x), root(&parent, y));
            if rx != ry {
                parent.insert(rx, ry);
            }
        };
        for l in &self.link {
            join((&l.a.host, &l.a.iface), (&l.b.host, &l.b.iface));
        }
        for h in &self.host {
            for b in &h.bridge {
                for port in &b.ports {
                    join((&h.name, &b.name), (&h.name, port));
                }
            }
        }
        // Every interface with addresses or a MAC: its field, segment, addresses and MAC.
        let mut ifaces: Vec<(String, Iface<'t>, &'t [String], Option<&'t str>)> = vec![];
        for (i, l) in self.link.iter().enumerate() {
            for (side, ep) in [("a", &l.a), ("b", &l.b)] {
                let key = (ep.host.as_str(), ep.iface.as_str());
                ifaces.push((
                    format!("link[{i}].{side}"),
                    root(&parent, key),
                    &ep.addresses,
                    ep.mac.as_deref(),
                ));
            }
        }
        for (i, h) in self.host.iter().enumerate() {
            for (j, b) in h.bridge.iter().enumerate() {
                let key = (h.name.as_str(), b.name.as_str());
                ifaces.push((
                    format!("host[{i}].bridge[{j}]"),
                    root(&parent, key),
                    &b.addresses,
                    None,
                ));
            }
        }
        // (segment, address) and (segment, MAC) -> the field that has it first.
        let mut addrs: BTreeMap<(Iface<'t>, IpAddr), String> = BTreeMap::new();
        let mut macs: BTreeMap<(Iface<'t>, [u8; 6]), String> = BTreeMap::new();
        for (base, seg, addresses, mac) in ifaces {
            for (j, a) in addresses.iter().enumerate() {
                let f = format!("{base}.addresses[{j}]");
                let ip = parse_iface_addr(&f, a)?.addr();
                if let Some(first) = addrs.get(&(seg, ip)) {
                    return Err(ferr(
                        f,
                        format!("{ip} is already {first}'s, on the same segment"),
                    ));
                }
                addrs.insert((seg, ip), f);
            }
            if let Some(m) = mac {
                let f = format!("{base}.mac");
                let mac = parse_mac(&f, m)?;
                if let Some(first) = macs.get(&(seg, mac)) {
                    return Err(ferr(
                        f,
                        format!("{m} is already {first}'s, on the same segment"),
                    ));
                }
                macs.insert((seg, mac), f);
            }
        }
        Ok(())
    }
}

impl Topology {
    /// Checks only the running kernel can answer, made before anything is created (by
    /// `lab up --check` and by `up`): every sysctl exists here (per-device keys are looked up
    /// under `default`), numeric sysctls get numbers, and, as root, every value is written
    /// once in a throwaway namespace that vanishes with its thread, so a value the kernel
    /// refuses names its field here instead of failing half-way through `up`.
    pub fn check_kernel(&self) -> Result<()> {
        let mut trials = vec![];
        for (i, h) in self.host.iter().enumerate() {
            for (k, v) in &h.sysctl {
                let f = format!("host[{i}].sysctl.\"{k}\"");
                let generic = sysctl_device(k).map_or_else(|| k.clone(), |(_, g)| g);
                let path = Path::new("/proc/sys").join(generic.replace('.', "/"));
                if !path.is_file() {
                    return Err(ferr(f, "this kernel has no such sysctl"));
                }
                // Write-only knobs (route flush) cannot be read: nothing to compare with.
                if let Ok(cur) = fs::read_to_string(&path) {
                    if let Some(n) = int_fields(&cur) {
                        if int_fields(v) != Some(n) {
                            return Err(ferr(
                                f,
                                format!(
                                    "{v:?}: the kernel expects {n} integer{} here (now {:?})",
                                    if n == 1 { "" } else { "s" },
                                    cur.trim()
                                ),
                            ));
                        }
                    }
                }
                trials.push((f, generic, v.clone()));
            }
        }
        if trials.is_empty() || !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        std::thread::scope(|s| {
            s.spawn(move || -> Result<()> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("a throwaway namespace to try the sysctls in")?;
                for (f, key, v) in trials {
                    let p = Path::new("/proc/sys").join(key.replace('.', "/"));
                    if !p.is_file() {
                        return Err(ferr(
                            f,
                            "this sysctl is not per-namespace: it would change the whole machine",
                        ));
                    }
                    if let Err(e) = fs::write(&p, &v) {
                        return Err(ferr(f, format!("the kernel refuses {v:?} ({e})")));
                    }
                }
                Ok(())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("sysctl trial thread panicked"))?
        })
    }
}

/// What `up` records before creating anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    /// host name -> namespace name
    pub namespaces: BTreeMap<String, String>,
    pub topology: Topology,
    pub pid: u32,
    pub complete: bool,
    pub created_unix: u64,
}

pub fn ns_name(lab: &str, host: &str) -> String {
    format!("{lab}-{host}")
}

fn state_path(lab: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{lab}.json"))
}

pub fn read_state(lab: &str) -> Result<Option<LabState>> {
    let p = state_path(lab);
    match fs::read_to_string(&p) {
        Ok(s) => Ok(Some(
            serde_json::from_str(&s).with_context(|| format!("parsing {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn write_state(s: &LabState) -> Result<()> {
    fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    let p = state_path(&s.name);
    let tmp = p.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(s)?)?;
    fs::rename(&tmp, &p)?;
    Ok(())
}

pub fn list_labs() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(STATE_DIR)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    n.strip_suffix(".json").map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Bring a lab up. On any failure, everything created so far is removed again.
pub fn up(lab: &str, topo: &Topology) -> Result<LabState> {
    validate_lab_name(lab)?;
    topo.validate()?;
    topo.check_kernel()?;
    if read_state(lab)?.is_some() {
        bail!("lab {lab:?} is already up (`wirelab lab down --name {lab}` removes it)");
    }
    let namespaces: BTreeMap<String, String> = topo
        .host
        .iter()
        .map(|h| (h.name.clone(), ns_name(lab, &h.name)))
        .collect();
    for ns in namespaces.values() {
        if netns::path(ns).exists() {
            bail!("network namespace {ns:?} already exists; refusing to reuse it");
        }
    }
    let mut state = LabState {
        name: lab.to_string(),
        namespaces,
        topology: topo.clone(),
        pid: std::process::id(),
        complete: false,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    write_state(&state)?;
    match build(&state) {
        Ok(()) => {
            state.complete = true;
            write_state(&state)?;
            Ok(state)
        }
        Err(e) => {
            tracing::warn!("lab {lab}: creation failed, removing what was made");
            let _ = down(lab);
            Err(e)
        }
    }
}

fn build(state: &LabState) -> Result<()> {
    let topo = &state.topology;
    let ns = |h: &str| state.namespaces[h].clone();
    for h in &topo.host {
        let n = ns(&h.name);
        netns::create(&n)?;
        nl::with(Some(&n), |hd| async move {
            nl::set_up(&hd, "lo").await?;
            Ok(())
        })?;
    }
    for (i, l) in topo.link.iter().enumerate() {
        let peer_ns = netns::open(&ns(&l.b.host))?;
        let (a, b) = (l.a.clone(), l.b.clone());
        let mtu = l.mtu;
        nl::with(Some(&ns(&l.a.host)), |h| async move {
            nl::add_veth(&h, &a.iface, &b.iface, Some(&peer_ns)).await?;
            Ok(())
        })?;
        for (side, ep) in [("a", &l.a), ("b", &l.b)] {
            let ep = ep.clone();
            let base = format!("link[{i}].{side}");
            nl::with(Some(&ns(&ep.host)), |h| async move {
                if let Some(m) = &ep.mac {
                    let mac = parse_mac("mac", m)?;
                    let idx = nl::index_of(&h, &ep.iface).await?;
                    h.link()
                        .set(
                            rtnetlink::LinkUnspec::new_with_index(idx)
                                .address(mac.to_vec())
                                .build(),
                        )
                        .execute()
                        .await
                        .with_context(|| format!("{base}.mac: setting MAC of {}", ep.iface))?;
                }
                if let Some(m) = mtu {
                    nl::set_mtu(&h, &ep.iface, m).await?;
                }
                nl::set_up(&h, &ep.iface).await?;
                if let Some(on) = ep.tx_checksum {
                    nl::set_tx_checksum(&ep.iface, on)?;
                }
                for (j, a) in ep.addresses.iter().enumerate() {
                    nl::add_address(&h, &ep.iface, a.parse()?)
                        .await
                        .with_context(|| format!("{base}.addresses[{j}]"))?;
                }
                Ok(())
            })?;
        }
    }
    for (i, host) in topo.host.iter().enumerate() {
        let host = host.clone();
        nl::with(Some(&ns(&host.name)), |h| async move {
            for b in &host.bridge {
                nl::add_bridge(&h, &b.name).await?;
                for p in &b.ports {
                    nl::set_master(&h, p, &b.name).await?;
                }
                nl::set_up(&h, &b.name).await?;
                for a in &b.addresses {
                    nl::add_address(&h, &b.name, a.parse()?).await?;
                }
            }
            for (j, r) in host.route.iter().enumerate() {
                let field = format!("host[{i}].route[{j}]");
                let to = if r.to == "default" {
                    None
                } else {
                    Some(r.to.parse::<IpNet>()?)
                };
                let via: Option<IpAddr> = r.via.as_deref().map(str::parse).transpose()?;
                let v6 = to.map(|t| t.addr().is_ipv6()).or(via.map(|v| v.is_ipv6()));
                nl::add_route(&h, to, via, r.dev.as_deref(), v6.unwrap_or(false))
                    .await
                    .context(field)?;
            }
            Ok(())
        })?;
        // Sysctls once every interface (bridges too) exists, so per-device keys
        // (net.ipv4.conf.eth0.*) work.
        let sysctls = topo.host[i].sysctl.clone();
        netns::run_in(Some(&ns(&topo.host[i].name)), move || {
            for (k, v) in &sysctls {
                netns::write_sysctl(k, v).with_context(|| format!("host[{i}].sysctl.\"{k}\""))?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// The lab's namespaces that are there: every name with a file under /run/netns, also one a
/// killed `up` made but never mounted. [`down`] removes these.
pub fn present_namespaces(state: &LabState) -> impl Iterator<Item = &String> {
    state
        .namespaces
        .values()
        .filter(|ns| netns::path(ns).exists())
}

/// Remove everything a lab's `up` made (also a half-made lab). Returns the namespaces removed.
pub fn down(lab: &str) -> Result<Vec<String>> {
    validate_lab_name(lab)?;
    let Some(state) = read_state(lab)? else {
        bail!("no lab named {lab:?} is up (labs: {:?})", list_labs());
    };
    let mut removed = vec![];
    let mut errors = vec![];
    for ns in present_namespaces(&state) {
        match netns::delete(ns, Duration::from_secs(2)) {
            Ok(()) => removed.push(ns.clone()),
            Err(e) => errors.push(format!("{ns}: {e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("lab {lab}: could not remove {}", errors.join("; "));
    }
    fs::remove_file(state_path(lab)).with_context(|| format!("removing state of lab {lab}"))?;
    Ok(removed)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: String,
    pub netns: String,
    pub present: bool,
    pub processes: usize,
    pub interfaces: Vec<nl::IfaceInfo>,
}

/// One lab in `lab status` (`--json`: a list of these).
#[derive(Debug, Serialize, Deserialize)]
pub struct LabStatus {
    pub name: String,
    pub complete: bool,
    pub hosts: Vec<HostStatus>,
}

pub fn status(lab: &str) -> Result<LabStatus> {
    let Some(state) = read_state(lab)? else {
        bail!("no lab named {lab:?} is up");
    };
    let mut hosts = vec![];
    for (host, ns) in &state.namespaces {
        let present = netns::exists(ns);
        let interfaces = if present {
            nl::with(Some(ns), |h| async move { nl::interfaces(&h).await })?
        } else {
            vec![]
        };
        hosts.push(HostStatus {
            host: host.clone(),
            netns: ns.clone(),
            present,
            processes: netns::pids_in(ns).len(),
            interfaces,
        });
    }
    Ok(LabStatus {
        name: lab.to_string(),
        complete: state.complete,
        hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topology_is_valid() {
        let t = Topology::default_topology();
        assert_eq!(t.host.len(), 3);
        assert_eq!(t.link.len(), 2);
    }

    fn err_of(s: &str) -> String {
        format!("{:#}", Topology::parse(s).unwrap_err())
    }

    #[test]
    fn errors_name_the_field() {
        let base = "[[host]]\nname = \"a\"\n[[host]]\nname = \"b\"\n";
        let e = err_of(&format!(
            "{base}[[link]]\na = {{ host = \"a\", iface = \"eth0\" }}\nb = {{ host = \"c\", iface = \"eth0\" }}\n"
        ));
        assert!(e.contains("link[0].b.host"), "{e}");
        let e = err_of(&format!(
            "{base}[[link]]\na = {{ host = \"a\", iface = \"this-name-is-too-long\" }}\nb = {{ host = \"b\", iface = \"eth0\" }}\n"
        ));
        assert!(e.contains("link[0].a.iface"), "{e}");
        let e = err_of(&format!(
            "{base}[[link]]\na = {{ host = \"a\", iface = \"e0\", addresses = [\"198.18.0.300/24\"] }}\nb = {{ host = \"b\", iface = \"e0\" }}\n"
        ));
        assert!(e.contains("link[0].a.addresses[0]"), "{e}");
        let e = err_of("[[host]]\nname = \"a\"\nsysctl = { \"kernel.pid_max\" = \"1\" }\n");
        assert!(e.contains("host[0].sysctl"), "{e}");
        let e = err_of("[[host]]\nname = \"a\"\ncolour = \"red\"\n");
        assert!(e.contains("colour"), "{e}");
        let e =
            err_of("[[host]]\nname = \"a\"\n[[host.bridge]]\nname = \"br0\"\nports = [\"x\"]\n");
        assert!(e.contains("host[0].bridge[0].ports[0]"), "{e}");
        let e = err_of("[[host]]\nname = \"a\"\n[[host.route]]\nto = \"10.0.0.0/8\"\n");
        assert!(e.contains("host[0].route[0]"), "{e}");
        let e = err_of("");
        assert!(e.contains("host"), "{e}");
    }

    /// Each of these once passed `--check` and then failed in `up` with a bare kernel error.
    const REFUSED_BY_KERNEL_ONCE: &[(&str, &str)] = &[
        (
            "[[host]]\nname = \"a\"\nsysctl = { \"net.ipv4.ip_forward\" = \"banana\" }\n",
            "host[0].sysctl.\"net.ipv4.ip_forward\"",
        ),
        (
            "[[host]]\nname = \"a\"\nsysctl = { \"net.ipv4.no_such_knob\" = \"1\" }\n",
            "host[0].sysctl.\"net.ipv4.no_such_knob\"",
        ),
        (
            "[[host]]\nname = \"a\"\n[[host]]\nname = \"b\"\n[[link]]\na = { host = \"a\", iface = \"e0\", mac = \"00:00:00:00:00:00\" }\nb = { host = \"b\", iface = \"e0\" }\n",
            "link[0].a.mac",
        ),
        (
            "[[host]]\nname = \"a\"\n[[host]]\nname = \"b\"\n[[link]]\na = { host = \"a\", iface = \"e0\" }\nb = { host = \"b\", iface = \"e0\", mac = \"01:00:5e:00:00:01\" }\n",
            "link[0].b.mac",
        ),
        (
            "[[host]]\nname = \"a\"\n[[host]]\nname = \"b\"\n[[link]]\na = { host = \"a\", iface = \"e0\", addresses = [\"224.0.0.1/24\"] }\nb = { host = \"b\", iface = \"e0\" }\n",
            "link[0].a.addresses[0]",
        ),
        (
            "[[host]]\nname = \"a\"\n[[host.route]]\nto = \"198.19.0.0/16\"\nvia = \"198.18.0.254\"\n[[host]]\nname = \"b\"\n[[link]]\na = { host = \"a\", iface = \"e0\", addresses = [\"198.18.1.1/24\"] }\nb = { host = \"b\", iface = \"e0\" }\n",
            "host[0].route[0].via",
        ),
    ];

    #[test]
    fn an_address_or_mac_twice_on_one_segment_is_refused() {
        // Three hosts on one bridge (host "sw"), and a fourth behind "a" on a link of its own.
        let lab = |a: &str, b: &str, c: &str, d: &str| {
            format!(
                "[[host]]\nname = \"a\"\n[[host]]\nname = \"b\"\n[[host]]\nname = \"c\"\n\
                 [[host]]\nname = \"d\"\n[[host]]\nname = \"sw\"\n[[host.bridge]]\nname = \"br0\"\n\
                 ports = [\"pa\", \"pb\", \"pc\"]\n\
                 [[link]]\na = {{ host = \"a\", iface = \"e0\", {a} }}\nb = {{ host = \"sw\", iface = \"pa\" }}\n\
                 [[link]]\na = {{ host = \"b\", iface = \"e0\", {b} }}\nb = {{ host = \"sw\", iface = \"pb\" }}\n\
                 [[link]]\na = {{ host = \"c\", iface = \"e0\", {c} }}\nb = {{ host = \"sw\", iface = \"pc\" }}\n\
                 [[link]]\na = {{ host = \"a\", iface = \"e1\", addresses = [\"198.18.9.1/24\"] }}\n\
                 b = {{ host = \"d\", iface = \"e0\", {d} }}\n"
            )
        };
        let ok = lab(
            "addresses = [\"198.18.0.1/24\"], mac = \"02:00:00:00:00:01\"",
            "addresses = [\"198.18.0.2/24\"], mac = \"02:00:00:00:00:02\"",
            "addresses = [\"198.18.0.3/24\"]",
            // The same address and MAC as b's, on another segment: allowed.
            "addresses = [\"198.18.0.2/24\"], mac = \"02:00:00:00:00:02\"",
        );
        Topology::parse(&ok).unwrap();
        let e = format!(
            "{:#}",
            Topology::parse(&lab(
                "addresses = [\"198.18.0.1/24\"]",
                "addresses = [\"198.18.0.2/24\"]",
                "addresses = [\"198.18.0.9/24\", \"198.18.0.1/24\"]",
                "addresses = [\"198.18.9.2/24\"]",
            ))
            .unwrap_err()
        );
        assert!(
            e.contains("link[2].a.addresses[1]") && e.contains("link[0].a.addresses[0]"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            Topology::parse(&lab(
                "mac = \"02:00:00:00:00:01\"",
                "mac = \"02:00:00:00:00:01\"",
                "addresses = [\"198.18.0.3/24\"]",
                "addresses = [\"198.18.9.2/24\"]",
            ))
            .unwrap_err()
        );
        assert!(e.contains("link[1].a.mac"), "{e}");
    }

    fn full_check(s: &str) -> Result<Topology> {
        let t = Topology::parse(s)?;
        t.check_kernel()?;
        Ok(t)
    }

    #[test]
    fn what_the_kernel_would_refuse_is_refused_first() {
        for (text, field) in REFUSED_BY_KERNEL_ONCE {
            let e = format!("{:#}", full_check(text).unwrap_err());
            assert!(e.contains(field), "expected {field} in: {e}");
        }
        // The same shapes done right pass.
        let ok = "[[host]]\nname = \"a\"\nsysctl = { \"net.ipv4.ip_forward\" = \"1\", \"net.ipv4.conf.e0.rp_filter\" = \"0\", \"net.ipv4.tcp_rmem\" = \"4096 131072 6291456\" }\n[[host.route]]\nto = \"198.19.0.0/16\"\nvia = \"198.18.1.254\"\n[[host]]\nname = \"b\"\n[[link]]\na = { host = \"a\", iface = \"e0\", addresses = [\"198.18.1.1/24\"], mac = \"02:00:00:00:00:01\" }\nb = { host = \"b\", iface = \"e0\" }\n";
        full_check(ok).unwrap();
        // A per-device sysctl for a device the host does not have.
        let e = err_of(
            "[[host]]\nname = \"a\"\nsysctl = { \"net.ipv4.conf.eth9.rp_filter\" = \"0\" }\n",
        );
        assert!(
            e.contains("host[0].sysctl.\"net.ipv4.conf.eth9.rp_filter\""),
            "{e}"
        );
        // A route prefix with host bits, a gateway that is the host's own address.
        let base = "[[host]]\nname = \"b\"\n[[link]]\na = { host = \"a\", iface = \"e0\", addresses = [\"198.18.1.1/24\"] }\nb = { host = \"b\", iface = \"e0\" }\n";
        let e = err_of(&format!(
            "[[host]]\nname = \"a\"\n[[host.route]]\nto = \"198.19.0.5/16\"\ndev = \"e0\"\n{base}"
        ));
        assert!(
            e.contains("host[0].route[0].to") && e.contains("198.19.0.0/16"),
            "{e}"
        );
        let e = err_of(&format!("[[host]]\nname = \"a\"\n[[host.route]]\nto = \"default\"\nvia = \"198.18.1.1\"\n{base}"));
        assert!(e.contains("host[0].route[0].via"), "{e}");
        // A value of the right shape the kernel still refuses (ports above 65535): as root it
        // is tried in a throwaway namespace.
        if nix::unistd::geteuid().is_root() || std::env::var_os("WIRELAB_TEST_STRICT").is_some() {
            let e = format!(
                "{:#}",
                full_check(
                    "[[host]]\nname = \"a\"\nsysctl = { \"net.ipv4.ip_local_port_range\" = \"70000 80000\" }\n"
                )
                .unwrap_err()
            );
            assert!(
                e.contains("host[0].sysctl.\"net.ipv4.ip_local_port_range\"")
                    && e.contains("refuses"),
                "{e}"
            );
        }
    }

    #[test]
    fn lab_names() {
        assert!(validate_lab_name("wl-1").is_ok());
        assert!(validate_lab_name("").is_err());
        assert!(validate_lab_name("../x").is_err());
        assert!(validate_lab_name("UPPER").is_err());
    }
}
