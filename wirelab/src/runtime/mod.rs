//! The runtime every long-running tool (inspect, fw, wan, swarm, probe) stands on.
//!
//! - [`Ticker`]: one interval/duration loop that wakes early on Ctrl-C / SIGTERM.
//! - [`bpf`]: attaching (native XDP with a stated fallback to skb mode; TCX with a stated
//!   fallback to a clsact filter on kernels before 6.6) and typed per-CPU counter reads.
//! - [`observe`]: one typed snapshot per interval, fanned out to the table or `--json` lines
//!   and the `--record` series, and the final summary.
//! - [`sampled`]: the [`sampled::Sampled`] trait a tool implements (read its maps, make the
//!   interval and final lines, publish metrics, poll between ticks) and [`sampled::drive`],
//!   the one loop that runs it on a [`Ticker`] and an [`observe::Observer`].
//! - [`control`]: one control-socket server and client with typed requests and replies.
//! - [`tap`]: what a deciding program (fw, lb, wan) tells a capture about its tap.
//! - [`xsk`]: AF_XDP sockets on libc (UMEM, rings mapped before bind, shared UMEM), all of
//!   wirelab's AF_XDP `unsafe` in one place.
//!
//! Entering `--netns` and the stop flag come first, in the CLI (`cli::NetnsArg`), because the
//! whole process must move before any thread exists.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;

use crate::{metrics::Endpoint, util::Stop};

pub mod bpf;
pub mod control;
pub mod observe;
pub mod sampled;
pub mod tap;
pub mod xsk;

/// What a tool module built on the runtime uses: `use crate::runtime::prelude::*;`.
pub mod prelude {
    pub use super::{
        bpf::{self, AttachMode},
        observe::Observer,
        sampled::{self, Sampled},
        Reporting, Tick, Ticker,
    };
    pub use crate::{ebpf, record::LineKind, record::Quantity, util::Stop};
}

/// How a long-running tool reports, and for how long: the command line's `--interval`,
/// `--duration`, `--json`, `--record` and `--metrics`, resolved (the metrics endpoint is
/// bound before `--netns` is entered).
#[derive(Default)]
pub struct Reporting {
    pub interval: Duration,
    /// `None`: until Ctrl-C / SIGTERM.
    pub duration: Option<Duration>,
    pub json: bool,
    /// `--record DIR`: write a run record there.
    pub record: Option<PathBuf>,
    /// `--metrics`: serve live counters on this (already bound) endpoint.
    pub metrics: Option<Endpoint>,
}

impl Reporting {
    /// The ticker of the tool's loop.
    pub fn ticker(&self) -> Ticker {
        Ticker::new(self.interval, self.duration)
    }

    /// The observer of the tool's lines: stdout (table or `--json`) and the `--record`
    /// source `kind` with `config`.
    pub fn observer(&self, kind: &str, config: &impl Serialize) -> Result<observe::Observer> {
        observe::Observer::new(self.json, self.record.as_deref(), kind, config)
    }

    /// `interval_s` and `duration_s` as a record's configuration gives them.
    pub fn seconds(&self) -> (f64, Option<f64>) {
        (
            self.interval.as_secs_f64(),
            self.duration.map(|d| d.as_secs_f64()),
        )
    }
}

/// Interval ticks until `duration` has passed or a stop is requested.
pub struct Ticker {
    start: Instant,
    last: Instant,
    interval: Duration,
    duration: Option<Duration>,
    seq: u64,
    done: bool,
}

/// One tick of a [`Ticker`].
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    /// 1 for the first tick.
    pub seq: u64,
    /// Seconds since the ticker started.
    pub t: f64,
    /// Seconds since the previous tick (the length of the interval this tick closes).
    pub secs: f64,
    /// The final tick: duration reached or stop requested.
    pub last: bool,
    /// A final interval shorter than half the configured one (a stop right after a tick):
    /// worth folding into the totals rather than reporting as an interval of its own.
    pub short: bool,
}

impl Ticker {
    pub fn new(interval: Duration, duration: Option<Duration>) -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
            interval,
            duration,
            seq: 0,
            done: false,
        }
    }

    /// Seconds since the ticker started.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Sleep until the next tick (an interval later, the end of `duration`, or a stop,
    /// whichever comes first). `None` once the final tick has been returned.
    pub fn wait(&mut self, stop: &Stop) -> Option<Tick> {
        self.wait_polling(stop, None, || Ok(())).unwrap_or(None)
    }

    /// [`Ticker::wait`], calling `poll` about every `every` meanwhile (a tool's work between
    /// ticks: draining a log ring, answering its control socket). An error from `poll` ends
    /// the wait and is returned.
    pub fn wait_polling(
        &mut self,
        stop: &Stop,
        every: Option<Duration>,
        mut poll: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<Option<Tick>> {
        if self.done {
            return Ok(None);
        }
        let until_tick = |t: &Self| {
            let mut wait = t.interval.saturating_sub(t.last.elapsed());
            if let Some(d) = t.duration {
                wait = wait.min(d.saturating_sub(t.start.elapsed()));
            }
            wait
        };
        let stopped = loop {
            let wait = until_tick(self);
            let step = every.map_or(wait, |e| e.min(wait));
            if stop.sleep(step) {
                break true;
            }
            poll()?;
            if until_tick(self).is_zero() {
                break false;
            }
        };
        let now = Instant::now();
        let secs = (now - self.last).as_secs_f64();
        self.last = now;
        self.seq += 1;
        let last = stopped || self.duration.is_some_and(|d| self.start.elapsed() >= d);
        self.done = last;
        Ok(Some(Tick {
            seq: self.seq,
            t: (now - self.start).as_secs_f64(),
            secs,
            last,
            short: last && secs < self.interval.as_secs_f64() * 0.5,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_until_the_duration_then_stops() {
        let stop = Stop::new();
        // Wide margins: a 2-core VM stalls a thread by 10-20 ms now and then.
        let mut t = Ticker::new(Duration::from_millis(100), Some(Duration::from_millis(220)));
        let mut ticks = vec![];
        while let Some(k) = t.wait(&stop) {
            ticks.push(k);
        }
        // 100, 200 and the last 20 ms: three ticks, the last one short (under 50 ms) and final.
        assert_eq!(ticks.len(), 3, "{ticks:?}");
        assert!(ticks[..2].iter().all(|k| !k.last && !k.short));
        let end = ticks[2];
        assert!(end.last && end.short && end.seq == 3, "{end:?}");
        assert!((0.22..0.4).contains(&end.t), "{end:?}");
        assert!(t.wait(&stop).is_none());
    }

    #[test]
    fn polls_between_ticks() {
        let stop = Stop::new();
        let mut t = Ticker::new(Duration::from_millis(100), Some(Duration::from_millis(100)));
        let mut polls = 0;
        let k = t
            .wait_polling(&stop, Some(Duration::from_millis(10)), || {
                polls += 1;
                Ok(())
            })
            .unwrap()
            .unwrap();
        assert!(k.last, "{k:?}");
        // Up to 11; fewer when the host stalls the thread (a 2-core VM can, by 10-20 ms).
        assert!(
            (3..=11).contains(&polls),
            "{polls} polls in 100 ms at 10 ms"
        );
        let e = t.wait_polling(&stop, None, || anyhow::bail!("boom"));
        assert!(matches!(e, Ok(None)), "no wait after the last tick");
    }

    #[test]
    fn a_stop_ends_at_once() {
        let stop = Stop::new();
        stop.raise();
        let mut t = Ticker::new(Duration::from_secs(10), None);
        let k = t.wait(&stop).unwrap();
        assert!(k.last && k.short && k.secs < 1.0, "{k:?}");
        assert!(t.wait(&stop).is_none());
    }
}
