//! `lb --metrics`: per-service and per-backend counters, backend health, the frames passed or
//! dropped by reason, reloads and health changes.
use super::{Health, Stats};
use crate::metrics::{labels, set_total};

crate::metrics::families! {
    /// The balancer's Prometheus metrics (`--metrics`).
    pub(super) struct LbMetrics {
        packets: counter(
            "wirelab_lb_packets",
            "Frames forwarded, per service (backend=\"\") and per backend"
        ),
        bytes: counter("wirelab_lb_bytes", "Bytes of those frames"),
        new_flows: counter(
            "wirelab_lb_new_flows",
            "Flows hashed afresh and entered (SYNs and misses)"
        ),
        drops: counter("wirelab_lb_dropped_packets", "Frames to a service dropped"),
        active: gauge(
            "wirelab_lb_active_flows",
            "Tracked flows still open (TCP: no FIN or RST seen; UDP: within the idle timeout)"
        ),
        up: gauge(
            "wirelab_lb_backend_up",
            "1 while the backend is in the table (health checks pass or none), 0 when down"
        ),
        events: counter(
            "wirelab_lb_events",
            "Frames passed or dropped by reason, and other events (event label)"
        ),
        reloads: counter("wirelab_lb_reloads", "Configs swapped in by lb reload"),
        health_changes: counter(
            "wirelab_lb_health_changes",
            "Backends taken out or brought back by health checks"
        ),
        generation: gauge("wirelab_lb_generation", "Table generation in force (0 or 1)"),
        ;
        /// Backend series exported so far, (service, backend): a reload that removes a
        /// backend drops its series.
        shown: Vec<(String, String)> = vec![],
    }
}

/// What [`LbMetrics::publish`] shows besides the counters.
pub(super) struct State {
    pub generation: u32,
    pub reloads: u64,
    pub health_changes: u64,
}

impl LbMetrics {
    pub(super) fn publish(&mut self, iface: &str, s: &Stats, st: &State) {
        let now: Vec<(String, String)> = s
            .services
            .iter()
            .flat_map(|svc| {
                std::iter::once((svc.name.clone(), String::new())).chain(
                    svc.backends
                        .iter()
                        .map(|b| (svc.name.clone(), b.name.clone())),
                )
            })
            .collect();
        for old in &self.shown {
            if !now.contains(old) {
                let l = labels(&[("iface", iface), ("service", &old.0), ("backend", &old.1)]);
                for f in [&self.packets, &self.bytes, &self.new_flows, &self.drops] {
                    f.remove(&l);
                }
                self.up.remove(&l);
                self.active.remove(&l);
            }
        }
        self.shown = now;
        for svc in &s.services {
            let l = labels(&[("iface", iface), ("service", &svc.name), ("backend", "")]);
            for (f, v) in [
                (&self.packets, svc.count.packets),
                (&self.bytes, svc.count.bytes),
                (&self.new_flows, svc.count.new_flows),
                (&self.drops, svc.count.drops),
            ] {
                set_total(&f.get_or_create(&l), v);
            }
            self.active.get_or_create(&l).set(svc.active_flows as f64);
            for b in &svc.backends {
                let l = labels(&[
                    ("iface", iface),
                    ("service", &svc.name),
                    ("backend", &b.name),
                ]);
                for (f, v) in [
                    (&self.packets, b.count.packets),
                    (&self.bytes, b.count.bytes),
                    (&self.new_flows, b.count.new_flows),
                ] {
                    set_total(&f.get_or_create(&l), v);
                }
                self.active.get_or_create(&l).set(b.active_flows as f64);
                self.up
                    .get_or_create(&l)
                    .set(if b.health == Health::Down { 0.0 } else { 1.0 });
            }
        }
        for (k, v) in s.events.named() {
            let l = labels(&[("iface", iface), ("event", k)]);
            set_total(&self.events.get_or_create(&l), v);
        }
        let l = labels(&[("iface", iface)]);
        set_total(&self.reloads.get_or_create(&l), st.reloads);
        set_total(&self.health_changes.get_or_create(&l), st.health_changes);
        self.generation.get_or_create(&l).set(st.generation as f64);
    }
}
