//! Background processes that stop on drop, and waiting for their readiness line.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// Run to completion with stdin closed; stdout on success, an error with stderr otherwise.
pub fn out(c: &mut Command) -> Result<String> {
    let o = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {c:?}"))?;
    if !o.status.success() {
        bail!(
            "{c:?} failed ({}): {}\nstdout: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim(),
            String::from_utf8_lossy(&o.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A background process: SIGTERM on drop (so it can detach and remove what it made), SIGKILL
/// when it has not exited 10 s later. The lines of its readiness stream are kept in `lines`.
pub struct Bg {
    child: Option<Child>,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub started: Instant,
    pub ready_after: Duration,
}

/// How a stopped process ended and what it wrote on stdout (when that was piped).
pub struct Stopped {
    pub stdout: Vec<u8>,
    /// `None` when it had to be killed.
    pub status: Option<ExitStatus>,
}

impl Stopped {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) takes plain integers; `pid` is a child this harness spawned and has not
    // reaped yet, so the number cannot name another process.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

impl Bg {
    /// Adopt a child spawned elsewhere.
    pub fn from_child(child: Child) -> Self {
        Self {
            child: Some(child),
            lines: Arc::default(),
            started: Instant::now(),
            ready_after: Duration::ZERO,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The child itself (e.g. to send it a signal or poll it).
    ///
    /// # Panics
    /// After [`Bg::stop`] or [`Bg::wait`].
    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("process already stopped")
    }

    /// SIGTERM, wait (bounded by 30 s, then SIGKILL), and return how it ended.
    pub fn stop(mut self) -> Result<Stopped> {
        let c = self.child.take().context("already stopped")?;
        signal(c.id(), libc::SIGTERM);
        Ok(finish(c, Duration::from_secs(30)))
    }

    /// Stop as [`Bg::stop`] and assert that it exited successfully (tests).
    ///
    /// # Panics
    /// When it failed or had to be killed.
    #[track_caller]
    pub fn terminate(self) -> Stopped {
        let lines = self.lines.clone();
        let s = self.stop().expect("stopping a background process");
        assert!(
            s.success(),
            "exit {:?}\nstdout: {}\nlog: {}",
            s.status,
            s.text(),
            lines.lock().map(|v| v.join("\n")).unwrap_or_default()
        );
        s
    }

    /// SIGKILL (as `kill -9` would: no chance to clean up) and reap it.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait for it to exit by itself (bounded by `limit`, then SIGKILL).
    pub fn wait(mut self, limit: Duration) -> Result<Stopped> {
        let c = self.child.take().context("already stopped")?;
        Ok(finish(c, limit))
    }
}

/// Read stdout (if piped) while waiting up to `limit` for `c` to exit; SIGKILL after that.
fn finish(mut c: Child, limit: Duration) -> Stopped {
    let mut so = c.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut v = vec![];
        if let Some(o) = so.as_mut() {
            let _ = o.read_to_end(&mut v);
        }
        v
    });
    let status = wait_bounded(&mut c, limit);
    Stopped {
        stdout: reader.join().unwrap_or_default(),
        status,
    }
}

/// Wait up to `limit`, then SIGKILL. The exit status when it exited by itself.
fn wait_bounded(c: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    loop {
        match c.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if t0.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), libc::SIGTERM);
            wait_bounded(&mut c, Duration::from_secs(10));
        }
    }
}

/// Which stream carries the readiness line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ready {
    Stderr,
    Stdout,
}

/// Start `c` and wait (bounded by `limit`) until a line of `stream` contains `needle`. When the
/// readiness line is on stderr, stdout stays piped for [`Bg::stop`]/[`Bg::wait`]; stderr lines
/// go on being collected in [`Bg::lines`].
pub fn spawn_ready(mut c: Command, stream: Ready, needle: &str, limit: Duration) -> Result<Bg> {
    c.stdin(Stdio::null());
    c.stderr(Stdio::piped());
    c.stdout(Stdio::piped());
    let started = Instant::now();
    let mut child = c.spawn().with_context(|| format!("starting {c:?}"))?;
    let pipe: Box<dyn std::io::Read + Send> = match stream {
        Ready::Stderr => Box::new(child.stderr.take().context("stderr")?),
        Ready::Stdout => Box::new(child.stdout.take().context("stdout")?),
    };
    if stream == Ready::Stdout {
        // Keep stderr drained too.
        if let Some(e) = child.stderr.take() {
            std::thread::spawn(move || {
                for l in BufReader::new(e).lines().map_while(Result::ok) {
                    eprintln!("  | {l}");
                }
            });
        }
    }
    let lines = Arc::new(Mutex::new(vec![]));
    let (tx, rx) = mpsc::channel::<String>();
    let l2 = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut v) = l2.lock() {
                v.push(l.clone());
            }
            let _ = tx.send(l);
        }
    });
    let mut bg = Bg {
        child: Some(child),
        lines,
        started,
        ready_after: Duration::ZERO,
    };
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => {
                bg.ready_after = started.elapsed();
                return Ok(bg);
            }
            Ok(_) => {}
            Err(e) => {
                let log = bg.lines.lock().map(|v| v.join("\n")).unwrap_or_default();
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => format!("not ready within {limit:?}"),
                    mpsc::RecvTimeoutError::Disconnected => "exited before it was ready".into(),
                };
                bail!("{c:?} {why} (no {needle:?}):\n{log}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_then_stop_collects_stdout() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo ready >&2; exec sleep 30"]);
        let bg = spawn_ready(c, Ready::Stderr, "ready", Duration::from_secs(5)).unwrap();
        assert!(bg.pid() > 0);
        let s = bg.stop().unwrap();
        assert_eq!(s.text(), "out\n");
        assert!(!s.success(), "sleep dies of SIGTERM");
    }

    #[test]
    fn exit_before_ready_is_an_error_naming_the_needle() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo nope >&2"]);
        let e = spawn_ready(c, Ready::Stderr, "ready", Duration::from_secs(5))
            .err()
            .unwrap();
        let s = format!("{e:#}");
        assert!(s.contains("exited before") && s.contains("nope"), "{s}");
    }
}
