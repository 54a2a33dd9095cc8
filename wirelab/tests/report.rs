//! Run records, `wirelab report` and `--metrics`, end to end: a recorded wan + probe run in a
//! lab, its summary against the probe's own output, the HTML in headless Chromium, live
//! metrics through a strict OpenMetrics parser, and damaged run directories.
mod common;
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use serde::de::DeserializeOwned;
use wirelab::{
    probe::{UdpInterval, UdpReport},
    record::{self, FinalDoc, LineKind, Stamped, Summary},
    wan::{ChangeEntry, Line},
};

const TO: &str = "198.18.0.2:7000";

/// A JSON-lines file of the record, each line as the tool's own type.
fn lines<T: DeserializeOwned>(p: &Path) -> Vec<T> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", p.display())))
        .collect()
}

fn start_wan(lab: &Lab, spec: &str, dir: &Path) -> (Bg, String) {
    let mut c = wirelab();
    c.args(cli::wan(&lab.ns("wan")));
    c.args([
        "--both",
        spec,
        "--json",
        "--interval",
        "500ms",
        "--duration",
        "60s",
    ]);
    c.args(["--seed", "3", "--metrics", "127.0.0.1:0", "--record"]);
    c.arg(dir);
    let bg = spawn_ready(c, "wan running", Duration::from_secs(20));
    let addr = tcp_listen_addr(bg.pid());
    (bg, addr)
}

fn stop(bg: Bg) -> String {
    let out = bg.terminate();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A recorded UDP probe run (200/s) of `count` probes from namespace `ns` to the server.
fn probe_udp(ns: &str, dir: &Path, count: &str) -> UdpReport {
    let mut c = wirelab();
    c.args(cli::probe_client(ns, TO));
    c.args([
        "--rate",
        "200",
        "--count",
        count,
        "--interval",
        "500ms",
        "--json",
        "--record",
    ]);
    let o = ok(c.arg(dir));
    serde_json::from_slice(&o.stdout).expect("probe JSON")
}

fn chromium(args: &[&str], url: &str) -> std::process::Output {
    let tmp = TempDir::new("wlrep-chrome-");
    let ud = tmp.0.clone();
    let o = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", ud.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (install it: cargo xtask setup)");
    assert!(o.status.success(), "chromium failed: {o:?}");
    o
}

fn console_lines(o: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(String::from)
        .collect()
}

/// Luma variance and share of non-white pixels of a PNG screenshot.
fn png_stats(p: &Path) -> (f64, f64) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(p).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    let ch = info.color_type.samples();
    let px = &buf[..info.buffer_size()];
    let mut lum = vec![];
    for p in px.chunks(ch) {
        let (r, g, b) = if ch >= 3 {
            (p[0] as f64, p[1] as f64, p[2] as f64)
        } else {
            (p[0] as f64, p[0] as f64, p[0] as f64)
        };
        lum.push(0.299 * r + 0.587 * g + 0.114 * b);
    }
    let n = lum.len() as f64;
    let mean = lum.iter().sum::<f64>() / n;
    let var = lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n;
    let nonwhite = lum.iter().filter(|l| **l < 240.0).count() as f64 / n;
    (var, nonwhite)
}

#[test]
fn recorded_wan_and_probe_run_report_and_metrics() {
    let lab = Lab::up("rep");
    let _server = probe_server(&lab, TO, "120s");
    let (tmp_a, tmp_b) = (TempDir::new("wlrep-a-"), TempDir::new("wlrep-b-"));
    let (dir, dir_b) = (tmp_a.0.clone(), tmp_b.0.clone());

    // Run A: 20 ms each way, a UDP probe run recorded into the same directory, two scrapes
    // of the wan's metrics while the probes flow.
    let (wan, maddr) = start_wan(&lab, "delay 20ms", &dir);
    let t0 = Instant::now();
    let lab_ns = lab.ns("client");
    let dir2 = dir.clone();
    let probe = std::thread::spawn(move || probe_udp(&lab_ns, &dir2, "800"));
    std::thread::sleep(Duration::from_millis(1500));
    let (head, body1) = scrape(&maddr);
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (_, body2) = scrape(&maddr);
    let udp = probe.join().expect("probe thread");
    let probe_secs = t0.elapsed().as_secs_f64();
    let (m1, m2) = (parse_openmetrics(&body1), parse_openmetrics(&body2));
    for dir in ["a_to_b", "b_to_a"] {
        let l = [("direction", dir), ("class", "default")];
        let (a, b) = (
            sample(&m1, "wirelab_wan_received_packets_total", &l),
            sample(&m2, "wirelab_wan_received_packets_total", &l),
        );
        // 200 probes/s for 1.5 s between the scrapes, updated every 0.5 s: at least 150 more.
        assert!(b >= a + 150.0, "{dir}: received {a} then {b}");
        assert!(
            sample(&m2, "wirelab_wan_sent_packets_total", &l)
                > sample(&m1, "wirelab_wan_sent_packets_total", &l)
        );
        assert!(
            sample(&m2, "wirelab_wan_received_bytes_total", &l)
                > sample(&m1, "wirelab_wan_received_bytes_total", &l)
        );
        sample(
            &m2,
            "wirelab_wan_dropped_packets_total",
            &[("direction", dir), ("class", "default"), ("cause", "loss")],
        );
    }
    assert_eq!(
        m2.iter()
            .find(|r| r.family == "wirelab_wan_received_packets")
            .unwrap()
            .kind,
        "counter"
    );
    // A live change is recorded with its time.
    ok(wirelab().args([
        "wan",
        "set",
        "--netns",
        &lab.ns("wan"),
        "--both",
        "delay 20ms",
    ]));
    std::thread::sleep(Duration::from_millis(600));
    let wan_out = stop(wan);
    let wan_secs = t0.elapsed().as_secs_f64();

    // summary.json: the probe's measured values are the probe's own numbers.
    let s: Summary = record::read_doc(&dir.join("summary.json")).unwrap();
    assert_eq!(s.format, "wirelab-record");
    assert_eq!(s.version, 1);
    assert!(s.unfinished.is_empty(), "{s:?}");
    let meas = |src: &str, q: &str, d: &str| -> f64 {
        s.measured
            .iter()
            .find(|m| m.source == src && m.quantity.quantity == q && m.quantity.direction == d)
            .map(|m| m.quantity.value)
            .unwrap_or_else(|| panic!("no measured {src} {q} {d}: {s:?}"))
    };
    let eq = |a: f64, b: f64| (a - b).abs() < 1e-9;
    for (d, k) in [("a_to_b", &udp.forward), ("b_to_a", &udp.reverse)] {
        assert!(eq(meas("probe-udp", "delay_ms", d), k.delay_ms.p50));
        assert!(eq(
            meas("probe-udp", "delay_stddev_ms", d),
            k.delay_ms.stddev
        ));
        assert!(eq(meas("probe-udp", "loss_pct", d), k.loss_pct));
    }
    // Configured vs measured: 20 ms against the probe's p50, within the stated tolerance.
    let cmp = s
        .comparisons
        .iter()
        .find(|c| {
            c.quantity == "delay_ms" && c.direction == "a_to_b" && c.measured_by == "probe-udp"
        })
        .unwrap_or_else(|| panic!("no delay comparison: {s:?}"));
    assert_eq!(cmp.configured, 20.0);
    assert!(eq(cmp.measured, udp.forward.delay_ms.p50));
    assert_eq!(cmp.configured_by, "wan");

    // Series: one line per interval, as many as the final document says.
    let wan_series: Vec<Stamped<Line>> = lines(&dir.join("wan.series.jsonl"));
    let wan_final: FinalDoc = record::read_doc(&dir.join("wan.final.json")).unwrap();
    assert_eq!(wan_series.len() as u64, wan_final.run.intervals);
    let printed = wan_out
        .lines()
        .map(|l| serde_json::from_str::<Line>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|l| l.kind == LineKind::Interval)
        .count();
    assert_eq!(wan_series.len(), printed, "record vs stdout interval lines");
    let expect = wan_secs / 0.5;
    assert!(
        (wan_series.len() as f64) >= expect * 0.7 && (wan_series.len() as f64) <= expect + 2.0,
        "{} wan intervals in {wan_secs:.1}s",
        wan_series.len()
    );
    for (i, l) in wan_series.iter().enumerate() {
        assert_eq!(l.seq, (i + 1) as u64);
        assert!(l.line.classes.iter().any(|r| r.class == "default"));
    }
    let probe_series: Vec<Stamped<UdpInterval>> = lines(&dir.join("probe-udp.series.jsonl"));
    let probe_final: FinalDoc = record::read_doc(&dir.join("probe-udp.final.json")).unwrap();
    assert_eq!(probe_series.len() as u64, probe_final.run.intervals);
    // 800 probes at 200/s = 4 s of sending + 1 s wait, 0.5 s intervals.
    assert!(
        probe_series.len() >= 8 && (probe_series.len() as f64) <= probe_secs / 0.5 + 2.0,
        "{} probe intervals",
        probe_series.len()
    );
    let sent: u64 = probe_series.iter().map(|l| l.line.sent).sum();
    assert_eq!(sent, 800);
    let changes: Vec<ChangeEntry> = lines(&dir.join("wan.changes.jsonl"));
    assert_eq!(changes.len(), 1);
    assert!(changes[0].applied.contains("delay 20ms"));

    // Run B: 40 ms, for the comparison.
    let (wan_b, _) = start_wan(&lab, "delay 40ms", &dir_b);
    let udp_b = probe_udp(&lab.ns("client"), &dir_b, "400");
    stop(wan_b);
    let dp = udp_b.forward.delay_ms.p50 - udp.forward.delay_ms.p50;
    assert!((dp - 20.0).abs() < 5.0, "B - A forward p50 = {dp}");

    // The report of run A: HTML with plots, SVG and PNG files beside it.
    let html = dir.join("report.html");
    let o = ok(wirelab().args(["report", dir.to_str().unwrap()]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("report.html"));
    let text = std::fs::read_to_string(&html).unwrap();
    // The live change's row: its source and the SPEC it put in force.
    let row = text
        .lines()
        .find(|l| l.starts_with("<tr><td class=n>1</td>") && l.contains("<td>set</td>"))
        .unwrap_or_else(|| panic!("no row for the live change in the report"));
    assert!(row.contains("delay 20ms"), "{row}");
    for id in [
        "wan-delay",
        "wan-queue",
        "wan-throughput",
        "wan-drops",
        "probe-delay",
        "probe-cdf",
        "probe-histogram",
        "probe-loss",
    ] {
        assert!(
            text.contains(&format!("id=\"plot-{id}\"")),
            "plot {id} missing"
        );
        for ext in ["svg", "png"] {
            let p = dir.join("report-plots").join(format!("{id}.{ext}"));
            assert!(
                std::fs::metadata(&p)
                    .map(|m| m.len() > 1000)
                    .unwrap_or(false),
                "{}",
                p.display()
            );
        }
    }
    // Self-contained: nothing loaded from anywhere (the only URLs are SVG namespaces).
    assert!(!text.contains("<link") && !text.contains(" src=") && !text.contains("url("));

    // Headless Chromium: the console stays silent (checked against a page that is not),
    // the script ran, the plots are in the DOM, and the screenshot is not blank.
    let bad = dir.join("bad.html");
    std::fs::write(
        &bad,
        "<html><body><script>undefinedFn();</script></body></html>",
    )
    .unwrap();
    let ob = chromium(&["--dump-dom"], &format!("file://{}", bad.display()));
    assert!(
        !console_lines(&ob).is_empty(),
        "the console check sees nothing: {ob:?}"
    );
    let url = format!("file://{}", html.display());
    let od = chromium(&["--dump-dom"], &url);
    assert!(
        console_lines(&od).is_empty(),
        "console: {:?}",
        console_lines(&od)
    );
    let dom = String::from_utf8_lossy(&od.stdout);
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page script did not run"
    );
    let svgs = dom.matches("<svg").count();
    assert!(svgs >= 8, "{svgs} SVG elements in the DOM");
    assert!(dom.matches("<polyline").count() + dom.matches("<path").count() >= 8);
    let shot = dir.join("shot.png");
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,2400",
        ],
        &url,
    );
    let (var, nonwhite) = png_stats(&shot);
    assert!(
        var > 100.0 && nonwhite > 0.02,
        "blank screenshot? variance {var:.1}, non-white {nonwhite:.3}"
    );

    // Compare A and B: overlaid plots, and a table of differences with the +20 ms.
    let cmp_html = dir.join("compare.html");
    ok(wirelab().args([
        "report",
        dir.to_str().unwrap(),
        dir_b.to_str().unwrap(),
        "--out",
        cmp_html.to_str().unwrap(),
    ]));
    let t = std::fs::read_to_string(&cmp_html).unwrap();
    assert!(t.contains("id=measured-diff") && t.contains("id=config-diff"));
    assert!(t.contains("delay 40ms") && t.contains("A: a_to_b") && t.contains("B: a_to_b"));
    let oc = chromium(&["--dump-dom"], &format!("file://{}", cmp_html.display()));
    assert!(
        console_lines(&oc).is_empty(),
        "console: {:?}",
        console_lines(&oc)
    );
    assert!(String::from_utf8_lossy(&oc.stdout).contains("data-ready=\"1\""));
}

/// Write a small run directory with the real recorder and the probe's own line types.
fn small_run(dir: &Path) {
    use wirelab::{
        probe::{DelayStats, Dirs, UdpConfig, UdpInterval, UdpRecord, UdpReport},
        record::{LineKind, Quantity, Recorder},
    };
    let config = UdpConfig {
        to: TO.parse().unwrap(),
        rate_pps: 10.0,
        count: Some(50),
        duration_s: None,
        size: 64,
        wait_s: 0.3,
        interval_s: 1.0,
        direction_mapping: Dirs {
            forward: "a_to_b",
            reverse: "b_to_a",
        },
    };
    let mut r = Recorder::create(dir, "probe-udp", "probe-udp", &config).unwrap();
    let stats = |p50: f64, p99: f64| DelayStats {
        count: 10,
        p50,
        p99,
        ..Default::default()
    };
    for i in 0..5 {
        r.interval(&UdpInterval {
            kind: LineKind::Interval,
            t: i as f64,
            interval_s: 1.0,
            sent: 10,
            forward: Some(stats(20.0 + i as f64, 21.0 + i as f64)),
            reverse: Some(stats(20.0, 22.0)),
            reordered: 0,
        })
        .unwrap();
    }
    let fin = UdpRecord {
        report: UdpReport {
            sent: 50,
            rate_pps: 10.0,
            lost_seqs: vec![3],
            ..Default::default()
        },
        delay_hist_ms: Dirs {
            forward: vec![(20.0, 25), (21.0, 25)],
            reverse: vec![(20.0, 50)],
        },
        send_start_unix: wirelab::util::unix_now(),
    };
    r.finish(
        &fin,
        vec![],
        vec![Quantity::new("delay_ms", "a_to_b", 20.5, "ms", "p50")],
    )
    .unwrap();
}

fn report_err(dir: &Path) -> String {
    let o = wirelab()
        .args(["report", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success(), "report accepted a damaged run: {o:?}");
    assert!(
        !dir.join("report.html").exists(),
        "a report was written anyway"
    );
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn damaged_run_directories_are_errors_naming_file_and_line() {
    let tmp = TempDir::new("wlrep-dmg-");
    let base = tmp.0.clone();
    let fresh = |tag: &str| {
        let d = base.join(tag);
        small_run(&d);
        d
    };
    // The undamaged one reports fine.
    let d = fresh("good");
    ok(wirelab().args(["report", d.to_str().unwrap()]));
    assert!(d.join("report.html").exists());

    let series = |d: &Path| d.join("probe-udp.series.jsonl");
    // Truncated while writing: the last line is cut.
    let d = fresh("trunc");
    let t = std::fs::read_to_string(series(&d)).unwrap();
    std::fs::write(series(&d), &t[..t.len() - 20]).unwrap();
    let e = report_err(&d);
    assert!(
        e.contains("probe-udp.series.jsonl: line 5: truncated"),
        "{e}"
    );
    // --allow-partial reports it, saying so.
    let o = ok(wirelab().args(["report", d.to_str().unwrap(), "--allow-partial"]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("partial data"));
    let h = std::fs::read_to_string(d.join("report.html")).unwrap();
    assert!(h.contains("PARTIAL DATA") && h.contains("line 5: truncated"));

    // A corrupted line in the middle.
    let d = fresh("corrupt");
    let t = std::fs::read_to_string(series(&d)).unwrap();
    let mut ls: Vec<&str> = t.lines().collect();
    ls[2] = "{\"seq\": 3, \"t\": 2.0, oops}";
    std::fs::write(series(&d), ls.join("\n") + "\n").unwrap();
    let e = report_err(&d);
    assert!(e.contains("probe-udp.series.jsonl: line 3 column"), "{e}");

    // A line missing in the middle.
    let d = fresh("gap");
    let t = std::fs::read_to_string(series(&d)).unwrap();
    let ls: Vec<&str> = t
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|x| x.1)
        .collect();
    std::fs::write(series(&d), ls.join("\n") + "\n").unwrap();
    let e = report_err(&d);
    assert!(
        e.contains("probe-udp.series.jsonl: line 2: seq 3 where 2 was expected"),
        "{e}"
    );

    // A well-formed line of the wrong shape: the probe's own type refuses it.
    let d = fresh("mistyped");
    let t = std::fs::read_to_string(series(&d)).unwrap();
    let t = t.replacen("\"sent\":10", "\"sent\":\"ten\"", 1);
    std::fs::write(series(&d), t).unwrap();
    let e = report_err(&d);
    assert!(
        e.contains("probe-udp.series.jsonl line 1: not a") && e.contains("UdpInterval"),
        "{e}"
    );

    // Lines missing at the end (cut at a line boundary): the final document disagrees.
    let d = fresh("short");
    let t = std::fs::read_to_string(series(&d)).unwrap();
    let ls: Vec<&str> = t.lines().take(3).collect();
    std::fs::write(series(&d), ls.join("\n") + "\n").unwrap();
    let e = report_err(&d);
    assert!(
        e.contains("3 good interval lines") && e.contains("says 5") && e.contains("line 4 onwards"),
        "{e}"
    );

    // The run never finished (no final document).
    let d = fresh("unfinished");
    std::fs::remove_file(d.join("probe-udp.final.json")).unwrap();
    let e = report_err(&d);
    assert!(e.contains("probe-udp.final.json: missing"), "{e}");

    // summary.json cut in half.
    let d = fresh("summary");
    let t = std::fs::read_to_string(d.join("summary.json")).unwrap();
    std::fs::write(d.join("summary.json"), &t[..t.len() / 2]).unwrap();
    let e = report_err(&d);
    assert!(
        e.contains("summary.json: line") && e.contains("column"),
        "{e}"
    );

    // Not a run directory at all.
    let d = base.join("empty");
    std::fs::create_dir_all(&d).unwrap();
    let e = report_err(&d);
    assert!(e.contains("not a run directory"), "{e}");
}
