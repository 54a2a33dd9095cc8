//! Builds the kernel programs of `wirelab-ebpf` with aya-build (nightly, bpfel-unknown-none,
//! bpf-linker) and leaves the object in OUT_DIR, where `src/ebpf.rs` embeds it.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = meta
        .packages
        .iter()
        .find(|p| p.name.as_str() == "wirelab-ebpf")
        .ok_or_else(|| anyhow!("wirelab-ebpf package not found in the workspace"))?;
    let root = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("wirelab-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: pkg.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
