//! The embedded kernel-program object and the checks to run before loading it.
use anyhow::{bail, Context as _, Result};
use aya::{
    programs::{Xdp, XdpMode},
    Ebpf,
};

/// The object built from `wirelab-ebpf` by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wirelab"));

/// Clear errors for the usual reasons loading fails.
pub fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("wirelab needs root (CAP_BPF and CAP_NET_ADMIN) to load eBPF programs; run it with sudo");
    }
    if OBJECT.is_empty() {
        bail!("this wirelab binary was built without its eBPF object (AYA_BUILD_SKIP?)");
    }
    Ok(())
}

/// Load the object (maps created, no program loaded yet).
pub fn load() -> Result<Ebpf> {
    preflight()?;
    Ebpf::load(OBJECT).context("loading the wirelab eBPF object")
}

/// How an XDP program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Native,
    Skb,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        })
    }
}

/// Load XDP program `prog` and attach it to `iface` through a bpf_link: native mode first,
/// generic (skb) mode as a fallback with a notice. `force` picks one mode without fallback.
pub fn attach_xdp(
    bpf: &mut Ebpf,
    prog: &str,
    iface: &str,
    force: Option<AttachMode>,
) -> Result<AttachMode> {
    let p: &mut Xdp = bpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing from the object"))?
        .try_into()?;
    p.load()
        .with_context(|| format!("loading XDP program {prog}"))?;
    if nix::net::if_::if_nametoindex(iface).is_err() {
        bail!("no interface named {iface:?} in this network namespace (use --netns NAME for a lab host)");
    }
    match force {
        Some(AttachMode::Native) => {
            p.attach(iface, XdpMode::Driver)
                .with_context(|| format!("attaching {prog} to {iface} in native mode"))?;
            Ok(AttachMode::Native)
        }
        Some(AttachMode::Skb) => {
            p.attach(iface, XdpMode::Skb)
                .with_context(|| format!("attaching {prog} to {iface} in skb mode"))?;
            Ok(AttachMode::Skb)
        }
        None => match p.attach(iface, XdpMode::Driver) {
            Ok(_) => Ok(AttachMode::Native),
            Err(e) => {
                tracing::warn!(
                    iface,
                    "native XDP refused ({e}); falling back to generic (skb) mode, which is slower"
                );
                p.attach(iface, XdpMode::Skb)
                    .with_context(|| format!("attaching {prog} to {iface} in skb mode"))?;
                Ok(AttachMode::Skb)
            }
        },
    }
}
