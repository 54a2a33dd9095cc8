//! `wirelab gen`: the packet generator.
use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Args;
use wirelab::gen;

use super::{parse_duration, print, JsonArg, NetnsArg};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  wirelab gen --netns wirelab-client --iface eth0 --dst-mac 02:00:00:00:00:02 \\\n      --src 198.18.0.0/24 --dst 198.18.0.2 --proto udp --size 64 --duration 5s --flows 256\n  wirelab gen --iface veth0 --dst-mac ff:ff:ff:ff:ff:ff --src 198.18.1.1/32 --dst 198.18.0.2 \\\n      --proto tcp-syn --size 64 --rate 1000 --count 5000 --json\n  wirelab gen --netns wirelab-client --iface eth0 --dst-mac 02:00:00:00:00:02 \\\n      --src 2001:2::1:0/112 --flows 16 --dst 2001:2::2 --count 10000"
)]
pub struct GenArgs {
    /// Interface to transmit on.
    #[arg(long)]
    iface: String,
    #[command(flatten)]
    netns: NetnsArg,
    /// Destination MAC address (the receiving interface's: `wirelab lab status` shows it).
    #[arg(long)]
    dst_mac: String,
    /// Source MAC (default: the interface's).
    #[arg(long)]
    src_mac: Option<String>,
    /// Source addresses (IPv4 or IPv6 CIDR, or one address); --flows of them, from the
    /// first, are cycled through.
    #[arg(long)]
    src: String,
    /// Destination address (same family as --src).
    #[arg(long)]
    dst: std::net::IpAddr,
    /// What to send.
    #[arg(long, value_enum, default_value_t = gen::Proto::Udp)]
    proto: gen::Proto,
    /// Frame size in bytes without FCS (60..=1514; 64 is the classic "64-byte" frame).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Packets per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// Packets to send.
    #[arg(long)]
    count: Option<u64>,
    /// Time to send for (default 5s when --count is absent).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Number of distinct source addresses.
    #[arg(long, default_value_t = 1)]
    flows: u32,
    /// Destination UDP/TCP port.
    #[arg(long, default_value_t = 9)]
    dport: u16,
    /// How frames are sent.
    #[arg(long, value_enum, default_value_t = gen::Method::Auto)]
    method: gen::Method,
    #[command(flatten)]
    json: JsonArg,
}

pub fn run(a: GenArgs) -> Result<ExitCode> {
    let opts = gen::Options {
        iface: a.iface,
        dst_mac: a.dst_mac,
        src_mac: a.src_mac,
        src: a.src,
        dst: a.dst,
        proto: a.proto,
        size: a.size,
        rate: a.rate,
        count: a.count,
        duration: a.duration,
        flows: a.flows,
        dport: a.dport,
        method: a.method,
    };
    gen::check(&opts)?;
    let stop = a.netns.enter_until_stopped()?;
    let r = gen::run(&opts, &stop)?;
    print(a.json.json, &r, || Ok(r.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
