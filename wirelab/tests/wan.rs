//! `wirelab wan` fidelity, measured with `wirelab probe` in the default lab.
//! Tolerances are part of each test and stated next to it. The timing tests measure again
//! after a failure (`timing`, wirelab-testkit's `noise`: this 2-core VM's scheduler stalls a
//! thread by up to 10 ms now and then, and its host takes CPU time from it in bursts); three
//! failures in a row fail.
mod common;
use std::{
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use common::*;
use serde::de::DeserializeOwned;
use wirelab::{
    cleanup,
    probe::{TcpReport, UdpReport},
    sweep::run::Iperf3,
    wan::{ChangeEntry, ChangeOutcome, ChangeSource, CheckReport, ClassReport, Direction, Line},
};

/// Timing tests run one at a time: two cores, and the numbers are the point.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const PORT: &str = "7000";
const TO: &str = "198.18.0.2:7000";

struct Bench {
    lab: Lab,
    _server: Bg,
}

impl Bench {
    fn new(prefix: &str) -> Self {
        let lab = Lab::up(prefix);
        let server = probe_server(&lab, TO, "300s");
        Self {
            lab,
            _server: server,
        }
    }

    /// Start the emulator with extra args; returns it once running.
    fn wan(&self, args: &[&str]) -> Bg {
        let mut c = wirelab();
        c.args([
            "wan",
            "--netns",
            &self.lab.ns("wan"),
            "--between",
            "to-client",
            "to-server",
            "--json",
            "--interval",
            "1s",
            "--duration",
            "120s",
        ]);
        c.args(args);
        spawn_ready(c, "wan running", Duration::from_secs(20))
    }

    /// A UDP probe run (`probe client --json`).
    fn probe(&self, args: &[&str]) -> UdpReport {
        self.client(args)
    }

    /// A TCP probe run (`probe client --tcp --json`).
    fn probe_tcp(&self, args: &[&str]) -> TcpReport {
        self.client(&[&["--tcp"], args].concat())
    }

    fn client<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut c = wirelab();
        c.args([
            "probe",
            "client",
            "--netns",
            &self.lab.ns("client"),
            "--to",
            TO,
            "--json",
        ]);
        c.args(args);
        let o = ok(c);
        serde_json::from_slice(&o.stdout).expect("probe JSON")
    }
}

/// Stop a wan with SIGTERM; return its final JSON line.
fn stop_wan(bg: Bg) -> Line {
    let out = bg.terminate();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let last = text
        .lines()
        .rfind(|l| l.contains("\"final\""))
        .unwrap_or_else(|| panic!("no final line: {text}"));
    serde_json::from_str(last).expect("wan's final line")
}

/// A timing test (see `timing`) on a fresh bench, one at a time.
fn timed(name: &str, prefix: &str, test: impl Fn(&Bench)) {
    let _s = serial();
    timing(name, || test(&Bench::new(prefix)));
}

fn class_row<'a>(v: &'a Line, dir: Direction, class: &str) -> &'a ClassReport {
    v.classes
        .iter()
        .find(|r| r.dir == dir && r.class == class)
        .unwrap_or_else(|| panic!("no row {dir}/{class} in {v:?}"))
}

/// An optional figure that must be there (a class the engine timed has its delays).
fn some(x: Option<f64>, what: &str) -> f64 {
    x.unwrap_or_else(|| panic!("{what} missing"))
}

#[test]
fn zero_impairment_delivers_everything_fast() {
    timed("zero_impairment_delivers_everything_fast", "wz", |b| {
        // The same probe over the lab's bridge without the wan: what the host itself adds (its
        // scheduling, the probe's own sockets), measured in the same run. The wan's tolerance is
        // on the delay it adds on top.
        let base = b.probe(&["--rate", "1000", "--count", "3000", "--wait", "300ms"]);
        let (base_f, base_r) = (base.forward.delay_ms.p99, base.reverse.delay_ms.p99);
        eprintln!("without the wan: one-way p99 {base_f:.3} / {base_r:.3} ms");
        // The kernel fast path (nothing to hold) and the engine path (forced by a 1 us delay).
        for spec in ["", "delay 1us"] {
            let wan = b.wan(&["--both", spec]);
            let r = b.probe(&["--rate", "1000", "--count", "3000", "--wait", "300ms"]);
            assert_eq!(r.forward.received, 3000, "{spec:?}: {r:?}");
            assert_eq!(r.reverse.received, 3000, "{spec:?}: {r:?}");
            // Added one-way delay p99 below 1 ms (tolerance of the issue): the p99 with the wan
            // minus the p99 without it.
            let (f, rv) = (r.forward.delay_ms.p99, r.reverse.delay_ms.p99);
            eprintln!("{spec:?}: one-way p99 {f:.3} / {rv:.3} ms");
            // On a host that takes CPU from the VM, stalls of several ms land on a different
            // 1 % of probes in each run: then only an added p99 beyond 10 ms (an engine that
            // waits in timer ticks) is the wan's.
            let limit = bound("added one-way p99 (ms)", 1.0, 10.0);
            assert!(f - base_f < limit, "{spec:?}: {r:?}");
            assert!(rv - base_r < limit, "{spec:?}: {r:?}");
            let fin = stop_wan(wan);
            let row = class_row(&fin, Direction::AToB, "default");
            if spec.is_empty() {
                assert!(row.fast_path >= 3000, "fast path not used: {row:?}");
            } else {
                assert!(row.fast_path == 0, "engine bypassed: {row:?}");
            }
        }
    });
}

#[test]
fn fixed_delay_each_way() {
    timed("fixed_delay_each_way", "wd", |b| {
        let wan = b.wan(&["--both", "delay 20ms"]);
        let r = b.probe(&["--rate", "200", "--count", "1000", "--wait", "300ms"]);
        // One-way p50 within 20 ms ± 0.3 ms; RTT within 40 ms ± 0.6 ms.
        for d in ["forward", "reverse"] {
            let dir = if d == "forward" {
                &r.forward
            } else {
                &r.reverse
            };
            let p50 = dir.delay_ms.p50;
            assert!((p50 - 20.0).abs() <= 0.3, "{d} p50 {p50}: {r:?}");
            assert_eq!(dir.lost, 0);
        }
        let rtt = r.rtt_ms.p50;
        assert!((rtt - 40.0).abs() <= 0.6, "rtt {rtt}");
        let fin = stop_wan(wan);
        let row = class_row(&fin, Direction::AToB, "default");
        let p50 = some(row.delay_p50_ms, "the engine's delay p50");
        assert!((p50 - 20.0).abs() <= 0.3, "engine's own p50 {p50}");
    });
}

#[test]
fn normal_jitter_keeps_order() {
    timed("normal_jitter_keeps_order", "wj", |b| {
        let wan = b.wan(&[
            "--both",
            "delay 20ms 5ms distribution normal",
            "--seed",
            "3",
        ]);
        // 50 probes/s (20 ms apart) so keeping order rarely binds: stddev within ±15% of 5 ms,
        // median within 20 ms ± 1 ms, and no reordering (jitter-order keep is the default).
        let r = b.probe(&["--rate", "50", "--count", "600", "--wait", "300ms"]);
        let sd = r.forward.delay_ms.stddev;
        assert!((sd - 5.0).abs() <= 0.75, "stddev {sd}: {r:?}");
        let p50 = r.forward.delay_ms.p50;
        assert!((p50 - 20.0).abs() <= 1.0, "p50 {p50}");
        assert_eq!(r.forward.reordered, 0, "{r:?}");
        assert_eq!(r.overtaking, 0, "{r:?}");
        stop_wan(wan);
    });
}

/// Keep-order jitter under load: with 2,000 background packets/s through the same class, the
/// probe's delay distribution is still the configured one (`keep`: the delay is a smooth
/// process in time), where the per-packet draws of `fifo` (the old `keep`) are biased up
/// because each packet waits for the slowest ahead of it.
///
/// The spread is judged by the deciles (p90 − p10 = 2.563 σ for a normal distribution), not by
/// the standard deviation: a stall of the host (a VM's vCPU descheduled for 10 ms) holds up a
/// few dozen of the 12,000 packets by that much and moves the standard deviation by 0.4 ms
/// (seen in CI), while the deciles do not move. The tails have their own test
/// (`zero_impairment_delivers_everything_fast`).
#[test]
fn keep_order_jitter_is_unbiased_under_load() {
    timed("keep_order_jitter_is_unbiased_under_load", "wk", |b| {
        let spec = "delay 20ms 2ms distribution normal";
        let mut p50s = vec![];
        for order in ["keep", "fifo"] {
            let wan = b.wan(&[
                "--both",
                &format!("{spec} jitter-order {order}"),
                "--seed",
                "5",
            ]);
            let alone = b.probe(&["--rate", "100", "--count", "300", "--wait", "300ms"]);
            let busy = std::thread::scope(|s| {
                let bg =
                    s.spawn(|| b.probe(&["--rate", "2000", "--count", "12000", "--wait", "300ms"]));
                std::thread::sleep(Duration::from_millis(500));
                let fg = b.probe(&["--rate", "100", "--count", "400", "--wait", "300ms"]);
                (fg, bg.join().unwrap())
            });
            stop_wan(wan);
            // (At 28-44 % steal: p50 20.5-20.6 ms, σ 2.56 ms.)
            let (p50_tol, sigma_tol) = if order == "keep" {
                (
                    bound("keep: p50 tolerance (ms)", 0.5, 1.5),
                    bound("keep: σ tolerance (ms)", 0.4, 1.0),
                )
            } else {
                (0.0, 0.0)
            };
            for (what, r) in [
                ("alone", &alone),
                ("under load", &busy.0),
                ("the load", &busy.1),
            ] {
                let d = &r.forward.delay_ms;
                let (p50, sd) = (d.p50, d.stddev);
                let sigma = (d.p90 - d.p10) / 2.563;
                eprintln!(
                    "jitter-order {order}, {what}: p50 {p50:.2} ms, σ from deciles {sigma:.2} ms, \
                 stddev {sd:.2} ms"
                );
                assert_eq!(r.forward.reordered, 0, "{order} {what}: {r:?}");
                if order == "keep" {
                    assert!((p50 - 20.0).abs() <= p50_tol, "{order} {what}: p50 {p50}");
                    assert!(
                        (sigma - 2.0).abs() <= sigma_tol,
                        "{order} {what}: σ {sigma}: {r:?}"
                    );
                }
            }
            p50s.push(busy.1.forward.delay_ms.p50);
        }
        // The old behaviour's bias, measured side by side: the reason `keep` changed.
        assert!(p50s[1] - 20.0 > 1.0, "fifo under load: p50 {}", p50s[1]);
    });
}

/// A config with one class for the probe's traffic: `net` a single address (exact-match table)
/// or a prefix (LPM trie).
fn class_config(dir: &std::path::Path, seed: u64, net: &str, spec: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("wan.toml");
    std::fs::write(
        &p,
        format!(
            "seed = {seed}\n[[class]]\nname = \"probe\"\nnet = \"{net}\"\nproto = \"udp\"\nport = {PORT}\na_to_b = \"{spec}\"\n"
        ),
    )
    .unwrap();
    p
}

/// `got` of `n` probes is within 4 sigma of the binomial expectation `n * p`.
#[track_caller]
fn assert_binomial(got: f64, n: f64, p: f64, what: &str, r: &UdpReport) {
    let sigma = (n * p * (1.0 - p)).sqrt();
    assert!(
        (got - n * p).abs() <= 4.0 * sigma,
        "{what}: {got}, expected {} ± {}: {r:?}",
        n * p,
        4.0 * sigma
    );
}

#[test]
fn random_loss_is_binomial() {
    timed("random_loss_is_binomial", "wl", |b| {
        let wan = b.wan(&["--a-to-b", "loss 5%"]);
        let n = 20000.0;
        let r = b.probe(&["--rate", "4000", "--count", "20000", "--wait", "300ms"]);
        // The network's loss: what the probe's own sockets dropped (a busy host) is told apart.
        let (fwd, rev) = (
            r.forward.lost - r.forward.socket_drops,
            r.reverse.lost - r.reverse.socket_drops,
        );
        assert_binomial(fwd as f64, n, 0.05, "lost", &r);
        assert_eq!(rev, 0, "the reverse path is not impaired: {:?}", r.reverse);
        let fin = stop_wan(wan);
        let row = class_row(&fin, Direction::AToB, "default");
        assert!(row.drops_loss >= fwd, "kernel loss counter {row:?}");
    });
}

#[test]
fn gemodel_bursts_and_classes() {
    let _s = serial();
    let b = Bench::new("wg");
    let dir = TempDir::new("wlg");
    // p = 2%, r = 25%: losses come in bursts of mean length 1/r = 4, on the probe's class only.
    let cfg = class_config(&dir.0, 11, "198.18.0.2/32", "loss gemodel 2% 25%");
    let wan = b.wan(&["--config", cfg.to_str().unwrap()]);
    let r = b.probe(&["--rate", "4000", "--count", "20000", "--wait", "300ms"]);
    let mean = r.loss_bursts.mean_len;
    // Tolerance ±20% (the estimate's standard error is about 5% here).
    assert!(
        (mean - 4.0).abs() <= 0.8,
        "mean burst {mean}: {:?}",
        r.loss_bursts
    );
    // Expected loss fraction p/(p+r) = 7.4%; ±1.5 points.
    let pct = r.forward.loss_pct;
    assert!((pct - 7.41).abs() <= 1.5, "loss {pct}%");
    let fin = stop_wan(wan);
    let row = class_row(&fin, Direction::AToB, "probe");
    assert!(row.drops_loss > 0, "{row:?}");
    let def = class_row(&fin, Direction::AToB, "default");
    assert_eq!(def.drops_loss, 0, "default class must not lose: {def:?}");
}

#[test]
fn duplicate_corrupt_reorder_rates() {
    timed("duplicate_corrupt_reorder_rates", "wx", |b| {
        let n = 10000.0;
        let wan = b.wan(&["--a-to-b", "duplicate 5%"]);
        let r = b.probe(&["--rate", "4000", "--count", "10000", "--wait", "300ms"]);
        assert_binomial(r.forward.duplicates as f64, n, 0.05, "duplicates", &r);
        // Only a->b was impaired: the reverse path must show nothing.
        assert_eq!(r.reverse.duplicates, 0, "{r:?}");
        assert_eq!(r.reverse.reordered, 0, "{r:?}");
        stop_wan(wan);

        // A flipped bit in the IP/UDP headers makes the receiver drop the probe; in the
        // payload it is detected by the probe's checksum. Both together match the configured
        // rate (what the probe's own sockets dropped is not the wan's).
        let wan = b.wan(&["--a-to-b", "corrupt 3%"]);
        let r = b.probe(&[
            "--rate", "4000", "--count", "10000", "--size", "1000", "--wait", "300ms",
        ]);
        let corrupt = (r.forward.corrupted + r.forward.lost - r.forward.socket_drops) as f64;
        assert_binomial(corrupt, n, 0.03, "corrupted + header-corrupted", &r);
        assert!(r.forward.corrupted as f64 > 0.8 * corrupt, "{r:?}");
        let fin = stop_wan(wan);
        eprintln!(
            "corrupt 3%: {:?}",
            class_row(&fin, Direction::AToB, "default")
        );

        // reorder 20% with a 5 ms delay at 2000/s: a reordered probe is sent at once and
        // overtakes the ~10 probes still delayed.
        let wan = b.wan(&["--a-to-b", "delay 5ms reorder 20%"]);
        let r = b.probe(&["--rate", "2000", "--count", "10000", "--wait", "300ms"]);
        assert_binomial(r.overtaking as f64, n, 0.20, "overtaking probes", &r);
        stop_wan(wan);
    });
}

#[test]
fn rate_limits_tcp_goodput() {
    timed("rate_limits_tcp_goodput", "wr", |b| {
        let wan = b.wan(&["--both", "rate 20mbit"]);
        let r = b.probe_tcp(&["--duration", "8s"]);
        // 1500-byte MTU: 1448 bytes of payload per 1514-byte frame. ±5%, skipping the first second.
        let expect = 20.0 * 1448.0 / 1514.0;
        let per = &r.per_second_mbps;
        assert!(per.len() >= 6, "{r:?}");
        let steady = per[1..].iter().sum::<f64>() / (per.len() - 1) as f64;
        let tol = bound("rate goodput tolerance", 0.05, 0.15);
        assert!(
            (steady - expect).abs() <= expect * tol,
            "goodput {steady:.2} Mbit/s, expected {expect:.2} ± {}%: {per:?}",
            tol * 100.0
        );
        let fin = stop_wan(wan);
        let row = class_row(&fin, Direction::AToB, "default");
        assert!(
            row.drops_queue > 0,
            "TCP should overflow the queue: {row:?}"
        );
    });
}

/// Write a trace with `wirelab wan trace` (levels: (rate, duration) in turn).
fn write_trace(dir: &TempDir, name: &str, levels: &[(&str, &str)]) -> String {
    let p = dir.join(name);
    let mut c = wirelab();
    c.args(["wan", "trace", "-o", p.to_str().unwrap()]);
    for (r, d) in levels {
        c.args(["--rate", r, "--duration", d]);
    }
    ok(c);
    p.to_str().unwrap().to_string()
}

/// Trace replay (`rate trace FILE`): a constant 20 Mbit/s trace gives the TCP goodput of a
/// 20 Mbit/s link, and a two-level trace (30 Mbit/s for 2 s, then 10 Mbit/s for 2 s) gives
/// per-second goodput that follows the levels.
#[test]
fn trace_replay_reproduces_rate_and_follows_levels() {
    let _s = serial();
    timing("trace_replay_reproduces_rate_and_follows_levels", || {
        let b = Bench::new("wt");
        let dir = TempDir::new("wirelab-trace-");
        // A trace counts IP bytes (1500 per opportunity, as mm-link): 1448 bytes of TCP payload
        // per 1500-byte packet. ±2 %: the trace delivers exactly the rate while TCP keeps the
        // queue full (the default queue holds 50 ms of the mean rate, far above the lab's RTT),
        // the first second (slow start) is skipped, and the seconds are the receiver's.
        let constant = write_trace(&dir, "20.trace", &[("20mbit", "1s")]);
        let wan = b.wan(&["--a-to-b", &format!("rate trace {constant}")]);
        let r = b.probe_tcp(&["--duration", "6s"]);
        let per = &r.per_second_mbps;
        assert!(per.len() >= 5, "{r:?}");
        let steady = per[1..].iter().sum::<f64>() / (per.len() - 1) as f64;
        let expect = 20.0 * 1448.0 / 1500.0;
        // A host stalling the VM stalls the TCP sender too: the link idles then (a fresh-clone
        // run at 39 % steal measured 18.1 of 19.3 Mbit/s, 6 % short, four times in a row).
        let tol = bound("trace goodput tolerance", 0.02, 0.15);
        assert!(
            (steady - expect).abs() <= expect * tol,
            "goodput {steady:.3} Mbit/s, expected {expect:.3} ± {} %: {per:?}",
            tol * 100.0
        );
        stop_wan(wan);

        // Two levels. The trace starts with the emulator and the probe a moment later, so the
        // probe's seconds straddle the trace's by an unknown phase: the expected goodput of each
        // probe second is the levels' mix at the best-fitting phase (10 ms steps), and every
        // second after the first must be within 10 % of the high level of it (TCP needs a few
        // round trips to fill the faster level).
        let steps = write_trace(&dir, "steps.trace", &[("30mbit", "2s"), ("10mbit", "2s")]);
        let wan = b.wan(&["--a-to-b", &format!("rate trace {steps}")]);
        let r = b.probe_tcp(&["--duration", "9s"]);
        stop_wan(wan);
        let per = &r.per_second_mbps;
        assert!(per.len() >= 8, "{r:?}");
        let level = |t: f64| {
            if t.rem_euclid(4.0) < 2.0 {
                30.0
            } else {
                10.0
            }
        };
        let expected = |phase: f64| -> Vec<f64> {
            (0..per.len())
                .map(|s| {
                    // Mean level over [s, s+1) of the probe, 1 ms steps.
                    (0..1000)
                        .map(|k| level(phase + s as f64 + k as f64 / 1000.0))
                        .sum::<f64>()
                        / 1000.0
                        * 1448.0
                        / 1500.0
                })
                .collect()
        };
        let err = |e: &[f64]| {
            per[1..]
                .iter()
                .zip(&e[1..])
                .map(|(m, x)| (m - x).abs())
                .fold(0.0, f64::max)
        };
        let (phase, worst) = (0..400)
            .map(|i| i as f64 / 100.0)
            .map(|p| (p, err(&expected(p))))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        let e = expected(phase);
        let tol = bound("trace levels tolerance", 0.1, 0.25);
        assert!(
    worst <= tol * 30.0 * 1448.0 / 1500.0,
    "per-second goodput {per:.2?} does not follow the trace: best phase {phase:.2} s gives {e:.2?} (worst miss {worst:.2} Mbit/s)"
);
        // Both levels were seen: the seconds wholly inside each one.
        let max = per[1..].iter().cloned().fold(0.0, f64::max);
        let min = per[1..].iter().cloned().fold(f64::MAX, f64::min);
        assert!(max > 25.0 && min < 12.0, "{per:.2?}");
    });
}

#[test]
fn same_seed_same_losses() {
    let _s = serial();
    let b = Bench::new("ws");
    let dir = TempDir::new("wls");
    let mut runs = vec![];
    for seed in [42u64, 42, 43] {
        let cfg = class_config(&dir.0, seed, "198.18.0.0/24", "loss 10%");
        let wan = b.wan(&["--config", cfg.to_str().unwrap()]);
        let r = b.probe(&["--rate", "1000", "--count", "2000", "--wait", "300ms"]);
        stop_wan(wan);
        let lost = r.lost_seqs;
        assert!(lost.len() > 100, "{}", lost.len());
        runs.push(lost);
    }
    assert_eq!(runs[0], runs[1], "same seed, different losses");
    assert_ne!(runs[0], runs[2], "different seeds, same losses");
}

#[test]
fn live_set_changes_delay_without_loss() {
    timed("live_set_changes_delay_without_loss", "wv", |b| {
        let wan = b.wan(&["--both", "delay 10ms"]);
        let ns = b.lab.ns("wan");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            ok(wirelab().args(["wan", "set", "--netns", &ns, "--both", "delay 50ms"]))
        });
        let r = b.probe(&["--rate", "500", "--count", "2500", "--wait", "500ms"]);
        let o = t.join().unwrap();
        assert!(String::from_utf8_lossy(&o.stdout).contains("delay 50ms"));
        // Nothing lost across the change; the delay moved from 10 ms to 50 ms.
        assert_eq!(r.no_echo, 0, "{r:?}");
        // 1000 probes at 10 ms, then 1500 at 50 ms: the least near 10 ms, the median (in the
        // 50 ms part) near 50 ms, within 1 ms each (the low quantiles: a stall of this 2-core
        // VM only ever adds delay, up to ~15 ms to a few packets). None above 50 ms plus the
        // 10 ms a packet in flight at the change could at most have been given twice, plus
        // such a stall.
        let min = r.forward.delay_ms.min;
        let p50 = r.forward.delay_ms.p50;
        let max = r.forward.delay_ms.max;
        assert!((min - 10.0).abs() < 1.0, "min {min}");
        assert!((p50 - 50.0).abs() < 1.0, "p50 {p50}");
        // (At 34-39 % steal the host's stalls reached 80-104 ms in all.)
        let stall = bound("stall allowance on the maximum (ms)", 15.0, 60.0);
        assert!(max < 60.0 + stall, "max {max}");
        // A bad change is refused and the running profile stays.
        let e = fails(wirelab().args([
            "wan",
            "set",
            "--netns",
            &b.lab.ns("wan"),
            "--both",
            "delay fast",
        ]));
        assert!(e.contains("\"fast\""), "{e}");
        let r = b.probe(&["--rate", "200", "--count", "200", "--wait", "300ms"]);
        assert!((r.forward.delay_ms.p50 - 50.0).abs() < 1.0);
        // Control clients that connect and say nothing — six in a row, 0.3 s each, and one for
        // 3 s — must neither hold up packets (requests are read off the engine's thread) nor a
        // real `wan set` sent meanwhile (each connection is read by its own thread).
        let sock = "'ABSTRACT-CONNECT:wirelab-wan/to-client\\,to-server'";
        let mut silent = Command::new("ip")
            .args(["netns", "exec", &b.lab.ns("wan"), "sh", "-c"])
            .arg(format!(
                "socat -u 'EXEC:sleep 3' {sock} & \
             for i in 1 2 3 4 5 6; do socat -u 'EXEC:sleep 0.3' {sock} || exit 1; done; wait $!"
            ))
            .spawn()
            .expect("socat");
        let ns = b.lab.ns("wan");
        let setter = std::thread::spawn(move || {
            // The silent clients connected (the emulator's control socket has an established
            // connection), then a real set.
            let connected = || {
                in_ns(&ns, &["ss", "-xH", "state", "established"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("@wirelab-wan/"))
            };
            assert!(
                eventually(Duration::from_secs(5), connected),
                "no silent client connected"
            );
            let t = Instant::now();
            let o = wirelab()
                .args(["wan", "set", "--netns", &ns, "--both", "delay 50ms"])
                .output()
                .unwrap();
            (o, t.elapsed())
        });
        let r = b.probe(&["--rate", "200", "--count", "300", "--wait", "300ms"]);
        let (o, took) = setter.join().unwrap();
        assert!(silent.wait().unwrap().success(), "socat could not connect");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            took < Duration::from_secs(1),
            "wan set waited {took:?} behind silent clients"
        );
        let max = r.forward.delay_ms.max;
        assert_eq!(r.no_echo, 0, "{r:?}");
        // A silent client holding the engine would add its 0.3 s or 3 s; a stall of the VM
        // adds up to ~15 ms (25 allowed: still a tenth of the least hold).
        assert!(
            max < 50.0 + 25.0,
            "silent control clients delayed packets: max {max} ms"
        );
        stop_wan(wan);
    });
}

#[test]
fn detaches_cleanly_and_bridge_takes_over() {
    let _s = serial();
    let b = Bench::new("wk");
    let xdp_on = xdp_attached;
    // kill -9: the kernel removes the links, the bridge forwards again.
    let wan = b.wan(&["--both", "delay 30ms"]);
    assert!(xdp_on(&b.lab.ns("wan"), "to-client"));
    assert_eq!(tcx_ingress_count(&b.lab.ns("wan"), "to-server"), 1);
    wan.kill();
    assert!(eventually(Duration::from_secs(5), || !xdp_on(
        &b.lab.ns("wan"),
        "to-client"
    )));
    assert!(!xdp_on(&b.lab.ns("wan"), "to-server"));
    // The tc fast path's TCX links went with the process too.
    for i in ["to-client", "to-server"] {
        assert_eq!(
            tcx_ingress_count(&b.lab.ns("wan"), i),
            0,
            "tc program left on {i}"
        );
    }
    let r = b.probe(&["--rate", "100", "--count", "50", "--wait", "300ms"]);
    assert_eq!(r.no_echo, 0);
    assert!(r.rtt_ms.p50 < 5.0, "still delayed after kill: {r:?}");
    // A stale control socket from the killed run does not block the next one.
    let wan = b.wan(&["--both", "delay 5ms"]);
    stop_wan(wan);
}

#[test]
fn bad_input_attaches_nothing() {
    let _s = serial();
    require_privileges();
    let lab = Lab::up("wb");
    let xdp_on = || xdp_attached(&lab.ns("wan"), "to-client");
    let run = |args: &[&str]| {
        fails(
            wirelab()
                .args(["wan", "--netns", &lab.ns("wan"), "--duration", "2s"])
                .args(args),
        )
    };
    let e = run(&[
        "--between",
        "to-client",
        "to-server",
        "--both",
        "delay 20ms loss 120%",
    ]);
    assert!(
        e.contains("\"120%\"") && e.contains("between 0% and 100%"),
        "{e}"
    );
    let e = run(&[
        "--between",
        "to-client",
        "to-server",
        "--a-to-b",
        "jitter 5ms",
    ]);
    assert!(e.contains("\"jitter\"") && e.contains("allowed"), "{e}");
    let e = run(&["--between", "to-client", "nope0", "--both", "delay 1ms"]);
    assert!(e.contains("no interface named \"nope0\""), "{e}");
    // A config with one bad field is refused naming it.
    let dir = TempDir::new("wlb");
    let cfgp = dir.join("bad.toml");
    let bad_config = |text: &str| {
        std::fs::write(&cfgp, text).unwrap();
        run(&[
            "--between",
            "to-client",
            "to-server",
            "--config",
            cfgp.to_str().unwrap(),
        ])
    };
    let e = bad_config("[[class]]\nname = \"x\"\nnet = \"198.18.0.0/33\"\nboth = \"delay 1ms\"\n");
    assert!(e.contains("class[0].net"), "{e}");
    let e = bad_config(
        "[[class]]\nname = \"x\"\nnet = \"198.18.0.2\"\nport = 80\nboth = \"delay 1ms\"\n",
    );
    assert!(e.contains("class[0].port"), "{e}");
    assert!(!xdp_on(), "something was attached by a refused run");
}

#[test]
fn probe_agrees_with_ping_and_iperf3() {
    timed("probe_agrees_with_ping_and_iperf3", "wp", |b| {
        let wan = b.wan(&["--both", "delay 15ms rate 20mbit"]);
        // RTT: ping's minimum against the probe's minimum round trip (the least load-sensitive
        // statistic of each), within 0.5 ms, and both within 30 ms + 1 ms.
        let o = ok(in_ns(
            &b.lab.ns("client"),
            &["ping", "-c", "40", "-i", "0.05", "-q", "198.18.0.2"],
        ));
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let ping_min: f64 = text
            .lines()
            .find(|l| l.contains("rtt min/avg"))
            .and_then(|l| l.split('=').nth(1))
            .and_then(|v| v.trim().split('/').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no ping rtt in {text}"));
        let r = b.probe(&[
            "--rate", "100", "--count", "300", "--size", "84", "--wait", "300ms",
        ]);
        let min = r.rtt_ms.min;
        assert!(
            (min - ping_min).abs() < 0.5,
            "probe min rtt {min} vs ping {ping_min}"
        );
        assert!(
            (min - 30.0).abs() < 1.0 && (ping_min - 30.0).abs() < 1.0,
            "rtt {min} / {ping_min}"
        );
        // Goodput: iperf3's receiver-side rate against the probe's, within 5%.
        let mut srv = in_ns(
            &b.lab.ns("server"),
            &["iperf3", "-s", "-1", "-B", "198.18.0.2", "-p", "5201"],
        );
        let _iperf_server =
            Bg::from_child(srv.stdout(std::process::Stdio::null()).spawn().unwrap());
        let listens = || {
            let o = ok(in_ns(&b.lab.ns("server"), &["ss", "-ltn", "sport = :5201"]));
            String::from_utf8_lossy(&o.stdout).contains("5201")
        };
        assert!(
            eventually(Duration::from_secs(10), listens),
            "iperf3 -s did not listen"
        );
        let o = ok(in_ns(
            &b.lab.ns("client"),
            &["iperf3", "-c", "198.18.0.2", "-p", "5201", "-t", "6", "-J"],
        ));
        let v: Iperf3 = serde_json::from_slice(&o.stdout).expect("iperf3 JSON");
        let iperf = v.end.sum_received.bits_per_second / 1e6;
        let r = b.probe_tcp(&["--duration", "6s"]);
        let ours = r.goodput_mbps;
        // Two TCP senders measured one after the other: a host taking a third of the VM's CPU
        // slows either (13.4 against 8.8 Mbit/s at 34 % steal).
        let tol = bound("probe vs iperf3 goodput", 0.05, 0.6);
        assert!(
            (ours - iperf).abs() <= iperf * tol,
            "probe {ours:.2} Mbit/s vs iperf3 {iperf:.2} Mbit/s"
        );
        stop_wan(wan);
    });
}

#[test]
fn survives_interface_down_and_counts_it() {
    let _s = serial();
    let b = Bench::new("wdn");
    let wan = b.wan(&["--both", "delay 5ms"]);
    let wan_ns = b.lab.ns("wan");
    // Take B down while traffic is held for it: due frames are dropped and counted, the
    // engine keeps running (no spinning on a dead TX ring).
    ok(in_ns(&wan_ns, &["ip", "link", "set", "to-server", "down"]));
    let _ = in_ns(
        &b.lab.ns("client"),
        &[
            "ping",
            "-c",
            "20",
            "-i",
            "0.05",
            "-W",
            "1",
            "-q",
            "198.18.0.2",
        ],
    )
    .output();
    ok(in_ns(&wan_ns, &["ip", "link", "set", "to-server", "up"]));
    // Forwarding resumes at once: the engine follows the carrier, which is on as soon as the
    // link is up, not operstate (IFF_RUNNING), which can lag it by up to a second.
    let r = b.probe(&["--rate", "100", "--count", "100", "--wait", "300ms"]);
    assert_eq!(r.no_echo, 0, "{r:?}");
    let fin = stop_wan(wan);
    let down = fin.engine.expect("the engine's health").link_down;
    assert!(down > 0, "{fin:?}");
    // A frame dropped for a down link is a drop, never a send: every frame received is
    // either sent or dropped for one stated reason.
    assert_accounted(&fin);
    let per_class: u64 = fin.classes.iter().map(|r| r.drops_link_down).sum();
    assert_eq!(per_class, down, "{fin:?}");
}

/// rx = tx + every drop, per class and direction, in a final report (queues flushed).
fn assert_accounted(fin: &Line) {
    for r in &fin.classes {
        let drops = r.drops_loss + r.drops_queue + r.drops_blackhole + r.drops_link_down;
        assert_eq!(r.rx, r.tx + drops, "{r:?}");
    }
}

#[test]
fn follows_carrier_not_operstate() {
    let _s = serial();
    let b = Bench::new("wfr");
    let wan_ns = b.lab.ns("wan");
    // Operstate (IFF_RUNNING) can say "not running" while the carrier is on and the kernel
    // delivers frames: for up to a second after a link comes up, or for good in dormant mode.
    // Dormant mode makes that window last, so the test does not depend on timing.
    ok(in_ns(
        &wan_ns,
        &[
            "sh",
            "-c",
            "ip link set to-server mode dormant && ip link set to-server down && ip link set to-server up",
        ],
    ));
    let o = ok(in_ns(&wan_ns, &["ip", "-o", "link", "show", "to-server"]));
    let line = String::from_utf8_lossy(&o.stdout);
    assert!(
        line.contains("LOWER_UP") && line.contains("state DORMANT"),
        "{line}"
    );
    let wan = b.wan(&["--both", "delay 30ms"]);
    let r = b.probe(&["--rate", "200", "--count", "400", "--wait", "300ms"]);
    assert_eq!(r.no_echo, 0, "{r:?}");
    let fin = stop_wan(wan);
    assert_eq!(
        fin.engine.expect("the engine's health").link_down,
        0,
        "{fin:?}"
    );
    assert_accounted(&fin);
}

/// Kernels before 6.6 have no TCX: wan's tc fast path is a clsact filter (forced here with
/// WIRELAB_TC_ATTACH=clsact). It delays as on TCX, and what a kill -9 leaves, `wirelab
/// cleanup` removes.
#[test]
fn clsact_fast_path_and_cleanup_after_kill() {
    let _s = serial();
    let b = Bench::new("wcl");
    let wan_ns = b.lab.ns("wan");
    let filters = |iface: &str| {
        let o = ok(in_ns(
            &wan_ns,
            &["tc", "filter", "show", "dev", iface, "ingress"],
        ));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let mut c = wirelab();
    c.env("WIRELAB_TC_ATTACH", "clsact").args([
        "wan",
        "--netns",
        &wan_ns,
        "--between",
        "to-client",
        "to-server",
        "--json",
        "--duration",
        "120s",
        "--both",
        "delay 10ms",
    ]);
    let mut wan = spawn_ready(c, "wan running", Duration::from_secs(20));
    assert!(
        filters("to-client").contains("wan_fwd"),
        "{}",
        filters("to-client")
    );
    let r = b.probe(&["--rate", "200", "--count", "400", "--wait", "300ms"]);
    assert_eq!(r.forward.received, 400, "{r:?}");
    let p50 = r.forward.delay_ms.p50;
    assert!(
        (9.7..=10.5).contains(&p50),
        "one-way p50 {p50} ms for delay 10ms: {r:?}"
    );
    let child = wan.child_mut();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(filters("to-server").contains("wan_fwd"));
    let mut c = wirelab();
    c.env("WIRELAB_TC_ATTACH", "clsact");
    let o = ok(c.args(["cleanup", "--json"]));
    let v: cleanup::Report = serde_json::from_slice(&o.stdout).expect("cleanup --json");
    assert_eq!(v.wan_filters_removed.len(), 2, "{v:?}");
    for i in ["to-client", "to-server"] {
        assert!(!filters(i).contains("wan_fwd"), "{i}: {}", filters(i));
    }
    // The bridge forwards again.
    let r = b.probe(&["--rate", "100", "--count", "100", "--wait", "300ms"]);
    assert_eq!(r.no_echo, 0, "{r:?}");
}

/// wan's AF_XDP errors name the failing step and why: with queue 0 of to-server held by
/// another AF_XDP socket (opened here through wirelab's own AF_XDP layer), binding wan's
/// second socket fails with EBUSY, the message says so, and nothing stays attached.
#[test]
fn a_queue_held_by_another_af_xdp_socket_is_named() {
    let _s = serial();
    require_privileges();
    let lab = Lab::up("wx");
    let ns = lab.ns("wan");
    let e = wirelab::netns::run_in(Some(&ns), || {
        use wirelab::runtime::xsk::{BindOptions, RingSizes, Socket, Umem};
        let umem = Umem::new(64, 4096)?;
        let idx = nix::net::if_::if_nametoindex("to-server")?;
        let sizes = RingSizes {
            fill: 64,
            completion: 64,
            rx: 64,
            tx: 64,
        };
        let _held = Socket::owner(&umem, idx, 0, sizes, BindOptions::default())?;
        let o = wirelab()
            .args(["wan", "--netns", &ns, "--between", "to-client", "to-server"])
            .args(["--both", "delay 1ms", "--duration", "2s"])
            .output()?;
        anyhow::ensure!(!o.status.success(), "wan ran on a held queue");
        Ok(String::from_utf8_lossy(&o.stderr).to_string())
    })
    .unwrap();
    assert!(
        e.contains("binding the AF_XDP socket to to-server queue 0")
            && e.contains("EBUSY")
            && e.contains("another AF_XDP socket holds the queue"),
        "{e}"
    );
    assert!(
        !xdp_attached(&ns, "to-client") && !xdp_attached(&ns, "to-server"),
        "a failed wan left XDP attached"
    );
}

/// `probe client --per-probe` CSV: (seq, sent_unix, forward_ms) per echoed probe.
fn per_probe(p: &std::path::Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let v: Vec<&str> = l.split(',').collect();
            (
                v[0].parse().unwrap(),
                v[1].parse().unwrap(),
                v[2].parse().unwrap(),
            )
        })
        .collect()
}

/// The wan record's change lines (`wan.changes.jsonl`).
fn change_lines(dir: &std::path::Path) -> Vec<ChangeEntry> {
    std::fs::read_to_string(dir.join("wan.changes.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a wan change line"))
        .collect()
}

/// The delay (ms) of a SPEC text ("delay 25ms" → 25).
fn spec_delay_ms(text: &str) -> f64 {
    let w: Vec<&str> = text.split_whitespace().collect();
    let i = w.iter().position(|x| *x == "delay").expect("a delay");
    w[i + 1].trim_end_matches("ms").parse().unwrap()
}

/// A bench, a temporary directory and the timeline `text` written into it.
fn timeline_bench(prefix: &str, text: &str) -> (Bench, TempDir, std::path::PathBuf) {
    let b = Bench::new(prefix);
    let d = TempDir::new("wirelab-timeline-");
    let tl = d.join("timeline.toml");
    std::fs::write(&tl, text).unwrap();
    (b, d, tl)
}

#[test]
fn timeline_ramp_follows_the_schedule() {
    let _s = serial();
    timing("timeline_ramp_follows_the_schedule", || {
        let (b, d, tl) = timeline_bench(
        "wt",
        "[[steps]]\nat = \"2s\"\nkind = \"ramp\"\nparam = \"delay\"\nfrom = \"20ms\"\nto = \"80ms\"\nover = \"6s\"\nevery = \"500ms\"\n",
    );
        let rec = d.join("run");
        let wan = b.wan(&[
            "--both",
            "delay 20ms",
            "--timeline",
            tl.to_str().unwrap(),
            "--record",
            rec.to_str().unwrap(),
        ]);
        let csv = d.join("probes.csv");
        // 200 probes/s over the whole ramp (it ends 8 s after the emulator started).
        b.probe(&[
            "--rate",
            "200",
            "--count",
            "1900",
            "--wait",
            "300ms",
            "--per-probe",
            csv.to_str().unwrap(),
        ]);
        let fin = stop_wan(wan);
        // The record: one `applied` line per change of the schedule (the ramp's first value is
        // the SPEC in force, so 12 changes), each with the time it was due and the time the
        // engine switched.
        let lines = change_lines(&rec);
        assert_eq!(lines.len(), 12, "{lines:?}");
        let mut worst = 0.0f64;
        for (k, l) in lines.iter().enumerate() {
            assert_eq!(l.kind, ChangeOutcome::Applied, "{l:?}");
            assert_eq!(l.source, ChangeSource::Timeline, "{l:?}");
            let due = 2.0 + 0.5 * (k + 1) as f64;
            let requested = some(l.requested_t, "requested_t");
            assert!((requested - due).abs() < 1e-6, "{l:?}");
            let lat = some(l.latency_ms, "latency_ms");
            assert!((l.t - requested - lat / 1e3).abs() < 1e-3);
            worst = worst.max(lat);
            let want = 20.0 + 5.0 * (k + 1) as f64;
            assert!(
                l.label.as_deref().is_some_and(|t| t.contains("ramp delay")),
                "{l:?}"
            );
            assert_eq!(spec_delay_ms(l.applied.split('"').nth(1).unwrap()), want);
        }
        eprintln!(
            "timeline apply latency: worst {worst:.3} ms over {} changes",
            lines.len()
        );
        // A host that takes the VM's CPU delays the engine's switch by its stalls.
        let late = bound("timeline apply latency (ms)", 5.0, 30.0);
        assert!(worst < late, "a change applied {worst} ms late");
        assert_eq!(fin.changes.map(|c| c.timeline), Some(12), "{fin:?}");
        // Every probe's forward delay against the schedule at its send time, from 0.5 s before
        // the ramp (the probe's first few hundred ms after start-up see a few ms of extra delay
        // on this 2-core machine, timeline or not); probes sent within 2 ms of a step are left
        // out (the step falls between their send and their arrival).
        let start_unix = lines[0].unix - lines[0].t;
        let steps: Vec<(f64, f64)> = lines
            .iter()
            .map(|l| {
                let text = l.applied.split('"').nth(1).unwrap();
                (
                    start_unix + some(l.requested_t, "requested_t"),
                    spec_delay_ms(text),
                )
            })
            .collect();
        let probes = per_probe(&csv);
        assert!(probes.len() >= 1890, "{} probes echoed", probes.len());
        // (step index, error) per compared probe; step 0 is the SPEC in force before the ramp.
        let mut errs: Vec<(usize, f64)> = vec![];
        for (_, sent, fwd) in &probes {
            if *sent < start_unix + 1.5 || steps.iter().any(|(t, _)| (sent - t).abs() < 0.002) {
                continue;
            }
            let k = steps.iter().take_while(|(t, _)| t <= sent).count();
            let sched = if k == 0 { 20.0 } else { steps[k - 1].1 };
            errs.push((k, fwd - sched));
        }
        let mut abs: Vec<f64> = errs.iter().map(|e| e.1.abs()).collect();
        abs.sort_by(f64::total_cmp);
        let within = abs.iter().filter(|e| **e <= 1.0).count() as f64 / abs.len() as f64;
        let (p50, max) = (abs[abs.len() / 2], abs[abs.len() - 1]);
        eprintln!(
            "ramp: {} probes compared, {:.2}% within ±1 ms, |error| p50 {p50:.3} max {max:.3} ms",
            abs.len(),
            within * 100.0
        );
        // Each step's probes sit on the step's value: their median within ±1 ms (it is about
        // 0.1 ms: the veth hops). Single probes may be late by a stall of the host (under
        // load, ksoftirqd delays a burst of echoes by up to ~20 ms, the sawtooth of
        // consecutive probes arriving together), not by the emulator: ≥ 95 % within ±1 ms.
        for k in 0..=steps.len() {
            let mut e: Vec<f64> = errs.iter().filter(|x| x.0 == k).map(|x| x.1).collect();
            assert!(e.len() >= 80, "step {k}: only {} probes", e.len());
            e.sort_by(f64::total_cmp);
            let med = e[e.len() / 2];
            assert!(med.abs() <= 1.0, "step {k}: median error {med:.3} ms");
        }
        // Medians stay tight; the share of single probes on time is what a host's stalls
        // take (78-92 % at 14-33 % steal, fresh measurements of 2026-12-02).
        let on_time = bound("share of probes within ±1 ms", 0.95, 0.70);
        assert!(within >= on_time, "{:.2}% within ±1 ms", within * 100.0);
        assert!(p50 < 0.3, "median error {p50} ms");
        // The report marks the changes on its time plots.
        let html = d.join("report.html");
        ok(wirelab().args([
            "report",
            rec.to_str().unwrap(),
            "--out",
            html.to_str().unwrap(),
        ]));
        let h = std::fs::read_to_string(&html).unwrap();
        assert!(h.contains("ramp delay 50ms (6/12)"), "no marker label");
    });
}

#[test]
fn timeline_refused_when_bad_and_a_flap_lasts_the_configured_time() {
    let _s = serial();
    timing(
        "timeline_refused_when_bad_and_a_flap_lasts_the_configured_time",
        || {
            // Forward only, so a lost echo is a forward loss: two outages of 300 ms, 1 s apart.
            let (b, d, tl) = timeline_bench(
        "wf",
        "[[steps]]\nat = \"1s\"\nkind = \"flap\"\ndir = \"a_to_b\"\ndown = \"300ms\"\nevery = \"1s\"\ncount = 2\n",
    );
            refuses_bad_timelines(&b.lab, &d.0);
            let wan = b.wan(&["--both", "delay 5ms", "--timeline", tl.to_str().unwrap()]);
            let csv = d.0.join("flap.csv");
            let r = b.probe(&[
                "--rate",
                "1000",
                "--count",
                "3500",
                "--wait",
                "300ms",
                "--per-probe",
                csv.to_str().unwrap(),
            ]);
            stop_wan(wan);
            // Outages in time, not in probes: a probe sender that fell behind on a busy host
            // restarts its schedule (`sender_behind`), so sequence numbers are not
            // milliseconds. An outage lasts from the send time of the last probe echoed before
            // it to that of the first echoed after it, less one probe interval (1 ms).
            let mut echoed = per_probe(&csv);
            echoed.sort_by_key(|e| e.0);
            let mut runs: Vec<(f64, f64)> = vec![];
            for w in echoed.windows(2) {
                let ((s0, t0, _), (s1, t1, _)) = (w[0], w[1]);
                if s1 > s0 + 1 {
                    runs.push((t0 * 1e3, (t1 - t0) * 1e3 - 1.0));
                }
            }
            assert_eq!(
                runs.len(),
                2,
                "outages (start ms, length ms) seen: {runs:?}; {r:?}"
            );
            for (_, ms) in &runs {
                eprintln!("flap outage seen by the probe: {ms:.1} ms");
                assert!((ms - 300.0).abs() <= 20.0, "outage {ms} ms: {runs:?}");
            }
            // 1 s apart, within the same tolerance.
            let gap = runs[1].0 - runs[0].0;
            assert!((gap - 1000.0).abs() <= 20.0, "{gap:.1} ms apart");
        },
    );
}

/// Bad timelines are refused before anything is attached, naming the field.
fn refuses_bad_timelines(lab: &Lab, d: &std::path::Path) {
    let tl = d.join("bad.toml");
    let run = |text: &str| {
        std::fs::write(&tl, text).unwrap();
        fails(
            wirelab()
                .args(["wan", "--netns", &lab.ns("wan"), "--duration", "2s"])
                .args(["--between", "to-client", "to-server", "--both", "delay 5ms"])
                .args(["--timeline", tl.to_str().unwrap()]),
        )
    };
    let ramp = "[[steps]]\nat = \"1s\"\nkind = \"set\"\nboth = \"delay 10ms\"\n[[steps]]\nat = \"2s\"\nkind = \"ramp\"\nparam = \"delay\"\nfrom = \"20ms\"\nover = \"6s\"\nevery = \"1s\"\n";
    for (text, needles) in [
        (
            format!("{ramp}to = \"80\"\n"),
            &["timeline.steps[1].to", "\"80\"", "needs a unit"][..],
        ),
        (ramp.to_string(), &["timeline.steps[1].to", "required"][..]),
        (
            "[[steps]]\nat = \"1s\"\nkind = \"flap\"\ndown = \"2s\"\nevery = \"1s\"\ncount = 2\n"
                .into(),
            &["timeline.steps[0].down", "shorter than every"][..],
        ),
        (
            "[[steps]]\nat = \"1s\"\nkind = \"handover\"\ndelay = \"40ms\"\nloss = \"5%\"\n".into(),
            &["timeline.steps[0].loss", "needs burst"][..],
        ),
        (
            "[[steps]]\nat = \"1s\"\nkind = \"set\"\nclass = \"voip\"\nboth = \"delay 1ms\"\n"
                .into(),
            &["timeline.steps[0].class", "no class \"voip\""][..],
        ),
        (
            "[[steps]]\nat = \"1s\"\nkind = \"set\"\nboth = \"delay 1ms\"\nspeed = 3\n".into(),
            &["unknown field `speed`"][..],
        ),
    ] {
        let e = run(&text);
        for n in needles {
            assert!(e.contains(n), "no {n:?} in: {e}");
        }
    }
    assert!(
        !xdp_attached(&lab.ns("wan"), "to-client"),
        "something was attached by a refused run"
    );
}

/// `--check` prints the expanded schedule, as text and as JSON.
#[test]
fn timeline_check_prints_the_expanded_schedule() {
    let d = TempDir::new("wirelab-timeline-");
    let tl = d.join("tl.toml");
    let ramp = "[[steps]]\nat = \"1s\"\nkind = \"set\"\nboth = \"delay 10ms\"\n[[steps]]\nat = \"2s\"\nkind = \"ramp\"\nparam = \"delay\"\nfrom = \"20ms\"\nover = \"6s\"\nevery = \"1s\"\n";
    std::fs::write(&tl, format!("{ramp}to = \"80ms\"\n[[steps]]\nat = \"9s\"\nkind = \"loop\"\nstart = \"1s\"\ncount = 2\n")).unwrap();
    let o = ok(wirelab()
        .args(["wan", "--both", "delay 5ms", "--check", "--json"])
        .arg("--timeline")
        .arg(&tl));
    let v: CheckReport = serde_json::from_slice(&o.stdout).expect("wan --check --json");
    let ch = &v.timeline.as_ref().expect("the expanded timeline").changes;
    // set + 7 ramp values, twice.
    assert_eq!(ch.len(), 16, "{v:?}");
    assert_eq!(ch[15].a_to_b, "delay 80ms");
    assert_eq!(ch[15].at_s, 16.0);
    let o = ok(wirelab()
        .args(["wan", "--both", "delay 5ms", "--check"])
        .arg("--timeline")
        .arg(&tl));
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("timeline: 16 changes over 16.000s"), "{t}");
}
