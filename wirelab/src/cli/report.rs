//! `wirelab report`: HTML reports of run records.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;
use wirelab::report;

#[derive(Args)]
pub struct ReportArgs {
    /// Run directory (two: compare A and B).
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
    println!(
        "  {} plot files in {}",
        o.plots.len(),
        o.plots
            .first()
            .and_then(|p| p.parent())
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
