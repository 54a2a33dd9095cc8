//! `wirelab lb`'s kernel object: the `lb` module and the shared helpers. Built by
//! `wirelab/build.rs` (aya-build) for `bpfel-unknown-none` and embedded into `wirelab`.
#![no_std]
#![no_main]

include!("../object.rs");

#[path = "../lb/mod.rs"]
mod lb;
