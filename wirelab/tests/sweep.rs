//! `wirelab sweep` end to end: a 2×2×2 sweep with 3 repetitions in its own lab, every run
//! recorded; the summary's medians equal the medians of the runs' own records and the
//! measured delay matches the configured one; the same seeds give the same loss decisions;
//! `--resume` after kill -9 runs only the missing runs; `--dry-run` lists exactly the runs;
//! a bad file is refused before anything is made.
mod common;
use std::{collections::BTreeMap, path::Path, time::Duration};

use common::*;
use wirelab::sweep::{self, RunResult};

const GRID: &str = include_str!("data/sweep-2x2x2.toml");

fn results(dir: &Path) -> Vec<RunResult> {
    sweep::run::read_results(dir).unwrap()
}

/// The probe's final result in one run's record.
fn final_of(dir: &Path, r: &RunResult) -> wirelab::probe::UdpRecord {
    let p = dir.join(&r.record).join("probe-udp.final.json");
    let doc: wirelab::record::FinalDoc<wirelab::probe::UdpRecord> =
        wirelab::record::read_doc(&p).unwrap();
    doc.result
}

/// Whether the lab a sweep process `pid` would make exists (other tests' labs may come and
/// go meanwhile).
fn lab_of(pid: u32) -> bool {
    wirelab::lab::list_labs().contains(&format!("swp{}", pid % 100_000))
}

/// Run `wirelab sweep ARGS` to the end: its output and its pid.
fn sweep_cmd(args: &[&std::ffi::OsStr]) -> (std::process::Output, u32) {
    let mut c = wirelab();
    c.arg("sweep").args(args);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

#[test]
fn a_sweep_runs_every_cell_reproducibly_and_resumes() {
    require_privileges();
    timing("a_sweep_runs_every_cell_reproducibly_and_resumes", || {
        let d = TempDir::new("wl-sweep-");
        let file = d.file("grid.toml", GRID);

        // --dry-run: exactly the 24 runs, each (cell, rep) once, nothing made.
        let (o, pid) = sweep_cmd(&[file.as_os_str(), "--dry-run".as_ref()]);
        assert!(o.status.success());
        assert!(!lab_of(pid), "a dry run makes no lab");
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let plan = sweep::plan::load(&file).unwrap();
        assert_eq!(plan.runs.len(), 24);
        let rows: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(rows.len(), 24, "{text}");
        for (row, r) in rows.iter().zip(&plan.runs) {
            let w: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(w[1].parse::<usize>().unwrap(), r.id, "{row}");
            assert_eq!(w[4].parse::<u64>().unwrap(), r.seed, "{row}");
        }
        // --dry-run --json: the same runs, typed.
        let (o, _) = sweep_cmd(&[file.as_os_str(), "--dry-run".as_ref(), "--json".as_ref()]);
        assert!(o.status.success());
        let listed: sweep::Listing = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!((listed.cells, listed.repetitions), (8, 3));
        let ids: Vec<(usize, u64)> = listed.runs.iter().map(|r| (r.id, r.seed)).collect();
        let want: Vec<(usize, u64)> = plan.runs.iter().map(|r| (r.id, r.seed)).collect();
        assert_eq!(ids, want);

        // The whole sweep.
        let out = d.join("a");
        let o = ok(wirelab()
            .arg("sweep")
            .arg(&file)
            .arg("--out")
            .arg(&out)
            .arg("--json"));
        let summary: sweep::Summary = serde_json::from_slice(&o.stdout).unwrap();
        let rs = results(&out);
        assert_eq!(rs.len(), 24);
        assert!(rs.iter().all(|r| r.ok), "{rs:?}");
        let mut ids: Vec<usize> = rs.iter().map(|r| r.id).collect();
        ids.sort();
        assert_eq!(ids, (0..24).collect::<Vec<_>>());
        assert_eq!(
            rs.iter().map(|r| r.id).collect::<Vec<_>>(),
            plan.runs.iter().map(|r| r.id).collect::<Vec<_>>(),
            "run in the planned order"
        );
        assert!(!lab_of(pid), "the sweep's lab is gone");
        // Every check below runs over the summary's cells: all 8 must be there.
        assert_eq!(summary.cells.len(), 8, "{summary:#?}");
        assert!(summary.cells.iter().all(|c| c.runs == 3 && c.failed == 0));

        // Each cell's median is the median of its runs' own records; the measured one-way
        // delay is the configured one (within 1 ms: the probe's own path adds ~0.1 ms).
        for c in &summary.cells {
            let mut p50: Vec<f64> = rs
                .iter()
                .filter(|r| r.cell == c.cell.index)
                .map(|r| final_of(&out, r).report.forward.delay_ms.p50)
                .collect();
            assert_eq!(p50.len(), 3);
            p50.sort_by(f64::total_cmp);
            let f = &c.metrics["udp.fwd_delay_p50_ms"];
            assert_eq!(f.median, p50[1], "cell {}", c.cell.label);
            let conf = c.configured_delay_ms.unwrap();
            assert!(
                (f.median - conf).abs() < 1.0,
                "cell {}: measured {} ms, configured {conf} ms",
                c.cell.label,
                f.median
            );
            // Loss 20% where asked, none elsewhere (120 probes: 20% ± 12 points).
            let loss = c.metrics["udp.fwd_loss_pct"].median;
            if c.cell.label.contains("loss 20%") {
                assert!((8.0..=32.0).contains(&loss), "{}: {loss}", c.cell.label);
            } else {
                assert_eq!(loss, 0.0, "{}", c.cell.label);
            }
        }

        // The sweep's report: loads in headless Chromium without console errors, and each
        // heatmap cell of the primary metric shows the cell's median.
        let html = out.join("report.html");
        let tmp = TempDir::new("wl-sweep-chrome-");
        let o = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", tmp.0.display()))
            .arg(format!("file://{}", html.display()))
            .output()
            .expect("chromium (cargo xtask setup installs it)");
        assert!(o.status.success(), "{o:?}");
        let console: Vec<String> = String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .map(String::from)
            .collect();
        assert!(console.is_empty(), "{console:?}");
        let dom = String::from_utf8_lossy(&o.stdout);
        let heat = dom
            .split("<h2>udp.fwd_delay_p50_ms</h2>")
            .nth(1)
            .and_then(|s| s.split("<h2>").next())
            .expect("a heatmap section of the primary metric");
        for c in &summary.cells {
            let m = sweep::report::fmt(c.metrics["udp.fwd_delay_p50_ms"].median);
            assert!(
                heat.contains(&format!(">{m}<")) || heat.contains(&format!(">{m} !<")),
                "cell {}: {m} not in the heatmap",
                c.cell.label
            );
        }

        // Each cell's delay CDF (all its repetitions' probe histograms merged) is in the report:
        // one curve per cell, monotone, ending at 100 %, its median within 1 ms of the cell's
        // median p50 (the histogram's resolution and the merge of three runs).
        let loaded = sweep::report::load(&out).unwrap();
        assert_eq!(loaded.cdfs.len(), summary.cells.len());
        for (cdf, c) in loaded.cdfs.iter().zip(&summary.cells) {
            assert_eq!(cdf.label, c.cell.label);
            let p = &cdf.points;
            assert!(
                p.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "cell {}: not monotone: {p:?}",
                c.cell.label
            );
            assert!((p.last().unwrap().1 - 100.0).abs() < 1e-9, "{p:?}");
            let med = p.iter().find(|x| x.1 >= 50.0).unwrap().0;
            let want = c.metrics["udp.fwd_delay_p50_ms"].median;
            assert!(
                (med - want).abs() < 1.0,
                "cell {}: CDF median {med} vs {want}",
                c.cell.label
            );
        }
        let drawn = dom
            .split("<h2>One-way delay CDF per cell</h2>")
            .nth(1)
            .and_then(|s| s.split("</svg>").next())
            .expect("a CDF chart in the report");
        // The drawn curves are monotone too: x grows, y (downwards in SVG) does not.
        let curves: Vec<Vec<(f64, f64)>> = drawn
            .split("<polyline")
            .skip(1)
            .filter_map(|p| p.split("points=\"").nth(1)?.split('"').next())
            .map(|pts| {
                pts.split_whitespace()
                    .filter_map(|xy| {
                        let (x, y) = xy.split_once(',')?;
                        Some((x.parse().ok()?, y.parse().ok()?))
                    })
                    .collect()
            })
            .filter(|v: &Vec<(f64, f64)>| v.len() > 2)
            .collect();
        assert_eq!(curves.len(), summary.cells.len(), "{drawn}");
        for v in &curves {
            assert!(
                v.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 >= w[1].1),
                "{v:?}"
            );
        }

        // kill -9 part-way, then --resume: only the missing runs run, each once.
        let out_c = d.join("c");
        let mut c = wirelab();
        c.arg("sweep").arg(&file).arg("--out").arg(&out_c);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let bg = Bg::from_child(c.spawn().unwrap());
        let killed = bg.pid();
        assert!(
            eventually(Duration::from_secs(60), || results(&out_c).len() >= 5),
            "no 5 results within 60 s"
        );
        bg.kill();
        let before = results(&out_c);
        assert!(before.len() < 24, "killed too late: {}", before.len());
        assert!(
            lab_of(killed),
            "a killed sweep leaves its lab (resume removes it)"
        );
        let (o, resumed) = sweep_cmd(&["--resume".as_ref(), out_c.as_os_str()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let after = results(&out_c);
        assert_eq!(after.len(), 24);
        for (x, y) in before.iter().zip(&after) {
            assert_eq!(x.id, y.id);
            assert_eq!(x.started_unix, y.started_unix, "run {} ran again", x.id);
        }
        let mut ids: Vec<usize> = after.iter().map(|r| r.id).collect();
        ids.sort();
        assert_eq!(ids, (0..24).collect::<Vec<_>>(), "each run exactly once");
        assert!(!lab_of(killed) && !lab_of(resumed), "labs left");

        // The same file again (killed and resumed at that): every run's loss decisions are the
        // same (its seed).
        let by_id = |dir: &Path| -> BTreeMap<usize, Vec<u64>> {
            results(dir)
                .iter()
                .map(|r| (r.id, final_of(dir, r).report.lost_seqs))
                .collect()
        };
        let (a, c) = (by_id(&out), by_id(&out_c));
        let lossy: Vec<usize> = a
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| *k)
            .collect();
        assert!(lossy.len() >= 10, "runs with losses: {lossy:?}");
        for id in &lossy {
            assert_eq!(
                a[id], c[id],
                "run {id}: lost probes differ between two sweeps"
            );
        }
        // The two sweeps side by side: a difference heatmap per metric.
        let o = ok(wirelab().arg("report").arg(&out).arg(&out_c));
        let cmp = std::fs::read_to_string(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        assert!(cmp.contains("B − A") && cmp.contains("<h2>udp.fwd_loss_pct</h2>"));
    });
}

#[test]
fn a_bad_sweep_file_names_the_field_and_makes_nothing() {
    require_privileges();
    let d = TempDir::new("wl-sweep-bad-");
    for (text, field) in [
        (GRID.replace("\"loss 20%\"", "\"loss 120%\""), "loss 120%"),
        (GRID.replace("rate = 200", "rate = -1"), "workload[0].rate"),
        (
            GRID.replace("repetitions = 3", "repetitions = 0"),
            "repetitions",
        ),
        (
            GRID.replace("name = \"dup\"", "name = \"loss\""),
            "axis[2] (loss).name",
        ),
        // A workload's duration: named, and out of range refused (it was a panic).
        (
            GRID.replace(
                "kind = \"udp\"\nrate = 200\ncount = 120",
                "kind = \"tcp\"\nduration = \"-3s\"",
            ),
            "duration: \"-3s\"",
        ),
        (
            GRID.replace(
                "kind = \"udp\"\nrate = 200\ncount = 120",
                "kind = \"tcp\"\nduration = \"1e20\"",
            ),
            "longer than 365 days",
        ),
    ] {
        let f = d.file("bad.toml", &text);
        let out = d.join("out");
        let (o, pid) = sweep_cmd(&[f.as_os_str(), "--out".as_ref(), out.as_os_str()]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(e.contains(field), "{field:?} not in: {e}");
        assert!(!out.exists(), "nothing written for a refused file");
        assert!(!lab_of(pid));
    }
}

/// Two forward outages of 200 ms, 1 s apart, from 1 s into every run.
const FLAP: &str = "[[steps]]\nat = \"1s\"\nkind = \"flap\"\ndir = \"a_to_b\"\ndown = \"200ms\"\nevery = \"1s\"\ncount = 2\n";

#[test]
fn a_sweep_plays_its_timeline_in_every_run() {
    require_privileges();
    timing("a_sweep_plays_its_timeline_in_every_run", || {
        let d = TempDir::new("wl-sweep-tl-");
        d.file("flap.toml", FLAP);
        let f = d.file(
            "sweep.toml",
            "seed = 3\nrepetitions = 2\ntimeline = \"flap.toml\"\n[base]\nboth = \"delay 10ms\"\n\
         [[workload]]\nkind = \"udp\"\nrate = 200\ncount = 600\n",
        );
        let out = d.join("out");
        let (o, _) = sweep_cmd(&[f.as_os_str(), "--out".as_ref(), out.as_os_str()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // Each run lost the two outages' probes forward: 2 × 200 ms at 200/s = 80 of 600 (a
        // probe at each edge may fall either way), and nothing in reverse. A host that takes
        // the VM's CPU puts the probe's sender behind its schedule (it goes on from then), so
        // the outages hold fewer or more probes: a fresh-clone run at 38-45 % steal counted
        // 63-85, attempt after attempt.
        let tol = bound("probes lost in the outages (of 80)", 2.0, 20.0);
        let rs = results(&out);
        assert_eq!(rs.len(), 2);
        for r in &rs {
            let lost = r.metrics["udp.fwd_loss_pct"] * 6.0;
            assert!(
                (lost - 80.0).abs() <= tol,
                "run {}: {lost} probes lost",
                r.id
            );
            assert_eq!(r.metrics["udp.rev_loss_pct"], 0.0);
        }
        // Every timeline change is in the emulator's record: per run 2 outages × (down, up) ×
        // (default, measured class), all applied, each with its scheduled and applied time.
        let lines: Vec<wirelab::wan::ChangeEntry> =
            std::fs::read_to_string(out.join("wan").join("wan.changes.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).expect("a wan change line"))
                .collect();
        let tl: Vec<_> = lines
            .iter()
            .filter(|l| l.source == wirelab::wan::ChangeSource::Timeline)
            .collect();
        assert_eq!(tl.len(), 16, "{lines:?}");
        // Applied within 10 ms of its time; a host taking the VM's CPU delays the emulator's
        // thread too (a fresh-clone run at 31-40 % steal: 18-50 ms).
        let late = bound("a timeline change's latency (ms)", 10.0, 100.0);
        for l in tl {
            assert_eq!(l.kind, wirelab::wan::ChangeOutcome::Applied, "{l:?}");
            assert!(l.latency_ms.expect("latency_ms") < late, "{l:?}");
        }
        // A bad timeline is refused before anything is made, naming the step's field.
        d.file("flap.toml", &FLAP.replace("200ms", "2s"));
        let out = d.join("out2");
        let (o, pid) = sweep_cmd(&[f.as_os_str(), "--out".as_ref(), out.as_os_str()]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(e.contains("timeline.steps[0].down"), "{e}");
        assert!(!out.exists());
        assert!(!lab_of(pid));
    });
}

/// A class axis: `delay 50ms` on all traffic, then only on the UDP probe's port (7000, the
/// sweep's probe server). The probe is delayed in both cells; a ping to the server (ICMP, a
/// second measured workload) only in the `all` cell.
const SCOPE: &str = "repetitions = 1\norder = \"sequential\"\n[base]\nboth = \"delay 50ms\"\n\
    [[axis]]\nname = \"scope\"\nkind = \"class\"\n\
    values = [{ name = \"all\" }, { name = \"udp7000\", proto = \"udp\", port = 7000 }]\n\
    [[workload]]\nkind = \"udp\"\nrate = 100\ncount = 100\n\
    [[workload]]\nkind = \"command\"\nname = \"ping\"\nnumber = \"last\"\n\
    argv = [\"sh\", \"-c\", \"ping -n -c 5 -i 0.2 -W 2 198.18.0.2 | tail -n 1 | cut -d/ -f5\"]\n";

#[test]
fn a_class_axis_impairs_only_the_traffic_its_rule_selects() {
    require_privileges();
    timing(
        "a_class_axis_impairs_only_the_traffic_its_rule_selects",
        || {
            let d = TempDir::new("wl-sweep-class-");
            let f = d.file("sweep.toml", SCOPE);
            let (o, _) = sweep_cmd(&[f.as_os_str(), "--dry-run".as_ref()]);
            let dry = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert_eq!(dry.matches("restarts the emulator").count(), 1, "{dry}");
            let out = d.join("out");
            let (o, _) = sweep_cmd(&[f.as_os_str(), "--out".as_ref(), out.as_os_str()]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let mut rs = results(&out);
            rs.sort_by_key(|r| r.cell);
            assert_eq!(rs.len(), 2);
            let names: Vec<_> = rs.iter().map(|r| r.class_rule.as_deref()).collect();
            assert_eq!(names, [Some("all"), Some("udp7000")]);
            for r in &rs {
                assert!(r.ok, "{r:?}");
                // The probe crosses the 50 ms delay in both cells (the emulator adds well under 5 ms).
                let p50 = r.metrics["udp.fwd_delay_p50_ms"];
                assert!((50.0..55.0).contains(&p50), "cell {}: p50 {p50}", r.cell);
            }
            // The ping's average RTT: 2 × 50 ms in `all`, under 5 ms where only UDP port 7000 is
            // delayed.
            let rtt: Vec<f64> = rs.iter().map(|r| r.metrics["ping.value"]).collect();
            let p50: Vec<f64> = rs
                .iter()
                .map(|r| r.metrics["udp.fwd_delay_p50_ms"])
                .collect();
            eprintln!("probe p50 per cell: {p50:?}, ping avg rtt per cell: {rtt:?}");
            assert!((100.0..110.0).contains(&rtt[0]), "{rtt:?}");
            assert!(rtt[1] < 5.0, "{rtt:?}");
            // The manifest records each cell's rule.
            let m = sweep::run::read_manifest(&out).unwrap();
            assert_eq!(m.plan.cells[1].rule.as_ref().unwrap().port, Some(7000));
        },
    );
}
