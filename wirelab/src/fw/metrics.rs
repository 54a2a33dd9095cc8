//! `fw --metrics`: per-rule and per-policy counters, reloads, generation.

use super::*;

crate::metrics::families! {
    /// The firewall's Prometheus metrics (`--metrics`).
    pub(super) struct FwMetrics {
        packets: counter("wirelab_fw_packets", "Frames judged, by rule or policy"),
        bytes: counter("wirelab_fw_bytes", "Bytes of those frames"),
        dropped: counter(
            "wirelab_fw_dropped_packets",
            "Frames dropped (deny, over a rate limit, or a deny policy)"
        ),
        logged: counter("wirelab_fw_logged_packets", "Frames sampled to the log"),
        reloads: counter("wirelab_fw_reloads", "Rule sets swapped in by reload"),
        generation: gauge("wirelab_fw_generation", "Rule-set generation in force (0 or 1)"),
        ;
        /// Rules exported so far, (name, id): a removed rule's series is dropped, and so is
        /// the series of a name whose rule was removed and added again (new id, zeroed
        /// counters), which starts afresh.
        shown: Vec<(String, u32)> = vec![],
    }
}

impl FwMetrics {
    pub(super) fn publish(&mut self, iface: &str, s: &Stats) {
        use crate::metrics::{labels, set_total};
        let rows = s.rows();
        let now: Vec<(String, u32)> = rows.iter().map(|(n, id, _)| (n.clone(), *id)).collect();
        for old in &self.shown {
            if !now.contains(old) {
                let l = labels(&[("iface", iface), ("rule", &old.0)]);
                for f in [&self.packets, &self.bytes, &self.dropped, &self.logged] {
                    f.remove(&l);
                }
            }
        }
        self.shown = now;
        for (name, _, c) in rows {
            let l = labels(&[("iface", iface), ("rule", &name)]);
            for (f, v) in [
                (&self.packets, c.packets),
                (&self.bytes, c.bytes),
                (&self.dropped, c.dropped),
                (&self.logged, c.logged),
            ] {
                set_total(&f.get_or_create(&l), v);
            }
        }
        let l = labels(&[("iface", iface)]);
        set_total(&self.reloads.get_or_create(&l), s.reloads);
        self.generation.get_or_create(&l).set(s.generation as f64);
    }
}
