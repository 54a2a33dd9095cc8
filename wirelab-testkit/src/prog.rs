//! One entry point for `BPF_PROG_TEST_RUN`: run a loaded XDP or tc program on a frame.
use aya::{
    programs::{Program, SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};

/// Run program `name` of `bpf` (loaded, XDP or tc) once on `frame`; returns its verdict and
/// the frame as the program left it.
///
/// # Panics
/// When the program is missing, of another type, or the kernel refuses the run.
#[track_caller]
pub fn run(bpf: &Ebpf, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    };
    let r = match bpf.program(name) {
        Some(p @ Program::Xdp(_)) => <&Xdp>::try_from(p).map(|x| x.test_run(opts)),
        Some(p @ Program::SchedClassifier(_)) => {
            <&SchedClassifier>::try_from(p).map(|t| t.test_run(opts))
        }
        Some(_) => panic!("program {name} is neither XDP nor tc"),
        None => panic!("no program {name} in the object"),
    }
    .expect("program type")
    .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {name}: {e}"));
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}
