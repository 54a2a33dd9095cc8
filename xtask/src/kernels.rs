//! `cargo xtask kernels`: wirelab on the kernels labs run, booted under qemu.
//!
//! For each kernel: Debian's cloud kernel package is downloaded with apt (cached under
//! `target/kernels/`), its modules for veth, bridge and tc are picked with `modprobe
//! --show-depends`, and an initramfs is built holding busybox, the `wirelab` binary with the
//! libraries `ldd` names, the modules and a script (`kernels/smoke.sh`). qemu boots it with
//! software emulation (`-accel tcg`: this machine's KVM cannot run these kernels) inside a
//! `timeout`; the script runs every tool in a lab inside the guest and prints one
//! `WIRELAB-KT PASS|FAIL name` line per check to the serial console, which is read back here.
//! Nothing runs on the host but qemu: the guest's namespaces and traffic stay in the guest.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{root, run, setup::output};

/// Debian packages the kernel matrix needs on the host.
const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "cpio", "kmod"];

/// Modules the smoke test loads (with their dependencies), where the kernel has them as modules.
const MODULES: &[&str] = &["veth", "bridge", "sch_ingress", "cls_bpf"];

/// What a kernel of the matrix is expected to run.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub name: &'static str,
    /// Where the package comes from.
    pub archive: Archive,
    /// The package whose dependency (or newest match) is the image to boot.
    pub query: Query,
    /// Checks expected to fail on this kernel (named with the reason in the report).
    pub expected_fail: &'static [(&'static str, &'static str)],
    /// The modules are in a package of their own (`linux-modules-KVER`, Debian from 6.17 on;
    /// the image package then holds only `usr/lib/modules/KVER/vmlinuz`).
    pub split_modules: bool,
}

/// An apt archive. Every one but the host's is read through a private apt configuration
/// under target/kernels/ (the host's sources untouched).
#[derive(Clone, Copy)]
pub enum Archive {
    /// This machine's apt sources.
    Host,
    /// A Debian suite (checked with the host's Debian keys).
    Debian(&'static str),
    /// An Ubuntu suite of archive.ubuntu.com, checked with the Ubuntu archive keys of Debian's
    /// `ubuntu-keyring` package (itself from Debian sid, checked with the host's Debian keys).
    Ubuntu(&'static str),
}

#[derive(Clone, Copy)]
pub enum Query {
    /// The image a meta package depends on.
    DependsOf(&'static str),
    /// The newest package whose name starts and ends as given.
    Newest(&'static str, &'static str),
}

pub const MATRIX: &[Kernel] = &[
    Kernel {
        name: "5.10",
        archive: Archive::Debian("bullseye"),
        query: Query::DependsOf("linux-image-cloud-amd64"),
        expected_fail: &[],
        split_modules: false,
    },
    // Ubuntu 22.04's kernel (its newest 5.15 in jammy-updates): the generic flavour, whose
    // modules are a package of their own.
    Kernel {
        name: "5.15",
        archive: Archive::Ubuntu("jammy-updates"),
        query: Query::Newest("linux-image-5.15.0-", "-generic"),
        expected_fail: &[],
        split_modules: true,
    },
    Kernel {
        name: "6.1",
        archive: Archive::Host,
        query: Query::DependsOf("linux-image-cloud-amd64"),
        expected_fail: &[],
        split_modules: false,
    },
    Kernel {
        name: "6.12",
        archive: Archive::Host,
        query: Query::Newest("linux-image-6.12.", "-cloud-amd64-unsigned"),
        expected_fail: &[],
        split_modules: false,
    },
    // The newest Debian kernel (sid), so a change that breaks on the next kernels shows here.
    Kernel {
        name: "newest",
        archive: Archive::Debian("sid"),
        query: Query::Newest("linux-binary-7.", "-cloud-amd64"),
        expected_fail: &[],
        split_modules: true,
    },
];

fn ensure_host_packages() -> Result<()> {
    crate::setup::install_debian(HOST_PACKAGES).map(|_| ())
}

/// apt options reading `archive` from a private configuration under `cache` (updated once).
fn apt_opts(cache: &Path, archive: Archive) -> Result<Vec<String>> {
    let (suite, line) = match archive {
        Archive::Host => return Ok(vec![]),
        Archive::Debian(suite) => (
            suite.to_string(),
            format!("deb http://deb.debian.org/debian {suite} main\n"),
        ),
        Archive::Ubuntu(suite) => (
            format!("ubuntu-{suite}"),
            format!(
                "deb [signed-by={}] http://archive.ubuntu.com/ubuntu {suite} main\n",
                ubuntu_keyring(cache)?.display()
            ),
        ),
    };
    let dir = cache.join(format!("apt-{suite}"));
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let list = dir.join("sources.list");
    std::fs::write(&list, line)?;
    let d = dir.display();
    let opts: Vec<String> = [
        format!("Dir::Etc::SourceList={}", list.display()),
        "Dir::Etc::SourceParts=/nonexistent".into(),
        format!("Dir::State::Lists={d}/lists"),
        format!("Dir::Cache={d}/cache"),
        "APT::Get::List-Cleanup=0".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect();
    let listed = suite.trim_start_matches("ubuntu-");
    let has_lists = std::fs::read_dir(dir.join("lists"))?
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains(listed));
    if !has_lists {
        run(Command::new("apt-get").args(&opts).args(["update", "-q"]))?;
    }
    Ok(opts)
}

/// The Ubuntu archive's keys: Debian's `ubuntu-keyring` package, from sid (unpacked once
/// under `cache`).
fn ubuntu_keyring(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("ubuntu-keyring");
    let key = dir.join("usr/share/keyrings/ubuntu-archive-keyring.gpg");
    if !key.exists() {
        let apt = apt_opts(cache, Archive::Debian("sid"))?;
        let _ = std::fs::remove_dir_all(&dir);
        unpack("ubuntu-keyring", &apt, cache, &dir)?;
    }
    if !key.exists() {
        bail!("Debian's ubuntu-keyring holds no {}", key.display());
    }
    Ok(key)
}

fn package_name(q: Query, apt: &[String]) -> Result<String> {
    match q {
        Query::DependsOf(meta) => {
            let deps = output(Command::new("apt-cache").args(apt).args(["depends", meta]))?;
            deps.lines()
                .find_map(|l| l.trim().strip_prefix("Depends: "))
                .map(str::to_string)
                .with_context(|| format!("{meta} depends on no image"))
        }
        Query::Newest(prefix, suffix) => {
            let found = output(Command::new("apt-cache").args(apt).args([
                "search",
                "--names-only",
                prefix,
            ]))?;
            let mut names: Vec<&str> = found
                .lines()
                .filter_map(|l| l.split(" - ").next())
                .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
                .collect();
            names.sort_by_key(|n| version_key(n));
            names
                .last()
                .map(|n| n.to_string())
                .with_context(|| format!("no package {prefix}*{suffix} in the apt sources"))
        }
    }
}

/// Numeric parts of a package name, for sorting versions (6.12.9 before 6.12.10).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Download package `pkg` into `cache` and unpack it into `dir`.
fn unpack(pkg: &str, apt: &[String], cache: &Path, dir: &Path) -> Result<()> {
    run(Command::new("apt-get")
        .args(apt)
        .args(["download", pkg])
        .current_dir(cache))?;
    let deb = std::fs::read_dir(cache)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {pkg}_*.deb"))?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir))?;
    let _ = std::fs::remove_file(&deb);
    Ok(())
}

/// Download and unpack the kernel package(s); returns (unpacked dir, kernel release). The
/// tree is normalised to `lib/modules/KVER` (newer packages use `usr/lib/modules`).
fn fetch(k: &Kernel, cache: &Path) -> Result<(PathBuf, String)> {
    std::fs::create_dir_all(cache)?;
    let apt = apt_opts(cache, k.archive)?;
    let pkg = package_name(k.query, &apt)?;
    let dir = cache.join(&pkg);
    let done = dir.join(".unpacked");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        unpack(&pkg, &apt, cache, &dir)?;
        if k.split_modules {
            let kver = pkg
                .strip_prefix("linux-binary-")
                .or_else(|| pkg.strip_prefix("linux-image-"))
                .context("image package name")?;
            unpack(&format!("linux-modules-{kver}"), &apt, cache, &dir)?;
        }
        let usr = dir.join("usr/lib/modules");
        if usr.is_dir() && !dir.join("lib/modules").exists() {
            std::fs::create_dir_all(dir.join("lib"))?;
            std::fs::rename(&usr, dir.join("lib/modules"))?;
        }
        std::fs::write(&done, b"")?;
    }
    let kver = std::fs::read_dir(dir.join("lib/modules"))?
        .flatten()
        .find_map(|e| e.file_name().to_str().map(str::to_string))
        .context("no lib/modules/KVER in the package")?;
    run(Command::new("depmod").args(["-b"]).arg(&dir).arg(&kver))?;
    Ok((dir, kver))
}

/// Copy `bin` and every library `ldd` names into `root` at the same paths.
fn copy_with_libs(bin: &Path, dest: &str, root: &Path) -> Result<()> {
    let to = root.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(to.parent().context("dest has a parent")?)?;
    std::fs::copy(bin, &to).with_context(|| format!("copying {}", bin.display()))?;
    let ldd = output(Command::new("ldd").arg(bin)).unwrap_or_default();
    for l in ldd.lines() {
        let path = l
            .split("=>")
            .nth(1)
            .unwrap_or(l)
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            let t = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(t.parent().context("lib has a parent")?)?;
            std::fs::copy(path, &t).with_context(|| format!("copying {path}"))?;
        }
    }
    Ok(())
}

/// Build the initramfs for one kernel; returns its path.
fn initramfs(work: &Path, kdir: &Path, kver: &str) -> Result<PathBuf> {
    let root = work.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "run", "tmp", "modules", "etc",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;
    copy_with_libs(
        &crate::root().join("target/release/wirelab"),
        "/bin/wirelab",
        &root,
    )?;
    // Modules in load order; built-in ones show as "builtin" and need nothing.
    let deps = output(
        Command::new("modprobe")
            .arg("-d")
            .arg(kdir)
            .args(["-S", kver, "-a", "--show-depends"])
            .args(MODULES),
    )?;
    let mut n = 0;
    for l in deps.lines() {
        if let Some(p) = l.strip_prefix("insmod ") {
            let p = p.split_whitespace().next().unwrap_or("");
            n += 1;
            let name = Path::new(p)
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("m.ko");
            // busybox's insmod takes plain .ko files: newer kernels ship them xz-compressed.
            match name.strip_suffix(".xz") {
                Some(plain) => {
                    let out = std::fs::File::create(root.join(format!("modules/{n:02}-{plain}")))?;
                    let st = Command::new("xz")
                        .args(["-dc", p])
                        .stdout(out)
                        .status()
                        .context("xz")?;
                    if !st.success() {
                        bail!("decompressing {p}: {st}");
                    }
                }
                None => {
                    std::fs::copy(p, root.join(format!("modules/{n:02}-{name}")))
                        .with_context(|| format!("copying module {p}"))?;
                }
            }
        }
    }
    let script = std::fs::read_to_string(crate::root().join("xtask/kernels/smoke.sh"))?;
    std::fs::write(root.join("init"), script)?;
    // The tour's example files the guest runs on (the lb labs and the DSR config).
    std::fs::create_dir_all(root.join("examples"))?;
    for f in ["lb-lab.toml", "lb.toml", "lb-nat-lab.toml"] {
        std::fs::copy(
            crate::root().join("docs/examples").join(f),
            root.join("examples").join(f),
        )
        .with_context(|| format!("copying docs/examples/{f}"))?;
    }
    run(Command::new("chmod").args(["0755"]).arg(root.join("init")))?;
    let img = work.join("initramfs.cpio.gz");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        root.display(),
        img.display()
    )))?;
    Ok(img)
}

/// One check's outcome in a guest.
struct CheckResult {
    name: String,
    pass: bool,
    /// Seconds the check took in the guest (its `WIRELAB-KT TOOK` line).
    secs: Option<f64>,
}

/// One kernel's checks, in the order the guest ran them.
fn boot(
    k: &Kernel,
    kdir: &Path,
    kver: &str,
    img: &Path,
    log: &Path,
    checks: &[String],
) -> Result<Vec<CheckResult>> {
    let vmlinuz = [
        kdir.join(format!("boot/vmlinuz-{kver}")),
        kdir.join(format!("lib/modules/{kver}/vmlinuz")),
    ]
    .into_iter()
    .find(|p| p.exists())
    .with_context(|| format!("no vmlinuz for {kver} in {}", kdir.display()))?;
    // A kernel that dies before the guest's script starts (no `WIRELAB-KT KERNEL` line) ran
    // none of our code: emulation, not the tools. Seen once in a CI run: 7.2's boot hit an
    // `Oops: int3` in a text poke under multi-threaded TCG. It boots once more, and its
    // console log of the first boot is kept beside the new one.
    let first = log.with_extension("first-boot.log");
    let _ = std::fs::remove_file(&first);
    let (st, text) = boot_once(k, &vmlinuz, kver, img, log, checks)?;
    let (st, text) = if text.contains("WIRELAB-KT KERNEL") {
        (st, text)
    } else {
        let _ = std::fs::rename(log, &first);
        eprintln!(
            "xtask kernels: {} ({kver}) died before the guest's script started (console in {}); booting it once more",
            k.name,
            first.display()
        );
        boot_once(k, &vmlinuz, kver, img, log, checks)?
    };
    if !text.contains("WIRELAB-KT DONE") {
        bail!(
            "kernel {} ({kver}): the guest did not finish (qemu {st}); last lines of {}:\n{}",
            k.name,
            log.display(),
            text.lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(parse_serial(&text))
}

/// One boot of the guest: qemu's exit status and the console's text.
fn boot_once(
    k: &Kernel,
    vmlinuz: &Path,
    kver: &str,
    img: &Path,
    log: &Path,
    checks: &[String],
) -> Result<(std::process::ExitStatus, String)> {
    let _ = std::fs::remove_file(log);
    let t0 = Instant::now();
    let st = Command::new("timeout")
        // Two guests share the host's 2 CPUs (`jobs`): 5.10 alone took 388 s on a busy host.
        .args(["--kill-after=10", "1500"])
        .args([
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "2048M",
        ])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(img)
        .arg("-append")
        .arg(if checks.is_empty() {
            "console=ttyS0 panic=-1 quiet".to_string()
        } else {
            format!(
                "console=ttyS0 panic=-1 quiet wirelab.checks={}",
                checks.join(",")
            )
        })
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .status()
        .context("running qemu-system-x86_64")?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    eprintln!(
        "xtask kernels: {} ({kver}) ran {:.0} s, qemu {st}",
        k.name,
        t0.elapsed().as_secs_f64()
    );
    Ok((st, text))
}

/// The names of the checks `smoke.sh` runs: its `check NAME ...` lines.
fn script_checks(script: &str) -> Vec<String> {
    script
        .lines()
        .filter_map(|l| l.strip_prefix("check "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The `WIRELAB-KT PASS|FAIL name` lines of a guest's console, each with the seconds of its
/// `WIRELAB-KT TOOK name N s` line.
fn parse_serial(text: &str) -> Vec<CheckResult> {
    let mut out: Vec<CheckResult> = vec![];
    for l in text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("WIRELAB-KT "))
    {
        let Some((verdict, rest)) = l.split_once(' ') else {
            continue;
        };
        match verdict {
            "PASS" | "FAIL" => out.push(CheckResult {
                name: rest.trim().to_string(),
                pass: verdict == "PASS",
                secs: None,
            }),
            "TOOK" => {
                let mut w = rest.split_whitespace();
                let (Some(name), Some(secs)) = (w.next(), w.next()) else {
                    continue;
                };
                if let Some(c) = out.iter_mut().rev().find(|c| c.name == name) {
                    c.secs = secs.parse().ok();
                }
            }
            _ => {}
        }
    }
    out
}

/// Run the matrix (or the kernels named in `only`); prints a Markdown table, fails on any
/// unexpected result. Kernels are fetched one after the other, then booted `jobs` at a time
/// (`WIRELAB_KERNEL_JOBS`, default 2): a TCG guest spends most of its time in one verifier
/// thread, so two guests on 2 CPUs take little more than the longer of the two.
pub fn kernels(only: &[String], checks: &[String]) -> Result<()> {
    ensure_host_packages()?;
    crate::build()?;
    let base = root().join("target/kernels");
    let t0 = Instant::now();
    let mut guests = vec![];
    for k in MATRIX {
        if !only.is_empty() && !only.iter().any(|o| o == k.name) {
            continue;
        }
        let (kdir, kver) = fetch(k, &base.join("cache"))?;
        let work = base.join(k.name);
        std::fs::create_dir_all(&work)?;
        let img = initramfs(&work, &kdir, &kver)?;
        guests.push((k, kdir, kver, img, work.join("serial.log")));
    }
    let jobs = std::env::var("WIRELAB_KERNEL_JOBS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(2)
        .clamp(1, guests.len().max(1));
    eprintln!(
        "xtask kernels: booting {} kernel(s), {jobs} at a time",
        guests.len()
    );
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: std::sync::Mutex<Vec<Option<Result<Vec<CheckResult>>>>> =
        std::sync::Mutex::new(guests.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((k, kdir, kver, img, log)) = guests.get(i) else {
                    break;
                };
                let r = boot(k, kdir, kver, img, log, checks);
                if let Ok(mut d) = done.lock() {
                    d[i] = Some(r);
                }
            });
        }
    });
    let done = done
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a guest's thread panicked"))?;
    let mut rows = vec![];
    let mut bad = vec![];
    // Every check the script names must report on every kernel (a check that stopped
    // reporting would otherwise go unnoticed); with --check, those asked for.
    let expected: Vec<String> = if checks.is_empty() {
        script_checks(&std::fs::read_to_string(
            crate::root().join("xtask/kernels/smoke.sh"),
        )?)
    } else {
        checks.to_vec()
    };
    for ((k, _, kver, _, log), r) in guests.iter().zip(done) {
        // A guest that did not finish is one failure among the others' results.
        let results = match r {
            Some(Ok(results)) if !results.is_empty() => results,
            Some(Ok(_)) => {
                bad.push(format!(
                    "kernel {}: no results in {}",
                    k.name,
                    log.display()
                ));
                continue;
            }
            Some(Err(e)) => {
                bad.push(format!("{e:#}"));
                continue;
            }
            None => {
                bad.push(format!("kernel {}: not booted", k.name));
                continue;
            }
        };
        for name in expected
            .iter()
            .filter(|n| !results.iter().any(|c| &c.name == *n))
        {
            bad.push(format!(
                "kernel {}: check {name} did not report (see {})",
                k.name,
                log.display()
            ));
            rows.push(format!("| {} ({kver}) | {name} | NO RESULT | — |", k.name));
        }
        for c in &results {
            let name = &c.name;
            let expected = k.expected_fail.iter().find(|(n, _)| n == name);
            let note = match (c.pass, expected) {
                (true, None) => "pass".to_string(),
                (false, Some((_, why))) => format!("fails as expected: {why}"),
                (true, Some(_)) => {
                    bad.push(format!(
                        "{} {name}: passed but was expected to fail",
                        k.name
                    ));
                    "pass (expected to fail)".into()
                }
                (false, None) => {
                    bad.push(format!("{} {name}: FAILED (see {})", k.name, log.display()));
                    "FAIL".into()
                }
            };
            let secs = c.secs.map_or("—".to_string(), |s| format!("{s:.1}"));
            rows.push(format!(
                "| {} ({kver}) | {name} | {note} | {secs} |",
                k.name
            ));
        }
    }
    let table = format!(
        "| kernel | check | result | s in the guest |\n|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    println!("{table}");
    std::fs::write(base.join("results.md"), &table)?;
    eprintln!("xtask kernels: done in {:.0} s", t0.elapsed().as_secs_f64());
    if !bad.is_empty() {
        bail!("kernel matrix: {}", bad.join("; "));
    }
    Ok(())
}
