//! `wirelab inspect` with real traffic in a lab.
mod common;
use std::time::Duration;

use common::*;
use wirelab::{
    inspect::{FinalLine, Interval},
    record::{LineKind, Stamped},
    runtime::bpf::AttachMode,
};

/// `inspect --json` on stdout, as inspect's own line types: the interval lines, then the
/// final line.
fn json_lines(out: &[u8]) -> (Vec<Interval>, FinalLine) {
    let text = String::from_utf8_lossy(out);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let (last, before) = lines
        .split_last()
        .unwrap_or_else(|| panic!("no output: {text}"));
    let v: FinalLine = serde_json::from_str(last).expect("the final line is inspect's FinalLine");
    assert_eq!(v.kind, LineKind::Final, "{last}");
    let intervals = before
        .iter()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not an interval line ({e}): {l}"))
        })
        .collect();
    (intervals, v)
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
    let (intervals, v) = json_lines(&out.stdout);
    assert_eq!(v.counts["icmp"].packets, n, "{v:?}");
    // 98-byte echo requests (84 IP + 14 Ethernet).
    assert_eq!(v.counts["icmp"].bytes, n * 98, "{v:?}");
    assert_eq!(v.counts["malformed"].packets, 0, "{v:?}");
    assert!(v.counts["ipv4"].packets >= n);
    // Interval lines came before the final one.
    assert!(
        intervals
            .iter()
            .filter(|l| l.kind == LineKind::Interval)
            .count()
            >= 1
    );
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
        let l: Stamped<Interval> = serde_json::from_str(l).unwrap();
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
    let (_, v) = json_lines(&o.stdout);
    assert_eq!(v.mode, AttachMode::Skb);
    let d = v.duration_s;
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
