//! `wirelab wan`: a WAN emulator between two interfaces.
//!
//! Pipeline, in this order for every frame: classify → loss (kernel) → duplicate → corrupt →
//! delay/jitter/reorder → rate → queue limit. Classify, loss and blackhole run in XDP
//! (`wirelab-ebpf/src/wan.rs`); classes that need nothing else are forwarded in the kernel
//! (tc redirect); the rest go through AF_XDP to the timing engine (`engine.rs`).
pub mod dist;
pub mod engine;
pub mod preset;
mod report;
pub mod spec;
pub mod timeline;
pub mod trace;

pub use crate::record::LineKind;
pub use report::{
    configured, measured, ChangeEntry, ChangeOutcome, ChangeSource, ChangeStats, ClassConfig,
    ClassReport, EngineHealth, Line,
};

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use wirelab_common::maps;

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData, PerCpuArray, XskMap},
    programs::tc::TcAttachType,
    EbpfLoader,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wirelab_common::wan::{
    ClassKey, KernelProfile, LossState, WanConfig, WanCounters, CLASSES_HOSTS, CLASSES_PREFIXES,
    CLASS_KEY_FIXED_BITS, LOSS_GEMODEL, LOSS_NONE, LOSS_RANDOM, LOSS_STATE, PROFILE_FAST,
};

use crate::{
    ebpf,
    runtime::{bpf::AttachMode, control as ctl, observe::Observer, tap::TapInfo, Reporting},
    util::Stop,
};
use engine::{mono_ns, Engine, Profile};
use report::{class_configs, ReportMsg, WanMetrics};
use spec::{Limit, Loss, Spec};

named_enum! {
    /// A direction through the emulator: from the first interface to the second, or back.
    #[derive(Default)]
    pub enum Direction {
        #[default]
        AToB = "a_to_b",
        BToA = "b_to_a",
    }
}

/// Both directions, in the order of every per-direction array (`[a_to_b, b_to_a]`).
pub const DIRS: [Direction; 2] = [Direction::AToB, Direction::BToA];

impl Direction {
    /// Its index in per-direction arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The TOML config: a seed, the default class, and per-flow classes.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub seed: Option<u64>,
    #[serde(default)]
    pub default: DirSpecs,
    #[serde(default)]
    pub class: Vec<ClassCfg>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirSpecs {
    /// SPEC for both directions.
    pub both: Option<String>,
    pub a_to_b: Option<String>,
    pub b_to_a: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClassCfg {
    pub name: String,
    /// Whose address `net` matches: "b" (the host behind interface B; default) or "a".
    pub side: Option<String>,
    pub net: String,
    /// tcp, udp, icmp, icmpv6 or a number.
    pub proto: Option<String>,
    /// Port on the matched side (needs proto tcp or udp).
    pub port: Option<u16>,
    pub both: Option<String>,
    pub a_to_b: Option<String>,
    pub b_to_a: Option<String>,
}

/// Everything validated, before anything is attached.
#[derive(Debug, Clone)]
pub struct Plan {
    pub names: Vec<String>,
    pub specs: [Vec<Spec>; 2],
    pub keys: Vec<(ClassKey, u32, u32)>,
    pub seed: u64,
}

fn field<T>(r: std::result::Result<T, spec::SpecError>, f: &str) -> Result<T> {
    r.map_err(|e| anyhow!("{f}: {e}"))
}

fn dir_specs(d: &DirSpecs, base: &str) -> Result<[Spec; 2]> {
    if d.both.is_some() && (d.a_to_b.is_some() || d.b_to_a.is_some()) {
        bail!("{base}: give `both` or `a_to_b`/`b_to_a`, not both");
    }
    let both = d
        .both
        .as_deref()
        .map(|t| field(spec::parse(t), &format!("{base}.both")))
        .transpose()?;
    let ab = match (&d.a_to_b, &both) {
        (Some(t), _) => field(spec::parse(t), &format!("{base}.a_to_b"))?,
        (None, Some(b)) => b.clone(),
        _ => Spec::default(),
    };
    let ba = match (&d.b_to_a, &both) {
        (Some(t), _) => field(spec::parse(t), &format!("{base}.b_to_a"))?,
        (None, Some(b)) => b.clone(),
        _ => Spec::default(),
    };
    Ok([ab, ba])
}

fn parse_proto(s: &str) -> Option<u8> {
    match s {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "icmpv6" => Some(58),
        n => n.parse().ok(),
    }
}

/// The match of a class (side, address, protocol, port) as a classifier key and its prefix
/// length; errors name the field under `base` (`class[0].net`).
pub fn class_key(c: &ClassCfg, base: &str) -> Result<(ClassKey, u32)> {
    let side = match c.side.as_deref() {
        None | Some("b") => 0u8,
        Some("a") => 1u8,
        Some(o) => bail!("{base}.side: {o:?}: use \"a\" or \"b\""),
    };
    let net: IpNet = c
        .net
        .parse()
        .or_else(|_| c.net.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| anyhow!("{base}.net: {:?} is not a CIDR or address", c.net))?;
    let proto = match &c.proto {
        None => 0,
        Some(p) => parse_proto(p).ok_or_else(|| {
            anyhow!("{base}.proto: {p:?}: use tcp, udp, icmp, icmpv6 or a protocol number")
        })?,
    };
    if c.port.is_some() && proto != 6 && proto != 17 {
        bail!("{base}.port: a port needs proto = \"tcp\" or \"udp\"");
    }
    let (addr, bits) = match net.trunc() {
        IpNet::V4(n) => (
            n.network().to_ipv6_mapped().octets(),
            96 + n.prefix_len() as u32,
        ),
        IpNet::V6(n) => (n.network().octets(), n.prefix_len() as u32),
    };
    let key = ClassKey {
        side,
        proto,
        port: c.port.unwrap_or(0).to_be_bytes(),
        addr,
    };
    Ok((key, bits))
}

/// Validate CLI specs + config into a plan. Errors name the field or word.
pub fn plan(cfg: &Config, cli: &DirSpecs, seed: Option<u64>) -> Result<Plan> {
    let mut default = dir_specs(&cfg.default, "default")?;
    let cli_given = cli.both.is_some() || cli.a_to_b.is_some() || cli.b_to_a.is_some();
    if cli_given {
        let c = dir_specs(cli, "command line")?;
        if cli.both.is_some() {
            default = c;
        } else {
            if cli.a_to_b.is_some() {
                default[0] = c[0].clone();
            }
            if cli.b_to_a.is_some() {
                default[1] = c[1].clone();
            }
        }
    }
    let mut names = vec!["default".to_string()];
    let mut specs = [vec![default[0].clone()], vec![default[1].clone()]];
    let mut keys = vec![];
    let mut seen = BTreeMap::new();
    if cfg.class.len() > 65_536 {
        bail!("class: at most 65536 classes (got {})", cfg.class.len());
    }
    for (i, c) in cfg.class.iter().enumerate() {
        let base = format!("class[{i}]");
        if c.name.is_empty() || c.name == "default" {
            bail!("{base}.name: must be set and not \"default\"");
        }
        if seen.insert(c.name.clone(), i).is_some() {
            bail!("{base}.name: duplicate class {:?}", c.name);
        }
        let (key, bits) = class_key(c, &base)?;
        let d = DirSpecs {
            both: c.both.clone(),
            a_to_b: c.a_to_b.clone(),
            b_to_a: c.b_to_a.clone(),
        };
        let [ab, ba] = dir_specs(&d, &base)?;
        let id = names.len() as u32;
        names.push(c.name.clone());
        specs[0].push(ab);
        specs[1].push(ba);
        if keys.iter().any(|(k, b, _)| *k == key && *b == bits) {
            bail!("{base}: same match as an earlier class");
        }
        keys.push((key, bits, id));
    }
    Ok(Plan {
        names,
        specs,
        keys,
        seed: seed
            .or(cfg.seed)
            .unwrap_or_else(|| mono_ns() ^ std::process::id() as u64),
    })
}

/// Initial loss-model state of (direction, class), for the `epoch`-th profile of the class
/// (0 at start, then one per live change of its loss model).
fn loss_state(seed: u64, d: u32, c: u32, epoch: u64) -> LossState {
    let s = splitmix(seed ^ splitmix(((d as u64) << 32) | c as u64) ^ epoch.rotate_left(17));
    LossState {
        rng: s | 1,
        state: 1,
        // A random previous value, so correlated models do not start from 0 (a certain loss).
        last: (splitmix(s) >> 32) as u32,
    }
}

/// splitmix64 finaliser: spreads every input bit over the output (seed mixing).
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn scale(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * u32::MAX as f64) as u32
}

pub fn kernel_profile(s: &Spec) -> KernelProfile {
    let mut k = KernelProfile::default();
    match &s.loss {
        None => k.loss_kind = LOSS_NONE,
        Some(Loss::Random { p, corr }) => {
            k.loss_kind = LOSS_RANDOM;
            k.p = [scale(*p), scale(*corr), 0, 0, 0];
        }
        Some(Loss::State {
            p13,
            p31,
            p32,
            p23,
            p14,
        }) => {
            k.loss_kind = LOSS_STATE;
            k.p = [
                scale(*p13),
                scale(*p31),
                scale(*p32),
                scale(*p23),
                scale(*p14),
            ];
        }
        Some(Loss::Gemodel { p, r, one_h, one_k }) => {
            k.loss_kind = LOSS_GEMODEL;
            k.p = [scale(*p), scale(*r), scale(*one_h), scale(*one_k), 0];
        }
    }
    if s.is_kernel_only() {
        k.flags |= PROFILE_FAST;
    }
    if let Some((d, e)) = s.blackhole {
        k.blackhole_ns = d.as_nanos() as u64;
        k.period_ns = e.as_nanos() as u64;
    }
    k
}

/// `wan --check`: how every class's SPECs were read, with units spelled out (`--json`: this
/// type, read back by the tests).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    pub ok: bool,
    /// The seed of the decisions (random unless `--seed` or the config sets one).
    pub seed: u64,
    pub classes: Vec<ClassCheck>,
    pub warnings: Vec<String>,
    /// The expanded `--timeline`: every change with its time, class and SPECs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<timeline::Schedule>,
}

/// One class in [`CheckReport`]: its SPECs as read, per direction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassCheck {
    pub name: String,
    pub a_to_b: String,
    pub b_to_a: String,
}

/// Warnings for settings that will surprise (netem's classic: limit × delay).
pub fn warnings(names: &[String], specs: &[Vec<Spec>; 2]) -> Vec<String> {
    let mut w = vec![];
    for (d, v) in specs.iter().enumerate() {
        for (c, s) in v.iter().enumerate() {
            let hold = s.delay.as_secs_f64();
            // `limit N link` does not count the delay stage.
            if hold <= 0.0 || s.limit_link {
                continue;
            }
            match &s.limit {
                Some(Limit::Packets(n)) => w.push(format!(
                    "class {} {}: limit {n} packets with delay {:?} drops everything above {:.0} packets/s",
                    names[c], DIRS[d], s.delay, *n as f64 / hold
                )),
                Some(Limit::Bytes(b)) => w.push(format!(
                    "class {} {}: limit {b} bytes with delay {:?} drops everything above {:.2} Mbit/s",
                    names[c], DIRS[d], s.delay, *b as f64 * 8.0 / hold / 1e6
                )),
                None => {}
            }
        }
    }
    w
}

pub struct Options {
    pub iface_a: String,
    pub iface_b: String,
    pub netns: Option<String>,
    pub specs: DirSpecs,
    pub config: Option<PathBuf>,
    pub seed: Option<u64>,
    pub frames: u64,
    /// Run the engine with SCHED_FIFO priority 20.
    pub realtime: bool,
    /// Timed live changes, played from the start (`--timeline FILE`).
    pub timeline: Option<PathBuf>,
    pub report: Reporting,
}

pub fn load_config(p: Option<&Path>) -> Result<Config> {
    match p {
        None => Ok(Config::default()),
        Some(p) => {
            let t = crate::util::read_user_file(p, crate::util::limit::CONFIG)?;
            toml::from_str(&t).map_err(|e| anyhow!("{}: {e}", p.display()))
        }
    }
}

/// Abstract socket name of the emulator between `a` and `b` (per network namespace).
pub fn control_name(a: &str, b: &str) -> String {
    format!("wirelab-wan/{a},{b}")
}

/// Control sockets of the emulators running in this network namespace.
pub fn running() -> Vec<String> {
    ctl::listening("wirelab-wan/")
}

/// The answer to a live change: what is now in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetReply {
    pub applied: String,
}

/// A live change, sent over the control socket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetRequest {
    pub class: Option<String>,
    pub both: Option<String>,
    pub a_to_b: Option<String>,
    pub b_to_a: Option<String>,
    /// Restart the class's random decisions (loss, duplicate, corrupt, reorder, jitter) from
    /// this seed, as if the emulator had started with it.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Start a timeline now (replacing a running one), or stop the running one; the SPEC
    /// fields are not used then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<TimelineCmd>,
}

/// What the control socket takes: a capture asking where the tap is (`{"tap": IFACE}`), or a
/// live change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ControlRequest {
    Tap { tap: String },
    Set(SetRequest),
}

/// The control socket of the emulator running on `iface` in this namespace.
fn socket_on(iface: &str) -> Option<String> {
    running().into_iter().find(|n| {
        n.strip_prefix("wirelab-wan/")
            .is_some_and(|p| p.split(',').any(|i| i == iface))
    })
}

/// Whether a wan runs on `iface` in this namespace.
pub fn running_on(iface: &str) -> bool {
    socket_on(iface).is_some()
}

/// Ask the emulator running on `iface` (in this namespace) where its capture tap is.
pub fn tap(iface: &str) -> Result<TapInfo> {
    let name = socket_on(iface).ok_or_else(|| anyhow!("no wirelab wan runs on {iface} here"))?;
    let req = ControlRequest::Tap {
        tap: iface.to_string(),
    };
    ctl::request(&name, &req, Duration::from_secs(5))
}

/// What each interface's capture is told: the tap's maps, the XDP mode there, class names.
fn taps(
    bpf: &aya::Ebpf,
    opts: &Options,
    plan: &Plan,
    modes: &[AttachMode],
) -> Result<BTreeMap<String, TapInfo>> {
    let mut out = BTreeMap::new();
    for (iface, mode) in [&opts.iface_a, &opts.iface_b].into_iter().zip(modes) {
        let mut t = TapInfo::of(
            bpf,
            wirelab_common::maps::WAN_TAP,
            wirelab_common::maps::WAN_TAP_ON,
        )?;
        t.mode = Some(*mode);
        t.names = plan
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32, n.clone()))
            .collect();
        out.insert(iface.clone(), t);
    }
    Ok(out)
}

/// A timeline started or stopped over the control socket (a sweep's runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum TimelineCmd {
    /// Play `timeline` from now; its steps without `class` change each class of `classes`.
    Start {
        timeline: timeline::Timeline,
        classes: Vec<String>,
    },
    Stop,
}

/// The SPECs in force per class (`initial` of [`timeline::expand`]).
fn texts(names: &[String], specs: &[Vec<Spec>; 2]) -> BTreeMap<String, [String; 2]> {
    names
        .iter()
        .enumerate()
        .map(|(c, n)| {
            (
                n.clone(),
                [specs[0][c].text.clone(), specs[1][c].text.clone()],
            )
        })
        .collect()
}

/// A `--timeline` file expanded against a validated plan (steps without `class` change the
/// default class).
pub fn plan_timeline(p: &Path, plan: &Plan) -> Result<timeline::Schedule> {
    let tl = timeline::load(p)?;
    timeline::expand(
        &tl,
        &texts(&plan.names, &plan.specs),
        &["default".to_string()],
    )
    .with_context(|| format!("{}", p.display()))
}

/// Send a live change to the emulator running in `netns`.
/// Send a live change to an emulator running in the current network namespace (the caller
/// enters `--netns` first); `between` picks one when several run.
pub fn send_set(between: Option<(&str, &str)>, req: &SetRequest) -> Result<String> {
    let name = ctl::pick(
        "wirelab-wan/",
        between.map(|(a, b)| control_name(a, b)),
        "wirelab wan",
        "--between IF_A IF_B",
    )?;
    let r: SetReply = ctl::request(&name, req, Duration::from_secs(5))?;
    Ok(r.applied)
}

struct Maps {
    cfg: Array<MapData, WanConfig>,
    profiles: Array<MapData, KernelProfile>,
    max: u32,
}

impl Maps {
    fn write_profiles(&mut self, gen: u32, specs: &[Vec<Spec>; 2]) -> Result<()> {
        for (d, v) in specs.iter().enumerate() {
            for (c, s) in v.iter().enumerate() {
                let idx = (gen * 2 + d as u32) * self.max + c as u32;
                self.profiles.set(idx, kernel_profile(s), 0)?;
            }
        }
        Ok(())
    }

    fn write_classes(&mut self, gen: u32, specs: &[Vec<Spec>; 2], classes: &[usize]) -> Result<()> {
        for (d, v) in specs.iter().enumerate() {
            for &c in classes {
                let idx = (gen * 2 + d as u32) * self.max + c as u32;
                self.profiles.set(idx, kernel_profile(&v[c]), 0)?;
            }
        }
        Ok(())
    }

    fn flip(&mut self, gen: u32) -> Result<()> {
        let mut c = self.cfg.get(&0, 0)?;
        c.gen = gen;
        self.cfg.set(0, c, 0)?;
        Ok(())
    }
}

/// What `validate` found good: the config, its plan, each class's profiles, the interfaces.
struct Validated {
    cfg: Config,
    plan: Plan,
    profiles: [Vec<Profile>; 2],
    ifindex: [u32; 2],
    schedule: Option<timeline::Schedule>,
}

/// Everything `run` checks before it touches the system: kernel features, the config and its
/// plan, every class's profile (distribution files are read here), the two interfaces.
fn validate(opts: &Options) -> Result<Validated> {
    crate::kernel::require(&[crate::kernel::feature::BPF_LINK_XDP])?;
    let cfg = load_config(opts.config.as_deref())?;
    let plan = plan(&cfg, &opts.specs, opts.seed)?;
    let schedule = opts
        .timeline
        .as_deref()
        .map(|p| plan_timeline(p, &plan))
        .transpose()?;
    let mut profiles: [Vec<Profile>; 2] = [vec![], vec![]];
    for d in 0..2 {
        for (c, s) in plan.specs[d].iter().enumerate() {
            profiles[d].push(
                Profile::new(s.clone(), opts.frames)
                    .with_context(|| format!("class {} {}", plan.names[c], DIRS[d]))?,
            );
        }
    }
    if opts.iface_a == opts.iface_b {
        bail!("--between needs two different interfaces");
    }
    let mut ifindex = [0u32; 2];
    for (i, n) in [&opts.iface_a, &opts.iface_b].iter().enumerate() {
        ifindex[i] = nix::net::if_::if_nametoindex(n.as_str()).map_err(|_| {
            anyhow!("no interface named {n:?} in this network namespace (use --netns NAME for a lab host)")
        })?;
    }
    Ok(Validated {
        cfg,
        plan,
        profiles,
        ifindex,
        schedule,
    })
}

/// The loaded object and the maps taken out of it. Every map taken must live as long as the
/// programs are loaded: the programs are loaded at attach time and refer to the maps' fds.
struct Loaded {
    bpf: aya::Ebpf,
    maps: Maps,
    counters: PerCpuArray<MapData, WanCounters>,
    loss: Array<MapData, LossState>,
    classes: LpmTrie<MapData, ClassKey, u32>,
    hosts: aya::maps::HashMap<MapData, ClassKey, u32>,
}

/// Load the object with per-class maps sized to the class count and fill them: loss states,
/// class keys (single addresses in a hash table, prefixes in the LPM trie), profiles, config.
fn load(plan: &Plan, ifindex: [u32; 2], n_host: usize, n_prefix: usize) -> Result<Loaded> {
    let max = plan.names.len() as u32;
    let mut bpf = EbpfLoader::new()
        .map_max_entries(maps::WAN_PROFILES, 4 * max)
        .map_max_entries(maps::WAN_LOSS, 2 * max)
        .map_max_entries(maps::WAN_COUNTERS, 2 * max)
        .map_max_entries(maps::WAN_CLASSES, (n_prefix as u32).max(1))
        .map_max_entries(maps::WAN_CLASS_HOSTS, (n_host as u32).max(1))
        .load(ebpf::Object::Wan.bytes())
        .context("loading the wirelab eBPF object")?;
    let mut maps = Maps {
        cfg: Array::try_from(bpf.take_map(maps::WAN_CONFIG).context(maps::WAN_CONFIG)?)?,
        profiles: Array::try_from(
            bpf.take_map(maps::WAN_PROFILES)
                .context(maps::WAN_PROFILES)?,
        )?,
        max,
    };
    let counters: PerCpuArray<MapData, WanCounters> = PerCpuArray::try_from(
        bpf.take_map(maps::WAN_COUNTERS)
            .context(maps::WAN_COUNTERS)?,
    )?;
    let mut loss: Array<MapData, LossState> =
        Array::try_from(bpf.take_map(maps::WAN_LOSS).context(maps::WAN_LOSS)?)?;
    for d in 0..2u32 {
        for c in 0..max {
            loss.set(d * max + c, loss_state(plan.seed, d, c, 0), 0)?;
        }
    }
    let mut classes: LpmTrie<MapData, ClassKey, u32> =
        LpmTrie::try_from(bpf.take_map(maps::WAN_CLASSES).context(maps::WAN_CLASSES)?)?;
    let mut hosts: aya::maps::HashMap<MapData, ClassKey, u32> = aya::maps::HashMap::try_from(
        bpf.take_map(maps::WAN_CLASS_HOSTS)
            .context(maps::WAN_CLASS_HOSTS)?,
    )?;
    for (k, bits, id) in &plan.keys {
        if *bits == 128 {
            hosts.insert(k, id, 0)?;
        } else {
            classes.insert(&Key::new(CLASS_KEY_FIXED_BITS + bits, *k), id, 0)?;
        }
    }
    let class_tables = if n_host > 0 { CLASSES_HOSTS } else { 0 }
        | if n_prefix > 0 { CLASSES_PREFIXES } else { 0 };
    maps.write_profiles(0, &plan.specs)?;
    maps.write_profiles(1, &plan.specs)?;
    maps.cfg.set(
        0,
        WanConfig {
            ifindex,
            max_classes: max,
            gen: 0,
            epoch_ns: mono_ns(),
            class_tables,
            _pad: 0,
        },
        0,
    )?;

    Ok(Loaded {
        bpf,
        maps,
        counters,
        loss,
        classes,
        hosts,
    })
}

/// Attach the tc fast path (TCX, or a clsact filter before 6.6), then XDP, to both
/// interfaces; returns the XDP mode of each.
fn attach(bpf: &mut aya::Ebpf, opts: &Options) -> Result<Vec<AttachMode>> {
    for iface in [&opts.iface_a, &opts.iface_b] {
        let tc = crate::runtime::bpf::attach_tc(bpf, "wan_fwd", iface, TcAttachType::Ingress)
            .with_context(|| format!("attaching the tc fast path to {iface}"))?;
        tracing::debug!(%iface, %tc, "wan_fwd attached");
    }
    let mut modes = vec![];
    for iface in [&opts.iface_a, &opts.iface_b] {
        let mode = crate::runtime::bpf::attach_xdp_noting(
            bpf,
            "wan_xdp",
            iface,
            None,
            "loss decisions of a class may interleave across CPUs, so --seed reproducibility is not exact",
        )?;
        modes.push(mode);
    }

    Ok(modes)
}

/// Run the emulator until `duration`, SIGINT or SIGTERM. Returns the final per-class totals.
pub fn run(opts: &Options, stop: &Stop) -> Result<Vec<ClassReport>> {
    // 1. Validate everything before touching the system, the kernel's features first.
    let Validated {
        cfg,
        plan,
        profiles,
        ifindex,
        schedule,
    } = validate(opts)?;
    ebpf::preflight(ebpf::Object::Wan)?;
    for w in warnings(&plan.names, &plan.specs) {
        tracing::warn!("{w}");
    }
    // Control socket for live changes, bound before anything is attached.
    let listener = bind_control(opts)?;
    let max = plan.names.len() as u32;
    // Single-address classes go to a hash table, prefixes to the LPM trie.
    let n_host = plan.keys.iter().filter(|(_, b, _)| *b == 128).count();
    let n_prefix = plan.keys.len() - n_host;

    // 2. Load with per-class maps sized to the class count, and fill them.
    let Loaded {
        mut bpf,
        mut maps,
        counters,
        mut loss,
        classes: _classes,
        hosts: _hosts,
    } = load(&plan, ifindex, n_host, n_prefix)?;

    // 3. The engine's sockets, registered in the XSKMAP.
    let mut engine = Engine::new(ifindex, opts.frames, profiles, plan.seed)
        .map_err(engine::explain_xsk_error)?;
    engine.notify_drops([&opts.iface_a, &opts.iface_b])?;
    let xsks = register_xsks(&mut bpf, &engine)?;

    // 4. Attach: tc fast path first (TCX, or a clsact filter before 6.6), then XDP.
    let modes = attach(&mut bpf, opts)?;

    // Run record and metrics (both optional).
    let obs = report::observer(opts, &cfg, &plan, &modes)?;
    let mets = (opts.report.metrics.as_ref())
        .map(|ep| WanMetrics::serve("wan", ep))
        .transpose()?;

    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0);
    }
    // 5. The reporter and control threads, spawned before the engine thread turns real-time.
    let start = Instant::now();
    let taps = taps(&bpf, opts, &plan, &modes)?;
    let threads = spawn_threads(
        opts, &plan, listener, counters, obs, mets, schedule, start, taps,
    )?;
    if opts.realtime {
        set_realtime();
    }
    tracing::info!(
        a = %opts.iface_a, b = %opts.iface_b, classes = max, seed = plan.seed,
        mode = %modes.iter().map(|m| m.as_str()).collect::<Vec<_>>().join("/"), a_to_b = %plan.specs[0][0].text, b_to_a = %plan.specs[1][0].text,
        "wan running"
    );

    // 6. The loop.
    let end = EngineLoop::new(
        opts,
        stop,
        &plan,
        &mut engine,
        &mut maps,
        &mut loss,
        &threads,
        start,
    )
    .run()?;

    // 7. Stop taking changes, detach XDP and tc (the bridge carries traffic again), then
    // release what is queued.
    let fatal = end.fatal;
    let rows = shutdown(
        threads,
        xsks,
        bpf,
        &mut engine,
        &plan,
        max,
        end.start,
        end.specs,
    )?;
    warn_anomalies(&engine);
    tracing::info!("wan stopped; interfaces detached");
    if let Some(f) = fatal {
        bail!("{f}");
    }
    Ok(rows)
}

/// The control socket for live changes: an abstract unix socket, so it is private to this
/// network namespace and vanishes with the process.
fn bind_control(opts: &Options) -> Result<UnixListener> {
    let cname = control_name(&opts.iface_a, &opts.iface_b);
    ctl::bind(
        &cname,
        &format!(
            "another wirelab wan between {} and {}",
            opts.iface_a, opts.iface_b
        ),
    )
}

/// Register the engine's two sockets in the XSKMAP (index = direction).
fn register_xsks(bpf: &mut aya::Ebpf, engine: &Engine) -> Result<XskMap<MapData>> {
    let mut xsks = XskMap::try_from(bpf.take_map(maps::WAN_XSKS).context(maps::WAN_XSKS)?)?;
    let fds = engine.fds();
    for (d, fd) in fds.iter().enumerate() {
        let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
        xsks.set(d as u32, bfd, 0)?;
    }
    Ok(xsks)
}

/// The threads beside the engine's and the channels to them.
struct Threads {
    rep_tx: std::sync::mpsc::Sender<ReportMsg>,
    reporter: std::thread::JoinHandle<Result<Vec<ClassReport>>>,
    ctl_rx: std::sync::mpsc::Receiver<Change>,
    ctl_stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    control_thread: std::thread::JoinHandle<()>,
}

/// Spawn the reporter and the control thread (before the engine's thread turns real-time,
/// so they stay normal threads).
#[allow(clippy::too_many_arguments)]
fn spawn_threads(
    opts: &Options,
    plan: &Plan,
    listener: UnixListener,
    counters: PerCpuArray<MapData, WanCounters>,
    obs: Observer,
    mets: Option<WanMetrics>,
    schedule: Option<timeline::Schedule>,
    start: Instant,
    taps: BTreeMap<String, TapInfo>,
) -> Result<Threads> {
    let max = plan.names.len() as u32;
    // The reporter reads the kernel's per-class counters and prints, off the engine's thread
    // (with 65,536 classes a read of all counters takes a noticeable fraction of a second).
    // Spawned before the engine thread turns real-time, so it stays a normal thread.
    let (rep_tx, rep_rx) = std::sync::mpsc::channel::<ReportMsg>();
    let names = plan.names.clone();
    let reporter = std::thread::Builder::new()
        .name("wan-report".into())
        .spawn(move || report::reporter(counters, names, max, rep_rx, obs, mets))?;
    // The control thread reads and validates `wan set` requests, so a slow or stuck client
    // never holds up the engine; the engine only applies ready changes. Also spawned before
    // the switch to real time.
    let (ctl_tx, ctl_rx) = std::sync::mpsc::channel::<Change>();
    let ctl_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let control_thread = {
        let ctx = Control {
            names: plan.names.clone(),
            specs: plan.specs.clone(),
            frames: opts.frames,
            tx: ctl_tx,
            stop: ctl_stop.clone(),
            rep_tx: rep_tx.clone(),
            start,
            player: None,
            taps: std::sync::Arc::new(taps),
        };
        std::thread::Builder::new()
            .name("wan-control".into())
            .spawn(move || ctx.run(listener, schedule))?
    };
    Ok(Threads {
        rep_tx,
        reporter,
        ctl_rx,
        ctl_stop,
        control_thread,
    })
}

/// Release times are the product: run the engine at a real-time priority so other load on
/// the machine does not delay departures. The loop sleeps between departures.
fn set_realtime() {
    let p = libc::sched_param { sched_priority: 20 };
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } != 0 {
        tracing::warn!(
            "could not switch to SCHED_FIFO ({}); timing will suffer under load",
            std::io::Error::last_os_error()
        );
    }
}

/// The engine thread's loop and its state: what it reads, and what it changes as it goes.
struct EngineLoop<'a> {
    opts: &'a Options,
    stop: &'a Stop,
    plan: &'a Plan,
    max: u32,
    engine: &'a mut Engine,
    maps: &'a mut Maps,
    loss: &'a mut Array<MapData, LossState>,
    ctl_rx: &'a std::sync::mpsc::Receiver<Change>,
    rep_tx: &'a std::sync::mpsc::Sender<ReportMsg>,
    fds: [i32; 2],
    start: Instant,
    last_report: Instant,
    last_ctl: Instant,
    gen: u32,
    specs: [Vec<Spec>; 2],
    last_changed: Option<usize>,
    changes: u64,
    /// A change handed over ahead of its time (a timeline's), applied when due.
    pending: Option<Change>,
    fatal: Option<String>,
}

/// What the loop leaves for the shutdown: its start, the specs in force, why it failed.
struct LoopEnd {
    start: Instant,
    specs: [Vec<Spec>; 2],
    fatal: Option<String>,
}

impl<'a> EngineLoop<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        opts: &'a Options,
        stop: &'a Stop,
        plan: &'a Plan,
        engine: &'a mut Engine,
        maps: &'a mut Maps,
        loss: &'a mut Array<MapData, LossState>,
        threads: &'a Threads,
        start: Instant,
    ) -> Self {
        engine.start_traces(mono_ns());
        Self {
            fatal: None,
            last_changed: None,
            changes: 0,
            pending: None,
            start,
            last_report: Instant::now(),
            last_ctl: Instant::now(),
            gen: 0,
            specs: plan.specs.clone(),
            fds: engine.fds(),
            opts,
            stop,
            plan,
            max: plan.names.len() as u32,
            engine,
            maps,
            loss,
            ctl_rx: &threads.ctl_rx,
            rep_tx: &threads.rep_tx,
        }
    }

    /// Until stopped, the duration is over, or something fatal happens.
    fn run(mut self) -> Result<LoopEnd> {
        loop {
            if self.stop.requested()
                || self
                    .opts
                    .report
                    .duration
                    .is_some_and(|d| self.start.elapsed() >= d)
            {
                break;
            }
            let now = mono_ns();
            self.engine.receive(now);
            self.engine.transmit_due(mono_ns());
            if let Some(f) = self.engine.fatal.take() {
                self.fatal = Some(f);
                break;
            }
            if self.last_ctl.elapsed() >= Duration::from_millis(10) {
                self.last_ctl = Instant::now();
                self.check_links();
                if self.fatal.is_some() {
                    break;
                }
            }
            // Live changes: looked for on every pass (a channel read), so one is applied
            // within a pass of its time; the control thread sends one at a time.
            if self.pending.is_none() {
                self.pending = self.ctl_rx.try_recv().ok();
            }
            if self
                .pending
                .as_ref()
                .is_some_and(|c| c.origin.due.is_none_or(|d| Instant::now() >= d))
            {
                if let Some(ch) = self.pending.take() {
                    self.apply_change(ch)?;
                }
            }
            if self.last_report.elapsed() >= self.opts.report.interval {
                self.report_interval();
            }
            self.wait();
        }
        Ok(LoopEnd {
            start: self.start,
            specs: self.specs,
            fatal: self.fatal,
        })
    }

    /// Link state of both interfaces: frames due for a down one are dropped, counted.
    fn check_links(&mut self) {
        for (i, name) in [&self.opts.iface_a, &self.opts.iface_b].iter().enumerate() {
            match crate::nl::link_carrier(name) {
                Some(up) => self.engine.set_link(i, up),
                None => {
                    if self.fatal.is_none() {
                        self.fatal = Some(format!("interface {name} went away"));
                    }
                }
            }
        }
    }

    /// Apply a live change: kernel maps, loss states, the engine; tell the reporter, answer.
    #[allow(clippy::needless_range_loop)] // (direction, class) grids read best as indexes
    fn apply_change(&mut self, ch: Change) -> Result<()> {
        let Change {
            specs: new_specs,
            class,
            profiles: new_profiles,
            applied,
            seed: new_seed,
            origin,
            reply,
        } = ch;
        // Kernel: bring the idle generation up to date (the class changed now and the
        // one changed by the previous flip), then flip in one write.
        let next = self.gen ^ 1;
        let mut changed = vec![class];
        changed.extend(self.last_changed.filter(|c| *c != class));
        self.maps.write_classes(next, &new_specs, &changed)?;
        self.maps.flip(next)?;
        self.gen = next;
        // A new loss model starts from its initial state; a seeded change restarts
        // it (and the engine's decisions) from the seed, as at start-up.
        for d in 0..2 {
            let st = match new_seed {
                Some(s) => Some(loss_state(s, d as u32, class as u32, 0)),
                None if new_specs[d][class].loss != self.specs[d][class].loss => {
                    self.changes += 1;
                    Some(loss_state(
                        self.plan.seed,
                        d as u32,
                        class as u32,
                        self.changes,
                    ))
                }
                None => None,
            };
            if let Some(st) = st {
                let _ = self.loss.set(d as u32 * self.max + class as u32, st, 0);
            }
        }
        self.last_changed = Some(class);
        self.engine.set_class(class, new_profiles)?;
        if let Some(s) = new_seed {
            self.engine.reseed_class(class, s);
        }
        self.specs = new_specs;
        let now = Instant::now();
        let latency_ms = now
            .saturating_duration_since(origin.requested)
            .as_secs_f64()
            * 1e3;
        tracing::info!(change = %applied, source = %origin.source, latency_ms, "live change applied");
        let since = |i: Instant| i.saturating_duration_since(self.start).as_secs_f64();
        let _ = self.rep_tx.send(ReportMsg::Change(
            ChangeEntry {
                kind: ChangeOutcome::Applied,
                source: origin.source,
                label: origin.label,
                requested_t: Some(since(origin.requested)),
                latency_ms: Some(latency_ms),
                error: None,
                unix: crate::util::unix_now(),
                applied: applied.clone(),
                t: since(now),
                classes: class_configs(&self.plan.names, &self.specs),
            },
            Some(self.specs.clone()),
        ));
        let _ = reply.send(SetReply { applied });
        Ok(())
    }

    /// Hand this interval's engine stats to the reporter.
    fn report_interval(&mut self) {
        let secs = self.start.elapsed().as_secs_f64();
        self.last_report = Instant::now();
        let mut eng = vec![];
        for d in 0..2 {
            for c in 0..self.max as usize {
                let e = self.engine.take_interval(d, c);
                if e.rx > 0
                    || e.tx > 0
                    || e.queue_depth > 0
                    || e.queue_drops > 0
                    || e.link_down_drops > 0
                {
                    eng.push((d, c, e));
                }
            }
        }
        let _ = self.rep_tx.send(ReportMsg::Interval(
            secs,
            eng,
            EngineHealth::of(self.engine),
        ));
    }

    /// Sleep until the next departure (at most 1 ms), or spin when it is very close.
    fn wait(&self) {
        let next = self.engine.next_due();
        let now = mono_ns();
        // A change held for its time wakes the loop on time too.
        let change_ns = self.pending.as_ref().and_then(|c| c.origin.due).map(|d| {
            d.saturating_duration_since(Instant::now())
                .as_nanos()
                .min(u64::MAX as u128) as u64
        });
        let wait_ns = next
            .map(|n| n.saturating_sub(now))
            .unwrap_or(1_000_000)
            .min(change_ns.unwrap_or(u64::MAX))
            .min(1_000_000);
        if wait_ns > 2_000 {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: wait_ns as i64,
            };
            let mut pfds = [
                libc::pollfd {
                    fd: self.fds[0],
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.fds[1],
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            unsafe {
                libc::ppoll(pfds.as_mut_ptr(), 2, &ts, std::ptr::null());
            }
        }
    }
}

/// Stop taking changes, detach XDP and tc (the bridge carries traffic again), release what
/// is queued, and hand the totals to the reporter; returns its final rows.
#[allow(clippy::too_many_arguments)]
fn shutdown(
    threads: Threads,
    xsks: XskMap<MapData>,
    bpf: aya::Ebpf,
    engine: &mut Engine,
    plan: &Plan,
    max: u32,
    start: Instant,
    specs: [Vec<Spec>; 2],
) -> Result<Vec<ClassReport>> {
    let Threads {
        rep_tx,
        reporter,
        ctl_rx,
        ctl_stop,
        control_thread,
    } = threads;
    ctl_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(ctl_rx);
    let _ = control_thread.join();
    drop(xsks);
    let secs = start.elapsed().as_secs_f64();
    drop(bpf);
    engine.flush();
    let mut eng = vec![];
    for d in 0..2 {
        for c in 0..max as usize {
            let e = engine.total(d, c);
            if e.rx > 0 || e.tx > 0 || e.queue_drops > 0 || e.link_down_drops > 0 {
                eng.push((d, c, e));
            }
        }
    }
    let _ = rep_tx.send(ReportMsg::Final(
        secs,
        eng,
        plan.seed,
        specs.clone(),
        EngineHealth::of(engine),
    ));
    drop(rep_tx);
    reporter
        .join()
        .map_err(|_| anyhow!("the stats reporter thread panicked"))?
}

/// Warn when the engine lost frames of its own.
fn warn_anomalies(engine: &Engine) {
    let xsk_drops = engine.xsk_drops();
    if engine.no_frame_drops > 0
        || engine.bad_meta > 0
        || xsk_drops > 0
        || engine.link_down_drops > 0
    {
        tracing::warn!(
            no_frame = engine.no_frame_drops,
            bad_meta = engine.bad_meta,
            xsk_rx_dropped = xsk_drops,
            link_down = engine.link_down_drops,
            "engine anomalies: frames dropped for lack of UMEM frames or ring space, or without class metadata"
        );
    }
}

/// How long before its time a timeline change is handed to the engine, which holds it until
/// then: validation and the hand-over happen ahead, the switch itself on time.
const LEAD: Duration = Duration::from_millis(250);

/// Where a live change comes from, and what it is for the record.
#[derive(Debug, Clone)]
struct Origin {
    source: ChangeSource,
    /// The timeline's label of the change ("steps[1] ramp delay 25ms (1/12)").
    label: Option<String>,
    /// When it was asked for: a timeline's scheduled time, a socket request's arrival.
    requested: Instant,
    /// Not before this time (timeline changes).
    due: Option<Instant>,
}

/// A validated live change, prepared off the engine's thread: all specs after the change,
/// the class it touched, that class's new profiles, a description, and where the engine's
/// answer goes.
struct Change {
    specs: [Vec<Spec>; 2],
    class: usize,
    profiles: [Profile; 2],
    applied: String,
    seed: Option<u64>,
    origin: Origin,
    reply: std::sync::mpsc::Sender<SetReply>,
}

/// Who waits for the answer to a request: a socket client, or the timeline player.
enum Asker {
    Socket(UnixStream),
    Timeline {
        reply: std::sync::mpsc::Sender<Result<SetReply>>,
        /// The player's stop flag: a request of a stopped timeline is dropped.
        stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    },
}

type Request = (Asker, Origin, Result<SetRequest>);

/// A running timeline player and its stop flag.
struct Player(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for Player {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The control thread's state: the classes, the SPECs in force (changes come only from here,
/// and it waits for every answer, so they stay equal to the engine's), where changes go.
struct Control {
    names: Vec<String>,
    specs: [Vec<Spec>; 2],
    frames: u64,
    tx: std::sync::mpsc::Sender<Change>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    rep_tx: std::sync::mpsc::Sender<ReportMsg>,
    start: Instant,
    player: Option<Player>,
    /// What a capture on each interface is told about the tap.
    taps: std::sync::Arc<BTreeMap<String, TapInfo>>,
}

impl Control {
    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Accept `wan set` connections on the abstract socket and play the timeline (if any).
    /// Each connection's request line is read by a short-lived thread of its own (a client
    /// that connects and says nothing holds up only that thread); the timeline player sends
    /// its requests into the same queue. This thread takes the requests one at a time —
    /// validates, builds the change, hands it to the engine, waits until the engine has
    /// applied it, answers.
    fn run(mut self, listener: UnixListener, schedule: Option<timeline::Schedule>) {
        let (req_tx, req_rx) = std::sync::mpsc::channel::<Request>();
        if let Some(s) = schedule {
            self.player = Some(play(s, self.start, req_tx.clone(), self.stop.clone()));
        }
        let mut tap_checked = Instant::now();
        while !self.stopped() {
            match listener.accept() {
                Ok((s, _)) => {
                    let req_tx = req_tx.clone();
                    let taps = self.taps.clone();
                    let _ = std::thread::Builder::new()
                        .name("wan-control-read".into())
                        .spawn(move || {
                            let req = match ctl::read_request(&s, Duration::from_secs(2)) {
                                Ok(ControlRequest::Tap { tap }) => {
                                    // Fixed for the run: answered here, not by the queue.
                                    let t = taps
                                        .get(&tap)
                                        .cloned()
                                        .ok_or_else(|| anyhow!("wan does not run on {tap}"));
                                    let _ = ctl::reply(&s, &ctl::Reply::from_result(t));
                                    return;
                                }
                                Ok(ControlRequest::Set(r)) => Ok(r),
                                Err(e) => Err(e),
                            };
                            let origin = Origin {
                                source: ChangeSource::Set,
                                label: None,
                                requested: Instant::now(),
                                due: None,
                            };
                            let _ = req_tx.send((Asker::Socket(s), origin, req));
                        });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if tap_checked.elapsed() >= Duration::from_secs(1) {
                tap_checked = Instant::now();
                if let Some(t) = self.taps.values().next() {
                    if let Err(e) = crate::runtime::tap::release_dead(t) {
                        tracing::warn!("checking the capture tap: {e:#}");
                    }
                }
            }
            let Ok((asker, origin, req)) = req_rx.recv_timeout(Duration::from_millis(10)) else {
                continue;
            };
            let reply = match &asker {
                Asker::Timeline { stopped, .. }
                    if stopped.load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    Err(anyhow!("the timeline was stopped"))
                }
                _ => match req {
                    Ok(SetRequest {
                        timeline: Some(cmd),
                        ..
                    }) => self.timeline(cmd, &req_tx),
                    Ok(r) => self.change(&r, origin.clone()),
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = &reply {
                self.refused(&origin, e);
            }
            match asker {
                Asker::Socket(s) => {
                    let _ = ctl::reply(&s, &ctl::Reply::from_result(reply));
                }
                Asker::Timeline { reply: r, .. } => {
                    let _ = r.send(reply);
                }
            }
        }
    }

    /// Start or stop a timeline (a sweep's run).
    fn timeline(
        &mut self,
        cmd: TimelineCmd,
        req_tx: &std::sync::mpsc::Sender<Request>,
    ) -> Result<SetReply> {
        self.player = None;
        match cmd {
            TimelineCmd::Stop => Ok(SetReply {
                applied: "timeline stopped".into(),
            }),
            TimelineCmd::Start { timeline, classes } => {
                let s = timeline::expand(&timeline, &texts(&self.names, &self.specs), &classes)?;
                let applied = format!(
                    "timeline started: {} changes over {:.3}s",
                    s.changes.len(),
                    s.length_s
                );
                self.player = Some(play(s, Instant::now(), req_tx.clone(), self.stop.clone()));
                Ok(SetReply { applied })
            }
        }
    }

    /// Validate a change, hand it to the engine, wait until it is applied.
    fn change(&mut self, r: &SetRequest, origin: Origin) -> Result<SetReply> {
        let (new_specs, class, profiles, applied) =
            prepare(r, &self.names, &self.specs, self.frames)?;
        let (rtx, rrx) = std::sync::mpsc::channel();
        let ch = Change {
            specs: new_specs.clone(),
            class,
            profiles,
            applied,
            seed: r.seed,
            origin,
            reply: rtx,
        };
        if self.tx.send(ch).is_err() {
            bail!("wan is stopping");
        }
        // The engine applies it at once (or at its time); wait for its answer however long
        // it takes (a missed answer would leave `specs` behind the engine's).
        loop {
            match rrx.recv_timeout(Duration::from_millis(100)) {
                Ok(v) => {
                    self.specs = new_specs;
                    return Ok(v);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !self.stopped() => {}
                Err(_) => bail!("wan stopped before applying the change"),
            }
        }
    }

    /// A refused change goes into the record too.
    fn refused(&self, o: &Origin, e: &anyhow::Error) {
        tracing::warn!(source = %o.source, "live change refused: {e:#}");
        let t = |i: Instant| i.saturating_duration_since(self.start).as_secs_f64();
        let _ = self.rep_tx.send(ReportMsg::Change(
            ChangeEntry {
                kind: ChangeOutcome::Refused,
                source: o.source,
                label: o.label.clone(),
                requested_t: Some(t(o.requested)),
                latency_ms: None,
                error: Some(format!("{e:#}")),
                unix: crate::util::unix_now(),
                applied: String::new(),
                t: t(Instant::now()),
                classes: vec![],
            },
            None,
        ));
    }
}

/// Play a schedule from `start`: each change is handed to the control thread [`LEAD`] before
/// its time (the engine holds it until then), one at a time, until the schedule ends or
/// `stop`/the returned player's flag is raised.
fn play(
    s: timeline::Schedule,
    start: Instant,
    req_tx: std::sync::mpsc::Sender<Request>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Player {
    use std::sync::atomic::Ordering::Relaxed;
    let mine = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = mine.clone();
    let spawned = std::thread::Builder::new()
        .name("wan-timeline".into())
        .spawn(move || {
            let done = || flag.load(Relaxed) || stop.load(Relaxed);
            for c in s.changes {
                let due = start + Duration::from_secs_f64(c.at_s);
                while !done() {
                    let left = due.saturating_duration_since(Instant::now() + LEAD);
                    if left.is_zero() {
                        break;
                    }
                    std::thread::sleep(left.min(Duration::from_millis(50)));
                }
                if done() {
                    return;
                }
                let (rtx, rrx) = std::sync::mpsc::channel();
                let origin = Origin {
                    source: ChangeSource::Timeline,
                    label: Some(c.label.clone()),
                    requested: due,
                    due: Some(due),
                };
                let req = SetRequest {
                    class: Some(c.class),
                    a_to_b: Some(c.a_to_b),
                    b_to_a: Some(c.b_to_a),
                    ..Default::default()
                };
                let asker = Asker::Timeline {
                    reply: rtx,
                    stopped: flag.clone(),
                };
                if req_tx.send((asker, origin, Ok(req))).is_err() {
                    return;
                }
                loop {
                    match rrx.recv_timeout(Duration::from_millis(100)) {
                        Ok(_) => break,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !done() => {}
                        Err(_) => return,
                    }
                }
            }
            tracing::info!("timeline played to its end");
        });
    if let Err(e) = spawned {
        tracing::warn!("could not start the timeline player: {e}");
    }
    Player(mine)
}

type SetResult = ([Vec<Spec>; 2], usize, [Profile; 2], String);

/// Build the change a request asks for (nothing is applied here).
fn prepare(
    req: &SetRequest,
    names: &[String],
    cur: &[Vec<Spec>; 2],
    frames: u64,
) -> Result<SetResult> {
    let class = req.class.clone().unwrap_or_else(|| "default".into());
    let c = names
        .iter()
        .position(|n| *n == class)
        .ok_or_else(|| anyhow!("no class {class:?} (classes: {})", names.join(", ")))?;
    let d = DirSpecs {
        both: req.both.clone(),
        a_to_b: req.a_to_b.clone(),
        b_to_a: req.b_to_a.clone(),
    };
    if d.both.is_none() && d.a_to_b.is_none() && d.b_to_a.is_none() {
        bail!("nothing to change: give --both, --a-to-b or --b-to-a");
    }
    let new = dir_specs(&d, "set")?;
    let mut specs = cur.clone();
    if d.both.is_some() || d.a_to_b.is_some() {
        specs[0][c] = new[0].clone();
    }
    if d.both.is_some() || d.b_to_a.is_some() {
        specs[1][c] = new[1].clone();
    }
    let profiles = [
        Profile::new(specs[0][c].clone(), frames)?,
        Profile::new(specs[1][c].clone(), frames)?,
    ];
    let applied = format!(
        "class {class}: a_to_b \"{}\" b_to_a \"{}\"",
        specs[0][c].text, specs[1][c].text
    );
    Ok((specs, c, profiles, applied))
}
