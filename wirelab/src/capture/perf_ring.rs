//! The capture's per-CPU perf rings, opened with a wakeup *watermark*.
//!
//! aya's `PerfEventArray::open` asks the kernel to wake the reader after every sample
//! (`wakeup_events = 1`). The kernel then raises irq work for each sample (`perf_output_wakeup`),
//! whether or not anyone waits: on a VM a self-interrupt per captured frame, paid on the CPU
//! the frame arrived on. The capture's readers drain in batches anyway (see `stream`), so
//! here the event is opened with `watermark = 1` and `wakeup_watermark` a quarter of the ring:
//! the kernel wakes a reader only when that much is waiting, and a reader that finds nothing
//! polls again after a short timeout. The record format is the one aya reads (`PERF_RECORD_SAMPLE`
//! with a raw payload, `PERF_RECORD_LOST`); the program side is unchanged
//! (`bpf_perf_event_output` into the `PERF_EVENT_ARRAY`).
use std::{
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    ptr::NonNull,
    sync::atomic::{fence, Ordering},
};

use anyhow::{bail, Context as _, Result};

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER0` (64 bytes), the part the kernel
/// needs for a software event: the kernel reads `size` and zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_watermark: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_BPF_OUTPUT: u64 = 10;
const PERF_SAMPLE_RAW: u64 = 1 << 10;
/// `attr.watermark`: wake up at `wakeup_watermark` bytes instead of every N events.
const FLAG_WATERMARK: u64 = 1 << 14;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `_IO('$', 0)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_RECORD_LOST: u32 = 2;
const PERF_RECORD_SAMPLE: u32 = 9;
/// Offsets of `data_head` and `data_tail` in `struct perf_event_mmap_page` (uapi, stable).
const DATA_HEAD: usize = 1024;
const DATA_TAIL: usize = 1032;

/// One record of a ring.
pub enum Record<'a> {
    /// A sample's raw payload, in two parts where it wraps round the ring's end.
    Sample { head: &'a [u8], tail: &'a [u8] },
    /// The kernel found the ring full and dropped `count` samples.
    Lost { count: u64 },
}

/// One CPU's ring, registered in the program's perf event array at that CPU's index.
pub struct PerfRing {
    fd: OwnedFd,
    map: NonNull<u8>,
    map_len: usize,
    page: usize,
    /// Bytes of the data area (a power of two).
    size: usize,
}

// The mapping belongs to this value alone; the kernel is the only other party.
unsafe impl Send for PerfRing {}

impl PerfRing {
    /// Open CPU `cpu`'s ring of at most `bytes` (whole pages, a power of two of them),
    /// waking a reader once a quarter of it is filled, and put it in the perf event array
    /// `array` at index `cpu`.
    pub fn open(array: BorrowedFd<'_>, cpu: u32, bytes: usize) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page =
            usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).context("page size")?;
        let Some(pages) = (bytes / page).checked_ilog2().map(|l| 1usize << l) else {
            bail!("a perf ring needs at least one page ({page} bytes), not {bytes}");
        };
        let size = page * pages;
        let attr = PerfEventAttr {
            type_: PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: PERF_COUNT_SW_BPF_OUTPUT,
            sample_period: 1,
            sample_type: PERF_SAMPLE_RAW,
            flags: FLAG_WATERMARK,
            wakeup_watermark: (size / 4) as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid perf_event_attr of the size it states; pid -1 with a cpu
        // is "every process on that CPU"; no group.
        let raw = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                -1 as libc::pid_t,
                cpu as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("perf_event_open for CPU {cpu}"));
        }
        // SAFETY: the syscall returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) };
        let map_len = page + size;
        // SAFETY: a shared read-write mapping of the event's ring, as perf_event_open(2)
        // describes: one metadata page, then the data pages.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mapping the perf ring of CPU {cpu}"));
        }
        let ring = Self {
            fd,
            map: NonNull::new(ptr.cast()).context("mmap returned null")?,
            map_len,
            page,
            size,
        };
        // SAFETY: ioctl on our own perf event descriptor, no argument.
        if unsafe { libc::ioctl(ring.fd.as_raw_fd(), PERF_EVENT_IOC_ENABLE as _, 0) } < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("enabling the perf event of CPU {cpu}"));
        }
        map_update(array, cpu, ring.fd.as_raw_fd() as u32)
            .with_context(|| format!("registering CPU {cpu}'s ring in the perf event array"))?;
        Ok(ring)
    }

    /// Bytes of the ring's data area.
    pub fn bytes(&self) -> usize {
        self.size
    }

    fn word(&self, offset: usize) -> *mut u64 {
        // SAFETY: both offsets are inside the metadata page, 8-byte aligned.
        unsafe { self.map.as_ptr().add(offset).cast() }
    }

    /// Hand every record waiting to `f`, then give their space back to the kernel.
    pub fn for_each(&mut self, mut f: impl FnMut(Record<'_>)) {
        // SAFETY: data_head is written by the kernel; read it volatile, then fence (the
        // kernel's smp_wmb before it publishes data_head pairs with this acquire).
        let head = unsafe { std::ptr::read_volatile(self.word(DATA_HEAD)) };
        fence(Ordering::Acquire);
        // SAFETY: only this reader writes data_tail.
        let start = unsafe { std::ptr::read_volatile(self.word(DATA_TAIL)) };
        // SAFETY: the data area follows the metadata page inside the mapping; the kernel
        // does not write the part between data_tail and data_head until data_tail moves
        // past it, and that is all `walk` reads.
        let data =
            unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.page), self.size) };
        let tail = walk(data, start, head, &mut f);
        if tail != start {
            fence(Ordering::SeqCst);
            // SAFETY: as above; the kernel reads data_tail to know what it may overwrite.
            unsafe { std::ptr::write_volatile(self.word(DATA_TAIL), tail) };
        }
    }
}

/// Hand the records of ring `data` from position `tail` to `head` (positions run on past
/// the ring's size; the data wraps round) to `f`; returns the position after the last one.
fn walk(data: &[u8], mut tail: u64, head: u64, f: &mut impl FnMut(Record<'_>)) -> u64 {
    let size = data.len() as u64;
    // `len` bytes at position `at`, in two parts where they wrap round.
    let read = |at: u64, len: usize| -> (&[u8], &[u8]) {
        let off = (at % size) as usize;
        let first = len.min(data.len() - off);
        (&data[off..off + first], &data[..len - first])
    };
    let bytes = |at: u64, out: &mut [u8]| {
        let (a, b) = read(at, out.len());
        out[..a.len()].copy_from_slice(a);
        out[a.len()..].copy_from_slice(b);
    };
    let u32_at = |at: u64| {
        let mut w = [0u8; 4];
        bytes(at, &mut w);
        u32::from_ne_bytes(w)
    };
    let u64_at = |at: u64| {
        let mut w = [0u8; 8];
        bytes(at, &mut w);
        u64::from_ne_bytes(w)
    };
    while tail < head {
        // struct perf_event_header { u32 type; u16 misc; u16 size; }
        let mut h = [0u8; 8];
        bytes(tail, &mut h);
        let kind = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]);
        let rec_len = u64::from(u16::from_ne_bytes([h[6], h[7]]));
        if rec_len < 8 || rec_len > size || tail + rec_len > head {
            // Never from the kernel; stop rather than read garbage.
            break;
        }
        match kind {
            PERF_RECORD_SAMPLE => {
                // u32 size, then the raw payload.
                let n = u64::from(u32_at(tail + 8)).min(rec_len.saturating_sub(12));
                let (a, b) = read(tail + 12, n as usize);
                f(Record::Sample { head: a, tail: b });
            }
            // u64 id, u64 lost.
            PERF_RECORD_LOST if rec_len >= 24 => f(Record::Lost {
                count: u64_at(tail + 16),
            }),
            _ => {}
        }
        tail += rec_len;
    }
    tail
}

impl AsFd for PerfRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for PerfRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

/// `bpf(BPF_MAP_UPDATE_ELEM)`: `array[key] = value`.
fn map_update(array: BorrowedFd<'_>, key: u32, value: u32) -> std::io::Result<()> {
    #[repr(C)]
    struct UpdateAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    let attr = UpdateAttr {
        map_fd: array.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: 0,
    };
    // SAFETY: the attribute points at a key and value that live across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &attr as *const UpdateAttr,
            std::mem::size_of::<UpdateAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample record as the kernel writes it: header, u32 size, payload, padded to 8.
    fn sample(payload: &[u8]) -> Vec<u8> {
        let len = (8 + 4 + payload.len()).div_ceil(8) * 8;
        let mut r = vec![0u8; len];
        r[..4].copy_from_slice(&PERF_RECORD_SAMPLE.to_ne_bytes());
        r[6..8].copy_from_slice(&(len as u16).to_ne_bytes());
        r[8..12].copy_from_slice(&(payload.len() as u32).to_ne_bytes());
        r[12..12 + payload.len()].copy_from_slice(payload);
        r
    }

    fn lost(count: u64) -> Vec<u8> {
        let mut r = vec![0u8; 24];
        r[..4].copy_from_slice(&PERF_RECORD_LOST.to_ne_bytes());
        r[6..8].copy_from_slice(&24u16.to_ne_bytes());
        r[16..24].copy_from_slice(&count.to_ne_bytes());
        r
    }

    /// Write `records` into a ring of `size` bytes from position `at`; returns the ring and
    /// the head.
    fn ring(size: usize, at: u64, records: &[Vec<u8>]) -> (Vec<u8>, u64) {
        let mut data = vec![0xeeu8; size];
        let mut pos = at;
        for r in records {
            for b in r {
                data[(pos % size as u64) as usize] = *b;
                pos += 1;
            }
        }
        (data, pos)
    }

    fn walk_all(data: &[u8], tail: u64, head: u64) -> (Vec<Vec<u8>>, u64, u64) {
        let (mut samples, mut lost) = (vec![], 0);
        let end = walk(data, tail, head, &mut |r| match r {
            Record::Sample { head, tail } => samples.push([head, tail].concat()),
            Record::Lost { count } => lost += count,
        });
        (samples, lost, end)
    }

    #[test]
    fn records_are_read_across_the_wrap() {
        let a: Vec<u8> = (0..37).collect();
        let b: Vec<u8> = (100..160).collect();
        // Start 16 bytes before the end of a 256-byte ring: `a`'s payload wraps round.
        let recs = [sample(&a), lost(7), sample(&b)];
        let (data, head) = ring(256, 1000 * 256 - 16, &recs);
        let (samples, lost, end) = walk_all(&data, 1000 * 256 - 16, head);
        assert_eq!(samples, vec![a, b]);
        assert_eq!(lost, 7);
        assert_eq!(end, head, "every record consumed");
    }

    #[test]
    fn a_malformed_record_stops_the_walk_without_reading_past_head() {
        let mut bad = sample(&[1, 2, 3]);
        bad[6..8].copy_from_slice(&4u16.to_ne_bytes()); // shorter than a header
        let (data, head) = ring(64, 0, &[sample(&[9]), bad]);
        let (samples, _, end) = walk_all(&data, 0, head);
        assert_eq!(samples, vec![vec![9]]);
        assert_eq!(end, 16, "stopped at the malformed record");
        // A record longer than what the kernel has published is not read either.
        let (data, head) = ring(64, 0, &[sample(&[1; 20])]);
        let (samples, _, end) = walk_all(&data, 0, head - 8);
        assert!(samples.is_empty());
        assert_eq!(end, 0);
    }
}
