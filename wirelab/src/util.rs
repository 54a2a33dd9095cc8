//! Small shared helpers: durations, signals, time.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};

/// Parse `1s`, `250ms`, `2m`, `1h30m`, or a bare number of seconds (`5`, `0.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = if let Ok(secs) = t.parse::<f64>() {
        if !(secs.is_finite() && secs >= 0.0) {
            return Err(format!("{s:?}: a duration must be finite and not negative"));
        }
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    } else {
        humantime::parse_duration(t).map_err(|e| format!("{s:?}: {e} (examples: 500ms, 1s, 2m)"))?
    };
    if d > MAX_DURATION {
        return Err(format!(
            "{s:?}: longer than {} days, the longest duration wirelab takes",
            MAX_DURATION.as_secs() / 86_400
        ));
    }
    Ok(d)
}

/// The longest duration, interval or timeout [`parse_duration`] takes: a year (so that any
/// deadline computed from it stays far from `Instant`'s and `Duration`'s limits).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Standard normal CDF Φ(x) (Abramowitz-Stegun 7.1.26 erf, |error| < 1.5e-7): the sweep's
/// trend test and wan's smooth keep-order jitter.
pub fn normal_cdf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs() / std::f64::consts::SQRT_2);
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-(x * x) / 2.0).exp();
    0.5 * (1.0 + if x >= 0.0 { y } else { -y })
}

/// A flag raised by SIGINT or SIGTERM.
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// A flag no signal raises (tests, and stops driven from code through `raise`).
    pub fn new() -> Self {
        Self(Arc::new(AtomicBool::new(false)))
    }

    pub fn install() -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&flag))
                .context("installing signal handler")?;
        }
        Ok(Self(flag))
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Sleep up to `d`, waking early when a stop is requested. Returns true if stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        let end = std::time::Instant::now() + d;
        loop {
            if self.requested() {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= end {
                return false;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
        }
    }
}

/// Size caps for files users name on the command line or in a config.
pub mod limit {
    /// TOML configs: rules, topologies, wan configs.
    pub const CONFIG: u64 = 16 << 20;
    /// Address lists (`src_file`/`dst_file`): room for millions of prefixes.
    pub const ADDRESS_LIST: u64 = 64 << 20;
    /// netem `.dist` tables (4,096 numbers in netem's own files).
    pub const DIST: u64 = 1 << 20;
}

/// Read a user-named text file: a regular file of at most `max` bytes. A FIFO, a device
/// (`/dev/zero`, `/dev/urandom`), a directory or a larger file is refused with its name and
/// the limit, without blocking: the file is opened non-blocking and checked before reading.
pub fn read_user_file(path: &std::path::Path, max: u64) -> Result<String> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let md = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !md.is_file() {
        anyhow::bail!(
            "{}: not a regular file ({}); give a file",
            path.display(),
            file_kind(&md)
        );
    }
    if md.len() > max {
        anyhow::bail!(
            "{}: {} bytes is over the limit of {} bytes for this input",
            path.display(),
            md.len(),
            max
        );
    }
    // The size was checked; the read is capped too, in case the file grows meanwhile.
    let mut buf = Vec::with_capacity(md.len() as usize);
    f.take(max + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    if buf.len() as u64 > max {
        anyhow::bail!(
            "{}: grew over the limit of {max} bytes while being read",
            path.display()
        );
    }
    String::from_utf8(buf).with_context(|| format!("{}: not UTF-8 text", path.display()))
}

fn file_kind(md: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let t = md.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, so of the programs' timestamps
/// (0 if the clock cannot be read, which Linux never does).
pub fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Whether process `pid` is still there (its /proc entry; a zombie counts).
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Seconds since the Unix epoch, wall clock.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An empty directory for a unit test: `name` and this process's id under the temp dir
/// (what an earlier run of the same process id left there removed); removed when dropped, so
/// a failing test leaves nothing behind either.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> TestDir {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TestDir(dir)
}

/// [`test_dir`]'s directory, removed on drop.
#[cfg(test)]
pub(crate) struct TestDir(std::path::PathBuf);

#[cfg(test)]
impl std::ops::Deref for TestDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

#[cfg(test)]
impl AsRef<std::path::Path> for TestDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn user_files_are_bounded_regular_files() {
        use std::path::Path;
        let dir = test_dir("wirelab-util");
        let f = dir.join("ok.txt");
        std::fs::write(&f, "198.18.0.1\n").unwrap();
        assert_eq!(read_user_file(&f, 100).unwrap(), "198.18.0.1\n");
        let e = format!("{:#}", read_user_file(&f, 5).unwrap_err());
        assert!(
            e.contains("ok.txt") && e.contains("limit of 5 bytes"),
            "{e}"
        );
        // A FIFO with no writer: refused at once instead of blocking forever.
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = format!("{:#}", read_user_file(&fifo, 100).unwrap_err());
        assert!(e.contains("a FIFO") && e.contains("fifo"), "{e}");
        for dev in ["/dev/zero", "/dev/urandom"] {
            let e = format!("{:#}", read_user_file(Path::new(dev), 1 << 20).unwrap_err());
            assert!(e.contains("character device") && e.contains(dev), "{e}");
        }
        let e = format!("{:#}", read_user_file(&dir, 100).unwrap_err());
        assert!(e.contains("a directory"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        // Out of range: refused, never a panic.
        for long in [
            "1e20",
            "99999999999999999999",
            "99999999999h",
            "366days",
            "inf",
            "NaN",
        ] {
            assert!(parse_duration(long).is_err(), "{long}");
        }
        assert_eq!(parse_duration("365days").unwrap(), MAX_DURATION);
    }
}
