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
/// 5.10 and 6.1), so 6.18, the best case, must leave a wide margin.
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
        assert!(n < 400_000, "{name}: {n} instructions");
    }
}
