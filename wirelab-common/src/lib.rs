//! Types shared by wirelab's kernel programs (`wirelab-ebpf`) and userspace (`wirelab`).
//!
//! Everything here is `#[repr(C)]` and plain old data so that the same bytes mean the same
//! thing on both sides of a BPF map. With the `user` feature the types implement `aya::Pod`.
#![no_std]

pub mod csum;
pub mod fw;
pub mod inspect;
pub mod swarm;
pub mod wan;

/// A packet/byte counter pair, the value type of most per-CPU counter maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    pub fn add(&mut self, other: &Counter) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}
