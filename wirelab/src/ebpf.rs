//! The embedded kernel objects, one per tool, and the checks to run before loading one.
use anyhow::{bail, Context as _, Result};
use aya::Ebpf;

mod stats;

/// One tool's kernel object, built from `wirelab-ebpf/src/bin/TOOL.rs` by `build.rs`: the
/// tool's own programs and maps only, so starting one tool never creates another's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Capture,
    Fw,
    Gen,
    Inspect,
    Lb,
    Swarm,
    Wan,
}

macro_rules! object_bytes {
    ($name:literal) => {
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/", $name))
    };
}

impl Object {
    pub const ALL: [Object; 7] = [
        Object::Capture,
        Object::Fw,
        Object::Gen,
        Object::Inspect,
        Object::Lb,
        Object::Swarm,
        Object::Wan,
    ];

    /// The tool's name, which is also the object's file name in `OUT_DIR`.
    pub fn name(self) -> &'static str {
        match self {
            Object::Capture => "capture",
            Object::Fw => "fw",
            Object::Gen => "gen",
            Object::Inspect => "inspect",
            Object::Lb => "lb",
            Object::Swarm => "swarm",
            Object::Wan => "wan",
        }
    }

    /// The object's ELF bytes (empty in a build made with `AYA_BUILD_SKIP`).
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Object::Capture => object_bytes!("capture"),
            Object::Fw => object_bytes!("fw"),
            Object::Gen => object_bytes!("gen"),
            Object::Inspect => object_bytes!("inspect"),
            Object::Lb => object_bytes!("lb"),
            Object::Swarm => object_bytes!("swarm"),
            Object::Wan => object_bytes!("wan"),
        }
    }
}

/// Clear errors for the usual reasons loading fails.
pub fn preflight(o: Object) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("wirelab needs root (CAP_BPF and CAP_NET_ADMIN) to load eBPF programs; run it with sudo");
    }
    if o.bytes().is_empty() {
        bail!(
            "this wirelab binary was built without its {} eBPF object (AYA_BUILD_SKIP?)",
            o.name()
        );
    }
    Ok(())
}

/// Load a tool's object (its maps created, no program loaded yet).
pub fn load(o: Object) -> Result<Ebpf> {
    preflight(o)?;
    Ebpf::load(o.bytes()).with_context(|| format!("loading the {} eBPF object", o.name()))
}

/// How many times [`LoadRetrying::load_retrying`] asks the kernel (libbpf asks 5 times too).
const LOAD_ATTEMPTS: u32 = 5;

/// `load()` that asks again when the verifier gave up because a signal came in.
///
/// The verifier checks for pending signals while it works and then fails the load with
/// `EAGAIN`, so a long verification (the capture filter, lb) in a process that gets signals
/// (a test harness, a supervisor) can fail for no fault of the program: CI saw it once. Every
/// program wirelab loads goes through here.
pub trait LoadRetrying {
    fn load_retrying(&mut self) -> Result<(), aya::programs::ProgramError>;
    /// Whether the program is loaded already (it has an fd).
    fn is_loaded(&self) -> bool;
}

fn interrupted(e: &aya::programs::ProgramError) -> bool {
    matches!(e, aya::programs::ProgramError::LoadError { io_error, .. }
        if io_error.raw_os_error() == Some(libc::EAGAIN))
}

macro_rules! load_retrying {
    ($($t:ty),*) => {$(
        impl LoadRetrying for $t {
            fn load_retrying(&mut self) -> Result<(), aya::programs::ProgramError> {
                let mut attempt = 1;
                loop {
                    match self.load() {
                        Err(e) if interrupted(&e) && attempt < LOAD_ATTEMPTS => {
                            tracing::debug!(attempt, "the verifier was interrupted by a signal; loading again");
                            attempt += 1;
                        }
                        other => return other,
                    }
                }
            }

            fn is_loaded(&self) -> bool {
                self.fd().is_ok()
            }
        }
    )*};
}
load_retrying!(
    aya::programs::Xdp,
    aya::programs::SchedClassifier,
    aya::programs::CgroupSockAddr
);

/// The verifier's limit of instructions processed per program (`BPF_COMPLEXITY_LIMIT_INSNS`,
/// since Linux 5.2).
pub const VERIFIER_LIMIT: u32 = 1_000_000;

/// One program of one tool's object, loaded into this kernel (and unloaded again).
#[derive(Debug, Clone)]
pub struct ProgramLoad {
    pub object: Object,
    pub program: String,
    /// The instructions the verifier processed, when the kernel tells (Linux 5.16+).
    pub verified: Option<u32>,
    /// The same count from a statistics load (the program's instructions loaded a second time
    /// with the verifier's statistics log, which says it on every kernel wirelab runs on, then
    /// unloaded): made where `verified` is `None`, or for every program with
    /// [`StatsLoad::Always`]; `Err` says why it did not give a count.
    pub stats_load: Option<Result<u32, String>>,
    /// Why the kernel refused the program: the error and the verifier log's last lines.
    pub error: Option<String>,
}

/// Which programs [`load_every_program_with`] also counts by a statistics load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsLoad {
    /// Those whose count the kernel does not report (before Linux 5.16): `doctor --programs`.
    WhereUnreported,
    /// Every program: where the kernel reports the count too, the two can be compared.
    Always,
}

/// Load every program of every tool's object, as the tools would (nothing is attached): the
/// check that this kernel's verifier accepts all of wirelab, not only the programs a test ran.
/// A kernel that does not report a program's count gets a statistics load of it.
pub fn load_every_program() -> Result<Vec<ProgramLoad>> {
    load_every_program_with(StatsLoad::WhereUnreported)
}

/// [`load_every_program`], with the statistics loads `stats` asks for.
pub fn load_every_program_with(stats: StatsLoad) -> Result<Vec<ProgramLoad>> {
    use aya::programs::Program;
    let mut out = vec![];
    for o in Object::ALL {
        let mut bpf = load(o)?;
        // Made once per object, at its first statistics load; it points at `bpf`'s maps.
        let mut relocated: Option<Result<stats::Relocated, String>> = None;
        let mut names: Vec<String> = bpf.programs().map(|(n, _)| n.to_string()).collect();
        names.sort();
        for name in names {
            let Some(p) = bpf.program_mut(&name) else {
                continue;
            };
            let res = match p {
                Program::Xdp(p) => p.load_retrying().and_then(|()| p.info()),
                Program::SchedClassifier(p) => p.load_retrying().and_then(|()| p.info()),
                Program::CgroupSockAddr(p) => p.load_retrying().and_then(|()| p.info()),
                other => bail!(
                    "{}/{name}: program type {:?} is not one wirelab loads",
                    o.name(),
                    other.prog_type()
                ),
            };
            out.push(match res {
                Ok(info) => {
                    let verified = info.verified_instruction_count();
                    let stats_load =
                        (verified.is_none() || stats == StatsLoad::Always).then(|| {
                            relocated
                                .get_or_insert_with(|| {
                                    stats::Relocated::new(o.bytes(), &bpf)
                                        .map_err(|e| format!("{e:#}"))
                                })
                                .as_ref()
                                .map_err(Clone::clone)
                                .and_then(|r| {
                                    r.count(&name, info.btf_id()).map_err(|e| format!("{e:#}"))
                                })
                        });
                    ProgramLoad {
                        object: o,
                        program: name,
                        verified,
                        stats_load,
                        error: None,
                    }
                }
                Err(e) => ProgramLoad {
                    object: o,
                    program: name,
                    verified: None,
                    stats_load: None,
                    error: Some(load_error(&e)),
                },
            });
        }
    }
    Ok(out)
}

/// A refused program in a few lines: the error, then the verifier log's last lines (where it
/// says why, and how many instructions it processed).
fn load_error(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            format!(
                "{io_error}; verifier: {}",
                log_tail(&verifier_log.to_string())
            )
        }
        e => format!("{e:#}"),
    }
}

/// A verifier log's last lines (where it says why it refused, and how many instructions it
/// processed), on one line.
fn log_tail(log: &str) -> String {
    let tail: Vec<&str> = log.lines().rev().take(6).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    tail.join(" | ")
}
