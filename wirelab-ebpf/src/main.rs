//! wirelab's kernel programs, one module per tool. Built by `wirelab/build.rs` (aya-build) for
//! the `bpfel-unknown-none` target and embedded into the `wirelab` binary.
#![no_std]
#![no_main]

mod fw;
mod gen;
mod inspect;
mod parse;
mod swarm;
mod wan;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // Unreachable in verified programs: nothing in wirelab's eBPF code panics.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
