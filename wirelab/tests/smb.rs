//! `wirelab smb` against real peers: Samba's smbd in the lab's server, unmodified `smbclient`
//! processes as K distinct client machines (`wirelab swarm`), and three references on the
//! same traffic: Samba's own `smbstatus --json` (live tree connects while the clients hold
//! them), and tshark over a tcpdump capture taken alongside (per-client requests by command,
//! `-z smb2,srt` response counts, error responses by NTSTATUS).
mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::IpAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use wirelab::smb::{proto, ClientReport, FinalLine, IntervalLine};
use wirelab_testkit::samba::Samba;

const SERVER: &str = "198.18.0.2";
const POOL: &str = "198.18.8.0/24";
const K: usize = 30;

/// Tree connects Samba holds now (`smbstatus --json`), by share name.
fn smbstatus_tcons_by_share(ns: &str, smb: &Samba) -> BTreeMap<String, usize> {
    let conf = smb.conf().display().to_string();
    let o = in_ns(ns, &["smbstatus", "-s", &conf, "--json"])
        .output()
        .expect("smbstatus");
    #[derive(serde::Deserialize)]
    struct Tcon {
        service: String,
    }
    #[derive(serde::Deserialize)]
    struct Status {
        #[serde(default)]
        tcons: BTreeMap<String, Tcon>,
    }
    assert!(
        o.status.success(),
        "smbstatus: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s: Status = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "smbstatus --json: {e}: {}",
            String::from_utf8_lossy(&o.stdout)
        )
    });
    let mut by = BTreeMap::new();
    for t in s.tcons.into_values() {
        *by.entry(t.service).or_default() += 1;
    }
    by
}

/// Tree connects Samba holds now.
fn smbstatus_tcons(ns: &str, smb: &Samba) -> usize {
    smbstatus_tcons_by_share(ns, smb).values().sum()
}

/// wirelab smb's live tree connects per share, by the share's name (the path's last part),
/// shares with none left out.
fn ours_by_share(l: &IntervalLine) -> BTreeMap<String, usize> {
    l.shares_live
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(p, n)| (p.rsplit('\\').next().unwrap_or(p).to_string(), *n as usize))
        .collect()
}

/// Count lines of `tshark -T fields` output by their two fields (comma lists are split: a
/// compound frame holds several commands), the second field's value then named by `name`.
fn tshark_fields(
    file: &str,
    filter: &str,
    fields: &[&str],
    name: impl Fn(&str) -> String,
) -> BTreeMap<(String, String), u64> {
    let mut c = std::process::Command::new("tshark");
    c.args(["-r", file, "-Y", filter, "-T", "fields"]);
    for f in fields {
        c.args(["-e", f]);
    }
    let o = ok(c);
    let mut m = BTreeMap::new();
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let mut parts = l.split('\t');
        let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
            continue;
        };
        for v in b.split(',').filter(|v| !v.is_empty()) {
            *m.entry((a.to_string(), v.to_string())).or_default() += 1;
        }
    }
    m.into_iter()
        .map(|((a, v), n)| ((a, name(&v)), n))
        .collect()
}

/// Our counts per (client, key), from each client's map `of`.
fn per_client(
    fin: &FinalLine,
    of: impl Fn(&ClientReport) -> &BTreeMap<String, u64>,
) -> BTreeMap<(String, String), u64> {
    fin.clients
        .iter()
        .flat_map(|c| {
            of(c)
                .iter()
                .map(|(k, n)| ((c.client.to_string(), k.clone()), *n))
        })
        .collect()
}

/// Equal maps, or a panic listing the keys whose values differ (ours, the reference).
#[track_caller]
fn assert_same(
    ours: &BTreeMap<(String, String), u64>,
    reference: &BTreeMap<(String, String), u64>,
    what: &str,
) {
    let differ: Vec<String> = ours
        .keys()
        .chain(reference.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| ours.get(k) != reference.get(k))
        .map(|k| format!("{k:?}: {:?} vs {:?}", ours.get(k), reference.get(k)))
        .collect();
    assert!(differ.is_empty(), "{what}:\n{}", differ.join("\n"));
}

/// `wirelab report` on the smb record: the peak of live tree connects is the final line's,
/// and the plot of live tree connects climbs to K and ends at 0, as smbstatus saw.
fn report_plots_live_tree_connects(rec: &std::path::Path, fin: &FinalLine) {
    let o = ok(wirelab().arg("report").arg(rec));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    eprintln!("{out}");
    assert!(
        out.contains(&format!("live tree connects at most {K} ")),
        "{out}"
    );
    let run = wirelab::report::load(rec, false).unwrap();
    let src = run.sources.iter().find(|s| s.tool == "smb").unwrap();
    let wirelab::report::Typed::Smb(l) = &src.typed else {
        panic!("the smb source is not read as smb lines")
    };
    assert_eq!(l.fin.as_deref(), Some(fin));
    let trees = plotted(src, "smb-live", "tree connects");
    let ys: Vec<f64> = trees.iter().map(|p| p.1).collect();
    assert_eq!(ys.iter().copied().fold(0.0, f64::max), K as f64, "{ys:?}");
    assert_eq!(ys.last(), Some(&0.0), "{ys:?}");
    assert!(trees.windows(2).all(|w| w[0].0 < w[1].0));
}

#[test]
fn smbclient_swarm_agrees_with_smbstatus_and_tshark() {
    let lab = Lab::up("smbv");
    let server_ns = lab.ns("server");
    ok(in_ns(
        &server_ns,
        &["ip", "route", "add", POOL, "dev", "eth0"],
    ));
    let smb = Samba::start(&server_ns, SERVER);
    let dir = TempDir::new("wl-smbv");
    let pcap = dir.join("ref.pcap").display().to_string();
    // The reference capture (AF_PACKET, beside wirelab's XDP/tc capture).
    let mut tcpdump_cmd = in_ns(
        &server_ns,
        &[
            "tcpdump",
            "-i",
            "eth0",
            "-U",
            "-s",
            "0",
            "-w",
            &pcap,
            "tcp port 445",
        ],
    );
    tcpdump_cmd.stdout(Stdio::null());
    let tcpdump = spawn_ready(tcpdump_cmd, "listening on", Duration::from_secs(10));
    let mut view_cmd = wirelab();
    view_cmd.args([
        "smb",
        "--netns",
        &server_ns,
        "--iface",
        "eth0",
        "--interval",
        "200ms",
        "--json",
        "--metrics",
        "127.0.0.1:0",
        "--record",
    ]);
    let rec = dir.join("rec");
    view_cmd.arg(&rec).stdout(Stdio::piped());
    let mut view = spawn_ready(view_cmd, "capture attached", Duration::from_secs(20));
    let metrics = tcp_listen_addr(view.pid());
    let trees_metric = || {
        let rows = parse_openmetrics(&scrape(&metrics).1);
        rows.iter()
            .find(|r| {
                r.name == "wirelab_smb_tree_connects"
                    && r.label("server") == Some(SERVER)
                    && r.label("share") == Some("share")
            })
            .map_or(0.0, |r| r.value)
    };
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = {
        let out = view.child_mut().stdout.take().expect("stdout piped");
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    // K client machines; each lists the share, reads a file, asks for a missing one (an
    // error), then holds its tree connect for a while.
    let swarm = {
        let ns = lab.ns("client");
        std::thread::spawn(move || {
            let mut c = wirelab();
            c.args([
                "swarm", "run", "--netns", &ns, "--iface", "eth0", "--pool", POOL,
            ]);
            c.args(["--clients", &K.to_string(), "--concurrency", &K.to_string()]);
            c.args(["--timeout", "30s", "--json", "--", "sh", "-c"]);
            c.arg(format!(
                "{{ echo ls; echo 'get hello.txt /dev/null'; echo 'get missing-{{n}}.txt /dev/null'; sleep 4; echo exit; }} | smbclient //{SERVER}/share -N"
            ));
            c.output().expect("swarm run")
        })
    };
    // While they hold: Samba and the view count the same live tree connects.
    let latest = || -> Option<IntervalLine> {
        let l = lines.lock().unwrap();
        l.iter().rev().find_map(|l| serde_json::from_str(l).ok())
    };
    let mut seen = (0, 0);
    let agreed = eventually(Duration::from_secs(30), || {
        let samba = smbstatus_tcons(&server_ns, &smb);
        let ours = latest().map_or(0, |l| l.totals.trees_live as usize);
        seen = (samba, ours);
        samba == K && ours == K
    });
    // And per share: every live one is "share" (smbclient's IPC$ connect is over by then).
    let mut by_share = (BTreeMap::new(), BTreeMap::new());
    let shares_agree = agreed
        && eventually(Duration::from_secs(3), || {
            by_share = (
                smbstatus_tcons_by_share(&server_ns, &smb),
                latest().map(|l| ours_by_share(&l)).unwrap_or_default(),
            );
            by_share.0 == by_share.1
        });
    // --metrics serves the same live count for the share.
    let mut metric = 0.0;
    let metric_agrees = agreed
        && eventually(Duration::from_secs(3), || {
            metric = trees_metric();
            metric == K as f64
        });
    let o = swarm.join().unwrap();
    assert!(
        !agreed || metric_agrees,
        "wirelab_smb_tree_connects{{server={SERVER:?},share=\"share\"}} {metric}, want {K}"
    );
    assert!(
        !agreed || shares_agree,
        "live tree connects per share: smbstatus {:?} vs wirelab smb {:?}",
        by_share.0,
        by_share.1
    );
    assert_eq!(by_share.0.get("share"), Some(&K), "{by_share:?}");
    assert!(
        agreed,
        "live tree connects: smbstatus {} vs wirelab smb {}\nswarm: {}\n{}\nwirelab smb: {:?}",
        seen.0,
        seen.1,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        lines.lock().unwrap().last()
    );
    // Every client ran to its end: 0 when every smbclient exited 0, 3 when some exited
    // otherwise (smbclient may report the missing file in its status); never a timeout, and
    // never wirelab's own error (1).
    assert!(
        o.status.success() || o.status.code() == Some(3),
        "swarm: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary: wirelab::swarm::run::Summary = serde_json::from_str(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .rfind(|l| l.contains("\"succeeded\""))
            .unwrap_or_else(|| panic!("no summary: {}", String::from_utf8_lossy(&o.stdout))),
    )
    .unwrap();
    assert_eq!(summary.run as usize, K, "{summary:?}");
    assert!(!summary.interrupted, "{summary:?}");
    assert!(
        summary.failures.keys().all(|k| k.starts_with("exit ")),
        "{summary:?}"
    );
    // Every client has left: both say 0.
    assert!(eventually(Duration::from_secs(10), || {
        smbstatus_tcons(&server_ns, &smb) == 0 && latest().is_some_and(|l| l.totals.trees_live == 0)
    }));
    let stopped = view.stop().expect("wirelab smb stops");
    assert!(stopped.success(), "{}", stopped.text());
    reader.join().unwrap();
    // tcpdump has written every connection's end before it stops.
    let fins = || {
        let o = std::process::Command::new("tcpdump")
            .args(["-r", &pcap, "tcp[tcpflags] & tcp-fin != 0 and src port 445"])
            .stderr(Stdio::null())
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    assert!(
        eventually(Duration::from_secs(10), || fins() >= K),
        "tcpdump wrote {} FINs",
        fins()
    );
    let _ = tcpdump.stop();
    let fin: FinalLine = {
        let l = lines.lock().unwrap();
        serde_json::from_str(l.last().expect("a final line")).expect("the last line is final")
    };
    assert_eq!(fin.clients.len(), K, "{:?}", fin.clients);
    assert_eq!((fin.trees_live_max, fin.totals.trees_live), (K as u64, 0));
    // Per share: each client connected IPC$ and the share once; all of the share's at once.
    let share = |name: &str| {
        fin.shares
            .iter()
            .find(|s| s.share == format!("\\\\{SERVER}\\{name}"))
            .unwrap_or_else(|| panic!("{name} in {:?}", fin.shares))
    };
    let (ipc, sh) = (share("IPC$"), share("share"));
    assert_eq!(fin.shares.len(), 2, "{:?}", fin.shares);
    assert_eq!(
        (ipc.trees_total, ipc.clients, ipc.trees_live),
        (K as u64, K as u64, 0)
    );
    assert_eq!(
        (sh.trees_total, sh.clients, sh.trees_live, sh.trees_live_max),
        (K as u64, K as u64, 0, K as u64)
    );
    assert_eq!(fin.skipped_bytes, 0);
    report_plots_live_tree_connects(&rec, &fin);

    // Per client and command: requests as tshark decodes them from tcpdump's capture.
    let want = tshark_fields(
        &pcap,
        "smb2 && smb2.flags.response == 0",
        &["ip.src", "smb2.cmd"],
        |cmd| proto::command_name(cmd.parse().expect("numeric smb2.cmd")),
    );
    for c in &fin.clients {
        assert_eq!(c.dialect.as_deref(), Some("3.1.1"), "{c:?}");
        // smbclient connects IPC$ (a DFS referral) before the share.
        assert_eq!((c.sessions_total, c.trees_total), (1, 2), "{c:?}");
        assert_eq!(
            c.shares,
            [
                format!("\\\\{SERVER}\\IPC$"),
                format!("\\\\{SERVER}\\share")
            ]
        );
        assert!(!c.encrypted);
    }
    assert_eq!(
        per_client(&fin, |c| &c.by_command),
        want,
        "requests per client and command: wirelab smb vs tshark"
    );

    // Errors by client and NTSTATUS: each client's missing file, as tshark sees it.
    let want_err = tshark_fields(
        &pcap,
        "smb2.flags.response == 1 && smb2.nt_status != 0 && smb2.nt_status != 0x103 && smb2.nt_status != 0xc0000016",
        &["ip.dst", "smb2.nt_status"],
        |st| {
            let v = u32::from_str_radix(st.trim_start_matches("0x"), 16).expect("hex status");
            proto::status::name(v)
        },
    );
    for c in &fin.clients {
        assert!(
            c.errors
                .get("STATUS_OBJECT_NAME_NOT_FOUND")
                .is_some_and(|n| *n >= 1),
            "{c:?}"
        );
    }
    assert_same(
        &per_client(&fin, |c| &c.errors),
        &want_err,
        "errors: wirelab smb vs tshark",
    );

    // Response times: as many request/response pairs per command as `-z smb2,srt` counts.
    let srt = ok(std::process::Command::new("tshark").args(["-r", &pcap, "-q", "-z", "smb2,srt"]));
    let srt = String::from_utf8_lossy(&srt.stdout);
    // Rows: index, the command's name (words), calls, min, max, avg, sum (seconds).
    let rows: BTreeMap<String, (u64, f64)> = srt
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let cmd: u16 = f.first()?.parse().ok()?;
            let n = f.len();
            let calls = f.get(n.checked_sub(5)?)?.parse().ok()?;
            let avg_s: f64 = f.get(n - 2)?.parse().ok()?;
            Some((proto::command_name(cmd), (calls, avg_s * 1000.0)))
        })
        .collect();
    for c in &fin.commands {
        let (calls, avg_ms) = *rows
            .get(&c.command)
            .unwrap_or_else(|| panic!("{} not in tshark's smb2,srt:\n{srt}", c.command));
        assert_eq!(
            c.responses, calls,
            "{}: responses vs srt calls\n{srt}",
            c.command
        );
        // Two captures at different hooks (XDP/tc vs AF_PACKET) of the same exchanges.
        let mean = c.mean_ms.expect("a mean");
        assert!(
            (mean - avg_ms).abs() <= (0.25 * avg_ms).max(0.5),
            "{}: mean {mean:.3} ms vs tshark's {avg_ms:.3} ms",
            c.command
        );
    }

    // The same file read back (pcap, tcpdump's): the same per-client figures.
    let o = ok(wirelab().args(["smb", "--read", &pcap, "--json"]));
    let back: FinalLine = serde_json::from_slice(&o.stdout).expect("final line");
    let key = |f: &FinalLine| -> BTreeMap<IpAddr, (u64, u64, u64)> {
        f.clients
            .iter()
            .map(|c| {
                (
                    c.client,
                    (c.commands, c.trees_total, c.errors.values().sum()),
                )
            })
            .collect()
    };
    assert_eq!(key(&back), key(&fin));
}
