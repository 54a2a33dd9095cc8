//! What the running kernel is, and the features tools need from it, checked before anything is
//! attached so a missing one is named with the kernel version that has it.
use anyhow::{bail, Result};

/// `uname -r` of the running kernel.
pub fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// (major, minor) of a release string such as `6.1.0-28-cloud-amd64`.
pub fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(['.', '-', '+']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether the running kernel is at least `major.minor` (unknown counts as new enough:
/// the operation itself then reports what it lacks).
pub fn at_least(major: u32, minor: u32) -> bool {
    parse_version(&release()).is_none_or(|v| v >= (major, minor))
}

/// The first Linux version with TCX (tc programs attached through bpf_link).
pub const TCX_SINCE: (u32, u32) = (6, 6);

/// Whether the running kernel has TCX.
pub fn has_tcx() -> bool {
    at_least(TCX_SINCE.0, TCX_SINCE.1)
}

/// A kernel feature a tool needs.
#[derive(Debug, Clone, Copy)]
pub struct Feature {
    /// A short label (doctor's first column).
    pub label: &'static str,
    /// What it is, as a user would look it up.
    pub name: &'static str,
    /// The first Linux version that has it.
    pub since: (u32, u32),
    /// Which part of the tool needs it.
    pub needed_for: &'static str,
}

/// Features the tools need, by the version that brought them.
pub mod feature {
    use super::Feature;

    pub const CGROUP_SOCK_ADDR_CGROUP_ID: Feature = Feature {
        label: "cgroup id in connect4",
        name: "bpf_get_current_cgroup_id in cgroup/connect4 programs",
        since: (5, 7),
        needed_for: "swarm (per-client source addresses)",
    };
    pub const BPF_LINK_XDP: Feature = Feature {
        label: "XDP through bpf_link",
        name: "XDP attached through bpf_link",
        since: (5, 9),
        needed_for: "inspect, fw, wan and swarm (detached when the process dies)",
    };
    pub const XDP_LIVE_FRAMES: Feature = Feature {
        label: "XDP live frames",
        name: "BPF_F_TEST_XDP_LIVE_FRAMES",
        since: (5, 18),
        needed_for: "gen's live-frame method (gen falls back to AF_PACKET without it)",
    };
}

/// Check `features` against the running kernel; the error names every missing one with the
/// version that has it.
pub fn require(features: &[Feature]) -> Result<()> {
    require_on(&release(), features)
}

fn require_on(rel: &str, features: &[Feature]) -> Result<()> {
    let Some(v) = parse_version(rel) else {
        return Ok(());
    };
    let missing: Vec<String> = features
        .iter()
        .filter(|f| v < f.since)
        .map(|f| {
            format!(
                "{} (Linux {}.{}+), needed for {}",
                f.name, f.since.0, f.since.1, f.needed_for
            )
        })
        .collect();
    if !missing.is_empty() {
        bail!("this kernel ({rel}) lacks: {}", missing.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("6.1.0-28-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_version("5.10.0-33-amd64"), Some((5, 10)));
        assert_eq!(parse_version("6.18.2"), Some((6, 18)));
        assert_eq!(parse_version("7.2.0+deb14-amd64"), Some((7, 2)));
        assert_eq!(parse_version("garbage"), None);
        assert!((5, 10) < (5, 14) && (5, 15) < (6, 6));
    }

    #[test]
    fn missing_features_are_named_with_their_version() {
        let live = [feature::BPF_LINK_XDP, feature::XDP_LIVE_FRAMES];
        let e = require_on("5.10.0-33-amd64", &live)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("5.10.0-33-amd64") && e.contains("Linux 5.18+"),
            "{e}"
        );
        assert!(!e.contains("5.9+"), "{e}");
        require_on("6.1.0-28-cloud-amd64", &live).unwrap();
        // wan's own AF_XDP layer runs from 5.10 on: XDP links are all it asks of the version.
        let wan = [feature::BPF_LINK_XDP];
        require_on("5.10.0-33-amd64", &wan).unwrap();
        let e = require_on("4.19.0-27-amd64", &wan).unwrap_err().to_string();
        assert!(e.contains("Linux 5.9+"), "{e}");
    }
}
