//! Named network namespaces, compatible with iproute2 (`/run/netns/NAME` bind mounts), created
//! and entered with `unshare`/`setns` from nix: no shelling out to `ip`.
//!
//! wirelab commands that take `--netns NAME` call [`enter`] before starting any thread, so the
//! whole process works inside that namespace while keeping the root mount namespace — and with it
//! `/sys/fs/bpf` and `/sys/fs/cgroup` (which `ip netns exec` would hide by remounting `/sys`).
use std::{
    fs::{self, File},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
    sys::signal::{kill, Signal},
    unistd::Pid,
};

pub const NETNS_RUN_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    // A leftover empty file without a mount is not a namespace.
    match (fs::metadata(path(name)), fs::metadata(NETNS_RUN_DIR)) {
        (Ok(f), Ok(d)) => f.dev() != d.dev(),
        _ => false,
    }
}

/// Namespace names as iproute2 lists them.
pub fn list() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(NETNS_RUN_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Make `/run/netns` a shared mount point, as `ip netns add` does, so namespace bind mounts
/// propagate to other mount namespaces.
fn prepare_run_dir() -> Result<()> {
    fs::create_dir_all(NETNS_RUN_DIR).with_context(|| format!("creating {NETNS_RUN_DIR}"))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(
        None::<&str>,
        NETNS_RUN_DIR,
        None::<&str>,
        shared,
        None::<&str>,
    )
    .is_err()
    {
        mount(
            Some(NETNS_RUN_DIR),
            NETNS_RUN_DIR,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting {NETNS_RUN_DIR} on itself"))?;
        mount(
            None::<&str>,
            NETNS_RUN_DIR,
            None::<&str>,
            shared,
            None::<&str>,
        )
        .with_context(|| format!("making {NETNS_RUN_DIR} shared"))?;
    }
    Ok(())
}

/// Create a named network namespace. Fails if it exists.
pub fn create(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        bail!("invalid namespace name {name:?}");
    }
    prepare_run_dir()?;
    let p = path(name);
    if p.exists() {
        bail!("network namespace {name} already exists ({})", p.display());
    }
    File::create(&p).with_context(|| format!("creating {}", p.display()))?;
    // unshare() in a dedicated thread: the new namespace belongs to that thread only, and the
    // bind mount keeps it alive after the thread ends.
    let p2 = p.clone();
    let res = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &p2,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting the new namespace on {}", p2.display()))?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?;
    if let Err(e) = res {
        let _ = fs::remove_file(&p);
        return Err(e);
    }
    Ok(())
}

/// Inode of a namespace, the identity `/proc/PID/ns/net` links show as `net:[INODE]`.
fn inode(name: &str) -> Option<u64> {
    fs::metadata(path(name)).ok().map(|m| m.ino())
}

/// Processes whose network namespace is `name`.
pub fn pids_in(name: &str) -> Vec<i32> {
    let Some(ino) = inode(name) else {
        return vec![];
    };
    let want = format!("net:[{ino}]");
    let me = std::process::id() as i32;
    let mut out = vec![];
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            if let Ok(l) = fs::read_link(e.path().join("ns/net")) {
                if l.to_string_lossy() == want {
                    out.push(pid);
                }
            }
        }
    }
    out
}

/// Delete a named namespace: stop the processes still running in it (SIGTERM, then SIGKILL
/// after `grace`), unmount and remove the file. Interfaces inside go with the namespace.
pub fn delete(name: &str, grace: Duration) -> Result<()> {
    let p = path(name);
    if !p.exists() {
        return Ok(());
    }
    let pids = pids_in(name);
    if !pids.is_empty() {
        tracing::info!(
            netns = name,
            count = pids.len(),
            "stopping processes left in namespace"
        );
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < grace && !pids_in(name).is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in pids_in(name) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    match umount2(&p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", p.display())),
    }
    fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
    Ok(())
}

pub fn open(name: &str) -> Result<File> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        bail!("invalid network namespace name {name:?} (a name under {NETNS_RUN_DIR}, not a path)");
    }
    if !exists(name) {
        bail!(
            "network namespace {name:?} does not exist (looked for {}; `wirelab lab status` lists lab namespaces)",
            path(name).display()
        );
    }
    File::open(path(name)).with_context(|| format!("opening {}", path(name).display()))
}

/// Move the calling thread into namespace `name`. Called at start-up, before any other thread
/// exists, it moves the whole process (threads spawned later inherit it).
pub fn enter(name: &str) -> Result<()> {
    let f = open(name)?;
    setns(&f, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {name}"))?;
    Ok(())
}

/// Run `f` on a fresh thread inside namespace `name` (or the current one for `None`).
pub fn run_in<T, F>(name: Option<&str>, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    let file = name.map(open).transpose()?;
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(file) = file {
                setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace worker thread panicked"))?
    })
}

/// Write a `net.*` sysctl in the current thread's network namespace.
pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let p = Path::new("/proc/sys").join(key.replace('.', "/"));
    fs::write(&p, value).with_context(|| format!("setting sysctl {key}={value} ({})", p.display()))
}

pub fn read_sysctl(key: &str) -> Result<String> {
    let p = Path::new("/proc/sys").join(key.replace('.', "/"));
    Ok(fs::read_to_string(&p)
        .with_context(|| format!("reading sysctl {key}"))?
        .trim()
        .to_string())
}
