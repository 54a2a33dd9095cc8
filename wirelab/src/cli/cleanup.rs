//! `wirelab cleanup`: remove what a killed wirelab left behind.
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::JsonArg;

#[derive(Args)]
#[command(after_help = "Examples:\n  wirelab cleanup\n  wirelab cleanup --all-labs --json")]
pub struct CleanupArgs {
    /// Also remove labs that are complete and may still be in use.
    #[arg(long)]
    all_labs: bool,
    #[command(flatten)]
    json: JsonArg,
}

pub fn run(a: CleanupArgs) -> Result<ExitCode> {
    let r = wirelab::cleanup::run(a.all_labs)?;
    if a.json.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "removed labs: {:?}; namespaces: {:?}; kept labs: {:?}; swarm runs: {:?}; bench namespaces: {:?}",
            r.labs_removed, r.namespaces_removed, r.kept_labs, r.swarm_removed, r.bench_namespaces_removed
        );
        if !r.capture_filters_removed.is_empty() {
            println!(
                "removed capture clsact filters: {:?}",
                r.capture_filters_removed
            );
        }
        if !r.wan_filters_removed.is_empty() {
            println!("removed wan clsact filters: {:?}", r.wan_filters_removed);
        }
        if !r.lb_filters_removed.is_empty() {
            println!("removed lb clsact filters: {:?}", r.lb_filters_removed);
        }
    }
    Ok(ExitCode::SUCCESS)
}
