//! Running a sweep: one lab, one probe server and one emulator for the whole sweep (changed
//! live, each run's seed applied), each run's workloads recorded, one line per finished run
//! in `results.jsonl` (so `--resume` knows what is done), and the manifest.
use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::plan::{Cell, Plan, RunPlan, Workload};
use crate::{lab, netns, nl, probe, util::Stop, wan};

/// The files of a sweep directory.
pub const MANIFEST: &str = "manifest.json";
pub const RESULTS: &str = "results.jsonl";
pub const SUMMARY: &str = "summary.json";
pub const FORMAT: &str = "wirelab-sweep";

/// Where the probe server listens (the default lab's server).
pub(crate) const SERVER: &str = "198.18.0.2";
const CLIENT: &str = "198.18.0.1";
const PROBE_PORT: u16 = 7000;
const IPERF_PORT: u16 = 5201;

/// What a sweep directory says about itself (written before the first run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The sweep file as given.
    pub file_text: String,
    pub plan: Plan,
    pub host: Host,
    pub lab: String,
    pub started_unix: f64,
}

/// Host facts that change results: kernel, CPUs, memory, the lab's offloads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    pub kernel: String,
    pub cpus: usize,
    pub mem_total_kib: u64,
    pub wirelab: String,
}

impl Host {
    pub fn now() -> Self {
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0);
        Self {
            kernel: crate::kernel::release(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_total_kib: mem,
            wirelab: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// One finished run (a line of `results.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub id: usize,
    pub cell: usize,
    pub rep: u32,
    pub seed: u64,
    /// Position in the order actually run (0 = first).
    pub order: usize,
    pub started_unix: f64,
    pub ended_unix: f64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Metric name -> value (`udp.fwd_delay_p50_ms`, `tcp.goodput_mbps`, …).
    pub metrics: BTreeMap<String, f64>,
    /// This run's record directory, relative to the sweep directory.
    pub record: String,
    /// The class axis's value this run used (its rule is the cell's `rule` in the manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_rule: Option<String>,
}

/// Read `results.jsonl`; a torn last line (a kill mid-write) is ignored.
pub fn read_results(dir: &Path) -> Result<Vec<RunResult>> {
    let p = dir.join(RESULTS);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut out = vec![];
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str::<RunResult>(l) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == lines.len() => {
                tracing::warn!("{} line {}: torn last line ignored", p.display(), i + 1);
            }
            Err(e) => bail!("{} line {}: {e}", p.display(), i + 1),
        }
    }
    Ok(out)
}

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let p = dir.join(MANIFEST);
    let m: Manifest = serde_json::from_str(
        &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
    )
    .with_context(|| format!("{}", p.display()))?;
    if m.format != FORMAT {
        bail!("{}: not a wirelab sweep manifest", p.display());
    }
    Ok(m)
}

/// A child process stopped (SIGTERM, then SIGKILL) on drop; it also gets SIGTERM if this
/// process dies (PR_SET_PDEATHSIG), so a killed sweep leaves no emulator running.
struct Kid(Option<Child>);

impl Kid {
    fn spawn(mut c: Command, ns: Option<&str>) -> Result<Self> {
        let ns_file = ns.map(netns::open).transpose()?;
        // SAFETY: between fork and exec only async-signal-safe calls: prctl and setns on a
        // descriptor opened before the fork.
        unsafe {
            c.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(f) = &ns_file {
                    use std::os::fd::AsRawFd as _;
                    if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = c.spawn().with_context(|| format!("starting {c:?}"))?;
        Ok(Self(Some(child)))
    }

    /// Wait (bounded) for a stderr line containing `needle`; stderr keeps being drained.
    fn ready(&mut self, needle: &str, limit: Duration) -> Result<()> {
        use std::io::BufRead as _;
        let err = self
            .0
            .as_mut()
            .and_then(|c| c.stderr.take())
            .context("stderr not piped")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                tracing::debug!(target: "wirelab::sweep::child", "{l}");
                let _ = tx.send(l);
            }
        });
        let t0 = Instant::now();
        let mut seen = vec![];
        loop {
            match rx.recv_timeout(limit.saturating_sub(t0.elapsed())) {
                Ok(l) if l.contains(needle) => return Ok(()),
                Ok(l) => seen.push(l),
                Err(_) => bail!("not ready within {limit:?}: {}", seen.join("\n")),
            }
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The lab of the sweep, taken down on drop (also on error and Ctrl-C).
struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = lab::down(&self.0) {
            tracing::warn!("lab down {}: {e:#}", self.0);
        }
    }
}

/// A probe server on a thread in the server host, stopped on drop.
struct ProbeServer {
    stop: Stop,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl ProbeServer {
    fn start(ns: &str) -> Result<Self> {
        let stop = Stop::new();
        let s2 = stop.clone();
        let file = netns::open(ns)?;
        let bind: SocketAddr = format!("{SERVER}:{PROBE_PORT}").parse()?;
        let thread = std::thread::Builder::new()
            .name("sweep-probe-server".into())
            .spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
                probe::server(bind, None, &s2)
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ProbeServer {
    fn drop(&mut self) {
        self.stop.raise();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Everything a sweep runs on.
struct Bench {
    lab: String,
    _server: ProbeServer,
    _iperf: Option<Kid>,
    wan: Option<Kid>,
    /// The class match the running emulator was started with (see [`Cell::class_match`]).
    wan_match: Option<super::plan::ClassRule>,
    _guard: LabGuard,
}

impl Bench {
    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.lab)
    }
}

/// The class the measured traffic (everything to and from the server's address) runs in.
/// The host's own chatter (ARP, IPv6 neighbour and multicast-listener messages, sent at times
/// the kernel picks) stays in the default class, with the same impairments but its own
/// random stream, so it never shifts a run's seeded decisions.
pub const MEASURED_CLASS: &str = "measured";

/// The emulator's config for `cell`: the default class and the measured class. Without a
/// class rule (or with one that selects all traffic) both carry the cell's SPECs and the
/// measured class is everything to and from the server; with a narrowing rule the measured
/// class is the rule's traffic and the default class (everything else) is unimpaired.
fn wan_config(cell: &Cell) -> wan::Config {
    let rule = cell.class_match().unwrap_or_default();
    let default = if rule.narrows() { "" } else { &cell.a_to_b };
    let default_ba = if rule.narrows() { "" } else { &cell.b_to_a };
    wan::Config {
        // On the command line (`--seed`): TOML has no integers above i64::MAX.
        seed: None,
        default: wan::DirSpecs {
            both: None,
            a_to_b: Some(default.into()),
            b_to_a: Some(default_ba.into()),
        },
        class: vec![rule.class_cfg(MEASURED_CLASS, &cell.a_to_b, &cell.b_to_a)],
    }
}

fn wan_command(out: &Path, cell: &Cell, seed: u64, record: bool) -> Result<Command> {
    let cfg = out.join("wan.toml");
    std::fs::write(&cfg, toml::to_string(&wan_config(cell))?)?;
    let mut c = Command::new(std::env::current_exe().unwrap_or_else(|_| "wirelab".into()));
    c.args(["wan", "--between", "to-client", "to-server", "--config"]);
    c.arg(&cfg).arg("--seed").arg(seed.to_string());
    c.args(["--interval", "1s"]);
    if record {
        c.arg("--record").arg(out.join("wan"));
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("WIRELAB_LOG", "info");
    Ok(c)
}

fn start_wan(b: &Bench, out: &Path, cell: &Cell, seed: u64, record: bool) -> Result<Kid> {
    let mut k = Kid::spawn(wan_command(out, cell, seed, record)?, Some(&b.ns("wan")))?;
    k.ready("wan running", Duration::from_secs(30))
        .context("starting the emulator")?;
    Ok(k)
}

fn setup(plan: &Plan, out: &Path, lab_name: &str) -> Result<Bench> {
    let topo = lab::Topology::default_topology();
    let guard = LabGuard(lab_name.to_string());
    lab::up(lab_name, &topo).context("bringing the sweep's lab up")?;
    let ns = |h: &str| format!("{lab_name}-{h}");
    // Neighbour entries that go stale make the kernel send ARP/ND probes at times of its own
    // choosing; each one crossing the emulator would take a random draw and shift a run's
    // seeded decisions. Keep the endpoints' entries reachable for an hour.
    for h in ["client", "server"] {
        netns::run_in(Some(&ns(h)), || {
            for k in [
                "net.ipv4.neigh.eth0.base_reachable_time_ms",
                "net.ipv6.neigh.eth0.base_reachable_time_ms",
            ] {
                netns::write_sysctl(k, "3600000")?;
            }
            Ok(())
        })?;
    }
    // The two endpoints know each other's MAC for good. Otherwise the first run resolves
    // them through the emulator: the ARP exchange (default class, its own unseeded stream)
    // may lose frames, the probe's warm-up message waits in the neighbour queue and is sent
    // again meanwhile, and how many copies reach the measured class shifts that run's seeded
    // loss decisions from one sweep to the next.
    let mac = |h: &str| {
        nl::with(
            Some(&ns(h)),
            |nh| async move { nl::mac_of(&nh, "eth0").await },
        )
    };
    let (client_mac, server_mac) = (mac("client")?, mac("server")?);
    for (h, peer, peer_mac) in [
        ("client", SERVER, server_mac),
        ("server", CLIENT, client_mac),
    ] {
        let addr: std::net::IpAddr = peer.parse()?;
        nl::with(Some(&ns(h)), |nh| async move {
            nl::set_permanent_neighbour(&nh, "eth0", addr, &peer_mac).await
        })
        .with_context(|| format!("pinning {peer}'s MAC in the sweep's {h}"))?;
    }
    let server = ProbeServer::start(&ns("server"))?;
    let iperf = if plan
        .file
        .workloads
        .iter()
        .any(|w| matches!(w, Workload::Iperf3 { .. }))
    {
        let mut c = Command::new("iperf3");
        c.args(["-s", "-B", SERVER, "-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Some(Kid::spawn(c, Some(&ns("server"))).context("iperf3 (apt install iperf3)")?)
    } else {
        None
    };
    let mut b = Bench {
        lab: lab_name.to_string(),
        _server: server,
        _iperf: iperf,
        wan: None,
        wan_match: None,
        _guard: guard,
    };
    if !plan.file.fresh_wan {
        let first = plan
            .cells
            .first()
            .ok_or_else(|| anyhow!("a sweep without cells"))?;
        b.wan = Some(start_wan(&b, out, first, plan.file.seed, true)?);
        b.wan_match = first.class_match();
    }
    Ok(b)
}

/// Apply `cell` with `seed` before a run: a seeded live change, or a fresh emulator (every
/// run with `fresh_wan`, or when the cell's class rule differs from the running emulator's:
/// class rules do not change live).
fn apply_cell(b: &mut Bench, plan: &Plan, out: &Path, cell: &Cell, seed: u64) -> Result<()> {
    if plan.file.fresh_wan || cell.class_match() != b.wan_match {
        b.wan = None;
        b.wan = Some(start_wan(b, out, cell, seed, false)?);
        b.wan_match = cell.class_match();
        return Ok(());
    }
    // The default class first (unseeded: its random stream just goes on), then the measured
    // class, restarted from the run's seed. With a narrowing class rule the default class
    // stays unimpaired.
    let classes: &[Option<String>] = if b.wan_match.is_some() {
        &[Some(MEASURED_CLASS.to_string())]
    } else {
        &[None, Some(MEASURED_CLASS.to_string())]
    };
    let reqs = classes.iter().cloned().map(|class| wan::SetRequest {
        seed: class.is_some().then_some(seed),
        class,
        both: None,
        a_to_b: Some(cell.a_to_b.clone()),
        b_to_a: Some(cell.b_to_a.clone()),
        timeline: None,
    });
    send(b, reqs.collect()).context("changing the emulator live")
}

/// Send requests to the sweep's emulator, one after the other.
fn send(b: &Bench, reqs: Vec<wan::SetRequest>) -> Result<()> {
    netns::run_in(Some(&b.ns("wan")), move || {
        for r in &reqs {
            wan::send_set(None, r)?;
        }
        Ok(())
    })
}

/// Start (or stop, with `None`) the sweep's timeline in the emulator.
fn timeline(b: &Bench, tl: Option<&wan::timeline::Timeline>) -> Result<()> {
    let cmd = match tl {
        Some(t) => wan::TimelineCmd::Start {
            timeline: t.clone(),
            classes: super::plan::TIMELINE_CLASSES.map(String::from).to_vec(),
        },
        None => wan::TimelineCmd::Stop,
    };
    send(
        b,
        vec![wan::SetRequest {
            timeline: Some(cmd),
            ..Default::default()
        }],
    )
    .context("the sweep's timeline")
}

/// Start a user's `argv` in the client host: no stdin, `stdout` as given, stderr piped.
fn start_in_client(b: &Bench, argv: &[String], stdout: Stdio) -> Result<Child> {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    let mut k = Kid::spawn(c, Some(&b.ns("client")))?;
    k.0.take().context("the started command")
}

/// Run one hook command in the client host; a failure fails the run.
fn hook(b: &Bench, argv: &[String], what: &str) -> Result<()> {
    let o = start_in_client(b, argv, Stdio::null())?.wait_with_output()?;
    if !o.status.success() {
        bail!(
            "{what} hook {argv:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

/// The configured quantities of a cell (for the runs' configured-vs-measured tables).
fn configured(cell: &Cell) -> Vec<crate::record::Quantity> {
    match (
        wan::spec::parse(&cell.a_to_b),
        wan::spec::parse(&cell.b_to_a),
    ) {
        (Ok(a), Ok(b)) => wan::configured(&[vec![a], vec![b]]),
        _ => vec![],
    }
}

/// Run one workload; its metrics go into `m`.
fn workload(
    b: &Bench,
    w: &Workload,
    cell: &Cell,
    dir: &Path,
    stop: &Stop,
    m: &mut BTreeMap<String, f64>,
) -> Result<()> {
    let to: SocketAddr = format!("{SERVER}:{PROBE_PORT}").parse()?;
    match w {
        Workload::Udp { rate, count, size } => {
            let o = probe::ClientOptions {
                to,
                rate: *rate,
                count: Some(*count),
                duration: None,
                size: *size,
                wait: Duration::from_secs(1),
                per_probe: false,
            };
            let (dir, stop, conf) = (dir.to_path_buf(), stop.clone(), configured(cell));
            let r = netns::run_in(Some(&b.ns("client")), move || {
                probe::udp_recorded(&o, &stop, &dir, Duration::from_secs(1), conf)
            })?;
            m.insert("udp.fwd_delay_p50_ms".into(), r.forward.delay_ms.p50);
            m.insert("udp.fwd_delay_p99_ms".into(), r.forward.delay_ms.p99);
            m.insert("udp.fwd_jitter_ms".into(), r.forward.delay_ms.stddev);
            m.insert("udp.rev_delay_p50_ms".into(), r.reverse.delay_ms.p50);
            m.insert("udp.rtt_p50_ms".into(), r.rtt_ms.p50);
            m.insert("udp.fwd_loss_pct".into(), r.forward.loss_pct);
            m.insert("udp.rev_loss_pct".into(), r.reverse.loss_pct);
        }
        Workload::Tcp { duration, flows } => {
            let dur = duration.unwrap_or(Duration::from_secs(3));
            let n = *flows as usize;
            let (dir, stop, conf) = (dir.to_path_buf(), stop.clone(), configured(cell));
            let ns = b.ns("client");
            let rates: Vec<f64> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..n)
                    .map(|i| {
                        let (dir, stop, conf, ns) = (&dir, &stop, conf.clone(), &ns);
                        s.spawn(move || {
                            netns::run_in(Some(ns), move || {
                                if i == 0 {
                                    probe::tcp_recorded(to, dur, stop, dir, conf)
                                } else {
                                    probe::tcp_client(to, dur, stop)
                                }
                            })
                            .map(|r| r.goodput_mbps)
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().map_err(|_| anyhow!("tcp flow panicked"))?)
                    .collect::<Result<Vec<f64>>>()
            })?;
            m.insert("tcp.goodput_mbps".into(), rates.iter().sum());
            m.insert("tcp.flows".into(), n as f64);
        }
        Workload::Iperf3 {
            duration,
            udp,
            bitrate,
        } => {
            let v = iperf3(b, *duration, *udp, bitrate.as_deref())?;
            std::fs::write(dir.join("iperf3.json"), serde_json::to_vec_pretty(&v)?)?;
            if *udp {
                m.insert("iperf3.udp_mbps".into(), v.end.sum.bits_per_second / 1e6);
                m.insert("iperf3.udp_jitter_ms".into(), v.end.sum.jitter_ms);
                m.insert("iperf3.udp_lost_pct".into(), v.end.sum.lost_percent);
            } else {
                m.insert(
                    "iperf3.tcp_mbps".into(),
                    v.end.sum_received.bits_per_second / 1e6,
                );
            }
        }
        Workload::Command {
            name,
            argv,
            number,
            timeout,
        } => {
            let (ok, value) = command(b, argv, number.as_deref(), *timeout, dir, name)?;
            m.insert(format!("{name}.ok"), if ok { 1.0 } else { 0.0 });
            if let Some(v) = value {
                m.insert(format!("{name}.value"), v);
            }
        }
    }
    Ok(())
}

/// What the sweep reads of `iperf3 -J` (the tests read iperf3 through it too).
#[derive(Debug, Serialize, Deserialize)]
pub struct Iperf3 {
    pub end: Iperf3End,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Iperf3End {
    #[serde(default)]
    pub sum_received: Iperf3Sum,
    #[serde(default)]
    pub sum: Iperf3Sum,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Iperf3Sum {
    #[serde(default)]
    pub bits_per_second: f64,
    #[serde(default)]
    pub jitter_ms: f64,
    #[serde(default)]
    pub lost_percent: f64,
}

fn iperf3(b: &Bench, d: Option<Duration>, udp: bool, bitrate: Option<&str>) -> Result<Iperf3> {
    let secs = d
        .unwrap_or(Duration::from_secs(3))
        .as_secs_f64()
        .ceil()
        .max(1.0);
    let mut c = Command::new("iperf3");
    c.args(["-c", SERVER, "-p", &IPERF_PORT.to_string(), "-J"]);
    c.args(["-t", &format!("{secs}")]);
    if udp {
        c.args(["-u", "-b", bitrate.unwrap_or("10M")]);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut k = Kid::spawn(c, Some(&b.ns("client")))?;
    let o = k.0.take().context("iperf3")?.wait_with_output()?;
    let v: Iperf3 = serde_json::from_slice(&o.stdout).with_context(|| {
        format!(
            "iperf3 output ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )
    })?;
    Ok(v)
}

/// Run a user command in the client host (bounded by `timeout`, default 60 s); its stdout
/// and stderr go to the run directory.
fn command(
    b: &Bench,
    argv: &[String],
    number: Option<&str>,
    timeout: Option<Duration>,
    dir: &Path,
    name: &str,
) -> Result<(bool, Option<f64>)> {
    let mut child = start_in_client(b, argv, Stdio::piped())?;
    let limit = timeout.unwrap_or(Duration::from_secs(60));
    let (so, se) = (child.stdout.take(), child.stderr.take());
    let read = |p: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = vec![];
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut v);
            }
            v
        })
    };
    let ro = read(so.map(|x| Box::new(x) as Box<dyn std::io::Read + Send>));
    let re = read(se.map(|x| Box::new(x) as Box<dyn std::io::Read + Send>));
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = ro.join().unwrap_or_default();
    std::fs::write(dir.join(format!("{name}.stdout")), &out)?;
    std::fs::write(
        dir.join(format!("{name}.stderr")),
        re.join().unwrap_or_default(),
    )?;
    let ok = status.is_some_and(|s| s.success());
    let text = String::from_utf8_lossy(&out);
    let value = match number {
        None => None,
        Some("last") => text
            .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
            .filter_map(|w| w.parse::<f64>().ok())
            .next_back(),
        Some(n) => {
            let path = n.strip_prefix("json:").unwrap_or(n);
            let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
            path.split('.')
                .try_fold(&v, |v, k| v.get(k))
                .and_then(|v| v.as_f64())
        }
    };
    Ok((ok, value))
}

/// One run: apply the cell, hooks, workloads, its line in results.jsonl.
fn one_run(
    b: &mut Bench,
    plan: &Plan,
    out: &Path,
    r: &RunPlan,
    order: usize,
    stop: &Stop,
) -> Result<RunResult> {
    let cell = &plan.cells[r.cell];
    let rel = format!("runs/{:04}-c{}-r{}", r.id, r.cell, r.rep);
    let dir = out.join(&rel);
    if dir.exists() {
        // A run killed half-way: its partial record is replaced.
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let started_unix = crate::util::unix_now();
    let mut metrics = BTreeMap::new();
    let res = (|| -> Result<()> {
        apply_cell(b, plan, out, cell, r.seed)?;
        if let Some(p) = plan.file.pause {
            stop.sleep(p);
        }
        if let Some(h) = &plan.file.hooks.pre {
            hook(b, h, "pre")?;
        }
        if plan.timeline.is_some() {
            timeline(b, plan.timeline.as_ref())?;
        }
        let res = (|| {
            for w in &plan.file.workloads {
                if stop.requested() {
                    bail!("interrupted");
                }
                workload(b, w, cell, &dir, stop, &mut metrics)?;
            }
            Ok(())
        })();
        if plan.timeline.is_some() {
            timeline(b, None)?;
        }
        res?;
        if let Some(h) = &plan.file.hooks.post {
            hook(b, h, "post")?;
        }
        Ok(())
    })();
    Ok(RunResult {
        id: r.id,
        cell: r.cell,
        rep: r.rep,
        seed: r.seed,
        order,
        started_unix,
        ended_unix: crate::util::unix_now(),
        ok: res.is_ok(),
        error: res.err().map(|e| format!("{e:#}")),
        metrics,
        record: rel,
        class_rule: cell.rule.as_ref().map(|r| r.name.clone()),
    })
}

/// Append one result line and make it durable before the next run starts.
fn append(out: &Path, r: &RunResult) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join(RESULTS))?;
    writeln!(f, "{}", serde_json::to_string(r)?)?;
    f.sync_data()?;
    Ok(())
}

/// Prepare `out`: a new sweep (the directory must not hold one) or a resumed one (the same
/// file). Returns the manifest and the results so far.
pub fn prepare(
    plan: &Plan,
    file_text: &str,
    out: &Path,
    resume: bool,
) -> Result<(Manifest, Vec<RunResult>)> {
    if resume {
        let m = read_manifest(out)?;
        if m.file_text != file_text {
            bail!(
                "{}: the sweep file changed since this sweep started; resume with the same file or start a new --out",
                out.display()
            );
        }
        // A killed sweep's lab (its namespaces would clash with nothing, but they hold
        // memory): remove it.
        if lab::list_labs().contains(&m.lab) {
            let _ = lab::down(&m.lab);
        }
        let done = read_results(out)?;
        return Ok((m, done));
    }
    if out.join(MANIFEST).exists() {
        bail!(
            "{} already holds a sweep (use --resume {} to finish it, or another --out)",
            out.display(),
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let m = Manifest {
        format: FORMAT.into(),
        version: 1,
        file_text: file_text.into(),
        plan: plan.clone(),
        host: Host::now(),
        lab: String::new(),
        started_unix: crate::util::unix_now(),
    };
    Ok((m, vec![]))
}

/// Run every run not in `done`, in the plan's order. Returns all results (old and new).
pub fn execute(
    plan: &Plan,
    mut manifest: Manifest,
    mut done: Vec<RunResult>,
    out: &Path,
    stop: &Stop,
) -> Result<Vec<RunResult>> {
    let finished: std::collections::BTreeSet<usize> = done.iter().map(|r| r.id).collect();
    let todo: Vec<&RunPlan> = plan
        .runs
        .iter()
        .filter(|r| !finished.contains(&r.id))
        .collect();
    if todo.is_empty() {
        return Ok(done);
    }
    manifest.lab = format!("swp{}", std::process::id() % 100_000);
    std::fs::write(out.join(MANIFEST), serde_json::to_string_pretty(&manifest)?)?;
    let mut b = setup(plan, out, &manifest.lab)?;
    let mut bar = crate::progress::Progress::new(plan.runs.len() as u64, "runs");
    let t0 = Instant::now();
    for r in todo {
        if stop.requested() {
            bail!(
                "interrupted: {} of {} runs done; `wirelab sweep --resume {}` runs the rest",
                done.len(),
                plan.runs.len(),
                out.display()
            );
        }
        let res = one_run(&mut b, plan, out, r, done.len(), stop)?;
        if !res.ok {
            tracing::warn!(
                run = r.id,
                cell = r.cell,
                rep = r.rep,
                "run failed: {}",
                res.error.as_deref().unwrap_or("")
            );
            if stop.requested() {
                continue;
            }
        }
        append(out, &res)?;
        done.push(res);
        bar.set(
            done.len() as u64,
            &format!("{:.0}s", t0.elapsed().as_secs_f64()),
        );
    }
    bar.finish();
    drop(b);
    Ok(done)
}
