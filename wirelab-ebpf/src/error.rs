//! Why a kernel program's `try_*` function gave up. Each entry point maps every `Err` to the
//! fallback verdict it documents (one line); the variant says which path got there.

/// One error type for every program. `#[repr(u8)]`: a `Result<T, Error>` costs a byte.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Error {
    /// The frame (or XDP metadata area) ends before the bytes accessed, or before a header
    /// it announces.
    Truncated,
    /// A header contradicts its own rules (see `parse`).
    Invalid,
    /// A map entry the program needs is missing (userspace always fills them: a map of the
    /// wrong size, or the program running before its configuration was written).
    Map,
    /// `bpf_skb_load_bytes` / `bpf_skb_store_bytes` failed (tc programs).
    Skb,
    /// swarm process mode: no free pool address for a new process.
    Exhausted,
}

pub type Result<T> = core::result::Result<T, Error>;
