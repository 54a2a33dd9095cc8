//! `cargo xtask demo`: the main job on the default lab, driven through the wirelab CLI.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::root;

fn wirelab() -> Command {
    Command::new(root().join("target/release/wirelab"))
}

/// Tears the lab down however the demo ends.
struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = wirelab().args(["lab", "down", "--name", &self.0]).status();
    }
}

pub fn demo() -> Result<()> {
    // Ctrl-C reaches the children (same process group); xtask itself keeps running to tear the
    // lab down.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let lab = format!("demo-{}", std::process::id());
    let st = wirelab().args(["lab", "up", "--name", &lab]).status()?;
    if !st.success() {
        bail!("wirelab lab up failed");
    }
    let _guard = LabGuard(lab.clone());
    let pings = 20;
    println!("\n== inspect on the wan host while the client pings the server {pings} times ==");
    let mut inspect = wirelab()
        .args([
            "inspect",
            "--netns",
            &format!("{lab}-wan"),
            "--iface",
            "to-client",
            "--interval",
            "2s",
            "--duration",
            "7s",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wirelab inspect")?;
    let stderr = inspect.stderr.take().context("inspect stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let t0 = Instant::now();
    loop {
        match lines.next() {
            Some(Ok(l)) => {
                eprintln!("{l}");
                if l.contains("inspect attached") {
                    break;
                }
            }
            _ => bail!("inspect exited before attaching"),
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("inspect did not attach within 10 s");
        }
    }
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            eprintln!("{l}");
        }
    });
    if !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let st = wirelab()
            .args(["lab", "exec", "--name", &lab, "client", "--"])
            .args([
                "ping",
                "-c",
                &pings.to_string(),
                "-i",
                "0.2",
                "-q",
                "198.18.0.2",
            ])
            .status()?;
        if !st.success() {
            eprintln!("ping reported loss or failed: {st}");
        }
    }
    let st = inspect.wait()?;
    if !st.success() {
        bail!("wirelab inspect failed: {st}");
    }
    println!("\nThe icmp row counts the {pings} echo requests the client sent (XDP sees ingress on to-client).");
    Ok(())
}
