//! wirelab: a Rust + eBPF network lab toolkit. This library holds every tool's userspace side;
//! the `wirelab` binary is a thin clap front end over it.
pub mod cleanup;
pub mod ebpf;
pub mod fw;
pub mod gen;
pub mod inspect;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod nl;
pub mod probe;
pub mod progress;
pub mod record;
pub mod report;
pub mod swarm;
pub mod util;
pub mod wan;
