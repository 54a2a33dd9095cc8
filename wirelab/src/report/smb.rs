//! `wirelab smb` records in the report: the server-wide live tree connects (the founding
//! scenario's quantity), sessions, opens and connections over time, and commands and errors
//! per second.
use std::fmt::Write as _;

use super::{
    plot::{Chart, Series},
    Run, Source, Typed,
};
use crate::record::Stamped;
use crate::smb::{FinalLine, IntervalLine, Totals};

/// An smb source's lines, read back as the types `wirelab smb` wrote.
#[derive(Debug, Clone)]
pub struct SmbLines {
    pub intervals: Vec<Stamped<IntervalLine>>,
    pub fin: Option<Box<FinalLine>>,
}

/// The plots of an smb source. Times are smb's own (since the capture attached, or since a
/// file's first SMB segment), placed after the record's start.
pub fn charts(src: &Source, t0: f64, p: &str) -> Vec<Chart> {
    let Typed::Smb(l) = &src.typed else {
        return vec![];
    };
    let off = src.started() - t0;
    let series = |name: &str, f: &dyn Fn(&IntervalLine, Option<&IntervalLine>) -> f64| {
        let mut prev: Option<&IntervalLine> = None;
        let mut pts = vec![];
        for i in &l.intervals {
            pts.push((off + i.line.t, f(&i.line, prev)));
            prev = Some(&i.line);
        }
        Series::new(format!("{p}{name}"), pts)
    };
    let live = |f: fn(&Totals) -> u64| {
        move |l: &IntervalLine, _: Option<&IntervalLine>| f(&l.totals) as f64
    };
    let errors_per_s = |l: &IntervalLine, prev: Option<&IntervalLine>| {
        let (e0, t0) = prev.map_or((0, 0.0), |p| (p.totals.errors, p.t));
        l.totals.errors.saturating_sub(e0) as f64 / (l.t - t0).max(1e-3)
    };
    vec![
        Chart::lines(
            "smb-live",
            "smb: live tree connects, sessions, opens and connections (server-wide)",
            "time (s)",
            "live now",
            vec![
                series("tree connects", &live(|t| t.trees_live)),
                series("sessions", &live(|t| t.sessions_live)),
                series("opens", &live(|t| t.opens_live)),
                series("connections", &live(|t| t.connections_live)).dashed(),
            ],
        ),
        Chart::lines(
            "smb-commands",
            "smb: requests and error responses per second",
            "time (s)",
            "per second",
            vec![
                series("requests/s", &|l, _| l.commands_per_s),
                series("errors/s", &errors_per_s),
            ],
        ),
    ]
}

/// The peak of live tree connects and the totals, as text (`wirelab report` prints it).
pub fn text(run: &Run) -> String {
    let mut o = String::new();
    for s in &run.sources {
        let Typed::Smb(l) = &s.typed else {
            continue;
        };
        let (peak, at) = match &l.fin {
            Some(f) => (f.trees_live_max, f.trees_live_max_t),
            None => l
                .intervals
                .iter()
                .map(|i| (i.line.totals.trees_live, i.line.t))
                .fold((0, 0.0), |a, b| if b.0 > a.0 { b } else { a }),
        };
        let _ = write!(
            o,
            "{}: {} intervals; live tree connects at most {peak} (at {at:.1}s)",
            s.name,
            l.intervals.len()
        );
        match &l.fin {
            Some(f) => {
                let _ = writeln!(
                    o,
                    ", {} at the end; {} clients, {} requests, {} errors over {:.1}s",
                    f.totals.trees_live,
                    f.totals.clients,
                    f.totals.requests,
                    f.totals.errors,
                    f.duration_s
                );
            }
            None => {
                let _ = writeln!(o, " (unfinished)");
            }
        }
    }
    o
}
