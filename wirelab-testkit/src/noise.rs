//! Timing-sensitive measurements on a shared host: [`timing`] runs one and, if it fails,
//! measures once more.
//!
//! The lab tests' tolerances judge the tool (the wan's added delay within 0.3 ms, a rate
//! within 2 %), not the virtual machine's scheduler. On the 2-core VMs this suite runs on, a
//! thread that sleeps 1 ms wakes up to 10 ms late now and then (measured while idle: p99
//! 2.2 ms, max 9 ms over 2,000 sleeps), and a single such stall in the wrong second moves a
//! maximum or a per-second goodput past its tolerance. A second failure in a row is the
//! tool's.
//!
//! Nothing watches the host meanwhile: a thread waking every 5 ms to measure its own lateness,
//! tried first, made three of the wan's tests fail twice in a row on an idle machine (which
//! passed again without it), so it disturbed what it was meant to explain.
use std::{
    panic::{catch_unwind, resume_unwind, AssertUnwindSafe},
    time::Instant,
};

/// Run `f` (a whole measurement: its setup, traffic and its assertions). If it panics, run it
/// once more, saying so; a second failure fails the test. Each failed attempt is printed
/// with its duration, so a log shows every re-measurement.
pub fn timing<T>(what: &str, f: impl Fn() -> T) -> T {
    for attempt in 1..=2 {
        let t = Instant::now();
        match catch_unwind(AssertUnwindSafe(&f)) {
            Ok(v) => return v,
            Err(e) if attempt == 1 => {
                eprintln!(
                    "{what}: attempt 1 failed after {:.1?}: measuring once more",
                    t.elapsed()
                );
                drop(e);
            }
            Err(e) => {
                eprintln!("{what}: attempt 2 failed too, after {:.1?}", t.elapsed());
                resume_unwind(e);
            }
        }
    }
    unreachable!("the second attempt returns or panics")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_pass_returns_and_a_failure_is_measured_once_more() {
        assert_eq!(timing("ok", || 7), 7);
        let runs = AtomicU32::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            timing("fails", || {
                runs.fetch_add(1, Ordering::Relaxed);
                panic!("wrong");
            });
        }));
        assert!(r.is_err());
        assert_eq!(runs.load(Ordering::Relaxed), 2, "never more than twice");
        runs.store(0, Ordering::Relaxed);
        let v = timing("fails once", || {
            if runs.fetch_add(1, Ordering::Relaxed) == 0 {
                panic!("first attempt fails");
            }
            "second"
        });
        assert_eq!((v, runs.load(Ordering::Relaxed)), ("second", 2));
    }
}
