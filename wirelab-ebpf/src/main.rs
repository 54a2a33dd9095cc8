//! wirelab's kernel programs, one module per tool. Built by `wirelab/build.rs` (aya-build) for
//! the `bpfel-unknown-none` target and embedded into the `wirelab` binary.
#![no_std]
#![no_main]

mod capture;
mod counter;
mod error;
mod fw;
mod gen;
mod inspect;
mod lb;
mod parse;
mod swarm;
mod sys;
mod wan;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // Unreachable in verified programs: nothing in wirelab's eBPF code panics.
    loop {}
}

// SAFETY: "license" is the ELF section the loader reads the program license from, and
// `LICENSE` is the only symbol of that name in the object (nothing else is placed there or
// exported under it); the bytes are a NUL-terminated string as the kernel expects.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
