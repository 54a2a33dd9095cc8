//! `wirelab capture`: pcapng of what an interface receives and sends, filtered in the kernel.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use wirelab::{
    capture::{self, IngressChoice, Output},
    runtime::observe,
};

use super::{parse_duration, JsonArg, TapArgs, XdpModeArg};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  wirelab capture --netns wirelab-server --iface eth0 -w /tmp/server.pcapng --count 100\n  wirelab capture --netns wirelab-wan --iface to-client --filter 'icmp or udp port 7000' \\\n      --duration 10s -w run.pcapng --json\n  wirelab capture --netns wirelab-client --iface eth0 --snaplen 128 -w - | tshark -r -\n  wirelab capture --netns wirelab-server --iface eth0 --buffer-size 64 -w big.pcapng\n\nFilter words: host, net CIDR, port, portrange A-B (after src/dst, src or dst, src and dst;\nports also after tcp/udp), ip, ip6, arp, tcp, udp, icmp, icmp6, vlan [ID],\ntcp[tcpflags] & FLAGS != 0, and/&&, or/||, not/!, parentheses. Unmatched frames are not\ncopied. See docs/capture.md."
)]
pub struct CaptureArgs {
    #[command(flatten)]
    tap: TapArgs,
    /// Bytes kept of each frame (1-65535).
    #[arg(long, default_value_t = capture::DEFAULT_SNAPLEN, value_parser = clap::value_parser!(u32).range(1..=65535))]
    snaplen: u32,
    /// MiB of kernel ring per CPU (rounded down to a power of two of pages; default: 32 MiB
    /// shared by the CPUs, 4-16 MiB each). Larger absorbs longer bursts of large frames.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..=1024))]
    buffer_size: Option<u32>,
    /// MiB that frames drained from the kernel may hold while they wait to be written: a
    /// slow disk or a paused reader of `-w -` loses no frame until they fill it; then whole
    /// drains are dropped and counted (`dropped in userspace`, and in the file's ifdrop).
    #[arg(long, value_name = "MIB", default_value_t = capture::DEFAULT_BACKLOG_MIB, value_parser = clap::value_parser!(u32).range(1..=65536))]
    backlog: u32,
    /// Stop after writing this many frames.
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// Stop after this long (default: until Ctrl-C / SIGTERM, or --count).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// The pcapng file to write; `-` for stdout (the summary then goes to stderr).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    write: PathBuf,
    #[command(flatten)]
    json: JsonArg,
    /// Where ingress is captured: `auto` = tc/TCX ingress (GRO kept, no cost to TCP), or
    /// behind the XDP tap of `wirelab fw`, `lb` (XDP path) or `wan` when one runs on the
    /// interface (frames carry its decisions as comments); `tc` = tc ingress always; `xdp` =
    /// an XDP program (frames before GRO; on a veth it turns GRO off, which costs TCP
    /// throughput), or that tap.
    #[arg(long, value_enum, default_value_t = IngressArg::Auto)]
    ingress: IngressArg,
    /// Force an XDP mode for XDP ingress instead of native with a fallback to skb (implies
    /// `--ingress xdp`).
    #[arg(long, value_enum)]
    mode: Option<XdpModeArg>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IngressArg {
    /// tc ingress, or the tap of fw, lb or wan when one runs on the interface.
    Auto,
    /// tc/TCX ingress.
    Tc,
    /// XDP (capture's own program, or the tap of fw, lb or wan when one runs).
    Xdp,
}

impl From<IngressArg> for IngressChoice {
    fn from(a: IngressArg) -> Self {
        match a {
            IngressArg::Auto => IngressChoice::Auto,
            IngressArg::Tc => IngressChoice::Tc,
            IngressArg::Xdp => IngressChoice::Xdp,
        }
    }
}

pub fn run(a: CaptureArgs) -> Result<ExitCode> {
    a.tap.check()?;
    if a.mode.is_some() && a.ingress == IngressArg::Tc {
        bail!("--mode is the XDP mode of XDP ingress: it does not go with --ingress tc");
    }
    let ingress = match (a.ingress, a.mode) {
        (IngressArg::Auto, Some(_)) => IngressChoice::Xdp,
        (i, _) => i.into(),
    };
    let stop = a.tap.netns.enter_until_stopped()?;
    let out = if a.write.as_os_str() == "-" {
        Output::Stdout
    } else {
        Output::File(a.write)
    };
    let to_stdout = out == Output::Stdout;
    let s = capture::run(
        &capture::Options {
            iface: a.tap.iface,
            filter: a.tap.filter,
            snaplen: a.snaplen,
            ring_bytes: a.buffer_size.map(|m| m as usize * (1 << 20)),
            backlog_bytes: Some(a.backlog as u64 * (1 << 20)),
            count: a.count,
            duration: a.duration,
            out,
            ingress,
            mode: a.mode.map(Into::into),
        },
        &stop,
    )?;
    let write = |o: &mut dyn std::io::Write| -> std::io::Result<()> {
        if a.json.json {
            writeln!(o, "{}", serde_json::to_string(&s).unwrap_or_default())
        } else {
            capture::print_summary(&s, o)
        }
    };
    if to_stdout {
        write(&mut std::io::stderr())?;
    } else {
        observe::to_stdout(write)?;
    }
    Ok(ExitCode::SUCCESS)
}
