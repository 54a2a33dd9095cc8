//! `wirelab doctor` on this machine: every check reported, none failing where the suite runs.
mod common;
use common::*;

#[test]
fn doctor_reports_every_check_and_passes_here() {
    require_privileges();
    let o = wirelab().args(["doctor", "--json"]).output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let what: Vec<&str> = lines.iter().map(|l| l["what"].as_str().unwrap()).collect();
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
    let failed: Vec<_> = lines.iter().filter(|l| l["status"] == "fail").collect();
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
    let checks = |k: &str| -> (Vec<serde_json::Value>, bool) {
        let o = wirelab()
            .args(["doctor", "--json", "--kernel", k])
            .output()
            .unwrap();
        let v = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        (v, o.status.success())
    };
    let status = |v: &[serde_json::Value], what: &str| -> String {
        v.iter()
            .find(|c| c["what"] == what)
            .unwrap_or_else(|| panic!("no {what} check in {v:?}"))["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // 6.1: everything runs; TCX is missing, so tc programs fall back to clsact filters.
    let (v, ok61) = checks("6.1.0-28-cloud-amd64");
    assert!(ok61, "{v:?}");
    assert_eq!(status(&v, "TCX"), "warn");
    assert_eq!(status(&v, "XDP through bpf_link"), "ok");
    assert_eq!(status(&v, "XDP live frames"), "ok");
    // 5.4: below the minimum, no XDP bpf_link (5.9), no live frames (5.18): exit status 1.
    let (v, ok54) = checks("5.4");
    assert!(!ok54);
    assert_eq!(status(&v, "kernel"), "fail");
    assert_eq!(status(&v, "XDP through bpf_link"), "fail");
    assert_eq!(status(&v, "XDP live frames"), "warn");
    // Not a version.
    let o = wirelab()
        .args(["doctor", "--kernel", "latest"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a version"));
}
