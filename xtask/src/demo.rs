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
use serde_json::Value;
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

fn json_of(c: &mut Command) -> Result<Value> {
    let o = c.stderr(Stdio::inherit()).output()?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", o.status);
    }
    serde_json::from_slice(&o.stdout).with_context(|| format!("JSON from {c:?}"))
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64().unwrap_or(f64::NAN)
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
        json_of(c.args(["--json", "--record", &rec]))
    };

    println!("\n== 3. UDP probes client -> server: 100/s for 10 s ==");
    let udp = probe(&["--rate", "100", "--count", "1000"])?;
    interrupted()?;
    println!("\n== 4. TCP goodput client -> server for 8 s ==");
    let tcp = probe(&["--tcp", "--duration", "8s"])?;

    // Stop the emulator and take its own final numbers.
    let mut child = wan.0.take().context("wan")?;
    let _ = nix_kill(child.id());
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        use std::io::Read as _;
        so.read_to_string(&mut out)?;
    }
    child.wait()?;
    let fin: Value = out
        .lines()
        .rfind(|l| l.contains("\"final\""))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);

    let row = |dir: &str| -> Value {
        fin["classes"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|r| r["dir"] == dir && r["class"] == "default")
                    .cloned()
            })
            .unwrap_or(Value::Null)
    };
    let (ab, ba) = (row("a_to_b"), row("b_to_a"));
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
    let both = |v: &Value, f: &[&str], r: &[&str]| (num(v, f), Some(num(v, r)));
    let (f, r) = both(
        &udp,
        &["forward", "delay_ms", "p50"],
        &["reverse", "delay_ms", "p50"],
    );
    row("one-way delay p50 (ms)", "40", f, r, 2);
    let (f, r) = both(
        &udp,
        &["forward", "delay_ms", "mean"],
        &["reverse", "delay_ms", "mean"],
    );
    row("one-way delay mean (ms)", "40", f, r, 2);
    let (f, r) = both(
        &udp,
        &["forward", "delay_ms", "stddev"],
        &["reverse", "delay_ms", "stddev"],
    );
    row("one-way delay stddev (ms)", "5 (normal)", f, r, 2);
    let (f, r) = both(&udp, &["forward", "loss_pct"], &["reverse", "loss_pct"]);
    row("loss (%) of UDP probes", "0.5", f, r, 2);
    let (f, r) = both(&udp, &["forward", "reordered"], &["reverse", "reordered"]);
    row("reordered probes", "0 (keep order)", f, r, 0);
    row("RTT p50 (ms)", "80", num(&udp, &["rtt_ms", "p50"]), None, 2);
    row(
        "TCP goodput (Mbit/s)",
        "<= 19.13",
        num(&tcp, &["goodput_mbps"]),
        None,
        2,
    );
    let wan = |k: &str| (num(&ab, &[k]), Some(num(&ba, &[k])));
    let (f, r) = wan("delay_p50_ms");
    row("wan: emulated delay p50, all traffic", "40", f, r, 2);
    let (f, r) = wan("queue_delay_p50_ms");
    row("wan: rate queue p50, all traffic (ms)", "", f, r, 2);
    let (f, r) = wan("drops_loss");
    row("wan: frames lost (loss model)", "0.5%", f, r, 0);
    let (f, r) = wan("drops_queue");
    row("wan: queue drops (rate)", "", f, r, 0);
    println!(
        "\n20 Mbit/s of 1514-byte frames carries at most 19.13 Mbit/s of TCP payload; TCP reached\n\
         {:.0}% of that. The wan reports its emulated delay (what `delay` configures) apart from the\n\
         queue TCP builds in front of the 20 Mbit/s rate client->server (the probes ran alone).",
        num(&tcp, &["goodput_mbps"]) / 19.13 * 100.0
    );
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
