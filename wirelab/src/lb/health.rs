//! Health checks from userspace: one prober thread per checked backend (started inside the
//! balancer's network namespace, so probes leave from it), each probing every `interval` and
//! sending the outcome to the balancer's loop, which applies `rise`/`fall` ([`State`]) and
//! rebuilds the Maglev tables on a transition.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::config::{Config, HealthConf, HealthKind};

/// One probe's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub service: String,
    pub backend: String,
    /// `Err(reason)` when the probe failed.
    pub result: Result<(), String>,
}

/// Probe `addr` once as `h` says.
pub fn probe(h: &HealthConf, addr: SocketAddr) -> Result<(), String> {
    let start = Instant::now();
    let mut s =
        TcpStream::connect_timeout(&addr, h.timeout).map_err(|e| format!("tcp connect: {e}"))?;
    let HealthKind::Http {
        path,
        expect_status,
    } = &h.kind
    else {
        return Ok(());
    };
    let left = |what: &str| {
        h.timeout
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("http: timed out ({what})"))
    };
    s.set_write_timeout(Some(left("sending")?))
        .map_err(|e| e.to_string())?;
    let host = match addr.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    // One write: the request leaves in one segment.
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: wirelab-lb-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("http: sending: {e}"))?;
    // The status line is all we need: `HTTP/1.x NNN ...`.
    let mut buf = [0u8; 256];
    let mut got = 0;
    while got < 12 || !buf[..got].contains(&b'\n') {
        s.set_read_timeout(Some(left("reading the status line")?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("http: reading: {e}")),
        }
        if got == buf.len() {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    let line = line.lines().next().unwrap_or("");
    let mut words = line.split_whitespace();
    let status = match (words.next(), words.next()) {
        (Some(v), Some(c)) if v.starts_with("HTTP/") => c.parse::<u16>().ok(),
        _ => None,
    };
    match status {
        Some(c) if c == *expect_status => Ok(()),
        Some(c) => Err(format!("http: status {c}, expected {expect_status}")),
        None => Err(format!("http: no status line (got {:?})", line)),
    }
}

named_enum! {
    /// A backend's health as the balancer sees it.
    pub enum Health {
        /// In the table (probes pass, or none has failed `fall` times yet).
        Up = "up",
        /// Out of the table: `fall` probes in a row failed.
        Down = "down",
        /// The service has no health checks.
        Unchecked = "unchecked",
    }
}

/// Rise/fall counting of one backend. Backends start up: a dead one is out after `fall`
/// probes.
#[derive(Debug, Clone)]
pub struct State {
    pub up: bool,
    oks: u32,
    fails: u32,
    pub last_error: Option<String>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            up: true,
            oks: 0,
            fails: 0,
            last_error: None,
        }
    }
}

impl State {
    /// Count one outcome; `Some(new state)` when it flips.
    pub fn count(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.oks = self.oks.saturating_add(1);
            self.fails = 0;
            if !self.up && self.oks >= rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.fails = self.fails.saturating_add(1);
            self.oks = 0;
            if self.up && self.fails >= fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }
}

/// A health transition: logged, printed (`--json`: `{"type":"health",...}`) and recorded as
/// a change line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Transition {
    /// Always "health".
    pub r#type: String,
    /// Seconds since the balancer started.
    pub t: f64,
    pub service: String,
    pub backend: String,
    pub addr: IpAddr,
    /// The new state: "up" or "down".
    pub state: Health,
    /// Probes in a row that decided it (`rise` or `fall`).
    pub probes: u32,
    /// The last failure (down), absent for up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Backends of the service up after the change.
    pub up: usize,
    pub backends: usize,
}

/// The prober threads of one configuration; dropped (or [`Checker::stop`]ped) they end
/// within about 50 ms plus a probe's timeout.
pub struct Checker {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub rx: mpsc::Receiver<Outcome>,
}

impl Checker {
    /// Start one prober per backend of each service with health checks (in the calling
    /// thread's network namespace).
    pub fn start(config: &Config) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for s in &config.services {
            let Some(h) = &s.health else { continue };
            for b in &s.backends {
                let addr = SocketAddr::new(b.addr, h.port.unwrap_or(b.port));
                let (h, tx, stop) = (h.clone(), tx.clone(), stop.clone());
                let (service, backend) = (s.name.clone(), b.name.clone());
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("lb-health-{backend}"))
                        .spawn(move || {
                            while !stop.load(Ordering::Relaxed) {
                                let next = Instant::now() + h.interval;
                                let result = probe(&h, addr);
                                let o = Outcome {
                                    service: service.clone(),
                                    backend: backend.clone(),
                                    result,
                                };
                                if tx.send(o).is_err() {
                                    return;
                                }
                                while !stop.load(Ordering::Relaxed) && Instant::now() < next {
                                    std::thread::sleep(
                                        next.saturating_duration_since(Instant::now())
                                            .min(Duration::from_millis(50)),
                                    );
                                }
                            }
                        })?,
                );
            }
        }
        Ok(Self { stop, threads, rx })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn conf(kind: HealthKind) -> HealthConf {
        HealthConf {
            kind,
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 3,
            port: None,
        }
    }

    #[test]
    fn rise_and_fall_count_in_a_row() {
        let mut s = State::default();
        assert!(s.up);
        assert_eq!(s.count(false, 2, 3), None);
        assert_eq!(s.count(false, 2, 3), None);
        assert_eq!(s.count(true, 2, 3), None, "a success resets the failures");
        assert_eq!(s.count(false, 2, 3), None);
        assert_eq!(s.count(false, 2, 3), None);
        assert_eq!(s.count(false, 2, 3), Some(false));
        assert_eq!(s.count(false, 2, 3), None);
        assert_eq!(s.count(true, 2, 3), None);
        assert_eq!(s.count(true, 2, 3), Some(true));
        assert_eq!(s.count(true, 2, 3), None);
    }

    /// A one-shot HTTP server on loopback answering `status`.
    fn http_once(status: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 512];
            let _ = s.read(&mut b);
            let _ =
                s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes());
        });
        a
    }

    #[test]
    fn probes_tcp_and_http() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        assert_eq!(probe(&conf(HealthKind::Tcp), a), Ok(()));
        drop(l);
        let e = probe(&conf(HealthKind::Tcp), a).unwrap_err();
        assert!(e.contains("tcp connect"), "{e}");
        let http = |c| {
            conf(HealthKind::Http {
                path: "/".into(),
                expect_status: c,
            })
        };
        assert_eq!(probe(&http(200), http_once("200 OK")), Ok(()));
        let e = probe(&http(200), http_once("503 Service Unavailable")).unwrap_err();
        assert!(e.contains("status 503"), "{e}");
        // A server that accepts and never answers: the timeout bounds the probe.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let t0 = Instant::now();
        let e = probe(&http(200), l.local_addr().unwrap()).unwrap_err();
        assert!(
            t0.elapsed() < Duration::from_millis(600),
            "{:?}",
            t0.elapsed()
        );
        assert!(e.contains("http"), "{e}");
    }
}
