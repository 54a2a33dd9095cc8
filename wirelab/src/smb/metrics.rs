//! `smb --metrics`: the server-wide figures and the live tree connects per share, the
//! founding scenario's quantity (docs/metrics.md).
use super::View;
use crate::metrics::{labels, set_total};

crate::metrics::families! {
    pub(super) struct SmbMetrics {
        trees: gauge(
            "wirelab_smb_tree_connects",
            "Tree connects live now, per server and share (from the tree connect's path)"
        ),
        clients: gauge("wirelab_smb_clients", "Client addresses seen so far"),
        connections: gauge("wirelab_smb_connections", "TCP connections live now"),
        sessions: gauge("wirelab_smb_sessions", "Sessions live now"),
        opens: gauge("wirelab_smb_opens", "Opens live now"),
        requests: counter("wirelab_smb_requests", "SMB2 requests seen"),
        errors: counter("wirelab_smb_errors", "Error responses, per NTSTATUS (status label)"),
        ;
    }
}

impl SmbMetrics {
    /// Publish what `v` holds now.
    pub(super) fn publish(&self, v: &View) {
        let t = v.totals();
        let none = labels(&[]);
        self.clients.get_or_create(&none).set(t.clients as f64);
        self.connections
            .get_or_create(&none)
            .set(t.connections_live as f64);
        self.sessions
            .get_or_create(&none)
            .set(t.sessions_live as f64);
        self.opens.get_or_create(&none).set(t.opens_live as f64);
        set_total(&self.requests.get_or_create(&none), t.requests);
        for (path, live) in v.shares_live() {
            let (server, share) = split_path(&path);
            self.trees
                .get_or_create(&labels(&[("server", server), ("share", share)]))
                .set(live as f64);
        }
        for (status, n) in v.errors_by_status() {
            set_total(
                &self.errors.get_or_create(&labels(&[("status", &status)])),
                n,
            );
        }
    }
}

/// `\\server\share` as (server, share): label values without backslashes (the
/// exposition would have to escape them).
fn split_path(path: &str) -> (&str, &str) {
    let p = path.trim_start_matches('\\');
    p.split_once('\\').unwrap_or(("", p))
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_split_into_server_and_share() {
        assert_eq!(
            super::split_path("\\\\198.18.0.2\\share"),
            ("198.18.0.2", "share")
        );
        assert_eq!(super::split_path("IPC$"), ("", "IPC$"));
    }
}
