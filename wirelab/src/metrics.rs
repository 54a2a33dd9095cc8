//! `--metrics ADDR:PORT`: live counters in the Prometheus/OpenMetrics text format.
//!
//! Bind the endpoint with [`Endpoint::bind`] *before* entering a lab namespace (`--netns`), so
//! it listens where the scraper is; declare metric families on a [`Builder`]; then
//! [`Builder::serve`] answers `GET /metrics` from a small thread until the [`Server`] is
//! dropped. Metric names and labels are listed in `docs/metrics.md` and are stable.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub type Labels = Vec<(String, String)>;
pub type CounterFam = Family<Labels, Counter>;
pub type GaugeFam = Family<Labels, Gauge<f64, AtomicU64>>;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A bound, not yet serving, metrics socket.
pub struct Endpoint {
    listener: TcpListener,
    pub addr: SocketAddr,
}

impl Endpoint {
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("--metrics: binding {addr}"))?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }
}

/// Collects metric families before serving.
pub struct Builder {
    reg: Registry,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

/// The version of the metric names and labels (docs/metrics.md): changes when one is
/// removed or changes meaning.
pub const METRICS_VERSION: &str = "1";

impl Builder {
    /// An empty registry; [`Builder::info`] adds `wirelab_build_info`.
    pub fn new() -> Self {
        Self {
            reg: Registry::default(),
        }
    }

    /// `wirelab_build_info{version, tool, metrics_version}` = 1 (`metrics_version`: the
    /// version of the names and labels, docs/metrics.md).
    pub fn info(&mut self, tool: &str) {
        let g: GaugeFam = Family::default();
        g.get_or_create(&labels(&[
            ("version", env!("CARGO_PKG_VERSION")),
            ("tool", tool),
            ("metrics_version", METRICS_VERSION),
        ]))
        .set(1.0);
        self.reg
            .register("wirelab_build_info", "wirelab version and tool", g);
    }

    /// A counter family; `name` without the `_total` suffix (the encoder adds it).
    pub fn counter(&mut self, name: &str, help: &str) -> CounterFam {
        let f = CounterFam::default();
        self.reg.register(name, help, f.clone());
        f
    }

    pub fn gauge(&mut self, name: &str, help: &str) -> GaugeFam {
        let f = GaugeFam::default();
        self.reg.register(name, help, f.clone());
        f
    }

    /// Serve the registry on `ep` until the returned server is dropped.
    pub fn serve(self, ep: &Endpoint) -> Result<Server> {
        let reg = Arc::new(self.reg);
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, addr) = (stop.clone(), ep.addr);
        let listener = ep.listener.try_clone()?;
        listener.set_nonblocking(true)?;
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                // Non-blocking accept with a short sleep: the listener may live in another
                // network namespace than this thread, so nothing could wake a blocking one.
                while !stop2.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let _ = s.set_nonblocking(false);
                            if let Err(e) = answer(s, &reg) {
                                tracing::debug!("metrics request: {e:#}");
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        tracing::info!("metrics on http://{addr}/metrics");
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

fn answer(mut s: TcpStream, reg: &Registry) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&req);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        )
    } else if path == "/metrics" || path == "/" {
        let mut body = String::new();
        encode(&mut body, reg).map_err(|e| anyhow::anyhow!("encoding metrics: {e}"))?;
        ("200 OK", CONTENT_TYPE, body)
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        s.write_all(body.as_bytes())?;
    }
    s.flush()?;
    Ok(())
}

pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tool's metrics: a struct of metric families, each declared once by its field, kind
/// (`counter` or `gauge`), name and help, then the tool's own fields with their starting
/// values; `serve(tool, ep)` declares the families (and `wirelab_build_info` for `tool`) and
/// serves them on `ep` until the struct is dropped.
///
/// ```text
/// families! {
///     pub(super) struct FwMetrics {
///         packets: counter("wirelab_fw_packets", "Frames judged, by rule or policy"),
///         generation: gauge("wirelab_fw_generation", "Rule-set generation in force"),
///         ;
///         shown: Vec<(String, u32)> = vec![],
///     }
/// }
/// ```
#[macro_export]
macro_rules! metric_families {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($field:ident: $kind:ident($metric:literal, $help:literal),)*
            ;
            $($(#[$xmeta:meta])* $extra:ident: $xty:ty = $xval:expr,)*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($field: $crate::metric_families!(@type $kind),)*
            $($(#[$xmeta])* $extra: $xty,)*
            _server: $crate::metrics::Server,
        }

        impl $name {
            /// Declare the families, with `wirelab_build_info` for `tool`, and serve them on
            /// `ep` until this is dropped.
            $vis fn serve(tool: &str, ep: &$crate::metrics::Endpoint) -> ::anyhow::Result<Self> {
                let mut b = $crate::metrics::Builder::new();
                b.info(tool);
                $(let $field = b.$kind($metric, $help);)*
                Ok(Self {
                    $($field,)*
                    $($extra: $xval,)*
                    _server: b.serve(ep)?,
                })
            }
        }
    };
    (@type counter) => { $crate::metrics::CounterFam };
    (@type gauge) => { $crate::metrics::GaugeFam };
}
pub use crate::metric_families as families;

/// Set a counter to a cumulative value read elsewhere (kernel counters): adds the increase.
pub fn set_total(c: &Counter, total: u64) {
    let cur = c.get();
    if total > cur {
        c.inc_by(total - cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_exposition() {
        let ep = Endpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut b = Builder::new();
        b.info("test");
        let c = b.counter("wirelab_test_packets", "test packets");
        c.get_or_create(&labels(&[("direction", "a_to_b")]))
            .inc_by(5);
        let srv = b.serve(&ep).unwrap();
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.contains("wirelab_test_packets_total{direction=\"a_to_b\"} 5"));
        drop(srv);
    }
}
