//! Samba's smbd in a lab namespace with a private configuration under a temporary directory
//! (a `guest ok` share named `share` holding `hello.txt`), stopped and removed on drop.
use std::{
    collections::BTreeSet, net::Ipv4Addr, os::unix::process::CommandExt as _, path::PathBuf,
    process::Stdio, time::Duration,
};

use crate::{eventually, in_ns, unique, Bg};

pub struct Samba {
    pub dir: PathBuf,
    _smbd: Bg,
}

impl Samba {
    /// Start smbd in namespace `ns`, listening on `addr`:445 only; waits until it listens.
    ///
    /// # Panics
    /// When smbd is missing or does not listen within 20 s.
    pub fn start(ns: &str, addr: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("wl-smb"));
        for d in [
            "state", "cache", "lock", "pid", "private", "ncalrpc", "log", "share",
        ] {
            std::fs::create_dir_all(dir.join(d)).expect("samba directories");
        }
        std::fs::write(dir.join("share/hello.txt"), "hello from wirelab\n").expect("share file");
        let d = dir.display();
        let conf = format!(
            "[global]\n  server role = standalone server\n  map to guest = Bad User\n  guest account = nobody\n  disable netbios = yes\n  smb ports = 445\n  interfaces = {addr}/24\n  bind interfaces only = yes\n  state directory = {d}/state\n  cache directory = {d}/cache\n  lock directory = {d}/lock\n  pid directory = {d}/pid\n  private dir = {d}/private\n  ncalrpc dir = {d}/ncalrpc\n  log file = {d}/log/log.%m\n  max log size = 0\n  load printers = no\n  printcap name = /dev/null\n  disable spoolss = yes\n  max smbd processes = 0\n[share]\n  path = {d}/share\n  guest ok = yes\n  read only = yes\n"
        );
        std::fs::write(dir.join("smb.conf"), conf).expect("smb.conf");
        let conf_path = dir.join("smb.conf").display().to_string();
        let child = in_ns(
            ns,
            &[
                "smbd",
                "--foreground",
                "--no-process-group",
                "-s",
                &conf_path,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: on SIGTERM smbd signals its whole process group (it runs
        // with --no-process-group), which must not be the test runner's.
        .process_group(0)
        .spawn()
        .expect("smbd (apt-get install samba; `cargo xtask setup` does it)");
        let smbd = Bg::from_child(child);
        let listens = || {
            let o = in_ns(ns, &["ss", "-ltn"]).output().expect("ss");
            String::from_utf8_lossy(&o.stdout).contains(&format!("{addr}:445"))
        };
        assert!(
            eventually(Duration::from_secs(20), listens),
            "smbd did not listen on {addr}:445"
        );
        Self { dir, _smbd: smbd }
    }

    /// The configuration file (for `smbstatus -s`).
    pub fn conf(&self) -> PathBuf {
        self.dir.join("smb.conf")
    }

    /// Client IPs Samba itself saw: one `log.IP` file per client machine.
    pub fn client_ips(&self) -> BTreeSet<Ipv4Addr> {
        std::fs::read_dir(self.dir.join("log"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .strip_prefix("log.")
                            .and_then(|s| s.parse().ok())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Samba {
    fn drop(&mut self) {
        // smbd itself is killed by `Bg`; its per-connection children go with the lab's
        // namespace (`lab down` stops every process left in it).
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
