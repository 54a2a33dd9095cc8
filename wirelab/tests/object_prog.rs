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
