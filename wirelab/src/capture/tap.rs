//! Capture behind a deciding program's tap (`wirelab_common::tap`): when `wirelab fw`, `lb`
//! (on its XDP path) or `wan` runs on the interface, its XDP program owns the ingress hook,
//! so capture puts `capture_xdp_tap` in that program's program array and sets its flag to
//! this interface. Every frame the program sees there then reaches capture with its decision,
//! dropped frames included, and the EPB carries it as a comment (`fw: drop, rule
//! "block-ssh"`, `lb: new flow, backend "web/b2"`, `wan: class "default", lost`).
//!
//! The tap is turned off and the slot emptied when the capture ends (`Drop`); fw also notices
//! a capture killed with -9 within a second (its abstract socket is gone) and does the same.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, Map, MapData, ProgramArray};
use wirelab_common::{
    lb::event,
    tap::{fw_what, lb_what, tool, wan_what, Decision, MAGIC_TC},
};

use crate::{
    fw,
    runtime::bpf::{AttachMode, Hook},
    runtime::tap::TapInfo,
};

/// fw on `iface` in this namespace, if one runs there.
pub fn fw_running(iface: &str) -> bool {
    crate::runtime::control::listening(&fw::socket_name(iface)).contains(&fw::socket_name(iface))
}

named_enum! {
    /// The wirelab program whose XDP hook a capture on an interface goes behind.
    pub enum Decider {
        Fw = "fw",
        Lb = "lb",
        Wan = "wan",
    }
}

impl Decider {
    /// The one running on `iface` in this namespace, if any.
    pub fn on(iface: &str) -> Option<Decider> {
        let lb = crate::lb::socket_name(iface);
        if fw_running(iface) {
            Some(Decider::Fw)
        } else if crate::runtime::control::listening(&lb).contains(&lb) {
            Some(Decider::Lb)
        } else if crate::wan::running_on(iface) {
            Some(Decider::Wan)
        } else {
            None
        }
    }

    /// Ask it where its tap is.
    fn tap_info(self, iface: &str) -> Result<TapInfo> {
        match self {
            Decider::Fw => fw::tap(iface),
            Decider::Lb => crate::lb::tap(iface),
            Decider::Wan => crate::wan::tap(iface),
        }
    }
}

pub struct Tap {
    iface: String,
    pub decider: Decider,
    progs: ProgramArray<MapData>,
    flag: Array<MapData, u32>,
    /// fw rule id, lb backend id or wan class id -> name.
    names: BTreeMap<u32, String>,
    refreshed: Instant,
    /// The deciding program's XDP attach mode; `None`: the tap is at tc (lb's tc path).
    pub mode: Option<AttachMode>,
}

impl Tap {
    /// Load `capture_xdp_tap`, put it in the deciding program's program array and point its
    /// flag at `iface`.
    pub fn attach(bpf: &mut aya::Ebpf, iface: &str, decider: Decider) -> Result<Tap> {
        let info = decider
            .tap_info(iface)
            .with_context(|| format!("asking {decider} for its capture tap"))?;
        let ifindex =
            nix::net::if_::if_nametoindex(iface).with_context(|| format!("interface {iface}"))?;
        let (mode, prog) = match info.tc {
            true => (None, "capture_tc_tap"),
            false => (
                Some(info.mode.unwrap_or(AttachMode::Native)),
                "capture_xdp_tap",
            ),
        };
        let hook = if info.tc { Hook::Tc } else { Hook::Xdp };
        if hook == Hook::Xdp {
            super::load_filter_program(bpf, Hook::Xdp)?;
        }
        let fd = crate::runtime::bpf::load_for_tail_call(bpf, prog, hook)?;
        let mut progs = ProgramArray::try_from(Map::ProgramArray(
            MapData::from_id(info.prog_array_id)
                .with_context(|| format!("opening {decider}'s tap program array"))?,
        ))?;
        progs
            .set(0, &fd, 0)
            .with_context(|| format!("putting {prog} in {decider}'s tap"))?;
        let mut flag: Array<MapData, u32> = Array::try_from(Map::Array(
            MapData::from_id(info.flag_id)
                .with_context(|| format!("opening {decider}'s tap flag"))?,
        ))?;
        flag.set(0, ifindex, 0)
            .with_context(|| format!("turning {decider}'s tap on"))?;
        tracing::info!(iface, %decider, "capturing ingress behind {decider}'s tap");
        let mut t = Tap {
            iface: iface.to_string(),
            decider,
            progs,
            flag,
            names: info.names.into_iter().collect(),
            refreshed: Instant::now(),
            mode,
        };
        if decider == Decider::Fw {
            let stats = fw::stats(Some(iface)).context("asking fw for its rules")?;
            t.set_fw_names(&stats);
        }
        Ok(t)
    }

    fn set_fw_names(&mut self, s: &fw::Stats) {
        self.names = s.rules.iter().map(|r| (r.id, r.name.clone())).collect();
    }

    /// Read the names again (a reload since they were read), at most every 200 ms.
    fn refresh(&mut self) {
        if self.refreshed.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.refreshed = Instant::now();
        let r = match self.decider {
            Decider::Fw => fw::stats(Some(&self.iface)).map(|s| self.set_fw_names(&s)),
            Decider::Lb | Decider::Wan => self
                .decider
                .tap_info(&self.iface)
                .map(|t| self.names = t.names.into_iter().collect()),
        };
        if let Err(e) = r {
            tracing::warn!("reading {}'s names: {e:#}", self.decider);
        }
    }

    /// The EPB comment for `d` (`None` from capture's own hooks). An unknown id (a reload
    /// since the names were read) re-reads them, at most every 200 ms.
    pub fn comment(&mut self, d: &Decision) -> Option<String> {
        let named = match d.tool {
            tool::FW => matches!(d.what, fw_what::RULE | fw_what::RATE_LIMITED),
            tool::LB => matches!(
                d.what,
                lb_what::TRACKED | lb_what::HASHED | lb_what::NAT_REPLY
            ),
            tool::WAN => true,
            _ => return None,
        };
        if named && !self.names.contains_key(&d.id) {
            self.refresh();
        }
        let name = self.names.get(&d.id).map(String::as_str);
        Some(match d.tool {
            tool::FW => fw_text(d, name),
            tool::LB => lb_text(d, name),
            _ => wan_text(d, name),
        })
    }
}

impl Tap {
    /// Turn the tap off and empty the slot: the deciding program stops calling capture
    /// (idempotent).
    pub fn off(&mut self) {
        if let Err(e) = self.flag.set(0, 0, 0) {
            tracing::warn!("turning {}'s tap off: {e}", self.decider);
        }
        if let Err(e) = self.progs.clear_index(&0) {
            tracing::debug!("emptying {}'s tap: {e}", self.decider);
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.off();
    }
}

/// The deciding program's verdict in words. XDP actions: 0 aborted, 1 drop, 2 pass, 3 tx, 4
/// redirect; at tc ([`MAGIC_TC`]): the verdict as a byte (255 = `TC_ACT_UNSPEC` and 0 =
/// `TC_ACT_OK`, both on to the stack; 2 shot, 7 redirect).
fn action(d: &Decision) -> &'static str {
    if d.magic == MAGIC_TC {
        return match d.action as i8 {
            -1 | 0 => "pass",
            2 => "drop",
            7 => "redirect",
            _ => "other tc verdict",
        };
    }
    match d.action {
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "aborted",
    }
}

/// `lb: new flow, backend "web/b2" (tx)`; `name` is the backend's (None: its id is shown).
pub fn lb_text(d: &Decision, name: Option<&str>) -> String {
    let backend = || match name {
        Some(n) => format!("backend {n:?}"),
        None => format!("backend id {}", d.id),
    };
    let verdict = action(d);
    match d.what {
        lb_what::NOT_SERVICE => format!("lb: {verdict}, not a service"),
        lb_what::TRACKED => format!("lb: tracked flow, {} ({verdict})", backend()),
        lb_what::HASHED => format!("lb: new flow, {} ({verdict})", backend()),
        lb_what::NAT_REPLY => format!("lb: reply from {}, source back to the VIP", backend()),
        lb_what::DROPPED => {
            let why = match d.id {
                event::DROP_FRAGMENT => "a later fragment to a VIP without its first",
                event::DROP_NO_BACKEND => "no backend up",
                _ => "could not forward",
            };
            format!("lb: {verdict}, {why}")
        }
        w => format!("lb: {verdict}, unknown decision {w}"),
    }
}

/// `wan: class "default", lost`; `name` is the class's (None: its id is shown).
pub fn wan_text(d: &Decision, name: Option<&str>) -> String {
    let class = match name {
        Some(n) => format!("class {n:?}"),
        None => format!("class id {}", d.id),
    };
    let what = match d.what {
        wan_what::ENGINE => "to the timing engine",
        wan_what::FAST => "passed unimpaired",
        wan_what::LOST => "lost",
        wan_what::BLACKHOLE => "dropped in a blackhole period",
        wan_what::FALLBACK => "passed unimpaired (no engine socket on its queue)",
        wan_what::QUEUE_DROP => "dropped by the timing engine: its queue was full",
        wan_what::LINK_ENDED => "dropped by the timing engine: its trace had ended",
        wan_what::LINK_DOWN => {
            "dropped by the timing engine: the link out was down when it was due"
        }
        _ => "unknown decision",
    };
    format!("wan: {class}, {what}")
}

/// `fw: drop, rule "block-ssh"`; `name` is the rule's (None: unknown, the id is shown).
pub fn fw_text(d: &Decision, name: Option<&str>) -> String {
    let verdict = action(d);
    let rule = || match name {
        Some(n) => format!("rule {n:?}"),
        None => format!("rule id {}", d.id),
    };
    let what = match d.what {
        fw_what::RULE => rule(),
        fw_what::RATE_LIMITED => format!("{} (over its rate limit)", rule()),
        fw_what::DEFAULT => "default policy".into(),
        fw_what::MALFORMED => "malformed policy".into(),
        fw_what::NON_IP => "non-IP policy".into(),
        _ => format!("unknown decision {}", d.what),
    };
    format!("fw: {verdict}, {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fw_decisions_read_as_comments() {
        let d = |action, what, id| Decision {
            magic: wirelab_common::tap::MAGIC,
            tool: tool::FW,
            what,
            action,
            id,
        };
        assert_eq!(
            fw_text(&d(1, fw_what::RULE, 3), Some("block-ssh")),
            r#"fw: drop, rule "block-ssh""#
        );
        assert_eq!(
            fw_text(&d(2, fw_what::RULE, 3), None),
            "fw: pass, rule id 3"
        );
        assert_eq!(
            fw_text(&d(1, fw_what::RATE_LIMITED, 3), Some("syn")),
            r#"fw: drop, rule "syn" (over its rate limit)"#
        );
        assert_eq!(
            fw_text(&d(2, fw_what::DEFAULT, 0), None),
            "fw: pass, default policy"
        );
        assert_eq!(
            fw_text(&d(1, fw_what::NON_IP, 0), None),
            "fw: drop, non-IP policy"
        );
    }

    #[test]
    fn lb_and_wan_decisions_read_as_comments() {
        let d = |tool, action, what, id| Decision {
            magic: wirelab_common::tap::MAGIC,
            tool,
            what,
            action,
            id,
        };
        assert_eq!(
            lb_text(&d(tool::LB, 3, lb_what::HASHED, 2), Some("web/b2")),
            r#"lb: new flow, backend "web/b2" (tx)"#
        );
        assert_eq!(
            lb_text(&d(tool::LB, 2, lb_what::TRACKED, 7), None),
            "lb: tracked flow, backend id 7 (pass)"
        );
        assert_eq!(
            lb_text(
                &d(tool::LB, 1, lb_what::DROPPED, event::DROP_NO_BACKEND),
                None
            ),
            "lb: drop, no backend up"
        );
        assert_eq!(
            lb_text(&d(tool::LB, 2, lb_what::NOT_SERVICE, 0), None),
            "lb: pass, not a service"
        );
        assert_eq!(
            wan_text(&d(tool::WAN, 1, wan_what::LOST, 0), Some("default")),
            r#"wan: class "default", lost"#
        );
        assert_eq!(
            wan_text(&d(tool::WAN, 4, wan_what::ENGINE, 3), None),
            "wan: class id 3, to the timing engine"
        );
    }
}
