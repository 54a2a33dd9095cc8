//! The harness wirelab's integration tests and `cargo xtask bench` share (dev-only, never
//! shipped): labs brought up through the CLI and taken down on drop ([`Lab`]), background
//! processes stopped on drop ([`Bg`], [`spawn_ready`]), polling instead of sleeping
//! ([`eventually`]), temporary directories removed even when a test fails ([`TempDir`]), one
//! `BPF_PROG_TEST_RUN` entry point ([`prog::run`]), crafted frames ([`frames`]) and the command
//! lines that point the tools at a lab host ([`cli`]), worker threads inside a lab
//! namespace ([`NsWorker`]), and a Samba server in a lab host ([`samba::Samba`]).
//!
//! It depends on the `wirelab` binary, not its library, so xtask can use it without building
//! the eBPF object.
pub mod cli;
pub mod frames;
pub mod lab;
pub mod noise;
pub mod process;
pub mod prog;
pub mod samba;
pub mod worker;

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub use lab::{in_ns, Lab};
pub use process::{out, spawn_ready, Bg, Ready, Stopped};
pub use worker::NsWorker;

/// A name unique to this process and call: `{prefix}{pid}x{n}` (short enough for interface
/// and namespace names).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Wait up to `timeout` for `cond`, polling every 20 ms; false if it never held.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temporary directory (unique per process and call) removed on drop, also when the test
/// fails.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// # Panics
    /// When the directory cannot be created (a harness failure).
    pub fn new(prefix: &str) -> Self {
        let d = std::env::temp_dir().join(unique(prefix));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("creating a temp dir");
        Self(d)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> std::path::PathBuf {
        self.0.join(p)
    }

    /// Write `text` to file `name` in the directory; returns its path.
    ///
    /// # Panics
    /// When the file cannot be written (a harness failure).
    pub fn file(&self, name: &str, text: &str) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("writing a test file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventually_polls_until_true_and_gives_up() {
        let mut n = 0;
        assert!(eventually(Duration::from_secs(1), || {
            n += 1;
            n == 3
        }));
        assert_eq!(n, 3);
        let t0 = Instant::now();
        assert!(!eventually(Duration::from_millis(50), || false));
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn temp_dir_is_removed_on_drop() {
        let d = TempDir::new("wltk");
        let f = d.file("a", "x");
        assert!(f.exists());
        let p = d.0.clone();
        drop(d);
        assert!(!p.exists());
    }
}
