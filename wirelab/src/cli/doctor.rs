//! `wirelab doctor`: can this machine run wirelab?
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use wirelab::doctor::{self, Status};

use super::{emit, JsonArg};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  wirelab doctor\n  wirelab doctor --json\n  wirelab doctor --kernel 6.1     # what Debian 12's kernel would lack\n  wirelab doctor --programs       # also load every tool's programs into this kernel\n\nExit status 1 when a check fails (a tool cannot run here), 0 otherwise."
)]
pub struct DoctorArgs {
    #[command(flatten)]
    json: JsonArg,
    /// Instead of this machine: what a kernel of this version (e.g. 6.1, 5.15) would lack,
    /// from the checks that depend on the version alone.
    #[arg(long, value_name = "VERSION")]
    kernel: Option<String>,
    /// Also load every program of every tool into this kernel (nothing is attached): whether
    /// its verifier accepts them all, and how much of its budget each one takes.
    #[arg(long, conflicts_with = "kernel")]
    programs: bool,
}

pub fn run(a: DoctorArgs) -> Result<ExitCode> {
    let mut checks = match &a.kernel {
        Some(k) => doctor::for_kernel(k).ok_or_else(|| {
            anyhow::anyhow!("--kernel {k:?}: not a version such as 6.1 or 5.15.0-91")
        })?,
        None => doctor::run(),
    };
    if a.programs {
        checks.extend(doctor::programs());
    }
    if a.json.json {
        for c in &checks {
            emit(&serde_json::to_string(c)?)?;
        }
    } else {
        for c in &checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            emit(&format!("{mark}  {:<34} {}", c.what, c.detail))?;
        }
    }
    Ok(if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
