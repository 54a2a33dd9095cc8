//! `wirelab wan`: the WAN emulator, and `wan set` for live changes.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use wirelab::wan;

use super::{emit, parse_duration, JsonArg, NetnsArg, Observe};

#[derive(Args)]
pub struct WanArgs {
    #[command(subcommand)]
    cmd: Option<WanCmd>,
    #[command(flatten)]
    run: WanRunArgs,
}

#[derive(Subcommand)]
enum WanCmd {
    /// Change a running emulator's profile atomically (nothing queued is lost).
    #[command(
        after_help = "Examples:\n  wirelab wan set --netns wirelab-wan --both \"delay 80ms\"\n  wirelab wan set --netns wirelab-wan --class voip --a-to-b \"delay 20ms loss 1%\""
    )]
    Set {
        #[command(flatten)]
        netns: NetnsArg,
        /// Which emulator, when several run in the namespace.
        #[arg(long, num_args = 2, value_names = ["IF_A", "IF_B"])]
        between: Vec<String>,
        /// Class to change (default: the default class).
        #[arg(long)]
        class: Option<String>,
        /// Restart the class's random decisions from this seed, as if the emulator had
        /// started with it (reproducible runs on one live emulator).
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        specs: SpecArgs,
    },
}

/// The SPECs of `wan` and `wan set`, by direction.
#[derive(Args)]
struct SpecArgs {
    /// SPEC for both directions (of the default class, or of --class for `wan set`).
    #[arg(long)]
    both: Option<String>,
    /// SPEC for frames from A to B.
    #[arg(long)]
    a_to_b: Option<String>,
    /// SPEC for frames from B to A.
    #[arg(long)]
    b_to_a: Option<String>,
}

impl From<SpecArgs> for wan::DirSpecs {
    fn from(a: SpecArgs) -> Self {
        Self {
            both: a.both,
            a_to_b: a.a_to_b,
            b_to_a: a.b_to_a,
        }
    }
}

#[derive(Args)]
struct WanRunArgs {
    /// The two interfaces: A then B. Frames arriving on A leave on B and vice versa.
    #[arg(long, num_args = 2, value_names = ["IF_A", "IF_B"])]
    between: Vec<String>,
    #[command(flatten)]
    netns: NetnsArg,
    #[command(flatten)]
    specs: SpecArgs,
    /// TOML config: seed, [default], [[class]] (per-flow classes).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seed for every random decision (same seed + same packets = same decisions).
    #[arg(long)]
    seed: Option<u64>,
    /// TOML timeline of live changes (set, ramp, flap, handover, loop) played from the
    /// start; `--check` prints its expanded schedule.
    #[arg(long, value_name = "FILE")]
    timeline: Option<PathBuf>,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    #[command(flatten)]
    json: JsonArg,
    /// UMEM frames (4 KiB each) for packets held in flight.
    #[arg(long, default_value_t = 32768)]
    frames: u64,
    /// Only validate the specs and config; attach nothing.
    #[arg(long)]
    check: bool,
    /// Do not raise the engine to SCHED_FIFO (real-time) priority.
    #[arg(long)]
    no_realtime: bool,
    #[command(flatten)]
    observe: Observe,
}

pub fn run(w: WanArgs) -> Result<ExitCode> {
    if let Some(WanCmd::Set {
        netns,
        between,
        class,
        seed,
        specs,
    }) = w.cmd
    {
        let req = wan::SetRequest {
            class,
            both: specs.both,
            a_to_b: specs.a_to_b,
            b_to_a: specs.b_to_a,
            seed,
            timeline: None,
        };
        netns.enter()?;
        let pair = match between.as_slice() {
            [a, b] => Some((a.as_str(), b.as_str())),
            _ => None,
        };
        let applied = wan::send_set(pair, &req)?;
        println!("applied: {applied}");
        return Ok(ExitCode::SUCCESS);
    }
    let a = w.run;
    let specs = wan::DirSpecs::from(a.specs);
    let cfg = wan::load_config(a.config.as_deref())?;
    let plan = wan::plan(&cfg, &specs, a.seed)?;
    let schedule = a
        .timeline
        .as_deref()
        .map(|p| wan::plan_timeline(p, &plan))
        .transpose()?;
    wan::engine::frames_hint(a.frames)?;
    if a.check {
        // Build every profile too (distribution files are read here).
        for (d, v) in plan.specs.iter().enumerate() {
            for (c, s) in v.iter().enumerate() {
                wan::engine::Profile::new(s.clone(), a.frames)
                    .with_context(|| format!("class {} {}", plan.names[c], wan::DIRS[d]))?;
            }
        }
        let check = CheckReport {
            ok: true,
            seed: plan.seed,
            classes: plan
                .names
                .iter()
                .enumerate()
                .map(|(c, name)| ClassCheck {
                    name: name.clone(),
                    a_to_b: plan.specs[0][c].explain(),
                    b_to_a: plan.specs[1][c].explain(),
                })
                .collect(),
            warnings: wan::warnings(&plan.names, &plan.specs),
            timeline: schedule,
        };
        if a.json.json {
            emit(&serde_json::to_string(&check)?)?;
        } else {
            let mut text = format!(
                "config OK: {} class(es), seed {}",
                check.classes.len(),
                check.seed
            );
            for c in &check.classes {
                text += &format!(
                    "\n  class {}\n    a_to_b: {}\n    b_to_a: {}",
                    c.name, c.a_to_b, c.b_to_a
                );
            }
            for w in &check.warnings {
                text += &format!("\nwarning: {w}");
            }
            if let Some(s) = &check.timeline {
                text += &format!("\n{}", wan::timeline::describe(s));
            }
            emit(&text)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.between.len() != 2 {
        bail!("--between IF_A IF_B is required");
    }
    let report = a.observe.reporting(a.json, a.duration)?;
    let stop = a.netns.enter_until_stopped()?;
    wan::run(
        &wan::Options {
            iface_a: a.between[0].clone(),
            iface_b: a.between[1].clone(),
            netns: a.netns.netns.clone(),
            specs,
            config: a.config,
            seed: a.seed,
            frames: a.frames,
            realtime: !a.no_realtime,
            timeline: a.timeline,
            report,
        },
        &stop,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `wan --check`: how every class's SPECs were read, with units spelled out.
#[derive(Serialize)]
struct CheckReport {
    ok: bool,
    /// The seed of the decisions (random unless `--seed` or the config sets one).
    seed: u64,
    classes: Vec<ClassCheck>,
    warnings: Vec<String>,
    /// The expanded `--timeline`: every change with its time, class and SPECs.
    #[serde(skip_serializing_if = "Option::is_none")]
    timeline: Option<wan::timeline::Schedule>,
}

#[derive(Serialize)]
struct ClassCheck {
    name: String,
    a_to_b: String,
    b_to_a: String,
}
