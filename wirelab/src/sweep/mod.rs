//! `wirelab sweep FILE.toml`: a matrix of wan conditions (axes over SPEC clauses, crossed
//! into cells), each cell's workloads run `repetitions` times in a randomized, seeded
//! order on one lab whose emulator is changed live between runs; every run recorded; per
//! cell stability figures (median, IQR, CV, bootstrap CI, drift) and configured vs
//! measured; `--resume` after an interruption, `--dry-run` to list the runs.
//!
//! Files: `plan.rs` (the file, cells, seeds, order), `run.rs` (the lab, the emulator, the
//! workloads, results.jsonl), `stats.rs` (the figures). A sweep directory holds
//! `manifest.json`, `results.jsonl`, `summary.json`, `report.html` (`report.rs`),
//! `runs/NNNN-cC-rR/` (one run record each) and `wan/` (the emulator's record).
pub mod plan;
pub mod report;
pub mod run;
pub mod stats;

use std::{collections::BTreeMap, io::Write, path::PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

pub use plan::{Cell, Plan, RunPlan, SweepFile};
pub use run::{Manifest, RunResult};
use stats::Figures;

use crate::util::Stop;

pub struct Options {
    pub file: Option<PathBuf>,
    pub out: PathBuf,
    pub resume: bool,
    pub dry_run: bool,
    /// With `dry_run`: the listing as one JSON line.
    pub json: bool,
}

/// One cell's results (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellSummary {
    pub cell: Cell,
    pub runs: usize,
    pub failed: usize,
    /// Metric -> figures over the cell's successful runs (in the order they ran).
    pub metrics: BTreeMap<String, Figures>,
    /// The primary metric's CV is above the file's `unstable_cv`.
    pub unstable: bool,
    /// Configured one-way delay (a→b), ms, for configured vs measured.
    pub configured_delay_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub format: String,
    /// The metric stability is judged on (the first workload's headline figure).
    pub primary: String,
    pub runs: usize,
    pub failed: usize,
    pub cells: Vec<CellSummary>,
}

/// The headline metric of the first workload.
fn primary(plan: &Plan) -> String {
    match plan.file.workloads.first() {
        Some(plan::Workload::Udp { .. }) => "udp.fwd_delay_p50_ms".into(),
        Some(plan::Workload::Tcp { .. }) => "tcp.goodput_mbps".into(),
        Some(plan::Workload::Iperf3 { udp: true, .. }) => "iperf3.udp_mbps".into(),
        Some(plan::Workload::Iperf3 { .. }) => "iperf3.tcp_mbps".into(),
        Some(plan::Workload::Command { name, number, .. }) => {
            format!("{name}.{}", if number.is_some() { "value" } else { "ok" })
        }
        None => String::new(),
    }
}

/// Figures per cell from the results.
pub fn summarize(plan: &Plan, results: &[RunResult]) -> Summary {
    let primary = primary(plan);
    let mut cells = vec![];
    for c in &plan.cells {
        let mut rs: Vec<&RunResult> = results.iter().filter(|r| r.cell == c.index).collect();
        rs.sort_by_key(|r| r.order);
        let ok: Vec<&&RunResult> = rs.iter().filter(|r| r.ok).collect();
        let mut names: Vec<&String> = ok.iter().flat_map(|r| r.metrics.keys()).collect();
        names.sort();
        names.dedup();
        let metrics: BTreeMap<String, Figures> = names
            .into_iter()
            .map(|n| {
                let v: Vec<f64> = ok
                    .iter()
                    .filter_map(|r| r.metrics.get(n).copied())
                    .collect();
                let seed = crate::wan::splitmix(plan.file.seed ^ c.index as u64);
                (n.clone(), stats::figures(&v, seed))
            })
            .collect();
        let unstable = metrics
            .get(&primary)
            .is_some_and(|f| f.n > 1 && f.cv > plan.file.unstable_cv);
        cells.push(CellSummary {
            cell: c.clone(),
            runs: rs.len(),
            failed: rs.len() - ok.len(),
            metrics,
            unstable,
            configured_delay_ms: crate::wan::spec::parse(&c.a_to_b)
                .ok()
                .map(|s| s.delay.as_secs_f64() * 1e3),
        });
    }
    Summary {
        format: "wirelab-sweep-summary".into(),
        primary,
        runs: results.len(),
        failed: results.iter().filter(|r| !r.ok).count(),
        cells,
    }
}

/// The runs of a plan as a table (`--dry-run`).
/// `sweep --dry-run`: the runs in the order they would run (`--json`: this, one line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing {
    pub cells: usize,
    pub repetitions: u32,
    pub order: plan::Order,
    pub seed: u64,
    pub runs: Vec<ListedRun>,
}

/// One run of a [`Listing`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListedRun {
    /// Its place in the order the runs go (0 first).
    pub index: usize,
    /// cell * repetitions + repetition (the run's directory and result key).
    pub id: usize,
    pub cell: usize,
    pub rep: u32,
    pub seed: u64,
    pub label: String,
    /// Its cell's class rule differs from the run's before: the emulator restarts.
    pub restarts_emulator: bool,
}

/// The runs of `plan`, in the order they run.
pub fn listing(plan: &Plan) -> Listing {
    let mut running = plan.runs.first().map(|r| plan.cells[r.cell].class_match());
    let runs = plan
        .runs
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let m = plan.cells[r.cell].class_match();
            // Class rules do not change live: a new rule starts a new emulator.
            let restarts_emulator = !plan.file.fresh_wan && running.as_ref() != Some(&m);
            running = Some(m);
            ListedRun {
                index,
                id: r.id,
                cell: r.cell,
                rep: r.rep,
                seed: r.seed,
                label: plan.cells[r.cell].label.clone(),
                restarts_emulator,
            }
        })
        .collect();
    Listing {
        cells: plan.cells.len(),
        repetitions: plan.file.repetitions,
        order: plan.file.order,
        seed: plan.file.seed,
        runs,
    }
}

/// The text of a [`Listing`].
pub fn print_runs(out: &mut dyn Write, l: &Listing) -> std::io::Result<()> {
    writeln!(
        out,
        "{} cells x {} repetitions = {} runs, order {:?}, master seed {}",
        l.cells,
        l.repetitions,
        l.runs.len(),
        l.order,
        l.seed
    )?;
    writeln!(
        out,
        "{:>5} {:>5} {:>5} {:>4} {:>20}  cell",
        "#", "run", "cell", "rep", "seed"
    )?;
    for r in &l.runs {
        let restart = if r.restarts_emulator {
            "  (new class rule: restarts the emulator)"
        } else {
            ""
        };
        writeln!(
            out,
            "{:>5} {:>5} {:>5} {:>4} {:>20}  {}{restart}",
            r.index, r.id, r.cell, r.rep, r.seed, r.label
        )?;
    }
    Ok(())
}

/// The per-cell table of a summary.
pub fn print_summary(out: &mut dyn Write, s: &Summary) -> std::io::Result<()> {
    writeln!(
        out,
        "{} runs ({} failed); primary metric {}: median [95% CI], IQR, CV",
        s.runs, s.failed, s.primary
    )?;
    for c in &s.cells {
        let p = c.metrics.get(&s.primary);
        let fig = p.map_or("-".to_string(), |f| {
            format!(
                "{:.2} [{:.2}, {:.2}]  IQR {:.2}  CV {:.3}{}",
                f.median,
                f.ci_low,
                f.ci_high,
                f.iqr,
                f.cv,
                if f.trend_p < 0.05 { "  DRIFT" } else { "" }
            )
        });
        writeln!(
            out,
            "  cell {:>3} {:<48} {}/{} ok  {}{}",
            c.cell.index,
            c.cell.label,
            c.runs - c.failed,
            c.runs,
            fig,
            if c.unstable { "  UNSTABLE" } else { "" }
        )?;
    }
    Ok(())
}

/// Run (or resume, or list) a sweep. Returns the summary (None for `--dry-run`).
pub fn run(o: &Options, stop: &Stop) -> Result<Option<Summary>> {
    let mut resumed_timeline = None;
    let (file_text, file_path) = if o.resume {
        let m = run::read_manifest(&o.out)?;
        // The timeline as it was read when the sweep started.
        resumed_timeline = m.plan.timeline;
        (m.file_text, None)
    } else {
        let p = o.file.as_ref().context("a sweep FILE (or --resume DIR)")?;
        (
            crate::util::read_user_file(p, crate::util::limit::CONFIG)?,
            Some(p.clone()),
        )
    };
    let file: SweepFile = toml::from_str(&file_text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            file_path
                .as_ref()
                .map_or("manifest".into(), |p| p.display().to_string()),
            e.to_string().trim()
        )
    })?;
    let mut plan = Plan::new(file).with_context(|| {
        file_path
            .as_ref()
            .map_or("manifest".into(), |p| p.display().to_string())
    })?;
    match &file_path {
        Some(p) => plan.attach_timeline(p)?,
        None => plan.timeline = resumed_timeline,
    }
    if o.dry_run {
        let l = listing(&plan);
        if o.json {
            crate::runtime::observe::to_stdout(|out| crate::runtime::observe::json_line(out, &l))?;
        } else {
            crate::runtime::observe::to_stdout(|out| print_runs(out, &l))?;
        }
        return Ok(None);
    }
    let (manifest, done) = run::prepare(&plan, &file_text, &o.out, o.resume)?;
    if o.resume {
        tracing::info!(done = done.len(), of = plan.runs.len(), "resuming");
    }
    let results = run::execute(&plan, manifest, done, &o.out, stop)?;
    let summary = summarize(&plan, &results);
    std::fs::write(
        o.out.join(run::SUMMARY),
        serde_json::to_string_pretty(&summary)?,
    )?;
    let html = o.out.join("report.html");
    std::fs::write(&html, report::render(&report::load(&o.out)?))?;
    tracing::info!(report = %html.display(), "sweep report written");
    Ok(Some(summary))
}
