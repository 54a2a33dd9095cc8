//! AF_XDP sockets of wirelab's own, on `libc`: a UMEM, sockets that register it or share it, and
//! the four single-producer/single-consumer rings each socket has with the kernel.
//!
//! Set-up order, which every kernel since 5.10 accepts:
//!
//! 1. `socket(AF_XDP, SOCK_RAW)`;
//! 2. the socket that owns the UMEM registers it (`XDP_UMEM_REG`); a socket that shares it
//!    registers nothing;
//! 3. ring sizes: fill and completion (`XDP_UMEM_FILL_RING`, `XDP_UMEM_COMPLETION_RING`) on every
//!    socket (a socket sharing the UMEM on another interface or queue needs its own pair, 5.10+),
//!    then `XDP_RX_RING` and `XDP_TX_RING`;
//! 4. `XDP_MMAP_OFFSETS`, then `mmap` of all four rings, **before** `bind()`: kernels before 6.4
//!    refuse to map a ring of a bound socket (EBUSY);
//! 5. `bind()`, with `XDP_SHARED_UMEM` and the owner's fd for a sharing socket (which must come
//!    after the owner's bind and may carry no other flag: it inherits the owner's mode).
//!
//! Ring protocol (the kernel's `xsk_queue.h`): indices are free-running `u32`s, a slot is
//! `index & (size - 1)`. A producer loads the consumer index with Acquire (the other side has
//! finished with the slots it released), writes its entries, then stores the producer index with
//! Release (the entries are visible before the index). A consumer loads the producer index with
//! Acquire, reads the entries, then stores the consumer index with Release (it is done reading
//! before the slots can be reused). Each side caches the other's index and reloads it only when
//! the cached value does not allow the request.
//!
//! All the `unsafe` of wirelab's AF_XDP use is in this module.
use std::{
    ffi::CStr,
    fmt,
    marker::PhantomData,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use nix::errno::Errno;

/// A frame descriptor on the RX and TX rings (`struct xdp_desc`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Offset of the frame's data in the UMEM.
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

const _: () = assert!(size_of::<Desc>() == size_of::<libc::xdp_desc>());

/// Which of a socket's four rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingKind {
    Fill,
    Completion,
    Rx,
    Tx,
}

impl fmt::Display for RingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RingKind::Fill => "fill",
            RingKind::Completion => "completion",
            RingKind::Rx => "RX",
            RingKind::Tx => "TX",
        })
    }
}

/// The set-up or run-time step that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    AllocateUmem {
        bytes: usize,
    },
    CreateSocket,
    RegisterUmem {
        frames: u64,
        frame_size: u32,
    },
    SizeRing {
        ring: RingKind,
        entries: u32,
    },
    ReadOffsets,
    MapRing {
        ring: RingKind,
    },
    Bind {
        iface: String,
        queue: u32,
        shared_with: Option<String>,
    },
    ReadStatistics,
    Kick {
        iface: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::AllocateUmem { bytes } => {
                write!(f, "allocating {} MiB for the UMEM", bytes >> 20)
            }
            Step::CreateSocket => f.write_str("creating an AF_XDP socket"),
            Step::RegisterUmem { frames, frame_size } => write!(
                f,
                "registering the UMEM ({frames} frames of {frame_size} bytes, XDP_UMEM_REG)"
            ),
            Step::SizeRing { ring, entries } => {
                write!(f, "sizing the AF_XDP {ring} ring to {entries} entries")
            }
            Step::ReadOffsets => f.write_str("reading the AF_XDP ring offsets (XDP_MMAP_OFFSETS)"),
            Step::MapRing { ring } => write!(f, "mapping the AF_XDP {ring} ring"),
            Step::Bind {
                iface,
                queue,
                shared_with,
            } => {
                write!(f, "binding the AF_XDP socket to {iface} queue {queue}")?;
                if let Some(o) = shared_with {
                    write!(f, " (sharing the UMEM of the socket on {o})")?;
                }
                Ok(())
            }
            Step::ReadStatistics => f.write_str("reading AF_XDP statistics (XDP_STATISTICS)"),
            Step::Kick { iface } => write!(f, "waking the AF_XDP TX ring of {iface} (sendto)"),
        }
    }
}

/// An AF_XDP step that failed: which, how, and what the kernel needs for it.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("{step}: {errno}{}", hint.map(|h| format!(" — {h}")).unwrap_or_default())]
    Os {
        step: Step,
        errno: Errno,
        hint: Option<&'static str>,
    },
    #[error("{step}: {what}")]
    Invalid { step: Step, what: String },
}

impl XskError {
    /// The errno of a failed system call, if that is what failed.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            XskError::Os { errno, .. } => Some(*errno),
            XskError::Invalid { .. } => None,
        }
    }

    fn os(step: Step, errno: Errno) -> Self {
        let hint = hint(&step, errno);
        XskError::Os { step, errno, hint }
    }

    fn last(step: Step) -> Self {
        Self::os(step, Errno::last())
    }
}

/// What an errno means at a step, as far as the kernel's AF_XDP code tells.
fn hint(step: &Step, errno: Errno) -> Option<&'static str> {
    use Errno::*;
    Some(match (step, errno) {
        (_, EPERM | EACCES) => "AF_XDP needs root (CAP_NET_RAW, and CAP_IPC_LOCK for the UMEM)",
        (Step::CreateSocket, EAFNOSUPPORT) => {
            "this kernel has no XDP sockets (CONFIG_XDP_SOCKETS, Linux 4.18+)"
        }
        (Step::AllocateUmem { .. }, _) => "not enough memory: lower --frames",
        (Step::RegisterUmem { .. }, ENOMEM | ENOBUFS) => {
            "the UMEM is pinned in memory: RLIMIT_MEMLOCK (kernels before 5.11) or the memory cgroup is too small; lower --frames"
        }
        (Step::RegisterUmem { .. }, EINVAL) => {
            "the frame size must be a power of two from 2048 to the page size, and the area page-aligned"
        }
        (Step::SizeRing { .. }, EINVAL) => "ring sizes must be powers of two",
        (Step::SizeRing { .. }, EBUSY) => "the ring was sized already",
        (Step::SizeRing { .. }, ENOPROTOOPT) => {
            "this kernel cannot give a socket sharing a UMEM its own fill and completion rings (Linux 5.10+)"
        }
        (Step::MapRing { .. }, EBUSY) => {
            "the socket is already bound: kernels before 6.4 map rings only before bind()"
        }
        (Step::MapRing { .. }, EINVAL) => "the ring was not sized before mapping",
        (Step::Bind { .. }, EBUSY) => {
            "another AF_XDP socket holds the queue (is another wirelab wan running on this interface?)"
        }
        (Step::Bind { .. }, EOPNOTSUPP) => "the driver has no zero-copy AF_XDP: use copy mode",
        (Step::Bind { .. }, EINVAL) => {
            "no such queue on the interface, or a ring (fill, completion, RX or TX) is missing"
        }
        (Step::Bind { .. }, ENODEV | ENXIO) => "the interface is gone",
        (Step::Bind { .. }, EBADF) => "the UMEM owner's socket is not bound yet",
        (Step::Bind { .. }, ENETDOWN) => "the interface is down",
        _ => return None,
    })
}

/// The frame area: anonymous, private, populated memory of `frames` × `frame_size` bytes.
/// Registered with the kernel by [`Socket::owner`]; the kernel pins its pages.
pub struct Umem {
    base: NonNull<u8>,
    len: usize,
    frames: u64,
    frame_size: u32,
}

impl Umem {
    pub fn new(frames: u64, frame_size: u32) -> Result<Self, XskError> {
        let len = frames
            .checked_mul(frame_size as u64)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|l| *l > 0)
            .ok_or_else(|| XskError::Invalid {
                step: Step::AllocateUmem { bytes: 0 },
                what: format!("{frames} frames of {frame_size} bytes is no valid size"),
            })?;
        // SAFETY: a fresh anonymous mapping (no file, no fixed address); the result is checked
        // before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(XskError::last(Step::AllocateUmem { bytes: len }));
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| XskError::Invalid {
            step: Step::AllocateUmem { bytes: len },
            what: "mmap returned a null address".into(),
        })?;
        Ok(Self {
            base,
            len,
            frames,
            frame_size,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// The bytes at `addr..addr + len`, cut to the area. Frames handed to the kernel (on a fill
    /// or TX ring, until they come back on RX or completion) must not be touched meanwhile:
    /// the kernel writes RX data into them.
    pub fn frame_mut(&mut self, addr: u64, len: usize) -> &mut [u8] {
        let start = usize::try_from(addr).unwrap_or(usize::MAX).min(self.len);
        let end = start.saturating_add(len).min(self.len);
        // SAFETY: start..end lies inside the mapping, which lives as long as `self`; `&mut self`
        // makes this the only slice of it on our side.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), end - start) }
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly the mapping made in `new`; no slice of it outlives
        // `self` (they borrow it).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Ring sizes (entries, each a power of two).
#[derive(Clone, Copy, Debug)]
pub struct RingSizes {
    pub fill: u32,
    pub completion: u32,
    pub rx: u32,
    pub tx: u32,
}

/// How the UMEM owner binds (a socket sharing the UMEM inherits it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The kernel tries zero-copy and falls back to copy mode.
    #[default]
    Auto,
    /// `XDP_COPY`.
    Copy,
    /// `XDP_ZEROCOPY`: fail (EOPNOTSUPP) where the driver has none (veth).
    ZeroCopy,
}

/// Bind options of the UMEM owner.
#[derive(Clone, Copy, Debug, Default)]
pub struct BindOptions {
    pub mode: Mode,
    /// `XDP_USE_NEED_WAKEUP`: the kernel sets a flag on the fill and TX rings when it needs a
    /// wake-up (poll or sendto) to go on; see [`ProdRing::needs_wakeup`].
    pub need_wakeup: bool,
}

impl BindOptions {
    fn flags(self) -> u16 {
        let mode = match self.mode {
            Mode::Auto => 0,
            Mode::Copy => libc::XDP_COPY,
            Mode::ZeroCopy => libc::XDP_ZEROCOPY,
        };
        mode | if self.need_wakeup {
            libc::XDP_USE_NEED_WAKEUP
        } else {
            0
        }
    }
}

/// Kernel counters of one socket (`struct xdp_statistics`; the last three are 0 on kernels
/// that report only the first three).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statistics {
    /// Dropped for reasons other than an invalid descriptor (no fill-ring frame, among others).
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Dropped because the RX ring was full.
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// An AF_XDP socket bound to one interface queue, with its four rings mapped.
pub struct Socket {
    fill: ProdRing<u64>,
    completion: ConsRing<u64>,
    rx: ConsRing<Desc>,
    tx: ProdRing<Desc>,
    iface: String,
    queue: u32,
    // Last: closed after the rings are unmapped.
    fd: OwnedFd,
}

/// The name of interface `ifindex`, or `ifindex N` if it has none (for messages).
fn iface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has the IF_NAMESIZE bytes if_indextoname may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("ifindex {ifindex}");
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn new_socket() -> Result<OwnedFd, XskError> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(XskError::last(Step::CreateSocket));
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, val: &T, step: Step) -> Result<(), XskError> {
    // SAFETY: val points to a live T of the length passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (val as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(XskError::last(step));
    }
    Ok(())
}

/// getsockopt into a zeroed `T`; returns it and the length the kernel wrote.
fn getsockopt<T: Default>(fd: RawFd, opt: libc::c_int, step: Step) -> Result<(T, usize), XskError> {
    let mut val = T::default();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: val is a live, writable T and len its size; the kernel writes at most len bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (&mut val as *mut T).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(XskError::last(step));
    }
    Ok((val, len as usize))
}

// `struct xdp_ring_offset` / `struct xdp_mmap_offsets` (flags since Linux 5.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

// `struct xdp_umem_reg`: the last field is padding before Linux 6.8 and `tx_metadata_len`
// since; 0 either way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct StatsRaw {
    rx_dropped: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty_descs: u64,
    tx_ring_empty_descs: u64,
}

const _: () = assert!(size_of::<MmapOffsets>() == size_of::<libc::xdp_mmap_offsets>());
const _: () = assert!(size_of::<UmemReg>() == size_of::<libc::xdp_umem_reg>());
const _: () = assert!(size_of::<StatsRaw>() == size_of::<libc::xdp_statistics>());

impl Socket {
    /// A socket on `ifindex` queue `queue` that registers `umem` (headroom 0: in copy mode the
    /// kernel puts received data `XDP_PACKET_HEADROOM`, 256 bytes, into the frame, with the XDP
    /// metadata just before it) and binds with `opts`.
    pub fn owner(
        umem: &Umem,
        ifindex: u32,
        queue: u32,
        sizes: RingSizes,
        opts: BindOptions,
    ) -> Result<Self, XskError> {
        let fd = new_socket()?;
        let reg = UmemReg {
            addr: umem.base.as_ptr() as u64,
            len: umem.len as u64,
            chunk_size: umem.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(
            fd.as_raw_fd(),
            libc::XDP_UMEM_REG,
            &reg,
            Step::RegisterUmem {
                frames: umem.frames,
                frame_size: umem.frame_size,
            },
        )?;
        Self::setup(fd, ifindex, queue, sizes, opts.flags(), None)
    }

    /// A socket on `ifindex` queue `queue` sharing the UMEM of `owner` (bound already), with
    /// its own fill and completion rings. It binds with `XDP_SHARED_UMEM` only: the mode is
    /// the owner's.
    pub fn shared(
        owner: &Socket,
        ifindex: u32,
        queue: u32,
        sizes: RingSizes,
    ) -> Result<Self, XskError> {
        let fd = new_socket()?;
        Self::setup(
            fd,
            ifindex,
            queue,
            sizes,
            libc::XDP_SHARED_UMEM,
            Some(owner),
        )
    }

    fn setup(
        fd: OwnedFd,
        ifindex: u32,
        queue: u32,
        sizes: RingSizes,
        flags: u16,
        owner: Option<&Socket>,
    ) -> Result<Self, XskError> {
        let raw = fd.as_raw_fd();
        for (ring, opt, entries) in [
            (RingKind::Fill, libc::XDP_UMEM_FILL_RING, sizes.fill),
            (
                RingKind::Completion,
                libc::XDP_UMEM_COMPLETION_RING,
                sizes.completion,
            ),
            (RingKind::Rx, libc::XDP_RX_RING, sizes.rx),
            (RingKind::Tx, libc::XDP_TX_RING, sizes.tx),
        ] {
            let step = Step::SizeRing { ring, entries };
            if !entries.is_power_of_two() {
                return Err(XskError::Invalid {
                    step,
                    what: "ring sizes must be powers of two".into(),
                });
            }
            setsockopt(raw, opt, &entries, step)?;
        }
        let (off, got) = getsockopt::<MmapOffsets>(raw, libc::XDP_MMAP_OFFSETS, Step::ReadOffsets)?;
        if got < size_of::<MmapOffsets>() {
            return Err(XskError::Invalid {
                step: Step::ReadOffsets,
                what: format!(
                    "the kernel gave {got} bytes, without the ring flags (Linux 5.4+ has them)"
                ),
            });
        }
        // Every ring mapped before bind(): kernels before 6.4 refuse mmap on a bound socket.
        let fill = ProdRing(Ring::map(raw, RingKind::Fill, &off, sizes)?);
        let completion = ConsRing(Ring::map(raw, RingKind::Completion, &off, sizes)?);
        let rx = ConsRing(Ring::map(raw, RingKind::Rx, &off, sizes)?);
        let tx = ProdRing(Ring::map(raw, RingKind::Tx, &off, sizes)?);
        let iface = iface_name(ifindex);
        let mut sa: libc::sockaddr_xdp = {
            // SAFETY: sockaddr_xdp is plain integers; all zeroes is a valid value.
            unsafe { std::mem::zeroed() }
        };
        sa.sxdp_family = libc::AF_XDP as u16;
        sa.sxdp_flags = flags;
        sa.sxdp_ifindex = ifindex;
        sa.sxdp_queue_id = queue;
        if let Some(o) = owner {
            sa.sxdp_shared_umem_fd = o.fd.as_raw_fd() as u32;
        }
        // SAFETY: sa is a valid sockaddr_xdp of the length passed.
        let r = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_xdp).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(XskError::last(Step::Bind {
                iface,
                queue,
                shared_with: owner.map(|o| o.iface.clone()),
            }));
        }
        Ok(Self {
            fill,
            completion,
            rx,
            tx,
            iface,
            queue,
            fd,
        })
    }

    /// The socket's fd: for an XSKMAP entry and for poll(2). Stays owned by the socket.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Free frames given to the kernel for receiving (UMEM offsets of chunk starts).
    pub fn fill(&mut self) -> &mut ProdRing<u64> {
        &mut self.fill
    }

    /// Frames the kernel has finished sending (the addresses put on the TX ring).
    pub fn completion(&mut self) -> &mut ConsRing<u64> {
        &mut self.completion
    }

    pub fn rx(&mut self) -> &mut ConsRing<Desc> {
        &mut self.rx
    }

    pub fn tx(&mut self) -> &mut ProdRing<Desc> {
        &mut self.tx
    }

    pub fn tx_ref(&self) -> &ProdRing<Desc> {
        &self.tx
    }

    /// Ask the kernel to send what is on the TX ring (`sendto` with no data, `MSG_DONTWAIT`).
    /// Copy mode sends a bounded batch per call; EAGAIN and EBUSY mean "try again later".
    pub fn kick(&self) -> Result<(), XskError> {
        // SAFETY: sendto with no buffer and no address is the AF_XDP TX wake-up.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if r < 0 {
            return Err(XskError::last(Step::Kick {
                iface: self.iface.clone(),
            }));
        }
        Ok(())
    }

    /// The kernel's counters of this socket (`XDP_STATISTICS`).
    pub fn statistics(&self) -> Result<Statistics, XskError> {
        let (s, got) = getsockopt::<StatsRaw>(
            self.fd.as_raw_fd(),
            libc::XDP_STATISTICS,
            Step::ReadStatistics,
        )?;
        let full = got >= size_of::<StatsRaw>();
        Ok(Statistics {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: if full { s.rx_ring_full } else { 0 },
            rx_fill_ring_empty_descs: if full { s.rx_fill_ring_empty_descs } else { 0 },
            tx_ring_empty_descs: if full { s.tx_ring_empty_descs } else { 0 },
        })
    }
}

/// Whether this kernel offers AF_XDP sockets (one is opened and closed at once).
pub fn available() -> Result<(), XskError> {
    new_socket().map(drop)
}

/// One mapped ring: the shared producer and consumer indices, the flags word and `size`
/// entries of `T`, plus this side's cached copies of the two indices.
struct Ring<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    desc: NonNull<T>,
    size: u32,
    cached_prod: u32,
    cached_cons: u32,
    /// The mapping to undo on drop (None: memory owned elsewhere, as in the unit tests).
    mapping: Option<(NonNull<libc::c_void>, usize)>,
    _t: PhantomData<T>,
}

impl<T: Copy> Ring<T> {
    /// Map ring `ring` of socket `fd`: its offsets in `offs`, its entries in `sizes`.
    fn map(
        fd: RawFd,
        ring: RingKind,
        offs: &MmapOffsets,
        sizes: RingSizes,
    ) -> Result<Self, XskError> {
        let (off, size, pgoff) = match ring {
            RingKind::Fill => (
                &offs.fr,
                sizes.fill,
                libc::XDP_UMEM_PGOFF_FILL_RING as libc::off_t,
            ),
            RingKind::Completion => (
                &offs.cr,
                sizes.completion,
                libc::XDP_UMEM_PGOFF_COMPLETION_RING as libc::off_t,
            ),
            RingKind::Rx => (&offs.rx, sizes.rx, libc::XDP_PGOFF_RX_RING),
            RingKind::Tx => (&offs.tx, sizes.tx, libc::XDP_PGOFF_TX_RING),
        };
        let step = Step::MapRing { ring };
        let len = (off.desc as usize).saturating_add(size as usize * size_of::<T>());
        let fits = |o: u64, n: usize| (o as usize).saturating_add(n) <= len && o.is_multiple_of(4);
        if !fits(off.producer, 4)
            || !fits(off.consumer, 4)
            || !fits(off.flags, 4)
            || !(off.desc as usize).is_multiple_of(std::mem::align_of::<T>())
        {
            return Err(XskError::Invalid {
                step,
                what: format!("the kernel's ring offsets make no sense: {off:?}"),
            });
        }
        // SAFETY: a shared mapping of the socket's ring at the kernel's page offset; the
        // result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(XskError::last(step));
        }
        let base = NonNull::new(ptr).ok_or_else(|| XskError::Invalid {
            step,
            what: "mmap returned a null address".into(),
        })?;
        let at = |o: u64| {
            // SAFETY: every offset was checked above to lie inside the `len` mapped bytes.
            unsafe { base.cast::<u8>().add(o as usize) }
        };
        // SAFETY: the offsets were checked to lie inside the mapping and to be aligned for
        // their types; the mapping is handed to the ring, which unmaps it on drop.
        Ok(unsafe {
            Self::from_parts(
                at(off.producer).cast(),
                at(off.consumer).cast(),
                at(off.flags).cast(),
                at(off.desc).cast(),
                size,
                Some((base, len)),
            )
        })
    }

    /// # Safety
    /// The pointers must be valid and aligned for as long as the ring lives, `desc` for `size`
    /// entries (a power of two), and shared only with the one other party of the ring.
    unsafe fn from_parts(
        producer: NonNull<AtomicU32>,
        consumer: NonNull<AtomicU32>,
        flags: NonNull<AtomicU32>,
        desc: NonNull<T>,
        size: u32,
        mapping: Option<(NonNull<libc::c_void>, usize)>,
    ) -> Self {
        // SAFETY: valid per the caller's contract.
        let (p, c) = unsafe {
            (
                producer.as_ref().load(Ordering::Acquire),
                consumer.as_ref().load(Ordering::Acquire),
            )
        };
        Self {
            producer,
            consumer,
            flags,
            desc,
            size,
            cached_prod: p,
            cached_cons: c,
            mapping,
            _t: PhantomData,
        }
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: valid and aligned for the ring's life (checked in `map` / `from_parts`).
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as in `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as in `producer`.
        unsafe { self.flags.as_ref() }
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: `index & (size - 1)` < size, and `desc` holds `size` entries.
        unsafe { self.desc.as_ptr().add((index & (self.size - 1)) as usize) }
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        if let Some((base, len)) = self.mapping {
            // SAFETY: exactly the mapping made in `map`; nothing borrowed from it outlives
            // the ring.
            unsafe { libc::munmap(base.as_ptr(), len) };
        }
    }
}

/// Free slots of a producer ring, from this side's indices.
fn free_slots(size: u32, prod: u32, cons: u32) -> u32 {
    size.saturating_sub(prod.wrapping_sub(cons))
}

/// Entries ready on a consumer ring, from this side's indices.
fn ready_entries(prod: u32, cons: u32) -> u32 {
    prod.wrapping_sub(cons)
}

/// A ring this side fills and the kernel empties (fill, TX).
pub struct ProdRing<T>(Ring<T>);

impl<T: Copy> ProdRing<T> {
    /// Slots free for producing now (reloads the kernel's consumer index if the cached one
    /// shows fewer than `want`).
    pub fn free(&mut self, want: u32) -> u32 {
        let r = &mut self.0;
        let mut free = free_slots(r.size, r.cached_prod, r.cached_cons);
        if free < want {
            // Acquire: the kernel is done with the slots it released.
            r.cached_cons = r.consumer().load(Ordering::Acquire);
            free = free_slots(r.size, r.cached_prod, r.cached_cons);
        }
        free
    }

    /// Put as many of `items`, from the first, as there is room for, and publish them.
    /// Returns how many went on.
    pub fn produce(&mut self, items: &[T]) -> u32 {
        let want = u32::try_from(items.len()).unwrap_or(u32::MAX);
        let n = self.free(want).min(want);
        if n == 0 {
            return 0;
        }
        let r = &mut self.0;
        for (i, item) in items[..n as usize].iter().enumerate() {
            let slot = r.slot(r.cached_prod.wrapping_add(i as u32));
            // SAFETY: the slot is in the ring, and free: between our producer index and the
            // kernel's consumer index plus size, which the kernel does not read until we
            // publish.
            unsafe { slot.write_volatile(*item) };
        }
        r.cached_prod = r.cached_prod.wrapping_add(n);
        // Release: the entries are visible before the index that publishes them.
        r.producer().store(r.cached_prod, Ordering::Release);
        n
    }

    /// Entries published and not yet taken by the kernel.
    pub fn pending(&self) -> u32 {
        let r = &self.0;
        r.cached_prod
            .wrapping_sub(r.consumer().load(Ordering::Acquire))
    }

    pub fn size(&self) -> u32 {
        self.0.size
    }

    /// With `XDP_USE_NEED_WAKEUP`: the kernel waits for a wake-up (sendto on TX, poll on fill).
    pub fn needs_wakeup(&self) -> bool {
        self.0.flags().load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

/// A ring the kernel fills and this side empties (RX, completion).
pub struct ConsRing<T>(Ring<T>);

impl<T: Copy> ConsRing<T> {
    /// Entries ready now (reloads the kernel's producer index if the cached one shows fewer
    /// than `want`).
    pub fn ready(&mut self, want: u32) -> u32 {
        let r = &mut self.0;
        let mut ready = ready_entries(r.cached_prod, r.cached_cons);
        if ready < want {
            // Acquire: the entries are visible once their index is.
            r.cached_prod = r.producer().load(Ordering::Acquire);
            ready = ready_entries(r.cached_prod, r.cached_cons);
        }
        ready
    }

    /// Take up to `max` entries, in order, handing each to `f`, then release their slots.
    /// Returns how many were taken.
    pub fn consume(&mut self, max: u32, mut f: impl FnMut(T)) -> u32 {
        let n = self.ready(max).min(max);
        if n == 0 {
            return 0;
        }
        let r = &mut self.0;
        for i in 0..n {
            let slot = r.slot(r.cached_cons.wrapping_add(i));
            // SAFETY: the slot is in the ring and published by the kernel (below the producer
            // index loaded with Acquire); the kernel does not reuse it until we release it.
            f(unsafe { slot.read_volatile() });
        }
        r.cached_cons = r.cached_cons.wrapping_add(n);
        // Release: done reading before the kernel may reuse the slots.
        r.consumer().store(r.cached_cons, Ordering::Release);
        n
    }

    pub fn size(&self) -> u32 {
        self.0.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring in ordinary memory, with the test as the "kernel" side.
    struct Fake<T> {
        prod: Box<AtomicU32>,
        cons: Box<AtomicU32>,
        flags: Box<AtomicU32>,
        desc: Vec<T>,
    }

    impl<T: Copy + Default> Fake<T> {
        fn new(size: u32, start: u32) -> Self {
            Self {
                prod: Box::new(AtomicU32::new(start)),
                cons: Box::new(AtomicU32::new(start)),
                flags: Box::new(AtomicU32::new(0)),
                desc: vec![T::default(); size as usize],
            }
        }

        fn ring(&mut self) -> Ring<T> {
            let size = self.desc.len() as u32;
            // SAFETY: the boxes and the vector outlive the ring in every test (the ring is
            // dropped first), and nothing else writes them while it lives.
            unsafe {
                Ring::from_parts(
                    NonNull::from(&*self.prod),
                    NonNull::from(&*self.cons),
                    NonNull::from(&*self.flags),
                    NonNull::new(self.desc.as_mut_ptr()).unwrap(),
                    size,
                    None,
                )
            }
        }
    }

    #[test]
    fn index_arithmetic_wraps() {
        assert_eq!(free_slots(8, 5, 5), 8);
        assert_eq!(free_slots(8, 13, 5), 0);
        assert_eq!(free_slots(8, 2, u32::MAX - 1), 4);
        assert_eq!(ready_entries(3, u32::MAX - 2), 6);
        assert_eq!(ready_entries(7, 7), 0);
        // A corrupt index from the other side never yields more than the ring holds.
        assert_eq!(free_slots(8, 20, 5), 0);
    }

    #[test]
    fn producer_fills_up_and_refills_as_the_other_side_consumes_across_the_wrap() {
        let start = u32::MAX - 2;
        let mut fake = Fake::<u64>::new(4, start);
        let mut p = ProdRing(fake.ring());
        assert_eq!(p.produce(&[10, 11, 12, 13, 14, 15]), 4, "only 4 slots");
        assert_eq!(fake.prod.load(Ordering::Relaxed), start.wrapping_add(4));
        assert_eq!(p.pending(), 4);
        assert_eq!(p.produce(&[14]), 0, "full");
        // The "kernel" takes two: slots start, start+1.
        let got: Vec<u64> = (0..2)
            .map(|i| fake.desc[(start.wrapping_add(i) & 3) as usize])
            .collect();
        assert_eq!(got, [10, 11]);
        fake.cons.store(start.wrapping_add(2), Ordering::Release);
        assert_eq!(p.pending(), 2);
        assert_eq!(p.produce(&[14, 15, 16]), 2);
        assert_eq!(fake.prod.load(Ordering::Relaxed), start.wrapping_add(6));
        // Slots now hold, in ring order from `start`: 14 15 12 13 → the wrap landed right.
        let order: Vec<u64> = (2..6)
            .map(|i| fake.desc[(start.wrapping_add(i) & 3) as usize])
            .collect();
        assert_eq!(order, [12, 13, 14, 15]);
    }

    #[test]
    fn consumer_sees_only_published_entries_and_releases_what_it_took() {
        let start = u32::MAX;
        let mut fake = Fake::<Desc>::new(8, start);
        let mut c = ConsRing(fake.ring());
        assert_eq!(c.consume(8, |_| panic!("nothing published")), 0);
        for i in 0..5u32 {
            fake.desc[(start.wrapping_add(i) & 7) as usize] = Desc {
                addr: i as u64 * 4096 + 256,
                len: 60 + i,
                options: 0,
            };
        }
        // Only three published so far.
        fake.prod.store(start.wrapping_add(3), Ordering::Release);
        let mut seen = vec![];
        assert_eq!(c.consume(8, |d| seen.push(d.len)), 3);
        assert_eq!(seen, [60, 61, 62]);
        assert_eq!(fake.cons.load(Ordering::Relaxed), start.wrapping_add(3));
        fake.prod.store(start.wrapping_add(5), Ordering::Release);
        seen.clear();
        assert_eq!(c.consume(1, |d| seen.push(d.len)), 1, "max respected");
        assert_eq!(c.consume(8, |d| seen.push(d.len)), 1);
        assert_eq!(seen, [63, 64]);
        assert_eq!(fake.cons.load(Ordering::Relaxed), start.wrapping_add(5));
    }

    #[test]
    fn need_wakeup_reads_the_flag() {
        let mut fake = Fake::<Desc>::new(2, 0);
        let p = ProdRing(fake.ring());
        assert!(!p.needs_wakeup());
        fake.flags
            .store(libc::XDP_RING_NEED_WAKEUP, Ordering::Relaxed);
        assert!(p.needs_wakeup());
    }

    #[test]
    fn errors_name_the_step_and_what_the_kernel_needs() {
        let e = XskError::os(
            Step::Bind {
                iface: "eth0".into(),
                queue: 0,
                shared_with: None,
            },
            Errno::EBUSY,
        );
        let m = e.to_string();
        assert!(
            m.starts_with("binding the AF_XDP socket to eth0 queue 0: EBUSY")
                && m.contains("another AF_XDP socket holds the queue"),
            "{m}"
        );
        let m = XskError::os(
            Step::MapRing {
                ring: RingKind::Fill,
            },
            Errno::EBUSY,
        )
        .to_string();
        assert!(
            m.contains("fill ring") && m.contains("before bind()"),
            "{m}"
        );
        let m = XskError::os(Step::CreateSocket, Errno::EAFNOSUPPORT).to_string();
        assert!(m.contains("CONFIG_XDP_SOCKETS"), "{m}");
    }

    #[test]
    fn umem_frames_are_cut_to_the_area() {
        let mut u = Umem::new(2, 4096).unwrap();
        assert_eq!(u.len(), 8192);
        u.frame_mut(4096 + 256, 10).fill(7);
        assert_eq!(u.frame_mut(4096 + 256, 10), [7; 10]);
        assert_eq!(u.frame_mut(8190, 10).len(), 2);
        assert!(u.frame_mut(1 << 40, 10).is_empty());
        assert!(Umem::new(0, 4096).is_err());
    }
}
