//! The per-CPU counters every program bumps, updated through one helper.

use aya_ebpf::maps::PerCpuArray;

/// This CPU's copy of one entry of a per-CPU map, looked up once and updated any number of
/// times (a program that counts at several points looks its entry up once).
#[derive(Clone, Copy)]
pub struct Slot<T>(*mut T);

impl<T: Copy> Slot<T> {
    /// Entry `idx` of `map`, or `None` when `idx` is out of range.
    #[inline(always)]
    pub fn get(map: &PerCpuArray<T>, idx: u32) -> Option<Self> {
        map.get_ptr_mut(idx).map(Self)
    }

    /// Apply `f` to the entry; returns what `f` returns.
    #[inline(always)]
    pub fn update<R>(self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: the pointer came from a successful lookup in a per-CPU array: it points to
        // this CPU's copy of the value, which the kernel keeps allocated as long as the
        // program's map reference lives (all of its run), and which is aligned for `T`.
        // Programs on other CPUs have their own copies; the value is copied in and out (no
        // reference to map memory is kept), so a program nesting on this CPU (tc ingress
        // interrupting a cgroup hook) can at worst lose one increment of a statistic.
        let mut v = unsafe { core::ptr::read(self.0) };
        let r = f(&mut v);
        // SAFETY: as above.
        unsafe { core::ptr::write(self.0, v) };
        r
    }
}

/// Apply `f` to this CPU's entry `idx` of `map`; `None` (nothing counted) when `idx` is out
/// of range.
#[inline(always)]
pub fn update<T: Copy, R>(
    map: &PerCpuArray<T>,
    idx: u32,
    f: impl FnOnce(&mut T) -> R,
) -> Option<R> {
    Slot::get(map, idx).map(|s| s.update(f))
}

/// Add one to this CPU's `u64` counter `idx` of `map`.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, idx: u32) {
    update(map, idx, |c| *c += 1);
}
