//! Links, addresses and routes through rtnetlink.
//!
//! A netlink socket talks to the namespace it was opened in, so [`with`] opens it on a thread
//! that first enters the target namespace, then drives the requests on a small tokio runtime.
use std::{future::Future, net::IpAddr, os::fd::AsRawFd};

use anyhow::{anyhow, bail, Context as _, Result};
use futures::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    },
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder,
};
use serde::{Deserialize, Serialize};

use crate::netns;

/// Run `f` with a netlink handle opened inside namespace `ns` (current namespace for `None`).
pub fn with<T, F, Fut>(ns: Option<&str>, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    netns::run_in(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        rt.block_on(async move {
            let (conn, handle, _) =
                rtnetlink::new_connection().context("opening a netlink socket")?;
            let task = tokio::spawn(conn);
            let r = f(handle).await;
            task.abort();
            r
        })
    })
}

/// The program names of the bpf filters on `iface`'s clsact hooks (ingress, then egress), as
/// `tc filter show` lists them. An interface without a clsact qdisc has none.
pub async fn tc_bpf_filter_names(h: &Handle, iface: &str) -> Result<Vec<String>> {
    use rtnetlink::packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};
    let idx = i32::try_from(index_of(h, iface).await?).context("interface index")?;
    let mut names = vec![];
    for egress in [false, true] {
        let req = h.traffic_filter(idx).get();
        let req = if egress { req.egress() } else { req.ingress() };
        let mut s = req.execute();
        // No clsact qdisc: the kernel refuses the dump; nothing is attached there.
        while let Ok(Some(m)) = s.try_next().await {
            for a in m.attributes {
                let TcAttribute::Options(opts) = a else {
                    continue;
                };
                names.extend(opts.into_iter().filter_map(|o| match o {
                    TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => Some(n),
                    _ => None,
                }));
            }
        }
    }
    Ok(names)
}

pub async fn index_of(h: &Handle, name: &str) -> Result<u32> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(m.header.index),
        Ok(None) => bail!("no interface named {name}"),
        Err(e) => Err(anyhow!("no interface named {name} ({e})")),
    }
}

/// Change one link attribute of `name` (`what` names the change in the error).
async fn set_link(
    h: &Handle,
    name: &str,
    what: &str,
    change: impl FnOnce(LinkMessageBuilder<LinkUnspec>) -> LinkMessageBuilder<LinkUnspec>,
) -> Result<()> {
    let idx = index_of(h, name).await?;
    h.link()
        .set(change(LinkUnspec::new_with_index(idx)).build())
        .execute()
        .await
        .with_context(|| format!("{name}: {what}"))
}

pub async fn set_up(h: &Handle, name: &str) -> Result<()> {
    set_link(h, name, "setting the link up", |l| l.up()).await
}

pub async fn set_promisc(h: &Handle, name: &str, on: bool) -> Result<()> {
    set_link(h, name, "setting promiscuous mode", |l| l.promiscuous(on)).await
}

pub async fn set_mtu(h: &Handle, name: &str, mtu: u32) -> Result<()> {
    set_link(h, name, &format!("setting MTU {mtu}"), |l| l.mtu(mtu)).await
}

/// Create a veth pair: `name` here, `peer_name` directly inside namespace `peer_ns` (one
/// request, as `ip link add A type veth peer name B netns NS` does: no name clash possible in
/// this namespace).
pub async fn add_veth(
    h: &Handle,
    name: &str,
    peer_name: &str,
    peer_ns: Option<&std::fs::File>,
) -> Result<()> {
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new().name(peer_name.to_string());
    if let Some(f) = peer_ns {
        peer = peer.setns_by_fd(f.as_raw_fd());
    }
    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .with_context(|| format!("creating veth pair {name} <-> {peer_name}"))
}

pub async fn add_bridge(h: &Handle, name: &str) -> Result<()> {
    h.link()
        .add(LinkBridge::new(name).build())
        .execute()
        .await
        .with_context(|| format!("creating bridge {name}"))
}

pub async fn set_master(h: &Handle, port: &str, bridge: &str) -> Result<()> {
    let p = index_of(h, port).await?;
    let b = index_of(h, bridge).await?;
    h.link()
        .set(LinkUnspec::new_with_index(p).controller(b).build())
        .execute()
        .await
        .with_context(|| format!("adding {port} to bridge {bridge}"))
}

pub async fn add_address(h: &Handle, iface: &str, net: IpNet) -> Result<()> {
    let idx = index_of(h, iface).await?;
    h.address()
        .add(idx, net.addr(), net.prefix_len())
        .execute()
        .await
        .with_context(|| format!("adding address {net} to {iface}"))
}

/// Add a route. `to` of `None` is the default route.
pub async fn add_route(
    h: &Handle,
    to: Option<IpNet>,
    via: Option<IpAddr>,
    dev: Option<&str>,
    v6: bool,
) -> Result<()> {
    let mut b = RouteMessageBuilder::<IpAddr>::new();
    let dest = match to {
        Some(n) => n,
        None if v6 => "::/0".parse().expect("literal"),
        None => "0.0.0.0/0".parse().expect("literal"),
    };
    b = b
        .destination_prefix(dest.network(), dest.prefix_len())
        .map_err(|e| anyhow!("route to {dest}: {e}"))?;
    if let Some(g) = via {
        b = b.gateway(g).map_err(|e| anyhow!("route via {g}: {e}"))?;
    }
    if let Some(d) = dev {
        b = b.output_interface(index_of(h, d).await?);
    }
    h.route()
        .add(b.build())
        .execute()
        .await
        .with_context(|| format!("adding route to {dest}"))
}

/// The link message of interface `name`.
async fn link_named(h: &Handle, name: &str) -> Result<LinkMessage> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    s.try_next()
        .await
        .map_err(|e| anyhow!("no interface named {name} ({e})"))?
        .ok_or_else(|| anyhow!("no interface named {name}"))
}

/// The hardware address of interface `name`.
pub async fn mac_of(h: &Handle, name: &str) -> Result<Vec<u8>> {
    let m = link_named(h, name).await?;
    m.attributes
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => Some(m),
            _ => None,
        })
        .ok_or_else(|| anyhow!("{name} has no hardware address"))
}

/// The neighbour table's usable entries (reachable, stale, delay, probe, permanent) on
/// `iface`, both families (ARP for IPv4, neighbour discovery for IPv6): address and MAC.
pub fn neighbours(iface: &str) -> Result<Vec<(IpAddr, [u8; 6])>> {
    use rtnetlink::packet_route::neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourState,
    };
    let iface = iface.to_string();
    with(None, move |h| async move {
        let idx = index_of(&h, &iface).await?;
        let mut found = Vec::new();
        let mut s = h.neighbours().get().execute();
        while let Some(m) = s.try_next().await.context("reading the neighbour table")? {
            let usable = matches!(
                m.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
            );
            if m.header.ifindex != idx || !usable {
                continue;
            }
            let mut dst = None;
            let mut lladdr = None;
            for a in m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        dst = Some(IpAddr::V4(a));
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        dst = Some(IpAddr::V6(a));
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => lladdr = <[u8; 6]>::try_from(l).ok(),
                    _ => {}
                }
            }
            if let (Some(d), Some(l)) = (dst, lladdr) {
                found.push((d, l));
            }
        }
        Ok(found)
    })
}

/// A permanent neighbour entry: `addr` is at `mac` on `iface` (no ARP/ND for it again).
pub async fn set_permanent_neighbour(
    h: &Handle,
    iface: &str,
    addr: IpAddr,
    mac: &[u8],
) -> Result<()> {
    let idx = index_of(h, iface).await?;
    h.neighbours()
        .add(idx, addr)
        .link_layer_address(mac)
        .replace()
        .execute()
        .await
        .with_context(|| format!("a permanent neighbour entry for {addr} on {iface}"))
}

/// One interface as `lab status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IfaceInfo {
    pub name: String,
    pub index: u32,
    /// Link kind: veth, bridge, dummy, ... (`""` for a plain device).
    pub kind: String,
    /// Administratively up (IFF_UP).
    pub up: bool,
    pub mac: String,
    /// MTU in bytes (L3).
    pub mtu: u32,
    /// The bridge it is a port of.
    pub master: Option<String>,
    /// Addresses with prefix length (198.18.0.1/24).
    pub addresses: Vec<String>,
}

pub async fn interfaces(h: &Handle) -> Result<Vec<IfaceInfo>> {
    let links: Vec<LinkMessage> = h.link().get().execute().try_collect().await?;
    let addrs: Vec<_> = h.address().get().execute().try_collect().await?;
    let name_of = |idx: u32| -> Option<String> {
        links.iter().find(|l| l.header.index == idx).and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
        })
    };
    let mut out = vec![];
    for l in &links {
        let mut info = IfaceInfo {
            name: String::new(),
            index: l.header.index,
            kind: String::new(),
            up: l.header.flags.contains(LinkFlags::Up),
            mac: String::new(),
            mtu: 0,
            master: None,
            addresses: vec![],
        };
        for a in &l.attributes {
            match a {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::Address(m) => {
                    info.mac = m
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":");
                }
                LinkAttribute::Mtu(m) => info.mtu = *m,
                LinkAttribute::Controller(c) => info.master = name_of(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            info.kind = k.to_string();
                        }
                    }
                }
                _ => {}
            }
        }
        for a in addrs.iter().filter(|a| a.header.index == l.header.index) {
            for at in &a.attributes {
                if let AddressAttribute::Address(ip) = at {
                    info.addresses.push(format!("{ip}/{}", a.header.prefix_len));
                }
            }
        }
        out.push(info);
    }
    Ok(out)
}

/// Whether `iface` (in the calling thread's namespace) is administratively up and has
/// carrier. `None` if it does not exist.
///
/// Carrier comes from the driver (ethtool `ETHTOOL_GLINK`, what `IFF_LOWER_UP` shows), not
/// from `IFF_RUNNING`: that follows operstate, which the kernel updates up to about a second
/// after the carrier is on, while frames are already delivered. Only a device without the
/// ethtool call falls back to `IFF_RUNNING`.
pub fn link_carrier(iface: &str) -> Option<bool> {
    #[repr(C)]
    struct IfReqFlags {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if iface.len() > 15 {
        return None;
    }
    let mut req = IfReqFlags {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `req` is an ifreq-shaped buffer the ioctl fills; `fd` is ours and closed below.
    let r = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req as *mut IfReqFlags) };
    let carrier = if r < 0 {
        None
    } else {
        ethtool_u32(fd, iface, ETHTOOL_GLINK).ok()
    };
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    if r < 0 {
        return None;
    }
    let f = req.flags as libc::c_int;
    let up = f & libc::IFF_UP != 0;
    Some(up && carrier.map_or(f & libc::IFF_RUNNING != 0, |c| c != 0))
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GLINK: u32 = 0x0a;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// One `struct ethtool_value` ioctl on socket `fd`: a get returns the value, a set sends
/// `data` (through the same call with the set command).
fn ethtool_value(fd: libc::c_int, iface: &str, cmd: u32, data: u32) -> std::io::Result<u32> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    if iface.len() > 15 {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    let mut val = EthtoolValue { cmd, data };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut val,
        _pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: `req` points at `val`, both live across the call; the kernel reads/writes them.
    let r = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(val.data)
}

fn ethtool_u32(fd: libc::c_int, iface: &str, cmd: u32) -> std::io::Result<u32> {
    ethtool_value(fd, iface, cmd, 0)
}

/// Turn TX checksum offload of `iface` (in the calling thread's namespace) on or off, through
/// the ethtool ioctl (`ETHTOOL_STXCSUM`).
///
/// Lab endpoints whose traffic crosses an AF_XDP engine need it off: a veth hands over frames
/// with unfinished (partial) checksums, which AF_XDP passes on as they are.
pub fn set_tx_checksum(iface: &str, on: bool) -> Result<()> {
    if iface.len() > 15 {
        bail!("interface name {iface:?} too long");
    }
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for ethtool");
    }
    let r = ethtool_value(fd, iface, ETHTOOL_STXCSUM, on as u32);
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    r.with_context(|| format!("setting tx checksum offload of {iface}"))?;
    Ok(())
}

/// The route message of an AnyIP route: `local NET dev DEV` in the local table, as
/// `ip route add local NET dev DEV` makes it. Every address of NET becomes local.
async fn local_route_msg(
    h: &Handle,
    net: ipnet::Ipv4Net,
    dev: &str,
) -> Result<rtnetlink::packet_route::route::RouteMessage> {
    use rtnetlink::packet_route::route::{RouteScope, RouteType};
    let idx = index_of(h, dev).await?;
    Ok(RouteMessageBuilder::<std::net::Ipv4Addr>::new()
        .destination_prefix(net.network(), net.prefix_len())
        .output_interface(idx)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .table_id(255)
        .build())
}

/// Add an AnyIP route (`local NET dev DEV`).
pub async fn add_local_route(h: &Handle, net: ipnet::Ipv4Net, dev: &str) -> Result<()> {
    let msg = local_route_msg(h, net, dev).await?;
    h.route()
        .add(msg)
        .execute()
        .await
        .with_context(|| format!("adding route local {net} dev {dev}"))
}

/// Remove an AnyIP route made by [`add_local_route`]. Missing routes are not an error.
pub async fn del_local_route(h: &Handle, net: ipnet::Ipv4Net, dev: &str) -> Result<bool> {
    let msg = local_route_msg(h, net, dev).await?;
    match h.route().del(msg).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -libc::ESRCH || e.raw_code() == -libc::ENOENT =>
        {
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| format!("removing route local {net} dev {dev}")),
    }
}

/// Is `name` in promiscuous mode (its own IFF_PROMISC flag)?
pub async fn is_promisc(h: &Handle, name: &str) -> Result<bool> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(m.header.flags.contains(LinkFlags::Promisc)),
        Ok(None) => bail!("no interface named {name}"),
        Err(e) => Err(anyhow!("no interface named {name} ({e})")),
    }
}

const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_GTXCSUM: u32 = 0x16;

/// The id under which the calling thread's namespace knows namespace `fd` (RTM_GETNSID;
/// `None`: it has none).
async fn nsid_of(h: &Handle, fd: std::os::fd::RawFd) -> Result<Option<i32>> {
    use rtnetlink::{
        packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST},
        packet_route::{
            nsid::{NsidAttribute, NsidMessage},
            RouteNetlinkMessage,
        },
    };
    let mut msg = NsidMessage::default();
    msg.attributes.push(NsidAttribute::Fd(fd as u32));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST;
    let mut resp = h.clone().request(req).context("RTM_GETNSID")?;
    while let Some(m) = futures::StreamExt::next(&mut resp).await {
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                return Ok(m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(i) if *i >= 0 => Some(*i),
                    _ => None,
                }));
            }
            NetlinkPayload::Error(e) => bail!("RTM_GETNSID: {e}"),
            _ => {}
        }
    }
    Ok(None)
}

/// Whether generic receive offload and TX checksum offload are on on `iface` (in the calling
/// thread's namespace).
fn gro_and_tx_csum(iface: &str) -> Result<(bool, bool)> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for ethtool");
    }
    let gro = ethtool_u32(fd, iface, ETHTOOL_GGRO);
    let tx = ethtool_u32(fd, iface, ETHTOOL_GTXCSUM);
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    Ok((
        gro.with_context(|| format!("reading the GRO setting of {iface}"))? != 0,
        tx.with_context(|| format!("reading the TX checksum setting of {iface}"))? != 0,
    ))
}

/// A veth's peer, as far as receiving `XDP_TX`/`XDP_REDIRECT` frames goes: a veth delivers
/// them only when its peer runs NAPI, i.e. has a native XDP program or GRO on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPeer {
    pub name: String,
    /// The peer's namespace (`None`: the same as the veth's).
    pub netns: Option<String>,
    pub gro: bool,
    /// A native (driver-mode) XDP program is attached.
    pub xdp: bool,
    /// TX checksum offload is on: frames sent through it may carry unfinished (partial)
    /// checksums, which an XDP program cannot tell from finished ones. Off, the kernel
    /// finishes every checksum before the veth hands the frame over.
    pub tx_csum: bool,
}

impl VethPeer {
    pub fn napi(&self) -> bool {
        self.gro || self.xdp
    }

    /// e.g. `p-lb in namespace lab-sw`.
    pub fn describe(&self) -> String {
        format!(
            "{}{}",
            self.name,
            self.netns
                .as_ref()
                .map_or(String::new(), |n| format!(" in namespace {n}"))
        )
    }
}

/// What one link message says: name, veth or not, its peer's index and namespace id, a
/// native XDP program.
struct LinkFacts {
    name: String,
    veth: bool,
    link: Option<u32>,
    link_netnsid: Option<i32>,
    drv_xdp: bool,
}

fn link_facts(m: &LinkMessage) -> LinkFacts {
    let mut f = LinkFacts {
        name: String::new(),
        veth: false,
        link: None,
        link_netnsid: None,
        drv_xdp: false,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => f.name = n.clone(),
            LinkAttribute::Link(l) => f.link = Some(*l),
            LinkAttribute::LinkNetNsId(n) => f.link_netnsid = Some(*n),
            LinkAttribute::LinkInfo(infos) => {
                f.veth |= infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            LinkAttribute::Xdp(x) => {
                use rtnetlink::packet_route::link::{LinkXdp, XdpAttached};
                f.drv_xdp |= x.iter().any(|x| {
                    matches!(
                        x,
                        LinkXdp::DrvProgId(_) | LinkXdp::Attached(XdpAttached::Driver)
                    )
                });
            }
            _ => {}
        }
    }
    f
}

/// Whether `iface` (in the calling thread's namespace) is a veth.
pub fn is_veth(iface: &str) -> Result<bool> {
    with(None, |h| async move {
        Ok(link_facts(&link_named(&h, iface).await?).veth)
    })
}

/// `iface`'s peer if it is a veth (`None`: not a veth), in the calling thread's namespace.
///
/// The kernel names the peer's namespace only by an id local to this namespace, so it is
/// looked for among the named namespaces (`/run/netns`): the one this namespace knows by that
/// id (RTM_GETNSID). None is an error (the peer cannot be checked).
pub fn veth_peer_napi(iface: &str) -> Result<Option<VethPeer>> {
    let (me, idx) = with(None, |h| async move {
        let m = link_named(&h, iface).await?;
        Ok((link_facts(&m), m.header.index))
    })?;
    if !me.veth {
        return Ok(None);
    }
    let Some(peer_idx) = me.link else {
        bail!("{iface} is a veth without a peer index");
    };
    // The peer as seen from namespace `ns`, if it is there.
    let look = |ns: Option<&str>| -> Result<Option<VethPeer>> {
        let found = with(ns, |h| async move {
            let mut s = h.link().get().match_index(peer_idx).execute();
            match s.try_next().await {
                Ok(Some(m)) => Ok(Some(link_facts(&m))),
                _ => Ok(None),
            }
        })?;
        let Some(p) = found.filter(|p| p.veth && p.link == Some(idx)) else {
            return Ok(None);
        };
        let name = p.name.clone();
        let (gro, tx_csum) = netns::run_in(ns, || gro_and_tx_csum(&name))?;
        Ok(Some(VethPeer {
            name: p.name,
            netns: ns.map(str::to_string),
            gro,
            xdp: p.drv_xdp,
            tx_csum,
        }))
    };
    let Some(peer_nsid) = me.link_netnsid else {
        return look(None);
    };
    // The named namespace that this one knows by the peer's namespace id.
    let names = netns::list();
    let files: Vec<(String, std::fs::File)> = names
        .into_iter()
        .filter_map(|n| netns::open(&n).ok().map(|f| (n, f)))
        .collect();
    let ids = with(None, |h| async move {
        let mut ids = vec![];
        for (n, f) in &files {
            if nsid_of(&h, f.as_raw_fd()).await? == Some(peer_nsid) {
                ids.push(n.clone());
            }
        }
        Ok(ids)
    })?;
    match ids.as_slice() {
        [ns] => look(Some(ns))?
            .with_context(|| format!("no veth at index {peer_idx} in namespace {ns} points back"))
            .map(Some),
        [] => bail!("its peer's namespace (id {peer_nsid}) has no name under /run/netns"),
        _ => bail!("several named namespaces have id {peer_nsid}"),
    }
}
