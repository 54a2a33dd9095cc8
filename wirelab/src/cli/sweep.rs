//! `wirelab sweep`: matrices of wan conditions, repeated, with stability figures.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Result};
use clap::Args;
use wirelab::{sweep, util};

use super::JsonArg;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  wirelab sweep sweep.toml --dry-run\n  wirelab sweep sweep.toml --out runs/sweep1\n  wirelab sweep --resume runs/sweep1\n  wirelab sweep sweep.toml --out runs/sweep2 --json\n\nThe file (docs/sweep.md):\n  seed = 7\n  repetitions = 3\n  [base]\n  both = \"delay 10ms\"\n  [[axis]]\n  name = \"delay\"\n  values = [\"delay 10ms\", \"delay 50ms 5ms\"]\n  [[axis]]\n  name = \"loss\"\n  values = [\"\", \"loss 1%\"]\n  [[workload]]\n  kind = \"udp\"\n  rate = 200\n  count = 400\n\nRuns in its own lab (client - wan - server), removed at the end, on error and on Ctrl-C."
)]
pub struct SweepArgs {
    /// The sweep file (TOML): axes, workloads, repetitions, seed (docs/sweep.md).
    file: Option<PathBuf>,
    /// Directory for the manifest, results, summary and every run's record (must not hold a
    /// sweep yet).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Finish the sweep in DIR: run only the runs it has no result for (same order, same
    /// seeds).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["file", "out"])]
    resume: Option<PathBuf>,
    /// List the runs (order, cell, repetition, seed) and change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    json: JsonArg,
}

pub fn run(a: SweepArgs) -> Result<ExitCode> {
    let (out, resume) = match (&a.resume, &a.out) {
        (Some(d), _) => (d.clone(), true),
        (None, Some(d)) => (d.clone(), false),
        (None, None) if a.dry_run => (PathBuf::new(), false),
        (None, None) => bail!("give --out DIR for the sweep's results (or --resume DIR)"),
    };
    if a.file.is_none() && !resume {
        bail!("give the sweep FILE (or --resume DIR)");
    }
    let stop = util::Stop::install()?;
    let o = sweep::Options {
        file: a.file,
        out,
        resume,
        dry_run: a.dry_run,
        json: a.json.json,
    };
    let Some(summary) = sweep::run(&o, &stop)? else {
        return Ok(ExitCode::SUCCESS);
    };
    super::print(a.json.json, &summary, || {
        super::written(|buf| sweep::print_summary(buf, &summary))
    })?;
    Ok(if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
