//! The probe's wire format, checksums and socket options.
use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, Result};

pub(super) const MAGIC: u32 = 0x574c_5052; // "WLPR"
pub(super) const KIND_PROBE: u8 = 1;
pub(super) const KIND_ECHO: u8 = 2;
pub(super) const KIND_FIN: u8 = 3;
pub(super) const KIND_FIN_ACK: u8 = 4;
/// magic 4, kind 1, flags 1, pad 2, run 8, seq 8, c_tx 8, s_rx 8, s_tx 8, csum_client 4,
/// csum_echo 4
pub(super) const HDR: usize = 64;
pub const MIN_SIZE: usize = HDR + 8;
pub(super) const FLAG_FWD_CORRUPT: u8 = 1;
/// The echo answers a duplicate the server had seen already (a forward duplicate).
pub(super) const FLAG_DUP: u8 = 2;
/// Offset of the server's echo sequence number (orders echoes in the reverse direction).
pub(super) const ECHO_SEQ: usize = 48;

pub(super) fn fnv(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

pub(super) fn get_u64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

pub(super) fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn get_u32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

/// Client checksum: covers run, seq, client timestamp and payload (not server fields).
pub(super) fn client_csum(b: &[u8]) -> u32 {
    let mut h = fnv(&b[8..32]);
    h ^= fnv(&b[HDR..]).rotate_left(7);
    h
}

/// Echo checksum: everything but the echo checksum itself.
pub(super) fn echo_csum(b: &[u8]) -> u32 {
    fnv(&b[..60]) ^ fnv(&b[HDR..]).rotate_left(13)
}

pub(super) fn real_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .expect("CLOCK_REALTIME is always available");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Ask the kernel to stamp arrivals (SO_TIMESTAMPNS): delays are measured at the socket's
/// arrival, not when this process gets scheduled.
pub(super) fn kernel_timestamps(s: &UdpSocket) -> Result<()> {
    nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .context("SO_TIMESTAMPNS")?;
    Ok(())
}

/// Receive one datagram with its kernel arrival time (CLOCK_REALTIME ns).
pub(super) fn recv_ts(
    s: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<SocketAddr>, u64)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let m = recvmsg::<SockaddrStorage>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let mut ts = None;
    if let Ok(cms) = m.cmsgs() {
        for c in cms {
            if let ControlMessageOwned::ScmTimestampns(t) = c {
                ts = Some(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64);
            }
        }
    }
    let peer = m.address.and_then(|a: SockaddrStorage| {
        if let Some(v4) = a.as_sockaddr_in() {
            Some(SocketAddr::V4(std::net::SocketAddrV4::from(*v4)))
        } else {
            a.as_sockaddr_in6()
                .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
        }
    });
    // Forwarded skbs can carry a CLOCK_MONOTONIC delivery time instead of a receive stamp:
    // trust the kernel's stamp only when it is a plausible wall-clock time.
    let now = real_ns();
    let t = match ts {
        Some(t) if t.abs_diff(now) < 1_000_000_000 => t,
        _ => now,
    };
    Ok((m.bytes, peer, t))
}

pub(super) fn no_check(s: &UdpSocket) {
    const SO_NO_CHECK: libc::c_int = 11;
    let one: libc::c_int = 1;
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NO_CHECK,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
