//! wirelab: a Rust + eBPF network lab toolkit. This library holds every tool's userspace side;
//! the `wirelab` binary is a thin clap front end over it.
#[macro_use]
pub mod named;
pub mod capture;
pub mod cleanup;
pub mod doctor;
pub mod ebpf;
pub mod flows;
pub mod fw;
pub mod gen;
pub mod inspect;
pub mod kernel;
pub mod lab;
pub mod lb;
pub mod metrics;
pub mod netns;
pub mod nl;
pub mod probe;
pub mod progress;
pub mod record;
pub mod report;
pub mod runtime;
pub mod smb;
pub mod swarm;
pub mod sweep;
pub mod util;
pub mod wan;
