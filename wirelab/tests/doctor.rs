//! `wirelab doctor` on this machine: every check reported, none failing where the suite runs.
mod common;
use common::*;
use wirelab::doctor::{Check, Status};

/// `doctor --json`'s lines, one check each.
fn checks_of(stdout: &[u8]) -> Vec<Check> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one doctor check per line"))
        .collect()
}

#[test]
fn doctor_reports_every_check_and_passes_here() {
    require_privileges();
    let o = wirelab().args(["doctor", "--json"]).output().unwrap();
    let lines = checks_of(&o.stdout);
    let what: Vec<&str> = lines.iter().map(|l| l.what.as_str()).collect();
    for w in [
        "kernel",
        "root",
        "XDP through bpf_link",
        "AF_XDP sockets",
        "TCX",
        "bpffs",
        "cgroup v2",
        "open files",
    ] {
        assert!(what.contains(&w), "no {w} check in {what:?}");
    }
    let failed: Vec<_> = lines.iter().filter(|l| l.status == Status::Fail).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(o.status.success());
    // The table says the same.
    let o = ok(wirelab().arg("doctor"));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.lines().count() == lines.len() && text.contains("ok    root"),
        "{text}"
    );
}

/// `doctor --kernel`: what Debian 12's 6.1 and an older 5.4 would lack, by version alone.
#[test]
fn doctor_says_what_another_kernel_would_lack() {
    let checks = |k: &str| -> (Vec<Check>, bool) {
        let o = wirelab()
            .args(["doctor", "--json", "--kernel", k])
            .output()
            .unwrap();
        (checks_of(&o.stdout), o.status.success())
    };
    let status = |v: &[Check], what: &str| -> Status {
        v.iter()
            .find(|c| c.what == what)
            .unwrap_or_else(|| panic!("no {what} check in {v:?}"))
            .status
    };
    // 6.1: everything runs; TCX is missing, so tc programs fall back to clsact filters.
    let (v, ok61) = checks("6.1.0-28-cloud-amd64");
    assert!(ok61, "{v:?}");
    assert_eq!(status(&v, "TCX"), Status::Warn);
    assert_eq!(status(&v, "XDP through bpf_link"), Status::Ok);
    assert_eq!(status(&v, "XDP live frames"), Status::Ok);
    // 5.4: below the minimum, no XDP bpf_link (5.9), no live frames (5.18): exit status 1.
    let (v, ok54) = checks("5.4");
    assert!(!ok54);
    assert_eq!(status(&v, "kernel"), Status::Fail);
    assert_eq!(status(&v, "XDP through bpf_link"), Status::Fail);
    assert_eq!(status(&v, "XDP live frames"), Status::Warn);
    // Not a version.
    let o = wirelab()
        .args(["doctor", "--kernel", "latest"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a version"));
}

/// `doctor --programs`: one more check per program of every tool, each loaded into this
/// kernel, with the verifier's count (this kernel reports it).
#[test]
fn doctor_loads_every_program() {
    require_privileges();
    let o = wirelab()
        .args(["doctor", "--json", "--programs"])
        .output()
        .unwrap();
    let lines = checks_of(&o.stdout);
    let progs: Vec<&Check> = lines
        .iter()
        .filter(|c| c.what.starts_with("program "))
        .collect();
    for p in [
        "program fw/fw",
        "program lb/lb",
        "program wan/wan_xdp",
        "program swarm/swarm_connect4",
    ] {
        assert!(progs.iter().any(|c| c.what == p), "no {p} in {progs:?}");
    }
    for c in &progs {
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.detail.contains("the verifier processed"), "{c:?}");
    }
    assert!(o.status.success());
}
