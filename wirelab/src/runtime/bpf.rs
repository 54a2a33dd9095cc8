//! Attaching kernel programs, and reading their per-CPU counters, the same way in every tool.
//!
//! Every attachment goes through a bpf_link where the kernel has one, so a killed process
//! leaves nothing behind: XDP links, TCX links (6.6+). Before 6.6 a tc program can only be a
//! clsact filter made over netlink, which outlives a killed process: `attach_tc` says so when
//! it falls back, and `wirelab cleanup` removes such filters by their program name.
use crate::ebpf::LoadRetrying;
use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{MapData, PerCpuArray, ProgramArray},
    programs::{
        tc::{self, NlOptions, TcAttachOptions},
        LinkOrder, Program, ProgramError, ProgramFd, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, Pod,
};

named_enum! {
    /// How an XDP program ended up attached.
    pub enum AttachMode {
        Native = "native",
        Skb = "skb",
    }
}

/// Program `prog` of the object as a `P` (`kind` names its type in the error), loaded once:
/// one program may be attached to several interfaces (wan).
fn loaded<'a, P>(bpf: &'a mut Ebpf, prog: &str, kind: &str) -> Result<&'a mut P>
where
    P: LoadRetrying,
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let p: &mut P = bpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing from the object"))?
        .try_into()?;
    if !p.is_loaded() {
        p.load_retrying()
            .with_context(|| format!("loading {kind} program {prog}"))?;
    }
    Ok(p)
}

/// The hook a program reached by tail call is written for: the one its caller runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Tc,
    Xdp,
}

/// Load program `prog` of the object for `hook`, to be reached by a tail call: its fd.
pub fn load_for_tail_call(bpf: &mut Ebpf, prog: &str, hook: Hook) -> Result<ProgramFd> {
    let program = bpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing from the object"))?;
    let fd = match hook {
        Hook::Tc => {
            let p: &mut SchedClassifier = program.try_into()?;
            p.load_retrying()
                .with_context(|| format!("loading {prog}"))?;
            p.fd()?.try_clone()?
        }
        Hook::Xdp => {
            let p: &mut Xdp = program.try_into()?;
            p.load_retrying()
                .with_context(|| format!("loading {prog}"))?;
            p.fd()?.try_clone()?
        }
    };
    Ok(fd)
}

/// Load each `(program, hook, program array)` and enter the program in slot 0 of its array:
/// the tail calls one object makes to programs of its own.
pub fn fill_tail_calls(bpf: &mut Ebpf, calls: &[(&str, Hook, &str)]) -> Result<()> {
    for &(prog, hook, map) in calls {
        let fd = load_for_tail_call(bpf, prog, hook)?;
        let mut array = ProgramArray::try_from(
            bpf.map_mut(map)
                .with_context(|| format!("map {map} missing from the object"))?,
        )?;
        array
            .set(0, &fd, 0)
            .with_context(|| format!("entering {prog} in {map}"))?;
    }
    Ok(())
}

fn require_iface(iface: &str) -> Result<()> {
    if nix::net::if_::if_nametoindex(iface).is_err() {
        bail!("no interface named {iface:?} in this network namespace (use --netns NAME for a lab host)");
    }
    Ok(())
}

/// Load XDP program `prog` (once) and attach it to `iface` through a bpf_link: native mode
/// first, generic (skb) mode as a fallback with a notice. `force` picks one mode without
/// fallback.
pub fn attach_xdp(
    bpf: &mut Ebpf,
    prog: &str,
    iface: &str,
    force: Option<AttachMode>,
) -> Result<AttachMode> {
    attach_xdp_noting(bpf, prog, iface, force, "")
}

/// [`attach_xdp`], with what the fallback costs this tool added to the notice.
pub fn attach_xdp_noting(
    bpf: &mut Ebpf,
    prog: &str,
    iface: &str,
    force: Option<AttachMode>,
    fallback_cost: &str,
) -> Result<AttachMode> {
    let p: &mut Xdp = loaded(bpf, prog, "XDP")?;
    require_iface(iface)?;
    let skb = |p: &mut Xdp| {
        p.attach(iface, XdpMode::Skb)
            .with_context(|| format!("attaching {prog} to {iface} in skb mode"))
            .map(|_| AttachMode::Skb)
    };
    match force {
        Some(AttachMode::Native) => {
            p.attach(iface, XdpMode::Driver)
                .with_context(|| format!("attaching {prog} to {iface} in native mode"))?;
            Ok(AttachMode::Native)
        }
        Some(AttachMode::Skb) => skb(p),
        None => match p.attach(iface, XdpMode::Driver) {
            Ok(_) => Ok(AttachMode::Native),
            Err(e) => {
                tracing::warn!(
                    iface,
                    "native XDP refused ({e}); falling back to generic (skb) mode, which is slower{}{fallback_cost}",
                    if fallback_cost.is_empty() { "" } else { ", and " }
                );
                skb(p)
            }
        },
    }
}

named_enum! {
    /// How a tc program ended up attached.
    pub enum TcMode {
        /// A TCX link (Linux 6.6+): detached by the kernel when the process dies.
        Tcx = "tcx",
        /// A clsact filter made over netlink (kernels before 6.6): removed on a clean exit; after
        /// a kill, by `wirelab cleanup`.
        Clsact = "clsact",
    }
}

named_enum! {
    /// How a program that runs at either hook (lb) ended up attached.
    pub enum Attached {
        Native = "native",
        Skb = "skb",
        Tcx = "tcx",
        Clsact = "clsact",
    }
}

impl Attached {
    /// The XDP mode, if it is attached at XDP.
    pub fn xdp(self) -> Option<AttachMode> {
        match self {
            Attached::Native => Some(AttachMode::Native),
            Attached::Skb => Some(AttachMode::Skb),
            Attached::Tcx | Attached::Clsact => None,
        }
    }
}

impl From<AttachMode> for Attached {
    fn from(m: AttachMode) -> Self {
        match m {
            AttachMode::Native => Attached::Native,
            AttachMode::Skb => Attached::Skb,
        }
    }
}

impl From<TcMode> for Attached {
    fn from(m: TcMode) -> Self {
        match m {
            TcMode::Tcx => Attached::Tcx,
            TcMode::Clsact => Attached::Clsact,
        }
    }
}

/// Whether tc programs attach through TCX here: the kernel has it (6.6+) and
/// `WIRELAB_TC_ATTACH=clsact` does not ask for the older path (the tests run it that way).
pub fn tcx_in_use() -> bool {
    crate::kernel::has_tcx() && std::env::var("WIRELAB_TC_ATTACH").as_deref() != Ok("clsact")
}

/// Load tc program `prog` (once) and attach it to `iface` at `dir`: a TCX link where the
/// kernel has TCX (6.6+), otherwise a clsact filter over netlink (the qdisc is added if
/// missing), with a notice saying which.
pub fn attach_tc(bpf: &mut Ebpf, prog: &str, iface: &str, dir: TcAttachType) -> Result<TcMode> {
    let p: &mut SchedClassifier = loaded(bpf, prog, "tc")?;
    require_iface(iface)?;
    let tcx_err = if tcx_in_use() {
        match p.attach_with_options(iface, dir, TcAttachOptions::TcxOrder(LinkOrder::default())) {
            Ok(_) => return Ok(TcMode::Tcx),
            Err(e) => e.to_string(),
        }
    } else if crate::kernel::has_tcx() {
        "WIRELAB_TC_ATTACH=clsact".to_string()
    } else {
        format!("TCX needs Linux 6.6, this is {}", crate::kernel::release())
    };
    // clsact exists already when another tool (or a previous run) added it.
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        let exists =
            matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(e).with_context(|| format!("adding a clsact qdisc to {iface}"));
        }
    }
    p.attach_with_options(iface, dir, TcAttachOptions::Netlink(NlOptions::default()))
        .with_context(|| format!("attaching {prog} to {iface} (clsact filter; {tcx_err})"))?;
    tracing::info!(
        iface,
        prog,
        "attached as a clsact filter ({tcx_err}); a killed run leaves it: `wirelab cleanup` removes it"
    );
    Ok(TcMode::Clsact)
}

/// Remove clsact filters whose program is named `prog` from `iface` (a killed run's), at
/// both hooks. Returns how many were removed.
pub fn detach_tc_filters(iface: &str, prog: &str) -> usize {
    let mut n = 0;
    for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
        if tc::qdisc_detach_program(iface, dir, prog).is_ok() {
            n += 1;
        }
    }
    n
}

/// The program names of `iface`'s clsact filters at both hooks (what [`detach_tc_filters`]
/// finds by name), in the calling thread's namespace; none when they cannot be listed.
pub fn tc_filter_names(iface: &str) -> Vec<String> {
    let iface = iface.to_string();
    crate::nl::with(None, move |h| async move {
        crate::nl::tc_bpf_filter_names(&h, &iface).await
    })
    .unwrap_or_default()
}

/// Per-CPU values that add up: counters kept by each CPU and summed when read.
pub trait PerCpuSum: Pod + Default {
    fn add(&mut self, other: &Self);
}

impl PerCpuSum for u64 {
    fn add(&mut self, other: &Self) {
        *self = self.wrapping_add(*other);
    }
}

impl PerCpuSum for wirelab_common::Counter {
    fn add(&mut self, other: &Self) {
        wirelab_common::Counter::add(self, other);
    }
}

impl PerCpuSum for wirelab_common::fw::RuleCounter {
    fn add(&mut self, other: &Self) {
        wirelab_common::fw::RuleCounter::add(self, other);
    }
}

impl PerCpuSum for wirelab_common::wan::WanCounters {
    fn add(&mut self, other: &Self) {
        wirelab_common::wan::WanCounters::add(self, other);
    }
}

/// Entry `idx` of a per-CPU array, summed over the CPUs.
pub fn sum<T: PerCpuSum, M: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<M, T>,
    idx: u32,
) -> Result<T> {
    let per_cpu = map
        .get(&idx, 0)
        .with_context(|| format!("reading per-CPU entry {idx}"))?;
    let mut total = T::default();
    for v in per_cpu.iter() {
        total.add(v);
    }
    Ok(total)
}

/// Entries `0..n` of a per-CPU array, each summed over the CPUs.
pub fn sum_all<T: PerCpuSum, M: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<M, T>,
    n: u32,
) -> Result<Vec<T>> {
    (0..n).map(|i| sum(map, i)).collect()
}

/// The kernel id of the object's map `name` (an array or a program array), for another
/// process to open it (`MapData::from_id`): the capture tap.
pub fn map_id(bpf: &Ebpf, name: &str) -> Result<u32> {
    match bpf
        .map(name)
        .with_context(|| format!("map {name} missing"))?
    {
        aya::maps::Map::Array(d) | aya::maps::Map::ProgramArray(d) => Ok(d
            .info()
            .with_context(|| format!("reading the info of map {name}"))?
            .id()),
        _ => bail!("map {name} is not an array"),
    }
}
