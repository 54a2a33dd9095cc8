//! `wirelab wan`'s kernel object: the `wan` module and the shared helpers. Built by
//! `wirelab/build.rs` (aya-build) for `bpfel-unknown-none` and embedded into `wirelab`.
#![no_std]
#![no_main]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

include!("../object.rs");

#[path = "../wan.rs"]
mod wan;
