//! The command lines that point wirelab tools at a lab host, as the tests, the benches and the
//! demo all write them: each returns the leading words to pass to [`Command::args`] on a
//! `wirelab` command (the caller picks the binary and environment, and adds its own options).
use std::{process::Command, time::Duration};

use anyhow::Result;

use crate::{spawn_ready, Bg, Ready};

/// The stderr line `wirelab probe server` prints once it listens.
pub const PROBE_SERVER_READY: &str = "probe server listening";

/// `wan --netns NS --between to-client to-server`: the WAN emulator on a lab's wan host
/// (namespace `ns`) between its legs towards the client and the server.
pub fn wan(ns: &str) -> [&str; 6] {
    ["wan", "--netns", ns, "--between", "to-client", "to-server"]
}

/// `probe server --netns NS --bind BIND --duration DURATION`.
pub fn probe_server<'a>(ns: &'a str, bind: &'a str, duration: &'a str) -> [&'a str; 8] {
    [
        "probe",
        "server",
        "--netns",
        ns,
        "--bind",
        bind,
        "--duration",
        duration,
    ]
}

/// `probe client --netns NS --to TO`.
pub fn probe_client<'a>(ns: &'a str, to: &'a str) -> [&'a str; 6] {
    ["probe", "client", "--netns", ns, "--to", to]
}

/// `TOOL --netns NS --iface IFACE`: a tool that works on one interface of a namespace
/// (`inspect`, `gen`, `fw`).
pub fn on_iface<'a>(tool: &'a str, ns: &'a str, iface: &'a str) -> [&'a str; 5] {
    [tool, "--netns", ns, "--iface", iface]
}

/// Start `wirelab probe server` (`wirelab` is the command without arguments) in namespace `ns`,
/// bound to `bind` for at most `duration`, and wait (10 s at most) until it listens.
pub fn start_probe_server(
    mut wirelab: Command,
    ns: &str,
    bind: &str,
    duration: &str,
) -> Result<Bg> {
    wirelab.args(probe_server(ns, bind, duration));
    spawn_ready(
        wirelab,
        Ready::Stderr,
        PROBE_SERVER_READY,
        Duration::from_secs(10),
    )
}
