//! `flows --metrics`: the table's size and the capture's counters, and the `--top` flows of
//! each interval as labelled gauges (their series go when a flow leaves the top), so a
//! dashboard shows the top talkers with their rate, RTT and TCP health (docs/metrics.md).
use super::{FlowReport, Interval, Table};
use crate::metrics::{labels, set_total, Labels};

crate::metrics::families! {
    pub(super) struct FlowsMetrics {
        flows: gauge("wirelab_flows_flows", "Flows in the table"),
        active: gauge("wirelab_flows_active", "Flows with a packet in the last interval"),
        frames: counter("wirelab_flows_frames", "Frames the capture handed over"),
        non_ip: counter("wirelab_flows_non_ip_frames", "Of those, not IP (ARP, ...)"),
        evicted: counter(
            "wirelab_flows_evicted",
            "Flows forgotten to stay under the table's limit"
        ),
        rate: gauge(
            "wirelab_flows_top_rate_bits_per_second",
            "A top flow's rate, both directions, over the last interval"
        ),
        bytes: gauge(
            "wirelab_flows_top_bytes",
            "A top flow's frame bytes so far, per side (orig: sent by the originator)"
        ),
        rtt: gauge(
            "wirelab_flows_top_rtt_seconds",
            "A top flow's running RTT (TCP timestamps) over the last interval, per side"
        ),
        retx: gauge(
            "wirelab_flows_top_retransmissions",
            "A top flow's TCP retransmissions so far, per side"
        ),
        ;
        /// The top flows' labels published last time (without `side`).
        shown: Vec<Labels> = vec![],
    }
}

/// A flow's labels: interface, protocol, originator and responder.
fn flow_labels(iface: &str, f: &FlowReport) -> Labels {
    labels(&[
        ("iface", iface),
        ("proto", &f.proto),
        ("orig", &f.orig_addr),
        ("resp", &f.resp_addr),
    ])
}

fn with_side(l: &Labels, side: &str) -> Labels {
    let mut l = l.clone();
    l.push(("side".into(), side.into()));
    l
}

impl FlowsMetrics {
    pub(super) fn publish(&mut self, line: &Interval, table: &Table) {
        let iface = labels(&[("iface", &line.iface)]);
        self.flows.get_or_create(&iface).set(line.flows as f64);
        self.active.get_or_create(&iface).set(line.active as f64);
        set_total(&self.frames.get_or_create(&iface), table.frames);
        set_total(&self.non_ip.get_or_create(&iface), table.non_ip);
        set_total(&self.evicted.get_or_create(&iface), table.evicted);
        let now: Vec<Labels> = line
            .top
            .iter()
            .map(|f| flow_labels(&line.iface, f))
            .collect();
        for old in self.shown.iter().filter(|l| !now.contains(l)) {
            self.rate.remove(old);
            for side in ["orig", "resp"] {
                let l = with_side(old, side);
                self.bytes.remove(&l);
                self.rtt.remove(&l);
                self.retx.remove(&l);
            }
        }
        for (f, l) in line.top.iter().zip(&now) {
            self.rate.get_or_create(l).set(f.rate_bps);
            for (side, d) in [("orig", &f.orig), ("resp", &f.resp)] {
                let ls = with_side(l, side);
                self.bytes.get_or_create(&ls).set(d.bytes as f64);
                self.retx.get_or_create(&ls).set(d.retransmissions as f64);
                match d.rtt_ms {
                    Some(ms) => {
                        self.rtt.get_or_create(&ls).set(ms / 1e3);
                    }
                    None => {
                        self.rtt.remove(&ls);
                    }
                }
            }
        }
        self.shown = now;
    }
}
