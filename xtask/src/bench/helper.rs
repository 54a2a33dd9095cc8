//! `xtask bench-helper …`: small peers the benchmarks run inside lab namespaces
//! (`ip netns exec NS xtask bench-helper …`). Not for direct use.
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum HelperCmd {
    /// Accept TCP connections, count distinct peer addresses, close each at once. Prints
    /// `{"accepted":N,"distinct_peers":M}` on stdout at SIGTERM or after --max-secs.
    TcpSink {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long, default_value_t = 300)]
        max_secs: u64,
    },
    /// The old way: one TCP connection per client address, each socket bound explicitly to
    /// its address (which must already be on an interface) before connect.
    BindConnect {
        /// Client n uses the n-th host address of this pool (as `wirelab swarm` numbers them).
        #[arg(long)]
        pool: String,
        #[arg(long)]
        clients: u32,
        #[arg(long)]
        to: SocketAddrV4,
        #[arg(long)]
        concurrency: u32,
        #[arg(long, default_value_t = 1000)]
        hold_ms: u64,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
}

pub fn run(cmd: HelperCmd) -> Result<()> {
    match cmd {
        HelperCmd::TcpSink { bind, max_secs } => tcp_sink(bind, Duration::from_secs(max_secs)),
        HelperCmd::BindConnect {
            pool,
            clients,
            to,
            concurrency,
            hold_ms,
            timeout_secs,
        } => bind_connect(
            &pool,
            clients,
            to,
            concurrency,
            Duration::from_millis(hold_ms),
            Duration::from_secs(timeout_secs),
        ),
    }
}

fn tcp_sink(bind: SocketAddr, max: Duration) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    let l = TcpListener::bind(bind).with_context(|| format!("binding {bind}"))?;
    // A deep accept queue for bursts of thousands of new clients.
    unsafe { libc::listen(l.as_raw_fd(), 16384) };
    l.set_nonblocking(true)?;
    eprintln!("tcp-sink listening on {bind}");
    let t0 = Instant::now();
    let mut peers: HashSet<IpAddr> = HashSet::new();
    let mut accepted = 0u64;
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < max {
        match l.accept() {
            Ok((s, a)) => {
                accepted += 1;
                peers.insert(a.ip());
                drop(s);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    println!(
        "{}",
        serde_json::json!({"accepted": accepted, "distinct_peers": peers.len()})
    );
    Ok(())
}

/// The n-th host address of a pool, numbered like `wirelab swarm` (network address skipped
/// for prefixes shorter than /31).
pub fn pool_addr(pool: &str, n: u32) -> Result<Ipv4Addr> {
    let (a, p) = pool.split_once('/').context("pool: ADDR/PREFIX")?;
    let a: Ipv4Addr = a.parse().context("pool address")?;
    let p: u32 = p.parse().context("pool prefix")?;
    if p > 32 {
        bail!("pool prefix {p} > 32");
    }
    let size = 1u64 << (32 - p);
    let (first, count) = if p < 31 { (1, size - 2) } else { (0, size) };
    if n as u64 >= count {
        bail!("client {n} does not fit in {pool}");
    }
    Ok(Ipv4Addr::from(u32::from(a) + first as u32 + n))
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .map(|p: u64| p * 4096)
        .unwrap_or(0)
}

fn bind_connect(
    pool: &str,
    clients: u32,
    to: SocketAddrV4,
    concurrency: u32,
    hold: Duration,
    timeout: Duration,
) -> Result<()> {
    use nofile::raise;
    raise(concurrency as u64 + 64)?;
    let mut addrs = vec![];
    for n in 0..clients {
        addrs.push(pool_addr(pool, n)?);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let t0 = Instant::now();
    let (results, peak) = rt.block_on(async move {
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1) as usize));
        let mut set = tokio::task::JoinSet::new();
        let mut peak = 0;
        for (n, ip) in addrs.into_iter().enumerate() {
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break;
            };
            if n % 256 == 0 {
                peak = rss_bytes().max(peak);
            }
            set.spawn(async move {
                let r = async {
                    let s = tokio::net::TcpSocket::new_v4()?;
                    s.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))?;
                    let c0 = Instant::now();
                    let st = tokio::time::timeout(timeout, s.connect(SocketAddr::V4(to)))
                        .await
                        .map_err(|_| std::io::Error::other("timeout"))??;
                    let est = Instant::now();
                    let local = st.local_addr()?;
                    tokio::time::sleep(hold).await;
                    Ok::<_, std::io::Error>((est - c0, est, local.ip()))
                }
                .await;
                drop(permit);
                (ip, r)
            });
        }
        let mut out = vec![];
        while let Some(r) = set.join_next().await {
            if let Ok(x) = r {
                out.push(x);
            }
            if out.len() % 256 == 0 {
                peak = rss_bytes().max(peak);
            }
        }
        (out, peak.max(rss_bytes()))
    });
    let wall = t0.elapsed().as_secs_f64();
    let mut lats = vec![];
    let mut last = t0;
    let mut ips = HashSet::new();
    let mut ok_id = 0;
    let mut failed = 0;
    for (ip, r) in &results {
        match r {
            Ok((lat, est, local)) => {
                lats.push(lat.as_secs_f64() * 1000.0);
                last = last.max(*est);
                ips.insert(*local);
                if *local == IpAddr::V4(*ip) {
                    ok_id += 1;
                }
            }
            Err(_) => failed += 1,
        }
    }
    lats.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        if lats.is_empty() {
            f64::NAN
        } else {
            lats[((lats.len() - 1) as f64 * p).round() as usize]
        }
    };
    let phase = (last - t0).as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "connected": lats.len(),
            "failed": failed,
            "identity_ok": ok_id,
            "distinct_local_ips": ips.len(),
            "connect_p50_ms": q(0.5),
            "connect_p99_ms": q(0.99),
            "connects_per_s": if phase > 0.0 { lats.len() as f64 / phase } else { 0.0 },
            "connect_phase_s": phase,
            "wall_s": wall,
            "rss_per_client_bytes": peak / clients.max(1) as u64,
        })
    );
    Ok(())
}

mod nofile {
    use anyhow::{bail, Result};

    /// Soft RLIMIT_NOFILE up to the hard limit; fail when `need` does not fit.
    pub fn raise(need: u64) -> Result<()> {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        r.rlim_cur = r.rlim_max;
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
        if r.rlim_max < need {
            bail!("RLIMIT_NOFILE {} < {need}", r.rlim_max);
        }
        Ok(())
    }
}
