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
