//! `wirelab inspect`: attach the `inspect` XDP program and report per-class counters.
use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::PerCpuArray;
use serde::Serialize;
use wirelab_common::{
    inspect::{CLASS_NAMES, NUM_CLASSES},
    Counter,
};

use crate::{
    ebpf::{self, AttachMode},
    util::Stop,
};

pub struct Options {
    pub iface: String,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub json: bool,
    pub mode: Option<AttachMode>,
    /// `--record DIR`.
    pub record: Option<std::path::PathBuf>,
    /// `--metrics`: an endpoint bound before entering the namespace.
    pub metrics: Option<crate::metrics::Endpoint>,
}

/// Counters of one class.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ClassCount {
    pub packets: u64,
    pub bytes: u64,
}

/// Counters of all classes, in class order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub Vec<ClassCount>);

impl Counts {
    pub fn get(&self, class: &str) -> ClassCount {
        CLASS_NAMES
            .iter()
            .position(|c| *c == class)
            .and_then(|i| self.0.get(i).copied())
            .unwrap_or_default()
    }

    fn minus(&self, before: &Counts) -> Counts {
        Counts(
            self.0
                .iter()
                .zip(
                    before
                        .0
                        .iter()
                        .chain(std::iter::repeat(&ClassCount::default())),
                )
                .map(|(a, b)| ClassCount {
                    packets: a.packets.saturating_sub(b.packets),
                    bytes: a.bytes.saturating_sub(b.bytes),
                })
                .collect(),
        )
    }

    fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (i, c) in self.0.iter().enumerate() {
            m.insert(
                CLASS_NAMES[i].to_string(),
                serde_json::to_value(c).unwrap_or_default(),
            );
        }
        serde_json::Value::Object(m)
    }
}

/// Read and sum the per-CPU counters.
pub fn read_counts(map: &PerCpuArray<&aya::maps::MapData, Counter>) -> Result<Counts> {
    let mut out = Vec::with_capacity(NUM_CLASSES as usize);
    for i in 0..NUM_CLASSES {
        let per_cpu = map.get(&i, 0).context("reading inspect counters")?;
        let mut sum = Counter::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        out.push(ClassCount {
            packets: sum.packets,
            bytes: sum.bytes,
        });
    }
    Ok(Counts(out))
}

fn print_table(out: &mut impl std::io::Write, title: &str, c: &Counts, secs: f64) -> Result<()> {
    writeln!(out, "{title}")?;
    writeln!(
        out,
        "  {:<11} {:>12} {:>14} {:>12}",
        "class", "packets", "bytes", "pkt/s"
    )?;
    for (i, v) in c.0.iter().enumerate() {
        if v.packets == 0 && i != 0 {
            continue;
        }
        let rate = if secs > 0.0 {
            v.packets as f64 / secs
        } else {
            0.0
        };
        writeln!(
            out,
            "  {:<11} {:>12} {:>14} {:>12.1}",
            CLASS_NAMES[i], v.packets, v.bytes, rate
        )?;
    }
    Ok(())
}

/// Run inspect until `duration`, SIGINT or SIGTERM. Returns the totals.
pub fn run(opts: &Options, stop: &Stop) -> Result<Counts> {
    let mut bpf = ebpf::load()?;
    let mode = ebpf::attach_xdp(&mut bpf, "inspect", &opts.iface, opts.mode)?;
    tracing::info!(iface = %opts.iface, %mode, "inspect attached");
    let map = PerCpuArray::try_from(bpf.map("INSPECT_COUNTERS").context("counter map missing")?)?;
    let mut rec = match &opts.record {
        Some(d) => Some(crate::record::Recorder::create(
            d,
            "inspect",
            "inspect",
            serde_json::json!({
                "iface": opts.iface,
                "interval_s": opts.interval.as_secs_f64(),
                "duration_s": opts.duration.map(|d| d.as_secs_f64()),
                "mode": mode.to_string(),
                "requested_mode": opts.mode.map(|m| m.to_string()),
            }),
        )?),
        None => None,
    };
    let mut mb = crate::metrics::Builder::new();
    mb.info("inspect");
    let m_packets = mb.counter(
        "wirelab_inspect_packets",
        "Frames received on the interface, by class",
    );
    let m_bytes = mb.counter(
        "wirelab_inspect_bytes",
        "Bytes received on the interface, by class",
    );
    let _srv = match &opts.metrics {
        Some(ep) => Some(mb.serve(ep)?),
        None => None,
    };
    let publish = |c: &Counts| {
        if opts.metrics.is_none() {
            return;
        }
        for (i, v) in c.0.iter().enumerate() {
            let l = crate::metrics::labels(&[("iface", &opts.iface), ("class", CLASS_NAMES[i])]);
            crate::metrics::set_total(&m_packets.get_or_create(&l), v.packets);
            crate::metrics::set_total(&m_bytes.get_or_create(&l), v.bytes);
        }
    };
    let start = Instant::now();
    let mut last = read_counts(&map)?;
    let mut last_t = start;
    let stdout = std::io::stdout();
    let mut n = 0u64;
    loop {
        let mut wait = opts.interval;
        if let Some(d) = opts.duration {
            wait = wait.min(d.saturating_sub(start.elapsed()));
        }
        let stopped = stop.sleep(wait);
        let now = Instant::now();
        let cur = read_counts(&map)?;
        let delta = cur.minus(&last);
        let secs = (now - last_t).as_secs_f64();
        let done = stopped || opts.duration.is_some_and(|d| start.elapsed() >= d);
        if !done || secs >= opts.interval.as_secs_f64() * 0.5 {
            n += 1;
            let mut out = stdout.lock();
            let v = serde_json::json!({
                "type": "interval",
                "seq": n,
                "iface": opts.iface,
                "t": start.elapsed().as_secs_f64(),
                "interval_s": secs,
                "counts": delta.to_json(),
            });
            if let Some(r) = rec.as_mut() {
                r.interval(&v)?;
            }
            if opts.json {
                writeln!(out, "{v}")?;
            } else {
                print_table(
                    &mut out,
                    &format!(
                        "[{:>7.2}s] {} (last {:.2}s)",
                        start.elapsed().as_secs_f64(),
                        opts.iface,
                        secs
                    ),
                    &delta,
                    secs,
                )?;
            }
            out.flush()?;
        }
        publish(&cur);
        last = cur;
        last_t = now;
        if done {
            break;
        }
    }
    let total = last;
    let secs = start.elapsed().as_secs_f64();
    let mut out = stdout.lock();
    let fin = serde_json::json!({
        "type": "final",
        "iface": opts.iface,
        "mode": mode,
        "duration_s": secs,
        "counts": total.to_json(),
    });
    if let Some(r) = rec.take() {
        let measured = CLASS_NAMES
            .iter()
            .zip(&total.0)
            .filter(|(_, c)| c.packets > 0)
            .map(|(n, c)| {
                crate::record::Quantity::new(
                    &format!("{n}_packets"),
                    "",
                    c.packets as f64,
                    "packets",
                    &format!("{n} frames received on {}", opts.iface),
                )
            })
            .collect();
        r.finish(&fin, vec![], measured)?;
    }
    if opts.json {
        writeln!(out, "{fin}")?;
    } else {
        print_table(
            &mut out,
            &format!("total on {} over {secs:.2}s ({mode} XDP)", opts.iface),
            &total,
            secs,
        )?;
    }
    out.flush()?;
    // Dropping `bpf` closes the bpf_link: the program detaches here.
    drop(bpf);
    tracing::info!(iface = %opts.iface, "inspect detached");
    Ok(total)
}
