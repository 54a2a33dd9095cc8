//! `wirelab wan`: the WAN emulator, and `wan set` for live changes.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use wirelab::wan::{self, CheckReport, ClassCheck};

use super::{emit, parse_duration, JsonArg, NetnsArg, Observe};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  wirelab wan --netns wirelab-wan --between to-client to-server --both \"delay 20ms\"\n  wirelab wan --netns wirelab-wan --between to-client to-server \\\n      --a-to-b \"delay 40ms 5ms distribution normal loss 0.5% rate 20mbit\" --b-to-a \"delay 40ms\"\n  wirelab wan --netns wirelab-wan --between to-client to-server --config wan.toml --seed 7 --json\n  wirelab wan --netns wirelab-wan --between to-client to-server --both \"delay 20ms\" \\\n      --timeline ramp.toml --record run1\n  wirelab wan --both \"delay 20ms\" --timeline ramp.toml --check   # the expanded schedule\n  wirelab wan set --netns wirelab-wan --both \"delay 80ms\"\n\nSPEC words (tc-netem's): delay TIME [JITTER [CORR%]] [distribution uniform|normal|pareto|\nparetonormal|FILE.dist], loss P% [CORR%] | loss state p13 [p31 [p32 [p23 [p14]]]] | loss gemodel\np [r [1-h [1-k]]], duplicate P% [CORR%], corrupt P% [CORR%], reorder P% [CORR%] [gap N],\nrate RATE [OVERHEAD [CELLSIZE [CELLOVERHEAD]]], limit PACKETS|SIZE [link], and beyond netem:\nblackhole TIME every TIME, jitter-order keep|reorder (default keep), rate trace FILE [once|wrap]\n(Mahimahi mm-link traces), preset NAME (Pantheon's calibrated paths).\nOrder: classify -> loss -> duplicate -> corrupt -> delay -> rate -> queue limit."
)]
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
    /// Write a packet-delivery trace (Mahimahi's mm-link format) for `rate trace FILE`:
    /// a constant rate, or several levels in turn (one --rate and --duration each).
    #[command(
        after_help = "Examples:\n  wirelab wan trace --rate 12mbit --duration 1s -o 12mbit.trace\n  wirelab wan trace --rate 2.64mbit --duration 60s --poisson 1 -o mexico.trace\n  wirelab wan trace --rate 20mbit --duration 2s --rate 5mbit --duration 2s -o steps.trace\n  wirelab wan --between to-client to-server --netns wirelab-wan \\\n      --a-to-b \"delay 20ms rate trace steps.trace\""
    )]
    Trace {
        /// Rate of a level (of IP packets, 1500-byte opportunities): 12mbit, 500kbit, 1gbit.
        #[arg(long, required = true)]
        rate: Vec<String>,
        /// How long the level lasts (whole milliseconds); one per --rate, in the same order.
        #[arg(long, required = true, value_parser = parse_duration)]
        duration: Vec<Duration>,
        /// Write the trace here (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Poisson-timed opportunities of the same mean rate (exponential gaps, as the
        /// traces of Pantheon's cellular emulators), drawn from this seed.
        #[arg(long, value_name = "SEED")]
        poisson: Option<u64>,
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
    /// A calibrated path (Pantheon's emulators, e.g. pantheon-nepal-india): its delay, rate,
    /// queue and loss A to B (the data direction), its delay and rate B to A.
    #[arg(long, conflicts_with_all = ["both", "a_to_b", "b_to_a"])]
    preset: Option<String>,
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
    match w.cmd {
        Some(WanCmd::Set {
            netns,
            between,
            class,
            seed,
            specs,
        }) => set(&netns, &between, class, seed, specs),
        Some(WanCmd::Trace {
            rate,
            duration,
            output,
            poisson,
        }) => write_trace(&rate, &duration, output.as_deref(), poisson),
        None => emulate(w.run),
    }
}

/// `wan set`: a live change sent to the running emulator.
fn set(
    netns: &NetnsArg,
    between: &[String],
    class: Option<String>,
    seed: Option<u64>,
    specs: SpecArgs,
) -> Result<ExitCode> {
    // The words are checked here, before the namespace (the running emulator checks the
    // change again against its classes and files).
    for (flag, text) in [
        ("--both", &specs.both),
        ("--a-to-b", &specs.a_to_b),
        ("--b-to-a", &specs.b_to_a),
    ] {
        if let Some(t) = text {
            wan::spec::parse(t).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        }
    }
    let req = wan::SetRequest {
        class,
        both: specs.both,
        a_to_b: specs.a_to_b,
        b_to_a: specs.b_to_a,
        seed,
        timeline: None,
    };
    netns.enter()?;
    let pair = match between {
        [a, b] => Some((a.as_str(), b.as_str())),
        _ => None,
    };
    let applied = wan::send_set(pair, &req)?;
    println!("applied: {applied}");
    Ok(ExitCode::SUCCESS)
}

/// The emulator between two interfaces (or, with `--check`, what it would do).
fn emulate(a: WanRunArgs) -> Result<ExitCode> {
    let specs = match &a.preset {
        Some(name) => {
            let p = wan::preset::lookup(name)?;
            wan::DirSpecs {
                both: None,
                a_to_b: Some(format!("preset {}", p.name)),
                b_to_a: Some(p.reverse.to_string()),
            }
        }
        None => wan::DirSpecs::from(a.specs),
    };
    let cfg = wan::load_config(a.config.as_deref())?;
    let plan = wan::plan(&cfg, &specs, a.seed)?;
    let schedule = a
        .timeline
        .as_deref()
        .map(|p| wan::plan_timeline(p, &plan))
        .transpose()?;
    wan::engine::frames_hint(a.frames)?;
    if a.check {
        return check(&plan, schedule, a.frames, a.json.json);
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

/// `wan --check`: every class's SPECs explained, trace files read, warnings, the timeline.
fn check(
    plan: &wan::Plan,
    schedule: Option<wan::timeline::Schedule>,
    frames: u64,
    json: bool,
) -> Result<ExitCode> {
    // Build every profile too (distribution and trace files are read here).
    let mut traces = vec![[String::new(), String::new()]; plan.names.len()];
    for (d, v) in plan.specs.iter().enumerate() {
        for (c, s) in v.iter().enumerate() {
            let p = wan::engine::Profile::new(s.clone(), frames)
                .with_context(|| format!("class {} {}", plan.names[c], wan::DIRS[d]))?;
            if let Some(t) = &p.trace {
                traces[c][d] = format!(
                    ": {} opportunities over {} ms, mean {:.3} Mbit/s",
                    t.opportunities,
                    t.period_ms,
                    t.mean_bps() / 1e6
                );
            }
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
                a_to_b: plan.specs[0][c].explain() + &traces[c][0],
                b_to_a: plan.specs[1][c].explain() + &traces[c][1],
            })
            .collect(),
        warnings: wan::warnings(&plan.names, &plan.specs),
        timeline: schedule,
    };
    if json {
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
    Ok(ExitCode::SUCCESS)
}

/// `wan trace`: validate the levels, write the trace, say what it holds.
fn write_trace(
    rates: &[String],
    durations: &[Duration],
    output: Option<&std::path::Path>,
    poisson: Option<u64>,
) -> Result<ExitCode> {
    if rates.len() != durations.len() {
        bail!(
            "give one --duration per --rate ({} rates, {} durations)",
            rates.len(),
            durations.len()
        );
    }
    let mut levels = vec![];
    for (i, (r, d)) in rates.iter().zip(durations).enumerate() {
        let bps =
            wan::spec::parse_rate(r).map_err(|e| anyhow::anyhow!("--rate #{}: {e}", i + 1))?;
        if d.subsec_nanos() % 1_000_000 != 0 || d.is_zero() {
            bail!(
                "--duration #{}: {d:?}: a trace counts whole milliseconds (at least 1ms)",
                i + 1
            );
        }
        levels.push((bps, d.as_millis() as u64));
    }
    let stamps = wan::trace::levels(&levels, poisson)?;
    let text = wan::trace::render(&stamps);
    let span = stamps.last().copied().unwrap_or(0);
    let summary = format!(
        "{} opportunities over {span} ms, mean {:.3} Mbit/s (1500-byte opportunities)",
        stamps.len(),
        (stamps.len() as u64 * wan::trace::OPPORTUNITY_BYTES * 8) as f64 / span as f64 / 1e3
    );
    match output {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("wrote {}: {summary}", p.display());
        }
        None => {
            use std::io::Write as _;
            std::io::stdout().write_all(text.as_bytes())?;
            eprintln!("{summary}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
