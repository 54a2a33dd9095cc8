//! Types shared by wirelab's kernel programs (`wirelab-ebpf`) and userspace (`wirelab`).
//!
//! Everything here is `#[repr(C)]` and plain old data so that the same bytes mean the same
//! thing on both sides of a BPF map. With the `user` feature the types implement `aya::Pod`.
#![no_std]

pub mod capture;
pub mod csum;
pub mod fw;
pub mod inspect;
pub mod lb;
pub mod maps;
pub mod swarm;
pub mod tap;
pub mod wan;

/// Limits of the shared kernel-side parser, known to userspace for docs and tests.
pub mod parse {
    /// VLAN tags (802.1Q / 802.1ad, any order) walked; a frame with more is malformed.
    pub const MAX_VLAN_TAGS: usize = 8;
    /// IPv6 extension headers walked; a chain of exactly this many is parsed, one more is
    /// malformed.
    pub const MAX_IPV6_EXT: usize = 8;
}

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
