//! One typed snapshot per interval, fanned out: a table or a `--json` line on stdout, and a
//! line of the `--record` series; at the end the final snapshot and the run's summary.
//! (Live `--metrics` are published by each tool from the same snapshot: their families
//! differ per tool, see `metrics.rs`.)
use std::{
    io::{self, Write},
    path::Path,
};

use anyhow::Result;
use serde::Serialize;

use crate::record::{Quantity, Recorder};

/// Where a tool's snapshots go.
pub struct Observer {
    json: bool,
    rec: Option<Recorder>,
}

/// Print `write` to stdout; a closed pipe (`| head`) is not an error.
pub fn to_stdout(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    let mut out = io::stdout().lock();
    match write(&mut out).and_then(|_| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// `v` as one JSON line.
pub(crate) fn json_line(out: &mut dyn Write, v: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, v)?;
    writeln!(out)
}

impl Observer {
    /// `record`: the `--record DIR`, recorded as source `kind` with `config`.
    pub fn new(
        json: bool,
        record: Option<&Path>,
        kind: &str,
        config: &impl Serialize,
    ) -> Result<Self> {
        let rec = match record {
            Some(dir) => Some(Recorder::create(dir, kind, kind, config)?),
            None => None,
        };
        Ok(Self { json, rec })
    }

    /// One interval: recorded, and printed as a JSON line with `--json`, else as `table`.
    pub fn interval(
        &mut self,
        line: &impl Serialize,
        table: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<()> {
        self.record_only(line)?;
        if self.json {
            to_stdout(|out| json_line(out, line))
        } else {
            to_stdout(table)
        }
    }

    /// One interval that is only recorded, not printed (a tool whose stdout carries events
    /// of its own, like fw's log samples).
    pub fn record_only(&mut self, line: &impl Serialize) -> Result<()> {
        if let Some(r) = self.rec.as_mut() {
            r.interval(line)?;
        }
        Ok(())
    }

    /// The configured quantities in force from now on (at the start and after each live
    /// change), for the record's configured-vs-measured table.
    pub fn set_configured(&mut self, q: Vec<Quantity>) {
        if let Some(r) = self.rec.as_mut() {
            r.set_configured(q);
        }
    }

    /// Whether a `--record` is being written.
    pub fn records(&self) -> bool {
        self.rec.is_some()
    }

    /// A live change (recorded with `--record`).
    pub fn change(&mut self, v: &impl Serialize) -> Result<()> {
        if let Some(r) = self.rec.as_mut() {
            r.change(v)?;
        }
        Ok(())
    }

    /// The end: the final snapshot printed (JSON line or `table`) and the record finished
    /// with it and the measured quantities.
    pub fn finish(
        self,
        fin: &impl Serialize,
        measured: Vec<Quantity>,
        table: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<()> {
        self.finish_apart(fin, fin, measured, table)
    }

    /// [`Observer::finish`] for a tool whose record keeps more than it prints: `recorded`
    /// goes into the record, `printed` to stdout as the `--json` line.
    pub fn finish_apart(
        self,
        recorded: &impl Serialize,
        printed: &impl Serialize,
        measured: Vec<Quantity>,
        table: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<()> {
        if let Some(r) = self.rec {
            r.finish(recorded, vec![], measured)?;
        }
        if self.json {
            to_stdout(|out| json_line(out, printed))
        } else {
            to_stdout(table)
        }
    }
}
