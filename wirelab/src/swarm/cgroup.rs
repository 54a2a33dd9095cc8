//! cgroup v2 helpers: find (or mount) the unified hierarchy, make per-client cgroups, move
//! processes, kill and remove whole subtrees.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// Where wirelab mounts cgroup v2 itself when the system has it nowhere.
pub const OWN_MOUNT: &str = "/run/wirelab/cgroup2";

/// The cgroup v2 mount point from /proc/mounts, without mounting anything.
pub fn root_no_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 3 && f[2] == "cgroup2" {
            return Ok(PathBuf::from(f[1].replace("\\040", " ")));
        }
    }
    bail!("no cgroup v2 hierarchy is mounted")
}

/// The cgroup v2 mount point; mounts one under /run/wirelab when there is none.
pub fn root() -> Result<PathBuf> {
    if let Ok(p) = root_no_mount() {
        return Ok(p);
    }
    fs::create_dir_all(OWN_MOUNT).with_context(|| format!("creating {OWN_MOUNT}"))?;
    nix::mount::mount(
        Some("cgroup2"),
        OWN_MOUNT,
        Some("cgroup2"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| {
        format!("no cgroup v2 hierarchy is mounted and mounting one at {OWN_MOUNT} failed (does the kernel have cgroup2?)")
    })?;
    tracing::info!("mounted cgroup v2 at {OWN_MOUNT}");
    Ok(PathBuf::from(OWN_MOUNT))
}

/// The cgroup v2 directory of this process.
pub fn own_cgroup(root: &Path) -> Result<PathBuf> {
    let s = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    for l in s.lines() {
        if let Some(rel) = l.strip_prefix("0::") {
            return Ok(root.join(rel.trim_start_matches('/')));
        }
    }
    bail!("this process is in no cgroup v2 group (/proc/self/cgroup has no 0:: line)")
}

/// The cgroup id that `bpf_get_current_cgroup_id()` reports: the directory's inode.
pub fn id(dir: &Path) -> Result<u64> {
    Ok(fs::metadata(dir)
        .with_context(|| format!("stat {}", dir.display()))?
        .ino())
}

/// Move process `pid` (0: the caller) into cgroup `dir`.
pub fn move_pid(dir: &Path, pid: u32) -> Result<()> {
    let p = dir.join("cgroup.procs");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    f.write_all(pid.to_string().as_bytes())
        .with_context(|| format!("moving process {pid} into {}", dir.display()))
}

/// Kill every process in `dir` and below (`cgroup.kill`, or SIGKILL per process).
pub fn kill(dir: &Path) {
    if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for p in procs(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// rmdir a cgroup, retrying while the kernel still counts dying processes in it.
pub fn rmdir(dir: &Path, wait: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && t0.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
        }
    }
}

/// Kill everything in the subtree at `dir` and remove it, children first.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    kill(dir);
    let mut subdirs = vec![];
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                subdirs.push(e.path());
            }
        }
    }
    for d in subdirs {
        remove_tree(&d)?;
    }
    rmdir(dir, Duration::from_secs(5))
}
