//! Probe runs with `--record`: the client's intervals and its final report in a run record,
//! with the configured quantities of the path when the caller knows them (sweep does).
use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Result;

use super::{
    report, tcp,
    types::{Dirs, TcpConfig, TcpInterval, UdpConfig, UdpInterval, UdpRecord},
    udp,
};
use crate::{
    record::{LineKind, Quantity, Recorder},
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
        &UdpConfig {
            to: o.to,
            rate_pps: o.rate,
            count: o.count,
            duration_s: o.duration.map(|d| d.as_secs_f64()),
            size: o.size,
            wait_s: o.wait.as_secs_f64(),
            interval_s: interval.as_secs_f64(),
            direction_mapping: Dirs {
                forward: "a_to_b",
                reverse: "b_to_a",
            },
        },
    )?;
    let mut err = None;
    let mut sink = |line: &UdpInterval| {
        if let Err(e) = rec.interval(line) {
            err.get_or_insert(e);
        }
    };
    let r = udp::udp_client_with(o, stop, Some((interval, &mut sink)))?;
    if let Some(e) = err {
        return Err(e.context("writing the run record"));
    }
    let measured = report::udp_measured(&r);
    let [forward, reverse] = r.delay_hist_ms.clone();
    let send_start_unix = r.send_start_unix;
    let fin = UdpRecord {
        report: r,
        delay_hist_ms: Dirs { forward, reverse },
        send_start_unix,
    };
    rec.finish(&fin, configured, measured)?;
    Ok(fin.report)
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
        &TcpConfig {
            to,
            duration_s: dur.as_secs_f64(),
        },
    )?;
    let t_start = util::unix_now();
    let r = tcp::tcp_client(to, dur, stop)?;
    for (i, m) in r.per_second_mbps.iter().enumerate() {
        let t = (i + 1) as f64;
        let line = TcpInterval {
            kind: LineKind::Interval,
            t,
            interval_s: 1.0,
            goodput_mbps: *m,
        };
        rec.interval_at(t_start + t, &line)?;
    }
    rec.finish(&r, configured, report::tcp_measured(&r))?;
    Ok(r)
}
