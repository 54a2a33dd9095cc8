//! The embedded kernel objects, one per tool, and the checks to run before loading one.
use anyhow::{bail, Context as _, Result};
use aya::Ebpf;

/// One tool's kernel object, built from `wirelab-ebpf/src/bin/TOOL.rs` by `build.rs`: the
/// tool's own programs and maps only, so starting one tool never creates another's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Capture,
    Fw,
    Gen,
    Inspect,
    Lb,
    Swarm,
    Wan,
}

macro_rules! object_bytes {
    ($name:literal) => {
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/", $name))
    };
}

impl Object {
    pub const ALL: [Object; 7] = [
        Object::Capture,
        Object::Fw,
        Object::Gen,
        Object::Inspect,
        Object::Lb,
        Object::Swarm,
        Object::Wan,
    ];

    /// The tool's name, which is also the object's file name in `OUT_DIR`.
    pub fn name(self) -> &'static str {
        match self {
            Object::Capture => "capture",
            Object::Fw => "fw",
            Object::Gen => "gen",
            Object::Inspect => "inspect",
            Object::Lb => "lb",
            Object::Swarm => "swarm",
            Object::Wan => "wan",
        }
    }

    /// The object's ELF bytes (empty in a build made with `AYA_BUILD_SKIP`).
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Object::Capture => object_bytes!("capture"),
            Object::Fw => object_bytes!("fw"),
            Object::Gen => object_bytes!("gen"),
            Object::Inspect => object_bytes!("inspect"),
            Object::Lb => object_bytes!("lb"),
            Object::Swarm => object_bytes!("swarm"),
            Object::Wan => object_bytes!("wan"),
        }
    }
}

/// Clear errors for the usual reasons loading fails.
pub fn preflight(o: Object) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("wirelab needs root (CAP_BPF and CAP_NET_ADMIN) to load eBPF programs; run it with sudo");
    }
    if o.bytes().is_empty() {
        bail!(
            "this wirelab binary was built without its {} eBPF object (AYA_BUILD_SKIP?)",
            o.name()
        );
    }
    Ok(())
}

/// Load a tool's object (its maps created, no program loaded yet).
pub fn load(o: Object) -> Result<Ebpf> {
    preflight(o)?;
    Ebpf::load(o.bytes()).with_context(|| format!("loading the {} eBPF object", o.name()))
}
