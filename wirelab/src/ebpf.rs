//! The embedded kernel-program object and the checks to run before loading it.
use anyhow::{bail, Context as _, Result};
use aya::Ebpf;

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
