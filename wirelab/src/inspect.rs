//! `wirelab inspect`: attach the `inspect` XDP program and report per-class counters.
use std::{collections::BTreeMap, io::Write};
use wirelab_common::maps;

use anyhow::{Context as _, Result};
use aya::maps::PerCpuArray;
use serde::{Deserialize, Serialize};
use wirelab_common::{
    inspect::{CLASS_NAMES, NUM_CLASSES},
    Counter,
};

use crate::runtime::prelude::*;

pub struct Options {
    pub iface: String,
    pub mode: Option<AttachMode>,
    pub report: Reporting,
}

/// Counters of one class.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
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

    /// Back from [`Counts::by_name`].
    fn from_names(m: &BTreeMap<String, ClassCount>) -> Counts {
        Counts(
            CLASS_NAMES
                .iter()
                .map(|n| m.get(*n).copied().unwrap_or_default())
                .collect(),
        )
    }

    /// Class name -> counts (the shape of `counts` in every JSON line).
    fn by_name(&self) -> BTreeMap<String, ClassCount> {
        CLASS_NAMES
            .iter()
            .map(|n| n.to_string())
            .zip(self.0.iter().copied())
            .collect()
    }
}

/// Read and sum the per-CPU counters.
pub fn read_counts(map: &PerCpuArray<&aya::maps::MapData, Counter>) -> Result<Counts> {
    let sums = bpf::sum_all(map, NUM_CLASSES).context("reading inspect counters")?;
    Ok(Counts(
        sums.into_iter()
            .map(|c| ClassCount {
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect(),
    ))
}

/// `{"type": "interval", ...}`: one interval's counts (a `--json` line, a line of the
/// `--record` series, read back by the report as this type).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interval {
    #[serde(rename = "type")]
    pub kind: LineKind,
    /// The tick's number, 1 for the first (in a record the record's own `seq` replaces it).
    #[serde(default)]
    pub seq: u64,
    pub iface: String,
    /// Seconds since start.
    pub t: f64,
    pub interval_s: f64,
    /// Class name -> frames and bytes received in the interval.
    pub counts: BTreeMap<String, ClassCount>,
}

/// `{"type": "final", ...}`: the totals.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinalLine {
    #[serde(rename = "type")]
    pub kind: LineKind,
    pub iface: String,
    pub mode: AttachMode,
    pub duration_s: f64,
    pub counts: BTreeMap<String, ClassCount>,
}

/// The configuration recorded with `--record`.
#[derive(Serialize)]
struct RecordConfig<'a> {
    iface: &'a str,
    interval_s: f64,
    duration_s: Option<f64>,
    mode: AttachMode,
    requested_mode: Option<AttachMode>,
}

fn print_table(out: &mut dyn Write, title: &str, c: &Counts, secs: f64) -> std::io::Result<()> {
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

crate::metrics::families! {
    /// `--metrics`: packets and bytes per class.
    struct InspectMetrics {
        packets: counter(
            "wirelab_inspect_packets",
            "Frames received on the interface, by class"
        ),
        bytes: counter("wirelab_inspect_bytes", "Bytes received on the interface, by class"),
        ;
    }
}

impl InspectMetrics {
    fn publish(&self, iface: &str, c: &Counts) {
        for (i, v) in c.0.iter().enumerate() {
            let l = crate::metrics::labels(&[("iface", iface), ("class", CLASS_NAMES[i])]);
            crate::metrics::set_total(&self.packets.get_or_create(&l), v.packets);
            crate::metrics::set_total(&self.bytes.get_or_create(&l), v.bytes);
        }
    }
}

/// inspect as the runtime drives it.
struct Inspect<'a> {
    opts: &'a Options,
    map: PerCpuArray<&'a aya::maps::MapData, Counter>,
    mode: AttachMode,
    metrics: Option<InspectMetrics>,
}

impl<'a> Sampled for Inspect<'a> {
    type Snapshot = Counts;
    type Line = Interval;
    type Final = FinalLine;

    fn read(&mut self) -> Result<Counts> {
        read_counts(&self.map)
    }

    fn interval(&self, tick: &Tick, cur: &Counts, prev: &Counts) -> Interval {
        Interval {
            kind: LineKind::Interval,
            seq: tick.seq,
            iface: self.opts.iface.clone(),
            t: tick.t,
            interval_s: tick.secs,
            counts: cur.minus(prev).by_name(),
        }
    }

    fn table(&self, tick: &Tick, line: &Interval, out: &mut dyn Write) -> std::io::Result<()> {
        let title = format!("[{:>7.2}s] {} (last {:.2}s)", tick.t, line.iface, tick.secs);
        print_table(out, &title, &Counts::from_names(&line.counts), tick.secs)
    }

    fn publish(&mut self, cur: &Counts) {
        if let Some(m) = &self.metrics {
            m.publish(&self.opts.iface, cur);
        }
    }

    fn finish(&mut self, total: &Counts, secs: f64) -> Result<(FinalLine, Vec<Quantity>)> {
        let measured = CLASS_NAMES
            .iter()
            .zip(&total.0)
            .filter(|(_, c)| c.packets > 0)
            .map(|(n, c)| {
                Quantity::new(
                    &format!("{n}_packets"),
                    "",
                    c.packets as f64,
                    "packets",
                    &format!("{n} frames received on {}", self.opts.iface),
                )
            })
            .collect();
        let fin = FinalLine {
            kind: LineKind::Final,
            iface: self.opts.iface.clone(),
            mode: self.mode,
            duration_s: secs,
            counts: total.by_name(),
        };
        Ok((fin, measured))
    }

    fn final_table(&self, fin: &FinalLine, out: &mut dyn Write) -> std::io::Result<()> {
        let title = format!(
            "total on {} over {:.2}s ({} XDP)",
            fin.iface, fin.duration_s, fin.mode
        );
        print_table(
            out,
            &title,
            &Counts::from_names(&fin.counts),
            fin.duration_s,
        )
    }
}

/// Run inspect until `duration`, SIGINT or SIGTERM. Returns the totals.
pub fn run(opts: &Options, stop: &Stop) -> Result<Counts> {
    let mut bpf = ebpf::load(ebpf::Object::Inspect)?;
    let mode = bpf::attach_xdp(&mut bpf, "inspect", &opts.iface, opts.mode)?;
    tracing::info!(iface = %opts.iface, %mode, "inspect attached");
    let (interval_s, duration_s) = opts.report.seconds();
    let obs = opts.report.observer(
        "inspect",
        &RecordConfig {
            iface: &opts.iface,
            interval_s,
            duration_s,
            mode,
            requested_mode: opts.mode,
        },
    )?;
    let mut tool = Inspect {
        opts,
        map: PerCpuArray::try_from(
            bpf.map(maps::INSPECT_COUNTERS)
                .context("counter map missing")?,
        )?,
        mode,
        metrics: opts
            .report
            .metrics
            .as_ref()
            .map(|ep| InspectMetrics::serve("inspect", ep))
            .transpose()?,
    };
    let (_, total) = sampled::drive(&mut tool, opts.report.ticker(), stop, obs)?;
    // Dropping `bpf` closes the bpf_link: the program detaches here.
    drop(bpf);
    tracing::info!(iface = %opts.iface, "inspect detached");
    Ok(total)
}
