//! The kernel objects as a whole: one per tool, each holding exactly its own tool's maps, and
//! together exactly the shared names of `wirelab_common::maps` (userspace asks for maps only
//! through those constants).
mod common;
use std::collections::BTreeSet;

use wirelab::ebpf::Object;

#[test]
fn each_object_holds_its_tools_maps_and_no_other() {
    common::require_privileges();
    let mut all = BTreeSet::new();
    for o in Object::ALL {
        let bpf = wirelab::ebpf::load(o).unwrap_or_else(|e| panic!("{}: {e:#}", o.name()));
        // aya's own sections (.rodata, .bss, .data) are not tool maps.
        let maps: Vec<String> = bpf
            .maps()
            .map(|(name, _)| name.to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert!(!maps.is_empty(), "{}: no maps", o.name());
        let prefix = format!("{}_", o.name().to_uppercase());
        for m in &maps {
            assert!(
                m.starts_with(&prefix),
                "the {} object holds {m}, which is not one of its maps",
                o.name()
            );
            assert!(all.insert(m.clone()), "{m} in two objects");
        }
    }
    let shared: BTreeSet<String> = wirelab_common::maps::ALL
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        all, shared,
        "maps in the objects (left) vs wirelab_common::maps::ALL (right)"
    );
}

/// Every program of every object loads here, each far from the verifier's limit of a million
/// instructions: older kernels prune less (the kernel matrix's `programs-load` loads them on
/// 5.10 and 6.1), so 6.18, the best case, must leave a wide margin: 300,000 here (the largest,
/// `lb_xdp` and `capture_xdp_tap`, are near 215,000; 6.1 and 5.10 walk up to 2.3 times as
/// many for the capture tap, 492,899).
#[test]
fn every_program_loads_far_from_the_verifier_limit() {
    common::require_privileges();
    let loads = wirelab::ebpf::load_every_program().expect("objects load");
    assert!(loads.len() >= 15, "{} programs", loads.len());
    for l in &loads {
        let name = format!("{}/{}", l.object.name(), l.program);
        assert!(l.error.is_none(), "{name}: {:?}", l.error);
        let n = l.verified.expect("Linux 5.16+ reports the count");
        eprintln!("{name}: the verifier processed {n} instructions");
        assert!(n < 300_000, "{name}: {n} instructions");
    }
}

/// On kernels that do not report the verifier's count (before 5.16: Debian 11's 5.10, Ubuntu
/// 22.04's 5.15), `doctor --programs` gets it from a statistics load: the program's
/// instructions, made as aya makes them, loaded a second time with `BPF_LOG_STATS`. That count
/// is only worth having if it is the count of aya's load: here, where the kernel reports it,
/// the two must be equal for every program.
#[test]
fn the_statistics_load_counts_what_the_kernel_reports() {
    common::require_privileges();
    let loads = wirelab::ebpf::load_every_program_with(wirelab::ebpf::StatsLoad::Always)
        .expect("objects load");
    assert!(loads.len() >= 15, "{} programs", loads.len());
    for l in &loads {
        let name = format!("{}/{}", l.object.name(), l.program);
        assert!(l.error.is_none(), "{name}: {:?}", l.error);
        let stats = match &l.stats_load {
            Some(Ok(n)) => *n,
            other => panic!("{name}: statistics load {other:?}"),
        };
        let Some(reported) = l.verified else {
            eprintln!(
                "{name}: this kernel does not report the count; the statistics load: {stats}"
            );
            continue;
        };
        eprintln!("{name}: reported {reported}, statistics load {stats}");
        assert_eq!(
            stats, reported,
            "{name}: statistics load vs the kernel's report"
        );
    }
}

/// The verifier gives up with `EAGAIN` when a signal comes in while it works (CI met it once,
/// on the capture filter): wirelab loads every program through `load_retrying`, which asks
/// again. Shown on that program: under a stream of signals every 2 ms a plain `load` fails
/// with `EAGAIN`; three signals 2 ms apart spoil three attempts, and `load_retrying` loads.
#[test]
fn a_verification_interrupted_by_signals_is_asked_again() {
    use std::{
        sync::{atomic::AtomicBool, atomic::Ordering::Relaxed, Arc},
        time::Duration,
    };

    use aya::programs::{ProgramError, Xdp};
    use nix::sys::{pthread, signal::Signal};
    use wirelab::ebpf::LoadRetrying as _;

    common::require_privileges();
    // A handler, so that SIGUSR1 interrupts the syscall instead of ending the process.
    signal_hook::flag::register(
        signal_hook::consts::SIGUSR1,
        Arc::new(AtomicBool::new(false)),
    )
    .expect("SIGUSR1 handler");
    let me = pthread::pthread_self();
    // Load capture_xdp_filter while another thread sends this one up to `signals` SIGUSR1,
    // 2 ms apart: the load's result and how many were sent before it returned.
    let load = |retrying: bool, signals: u32| -> (Result<(), ProgramError>, u32) {
        let mut bpf = wirelab::ebpf::load(Object::Capture).expect("load object");
        let p: &mut Xdp = bpf
            .program_mut("capture_xdp_filter")
            .expect("capture_xdp_filter")
            .try_into()
            .expect("an XDP program");
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let sender = s.spawn(|| {
                let mut sent = 0;
                while sent < signals && !done.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(2));
                    pthread::pthread_kill(me, Signal::SIGUSR1).expect("pthread_kill");
                    sent += 1;
                }
                sent
            });
            let r = if retrying {
                p.load_retrying()
            } else {
                p.load()
            };
            done.store(true, Relaxed);
            (r, sender.join().expect("sender"))
        })
    };
    let (plain, _) = load(false, 5_000);
    match plain {
        Err(ProgramError::LoadError { io_error, .. }) => {
            assert_eq!(io_error.raw_os_error(), Some(libc::EAGAIN), "{io_error}");
        }
        other => panic!("a plain load under signals: {other:?}"),
    }
    let (retried, sent) = load(true, 3);
    retried.expect("load_retrying under three signals");
    assert_eq!(sent, 3, "the signals came while it loaded");
}
