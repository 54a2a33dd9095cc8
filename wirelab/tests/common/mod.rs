//! Shared harness for wirelab's integration tests.
//!
//! Tests run as root in their own uniquely named namespaces and clean up in `Drop`, so a
//! failing assertion still removes what the test made. Without root or BPF they fail with a
//! message saying what is missing: they never skip.
#![allow(dead_code, unused_imports)]
use std::{
    process::{Command, Output},
    time::Duration,
};
pub use wirelab_testkit::{
    build, cli, eventually, frames,
    noise::{bound, timing},
    unique, Bg, NsWorker, Ready, TempDir,
};

pub const WIRELAB: &str = env!("CARGO_BIN_EXE_wirelab");

/// Fail (never skip) when the machine cannot run the tests.
pub fn require_privileges() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "integration tests need root (namespaces, XDP): run `sudo cargo xtask test`"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    assert!(
        mounts.contains("/sys/fs/bpf bpf"),
        "bpffs is not mounted at /sys/fs/bpf: run `cargo xtask setup`"
    );
}

pub fn wirelab() -> Command {
    let mut c = Command::new(WIRELAB);
    c.env("WIRELAB_LOG", "info");
    c
}

pub fn ok(mut c: impl std::borrow::BorrowMut<Command>) -> Output {
    let c = c.borrow_mut();
    let o = c.output().expect("spawn");
    assert!(
        o.status.success(),
        "{c:?} failed: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Run `c`, assert that it fails, and return its stderr for the caller's checks of what it
/// says.
#[track_caller]
pub fn fails(mut c: impl std::borrow::BorrowMut<Command>) -> String {
    let c = c.borrow_mut();
    let o = c.output().expect("spawn");
    assert!(
        !o.status.success(),
        "{c:?} succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub use wirelab_testkit::in_ns;

/// Load program `name` of `bpf` (XDP or tc) for `BPF_PROG_TEST_RUN`, as the tools do (a load
/// a signal interrupted is tried again).
///
/// # Panics
/// When the program is missing, of another type, or the verifier refuses it.
#[track_caller]
pub fn load_prog(bpf: &mut aya::Ebpf, name: &str) {
    use aya::programs::Program;
    use wirelab::ebpf::LoadRetrying as _;
    let loaded = match bpf.program_mut(name) {
        Some(Program::Xdp(p)) => p.load_retrying(),
        Some(Program::SchedClassifier(p)) => p.load_retrying(),
        Some(_) => panic!("program {name} is neither XDP nor tc"),
        None => panic!("no program {name} in the object"),
    };
    loaded.unwrap_or_else(|e| panic!("verifier accepts {name}: {e:?}"));
}

/// Whether an XDP program is attached to `iface` in namespace `ns` (`ip -d link` shows it).
pub fn xdp_attached(ns: &str, iface: &str) -> bool {
    let o = ok(in_ns(ns, &["ip", "-d", "link", "show", "dev", iface]));
    String::from_utf8_lossy(&o.stdout).contains("prog/xdp")
}

/// Number of tc (TCX) ingress programs attached to `iface` in namespace `ns`.
pub fn tcx_ingress_count(ns: &str, iface: &str) -> usize {
    let iface = iface.to_string();
    wirelab::netns::run_in(Some(ns), move || {
        let (_, progs) = aya::programs::SchedClassifier::query_tcx(
            &iface,
            aya::programs::tc::TcAttachType::Ingress,
        )?;
        Ok(progs.len())
    })
    .expect("query TCX links")
}

pub fn namespaces() -> Vec<String> {
    wirelab::netns::list()
}

/// A lab brought up through the CLI (with a unique name) and taken down on drop.
pub struct Lab(wirelab_testkit::Lab);

impl Lab {
    pub fn up(prefix: &str) -> Self {
        Self::up_with(prefix, None)
    }

    pub fn up_with(prefix: &str, topo: Option<&std::path::Path>) -> Self {
        require_privileges();
        let name = unique(prefix);
        Self(wirelab_testkit::Lab::up(WIRELAB.as_ref(), &name, topo).expect("lab up"))
    }
}

impl std::ops::Deref for Lab {
    type Target = wirelab_testkit::Lab;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A `wirelab probe server` on `bind` in lab host `server`, running until dropped (bounded by
/// `duration`).
pub fn probe_server(lab: &Lab, bind: &str, duration: &str) -> Bg {
    cli::start_probe_server(wirelab(), &lab.ns("server"), bind, duration)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Spawn a wirelab command and wait until its stderr shows `ready`; its stdout stays piped
/// for [`Bg::terminate`].
#[track_caller]
pub fn spawn_ready(c: Command, ready: &str, timeout: Duration) -> Bg {
    wirelab_testkit::spawn_ready(c, Ready::Stderr, ready, timeout)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// GET /metrics with a plain TCP client.
pub fn scrape(addr: &str) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let (head, body) = r.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (head.to_string(), body.to_string())
}

/// One sample of an OpenMetrics exposition as the strict parser read it: a row of the JSON
/// that the script in [`parse_openmetrics`] prints (the harness's own format, written and
/// read here).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct MetricSample {
    pub family: String,
    /// The family's type (`counter`, `gauge`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The sample's name (`..._total` for a counter).
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

impl MetricSample {
    /// The value of label `k`, if the sample has it.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.get(k).map(String::as_str)
    }
}

/// Parse with the Python prometheus_client OpenMetrics parser (strict: raises on anything
/// invalid). Returns one [`MetricSample`] per sample.
pub fn parse_openmetrics(text: &str) -> Vec<MetricSample> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    use std::io::Write as _;
    let mut c = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (install python3-prometheus-client: cargo xtask setup)");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "OpenMetrics parser rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("the parser's samples")
}

pub fn sample(rows: &[MetricSample], name: &str, labels: &[(&str, &str)]) -> f64 {
    rows.iter()
        .find(|r| r.name == name && labels.iter().all(|(k, v)| r.label(k) == Some(*v)))
        .map(|r| r.value)
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

/// The TCP address process `pid` listens on (its `--metrics 127.0.0.1:0` port), from `ss`
/// in the namespace the test runs in.
pub fn tcp_listen_addr(pid: u32) -> String {
    let out = std::process::Command::new("ss")
        .args(["-Hltnp"])
        .output()
        .expect("ss");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains(&format!("pid={pid},")))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or_else(|| panic!("process {pid} listens nowhere: {text}"))
        .to_string()
}

/// Start `wirelab inspect` on `iface` of namespace `ns` with the options `extra`, and wait
/// until it is attached (stopped when the guard drops).
pub fn start_inspect(ns: &str, iface: &str, extra: &[&str]) -> Bg {
    let mut c = wirelab();
    c.args(cli::on_iface("inspect", ns, iface)).args(extra);
    spawn_ready(c, "inspect attached", Duration::from_secs(20))
}

/// Start `wirelab fw` on eth0 of namespace `ns` with `rules` (JSON lines on stdout, at most
/// 300 s; stopped when the guard drops).
pub fn start_fw(ns: &str, rules: &std::path::Path) -> Bg {
    let mut c = wirelab();
    c.args(cli::on_iface("fw", ns, "eth0"));
    c.arg("--rules").arg(rules);
    c.args(["--json", "--duration", "300s"]);
    spawn_ready(c, "fw attached", Duration::from_secs(20))
}

/// Start `wirelab fw` as [`start_fw`] does, with the rules `toml` (written to a temporary file
/// that is removed once the firewall has loaded it).
pub fn start_fw_rules(ns: &str, toml: &str) -> Bg {
    let d = TempDir::new("wirelab-fw-rules-");
    start_fw(ns, &d.file("rules.toml", toml))
}

/// `wirelab fw stats --json` of the firewall running in namespace `ns`.
pub fn fw_stats(ns: &str) -> wirelab::fw::Stats {
    let o = ok(wirelab().args(["fw", "stats", "--netns", ns, "--json"]));
    serde_json::from_slice(&o.stdout).expect("fw stats --json")
}

/// Send raw Ethernet frames out of `iface` in namespace `ns` through an AF_PACKET socket,
/// in order, as they are (no qdisc offloads, tags left in the data).
pub fn send_raw(ns: &str, iface: &str, frames: &[Vec<u8>]) {
    let iface = iface.to_string();
    wirelab::netns::run_in(Some(ns), move || {
        let idx = nix::net::if_::if_nametoindex(iface.as_str())?;
        // SAFETY: plain socket syscalls on a descriptor this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = idx as i32;
            sll.sll_halen = 6;
            for f in frames {
                let n = libc::sendto(
                    fd,
                    f.as_ptr() as *const libc::c_void,
                    f.len(),
                    0,
                    &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(n, f.len() as isize, "{}", std::io::Error::last_os_error());
            }
            libc::close(fd);
        }
        Ok(())
    })
    .expect("sending raw frames");
}

/// The MAC address of `iface` in namespace `ns`.
pub fn mac_of(ns: &str, iface: &str) -> [u8; 6] {
    let o = ok(in_ns(
        ns,
        &["cat", &format!("/sys/class/net/{iface}/address")],
    ));
    let s = String::from_utf8_lossy(&o.stdout);
    let mut m = [0u8; 6];
    for (i, p) in s.trim().split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).expect("MAC");
    }
    m
}

/// TCP segments the stack of namespace `ns` has received (`Tcp: InSegs`, IPv4 and IPv6).
pub fn tcp_in_segs(ns: &str) -> u64 {
    let o = ok(in_ns(ns, &["cat", "/proc/net/snmp"]));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let names: Vec<&str> = rows[0].split_whitespace().collect();
    let values: Vec<&str> = rows[1].split_whitespace().collect();
    let i = names.iter().position(|n| *n == "InSegs").expect("InSegs");
    values[i].parse().expect("InSegs value")
}

/// `n` pings from `ns` to `to`, 50 ms apart, each answered within 2 s (the test fails
/// otherwise).
pub fn pings_ok(ns: &str, n: u32, to: &str) {
    ok(in_ns(
        ns,
        &[
            "ping",
            "-c",
            &n.to_string(),
            "-i",
            "0.05",
            "-W",
            "2",
            "-q",
            to,
        ],
    ));
}

/// Linux has one ARP table per host, shared by all namespaces, and its limits
/// (`net.ipv4.neigh.default.gc_thresh1..3`) exist only in the initial namespace. Tests that
/// put thousands of clients on a lab segment raise them while they run; the last one to finish
/// puts the original values back.
pub struct NeighLimits;

static NEIGH: std::sync::Mutex<(u32, Vec<(String, String)>)> =
    std::sync::Mutex::new((0, Vec::new()));

impl NeighLimits {
    pub fn raise(n: u32) -> Self {
        let mut g = NEIGH.lock().unwrap_or_else(|e| e.into_inner());
        for (k, want) in [
            ("gc_thresh1", n * 2),
            ("gc_thresh2", n * 4),
            ("gc_thresh3", n * 8),
        ] {
            let p = format!("/proc/sys/net/ipv4/neigh/default/{k}");
            let cur: u32 = std::fs::read_to_string(&p).unwrap().trim().parse().unwrap();
            if g.0 == 0 {
                g.1.push((p.clone(), cur.to_string()));
            }
            if cur < want {
                std::fs::write(&p, want.to_string()).unwrap();
            }
        }
        g.0 += 1;
        Self
    }
}

impl Drop for NeighLimits {
    fn drop(&mut self) {
        let mut g = NEIGH.lock().unwrap_or_else(|e| e.into_inner());
        g.0 -= 1;
        if g.0 == 0 {
            for (p, v) in g.1.drain(..).rev() {
                let _ = std::fs::write(p, v);
            }
        }
    }
}

/// The points of the line `label` in the report plot `chart` of a recorded source.
pub fn plotted(src: &wirelab::report::Source, chart: &str, label: &str) -> Vec<(f64, f64)> {
    let charts = wirelab::report::charts_for(src, src.started(), "");
    let c = charts
        .iter()
        .find(|c| c.id == chart)
        .unwrap_or_else(|| panic!("no plot {chart}"));
    let wirelab::report::plot::Kind::Lines(series) = &c.kind else {
        panic!("the plot {chart} has no lines")
    };
    series
        .iter()
        .find(|s| s.label == label)
        .unwrap_or_else(|| panic!("no line {label:?} in the plot {chart}"))
        .points
        .clone()
}

/// `wirelab capture` on `iface` in namespace `ns`, running (attached) in the background.
pub fn start_capture(ns: &str, iface: &str, extra: &[&str]) -> Bg {
    let mut c = wirelab();
    c.args(["capture", "--netns", ns, "--iface", iface])
        .args(extra);
    spawn_ready(c, "capture attached", Duration::from_secs(30))
}

/// `tshark -r FILE -T fields -e F…` rows.
pub fn tshark_fields(file: &std::path::Path, fields: &[&str]) -> Vec<Vec<String>> {
    tshark_rows(file, "", fields)
}

/// `tshark -r FILE [-Y FILTER] -T fields -e F…` rows.
pub fn tshark_rows(file: &std::path::Path, filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut c = Command::new("tshark");
    c.arg("-r").arg(file).args(["-T", "fields"]);
    if !filter.is_empty() {
        c.args(["-Y", filter]);
    }
    for f in fields {
        c.args(["-e", f]);
    }
    let o = ok(c);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}
