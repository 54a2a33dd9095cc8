//! `wirelab doctor`: can this machine run wirelab?
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use wirelab::doctor::{self, Status};

use super::{emit, JsonArg};

#[derive(Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    json: JsonArg,
}

pub fn run(a: DoctorArgs) -> Result<ExitCode> {
    let checks = doctor::run();
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
            emit(&format!("{mark}  {:<28} {}", c.what, c.detail))?;
        }
    }
    Ok(if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
