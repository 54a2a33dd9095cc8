//! `cargo xtask bench <tool>…`: benchmarks that drive the wirelab CLI and a reference (the
//! kernel bridge, `tc tbf`, netlink addresses…) side by side in one run, in labs they create
//! with unique names, and print the ratio. Each table is printed as Markdown with the command
//! that produced it, and also written to `target/bench/<tool>.md`.
//!
//! Adding a tool: a module with `pub fn run(ctx: &Ctx) -> Result<()>` and one line in
//! [`BENCHES`].
mod capture;
mod fw;
pub mod helper;
mod lb;
mod swarm;
mod wan;

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::root;

type BenchFn = fn(&Ctx) -> Result<()>;

/// Every benchmark: name (the `cargo xtask bench NAME` word), what it measures, entry point.
pub const BENCHES: &[(&str, &str, BenchFn)] = &[
    (
        "wan",
        "wirelab wan vs the kernel bridge and tc tbf (throughput, latency, classes, rate)",
        wan::run,
    ),
    (
        "wan-trace",
        "wirelab wan trace replay: a constant-rate trace vs `rate` at 10, 100 and 500 Mbit/s",
        wan::trace,
    ),
    (
        "swarm",
        "wirelab swarm vs N netlink addresses with explicit bind (ready time, connects/s, largest N)",
        swarm::run,
    ),
    (
        "fw",
        "wirelab fw vs nftables netdev ingress (drop rate, cost vs prefixes), gen vs trafgen",
        fw::run,
    ),
    (
        "lb",
        "wirelab lb vs HAProxy, nftables DNAT and no balancer (program ns/packet, connections/s, Maglev quality)",
        lb::run,
    ),
    (
        "capture",
        "wirelab capture vs tcpdump -w (default, -B 65536) and dumpcap (loss-free rate, 64/1500 B), iperf3 cost",
        capture::run,
    ),
];

/// Shared state of one `cargo xtask bench` invocation.
pub struct Ctx {
    stop: Arc<AtomicBool>,
    md: Mutex<String>,
}

impl Ctx {
    /// Bail out (guards clean up) when Ctrl-C or SIGTERM arrived.
    pub fn check(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Print a Markdown block and keep it for the report file.
    pub fn emit(&self, text: &str) {
        println!("{text}");
        let _ = std::io::stdout().flush();
        if let Ok(mut m) = self.md.lock() {
            m.push_str(text);
            m.push('\n');
        }
    }
}

/// A Markdown table with the command that produced it.
pub struct Table {
    pub title: String,
    pub command: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, command: &str, header: &[&str]) -> Self {
        Self {
            title: title.into(),
            command: command.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: vec![],
            notes: vec![],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    pub fn render(&self) -> String {
        let mut s = format!("\n### {}\n\n`{}`\n\n", self.title, self.command);
        s += &format!("| {} |\n", self.header.join(" | "));
        s += &format!("|{}\n", "---|".repeat(self.header.len()));
        for r in &self.rows {
            s += &format!("| {} |\n", r.join(" | "));
        }
        for n in &self.notes {
            s += &format!("\n{n}\n");
        }
        s
    }
}

pub fn bench(names: &[String]) -> Result<()> {
    let all: Vec<&str> = BENCHES.iter().map(|b| b.0).collect();
    let mut chosen = vec![];
    for n in names {
        if n == "all" {
            chosen.extend(BENCHES.iter());
        } else if let Some(b) = BENCHES.iter().find(|b| b.0 == n) {
            chosen.push(b);
        } else {
            bail!("no benchmark {n:?}: use one of {} or all", all.join(", "));
        }
    }
    if chosen.is_empty() {
        bail!("name a benchmark: {} or all", all.join(", "));
    }
    if !nix_is_root() {
        bail!("benchmarks create network namespaces: run as root");
    }
    if !wirelab_bin().exists() {
        bail!(
            "{} is missing (cargo build --release)",
            wirelab_bin().display()
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    for (name, what, f) in chosen {
        eprintln!("xtask bench {name}: {what}");
        let ctx = Ctx {
            stop: stop.clone(),
            md: Mutex::new(String::new()),
        };
        let t0 = Instant::now();
        let r = f(&ctx);
        let took = t0.elapsed().as_secs_f64();
        let md = ctx.md.lock().map(|m| m.clone()).unwrap_or_default();
        let path = dir.join(format!("{name}.md"));
        std::fs::write(&path, &md)?;
        r.with_context(|| format!("benchmark {name}"))?;
        eprintln!(
            "xtask bench {name}: done in {took:.0}s; tables in {}",
            path.display()
        );
    }
    Ok(())
}

fn nix_is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

pub fn wirelab_bin() -> PathBuf {
    root().join("target/release/wirelab")
}

pub fn wirelab() -> Command {
    Command::new(wirelab_bin())
}

pub use wirelab_testkit::{cli, in_ns, out, spawn_ready, Bg, Ready, TempDir};

/// This xtask binary, for helpers run inside namespaces (`xtask bench-helper …`).
pub fn xtask_in_ns(ns: &str) -> Result<Command> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut c = in_ns(ns, &[&exe.to_string_lossy()]);
    c.arg("bench-helper");
    Ok(c)
}

pub fn json(c: &mut Command) -> Result<serde_json::Value> {
    let s = out(c)?;
    serde_json::from_str(s.trim()).with_context(|| format!("JSON from {c:?}: {s}"))
}

/// Read a number at a JSON path (NaN when absent).
pub fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64().unwrap_or(f64::NAN)
}

pub use wirelab_testkit::Lab;

/// A lab (`wirelab lab up`) named `{prefix}{pid}`, torn down on drop.
pub fn lab_up(prefix: &str) -> Result<Lab> {
    Lab::up(
        &wirelab_bin(),
        &format!("{prefix}{}", std::process::id()),
        None,
    )
}

/// Set a /proc/sys value; the old value is put back on drop.
pub struct Sysctl {
    path: String,
    old: String,
}

impl Sysctl {
    pub fn set(path: &str, value: &str) -> Result<Self> {
        let old = std::fs::read_to_string(path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .to_string();
        std::fs::write(path, value).with_context(|| format!("writing {path}"))?;
        Ok(Self {
            path: path.into(),
            old,
        })
    }

    /// Raise a numeric value to at least `min`.
    pub fn at_least(path: &str, min: u64) -> Result<Self> {
        let cur: u64 = std::fs::read_to_string(path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .parse()
            .unwrap_or(0);
        Self::set(path, &cur.max(min).to_string())
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.old);
    }
}

/// A whole-number knob from the environment (`default` when unset).
pub fn knob(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?}: expected a whole number")),
        Err(_) => Ok(default),
    }
}

/// The median (the upper one of an even count); NaN for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here index 11 and 12.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (t(11) + t(12)) / hz
}

/// Per BPF program type, (run_cnt, run_time_ns) of the programs a process holds open, from
/// `/proc/PID/fdinfo` (needs `kernel.bpf_stats_enabled=1`).
pub fn prog_stats(pid: u32) -> BTreeMap<u32, (u64, u64)> {
    let mut m = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return m;
    };
    for e in rd.flatten() {
        let Ok(t) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            t.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(ty), Some(cnt), Some(ns)) = (
            field("prog_type:"),
            field("run_cnt:"),
            field("run_time_ns:"),
        ) {
            let x = m.entry(ty as u32).or_insert((0, 0));
            x.0 += cnt;
            x.1 += ns;
        }
    }
    m
}

/// Sum of `memlock:` over the BPF maps a process holds (kernel memory of its maps).
pub fn map_memlock(pid: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    let mut sum = 0;
    for e in rd.flatten() {
        let Ok(t) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if !t.contains("map_type:") {
            continue;
        }
        sum += t
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    sum
}

pub fn f(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "—".into()
    }
}

/// `a / b` as a percentage.
pub fn pct(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b != 0.0 {
        format!("{:.0}%", a / b * 100.0)
    } else {
        "—".into()
    }
}

pub fn mean(v: &[f64]) -> f64 {
    let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Kernel, CPUs and memory, for the report header.
pub fn machine() -> String {
    let kernel = out(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "kernel {}, {cpus} CPUs, MemTotal {mem}, load average at start {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}
