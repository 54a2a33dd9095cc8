//! The one loop of every counter-sampling tool: each interval, read the kernel's counters
//! into a typed snapshot, turn it into the tool's interval line, fan that out (table or
//! `--json` line, `--record` series) and publish `--metrics`; at the end, the final line
//! and the measured quantities. A tool implements [`Sampled`]; [`drive`] does the rest.
//!
//! ```text
//! kernel map ──read()──► Snapshot ──interval(cur, prev)──► Line ──► Observer ─┬─► table / --json
//!                          │                                                   └─► --record series
//!                          └──publish()──► --metrics
//! ```
use std::io::{self, Write};

use anyhow::Result;
use serde::Serialize;

use super::{observe::Observer, Tick, Ticker};
use crate::{record::Quantity, util::Stop};

/// A tool as the runtime's loop sees it.
pub trait Sampled {
    /// Cumulative counters as read from the kernel (per-CPU values summed).
    type Snapshot: Clone;
    /// One interval's line (printed, recorded).
    type Line: Serialize;
    /// The final line (printed, and the record's final document).
    type Final: Serialize;

    /// Read the counters now.
    fn read(&mut self) -> Result<Self::Snapshot>;

    /// The line for the interval that `tick` closes: `cur` minus `prev`.
    fn interval(&self, tick: &Tick, cur: &Self::Snapshot, prev: &Self::Snapshot) -> Self::Line;

    /// Whether interval lines are printed (as [`Sampled::table`] or `--json` lines); when
    /// not, they are only recorded (a tool whose stdout carries events of its own, like fw's
    /// log samples).
    const PRINTS_INTERVALS: bool = true;

    /// The interval line as a table.
    fn table(&self, _tick: &Tick, _line: &Self::Line, _out: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }

    /// Publish the cumulative counters to `--metrics` (no-op without it).
    fn publish(&mut self, _cur: &Self::Snapshot) {}

    /// Work between ticks, called about every [`Sampled::poll_every`] and once at the end
    /// (live changes go to `obs`'s record).
    fn poll(&mut self, _obs: &mut Observer) -> Result<()> {
        Ok(())
    }

    /// How often [`Sampled::poll`] runs; `None`: never.
    fn poll_every(&self) -> Option<std::time::Duration> {
        None
    }

    /// The final line and the measured quantities, from the totals at the end.
    fn finish(&mut self, total: &Self::Snapshot, secs: f64)
        -> Result<(Self::Final, Vec<Quantity>)>;

    /// The final line as a table.
    fn final_table(&self, fin: &Self::Final, out: &mut dyn Write) -> io::Result<()>;
}

/// Run `tool` until `ticker` ends (duration, Ctrl-C/SIGTERM); returns the final line and the
/// last snapshot (the totals), so a tool need not keep its own copy of them.
pub fn drive<T: Sampled>(
    tool: &mut T,
    mut ticker: Ticker,
    stop: &Stop,
    mut obs: Observer,
) -> Result<(T::Final, T::Snapshot)> {
    let mut last = tool.read()?;
    tool.publish(&last);
    let every = tool.poll_every();
    while let Some(tick) = ticker.wait_polling(stop, every, || tool.poll(&mut obs))? {
        let cur = tool.read()?;
        // A stop right after a tick leaves a sliver of an interval: it goes into the totals.
        if !tick.short {
            let line = tool.interval(&tick, &cur, &last);
            if T::PRINTS_INTERVALS {
                obs.interval(&line, |out| tool.table(&tick, &line, out))?;
            } else {
                obs.record_only(&line)?;
            }
        }
        tool.publish(&cur);
        last = cur;
    }
    tool.poll(&mut obs)?;
    let (fin, measured) = tool.finish(&last, ticker.elapsed())?;
    obs.finish(&fin, measured, |out| tool.final_table(&fin, out))?;
    Ok((fin, last))
}
