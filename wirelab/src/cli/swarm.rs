//! `wirelab swarm`: many client machines from one host (`run` and `connect`).
use std::{
    collections::BTreeMap, net::SocketAddrV4, path::PathBuf, process::ExitCode, sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use wirelab::{
    metrics, record,
    runtime::{observe::Observer, Ticker},
    swarm::{self, connect, run, Identity, Options, Pool, Swarm},
    util,
};

use super::{parse_duration, JsonArg, NetnsArg, Observe};

#[derive(Subcommand)]
pub enum SwarmCmd {
    /// Run a command once per client; each client has its own IP and MAC.
    #[command(
        after_help = "Examples:\n  wirelab swarm run --netns wirelab-client --iface eth0 --pool 198.18.4.0/22 --clients 300 \\\n      --concurrency 32 --out /tmp/smb -- smbclient //198.18.0.2/share -N -c ls\n  wirelab swarm run --iface eth0 --pool 198.18.0.64/26 --clients 10 --json \\\n      -- curl -s 'http://198.18.0.2/?c={index}'\n  wirelab swarm run --iface eth0 --pool 198.18.0.64/26 --clients 20 --identity process \\\n      -- sh -c 'for i in $(seq 20); do ncat 198.18.0.2 80 </dev/null & done; wait'\n\n{ip}, {mac} and {index} in the command are replaced per client (also in WIRELAB_SWARM_IP,\nWIRELAB_SWARM_MAC and WIRELAB_SWARM_N; docs/swarm.md names the short form of {index}).\nClient N has the N-th host address of the pool; its MAC is PREFIX:a:b:c:d for address a.b.c.d\n(default prefix 02:57). The exit status is 0 when every client succeeded, 3 otherwise."
    )]
    Run(RunArgs),
    /// Built-in TCP load: one connection per client, tens of thousands of clients.
    #[command(
        after_help = "Examples:\n  wirelab swarm connect --netns wirelab-client --iface eth0 --pool 198.18.32.0/19 --clients 5000 \\\n      --to 198.18.0.2:9000 --hold 5s --rate 2000 --metrics 127.0.0.1:9465 --record run1\n\nEach connection's socket is mapped to its client address by socket cookie before connect;\nthe connect4 program binds it. The exit status is 0 when every client connected from its own address."
    )]
    Connect(ConnectArgs),
}

#[derive(Args)]
pub struct Common {
    /// Interface facing the server (Ethernet).
    #[arg(long)]
    iface: String,
    #[command(flatten)]
    netns: NetnsArg,
    /// Client addresses: the host addresses of this IPv4 CIDR, e.g. 198.18.4.0/22.
    #[arg(long, value_parser = parse_pool)]
    pool: Pool,
    /// Number of clients (at most the pool's size).
    #[arg(long)]
    clients: u32,
    /// First two bytes of every client MAC (locally administered, unicast).
    #[arg(long, default_value = "02:57", value_parser = parse_mac_prefix)]
    mac_prefix: [u8; 2],
    /// A lab server's namespace: warn when its neighbour table cannot hold all clients.
    #[arg(long)]
    server_netns: Option<String>,
    #[command(flatten)]
    json: JsonArg,
    /// `--interval` (of the record's series and the metrics: client counts and the kernel
    /// programs' counters), `--record`, `--metrics`.
    #[command(flatten)]
    observe: Observe,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Clients running at once.
    #[arg(long, default_value_t = 32)]
    concurrency: u32,
    /// cgroup: one cgroup per client (default). process: each process (TGID) that connects
    /// gets the next address; the command runs once.
    #[arg(long, default_value = "cgroup", value_parser = swarm::parse_identity)]
    identity: Identity,
    /// Kill a client (its whole cgroup) after this long.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Directory for client-N.out / client-N.err and results.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

#[derive(Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    common: Common,
    /// Server address.
    #[arg(long)]
    to: SocketAddrV4,
    /// Keep each connection open this long.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    hold: Duration,
    /// New connections per second (default: unpaced).
    #[arg(long)]
    rate: Option<f64>,
    /// Connections open at once (default: all clients).
    #[arg(long)]
    concurrency: Option<u32>,
    /// Connect timeout (and receive timeout).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Bytes each client sends after connecting.
    #[arg(long, default_value_t = 0)]
    send: usize,
    /// Bytes each client reads back before holding.
    #[arg(long, default_value_t = 0)]
    recv: usize,
}

fn parse_pool(s: &str) -> Result<Pool, String> {
    Pool::parse(s).map_err(|e| format!("{e:#}"))
}

fn parse_mac_prefix(s: &str) -> Result<[u8; 2], String> {
    swarm::parse_mac_prefix(s).map_err(|e| format!("{e:#}"))
}

fn options(c: &Common, identity: Identity) -> Result<Options> {
    // Validated by clap before this; read the host's own limit before entering a namespace.
    let host_gc_thresh3 = swarm::own_gc_thresh3();
    c.netns.enter()?;
    Ok(Options {
        iface: c.iface.clone(),
        netns: c.netns.netns.clone(),
        pool: c.pool,
        clients: c.clients,
        mac_prefix: c.mac_prefix,
        identity,
        server_netns: c.server_netns.clone(),
        host_gc_thresh3,
    })
}

metrics::families! {
    /// `--metrics` of `swarm run` and `swarm connect` (names in docs/metrics.md).
    struct SwarmMetrics {
        started: counter("wirelab_swarm_clients_started", "Clients started"),
        finished: counter(
            "wirelab_swarm_clients_finished",
            "Clients finished, by result (succeeded, failed)"
        ),
        established: counter(
            "wirelab_swarm_connections_established",
            "swarm connect: connections established"
        ),
        running: gauge(
            "wirelab_swarm_clients_running",
            "Clients running now (swarm connect: connections open)"
        ),
        events: counter(
            "wirelab_swarm_kernel_events",
            "swarm run: the kernel programs' counters (bind_ok, arp_replies, ...)"
        ),
        ;
        /// `run` or `connect`, a label of every series.
        mode: &'static str = "",
    }
}

impl SwarmMetrics {
    fn start(ep: &metrics::Endpoint, mode: &'static str) -> Result<Self> {
        let m = Self::serve(&format!("swarm-{mode}"), ep)?;
        Ok(Self { mode, ..m })
    }

    fn publish(&self, started: u64, ok: u64, failed: u64, running: u64) {
        let l = |kv: &[(&str, &str)]| {
            let mut v = vec![("mode", self.mode)];
            v.extend_from_slice(kv);
            metrics::labels(&v)
        };
        metrics::set_total(&self.started.get_or_create(&l(&[])), started);
        metrics::set_total(
            &self.finished.get_or_create(&l(&[("result", "succeeded")])),
            ok,
        );
        metrics::set_total(
            &self.finished.get_or_create(&l(&[("result", "failed")])),
            failed,
        );
        self.running.get_or_create(&l(&[])).set(running as f64);
    }

    fn publish_run(&self, s: &run::Sample) {
        self.publish(
            (s.done + s.running) as u64,
            s.succeeded as u64,
            s.failed as u64,
            s.running as u64,
        );
        self.publish_events(&s.stats);
    }

    fn publish_events(&self, stats: &BTreeMap<String, u64>) {
        for (k, v) in stats {
            let l = metrics::labels(&[("mode", self.mode), ("event", k)]);
            metrics::set_total(&self.events.get_or_create(&l), *v);
        }
    }

    fn publish_connect(&self, v: &connect::ConnectSample) {
        self.publish(
            v.attempted.into(),
            v.succeeded.into(),
            v.failed.into(),
            v.open.into(),
        );
        metrics::set_total(
            &self
                .established
                .get_or_create(&metrics::labels(&[("mode", self.mode)])),
            v.established.into(),
        );
    }
}

/// The observer of a swarm command: its `--record` source (interval lines are recorded, not
/// printed: the progress bar has the terminal) and the final summary on stdout.
fn observer(c: &Common, name: &str, config: &impl Serialize) -> Result<Observer> {
    Observer::new(c.json.json, c.observe.record.as_deref(), name, config)
}

/// `swarm run`'s configuration in its record.
#[derive(Serialize)]
struct RunConfig<'a> {
    iface: &'a str,
    netns: Option<&'a str>,
    pool: String,
    clients: u32,
    mac_prefix: [u8; 2],
    concurrency: u32,
    identity: String,
    timeout_s: Option<f64>,
    cmd: &'a [String],
}

/// `swarm connect`'s configuration in its record.
#[derive(Serialize)]
struct ConnectConfig<'a> {
    iface: &'a str,
    netns: Option<&'a str>,
    pool: String,
    clients: u32,
    to: SocketAddrV4,
    hold_s: f64,
    rate: Option<f64>,
    concurrency: u32,
    timeout_s: f64,
    send: usize,
    recv: usize,
}

/// A measured quantity of the whole run (no direction).
fn q(name: &str, value: f64, unit: &str, what: &str) -> record::Quantity {
    record::Quantity::new(name, "", value, unit, what)
}

pub fn run(c: SwarmCmd) -> Result<ExitCode> {
    match c {
        SwarmCmd::Run(a) => swarm_run(a),
        SwarmCmd::Connect(a) => swarm_connect(a),
    }
}

/// `swarm run`: the command once per client, each in its own identity.
fn swarm_run(a: RunArgs) -> Result<ExitCode> {
    if a.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    let ep = a.common.observe.endpoint()?;
    let o = options(&a.common, a.identity)?;
    let stop = util::Stop::install()?;
    let mets = ep
        .as_ref()
        .map(|e| SwarmMetrics::start(e, "run"))
        .transpose()?;
    let ro = run::RunOptions {
        concurrency: a.concurrency,
        interval: a.common.observe.interval,
        timeout: a.timeout,
        out: a.out,
        cmd: a.cmd,
    };
    let mut obs = observer(
        &a.common,
        "swarm-run",
        &RunConfig {
            iface: &a.common.iface,
            netns: a.common.netns.netns.as_deref(),
            pool: a.common.pool.net.to_string(),
            clients: a.common.clients,
            mac_prefix: a.common.mac_prefix,
            concurrency: ro.concurrency,
            identity: format!("{:?}", a.identity),
            timeout_s: ro.timeout.map(|t| t.as_secs_f64()),
            cmd: &ro.cmd,
        },
    )?;
    let mut sw = Swarm::setup(o)?;
    let mut rec_err = None;
    let (summary, results) = run::run_with(&mut sw, &ro, &stop, &mut |s| {
        if let Some(m) = &mets {
            m.publish_run(s);
        }
        if let Err(e) = obs.record_only(s) {
            rec_err.get_or_insert(e);
        }
    })?;
    drop(sw);
    if let Some(e) = rec_err {
        return Err(e.context("writing the run record"));
    }
    let measured = vec![
        q(
            "clients_succeeded",
            summary.succeeded as f64,
            "clients",
            "clients that exited 0",
        ),
        q(
            "clients_failed",
            summary.failed as f64,
            "clients",
            "clients that failed",
        ),
        q(
            "client_duration_p50_s",
            summary.duration_p50_s,
            "s",
            "client run time p50",
        ),
        q(
            "client_duration_p99_s",
            summary.duration_p99_s,
            "s",
            "client run time p99",
        ),
    ];
    let fin = run::RunRecord {
        summary,
        clients: results,
    };
    let summary = &fin.summary;
    obs.finish_apart(&fin, summary, measured, |out| {
        run::print_summary(summary, out)
    })?;
    Ok(if summary.failed == 0 && !summary.interrupted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// `swarm connect`: a TCP connection from every client, held, with per-client identity checks.
fn swarm_connect(a: ConnectArgs) -> Result<ExitCode> {
    // Preflight: the descriptor limit is settled before anything is attached.
    let conc = connect::plan_concurrency(a.concurrency, a.common.clients)?;
    if let Some(n) = &conc.notice {
        tracing::warn!("{n}");
    }
    let concurrency = conc.value;
    let ep = a.common.observe.endpoint()?;
    let o = options(&a.common, Identity::Cgroup)?;
    let stop = util::Stop::install()?;
    let mets = ep
        .as_ref()
        .map(|e| SwarmMetrics::start(e, "connect"))
        .transpose()?;
    let obs = observer(
        &a.common,
        "swarm-connect",
        &ConnectConfig {
            iface: &a.common.iface,
            netns: a.common.netns.netns.as_deref(),
            pool: a.common.pool.net.to_string(),
            clients: a.common.clients,
            to: a.to,
            hold_s: a.hold.as_secs_f64(),
            rate: a.rate,
            concurrency,
            timeout_s: a.timeout.as_secs_f64(),
            send: a.send,
            recv: a.recv,
        },
    )?;
    let mut sw = Swarm::setup(o)?;
    let co = connect::ConnectOptions {
        to: a.to,
        hold: a.hold,
        rate: a.rate,
        concurrency,
        timeout: a.timeout,
        send: a.send,
        recv: a.recv,
        progress: Arc::new(connect::ConnectProgress::default()),
    };
    // A sampler thread on the runtime's ticker: one series line and one metrics
    // update per second, and a last one when the run ends.
    let progress = co.progress.clone();
    let done = util::Stop::new();
    let interval = a.common.observe.interval;
    let sampler = {
        let done = done.clone();
        let mut obs = obs;
        std::thread::spawn(move || -> Result<Observer> {
            let mut ticker = Ticker::new(interval, None);
            while let Some(tick) = ticker.wait(&done) {
                let line = progress.snapshot(tick.t);
                if let Some(m) = &mets {
                    m.publish_connect(&line);
                }
                obs.record_only(&line)?;
            }
            Ok(obs)
        })
    };
    let s = connect::run(&mut sw, co, &stop).context("swarm connect");
    done.raise();
    let obs = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the sampler thread panicked"))?;
    let s = s?;
    let obs = obs.context("writing the run record")?;
    drop(sw);
    let measured = vec![
        q(
            "clients_connected",
            s.connected as f64,
            "clients",
            "connections established",
        ),
        q("connect_p50_ms", s.connect_p50_ms, "ms", "connect time p50"),
        q("connect_p99_ms", s.connect_p99_ms, "ms", "connect time p99"),
        q(
            "connects_per_s",
            s.connects_per_s,
            "1/s",
            "connections per second",
        ),
    ];
    obs.finish(&s, measured, |out| connect::print_summary(&s, out))?;
    Ok(if s.identity_ok == s.clients && !s.interrupted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
