//! `wirelab doctor`: what this machine can run, checked the way the tools check it before they
//! attach anything (the kernel feature list is `kernel.rs`, shared with them).
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::kernel::{self, feature, Feature};

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, with a fallback or a limit worth knowing.
    Warn,
    /// A tool (named in the detail) cannot run.
    Fail,
}

/// One check: a line of `doctor --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub what: String,
    pub status: Status,
    pub detail: String,
}

fn check(what: &str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        what: what.into(),
        status,
        detail: detail.into(),
    }
}

/// `what` passes with `ok` where `passed`; else it is `missing` with `otherwise`.
fn check_whether(
    what: &str,
    passed: bool,
    ok: impl Into<String>,
    missing: Status,
    otherwise: impl Into<String>,
) -> Check {
    if passed {
        check(what, Status::Ok, ok)
    } else {
        check(what, missing, otherwise)
    }
}

fn kernel_feature(v: Option<(u32, u32)>, f: Feature, missing: Status) -> Check {
    let have = v.is_none_or(|v| v >= f.since);
    check(
        f.label,
        if have { Status::Ok } else { missing },
        format!(
            "{}: Linux {}.{}+, for {}{}",
            f.name,
            f.since.0,
            f.since.1,
            f.needed_for,
            if have { "" } else { ": missing here" }
        ),
    )
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

fn kernel_release(rel: &str, v: Option<(u32, u32)>) -> Check {
    check(
        "kernel",
        if v.is_some_and(|v| v < (5, 10)) {
            Status::Fail
        } else {
            Status::Ok
        },
        format!(
            "Linux {rel} (5.10+; tested: 5.10, 5.15, 6.1, 6.12, 6.18, 7.2; Debian 12 ships 6.1, Ubuntu 22.04 5.15)"
        ),
    )
}

/// The features known by the version that brought them.
fn kernel_features(v: Option<(u32, u32)>) -> Vec<Check> {
    [
        (feature::CGROUP_SOCK_ADDR_CGROUP_ID, Status::Fail),
        (feature::BPF_LINK_XDP, Status::Fail),
        (feature::XDP_LIVE_FRAMES, Status::Warn),
    ]
    .into_iter()
    .map(|(f, missing)| kernel_feature(v, f, missing))
    .collect()
}

fn tcx(have: bool) -> Check {
    check_whether(
        "TCX",
        have,
        "tc programs attach through bpf_link (Linux 6.6+)",
        Status::Warn,
        "Linux 6.6+ has TCX; without it swarm's and lb's tc programs are clsact filters, which a killed run leaves until `wirelab cleanup`",
    )
}

/// What a kernel `rel` (e.g. `6.1`, `5.15.0-91-generic`) would lack, from the checks that
/// depend on the version alone (`doctor --kernel`): run `wirelab doctor` on that machine for
/// the rest. `None` when `rel` is not a version.
pub fn for_kernel(rel: &str) -> Option<Vec<Check>> {
    let v = kernel::parse_version(rel)?;
    let mut out = vec![kernel_release(rel, Some(v))];
    out.extend(kernel_features(Some(v)));
    out.push(tcx(v >= kernel::TCX_SINCE));
    Some(out)
}

/// `doctor --programs`: every program of every tool loaded into this kernel (nothing
/// attached), one check each: refused is a failure (the verifier's reason in the detail); a
/// program using more than half the verifier's budget is a warning (an older kernel, which
/// prunes less, may refuse it). Where the kernel does not report the count (before 5.16), it
/// comes from a statistics load (`ebpf::load_every_program`); a count that could not be had
/// at all is a warning too (the headroom is unknown).
pub fn programs() -> Vec<Check> {
    let loads = match crate::ebpf::load_every_program() {
        Ok(l) => l,
        Err(e) => return vec![check("programs", Status::Fail, format!("{e:#}"))],
    };
    loads
        .into_iter()
        .map(|l| {
            let what = format!("program {}/{}", l.object.name(), l.program);
            let limit = crate::ebpf::VERIFIER_LIMIT;
            let counted = |n: u32, how: &str| {
                check(
                    &what,
                    if n > limit / 2 {
                        Status::Warn
                    } else {
                        Status::Ok
                    },
                    format!(
                        "loads; the verifier processed {n} instructions ({:.1} % of its limit{how})",
                        100.0 * n as f64 / limit as f64
                    ),
                )
            };
            match (l.error, l.verified, l.stats_load) {
                (Some(e), _, _) => check(&what, Status::Fail, format!("refused: {e}")),
                (None, Some(n), _) => counted(n, ""),
                (None, None, Some(Ok(n))) => counted(
                    n,
                    "; counted by a statistics load: this kernel does not report it",
                ),
                (None, None, Some(Err(e))) => check(
                    &what,
                    Status::Warn,
                    format!(
                        "loads, but how much verifying it took is unknown: this kernel does not say, and the statistics load failed: {e}"
                    ),
                ),
                (None, None, None) => check(
                    &what,
                    Status::Ok,
                    "loads (this kernel does not say how much verifying it took)",
                ),
            }
        })
        .collect()
}

/// Every check, in the order a newcomer meets them.
pub fn run() -> Vec<Check> {
    let mut out = vec![];
    let rel = kernel::release();
    let v = kernel::parse_version(&rel);
    out.push(kernel_release(&rel, v));
    out.push(check_whether(
        "root",
        nix::unistd::geteuid().is_root(),
        "running as root",
        Status::Fail,
        "eBPF and namespaces need root: run as root, or `sudo env PATH=$PATH cargo xtask ...` when rustup belongs to your user",
    ));
    out.extend(kernel_features(v));
    out.push(match crate::runtime::xsk::available() {
        Ok(()) => check(
            "AF_XDP sockets",
            Status::Ok,
            "an AF_XDP socket opens, for wan's timing engine",
        ),
        Err(e) => check(
            "AF_XDP sockets",
            if e.errno() == Some(nix::errno::Errno::EAFNOSUPPORT) {
                Status::Fail
            } else {
                Status::Warn
            },
            format!("{e}, for wan's timing engine"),
        ),
    });
    out.push(tcx(kernel::has_tcx()));
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    out.push(check_whether(
        "bpffs",
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf")),
        "mounted at /sys/fs/bpf",
        Status::Warn,
        "not mounted at /sys/fs/bpf (`cargo xtask setup` mounts it; the tests need it)",
    ));
    out.push(match crate::swarm::cgroup::root_no_mount() {
        Ok(p) => check("cgroup v2", Status::Ok, format!("at {}", p.display())),
        Err(e) => check(
            "cgroup v2",
            Status::Warn,
            format!("{e:#} (swarm mounts one itself when it can)"),
        ),
    });
    out.push(check_whether(
        "BTF",
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "/sys/kernel/btf/vmlinux",
        Status::Warn,
        "no /sys/kernel/btf/vmlinux: the programs load without it, bpftool shows less",
    ));
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap_or((0, 0));
    out.push(check(
        "open files",
        if hard >= 20_000 {
            Status::Ok
        } else {
            Status::Warn
        },
        format!(
            "hard RLIMIT_NOFILE {hard}: swarm connect holds at most {} connections at once",
            hard.saturating_sub(crate::swarm::connect::OWN_FDS)
        ),
    ));
    for (cmd, for_what, missing) in [
        ("ip", "the tour and the tests (iproute2)", Status::Warn),
        ("ethtool", "checking offloads by hand", Status::Warn),
        ("smbclient", "the swarm tour's SMB example", Status::Warn),
        ("iperf3", "wan's cross-checks and benchmarks", Status::Warn),
        ("nft", "the fw benchmark's peer", Status::Warn),
    ] {
        out.push(check_whether(
            cmd,
            on_path(cmd),
            format!("found, for {for_what}"),
            missing,
            format!("not found, for {for_what} (`cargo xtask setup` installs it)"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_fail_on_old_kernels_and_pass_on_new_ones() {
        let f = feature::BPF_LINK_XDP;
        assert_eq!(
            kernel_feature(Some((5, 4)), f, Status::Fail).status,
            Status::Fail
        );
        assert_eq!(
            kernel_feature(Some((5, 10)), f, Status::Fail).status,
            Status::Ok
        );
        let d = kernel_feature(Some((5, 4)), f, Status::Fail).detail;
        assert!(d.contains("Linux 5.9+") && d.contains("missing"), "{d}");
    }
}
