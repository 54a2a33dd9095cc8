//! `wirelab swarm run`: start a command once per client, at most C at a time, each in its own
//! cgroup (cgroup identity) or once in the run's cgroup (process identity).
use std::{
    collections::BTreeMap,
    fs::File,
    io::Write as _,
    net::Ipv4Addr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{cgroup, client_mac, percentile, Identity, Swarm};
use crate::{
    record::LineKind,
    util::{unix_now, Stop},
};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub concurrency: u32,
    /// How often `run_with` samples (the `--record` series and `--metrics`).
    pub interval: Duration,
    pub timeout: Option<Duration>,
    pub out: Option<PathBuf>,
    pub cmd: Vec<String>,
}

/// One client's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientResult {
    pub n: u32,
    pub ip: String,
    pub mac: String,
    /// `exit 0`, `exit 3`, `signal 9`, `timeout`, `interrupted` or `spawn failed`.
    pub status: String,
    pub exit_code: Option<i32>,
    pub ok: bool,
    pub start_unix: f64,
    pub duration_s: f64,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub run_id: String,
    pub iface: String,
    pub pool: String,
    pub identity: Identity,
    pub clients: u32,
    pub run: u32,
    pub succeeded: u32,
    pub failed: u32,
    /// Failed clients grouped by status (`exit 1`: 3, `timeout`: 2, ...).
    pub failures: BTreeMap<String, u32>,
    pub duration_p50_s: f64,
    pub duration_p99_s: f64,
    pub wall_s: f64,
    pub interrupted: bool,
    /// Kernel-side counters (binds, ARP replies, MAC rewrites...).
    pub stats: BTreeMap<String, u64>,
    /// Process identity: the addresses handed out, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_addresses: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_file: Option<PathBuf>,
}

/// `swarm run`'s final record (`--record`): the summary and every client's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub summary: Summary,
    pub clients: Vec<ClientResult>,
}

/// Replace `{ip}`, `{mac}` and `{index}` (short form `{n}`) in one argument.
pub fn substitute(arg: &str, n: u32, ip: Ipv4Addr, mac: &str) -> String {
    arg.replace("{ip}", &ip.to_string())
        .replace("{mac}", mac)
        .replace("{index}", &n.to_string())
        .replace("{n}", &n.to_string())
}

struct Running {
    n: u32,
    ip: Ipv4Addr,
    child: Child,
    cg: PathBuf,
    cgid: u64,
    start: Instant,
    start_unix: f64,
    out: Option<(PathBuf, PathBuf)>,
}

fn status_of(st: std::process::ExitStatus) -> (String, Option<i32>, bool) {
    use std::os::unix::process::ExitStatusExt as _;
    match (st.code(), st.signal()) {
        (Some(c), _) => (format!("exit {c}"), Some(c), c == 0),
        (None, Some(s)) => (format!("signal {s}"), None, false),
        _ => ("unknown".into(), None, false),
    }
}

/// A started client: its process, cgroup, cgroup id and output files.
type Spawned = (Child, PathBuf, u64, Option<(PathBuf, PathBuf)>);

fn spawn_client(sw: &mut Swarm, o: &RunOptions, n: u32, ip: Ipv4Addr) -> Result<Spawned> {
    let mac = client_mac(sw.opts.mac_prefix, ip);
    let cg = sw.state.cgroup.join(format!("c{n}"));
    std::fs::create_dir(&cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
    let cgid = cgroup::id(&cg)?;
    if sw.opts.identity == Identity::Cgroup {
        sw.map_cgroup(cgid, ip)?;
    }
    let args: Vec<String> = o.cmd.iter().map(|a| substitute(a, n, ip, &mac)).collect();
    let mut c = Command::new(&args[0]);
    c.args(&args[1..])
        .env("WIRELAB_SWARM_N", n.to_string())
        .env("WIRELAB_SWARM_IP", ip.to_string())
        .env("WIRELAB_SWARM_MAC", &mac)
        .stdin(Stdio::null());
    let out = match &o.out {
        Some(dir) => {
            let so = dir.join(format!("client-{n}.out"));
            let se = dir.join(format!("client-{n}.err"));
            c.stdout(File::create(&so).with_context(|| format!("creating {}", so.display()))?);
            c.stderr(File::create(&se).with_context(|| format!("creating {}", se.display()))?);
            Some((so, se))
        }
        None => {
            c.stdout(Stdio::null()).stderr(Stdio::null());
            None
        }
    };
    // Join the client's cgroup between fork and exec, so that everything the command does,
    // including its first connect, already counts as this client.
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cg.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", cg.display()))?;
    let fd = procs.as_raw_fd();
    unsafe {
        c.pre_exec(move || {
            // Only async-signal-safe calls here: write(2) of "0" (= this process).
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = c
        .spawn()
        .with_context(|| format!("starting {:?}", args[0]))?;
    drop(procs);
    Ok((child, cg, cgid, out))
}

fn finish_client(sw: &mut Swarm, r: &Running) {
    // The command is done: anything it left running in its cgroup goes with it.
    cgroup::kill(&r.cg);
    if let Err(e) = cgroup::rmdir(&r.cg, Duration::from_secs(5)) {
        tracing::warn!("{e:#}");
    }
    sw.unmap_cgroup(r.cgid);
}

/// Where a run stands (sampled about once a second for `--record`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    #[serde(rename = "type")]
    pub kind: LineKind,
    pub t: f64,
    pub done: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub total: u32,
    /// The kernel programs' counters so far (bind_ok, arp_replies, ...).
    pub stats: BTreeMap<String, u64>,
}

/// Run the command for every client. Returns the summary and per-client results.
pub fn run(sw: &mut Swarm, o: &RunOptions, stop: &Stop) -> Result<(Summary, Vec<ClientResult>)> {
    run_with(sw, o, stop, &mut |_| {})
}

/// [`run`], calling `sample` about every `o.interval` and at the end.
pub fn run_with(
    sw: &mut Swarm,
    o: &RunOptions,
    stop: &Stop,
    sample: &mut dyn FnMut(&Sample),
) -> Result<(Summary, Vec<ClientResult>)> {
    if o.cmd.is_empty() {
        bail!("no command given: put it after `--`");
    }
    if o.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if let Some(d) = &o.out {
        std::fs::create_dir_all(d).with_context(|| format!("creating --out {}", d.display()))?;
    }
    // Process identity: the command runs once; its processes take addresses as they connect.
    let total = match sw.opts.identity {
        Identity::Cgroup => sw.opts.clients,
        Identity::Process => 1,
    };
    let t0 = Instant::now();
    let mut bar = crate::progress::Progress::new(total as u64, "clients");
    let mut last_progress = Instant::now();
    let mut last_sample = Instant::now();
    let mut results: Vec<ClientResult> = Vec::with_capacity(total as usize);
    let mut running: Vec<Running> = vec![];
    let mut next = 0u32;
    let mut interrupted = false;
    loop {
        if stop.requested() && !interrupted {
            interrupted = true;
            tracing::warn!("interrupted: stopping {} running clients", running.len());
            for r in &running {
                cgroup::kill(&r.cg);
            }
        }
        if !interrupted {
            start_clients(sw, o, &mut next, total, &mut running, &mut results);
        }
        reap(sw, o, interrupted, &mut running, &mut results);
        let snap = |results: &[ClientResult], running: usize, stats| {
            let ok = results.iter().filter(|r| r.ok).count() as u32;
            Sample {
                kind: LineKind::Interval,
                t: t0.elapsed().as_secs_f64(),
                done: results.len() as u32,
                running: running as u32,
                succeeded: ok,
                failed: results.len() as u32 - ok,
                total,
                stats,
            }
        };
        if last_progress.elapsed() > Duration::from_millis(200) {
            last_progress = Instant::now();
            bar.set(
                results.len() as u64,
                &format!("done, {} running", running.len()),
            );
        }
        if last_sample.elapsed() >= o.interval {
            last_sample = Instant::now();
            sample(&snap(&results, running.len(), sw.stats()));
        }
        if running.is_empty() && (next >= total || interrupted) {
            sample(&snap(&results, 0, sw.stats()));
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bar.finish();
    results.sort_by_key(|r| r.n);
    let summary = summarize(sw, o, &results, t0, interrupted)?;
    Ok((summary, results))
}

/// Start clients while there are clients left and room under `o.concurrency`; one that
/// cannot be started is a result at once (`spawn failed`).
fn start_clients(
    sw: &mut Swarm,
    o: &RunOptions,
    next: &mut u32,
    total: u32,
    running: &mut Vec<Running>,
    results: &mut Vec<ClientResult>,
) {
    while *next < total && (running.len() as u32) < o.concurrency {
        let n = *next;
        *next += 1;
        let ip = sw.opts.pool.addr(n);
        let start_unix = unix_now();
        match spawn_client(sw, o, n, ip) {
            Ok((child, cg, cgid, out)) => running.push(Running {
                n,
                ip,
                child,
                cg,
                cgid,
                start: Instant::now(),
                start_unix,
                out,
            }),
            Err(e) => {
                let cg = sw.state.cgroup.join(format!("c{n}"));
                let _ = cgroup::rmdir(&cg, Duration::from_secs(1));
                results.push(ClientResult {
                    n,
                    ip: ip.to_string(),
                    mac: client_mac(sw.opts.mac_prefix, ip),
                    status: "spawn failed".into(),
                    exit_code: None,
                    ok: false,
                    start_unix,
                    duration_s: 0.0,
                    stdout: None,
                    stderr: None,
                    error: Some(format!("{e:#}")),
                });
            }
        }
    }
}

/// Collect the clients that ended (killing those past `o.timeout`) as results.
fn reap(
    sw: &mut Swarm,
    o: &RunOptions,
    interrupted: bool,
    running: &mut Vec<Running>,
    results: &mut Vec<ClientResult>,
) {
    let mut i = 0;
    while i < running.len() {
        let timed_out = o.timeout.is_some_and(|t| running[i].start.elapsed() > t);
        if timed_out {
            cgroup::kill(&running[i].cg);
        }
        let done = match running[i].child.try_wait() {
            Ok(Some(st)) => Some(st),
            Ok(None) if timed_out => running[i].child.wait().ok(),
            Ok(None) => None,
            Err(_) => running[i].child.wait().ok(),
        };
        let Some(st) = done else {
            i += 1;
            continue;
        };
        let r = running.swap_remove(i);
        let dur = r.start.elapsed().as_secs_f64();
        finish_client(sw, &r);
        let (mut status, code, mut ok) = status_of(st);
        if timed_out {
            status = "timeout".into();
            ok = false;
        } else if interrupted && !ok {
            status = "interrupted".into();
        }
        results.push(ClientResult {
            n: r.n,
            ip: r.ip.to_string(),
            mac: client_mac(sw.opts.mac_prefix, r.ip),
            status,
            exit_code: code,
            ok,
            start_unix: r.start_unix,
            duration_s: dur,
            stdout: r.out.as_ref().map(|x| x.0.clone()),
            stderr: r.out.as_ref().map(|x| x.1.clone()),
            error: None,
        });
    }
}

/// The run's summary from its results (in client order); writes `results.json` to `--out`.
fn summarize(
    sw: &Swarm,
    o: &RunOptions,
    results: &[ClientResult],
    t0: Instant,
    interrupted: bool,
) -> Result<Summary> {
    let mut durs: Vec<f64> = results.iter().map(|r| r.duration_s).collect();
    durs.sort_by(|a, b| a.total_cmp(b));
    let mut failures = BTreeMap::new();
    for r in results.iter().filter(|r| !r.ok) {
        *failures.entry(r.status.clone()).or_insert(0u32) += 1;
    }
    let succeeded = results.iter().filter(|r| r.ok).count() as u32;
    let results_file = match &o.out {
        Some(d) => {
            let p = d.join("results.json");
            let mut f = File::create(&p).with_context(|| format!("creating {}", p.display()))?;
            f.write_all(&serde_json::to_vec_pretty(results)?)?;
            Some(p)
        }
        None => None,
    };
    let summary = Summary {
        run_id: sw.state.run_id.clone(),
        iface: sw.opts.iface.clone(),
        pool: sw.opts.pool.net.to_string(),
        identity: sw.opts.identity,
        clients: sw.opts.clients,
        run: results.len() as u32,
        succeeded,
        failed: results.len() as u32 - succeeded,
        failures,
        duration_p50_s: percentile(&durs, 50.0),
        duration_p99_s: percentile(&durs, 99.0),
        wall_s: t0.elapsed().as_secs_f64(),
        interrupted,
        stats: sw.stats(),
        process_addresses: (sw.opts.identity == Identity::Process).then(|| {
            sw.process_addresses()
                .iter()
                .map(|a| a.to_string())
                .collect()
        }),
        results_file,
    };
    Ok(summary)
}

pub fn print_summary(s: &Summary, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "swarm {}: {} clients from {} on {} ({} identity)",
        s.run_id,
        s.clients,
        s.pool,
        s.iface,
        match s.identity {
            Identity::Cgroup => "cgroup",
            Identity::Process => "process",
        }
    )?;
    writeln!(
        out,
        "  run {}  succeeded {}  failed {}{}",
        s.run,
        s.succeeded,
        s.failed,
        if s.interrupted { "  (interrupted)" } else { "" }
    )?;
    super::write_failures(out, &s.failures, 14)?;
    writeln!(
        out,
        "  duration p50 {:.3}s  p99 {:.3}s  wall {:.2}s",
        s.duration_p50_s, s.duration_p99_s, s.wall_s
    )?;
    super::write_kernel_stats(out, &s.stats)?;
    if let Some(a) = &s.process_addresses {
        writeln!(out, "  process addresses handed out: {}", a.len())?;
    }
    if let Some(p) = &s.results_file {
        writeln!(out, "  per-client results: {}", p.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn placeholders() {
        assert_eq!(
            substitute(
                "x{ip}-{mac}-{n}{index}",
                7,
                Ipv4Addr::new(198, 18, 4, 8),
                "02:57:c6:12:04:08"
            ),
            "x198.18.4.8-02:57:c6:12:04:08-77"
        );
        assert_eq!(substitute("plain", 1, Ipv4Addr::LOCALHOST, "m"), "plain");
    }
}
