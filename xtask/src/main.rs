//! Project tasks: `cargo xtask setup | build | test | demo | lint | bench`.
//!
//! `setup` makes a fresh Debian machine ready (idempotent, prints what it did); `test` and
//! `demo` call it first, so on a new machine `cargo xtask demo` and `cargo xtask test` are the
//! whole set-up.
mod bench;
mod demo;
mod kernels;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: nightly rust-src, bpf-linker, Debian packages, bpffs mount.
    Setup,
    /// Build everything (userspace + embedded eBPF) in release mode.
    Build,
    /// Run every test: lint, unit tests, eBPF program tests, namespace integration tests, and
    /// the kernel matrix (`kernels`).
    Test {
        /// Skip fmt/clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the kernel matrix (qemu; about 10 minutes on 2 cores).
        #[arg(long)]
        no_kernels: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// rustfmt check, dependency licences (cargo-deny), clippy -D warnings on userspace and
    /// eBPF crates.
    Lint,
    /// The main job on the default lab (see README).
    Demo,
    /// Benchmarks against the kernel's own tools, side by side: `wan`, `wan-trace`, `swarm`,
    /// `fw`, `lb` or `all`
    /// (tables printed as Markdown and written to target/bench/NAME.md).
    Bench {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// The kernel matrix: Debian's 5.10, 6.1, 6.12 and newest kernels and Ubuntu 22.04's
    /// 5.15 booted under qemu (software emulation), every tool run in a lab inside each guest.
    Kernels {
        /// Only these kernels (e.g. 6.1).
        names: Vec<String>,
        /// Only these checks (e.g. programs-load), a developer's loop: the guest skips the
        /// rest, including what they would have set up.
        #[arg(long = "check", value_name = "NAME")]
        checks: Vec<String>,
    },
    /// Peers the benchmarks run inside lab namespaces.
    #[command(hide = true)]
    BenchHelper {
        #[command(subcommand)]
        cmd: bench::helper::HelperCmd,
    },
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let t = std::time::Instant::now();
    let st = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    // Where a run's time goes (the CI log has no clock of its own).
    let args: Vec<_> = cmd.get_args().take(3).collect();
    eprintln!(
        "xtask: {:.0} s: {} {args:?}",
        t.elapsed().as_secs_f64(),
        cmd.get_program().to_string_lossy()
    );
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

pub fn build() -> Result<()> {
    run(cargo().args(["build", "--release"]))
}

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // Licences and bans, offline (deny.toml; THIRD-PARTY.md explains the exception).
    run(cargo().args(["deny", "--offline", "check", "licenses", "bans"]))?;
    run(cargo().args([
        "clippy",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate, for its own target.
    run(Command::new("rustup")
        .current_dir(root())
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--release",
            "-p",
            "wirelab-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER"))?;
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build => {
            setup::setup()?;
            build()
        }
        Cmd::Lint => {
            setup::setup()?;
            lint()
        }
        Cmd::Test {
            no_lint,
            no_kernels,
            args,
        } => {
            setup::setup()?;
            if !no_lint {
                lint()?;
            }
            build()?;
            let mut c = cargo();
            c.args([
                "test",
                "--release",
                "--workspace",
                "--exclude",
                "wirelab-ebpf",
            ]);
            c.args(["--", "--test-threads=2"]);
            c.args(&args);
            // Integration tests must never skip under CI.
            c.env("WIRELAB_TEST_STRICT", "1");
            run(&mut c)?;
            // A test filter asks for some tests, not the whole suite.
            if !no_kernels && args.is_empty() {
                kernels::kernels(&[], &[])?;
            }
            eprintln!("xtask: all tests passed");
            Ok(())
        }
        Cmd::Demo => {
            setup::setup()?;
            build()?;
            demo::demo()
        }
        Cmd::Bench { names } => {
            setup::setup()?;
            build()?;
            bench::bench(&names)
        }
        Cmd::Kernels { names, checks } => {
            setup::setup()?;
            kernels::kernels(&names, &checks)
        }
        Cmd::BenchHelper { cmd } => bench::helper::run(cmd),
    }
}
