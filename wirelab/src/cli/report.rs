//! `wirelab report`: HTML reports of run records.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Result};
use clap::Args;
use wirelab::{report, sweep};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  wirelab report /tmp/run1                      # writes /tmp/run1/report.html + report-plots/\n  wirelab report /tmp/run1 --out run1.html\n  wirelab report /tmp/run1 /tmp/run2 --out compare.html\n\nA damaged or unfinished run directory is an error naming the file and line; --allow-partial\nreports what is there, under a PARTIAL DATA banner."
)]
pub struct ReportArgs {
    /// Run directory (two: compare A and B), or sweep directory (two: B − A per cell).
    #[arg(required = true, num_args = 1..=2)]
    dirs: Vec<PathBuf>,
    /// Output HTML file (default: DIR/report.html, or DIR_A/compare.html).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Report an incomplete or damaged run directory anyway (marked PARTIAL DATA).
    #[arg(long)]
    allow_partial: bool,
}

pub fn run(a: ReportArgs) -> Result<ExitCode> {
    let sweeps: Vec<bool> = a.dirs.iter().map(|d| sweep::report::is_sweep(d)).collect();
    if sweeps.iter().any(|s| *s) {
        if !sweeps.iter().all(|s| *s) {
            bail!("give run directories or sweep directories, not both");
        }
        let loaded = a
            .dirs
            .iter()
            .map(|d| sweep::report::load(d))
            .collect::<Result<Vec<_>>>()?;
        let (html, name) = match loaded.as_slice() {
            [one] => (sweep::report::render(one), "report.html"),
            [x, y] => (sweep::report::render_diff(x, y)?, "compare.html"),
            _ => bail!("one or two sweep directories"),
        };
        let out = a.out.clone().unwrap_or_else(|| a.dirs[0].join(name));
        std::fs::write(&out, html)?;
        println!("{}", out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut runs = vec![];
    for d in &a.dirs {
        runs.push(report::load(d, a.allow_partial)?);
    }
    let out = a.out.clone().unwrap_or_else(|| {
        a.dirs[0].join(if runs.len() > 1 {
            "compare.html"
        } else {
            "report.html"
        })
    });
    let o = report::write(&runs, &out)?;
    for r in &runs {
        for p in &r.problems {
            eprintln!("warning: partial data: {p}");
        }
    }
    if let Some(n) = &o.png_note {
        eprintln!("note: {n}");
    }
    println!("{}", o.html.display());
    if o.plots.is_empty() {
        println!("  no plots (the run recorded nothing over time)");
    } else {
        println!("  {} plot files in {}", o.plots.len(), o.plot_dir.display());
    }
    // Tools with a summary of their own (lb: the table per backend; flows: top talkers and
    // flows; smb: the peak of live tree connects) print it too.
    for (r, tag) in runs.iter().zip(["A", "B"]) {
        let t = report::lb::text(r) + &report::flows::text(r) + &report::smb::text(r);
        if runs.len() > 1 && !t.is_empty() {
            println!("{tag}: {}", r.dir.display());
        }
        print!("{t}");
    }
    Ok(ExitCode::SUCCESS)
}
