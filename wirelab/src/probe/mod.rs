//! `wirelab probe`: the measuring instrument.
//!
//! UDP mode: the client sends sequence-numbered, timestamped probes at a fixed rate; the server
//! stamps and echoes each one. Lab hosts share one CLOCK_MONOTONIC, so one-way delays are
//! measured directly: forward = server receive − client send, reverse = client receive − server
//! send. Both sockets use SO_NO_CHECK (IPv4 UDP without checksum) so corrupted probes reach
//! the application and are detected by the probe's own checksums instead of vanishing as loss.
//! A final exchange fetches the server's own counts (received, duplicates, reordered,
//! corrupted) for the run.
//!
//! TCP mode: the client writes as fast as it can for the duration; the server counts bytes in
//! 100 ms slots and returns them, giving goodput over time as the receiver saw it.
//!
//! Files: `wire.rs` (the probe format and socket options), `server.rs` (UDP echo, TCP sink),
//! `udp.rs` and `tcp.rs` (the clients), `report.rs` (printing and recorded quantities), `record.rs` (runs with `--record`),
//! `types.rs` (the typed lines those write and `wirelab report` reads).
mod record;
mod report;
mod server;
mod tcp;
mod types;
mod udp;
mod wire;

pub use record::{tcp_recorded, udp_recorded};
pub use report::{print_udp, tcp_measured, udp_measured};
pub use server::server;
pub use tcp::{tcp_client, TcpReport};
pub use types::{Dirs, SinkReport, TcpInterval, UdpConfig, UdpInterval, UdpRecord};
pub use udp::{
    udp_client, udp_client_with, Behind, Bursts, ClientOptions, DelayStats, DirStats, ProbeSample,
    UdpReport,
};
pub use wire::MIN_SIZE;
