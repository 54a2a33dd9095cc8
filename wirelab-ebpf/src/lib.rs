//! Library side of the eBPF crate: present so `wirelab/build.rs` can declare a build-dependency
//! on this crate (cargo then rebuilds the embedded object when it changes).
#![no_std]
