//! The kernel-program object as a whole: its maps are exactly the shared names of
//! `wirelab_common::maps` (userspace asks for maps only through those constants).
mod common;
use std::collections::BTreeSet;

#[test]
fn object_maps_match_the_shared_names() {
    common::require_privileges();
    let bpf = wirelab::ebpf::load().expect("load object");
    // aya's own sections (.rodata, .bss, .data) are not tool maps.
    let in_object: BTreeSet<&str> = bpf
        .maps()
        .map(|(name, _)| name)
        .filter(|n| !n.starts_with('.'))
        .collect();
    let shared: BTreeSet<&str> = wirelab_common::maps::ALL.iter().copied().collect();
    assert_eq!(
        in_object, shared,
        "maps in the object (left) vs wirelab_common::maps::ALL (right)"
    );
}
