//! `wirelab cleanup`: remove what a crashed or killed wirelab left behind.
//!
//! Programs are attached through bpf_links, which the kernel removes when the owning process
//! dies, so after kill -9 the leftovers are lab namespaces whose `up` never finished, a swarm
//! run's cgroups, AnyIP route and promiscuous mode (listed in `/run/wirelab/swarm/`), and the
//! namespaces of a killed `cargo xtask bench fw` (`wlb<pid>-tx`, `wlb<pid>-rx`), and the lab
//! of a killed `wirelab sweep` (`swp<pid>`; `--resume` removes it too). `wirelab fw`
//! itself leaves nothing: its control socket is abstract and its program hangs on a bpf_link.
//! On kernels without TCX (before 6.6) tc programs are clsact filters that outlive a killed
//! process: swarm's are removed with its run, wan's fast path (`wan_fwd`) from every interface
//! of every lab when no wan runs there, capture's programs (`capture_tc` at egress,
//! `capture_tc_in` at ingress) from every interface of a lab on which no capture runs.
use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::lab;

/// What was removed, or with `dry_run` what would be.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Nothing was removed: the lists say what would be.
    #[serde(default)]
    pub dry_run: bool,
    pub labs_removed: Vec<String>,
    pub namespaces_removed: Vec<String>,
    pub kept_labs: Vec<String>,
    /// Swarm runs (and stray swarm cgroups) whose process was gone.
    pub swarm_removed: Vec<String>,
    pub bench_namespaces_removed: Vec<String>,
    /// `ns/iface` where a killed wan's clsact filter was removed (kernels before 6.6).
    pub wan_filters_removed: Vec<String>,
    /// `ns/iface` where a killed capture's clsact filters were removed (before 6.6).
    pub capture_filters_removed: Vec<String>,
    /// `ns/iface` where a killed balancer's clsact filters were removed (before 6.6).
    #[serde(default)]
    pub lb_filters_removed: Vec<String>,
}

/// A tool whose tc programs are clsact filters before 6.6: their names, and which interfaces
/// a live run holds (run inside the namespace: `None` when one holds them all).
struct TcTool {
    progs: &'static [&'static str],
    held: fn() -> Option<Vec<String>>,
}

/// wan's fast path, capture's two programs, lb's: the order of [`stale_tc_filters`]' answer.
const TC_TOOLS: [TcTool; 3] = [
    TcTool {
        progs: &["wan_fwd"],
        held: wan_holds,
    },
    TcTool {
        progs: &["capture_tc", "capture_tc_in"],
        held: captures_held,
    },
    TcTool {
        progs: &crate::lb::TC_PROGS,
        held: lb_holds,
    },
];

/// In namespace `ns` (kernels before 6.6, where tc programs are not bpf_links): each
/// interface's clsact filters, listed once by name; per tool of [`TC_TOOLS`], the interfaces
/// with a filter of its programs that no live run holds (`ns/iface`), those filters removed
/// unless `dry_run`. A dry run lists what the real one removes: the same listing.
fn stale_tc_filters(ns: &str, dry_run: bool) -> [Vec<String>; 3] {
    if !crate::netns::exists(ns) {
        return Default::default();
    }
    let ns_owned = ns.to_string();
    crate::netns::run_in(Some(ns), move || {
        let held: Vec<Option<Vec<String>>> = TC_TOOLS.iter().map(|t| (t.held)()).collect();
        let ifaces: Vec<String> = nix::net::if_::if_nameindex()
            .map(|l| {
                l.iter()
                    .map(|i| i.name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let mut found: [Vec<String>; 3] = Default::default();
        for iface in ifaces {
            let names = crate::runtime::bpf::tc_filter_names(&iface);
            for ((tool, held), found) in TC_TOOLS.iter().zip(&held).zip(&mut found) {
                let Some(held) = held else { continue };
                let stale: Vec<&str> = tool
                    .progs
                    .iter()
                    .copied()
                    .filter(|p| names.iter().any(|n| n == p))
                    .collect();
                if held.contains(&iface) || stale.is_empty() {
                    continue;
                }
                if !dry_run {
                    for p in stale {
                        crate::runtime::bpf::detach_tc_filters(&iface, p);
                    }
                }
                found.push(format!("{ns_owned}/{iface}"));
            }
        }
        Ok(found)
    })
    .unwrap_or_default()
}

/// Interfaces held by a live capture (`@wirelab-capture/IFACE`) in this namespace.
fn captures_held() -> Option<Vec<String>> {
    Some(
        crate::capture::running()
            .iter()
            .filter_map(|l| l.strip_prefix(crate::capture::SOCKET_PREFIX))
            .map(str::to_string)
            .collect(),
    )
}

/// A wan running in this namespace owns all its filters.
fn wan_holds() -> Option<Vec<String>> {
    crate::wan::running().is_empty().then(Vec::new)
}

/// A balancer running in this namespace owns all its filters (its NAT interfaces too).
fn lb_holds() -> Option<Vec<String>> {
    crate::lb::running().is_empty().then(Vec::new)
}

/// Remove half-made labs and sweep labs whose creator is gone; with `all_labs`, every lab.
/// With `dry_run`, remove nothing and say what would go.
pub fn run(all_labs: bool, dry_run: bool) -> Result<Report> {
    // Swarm runs first: their route and promiscuous mode live in lab namespaces.
    let mut r = Report {
        dry_run,
        swarm_removed: crate::swarm::cleanup_stale(dry_run)?,
        ..Default::default()
    };
    for name in lab::list_labs() {
        let Ok(Some(st)) = lab::read_state(&name) else {
            continue;
        };
        if !crate::runtime::bpf::tcx_in_use() {
            for ns in st.namespaces.values() {
                let [wan, capture, lb] = stale_tc_filters(ns, dry_run);
                r.wan_filters_removed.extend(wan);
                r.capture_filters_removed.extend(capture);
                r.lb_filters_removed.extend(lb);
            }
        }
        // A sweep's lab (`swp<pid>`) lives exactly as long as its sweep process.
        let sweep_lab = name
            .strip_prefix("swp")
            .is_some_and(|p| p.parse::<u32>().is_ok());
        let stale = (!st.complete || sweep_lab) && !crate::util::alive(st.pid);
        if all_labs || stale {
            if dry_run {
                r.namespaces_removed
                    .extend(lab::present_namespaces(&st).cloned());
            } else {
                r.namespaces_removed.extend(lab::down(&name)?);
            }
            r.labs_removed.push(name);
        } else {
            r.kept_labs.push(name);
        }
    }
    // Benchmark namespaces wlb<pid>-tx / wlb<pid>-rx whose xtask process is gone.
    for ns in crate::netns::list() {
        let Some(rest) = ns.strip_prefix("wlb") else {
            continue;
        };
        let Some((pid, side)) = rest.split_once('-') else {
            continue;
        };
        if (side == "tx" || side == "rx")
            && pid.parse::<u32>().is_ok_and(|p| !crate::util::alive(p))
        {
            if !dry_run {
                crate::netns::delete(&ns, std::time::Duration::from_secs(1))?;
            }
            r.bench_namespaces_removed.push(ns);
        }
    }
    Ok(r)
}
