//! Progress for runs with a known length: an indicatif bar on stderr when stdout is a
//! terminal, otherwise a plain line now and then (every 10 % or 10 s). Nothing interactive
//! when not on a TTY.
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    len: u64,
    last_plain: Instant,
    last_pct: u64,
}

impl Progress {
    /// `len` units of `what` ("clients", "probes", "s").
    pub fn new(len: u64, what: &str) -> Self {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stdout())
            && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = tty.then(|| {
            let b = ProgressBar::new(len);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} (eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Self {
            bar,
            what: what.into(),
            len,
            last_plain: Instant::now(),
            last_pct: 0,
        }
    }

    pub fn set(&mut self, pos: u64, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.set_position(pos);
                b.set_message(format!("{} {msg}", self.what));
            }
            None => {
                let pct = pos * 100 / self.len.max(1);
                if pct / 10 > self.last_pct / 10
                    || self.last_plain.elapsed() >= Duration::from_secs(10)
                {
                    self.last_pct = pct;
                    self.last_plain = Instant::now();
                    eprintln!("progress: {pos}/{} {} {msg}", self.len, self.what);
                }
            }
        }
    }

    /// Run `f` with the bar hidden (for printing to the terminal).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
