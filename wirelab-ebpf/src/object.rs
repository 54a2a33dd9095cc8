// What every tool's kernel object holds besides its own module, included at the root of each
// `src/bin/TOOL.rs` (one object per tool: a tool creates only its own maps). Each tool uses a
// part of the shared helpers, so unused ones are not warnings.

#[allow(dead_code)]
#[path = "counter.rs"]
mod counter;
#[allow(dead_code)]
#[path = "error.rs"]
mod error;
#[allow(dead_code)]
#[path = "parse.rs"]
mod parse;
#[allow(dead_code)]
#[path = "sys.rs"]
mod sys;
#[allow(dead_code)]
#[path = "tap.rs"]
mod tap;

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
