//! Files users name (fw `src_file`, wan `distribution FILE.dist`, rules, topologies) are read
//! only when they are regular files under a size cap: a FIFO, `/dev/zero` or `/dev/urandom`
//! is refused at once, naming the file, instead of blocking forever or eating all memory.
mod common;
use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// Run `c`, failing the test if it has not finished within 10 s (a blocked read).
fn bounded(mut c: Command) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    let t0 = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{c:?} still running after 10 s: it blocked on its input");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Make the FIFO `name` in `d`.
fn fifo(d: &TempDir, name: &str) -> std::path::PathBuf {
    let p = d.join(name);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).unwrap();
    p
}

/// What no tool may read, with how its refusal describes it: the FIFO `fifo` (nobody writes
/// it) and two endless character devices.
fn unreadable(fifo: &std::path::Path) -> [(&str, &str); 3] {
    [
        (fifo.to_str().unwrap(), "a FIFO"),
        ("/dev/zero", "a character device"),
        ("/dev/urandom", "a character device"),
    ]
}

fn refused(c: Command, needles: &[&str]) {
    let o = bounded(c);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "accepted: {err}");
    for n in needles {
        assert!(err.contains(n), "no {n:?} in: {err}");
    }
}

#[test]
fn fw_address_lists_must_be_bounded_regular_files() {
    let d = TempDir::new("wirelab-inputs-");
    let fifo = fifo(&d, "list.fifo");
    for (src, what) in unreadable(&fifo) {
        let rules = d.file(
            "r.toml",
            &format!("default = \"allow\"\n[[rule]]\nname = \"x\"\naction = \"deny\"\nsrc_file = \"{src}\"\n"),
        );
        let mut c = wirelab();
        c.args(["fw", "check", "--rules"]).arg(&rules);
        refused(c, &["src_file", src, what]);
    }
    // Over the cap: a sparse file of 65 MiB (the address-list limit is 64 MiB).
    let big = d.join("big.txt");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let rules = d.file(
        "r.toml",
        "default = \"allow\"\n[[rule]]\nname = \"x\"\naction = \"deny\"\nsrc_file = \"big.txt\"\n",
    );
    let mut c = wirelab();
    c.args(["fw", "check", "--rules"]).arg(&rules);
    refused(c, &["big.txt", "limit of 67108864 bytes"]);
    // The rules file itself, and a topology, follow the same rule.
    let mut c = wirelab();
    c.args(["fw", "check", "--rules"]).arg(&fifo);
    refused(c, &["list.fifo", "a FIFO"]);
    let mut c = wirelab();
    c.args(["lab", "up", "--check"]).arg(&fifo);
    refused(c, &["list.fifo", "a FIFO"]);
}

#[test]
fn wan_distribution_files_must_be_bounded_regular_files() {
    let d = TempDir::new("wirelab-inputs-");
    let fifo = fifo(&d, "delay.dist");
    for (f, what) in unreadable(&fifo) {
        let mut c = wirelab();
        c.args([
            "wan",
            "--check",
            "--both",
            &format!("delay 10ms 2ms distribution {f}"),
        ]);
        refused(c, &[f, what]);
    }
}

#[test]
fn wan_zero_limit_means_the_same_in_packets_and_bytes() {
    for spec in ["limit 0", "limit 0kb"] {
        let mut c = wirelab();
        c.args(["wan", "--check", "--both", spec]);
        refused(c, &["zero limit"]);
    }
    let o = ok(wirelab().args(["wan", "--check", "--both", "limit 1"]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("config OK"));
}

/// `wan --check` shows how each unit was read: tc's `mbps` is bytes per second, `kb` is 1024.
#[test]
fn wan_check_spells_out_the_units_it_read() {
    let o = ok(wirelab().args([
        "wan",
        "--check",
        "--json",
        "--a-to-b",
        "delay 20ms 2ms distribution normal loss 1% rate 100mbps limit 64kb",
        "--b-to-a",
        "delay 1.5s rate 10mbit",
    ]));
    let v: wirelab::wan::CheckReport =
        serde_json::from_slice(&o.stdout).expect("one wan --check report");
    assert!(v.ok, "{v:?}");
    let a = &v.classes[0].a_to_b;
    for want in [
        "delay 20 ms",
        "jitter 2 ms normal (order kept)",
        "loss 1 % random",
        "rate 800 Mbit/s (100 MB/s)",
        "queue limit 65536 bytes",
    ] {
        assert!(a.contains(want), "{want:?} not in {a:?}");
    }
    let b = &v.classes[0].b_to_a;
    assert!(
        b.contains("delay 1500 ms") && b.contains("rate 10 Mbit/s (1.25 MB/s)"),
        "{b}"
    );
    // The text form says the same.
    let o = ok(wirelab().args(["wan", "--check", "--both", "rate 100mbps"]));
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("config OK") && t.contains("rate 800 Mbit/s (100 MB/s)"),
        "{t}"
    );
}

/// `rate trace FILE` is validated in full before anything is attached: the error names the
/// clause, the file and the line; FIFOs and devices are refused like every user file.
#[test]
fn wan_trace_files_are_validated_naming_the_line() {
    let d = TempDir::new("wirelab-inputs-");
    let check = |spec: &str| {
        let mut c = wirelab();
        c.current_dir(d.path())
            .args(["wan", "--check", "--a-to-b", spec]);
        c
    };
    for (name, text, want) in [
        ("empty.trace", "", "empty trace"),
        ("zero.trace", "0\n0\n", "longer than 0 ms"),
        ("word.trace", "1\n2\nthree\n", "line 3: \"three\""),
        ("frac.trace", "1\n1.5\n", "line 2: \"1.5\""),
        ("down.trace", "1\n5\n4\n", "line 3: 4 ms comes after 5 ms"),
        ("blank.trace", "1\n\n2\n", "line 2 is empty"),
    ] {
        d.file(name, text);
        refused(
            check(&format!("delay 5ms rate trace {name}")),
            &["class default a_to_b", "rate trace", name, want],
        );
    }
    let fifo = fifo(&d, "t.fifo");
    for (f, what) in unreadable(&fifo) {
        refused(check(&format!("rate trace {f} once")), &[f, what]);
    }
    refused(check("rate trace"), &["\"rate\"", "trace file"]);
    refused(
        check("limit 10 link"),
        &["\"link\"", "give `rate` or `rate trace`"],
    );
    // A good one: --check says what it read (opportunities, span, mean rate, mode).
    let wan_trace = |args: &[&str]| {
        let mut c = wirelab();
        c.current_dir(d.path()).args(["wan", "trace"]).args(args);
        c
    };
    let o = ok(wan_trace(&[
        "--rate",
        "12mbit",
        "--duration",
        "1s",
        "-o",
        "ok.trace",
    ]));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("1000 opportunities over 1000 ms"),
        "{o:?}"
    );
    let o = ok(check("rate trace ok.trace once limit 20 link"));
    let t = String::from_utf8_lossy(&o.stdout);
    for want in [
        "rate from trace ok.trace (played once",
        "queue limit 20 frames waiting for the link",
        "1000 opportunities over 1000 ms, mean 12.000 Mbit/s",
    ] {
        assert!(t.contains(want), "{want:?} not in {t}");
    }
    // The converter's own input is checked too.
    refused(
        wan_trace(&["--rate", "12mbit", "--duration", "1s", "--rate", "1mbit"]),
        &["one --duration per --rate"],
    );
    refused(
        wan_trace(&["--rate", "12mbit", "--duration", "1.5ms"]),
        &["--duration #1", "whole milliseconds"],
    );
    // Presets: --check shows what one expands to; an unknown one names the known ones.
    let o = ok(wirelab().args(["wan", "--check", "--preset", "pantheon-india-india"]));
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("delay 27ms rate 100.42mbit -14 limit 173 link")
            && t.contains("b_to_a: delay 27 ms"),
        "{t}"
    );
    let mut c = wirelab();
    c.args(["wan", "--check", "--preset", "mars"]);
    refused(c, &["\"mars\"", "pantheon-nepal-india"]);
}

/// Out-of-range numbers and empty inputs are refused with what is wrong, never a panic or a
/// machine's memory: huge durations (bare seconds and with units), a `wan trace` longer than
/// `rate trace` reads (it used to be built in memory first: 100 Gbit/s for an hour filled
/// 24 GB), rates beyond 1000gbit, correlations over 100 %, an empty capture for `smb --read`.
#[test]
fn out_of_range_and_empty_inputs_are_refused_without_a_panic() {
    let d = TempDir::new("wirelab-inputs-");
    let empty = d.file("empty.pcap", "");
    let run = |args: &[&str], stdin_empty: bool| {
        let mut c = wirelab();
        c.current_dir(d.path()).args(args);
        if stdin_empty {
            c.stdin(Stdio::null());
        }
        c
    };
    for (args, want) in [
        (
            &["wan", "trace", "--rate", "10mbit", "--duration=1e20"][..],
            "longer than 365 days",
        ),
        (
            &[
                "wan",
                "trace",
                "--rate",
                "10mbit",
                "--duration",
                "99999999999h",
            ],
            "longer than 365 days",
        ),
        (
            &[
                "wan",
                "trace",
                "--rate",
                "100gbit",
                "--duration",
                "1h",
                "-o",
                "t",
            ],
            "more than the 64 MiB a `rate trace` reads",
        ),
        (
            &["wan", "--check", "--both", "rate 99999999999gbit"],
            "at most 1000gbit",
        ),
        (
            &["wan", "--check", "--both", "delay 10ms 1ms 200%"],
            "a correlation must be a percentage",
        ),
        (
            &["smb", "--read", empty.to_str().unwrap()],
            "no capture in it",
        ),
        (&["smb", "--read", "-"], "standard input: no capture in it"),
        (&["smb", "--read", "-", "--interval", "1e20"], "365 days"),
    ] {
        let o = bounded(run(args, true));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} accepted: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: no {want:?} in: {err}");
    }
    assert!(!d.join("t").exists(), "a refused trace writes no file");
}
