//! The verifier's count on kernels that do not report it: a statistics load.
//!
//! Linux 5.16 added `bpf_prog_info.verified_insns`, which aya reads back
//! (`ProgramInfo::verified_instruction_count`). Older kernels (Debian 11's 5.10, Ubuntu 22.04's
//! 5.15) only print the count in the verifier's log ("processed N insns"), and aya drops that
//! log when a load succeeds (it first asks with no log buffer at all). So, for a program aya has
//! loaded, this loads the very same instructions a second time with `BPF_PROG_LOAD` of its own,
//! with `log_level = BPF_LOG_STATS` (4, Linux 5.2+: only the statistics, no trace) and a log
//! buffer, reads the count from the log and closes that second program at once.
//!
//! The instructions are made as aya's `EbpfLoader::load` makes them (aya 0.14.0, `src/bpf.rs`),
//! with aya-obj at aya's own version: the object parsed, its BTF fixed up and sanitized, its CO-RE
//! relocations applied against the kernel's BTF, its map references pointed at the maps of the
//! `Ebpf` already loaded from the same bytes (so `.rodata`, which the verifier reads as
//! constants, is the same frozen map), its calls linked, its helpers sanitized. The load asks
//! what aya's asks for the program's type (`aya::programs::*::load` and `load_program`): the
//! section's expected attach type and XDP flags, the program's license and kernel version, and,
//! where aya loaded the object's BTF, that BTF (the kernel's object, opened by the id of aya's
//! program) with the function's func_info and line_info. With BTF, a global function is
//! verified on its own rather than as part of each caller, so leaving it out could change the
//! count; `tests/object_prog.rs` checks that the two counts agree on a kernel that reports both.
use std::{
    collections::HashSet,
    ffi::c_long,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use anyhow::{bail, Context as _, Result};
use aya::{maps::Map, util::KernelVersion, Ebpf};
use aya_obj::{
    generated::{bpf_attach_type, bpf_cmd, bpf_prog_type, BPF_F_XDP_HAS_FRAGS},
    ProgramSection,
};

/// The statistics fit in a few hundred bytes; 64 KiB leaves the kernel no reason to refuse the
/// load for a full log (`ENOSPC`).
const LOG_SIZE: usize = 64 * 1024;
/// `BPF_LOG_STATS` (include/linux/bpf_verifier.h): the statistics alone.
const BPF_LOG_STATS: u32 = 4;
/// How many times the load is asked again when a signal interrupted the verifier (`EAGAIN`), as
/// [`super::LoadRetrying`] does for aya's loads.
const LOAD_ATTEMPTS: u32 = super::LOAD_ATTEMPTS;

/// One tool's object made ready to load as aya makes it, its map references pointing at the
/// maps of an [`Ebpf`] loaded from the same bytes: that `Ebpf` must stay alive while
/// [`Relocated::count`] loads (the instructions hold its maps' fd numbers).
pub(super) struct Relocated {
    obj: aya_obj::Object,
}

impl Relocated {
    /// `bytes` are the object that `bpf` was loaded from, by [`super::load`] (a plain
    /// `Ebpf::load`: no globals set, the kernel's BTF as the CO-RE target, no map pinned or
    /// resized in a way that moves a relocation).
    pub(super) fn new(bytes: &[u8], bpf: &Ebpf) -> Result<Self> {
        let mut obj = aya_obj::Object::parse(bytes).context("parsing the object")?;
        // aya: `obj.patch_map_data(globals)`; `ebpf::load` sets no globals.
        let features = aya::features();
        if let Some(btf_features) = features.btf() {
            obj.fixup_and_sanitize_btf(btf_features)
                .context("fixing up the object's BTF")?;
        }
        // aya relocates against `Btf::from_sys_fs().ok()`, the default target of `Ebpf::load`;
        // without CO-RE relocations that is a no-op, so the kernel's BTF is read only when
        // there are some.
        if obj.has_btf_relocations() {
            if let Ok(btf) = aya::Btf::from_sys_fs() {
                obj.relocate_btf(&btf)
                    .context("CO-RE relocations against /sys/kernel/btf/vmlinux")?;
            }
        }
        // aya moves the maps out of the object before relocating (and leaves out the data
        // sections when the kernel has no global data, 5.2+; then `bpf` has no such map and
        // neither is one given here).
        let maps: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
        let mut with_fds = vec![];
        for (name, map) in &maps {
            if let Some(loaded) = bpf.map(name) {
                with_fds.push((name.as_str(), map_fd(loaded), map));
            }
        }
        let text_sections: HashSet<usize> = obj
            .functions
            .keys()
            .map(|(section_index, _)| *section_index)
            .collect();
        obj.relocate_maps(with_fds.into_iter(), &text_sections)
            .context("relocating the maps")?;
        obj.relocate_calls(&text_sections)
            .context("linking the calls")?;
        obj.sanitize_functions(features);
        Ok(Self { obj })
    }

    /// Load `program` once more with `BPF_LOG_STATS` and return how many instructions the
    /// verifier processed. `btf_id` is the BTF of aya's load of the same program
    /// (`ProgramInfo::btf_id`): `None` when aya loaded it without.
    pub(super) fn count(&self, program: &str, btf_id: Option<u32>) -> Result<u32> {
        let prog = self
            .obj
            .programs
            .get(program)
            .with_context(|| format!("no program {program} in the object"))?;
        let function = self
            .obj
            .functions
            .get(&prog.function_key())
            .with_context(|| format!("no function for program {program} in the object"))?;
        let (prog_type, expected_attach_type, prog_flags) = match &prog.section {
            ProgramSection::Xdp { frags, attach_type } => (
                bpf_prog_type::BPF_PROG_TYPE_XDP,
                Some(bpf_attach_type::from(*attach_type)),
                if *frags { BPF_F_XDP_HAS_FRAGS } else { 0 },
            ),
            ProgramSection::SchedClassifier => (bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS, None, 0),
            ProgramSection::CgroupSockAddr { attach_type } => (
                bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                Some(bpf_attach_type::from(*attach_type)),
                0,
            ),
            other => bail!("{program}: section {other:?} is not a program type wirelab loads"),
        };
        let btf = btf_id
            .map(btf_fd_by_id)
            .transpose()
            .context("opening the BTF of aya's load")?;
        // Built before `attr` takes their addresses, and alive until the load returns.
        let func_info = function.func_info.func_info_bytes();
        let line_info = function.line_info.line_info_bytes();
        let insns = &function.instructions;
        let mut log = vec![0u8; LOG_SIZE];

        let mut attr = ProgLoadAttr {
            prog_type: prog_type as u32,
            insn_cnt: u32::try_from(insns.len()).context("instruction count")?,
            insns: insns.as_ptr() as u64,
            license: prog.license.as_ptr() as u64,
            log_level: BPF_LOG_STATS,
            log_size: LOG_SIZE as u32,
            log_buf: log.as_mut_ptr() as u64,
            kern_version: prog
                .kernel_version
                .unwrap_or_else(|| KernelVersion::current().map_or(0, KernelVersion::code)),
            prog_flags,
            expected_attach_type: expected_attach_type.map_or(0, |t| t as u32),
            ..ProgLoadAttr::default()
        };
        if aya::features().bpf_name() {
            // At most 15 bytes and a NUL, as aya.
            for (d, s) in attr.prog_name.iter_mut().zip(program.bytes().take(15)) {
                *d = s;
            }
        }
        if let Some(btf) = &btf {
            attr.prog_btf_fd = btf.as_raw_fd() as u32;
            if function.line_info_rec_size > 0 {
                attr.line_info = line_info.as_ptr() as u64;
                attr.line_info_cnt = function.line_info.len() as u32;
                attr.line_info_rec_size = function.line_info_rec_size as u32;
            }
            if function.func_info_rec_size > 0 {
                attr.func_info = func_info.as_ptr() as u64;
                attr.func_info_cnt = function.func_info.len() as u32;
                attr.func_info_rec_size = function.func_info_rec_size as u32;
            }
        }

        let mut attempt = 1;
        let loaded = loop {
            match prog_load(&mut attr) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS => {
                    tracing::debug!(
                        attempt,
                        "the statistics load was interrupted by a signal; loading again"
                    );
                    attempt += 1;
                    if let Some(first) = log.first_mut() {
                        *first = 0;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EPERM) && attempt < LOAD_ATTEMPTS => {
                    // Before 5.11 programs count against RLIMIT_MEMLOCK; aya lifts it on its
                    // own first EPERM, and this second copy may be the first to need it.
                    attempt += 1;
                    if nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_MEMLOCK,
                        libc::RLIM_INFINITY,
                        libc::RLIM_INFINITY,
                    )
                    .is_err()
                    {
                        break Err(e);
                    }
                }
                other => break other,
            }
        };
        let text = log_text(&log);
        match loaded {
            // The count is in the log; the second program itself is closed (unloaded) here.
            Ok(fd) => drop(fd),
            Err(e) => bail!(
                "the statistics load of {program} failed: {e}; verifier: {}",
                super::log_tail(&text)
            ),
        }
        processed(&text).with_context(|| {
            format!("no \"processed N insns\" in the statistics load's log of {program}: {text:?}")
        })
    }
}

/// The fd of a map aya created (each `Map` variant holds its `MapData`).
fn map_fd(map: &Map) -> RawFd {
    let data = match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    };
    data.fd().as_fd().as_raw_fd()
}

/// The log up to its NUL, as text.
fn log_text(log: &[u8]) -> String {
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    String::from_utf8_lossy(&log[..end]).into_owned()
}

/// N from the verifier's statistics line, "processed N insns (limit 1000000) ..." (the same
/// words from 5.2 to 6.18).
fn processed(log: &str) -> Option<u32> {
    log.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix("processed ")?;
        let (n, rest) = rest.split_once(' ')?;
        rest.starts_with("insns").then(|| n.parse().ok()).flatten()
    })
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (include/uapi/linux/bpf.h) up to
/// `attach_prog_fd` (5.5+) and the word after it (`core_relo_cnt` since 5.17, padding before):
/// every field named, so no byte the kernel reads is uninitialized. The kernel takes a shorter
/// `bpf_attr` than its own and reads the rest as zero. Checked against aya-obj's bindings below.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    core_relo_cnt: u32,
}

/// The `BPF_*_GET_FD_BY_ID` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

// The layouts above are the kernel's, as aya-obj's bindgen bindings have them.
const _: () = {
    use std::mem::{offset_of, size_of};

    use aya_obj::generated::{bpf_attr__bindgen_ty_4 as Load, bpf_attr__bindgen_ty_8 as Id};
    macro_rules! same {
        ($ours:ident, $theirs:ident, $($f:ident = $g:ident),*) => {
            $(assert!(offset_of!($ours, $f) == offset_of!($theirs, $g));)*
        };
    }
    same!(
        ProgLoadAttr,
        Load,
        prog_type = prog_type,
        insn_cnt = insn_cnt,
        insns = insns,
        license = license,
        log_level = log_level,
        log_size = log_size,
        log_buf = log_buf,
        kern_version = kern_version,
        prog_flags = prog_flags,
        prog_name = prog_name,
        prog_ifindex = prog_ifindex,
        expected_attach_type = expected_attach_type,
        prog_btf_fd = prog_btf_fd,
        func_info_rec_size = func_info_rec_size,
        func_info = func_info,
        func_info_cnt = func_info_cnt,
        line_info_rec_size = line_info_rec_size,
        line_info = line_info,
        line_info_cnt = line_info_cnt,
        attach_btf_id = attach_btf_id,
        attach_prog_fd = __bindgen_anon_1,
        core_relo_cnt = core_relo_cnt
    );
    assert!(size_of::<ProgLoadAttr>() == offset_of!(Load, fd_array));
    same!(
        GetFdByIdAttr,
        Id,
        id = __bindgen_anon_1,
        next_id = next_id,
        open_flags = open_flags
    );
    assert!(size_of::<GetFdByIdAttr>() == size_of::<Id>());
};

/// The fd a `bpf(2)` command returned, or its error.
fn new_fd(ret: c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd =
        RawFd::try_from(ret).map_err(|_| io::Error::other(format!("bpf(2) returned {ret}")))?;
    // SAFETY: a successful BPF_PROG_LOAD or BPF_BTF_GET_FD_BY_ID returns a new fd, which
    // nothing else owns or closes.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_PROG_LOAD`: the new program's fd (closing it unloads the program).
fn prog_load(attr: &mut ProgLoadAttr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for BPF_PROG_LOAD (its layout
    // checked at compile time above), passed with its own size, every byte initialized. The
    // pointers it holds (instructions, license, log buffer, func_info and line_info records)
    // point into buffers the caller keeps alive and unmoved until this returns, with the counts
    // and sizes given beside them; the kernel writes only into the log buffer, at most
    // `log_size` bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_LOAD as c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    new_fd(ret)
}

/// `BPF_BTF_GET_FD_BY_ID` (4.18+): an fd of a BTF object the kernel holds.
fn btf_fd_by_id(id: u32) -> Result<OwnedFd> {
    let mut attr = GetFdByIdAttr {
        id,
        ..GetFdByIdAttr::default()
    };
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for BPF_BTF_GET_FD_BY_ID
    // (layout checked above), passed with its own size, every byte initialized; it holds no
    // pointer and the kernel writes nothing into it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_BTF_GET_FD_BY_ID as c_long,
            std::ptr::from_mut(&mut attr),
            std::mem::size_of::<GetFdByIdAttr>(),
        )
    };
    new_fd(ret).with_context(|| format!("BPF_BTF_GET_FD_BY_ID {id}"))
}

#[cfg(test)]
mod tests {
    use super::processed;

    #[test]
    fn the_count_is_read_from_the_statistics_line() {
        // 6.18's statistics.
        let log = "verification time 123456 usec\nstack depth 312+0\nprocessed 375510 insns (limit 1000000) max_states_per_insn 27 total_states 21312 peak_states 4137 mark_read 312\n";
        assert_eq!(processed(log), Some(375_510));
        // 5.10's.
        let log = "processed 31 insns (limit 1000000) max_states_per_insn 0 total_states 2 peak_states 2 mark_read 1\n";
        assert_eq!(processed(log), Some(31));
        assert_eq!(processed("verification time 5 usec\n"), None);
        assert_eq!(processed("processed many insns\n"), None);
    }
}
