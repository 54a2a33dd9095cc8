//! Idempotent fresh-machine setup. Each step checks first and only acts when something is
//! missing; the summary says what was done. A second run takes seconds.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::run;

/// cargo-deny version for the licence check (one that builds with the stable toolchain here).
const CARGO_DENY: &str = "0.20.2";

/// Debian packages the tests, benchmarks and demo use.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "ethtool",
    // swarm tests: a real SMB server and client, an unconnected-UDP sender.
    "samba",
    "smbclient",
    "socat",
    // wan tests and benchmarks: cross-checking the probe, TCP/UDP rates against the bridge.
    "iperf3",
    // fw tests and benchmarks: the nftables peer and trafgen.
    "nftables",
    "netsniff-ng",
    // lb benchmark: the HTTP backends, HAProxy `mode tcp` as the reference, the generator.
    "nginx-light",
    "haproxy",
    "wrk",
    // lb tests: a real SYN flood against the new-flow guard.
    "hping3",
    // capture tests: pcapng read back by capinfos/tshark, filters compared with tcpdump's;
    // `bench capture` compares with tcpdump and dumpcap (wireshark-common, a tshark dependency).
    "tshark",
    "tcpdump",
    "wireshark-common",
    // report tests: headless browser, a font for PNG plots, a strict OpenMetrics parser.
    "chromium",
    "fonts-dejavu-core",
    "python3-prometheus-client",
];

pub fn output(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).to_string())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into())
}

fn step_rust(done: &mut Vec<String>) -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        done.push("installed the nightly toolchain".into());
    }
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    for c in ["rust-src", "clippy", "rustfmt"] {
        if !comps.lines().any(|l| l.starts_with(c)) {
            run(Command::new("rustup").args(["component", "add", c, "--toolchain", "nightly"]))?;
            done.push(format!("added {c} to nightly"));
        }
    }
    let stable = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    for c in ["clippy", "rustfmt"] {
        if !stable.lines().any(|l| l.starts_with(c)) {
            run(Command::new("rustup").args(["component", "add", c]))?;
            done.push(format!("added {c} to the default toolchain"));
        }
    }
    Ok(())
}

fn step_bpf_linker(done: &mut Vec<String>) -> Result<()> {
    let have = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        || home().join(".cargo/bin/bpf-linker").exists();
    if have {
        return Ok(());
    }
    // bpf-linker must use the same LLVM as the nightly rustc that emits the bitcode.
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no LLVM version in `rustc +nightly -vV`")?
        .trim()
        .to_string();
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = PathBuf::from(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&libdir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}.")))
        })
        .with_context(|| format!("no libLLVM.so.{major}.* in {}", libdir.display()))?;
    let prefix = home().join(format!(".cache/wirelab/llvm-{major}"));
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)?;
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            "^0.13",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix))?;
    done.push(format!(
        "built bpf-linker against the nightly's LLVM {major}"
    ));
    Ok(())
}

/// cargo-deny, for the licence check of `cargo xtask lint`.
fn step_cargo_deny(done: &mut Vec<String>) -> Result<()> {
    let have = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    run(Command::new("cargo").args([
        "install",
        "cargo-deny",
        "--locked",
        "--version",
        CARGO_DENY,
    ]))?;
    done.push(format!("installed cargo-deny {CARGO_DENY}"));
    Ok(())
}

/// Install the Debian packages of `packages` that are missing (as root); returns those
/// installed.
pub fn install_debian(packages: &[&str]) -> Result<Vec<String>> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(vec![]);
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}; run `cargo xtask setup` as root (or apt-get install them)"
        );
    }
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(missing.iter().map(|m| m.to_string()).collect())
}

fn step_debian(done: &mut Vec<String>) -> Result<()> {
    let installed = install_debian(DEBIAN_PACKAGES)?;
    if !installed.is_empty() {
        done.push(format!("installed Debian packages {}", installed.join(" ")));
    }
    Ok(())
}

fn step_bpffs(done: &mut Vec<String>) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    }) {
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted at /sys/fs/bpf; run `cargo xtask setup` as root");
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    done.push("mounted bpffs at /sys/fs/bpf".into());
    Ok(())
}

pub fn setup() -> Result<()> {
    let t0 = std::time::Instant::now();
    let mut done = vec![];
    step_rust(&mut done)?;
    step_bpf_linker(&mut done)?;
    step_cargo_deny(&mut done)?;
    step_debian(&mut done)?;
    step_bpffs(&mut done)?;
    if done.is_empty() {
        eprintln!(
            "xtask setup: nothing to do, machine ready ({:.1}s)",
            t0.elapsed().as_secs_f64()
        );
    } else {
        for d in &done {
            eprintln!("xtask setup: {d}");
        }
        eprintln!("xtask setup: done in {:.1}s", t0.elapsed().as_secs_f64());
    }
    Ok(())
}
