//! `wirelab lab`: namespace testbeds.
use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use wirelab::{lab, netns};

use super::{require_root, JsonArg};

#[derive(Subcommand)]
pub enum LabCmd {
    /// Create a lab from a TOML topology (default: client — wan (bridge) — server).
    #[command(
        after_help = "Examples:\n  wirelab lab up\n  wirelab lab up --name l2 topo.toml\n  wirelab lab up --check topo.toml\n  wirelab lab up --print-default > topo.toml"
    )]
    Up {
        /// The lab's name: its namespaces are NAME-HOST (e.g. wirelab-client).
        #[arg(long, default_value = lab::DEFAULT_LAB)]
        name: String,
        /// Topology file; the built-in default topology when omitted.
        file: Option<PathBuf>,
        /// Print the built-in default topology and exit.
        #[arg(long)]
        print_default: bool,
        /// Only validate the topology completely (every field, and what only this kernel can
        /// tell: sysctl names and values, tried in a throwaway namespace); create nothing.
        #[arg(long)]
        check: bool,
    },
    /// Remove a lab: its namespaces, links, and processes still running in them.
    #[command(after_help = "Examples:\n  wirelab lab down\n  wirelab lab down --name l2")]
    Down {
        /// The lab's name (its namespaces are NAME-HOST).
        #[arg(long, default_value = lab::DEFAULT_LAB)]
        name: String,
    },
    /// Show labs, hosts, interfaces and addresses.
    #[command(
        after_help = "Examples:\n  wirelab lab status\n  wirelab lab status --name l2 --json"
    )]
    Status {
        /// One lab only (default: every lab that is up).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Run a command inside a lab host's network namespace.
    #[command(
        after_help = "Examples:\n  wirelab lab exec client -- ping -c 3 198.18.0.2\n  wirelab lab exec --name doc server -- ss -tln"
    )]
    Exec {
        /// The lab's name.
        #[arg(long, default_value = lab::DEFAULT_LAB)]
        name: String,
        /// The host (as named in the topology, e.g. client) to run in.
        host: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
}

pub fn run(c: LabCmd) -> Result<ExitCode> {
    match c {
        LabCmd::Up {
            name,
            file,
            print_default,
            check,
        } => {
            if print_default {
                print!("{}", lab::DEFAULT_TOPOLOGY.trim_start());
                return Ok(ExitCode::SUCCESS);
            }
            lab::validate_lab_name(&name)?;
            let topo = match &file {
                Some(f) => lab::Topology::load(f)?,
                None => lab::Topology::default_topology(),
            };
            if check {
                topo.check_kernel()?;
                println!(
                    "topology OK: {} hosts, {} links",
                    topo.host.len(),
                    topo.link.len()
                );
                return Ok(ExitCode::SUCCESS);
            }
            require_root()?;
            let st = lab::up(&name, &topo)?;
            println!("lab {name} is up:");
            for (h, ns) in &st.namespaces {
                println!("  host {h:<10} netns {ns}");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Down { name } => {
            require_root()?;
            let removed = lab::down(&name)?;
            println!("lab {name} is down (removed {})", removed.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Status { name, json } => {
            let json = json.json;
            let labs = match name {
                Some(n) => vec![n],
                None => lab::list_labs(),
            };
            let mut all = vec![];
            for l in &labs {
                all.push(lab::status(l)?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no labs are up");
            } else {
                let mut out = std::io::stdout().lock();
                for l in &all {
                    writeln!(
                        out,
                        "lab {}{}",
                        l.name,
                        if l.complete { "" } else { " (incomplete)" }
                    )?;
                    for h in &l.hosts {
                        writeln!(
                            out,
                            "  host {} (netns {}{}, {} processes)",
                            h.host,
                            h.netns,
                            if h.present { "" } else { ", MISSING" },
                            h.processes
                        )?;
                        for i in &h.interfaces {
                            writeln!(
                                out,
                                "    {:<12} {:<6} {:<4} {} mtu {}{} {}",
                                i.name,
                                if i.kind.is_empty() { "-" } else { &i.kind },
                                if i.up { "UP" } else { "DOWN" },
                                i.mac,
                                i.mtu,
                                i.master
                                    .as_ref()
                                    .map(|m| format!(" master {m}"))
                                    .unwrap_or_default(),
                                i.addresses.join(" ")
                            )?;
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Exec { name, host, cmd } => {
            let Some(st) = lab::read_state(&name)? else {
                bail!("no lab named {name:?} is up");
            };
            let Some(ns) = st.namespaces.get(&host) else {
                bail!(
                    "lab {name} has no host {host:?} (hosts: {})",
                    st.namespaces.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            };
            netns::enter(ns)?;
            use std::os::unix::process::CommandExt as _;
            let err = std::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .env("WIRELAB_LAB", &name)
                .env("WIRELAB_HOST", &host)
                .exec();
            Err(err).with_context(|| format!("running {:?}", cmd[0]))
        }
    }
}
