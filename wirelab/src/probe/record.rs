//! Probe runs with `--record`: the client's intervals and its final report in a run record,
//! with the configured quantities of the path when the caller knows them (sweep does).
use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Result;

use super::{report, tcp, udp};
use crate::{
    record::{Quantity, Recorder},
    util::{self, Stop},
};

/// A UDP probe run recorded into `dir` (source `probe-udp`).
pub fn udp_recorded(
    o: &udp::ClientOptions,
    stop: &Stop,
    dir: &Path,
    interval: Duration,
    configured: Vec<Quantity>,
) -> Result<udp::UdpReport> {
    let mut rec = Recorder::create(
        dir,
        "probe-udp",
        "probe-udp",
        serde_json::json!({
            "to": o.to, "rate_pps": o.rate, "count": o.count,
            "duration_s": o.duration.map(|d| d.as_secs_f64()),
            "size": o.size, "wait_s": o.wait.as_secs_f64(),
            "interval_s": interval.as_secs_f64(),
            "direction_mapping": {"forward": "a_to_b", "reverse": "b_to_a"},
        }),
    )?;
    let mut err = None;
    let mut sink = |v: serde_json::Value| {
        if let Err(e) = rec.interval(&v) {
            err.get_or_insert(e);
        }
    };
    let r = udp::udp_client_with(o, stop, Some((interval, &mut sink)))?;
    if let Some(e) = err {
        return Err(e.context("writing the run record"));
    }
    let mut fin = serde_json::to_value(&r)?;
    fin["delay_hist_ms"] = serde_json::json!({
        "forward": r.delay_hist_ms[0],
        "reverse": r.delay_hist_ms[1],
    });
    fin["send_start_unix"] = serde_json::json!(r.send_start_unix);
    rec.finish(&fin, configured, report::udp_measured(&r))?;
    Ok(r)
}

/// A TCP goodput run recorded into `dir` (source `probe-tcp`).
pub fn tcp_recorded(
    to: SocketAddr,
    dur: Duration,
    stop: &Stop,
    dir: &Path,
    configured: Vec<Quantity>,
) -> Result<tcp::TcpReport> {
    let mut rec = Recorder::create(
        dir,
        "probe-tcp",
        "probe-tcp",
        serde_json::json!({"to": to, "duration_s": dur.as_secs_f64()}),
    )?;
    let t_start = util::unix_now();
    let r = tcp::tcp_client(to, dur, stop)?;
    for (i, m) in r.per_second_mbps.iter().enumerate() {
        rec.interval(&serde_json::json!({
            "type": "interval",
            "t": (i + 1) as f64,
            "unix": t_start + (i + 1) as f64,
            "interval_s": 1.0,
            "goodput_mbps": m,
        }))?;
    }
    rec.finish(&r, configured, report::tcp_measured(&r))?;
    Ok(r)
}
