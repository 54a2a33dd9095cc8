//! The deciding side of the capture tap (`wirelab_common::tap`): what fw, lb and wan answer a
//! `wirelab capture` that asks where their tap is.
use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::bpf::AttachMode;

/// The kernel ids of a deciding program's tap maps (`*_TAP`, `*_TAP_ON`), its XDP mode on the
/// interface asked about, and the names of the ids its decisions carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapInfo {
    pub prog_array_id: u32,
    pub flag_id: u32,
    /// XDP attach mode: the tap program must be loaded for the same (`None` at tc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AttachMode>,
    /// (id, name): lb's backends, wan's classes (fw's rules come with its stats). A list, not
    /// a map: the reply envelope flattens its body, and serde cannot read integer map keys
    /// back through a flattened struct.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<(u32, String)>,
    /// The tap is at tc (lb on its tc path): the capture program is `capture_tc_tap`.
    #[serde(default)]
    pub tc: bool,
}

impl TapInfo {
    /// The ids of the maps `prog_array` and `flag` of `bpf`.
    pub fn of(bpf: &aya::Ebpf, prog_array: &str, flag: &str) -> Result<TapInfo> {
        Ok(TapInfo {
            prog_array_id: super::bpf::map_id(bpf, prog_array)?,
            flag_id: super::bpf::map_id(bpf, flag)?,
            mode: None,
            names: Vec::new(),
            tc: false,
        })
    }
}

/// A capture killed while it held a tap (`kill -9`) cannot turn it off: when the flag names an
/// interface on which no capture runs (in this namespace), turn it off and empty the slot, so
/// the deciding program stops calling the dead capture's program. The deciding tools call
/// this about once a second.
pub fn release_dead(tap: &TapInfo) -> Result<()> {
    use aya::maps::{Array, Map, MapData, ProgramArray};
    let mut on: Array<MapData, u32> = Array::try_from(Map::Array(MapData::from_id(tap.flag_id)?))?;
    let ifindex = on.get(&0, 0)?;
    if ifindex == 0 {
        return Ok(());
    }
    let iface = nix::net::if_::if_indextoname(ifindex)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = format!("{}{iface}", crate::capture::SOCKET_PREFIX);
    if crate::capture::running().contains(&name) {
        return Ok(());
    }
    tracing::info!(iface, "the capture on the tap is gone: tap off");
    on.set(0, 0, 0)?;
    let mut progs =
        ProgramArray::try_from(Map::ProgramArray(MapData::from_id(tap.prog_array_id)?))?;
    let _ = progs.clear_index(&0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::control::Reply;

    /// The names come back through the reply envelope (which flattens its body).
    #[test]
    fn tap_info_reads_back_through_the_reply_envelope() {
        let t = TapInfo {
            prog_array_id: 7,
            flag_id: 8,
            mode: Some(AttachMode::Native),
            names: vec![(0, "default".into()), (3, "web/b2".into())],
            tc: true,
        };
        let text = serde_json::to_string(&Reply::from_result(Ok(t.clone()))).unwrap();
        let back: Reply<TapInfo> = serde_json::from_str(&text).unwrap();
        assert_eq!(back.body, Some(t), "{text}");
    }
}
