//! The TCP client: goodput over time as the receiver saw it.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::util::Stop;

use super::types::SinkReport;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpReport {
    pub mode: String,
    pub to: String,
    pub bytes: u64,
    pub seconds: f64,
    pub goodput_mbps: f64,
    /// Goodput per second as the receiver saw it (Mbit/s).
    pub per_second_mbps: Vec<f64>,
}

pub fn tcp_client(to: SocketAddr, duration: Duration, stop: &Stop) -> Result<TcpReport> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connecting to {to}"))?;
    s.set_nodelay(true)?;
    let buf = vec![0x5au8; 128 * 1024];
    let start = Instant::now();
    s.set_write_timeout(Some(Duration::from_millis(200)))?;
    while start.elapsed() < duration && !stop.requested() {
        match s.write(&buf) {
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e).context("sending"),
        }
    }
    s.shutdown(std::net::Shutdown::Write)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .context("reading the server's report")?;
    let SinkReport {
        bytes,
        seconds,
        slot_ms,
        slots,
    } = serde_json::from_str(reply.trim()).context("reading the server's report")?;
    if slot_ms == 0 || 1000 % slot_ms != 0 {
        bail!("the server's report has slots of {slot_ms} ms (want a divisor of 1000)");
    }
    let per_slot = (1000 / slot_ms) as usize;
    let per_second_mbps = slots
        .chunks(per_slot)
        .filter(|c| c.len() == per_slot)
        .map(|c| c.iter().sum::<u64>() as f64 * 8.0 / 1e6)
        .collect();
    Ok(TcpReport {
        mode: "tcp".into(),
        to: to.to_string(),
        bytes,
        seconds,
        goodput_mbps: if seconds > 0.0 {
            bytes as f64 * 8.0 / seconds / 1e6
        } else {
            0.0
        },
        per_second_mbps,
    })
}
