//! `wirelab inspect` with real traffic in a lab.
mod common;
use std::time::Duration;

use common::*;

fn final_json(out: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(out);
    let last = text
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no output: {text}"));
    let v: serde_json::Value = serde_json::from_str(last).expect("final line is JSON");
    assert_eq!(v["type"], "final", "{last}");
    v
}

#[test]
fn counts_exactly_n_icmp_echo_requests() {
    let lab = Lab::up("li");
    let n = 17;
    let tmp = TempDir::new("wlinsrec");
    let rec = tmp.join("run");
    let bg = start_inspect(
        &lab.ns("wan"),
        "to-client",
        &[
            "--interval",
            "500ms",
            "--duration",
            "30s",
            "--json",
            "--record",
            rec.to_str().unwrap(),
        ],
    );
    assert!(xdp_attached(&lab.ns("wan"), "to-client"));
    pings_ok(&lab.ns("client"), n as u32, "198.18.0.2");
    // SIGTERM ends the run early with a final report.
    let out = bg.terminate();
    let v = final_json(&out.stdout);
    assert_eq!(v["counts"]["icmp"]["packets"], n, "{v}");
    // 98-byte echo requests (84 IP + 14 Ethernet).
    assert_eq!(v["counts"]["icmp"]["bytes"], n * 98, "{v}");
    assert_eq!(v["counts"]["malformed"]["packets"], 0, "{v}");
    assert!(v["counts"]["ipv4"]["packets"].as_u64().unwrap() >= n);
    // Interval lines came before the final one.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().filter(|l| l.contains("\"interval\"")).count() >= 1);
    // Detached after exit.
    assert!(
        !xdp_attached(&lab.ns("wan"), "to-client"),
        "XDP left attached"
    );
    // The record's series, read as inspect's own line type, adds up to the final count, but
    // for a stop within half an interval of a tick: that sliver (< 250 ms, at most 5 pings
    // 50 ms apart) goes into the totals only.
    let series = std::fs::read_to_string(rec.join("inspect.series.jsonl")).unwrap();
    let mut icmp = 0;
    for l in series.lines() {
        let l: wirelab::record::Stamped<wirelab::inspect::Interval> =
            serde_json::from_str(l).unwrap();
        icmp += l.line.counts["icmp"].packets;
    }
    assert!(
        (n - 5..=n).contains(&icmp),
        "intervals sum to {icmp}, total {n}"
    );
    // The report reads it back and plots the rate per class.
    ok(wirelab().arg("report").arg(&rec));
    assert!(rec.join("report-plots/inspect-rate.svg").exists());
}

#[test]
fn duration_ends_and_detaches_and_skb_mode_works() {
    let lab = Lab::up("ld");
    let o = ok(wirelab()
        .args(cli::on_iface("inspect", &lab.ns("server"), "eth0"))
        .args([
            "--duration",
            "1500ms",
            "--interval",
            "500ms",
            "--json",
            "--mode",
            "skb",
        ]));
    let v = final_json(&o.stdout);
    assert_eq!(v["mode"], "skb");
    let d = v["duration_s"].as_f64().unwrap();
    assert!((1.4..3.0).contains(&d), "duration {d}");
    assert!(!xdp_attached(&lab.ns("server"), "eth0"));
}

#[test]
fn killed_inspect_leaves_nothing_attached() {
    let lab = Lab::up("lk9");
    let bg = start_inspect(&lab.ns("wan"), "to-server", &[]);
    assert!(xdp_attached(&lab.ns("wan"), "to-server"));
    bg.kill();
    // The bpf_link dies with its owner.
    assert!(
        eventually(Duration::from_secs(5), || !xdp_attached(
            &lab.ns("wan"),
            "to-server"
        )),
        "XDP still attached after kill -9"
    );
}

#[test]
fn clear_errors() {
    require_privileges();
    let err = fails(wirelab().args(["inspect", "--iface", "wl-no-such-if0", "--duration", "1s"]));
    assert!(err.contains("no interface named"), "{err}");
    let err = fails(wirelab().args(cli::on_iface("inspect", "wl-no-such-ns", "eth0")));
    assert!(err.contains("does not exist"), "{err}");
}
