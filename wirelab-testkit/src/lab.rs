//! Labs through the `wirelab` CLI.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Result;

/// A lab brought up with `wirelab lab up` and taken down (`lab down`) on drop.
pub struct Lab {
    pub name: String,
    bin: PathBuf,
}

impl Lab {
    /// `wirelab lab up --name NAME [TOPOLOGY]` with the binary at `bin`.
    pub fn up(bin: &Path, name: &str, topology: Option<&Path>) -> Result<Self> {
        let mut c = Command::new(bin);
        c.args(["lab", "up", "--name", name]);
        if let Some(t) = topology {
            c.arg(t);
        }
        // Owned before it exists: a half-made lab is taken down too.
        let lab = Self {
            name: name.to_string(),
            bin: bin.to_path_buf(),
        };
        crate::out(&mut c)?;
        Ok(lab)
    }

    /// The namespace of lab host `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .args(["lab", "down", "--name", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `ip netns exec NS ARGS…`.
pub fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]);
    c.args(args);
    c
}
