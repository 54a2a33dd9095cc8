//! `cargo xtask demo`: the main job, driven through the wirelab CLI like a user would:
//! default lab → WAN profile on the wan host → UDP and TCP probes client→server → a summary
//! of configured against measured → lab down.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::{de::DeserializeOwned, Deserialize};
use wirelab_testkit::cli;

use crate::root;

pub const A_TO_B: &str = "delay 40ms 5ms distribution normal loss 0.5% rate 20mbit";
pub const B_TO_A: &str = "delay 40ms 5ms distribution normal loss 0.5% rate 20mbit";
/// The probe server's address on the lab's server host.
const TO: &str = "198.18.0.2:7000";

fn wirelab() -> Command {
    Command::new(root().join("target/release/wirelab"))
}

/// Tears the lab down (and stops what runs in it) however the demo ends.
struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = wirelab().args(["lab", "down", "--name", &self.0]).status();
    }
}

struct Kill(Option<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawn and wait for `ready` on stderr (echoing stderr to ours).
fn spawn_ready(mut c: Command, ready: &str) -> Result<Kill> {
    c.stderr(Stdio::piped());
    let mut child = c.spawn().with_context(|| format!("starting {c:?}"))?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let t0 = Instant::now();
    loop {
        match lines.next() {
            Some(Ok(l)) => {
                eprintln!("{l}");
                if l.contains(ready) {
                    break;
                }
            }
            _ => bail!("{c:?} exited before it was ready"),
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("{c:?} not ready after 20 s");
        }
    }
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            eprintln!("{l}");
        }
    });
    Ok(Kill(Some(child)))
}

/// The fields of wirelab's `--json` output the demo prints, read as types (xtask builds
/// before wirelab, so it cannot use wirelab's own): a field wirelab renames fails the demo
/// with its name instead of printing NaN.
#[derive(Deserialize)]
struct Delay {
    p50: f64,
    mean: f64,
    stddev: f64,
}

#[derive(Deserialize)]
struct UdpDir {
    delay_ms: Delay,
    loss_pct: f64,
    reordered: u64,
}

#[derive(Deserialize)]
struct Udp {
    forward: UdpDir,
    reverse: UdpDir,
    rtt_ms: Delay,
}

#[derive(Deserialize)]
struct Tcp {
    goodput_mbps: f64,
}

#[derive(Deserialize)]
struct WanClass {
    dir: String,
    class: String,
    delay_p50_ms: Option<f64>,
    queue_delay_p50_ms: Option<f64>,
    drops_loss: u64,
    drops_queue: u64,
}

#[derive(Deserialize)]
struct WanFinal {
    classes: Vec<WanClass>,
}

fn json_of<T: DeserializeOwned>(c: &mut Command) -> Result<T> {
    let o = c.stderr(Stdio::inherit()).output()?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", o.status);
    }
    serde_json::from_slice(&o.stdout).with_context(|| format!("JSON from {c:?}"))
}

pub fn demo() -> Result<()> {
    // Ctrl-C reaches the children (same process group); xtask keeps running to clean up.
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let lab = format!("demo-{}", std::process::id());
    // The run record (wan + probes) and its report go here.
    let rec_dir = root().join("target/demo-run");
    let _ = std::fs::remove_dir_all(&rec_dir);
    let rec = rec_dir.to_string_lossy().to_string();
    println!("== 1. lab: client — wan — server ==");
    let st = wirelab().args(["lab", "up", "--name", &lab]).status()?;
    if !st.success() {
        bail!("wirelab lab up failed");
    }
    let _guard = LabGuard(lab.clone());
    let ns = |h: &str| format!("{lab}-{h}");
    let _server = spawn_ready(
        {
            let mut c = wirelab();
            c.args(cli::probe_server(&ns("server"), TO, "120s"));
            c
        },
        cli::PROBE_SERVER_READY,
    )?;

    println!("\n== 2. wan on the wan host ==\n   a->b: {A_TO_B}\n   b->a: {B_TO_A}");
    let mut wan = spawn_ready(
        {
            let mut c = wirelab();
            c.args(cli::wan(&ns("wan")));
            c.args(["--a-to-b", A_TO_B, "--b-to-a", B_TO_A]);
            c.args(["--interval", "5s", "--seed", "1"]);
            c.args(["--json", "--duration", "120s", "--record", &rec]);
            c.stdout(Stdio::piped());
            c
        },
        "wan running",
    )?;
    let interrupted = || -> Result<()> {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    };
    interrupted()?;
    // A recorded probe run from the client to the server (JSON summary).
    let probe = |extra: &[&str]| {
        let mut c = wirelab();
        c.args(cli::probe_client(&ns("client"), TO)).args(extra);
        c.args(["--json", "--record", &rec]);
        c
    };

    println!("\n== 3. UDP probes client -> server: 100/s for 10 s ==");
    let udp: Udp = json_of(&mut probe(&["--rate", "100", "--count", "1000"]))?;
    interrupted()?;
    println!("\n== 4. TCP goodput client -> server for 8 s ==");
    let tcp: Tcp = json_of(&mut probe(&["--tcp", "--duration", "8s"]))?;

    // Stop the emulator and take its own final numbers.
    let mut child = wan.0.take().context("wan")?;
    let _ = nix_kill(child.id());
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        use std::io::Read as _;
        so.read_to_string(&mut out)?;
    }
    child.wait()?;
    let fin: WanFinal = out
        .lines()
        .rfind(|l| l.contains("\"final\""))
        .context("wan printed no final line")
        .and_then(|l| serde_json::from_str(l).context("wan's final line"))?;
    print_table(&udp, &tcp, &fin)?;
    println!("\n== 6. report ==");
    let st = wirelab().args(["report", &rec]).status()?;
    if !st.success() {
        bail!("wirelab report failed");
    }
    println!(
        "report of this run: {}",
        rec_dir.join("report.html").display()
    );
    Ok(())
}

/// Step 5: what was configured beside what the probes and the wan measured.
fn print_table(udp: &Udp, tcp: &Tcp, fin: &WanFinal) -> Result<()> {
    let class = |dir: &str| {
        fin.classes
            .iter()
            .find(|r| r.dir == dir && r.class == "default")
            .with_context(|| format!("no default {dir} row in wan's final line"))
    };
    let (ab, ba) = (class("a_to_b")?, class("b_to_a")?);
    println!("\n== 5. configured vs measured ==");
    println!(
        "{:<34} {:>16} {:>16} {:>16}",
        "", "configured", "client->server", "server->client"
    );
    // One table row: label, configured value, measured client->server and server->client
    // (the latter absent for round-trip figures), with `prec` decimals.
    let row = |label: &str, configured: &str, fwd: f64, rev: Option<f64>, prec: usize| {
        let rev = rev.map(|r| format!("{r:>16.prec$}")).unwrap_or_default();
        println!("{label:<34} {configured:>16} {fwd:>16.prec$} {rev}");
    };
    let (f, r) = (&udp.forward, &udp.reverse);
    let both = |pick: fn(&UdpDir) -> f64| (pick(f), Some(pick(r)));
    let (x, y) = both(|d| d.delay_ms.p50);
    row("one-way delay p50 (ms)", "40", x, y, 2);
    let (x, y) = both(|d| d.delay_ms.mean);
    row("one-way delay mean (ms)", "40", x, y, 2);
    let (x, y) = both(|d| d.delay_ms.stddev);
    row("one-way delay stddev (ms)", "5 (normal)", x, y, 2);
    let (x, y) = both(|d| d.loss_pct);
    row("loss (%) of UDP probes", "0.5", x, y, 2);
    let (x, y) = both(|d| d.reordered as f64);
    row("reordered probes", "0 (keep order)", x, y, 0);
    row("RTT p50 (ms)", "80", udp.rtt_ms.p50, None, 2);
    row(
        "TCP goodput (Mbit/s)",
        "<= 19.13",
        tcp.goodput_mbps,
        None,
        2,
    );
    let wan = |pick: fn(&WanClass) -> f64| (pick(ab), Some(pick(ba)));
    let (x, y) = wan(|c| c.delay_p50_ms.unwrap_or(f64::NAN));
    row("wan: emulated delay p50, all traffic", "40", x, y, 2);
    let (x, y) = wan(|c| c.queue_delay_p50_ms.unwrap_or(f64::NAN));
    row("wan: rate queue p50, all traffic (ms)", "", x, y, 2);
    let (x, y) = wan(|c| c.drops_loss as f64);
    row("wan: frames lost (loss model)", "0.5%", x, y, 0);
    let (x, y) = wan(|c| c.drops_queue as f64);
    row("wan: queue drops (rate)", "", x, y, 0);
    println!(
        "\n20 Mbit/s of 1514-byte frames carries at most 19.13 Mbit/s of TCP payload; TCP reached\n\
         {:.0}% of that. The wan reports its emulated delay (what `delay` configures) apart from the\n\
         queue TCP builds in front of the 20 Mbit/s rate client->server (the probes ran alone).",
        tcp.goodput_mbps / 19.13 * 100.0
    );
    Ok(())
}

fn nix_kill(pid: u32) -> std::io::Result<()> {
    let r = unsafe { libc_kill(pid as i32, 15) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
