//! Timing-sensitive measurements on a shared host: [`timing`] runs one and, if it fails,
//! measures again: three failures on an undisturbed host, or eight in all, fail the test.
//! Checks that a host's stalls decide (percentiles, per-second goodput) take their tolerance
//! from [`bound`]: the tool's claim on an undisturbed host, a coarser one on a disturbed host.
//!
//! The lab tests' tolerances judge the tool (the wan's added delay within 0.3 ms, a rate
//! within 2 %), not the virtual machine's scheduler. On the 2-core VMs this suite runs on, a
//! thread that sleeps 1 ms wakes up to 10 ms late now and then (measured while idle: p99
//! 2.2 ms, max 9 ms over 2,000 sleeps), and the hypervisor takes CPU time from the VM
//! (`steal` in /proc/stat: 0.88 s of 35 CPU-seconds, 2.5 %, during two passing wan tests, and
//! more in bursts). A single such stall in the wrong second moves a maximum or a per-second
//! goodput past its tolerance, and a busy host stays busy for a while: a fresh-clone run
//! failed the same two engine-path tests twice in a row, which passed four times of four right
//! after. With the host taking 11-19 % of the VM's CPU (steal), the engine path's p99 for a
//! 1 us delay was 3-15 ms in attempt after attempt; at 3-7 % it was 0.1-0.7 ms. So every
//! failed attempt is printed with the CPU time the host took meanwhile, an attempt with more
//! than 5 % stolen does not count, and three counted failures are the tool's.
//!
//! Nothing watches the host meanwhile: a thread waking every 5 ms to measure its own lateness,
//! tried first, made three of the wan's tests fail twice in a row on an idle machine (which
//! passed again without it), so it disturbed what it was meant to explain. Reading
//! /proc/stat before and after costs nothing.
use std::{
    cell::Cell,
    panic::{catch_unwind, resume_unwind, AssertUnwindSafe},
    time::Instant,
};

thread_local! {
    /// When the current attempt of [`timing`] started, and the steal counter then.
    static ATTEMPT: Cell<Option<(Instant, Option<u64>)>> = const { Cell::new(None) };
}

/// How many failed attempts on an undisturbed host make a measurement's failure the test's.
pub const ATTEMPTS: u32 = 3;
/// At most this many attempts in all, disturbed ones included (bounded time).
pub const MAX_ATTEMPTS: u32 = 8;
/// A failed attempt during which the host took more than this share of the VM's CPU time
/// (steal) does not count toward [`ATTEMPTS`]: quiet attempts saw 2.5-2.9 %, the engine-path
/// failures of fresh-clone runs 11-19 % (p99 of a 1 us delay 3-15 ms, 0.1-0.7 ms otherwise).
pub const DISTURBED: f64 = 0.05;

/// CPU time the hypervisor took from this VM so far, ms (all CPUs; `steal` in /proc/stat).
fn stolen_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?;
    // cpu user nice system idle iowait irq softirq steal ...
    let ticks: u64 = cpu.split_whitespace().nth(8)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1000 / hz)
}

/// The share of the VM's CPU time (all CPUs over `ms`) that `stolen` ms is.
fn share(stolen: u64, ms: u128) -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    stolen as f64 / (ms.max(1) as f64 * cpus)
}

/// Run `f` (a whole measurement: its setup, traffic and its assertions). If it panics, run it
/// again, saying so with the attempt's duration and the CPU time the host took from the VM
/// meanwhile. The [`ATTEMPTS`]th failure on an undisturbed host (see [`DISTURBED`]) fails
/// the test, and so does the [`MAX_ATTEMPTS`]th failure of any kind.
pub fn timing<T>(what: &str, f: impl Fn() -> T) -> T {
    let mut counted = 0;
    for attempt in 1..=MAX_ATTEMPTS {
        let t = Instant::now();
        let s0 = stolen_ms();
        ATTEMPT.with(|a| a.set(Some((t, s0))));
        let r = catch_unwind(AssertUnwindSafe(&f));
        ATTEMPT.with(|a| a.set(None));
        match r {
            Ok(v) => return v,
            Err(e) => {
                let took = t.elapsed();
                let stolen = stolen_since(t, s0);
                let disturbed = stolen.is_some_and(|(_, sh)| sh > DISTURBED);
                if !disturbed {
                    counted += 1;
                }
                let host = match stolen {
                    Some((s, sh)) => format!(
                        "the host took {s} ms of CPU from this VM meanwhile, {:.1} %{}",
                        100.0 * sh,
                        if disturbed { ": not counted" } else { "" }
                    ),
                    None => "the host's steal time is unknown".into(),
                };
                if counted < ATTEMPTS && attempt < MAX_ATTEMPTS {
                    eprintln!(
                        "{what}: attempt {attempt} failed after {took:.1?} ({host}): measuring again"
                    );
                    drop(e);
                } else {
                    eprintln!("{what}: attempt {attempt} failed too, after {took:.1?} ({host})");
                    resume_unwind(e);
                }
            }
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// The share of the VM's CPU the host took since the current attempt of [`timing`] started
/// (`None` outside one, or without a steal counter).
pub fn stolen_share() -> Option<f64> {
    let (t, s0) = ATTEMPT.with(Cell::get)?;
    stolen_since(t, s0).map(|(_, sh)| sh)
}

/// CPU time (ms) the host took since `t`, when the steal counter read `s0`, and its share of
/// the VM's CPU time.
fn stolen_since(t: Instant, s0: Option<u64>) -> Option<(u64, f64)> {
    let ms = stolen_ms()?.saturating_sub(s0?);
    Some((ms, share(ms, t.elapsed().as_millis())))
}

/// The tolerance for one check of a measurement in [`timing`]: `tight` (the tool's claim) when
/// the host took at most [`DISTURBED`] of the VM's CPU since the attempt started, `loose`
/// otherwise, saying so. A busy host can stay busy for all [`MAX_ATTEMPTS`] (a CI run saw
/// 7-39 % steal for minutes): its stalls of several milliseconds then decide percentiles and
/// per-second goodput, and the tight claim cannot be judged there. The loose bound still fails
/// a tool that is broken (a stage that sleeps in ticks, a rate that is half the asked one), and
/// the tight one holds wherever the host lets it be measured.
pub fn bound(what: &str, tight: f64, loose: f64) -> f64 {
    match stolen_share() {
        Some(s) if s > DISTURBED => {
            eprintln!(
                "{what}: the host took {:.1} % of the VM's CPU during this attempt: checked against {loose} instead of {tight}",
                100.0 * s
            );
            loose
        }
        _ => tight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_pass_returns_and_a_failure_is_measured_again_up_to_attempts() {
        assert_eq!(timing("ok", || 7), 7);
        let runs = AtomicU32::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            timing("fails", || {
                runs.fetch_add(1, Ordering::Relaxed);
                panic!("wrong");
            });
        }));
        assert!(r.is_err());
        // ATTEMPTS, plus one for each attempt the host disturbed (steal is counted in 10 ms
        // ticks: one tick in a 100 ms attempt is 5 % of two CPUs).
        let n = runs.load(Ordering::Relaxed);
        assert!((ATTEMPTS..=MAX_ATTEMPTS).contains(&n), "{n} attempts");
        runs.store(0, Ordering::Relaxed);
        let v = timing("fails once", || {
            if runs.fetch_add(1, Ordering::Relaxed) == 0 {
                panic!("first attempt fails");
            }
            "second"
        });
        assert_eq!((v, runs.load(Ordering::Relaxed)), ("second", 2));
        assert!(stolen_ms().is_some(), "/proc/stat has a steal column");
        // Outside a measurement the claim's tolerance is the one checked; inside one the
        // host's share is known.
        assert_eq!(bound("outside", 1.0, 5.0), 1.0);
        assert_eq!(stolen_share(), None);
        assert!(timing("inside", || stolen_share().is_some()));
        assert!(
            (share(100, 1000) - 0.1 / std::thread::available_parallelism().unwrap().get() as f64)
                .abs()
                < 1e-9
        );
    }
}
