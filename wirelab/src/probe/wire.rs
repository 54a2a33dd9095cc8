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
/// The final answer (FIN_ACK) carries at 16, 24, 32, 40 and 48: received, duplicates,
/// reordered, corrupted, and the datagrams the server's socket dropped during the run (an
/// older server leaves that 0).
pub(super) const FIN_FIELDS: usize = 5;

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

/// How large a probe socket's receive buffer is made: 4 MiB holds about a second of echoes at
/// 4,000 probes/s even at their full kernel size, so a client or server thread the host
/// leaves unscheduled for a while drops nothing.
const RCVBUF: usize = 4 << 20;

/// Prepare a probe socket: no UDP checksum ([`no_check`]), kernel arrival stamps
/// (SO_TIMESTAMPNS: delays are measured at the socket's arrival, not when this process gets
/// scheduled), a large receive buffer, and the socket's own drop counter on every datagram
/// (SO_RXQ_OVFL), so that drops on this host are told apart from the network's.
pub(super) fn prepare(s: &UdpSocket) -> Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    no_check(s);
    setsockopt(s, sockopt::ReceiveTimestampns, &true).context("SO_TIMESTAMPNS")?;
    // SO_RCVBUFFORCE passes net.core.rmem_max (needs CAP_NET_ADMIN); without it, as large
    // as rmem_max allows.
    if setsockopt(s, sockopt::RcvBufForce, &RCVBUF).is_err() {
        let _ = setsockopt(s, sockopt::RcvBuf, &RCVBUF);
    }
    setsockopt(s, sockopt::RxqOvfl, &1).context("SO_RXQ_OVFL")?;
    Ok(())
}

/// One received datagram.
pub(super) struct Arrival {
    pub len: usize,
    pub peer: Option<SocketAddr>,
    /// Kernel arrival time (CLOCK_REALTIME ns).
    pub at: u64,
    /// The socket's count of datagrams it dropped for want of buffer space so far (SO_RXQ_OVFL;
    /// the kernel sends it once it is not zero).
    pub socket_drops: Option<u32>,
}

/// Receive one datagram with its kernel arrival time and the socket's drop count.
pub(super) fn recv_ts(s: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Arrival> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec, u32);
    let m = recvmsg::<SockaddrStorage>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let (mut ts, mut socket_drops) = (None, None);
    if let Ok(cms) = m.cmsgs() {
        for c in cms {
            match c {
                ControlMessageOwned::ScmTimestampns(t) => {
                    ts = Some(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64);
                }
                ControlMessageOwned::RxqOvfl(n) => socket_drops = Some(n),
                _ => {}
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
    let at = match ts {
        Some(t) if t.abs_diff(now) < 1_000_000_000 => t,
        _ => now,
    };
    Ok(Arrival {
        len: m.bytes,
        peer,
        at,
        socket_drops,
    })
}

fn no_check(s: &UdpSocket) {
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
