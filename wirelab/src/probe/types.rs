//! The probe's typed lines: what `--record` writes and `wirelab report` reads back (the same
//! types both ways), and the TCP sink's answer to the client.
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::udp::{DelayStats, UdpReport};
use crate::record::LineKind;

/// A value per direction: forward (client → server, the wan's a_to_b) and reverse.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dirs<T> {
    pub forward: T,
    pub reverse: T,
}

/// One interval of a UDP probe run (`--record` series): the one-way delays of the probes
/// that arrived in it (`None`: none arrived).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UdpInterval {
    #[serde(rename = "type")]
    pub kind: LineKind,
    /// Seconds since the first probe.
    pub t: f64,
    /// Length of this interval, s.
    pub interval_s: f64,
    /// Probes sent in it.
    pub sent: u64,
    /// One-way delays (ms) of the probes (forward) and echoes (reverse) that arrived in it.
    pub forward: Option<DelayStats>,
    pub reverse: Option<DelayStats>,
    /// Echoes that arrived before a lower-numbered probe's.
    pub reordered: u64,
}

/// The result of a recorded UDP run: the report, plus the delay histograms (value ms,
/// count) and the first send time that the report's CDF and loss charts need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UdpRecord {
    #[serde(flatten)]
    pub report: UdpReport,
    pub delay_hist_ms: Dirs<Vec<(f64, u64)>>,
    pub send_start_unix: f64,
}

/// One second of a TCP probe run as the receiver counted it (`--record` series).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpInterval {
    #[serde(rename = "type")]
    pub kind: LineKind,
    /// Seconds since the first byte arrived (the end of this second).
    pub t: f64,
    pub interval_s: f64,
    pub goodput_mbps: f64,
}

/// What the TCP sink tells the client once the client has closed its side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkReport {
    pub bytes: u64,
    pub seconds: f64,
    /// Width of each of `slots`, in ms.
    pub slot_ms: u64,
    /// Bytes received per slot, from the first byte on.
    pub slots: Vec<u64>,
}

/// A UDP probe run's configuration in its record (`probe-udp.config.json`).
#[derive(Debug, Clone, Serialize)]
pub struct UdpConfig {
    pub to: SocketAddr,
    /// Probes per second.
    pub rate_pps: f64,
    pub count: Option<u64>,
    pub duration_s: Option<f64>,
    /// UDP payload bytes per probe.
    pub size: usize,
    /// Seconds to wait for stragglers after the last probe.
    pub wait_s: f64,
    pub interval_s: f64,
    /// Which wan direction each probe direction crosses.
    pub direction_mapping: Dirs<&'static str>,
}

/// A TCP probe run's configuration in its record (`probe-tcp.config.json`).
#[derive(Debug, Clone, Serialize)]
pub struct TcpConfig {
    pub to: SocketAddr,
    pub duration_s: f64,
}
