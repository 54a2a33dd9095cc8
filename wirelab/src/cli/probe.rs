//! `wirelab probe`: measurement traffic (UDP one-way delay and loss, TCP goodput).
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::Subcommand;
use wirelab::probe;

use super::{parse_duration, parse_interval, JsonArg, NetnsArg};

#[derive(Subcommand)]
pub enum ProbeCmd {
    /// Echo UDP probes and sink TCP probes on ADDR:PORT.
    #[command(
        after_help = "Examples:\n  wirelab probe server --netns wirelab-server --bind 198.18.0.2:7000\n  wirelab probe server --netns wirelab-server --bind 198.18.0.2:7000 --duration 60s"
    )]
    Server {
        #[command(flatten)]
        netns: NetnsArg,
        /// Address and port to serve on (UDP echo and TCP sink).
        #[arg(long)]
        bind: std::net::SocketAddr,
        /// Stop after this long (default: until Ctrl-C / SIGTERM).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Send probes to a probe server and report.
    #[command(
        after_help = "Examples:\n  wirelab probe client --netns wirelab-client --to 198.18.0.2:7000 --rate 1000 --count 20000 \\\n      --json\n  wirelab probe client --netns wirelab-client --to 198.18.0.2:7000 --tcp --duration 10s"
    )]
    Client {
        #[command(flatten)]
        netns: NetnsArg,
        /// The probe server's address and port.
        #[arg(long)]
        to: std::net::SocketAddr,
        /// Probes per second (UDP).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Number of UDP probes (default: --duration × --rate, or 10 s worth when neither
        /// --count nor --duration is given).
        #[arg(long, conflicts_with = "duration")]
        count: Option<u64>,
        /// Send for this long (default: 10s; Ctrl-C / SIGTERM stops earlier).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// UDP probe size in bytes (UDP payload).
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Measure TCP goodput instead.
        #[arg(long)]
        tcp: bool,
        /// How long to wait for late echoes after the last probe.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        wait: Duration,
        #[command(flatten)]
        json: JsonArg,
        /// Interval of the recorded time series (--record).
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Write a run record into DIR (see `wirelab report`).
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
        /// Write every echoed UDP probe to FILE as CSV: seq, sent_unix, forward_ms, reverse_ms.
        #[arg(long, value_name = "FILE", conflicts_with = "tcp")]
        per_probe: Option<PathBuf>,
    },
}

pub fn run(p: ProbeCmd) -> Result<ExitCode> {
    match p {
        ProbeCmd::Server {
            netns,
            bind,
            duration,
        } => {
            let stop = netns.enter_until_stopped()?;
            probe::server(bind, duration, &stop)?;
        }
        ProbeCmd::Client {
            netns,
            to,
            rate,
            count,
            duration,
            size,
            tcp,
            wait,
            json,
            interval,
            record: record_dir,
            per_probe,
        } => {
            let csv = per_probe
                .as_deref()
                .map(probe::ProbeSample::create_csv)
                .transpose()?;
            let stop = netns.enter_until_stopped()?;
            if tcp {
                let dur = duration.unwrap_or(Duration::from_secs(10));
                let r = match record_dir.as_deref() {
                    Some(d) => probe::tcp_recorded(to, dur, &stop, d, vec![])?,
                    None => probe::tcp_client(to, dur, &stop)?,
                };
                if json.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "tcp probe to {}: {} bytes in {:.2}s = {:.2} Mbit/s goodput",
                        r.to, r.bytes, r.seconds, r.goodput_mbps
                    );
                    let per: Vec<String> = r
                        .per_second_mbps
                        .iter()
                        .map(|m| format!("{m:.1}"))
                        .collect();
                    println!("  per second (Mbit/s): {}", per.join(" "));
                }
            } else {
                let o = probe::ClientOptions {
                    to,
                    rate,
                    count,
                    duration,
                    size,
                    wait,
                    per_probe: per_probe.is_some(),
                };
                let r = match record_dir.as_deref() {
                    None => probe::udp_client(&o, &stop)?,
                    Some(d) => probe::udp_recorded(&o, &stop, d, interval, vec![])?,
                };
                if json.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    probe::print_udp(&r);
                }
                if let (Some(f), Some(p)) = (csv, &per_probe) {
                    probe::ProbeSample::write_csv(&r.per_probe, f)
                        .with_context(|| format!("--per-probe {}", p.display()))?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
