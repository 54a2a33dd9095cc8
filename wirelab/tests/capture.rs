//! `wirelab capture` in a lab: what was sent is what is in the file (read back by capinfos
//! and tshark), with directions and ordered timestamps; `-w -` into tshark; a bad filter is
//! refused with its column; kill -9 leaves nothing attached.
mod common;
use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use wirelab::capture::Summary;

const READY: &str = "capture attached";

/// `wirelab cleanup` acts on every lab of the machine: the tests that make labs take turns
/// with the one that runs it (as wan's tests do).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn start_capture(ns: &str, iface: &str, extra: &[&str]) -> Bg {
    let mut c = wirelab();
    c.args(["capture", "--netns", ns, "--iface", iface])
        .args(extra);
    spawn_ready(c, READY, Duration::from_secs(30))
}

/// `tshark -r FILE -T fields -e F…` rows.
fn tshark_fields(file: &std::path::Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut c = Command::new("tshark");
    c.arg("-r").arg(file).args(["-T", "fields"]);
    for f in fields {
        c.args(["-e", f]);
    }
    let o = ok(c);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn tcx_egress_count(ns: &str, iface: &str) -> usize {
    let iface = iface.to_string();
    wirelab::netns::run_in(Some(ns), move || {
        let (_, progs) = aya::programs::SchedClassifier::query_tcx(
            &iface,
            aya::programs::tc::TcAttachType::Egress,
        )?;
        Ok(progs.len())
    })
    .expect("query TCX links")
}

#[test]
fn the_file_holds_what_was_sent_with_directions_and_ordered_times() {
    let _s = serial();
    let lab = Lab::up("cw");
    let dir = TempDir::new("wlcapw");
    let file = dir.join("icmp.pcapng");
    let n = 20;
    let bg = start_capture(
        &lab.ns("server"),
        "eth0",
        &[
            "--filter",
            "icmp and host 198.18.0.1",
            "--json",
            "-w",
            file.to_str().unwrap(),
        ],
    );
    pings_ok(&lab.ns("client"), n, "198.18.0.2");
    let out = bg.terminate();
    let s: Summary = serde_json::from_str(out.text().trim()).expect("summary line");
    assert_eq!(s.written, 2 * n as u64, "{s:?}");
    assert_eq!((s.ingress.matched, s.egress.matched), (n as u64, n as u64));
    assert_eq!(s.ingress.lost + s.egress.lost + s.perf_lost, 0, "{s:?}");

    // capinfos agrees on the count and reads the interface block.
    let o = ok(Command::new("capinfos").arg(&file));
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(
        info.lines().any(|l| l.starts_with("Number of packets:")
            && l.trim_end().ends_with(&format!(" {}", 2 * n))),
        "{info}"
    );
    assert!(info.contains("Time resolution = 0x09"), "{info}");

    let rows = tshark_fields(
        &file,
        &[
            "frame.time_epoch",
            "frame.packet_flags_direction",
            "icmp.type",
            "frame.interface_name",
        ],
    );
    assert_eq!(rows.len(), 2 * n as usize);
    let mut last = 0f64;
    for r in &rows {
        let t: f64 = r[0].parse().unwrap();
        assert!(t >= last, "timestamps out of order: {rows:?}");
        last = t;
        // Echo requests (8) arrive (inbound = 1), replies (0) leave (outbound = 2).
        let want = if r[2] == "8" { "1" } else { "2" };
        assert!(r[1] == want || r[1] == format!("0x0000000{want}"), "{r:?}");
        assert_eq!(r[3], "eth0");
    }
    let now = wirelab::util::unix_now();
    assert!(
        (now - last).abs() < 60.0,
        "wall-clock timestamps: {last} vs {now}"
    );
    // The closing statistics block carries the kernel's counters.
    let bytes = std::fs::read(&file).unwrap();
    let mut r = pcap_file::pcapng::PcapNgReader::new(&bytes[..]).unwrap();
    let mut isb = None;
    while let Some(b) = r.next_block() {
        if let pcap_file::pcapng::Block::InterfaceStatistics(x) = b.unwrap() {
            isb = Some(x.into_owned());
        }
    }
    use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption as O;
    let isb = isb.expect("an interface statistics block at the end");
    let opt = |f: fn(&O<'_>) -> Option<u64>| isb.options.iter().find_map(f);
    assert_eq!(
        opt(|o| if let O::IsbIfDrop(v) = o {
            Some(*v)
        } else {
            None
        }),
        Some(0)
    );
    assert_eq!(
        opt(|o| if let O::IsbFilterAccept(v) = o {
            Some(*v)
        } else {
            None
        }),
        Some(2 * n as u64)
    );
    let recv = opt(|o| {
        if let O::IsbIfRecv(v) = o {
            Some(*v)
        } else {
            None
        }
    })
    .unwrap();
    assert!(recv >= 2 * n as u64, "ifrecv {recv}");
}

#[test]
fn stdout_pipes_into_tshark() {
    let _s = serial();
    let lab = Lab::up("cs");
    let bg = start_capture(
        &lab.ns("server"),
        "eth0",
        &["--filter", "icmp", "--count", "6", "-w", "-"],
    );
    pings_ok(&lab.ns("client"), 3, "198.18.0.2");
    let out = bg
        .wait(Duration::from_secs(20))
        .expect("capture exits after --count");
    assert!(out.success(), "{:?}", out.status);
    let mut t = Command::new("tshark")
        .args(["-r", "-", "-T", "fields", "-e", "icmp.type"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("tshark");
    t.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let o = t.wait_with_output().unwrap();
    let types: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(types, ["8", "0", "8", "0", "8", "0"]);
}

#[test]
fn a_bad_filter_is_refused_with_its_column() {
    let err = fails(wirelab().args([
        "capture",
        "--iface",
        "lo",
        "--filter",
        "tcp and port",
        "-w",
        "/dev/null",
    ]));
    assert!(err.contains("column 13"), "{err}");
    assert!(err.contains("found the end"), "{err}");
    let err = fails(wirelab().args([
        "capture",
        "--iface",
        "lo",
        "--filter",
        "host example.com",
        "-w",
        "/dev/null",
    ]));
    assert!(
        err.contains("column 6") && err.contains("not an IP address"),
        "{err}"
    );
}

#[test]
fn killed_capture_leaves_nothing_attached() {
    let _s = serial();
    let lab = Lab::up("ck9");
    let dir = TempDir::new("wlcapk");
    let bg = start_capture(
        &lab.ns("server"),
        "eth0",
        &["-w", dir.join("k.pcapng").to_str().unwrap()],
    );
    assert!(xdp_attached(&lab.ns("server"), "eth0"));
    let tcx = wirelab::runtime::bpf::tcx_in_use();
    if tcx {
        assert_eq!(tcx_egress_count(&lab.ns("server"), "eth0"), 1);
    }
    bg.kill();
    assert!(
        eventually(Duration::from_secs(5), || !xdp_attached(
            &lab.ns("server"),
            "eth0"
        ) && (!tcx
            || tcx_egress_count(&lab.ns("server"), "eth0") == 0)),
        "capture programs still attached after kill -9"
    );
}

#[test]
fn cleanup_removes_a_killed_captures_clsact_filter_and_spares_a_live_one() {
    let _s = serial();
    let lab = Lab::up("ckc");
    let dir = TempDir::new("wlcapc");
    let filters = |iface: &str| {
        let o = ok(in_ns(
            &lab.ns("server"),
            &["tc", "filter", "show", "dev", iface, "egress"],
        ));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains("capture_tc"))
            .count()
    };
    let mut c = wirelab();
    c.env("WIRELAB_TC_ATTACH", "clsact")
        .args(cli::on_iface("capture", &lab.ns("server"), "eth0"))
        .arg("-w")
        .arg(dir.join("a.pcapng"));
    let bg = spawn_ready(c, READY, Duration::from_secs(30));
    assert_eq!(filters("eth0"), 1);
    // A second capture on the same interface is refused while the first runs.
    let err = fails(
        wirelab()
            .args(cli::on_iface("capture", &lab.ns("server"), "eth0"))
            .arg("-w")
            .arg(dir.join("b.pcapng")),
    );
    assert!(err.contains("already runs"), "{err}");
    // While it runs, cleanup leaves its filter alone.
    ok(wirelab()
        .env("WIRELAB_TC_ATTACH", "clsact")
        .args(["cleanup", "--json"]));
    assert_eq!(
        filters("eth0"),
        1,
        "cleanup removed a live capture's filter"
    );
    bg.kill();
    assert_eq!(
        filters("eth0"),
        1,
        "a killed clsact capture leaves its filter"
    );
    let o = ok(wirelab()
        .env("WIRELAB_TC_ATTACH", "clsact")
        .args(["cleanup", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["capture_filters_removed"],
        serde_json::json!([format!("{}/eth0", lab.ns("server"))]),
        "{v}"
    );
    assert_eq!(filters("eth0"), 0);
}
