//! `wirelab swarm connect`: built-in TCP load, one connection per client, no process per
//! client.
//!
//! Identity is per socket: before each connect the socket's cookie (`SO_COOKIE`) is mapped to
//! the client's address in `SWARM_SOCKS`; `swarm_connect4` looks the cookie up first and binds
//! the socket to that address (port 0), exactly as it does for a cgroup's processes. The entry
//! is removed once connect has returned. The process itself sits in the run's cgroup so the
//! programs see its sockets.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{percentile, Swarm};
use crate::{record::LineKind, util::Stop};

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub to: SocketAddrV4,
    /// How long each connection stays open once established (and data exchanged).
    pub hold: Duration,
    /// New connections per second (None: as fast as the concurrency allows).
    pub rate: Option<f64>,
    /// Connections in flight or held at once (default: all clients).
    pub concurrency: u32,
    /// Per connection, for connecting and for each send/receive.
    pub timeout: Duration,
    /// Bytes to send after connecting.
    pub send: usize,
    /// Bytes to read back before holding.
    pub recv: usize,
    /// Live counts, for a sampler thread (`--record` series, `--metrics`).
    pub progress: Arc<ConnectProgress>,
}

/// Live counts of a `swarm connect` run, updated as connections progress.
#[derive(Debug, Default)]
pub struct ConnectProgress {
    /// Clients whose connection was started.
    pub attempted: AtomicU32,
    /// Connections established so far (a later send/recv failure still counts here).
    pub established: AtomicU32,
    /// Clients that ended with an error (connect, send, recv, timeout).
    pub failed: AtomicU32,
    /// Clients that ended well (connected, sent/received, held, closed).
    pub succeeded: AtomicU32,
    /// Connections established and not yet closed.
    pub open: AtomicU32,
}

impl ConnectProgress {
    pub fn snapshot(&self, t: f64) -> ConnectSample {
        let g = |a: &AtomicU32| a.load(Ordering::Relaxed);
        ConnectSample {
            kind: LineKind::Interval,
            t,
            attempted: g(&self.attempted),
            established: g(&self.established),
            failed: g(&self.failed),
            succeeded: g(&self.succeeded),
            open: g(&self.open),
        }
    }
}

/// Where a `swarm connect` run stands (`--record` series, `--metrics`): the counts of
/// [`ConnectProgress`] at one moment.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ConnectSample {
    #[serde(rename = "type")]
    pub kind: LineKind,
    /// Seconds since the run started.
    pub t: f64,
    pub attempted: u32,
    pub established: u32,
    pub failed: u32,
    pub succeeded: u32,
    pub open: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectSummary {
    pub run_id: String,
    pub to: String,
    pub clients: u32,
    /// Sockets open at most at once (the planned `--concurrency`).
    pub concurrency: u32,
    pub attempted: u32,
    pub connected: u32,
    /// Connections whose local address was the client's own (checked with getsockname).
    pub identity_ok: u32,
    pub failed: u32,
    pub failures: BTreeMap<String, u32>,
    pub distinct_local_ips: u32,
    pub connect_p50_ms: f64,
    pub connect_p99_ms: f64,
    /// Connections established per second over the connect phase.
    pub connects_per_s: f64,
    pub connect_phase_s: f64,
    pub wall_s: f64,
    /// Resident memory of this process at the peak divided by clients (bytes).
    pub rss_per_client_bytes: u64,
    pub interrupted: bool,
    pub stats: BTreeMap<String, u64>,
}

struct Outcome {
    ip: Ipv4Addr,
    result: Result<(Duration, Ipv4Addr, Instant), String>,
}

fn cookie(fd: i32) -> Result<u64> {
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(SO_COOKIE)");
    }
    Ok(v)
}

fn kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(c) => nix::errno::Errno::from_raw(c).to_string(),
        None => e.kind().to_string(),
    }
}

async fn one(
    socks: Arc<Mutex<BpfHashMap<MapData, u64, u32>>>,
    ip: Ipv4Addr,
    o: Arc<ConnectOptions>,
    stop: Stop,
) -> Outcome {
    let p = o.progress.clone();
    p.attempted.fetch_add(1, Ordering::Relaxed);
    let mut up = false;
    let r = async {
        let s = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {}", kind(&e)))?;
        let ck = cookie(s.as_raw_fd()).map_err(|e| format!("{e:#}"))?;
        socks
            .lock()
            .map_err(|_| "map lock".to_string())?
            .insert(ck, u32::from(ip).to_be(), 0)
            .map_err(|e| format!("socket map: {e}"))?;
        let t = Instant::now();
        let c = tokio::time::timeout(o.timeout, s.connect(SocketAddr::V4(o.to))).await;
        if let Ok(mut m) = socks.lock() {
            let _ = m.remove(&ck);
        }
        let mut stream = match c {
            Err(_) => return Err("connect timeout".to_string()),
            Ok(Err(e)) => return Err(kind(&e)),
            Ok(Ok(s)) => s,
        };
        let lat = t.elapsed();
        up = true;
        p.established.fetch_add(1, Ordering::Relaxed);
        p.open.fetch_add(1, Ordering::Relaxed);
        let local = match stream.local_addr() {
            Ok(SocketAddr::V4(a)) => *a.ip(),
            _ => Ipv4Addr::UNSPECIFIED,
        };
        let established = Instant::now();
        if o.send > 0 {
            let buf = vec![b'w'; o.send];
            stream
                .write_all(&buf)
                .await
                .map_err(|e| format!("send: {}", kind(&e)))?;
        }
        if o.recv > 0 {
            let mut buf = vec![0u8; o.recv];
            tokio::time::timeout(o.timeout, stream.read_exact(&mut buf))
                .await
                .map_err(|_| "recv timeout".to_string())?
                .map_err(|e| format!("recv: {}", kind(&e)))?;
        }
        let end = established + o.hold;
        while Instant::now() < end && !stop.requested() {
            tokio::time::sleep((end - Instant::now()).min(Duration::from_millis(100))).await;
        }
        Ok((lat, local, established))
    }
    .await;
    if up {
        p.open.fetch_sub(1, Ordering::Relaxed);
    }
    if r.is_err() {
        p.failed.fetch_add(1, Ordering::Relaxed);
    } else {
        p.succeeded.fetch_add(1, Ordering::Relaxed);
    }
    Outcome { ip, result: r }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// File descriptors wirelab itself holds during `swarm connect`, kept free of the sockets'
/// share: the maps of swarm's eBPF object (6, a descriptor each), its programs and links,
/// netlink, the cgroup, metrics and record files, stdio, with room to spare. `run` checks the
/// real count against it.
pub const OWN_FDS: u64 = 128;

/// Descriptors this process holds now.
fn open_fds() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64)
}

/// The concurrency `swarm connect` runs with, settled before anything is attached.
#[derive(Debug, Clone, PartialEq)]
pub struct Concurrency {
    pub value: u32,
    /// Why the default was lowered, for the user (None when it was not).
    pub notice: Option<String>,
}

/// Raise RLIMIT_NOFILE's soft limit to the hard one, then settle the concurrency: an
/// explicit `--concurrency` must fit beside wirelab's own descriptors (the error names both
/// numbers); the default (one socket per client) is lowered to what fits, and says so.
pub fn plan_concurrency(requested: Option<u32>, clients: u32) -> Result<Concurrency> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(NOFILE)")?;
    }
    concurrency_within(requested, clients, hard)
}

fn concurrency_within(requested: Option<u32>, clients: u32, nofile: u64) -> Result<Concurrency> {
    let room = nofile.saturating_sub(OWN_FDS);
    match requested {
        Some(0) => bail!("--concurrency must be at least 1"),
        Some(n) if n as u64 > room => bail!(
            "--concurrency {n} needs {n} open sockets, plus {OWN_FDS} descriptors wirelab holds itself, \
             but RLIMIT_NOFILE allows {nofile}: use --concurrency {room} or less, or raise the hard limit (ulimit -Hn)"
        ),
        Some(n) => Ok(Concurrency {
            value: n,
            notice: None,
        }),
        None => {
            let want = clients.max(1);
            if room == 0 {
                bail!(
                    "RLIMIT_NOFILE is {nofile}, no more than the {OWN_FDS} descriptors wirelab holds itself: raise it (ulimit -n)"
                );
            }
            if want as u64 <= room {
                return Ok(Concurrency {
                    value: want,
                    notice: None,
                });
            }
            let value = room.min(u32::MAX as u64) as u32;
            Ok(Concurrency {
                value,
                notice: Some(format!(
                    "concurrency {value} instead of one per client ({want}): RLIMIT_NOFILE {nofile} minus {OWN_FDS} of wirelab's own; \
                     clients beyond that wait for a free socket (raise ulimit -n for more at once)"
                )),
            })
        }
    }
}

pub fn run(sw: &mut Swarm, o: ConnectOptions, stop: &Stop) -> Result<ConnectSummary> {
    if o.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if o.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of connections per second");
    }
    // Settled by plan_concurrency before setup; checked again for callers that did not.
    plan_concurrency(Some(o.concurrency), sw.opts.clients)?;
    // The estimate must hold now that everything is loaded and attached.
    if let Some(n) = open_fds().filter(|n| *n > OWN_FDS) {
        tracing::warn!(
            "wirelab holds {n} descriptors, more than the {OWN_FDS} set aside for them: \
             some of the {} sockets may fail with EMFILE",
            o.concurrency
        );
    }
    let concurrency = o.concurrency;
    let socks = Arc::new(Mutex::new(
        sw.take_socket_map().context("socket map already in use")?,
    ));
    sw.enter_cgroup()?;
    let clients = sw.opts.clients;
    let pool = sw.opts.pool;
    let to_str = o.to.to_string();
    let o = Arc::new(o);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let t0 = Instant::now();
    let stop2 = stop.clone();
    let (outcomes, peak_rss, interrupted) = rt.block_on(async move {
        let sem = Arc::new(tokio::sync::Semaphore::new(o.concurrency as usize));
        let mut set = tokio::task::JoinSet::new();
        let mut peak = 0u64;
        let mut interrupted = false;
        for n in 0..clients {
            if stop2.requested() {
                interrupted = true;
                break;
            }
            if let Some(r) = o.rate {
                let due = t0 + Duration::from_secs_f64(n as f64 / r);
                let now = Instant::now();
                if due > now {
                    tokio::time::sleep(due - now).await;
                }
            }
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break;
            };
            if n.is_multiple_of(256) {
                peak = peak.max(rss_bytes());
            }
            let (socks, o, st) = (socks.clone(), o.clone(), stop2.clone());
            let ip = pool.addr(n);
            set.spawn(async move {
                let r = one(socks, ip, o, st).await;
                drop(permit);
                r
            });
        }
        let mut out = Vec::with_capacity(clients as usize);
        let mut k = 0u32;
        while let Some(r) = set.join_next().await {
            if let Ok(x) = r {
                out.push(x);
            }
            k += 1;
            if k.is_multiple_of(256) {
                peak = peak.max(rss_bytes());
            }
        }
        peak = peak.max(rss_bytes());
        (out, peak, interrupted || stop2.requested())
    });
    let wall = t0.elapsed().as_secs_f64();
    let mut lats = vec![];
    let mut failures = BTreeMap::new();
    let mut identity_ok = 0u32;
    let mut ips = std::collections::HashSet::new();
    let mut last_established = t0;
    for oc in &outcomes {
        match &oc.result {
            Ok((lat, local, est)) => {
                lats.push(lat.as_secs_f64() * 1000.0);
                if *local == oc.ip {
                    identity_ok += 1;
                }
                ips.insert(*local);
                last_established = last_established.max(*est);
            }
            Err(e) => *failures.entry(e.clone()).or_insert(0u32) += 1,
        }
    }
    lats.sort_by(|a, b| a.total_cmp(b));
    let connected = lats.len() as u32;
    let phase = (last_established - t0).as_secs_f64();
    Ok(ConnectSummary {
        run_id: sw.state.run_id.clone(),
        to: to_str,
        clients,
        concurrency,
        attempted: outcomes.len() as u32,
        connected,
        identity_ok,
        failed: outcomes.len() as u32 - connected,
        failures,
        distinct_local_ips: ips.len() as u32,
        connect_p50_ms: percentile(&lats, 50.0),
        connect_p99_ms: percentile(&lats, 99.0),
        connects_per_s: if phase > 0.0 {
            connected as f64 / phase
        } else {
            0.0
        },
        connect_phase_s: phase,
        wall_s: wall,
        rss_per_client_bytes: peak_rss / clients.max(1) as u64,
        interrupted,
        stats: sw.stats(),
    })
}

pub fn print_summary(s: &ConnectSummary, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "swarm connect {}: {} clients to {}",
        s.run_id, s.clients, s.to
    )?;
    writeln!(
        out,
        "  attempted {}  connected {}  failed {}  local address = client address: {}  distinct local IPs: {}{}",
        s.attempted,
        s.connected,
        s.failed,
        s.identity_ok,
        s.distinct_local_ips,
        if s.interrupted { "  (interrupted)" } else { "" }
    )?;
    super::write_failures(out, &s.failures, 20)?;
    writeln!(
        out,
        "  connect p50 {:.2} ms  p99 {:.2} ms  {:.0} connections/s over {:.2}s  wall {:.2}s",
        s.connect_p50_ms, s.connect_p99_ms, s.connects_per_s, s.connect_phase_s, s.wall_s
    )?;
    writeln!(
        out,
        "  memory: {} bytes RSS per client (peak)",
        s.rss_per_client_bytes
    )?;
    super::write_kernel_stats(out, &s.stats)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_fits_the_descriptor_limit() {
        // The case: 20,000 clients, hard limit 20,000.
        let c = concurrency_within(None, 20_000, 20_000).unwrap();
        assert_eq!(c.value, 20_000 - OWN_FDS as u32);
        let n = c.notice.unwrap();
        assert!(
            n.contains("19872") && n.contains("20000") && n.contains("128"),
            "{n}"
        );
        assert_eq!(
            concurrency_within(None, 300, 20_000).unwrap(),
            Concurrency {
                value: 300,
                notice: None
            }
        );
        let e = concurrency_within(Some(20_000), 20_000, 20_000)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--concurrency 20000 needs 20000")
                && e.contains("plus 128")
                && e.contains("19872"),
            "{e}"
        );
        assert!(concurrency_within(Some(0), 1, 20_000).is_err());
        assert!(concurrency_within(None, 10, OWN_FDS).is_err());
    }
}
