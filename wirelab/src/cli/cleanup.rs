//! `wirelab cleanup`: remove what a killed wirelab left behind.
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::JsonArg;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  wirelab cleanup --dry-run\n  wirelab cleanup\n  wirelab cleanup --all-labs --json"
)]
pub struct CleanupArgs {
    /// Also remove labs that are complete and may still be in use.
    #[arg(long)]
    all_labs: bool,
    /// Remove nothing: list what would be removed.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    json: JsonArg,
}

pub fn run(a: CleanupArgs) -> Result<ExitCode> {
    let r = wirelab::cleanup::run(a.all_labs, a.dry_run)?;
    if a.json.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} labs: {:?}; namespaces: {:?}; kept labs: {:?}; swarm runs: {:?}; bench namespaces: {:?}",
        r.labs_removed, r.namespaces_removed, r.kept_labs, r.swarm_removed, r.bench_namespaces_removed
    );
    for (tool, filters) in [
        ("capture", &r.capture_filters_removed),
        ("wan", &r.wan_filters_removed),
        ("lb", &r.lb_filters_removed),
    ] {
        if !filters.is_empty() {
            println!("{verb} {tool} clsact filters: {filters:?}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
