//! `probe server`: stamps and echoes UDP probes, counts TCP bytes in 100 ms slots.
use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::util::Stop;

use super::{types::SinkReport, wire::*};

#[derive(Default)]
pub(super) struct ServerRun {
    received: u64,
    duplicates: u64,
    reordered: u64,
    corrupted: u64,
    max_seq: u64,
    seen: Vec<u64>,
    echo_seq: u64,
    /// The socket's drop count (SO_RXQ_OVFL) when this run's first datagram arrived.
    drops_at_start: u32,
}

impl ServerRun {
    fn mark(&mut self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.seen.len() {
            if w > 1 << 24 {
                return false;
            }
            self.seen.resize(w + 1, 0);
        }
        let dup = self.seen[w] & (1 << b) != 0;
        self.seen[w] |= 1 << b;
        dup
    }
}

/// Run the server until `duration` or a signal: UDP echo and TCP sink on the same port.
pub fn server(bind: SocketAddr, duration: Option<Duration>, stop: &Stop) -> Result<()> {
    let udp = UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))?;
    prepare(&udp)?;
    udp.set_read_timeout(Some(Duration::from_millis(100)))?;
    let tcp = TcpListener::bind(bind).with_context(|| format!("binding TCP {bind}"))?;
    tcp.set_nonblocking(true)?;
    tracing::info!(%bind, "probe server listening (UDP echo + TCP sink)");
    let start = Instant::now();
    let stop2 = stop.clone();
    let tcp_thread = std::thread::spawn(move || {
        while !stop2.requested() && duration.is_none_or(|d| start.elapsed() < d) {
            match tcp.accept() {
                Ok((s, peer)) => {
                    std::thread::spawn(move || {
                        if let Err(e) = tcp_sink(s) {
                            tracing::warn!(%peer, "tcp probe: {e:#}");
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let mut runs: HashMap<(SocketAddr, u64), ServerRun> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    while !stop.requested() && duration.is_none_or(|d| start.elapsed() < d) {
        let Ok(Arrival {
            len: n,
            peer: Some(peer),
            at: rx,
            socket_drops,
        }) = recv_ts(&udp, &mut buf)
        else {
            continue;
        };
        if n < HDR || get_u32(&buf, 0) != MAGIC {
            continue;
        }
        let run = get_u64(&buf, 8);
        let drops = socket_drops.unwrap_or(0);
        let st = runs.entry((peer, run)).or_insert_with(|| ServerRun {
            drops_at_start: drops,
            ..Default::default()
        });
        match buf[4] {
            KIND_PROBE => {
                let p = &mut buf[..n];
                let seq = get_u64(p, 16);
                let corrupt = client_csum(p) != get_u32(p, 56);
                if corrupt {
                    st.corrupted += 1;
                }
                let mut flags = if corrupt { FLAG_FWD_CORRUPT } else { 0 };
                if !corrupt {
                    if st.mark(seq) {
                        st.duplicates += 1;
                        flags |= FLAG_DUP;
                    } else {
                        st.received += 1;
                        // Reordered: a first copy arriving after a higher-numbered probe.
                        if seq < st.max_seq {
                            st.reordered += 1;
                        }
                        st.max_seq = st.max_seq.max(seq);
                    }
                }
                st.echo_seq += 1;
                put_u64(p, ECHO_SEQ, st.echo_seq);
                p[4] = KIND_ECHO;
                p[5] = flags;
                put_u64(p, 32, rx);
                put_u64(p, 40, real_ns());
                let c = echo_csum(p);
                p[60..64].copy_from_slice(&c.to_le_bytes());
                let _ = udp.send_to(p, peer);
            }
            KIND_FIN => {
                let p = &mut buf[..HDR];
                p[4] = KIND_FIN_ACK;
                put_u64(p, 16, st.received);
                put_u64(p, 24, st.duplicates);
                put_u64(p, 32, st.reordered);
                put_u64(p, 40, st.corrupted);
                put_u64(p, 48, drops.wrapping_sub(st.drops_at_start) as u64);
                let _ = udp.send_to(p, peer);
            }
            _ => {}
        }
    }
    let _ = tcp_thread.join();
    tracing::info!("probe server stopped");
    Ok(())
}

pub(super) const SLOT_MS: u64 = 100;

pub(super) fn tcp_sink(mut s: TcpStream) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut slots: Vec<u64> = vec![];
    let mut first: Option<Instant> = None;
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let t0 = *first.get_or_insert_with(Instant::now);
        let slot = (t0.elapsed().as_millis() as u64 / SLOT_MS) as usize;
        if slot >= slots.len() {
            slots.resize(slot + 1, 0);
        }
        slots[slot] += n as u64;
        total += n as u64;
    }
    let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0);
    let report = SinkReport {
        bytes: total,
        seconds: secs,
        slot_ms: SLOT_MS,
        slots,
    };
    writeln!(s, "{}", serde_json::to_string(&report)?)?;
    Ok(())
}
