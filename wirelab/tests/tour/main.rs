//! The README's tour, run as written: every marked command block runs in its own lab (a
//! per-run name instead of the README's), and the output the README shows must match the real
//! output (the convention is in [`readme`] and at the top of the README's tour).
//!
//! Each command runs with `bash -c` in a temporary directory (with `docs/` linked there, so the
//! README's `docs/examples/…` paths work) and `wirelab` on `PATH`; stdout and stderr go to one
//! file, as on a terminal. Besides the marker's rules:
//! - a command ending in `&` runs in the background: the next command starts once it printed a
//!   line; the output shown under it is matched against the start of everything it printed
//!   until it ended (`kill %N` stops the block's N-th background command with SIGTERM; those
//!   still running at the end of the block get SIGTERM then; `wait` waits until they end by
//!   themselves);
//! - a command shown without output must succeed and its output is not compared; one whose shown
//!   output starts with `error:` must fail;
//! - `$ cat FILE` with shown output writes that output to FILE first: the README shows the files
//!   the tour uses;
//! - `/tmp/` in a command is the block's own directory (and back to `/tmp/` in the output), the
//!   block's lab name (`--name LAB`, `LAB-host`, `lab up` without `--name`) becomes a unique one
//!   (and back in the output).
#[path = "../common/mod.rs"]
mod common;
mod readme;

use std::{
    collections::VecDeque,
    fs::File,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use common::{eventually, require_privileges, unique, TempDir, WIRELAB};
use readme::{Block, Command};

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
/// Longest a foreground command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(150);
/// Blocks run side by side: most of the tour waits on the clock (durations, rates), not the CPU.
const PARALLEL: usize = 3;

fn read_readme() -> Vec<Block> {
    let text = std::fs::read_to_string(README).expect("reading README.md");
    readme::parse(&text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_tour_block_is_marked() {
    let blocks = read_readme();
    assert!(
        blocks.len() >= 10,
        "only {} tour blocks found",
        blocks.len()
    );
    let skipped: Vec<_> = blocks
        .iter()
        .filter(|b| b.skip.is_some())
        .map(|b| &b.name)
        .collect();
    assert!(
        skipped.len() <= 2,
        "the tour test should run the tour: {skipped:?} are skipped"
    );
    for b in &blocks {
        let all = b.setup.iter().chain(b.commands.iter().map(|c| &c.text));
        for t in all {
            assert!(
                b.lab.is_some() || !t.contains("wirelab lab "),
                "tour block {}: a lab command without lab= in the marker would use the user's lab: {t}",
                b.name
            );
        }
    }
}

fn signal_group(child: &Child, sig: i32) {
    // SAFETY: kill(2) with plain integers; the group is the one this test spawned the child
    // into (process_group(0)), and the child has not been reaped.
    unsafe {
        libc::kill(-(child.id() as i32), sig);
    }
}

/// Wait up to `limit` for the child to exit; SIGKILL its group after that.
fn finish(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let mut status = None;
    eventually(limit, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        signal_group(child, libc::SIGKILL);
        let _ = child.wait();
    }
    status
}

/// A background command of a block.
struct Job {
    child: Child,
    out: PathBuf,
    cmd: Option<Command>,
    done: bool,
}

impl Job {
    fn stop(&mut self) {
        if !self.done {
            signal_group(&self.child, libc::SIGTERM);
            finish(&mut self.child, Duration::from_secs(30));
            self.done = true;
        }
    }
}

/// One block's run: its directory, its lab name, its background commands. Dropping it stops
/// the background commands and takes the lab down, also when the block failed.
struct Run<'a> {
    block: &'a Block,
    lab: Option<(String, String)>,
    dir: TempDir,
    path: String,
    jobs: Vec<Job>,
    setup_jobs: Vec<Job>,
    n: usize,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        for j in self.jobs.iter_mut().chain(self.setup_jobs.iter_mut()) {
            j.stop();
        }
        if let Some((_, name)) = &self.lab {
            let _ = std::process::Command::new(WIRELAB)
                .args(["lab", "down", "--name", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `--name` right after `wirelab lab SUB` when the README leaves it out.
fn with_lab_name(text: &str, name: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("wirelab lab ") {
        let after = &rest[at + "wirelab lab ".len()..];
        let sub_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (sub, tail) = after.split_at(sub_len);
        out.push_str(&rest[..at]);
        out.push_str("wirelab lab ");
        out.push_str(sub);
        if ["up", "down", "status", "exec"].contains(&sub)
            && !tail.trim_start().starts_with("--name")
        {
            out.push_str(" --name ");
            out.push_str(name);
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// `LAB-` at the start of a word becomes `NAME-`.
fn with_namespaces(text: &str, lab: &str, name: &str) -> String {
    let pat = format!("{lab}-");
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(&pat) {
        let word_start = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || "=(\"'".contains(c));
        out.push_str(&rest[..at]);
        out.push_str(if word_start { name } else { lab });
        out.push('-');
        rest = &rest[at + pat.len()..];
    }
    out.push_str(rest);
    out
}

impl<'a> Run<'a> {
    fn new(block: &'a Block) -> Self {
        let dir = TempDir::new("tour");
        let bin = dir.join(".bin");
        std::fs::create_dir_all(&bin).expect("tour bin dir");
        std::os::unix::fs::symlink(WIRELAB, bin.join("wirelab")).expect("linking wirelab");
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::os::unix::fs::symlink(docs, dir.join("docs")).expect("linking docs");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let lab = block.lab.clone().map(|l| (l, unique("tour")));
        Self {
            block,
            lab,
            dir,
            path,
            jobs: Vec::new(),
            setup_jobs: Vec::new(),
            n: 0,
        }
    }

    fn to_real(&self, text: &str) -> String {
        let mut t = text.replace("/tmp/", &format!("{}/", self.dir.path().display()));
        if let Some((lab, name)) = &self.lab {
            t = t.replace(&format!("--name {lab} "), &format!("--name {name} "));
            if t.ends_with(&format!("--name {lab}")) {
                t = format!("{}{name}", &t[..t.len() - lab.len()]);
            }
            t = with_lab_name(&t, name);
            t = with_namespaces(&t, lab, name);
        }
        t
    }

    fn as_shown(&self, out: &str) -> String {
        let mut t = out.replace(&self.dir.path().display().to_string(), "/tmp");
        if let Some((lab, name)) = &self.lab {
            t = t.replace(name.as_str(), lab);
        }
        t
    }

    fn spawn(&mut self, text: &str, background: bool) -> (Child, PathBuf) {
        self.n += 1;
        let out = self.dir.join(&format!(".out{}", self.n));
        let f = File::create(&out).expect("output file");
        let real = self.to_real(text);
        // A background wirelab command is the process itself, so SIGTERM reaches it directly
        // and its last words are written before it is reaped.
        let real = if background && real.starts_with("wirelab ") {
            format!("exec {real}")
        } else {
            real
        };
        let child = std::process::Command::new("bash")
            .args(["-c", &real])
            .current_dir(self.dir.path())
            .env("PATH", &self.path)
            .env_remove("WIRELAB_LOG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup output file"))
            .stderr(f)
            .process_group(0)
            .spawn()
            .expect("spawning bash");
        (child, out)
    }

    /// Run one command (setup when `cmd` is None); an error says what went wrong.
    fn run(&mut self, text: &str, cmd: Option<&Command>) -> Result<(), String> {
        let text = text.trim();
        if let Some(n) = kill_job(text) {
            let job = self
                .jobs
                .get_mut(n.wrapping_sub(1))
                .ok_or_else(|| format!("kill %{n}: the block has no background command {n}"))?;
            job.stop();
            return Ok(());
        }
        if without_comment(text) == "wait" {
            for j in &mut self.jobs {
                if finish(&mut j.child, COMMAND_LIMIT).is_none() {
                    return Err(format!(
                        "a background command did not end within {COMMAND_LIMIT:?}"
                    ));
                }
                j.done = true;
            }
            return Ok(());
        }
        if let (Some(file), Some(c)) = (cat_file(text), cmd) {
            let f = self.dir.join(file);
            if !c.shown.is_empty() && !f.exists() {
                std::fs::write(&f, c.shown.join("\n") + "\n").expect("writing a shown file");
            }
        }
        if let Some(bg) = text.strip_suffix('&') {
            let (child, out) = self.spawn(bg.trim_end(), true);
            let mut job = Job {
                child,
                out,
                cmd: cmd.cloned(),
                done: false,
            };
            // Ready once it printed a line (or ended); setup commands run on at once.
            let wait = if cmd.is_some() {
                Duration::from_secs(20)
            } else {
                Duration::ZERO
            };
            eventually(wait, || {
                std::fs::read_to_string(&job.out).is_ok_and(|s| s.contains('\n'))
                    || job.child.try_wait().ok().flatten().is_some()
            });
            if cmd.is_some() {
                self.jobs.push(job);
            } else {
                job.cmd = None;
                self.setup_jobs.push(job);
            }
            return Ok(());
        }
        let (mut child, out) = self.spawn(text, false);
        let status = finish(&mut child, COMMAND_LIMIT);
        let real = self.as_shown(&std::fs::read_to_string(&out).unwrap_or_default());
        show(text, &real);
        let Some(status) = status else {
            return Err(format!(
                "did not end within {COMMAND_LIMIT:?}; it printed:\n{real}"
            ));
        };
        let must_fail =
            cmd.is_some_and(|c| c.shown.first().is_some_and(|l| l.starts_with("error:")));
        if status.success() == must_fail {
            return Err(format!(
                "exited with {status} ({} expected); it printed:\n{real}",
                if must_fail { "failure" } else { "success" }
            ));
        }
        match cmd {
            Some(c) if !c.shown.is_empty() => {
                readme::matches(&c.shown, &real, self.block.numbers, false)
            }
            _ => Ok(()),
        }
    }

    fn block(&mut self) -> Result<(), String> {
        let b = self.block;
        for s in &b.setup {
            self.run(s, None).map_err(|e| format!("setup `{s}`: {e}"))?;
        }
        for c in &b.commands {
            if c.skipped.is_some() {
                continue;
            }
            if c.text.contains('…') {
                return Err(format!(
                    "README:{}: `{}` has elided parts (…): skip it in the marker, saying why",
                    c.line, c.text
                ));
            }
            self.run(&c.text, Some(c))
                .map_err(|e| format!("README:{}: `{}`: {e}", c.line, c.text))?;
            for s in &c.after {
                self.run(s, None).map_err(|e| format!("setup `{s}`: {e}"))?;
            }
        }
        let mut errors = Vec::new();
        for k in 0..self.jobs.len() {
            self.jobs[k].stop();
            let job = &self.jobs[k];
            let Some(c) = job.cmd.as_ref().filter(|c| !c.shown.is_empty()) else {
                continue;
            };
            let real = self.as_shown(&std::fs::read_to_string(&job.out).unwrap_or_default());
            show(&c.text, &real);
            if let Err(e) = readme::matches(&c.shown, &real, b.numbers, true) {
                errors.push(format!("README:{}: `{}` (background): {e}", c.line, c.text));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n\n"))
        }
    }
}

/// With `WIRELAB_TOUR_SHOW=1`, print each command's real output (to paste into the README).
fn show(text: &str, real: &str) {
    if std::env::var_os("WIRELAB_TOUR_SHOW").is_some() {
        eprintln!("$ {text}\n{real}");
    }
}

/// A one-line command without its trailing `# comment`.
fn without_comment(text: &str) -> &str {
    text.split(" #").next().unwrap_or("").trim()
}

/// `kill %N` (a comment may follow).
fn kill_job(text: &str) -> Option<usize> {
    without_comment(text).strip_prefix("kill %")?.parse().ok()
}

/// `cat FILE` of a file in the block's directory.
fn cat_file(text: &str) -> Option<&str> {
    let f = text.strip_prefix("cat ")?.trim();
    (!f.is_empty() && !f.contains(['/', ' ', '|', '$'])).then_some(f)
}

fn run_block(b: &Block) -> Result<Duration, String> {
    let t0 = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Run::new(b).block()));
    match r {
        Ok(Ok(())) => Ok(t0.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(p) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

/// `WIRELAB_TOUR=lab,fw` runs only those blocks (while editing the README).
fn chosen(b: &Block) -> bool {
    std::env::var("WIRELAB_TOUR").map_or(true, |v| v.split(',').any(|n| n == b.name))
}

#[test]
fn tour_runs_as_written() {
    require_privileges();
    let blocks = read_readme();
    let t0 = Instant::now();
    let mut order: Vec<&Block> = blocks
        .iter()
        .filter(|b| b.skip.is_none() && !b.alone && chosen(b))
        .collect();
    // A WIRELAB_TOUR naming no block would run nothing and pass.
    let alone = blocks
        .iter()
        .any(|b| b.skip.is_none() && b.alone && chosen(b));
    assert!(
        !order.is_empty() || alone,
        "no README block to run (WIRELAB_TOUR={:?})",
        std::env::var("WIRELAB_TOUR").ok()
    );
    // The longest first, so the others run beside it.
    order.sort_by_key(|b| !b.long);
    let queue: Mutex<VecDeque<&Block>> = Mutex::new(order.into());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| loop {
                let Some(b) = queue.lock().expect("queue").pop_front() else {
                    break;
                };
                let r = run_block(b);
                results.lock().expect("results").push((b, r));
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    // Blocks that look at the whole machine run after the others, one at a time.
    for b in blocks
        .iter()
        .filter(|b| b.skip.is_none() && b.alone && chosen(b))
    {
        results.push((b, run_block(b)));
    }
    let mut failed = Vec::new();
    for b in &blocks {
        if let Some(why) = &b.skip {
            eprintln!("tour {:<12} skipped: {why}", b.name);
        }
        for c in b.commands.iter().filter(|c| c.skipped.is_some()) {
            eprintln!(
                "tour {:<12} README:{} not run: {}",
                b.name,
                c.line,
                c.skipped.as_deref().unwrap_or_default()
            );
        }
        if let Some((_, r)) = results.iter().find(|(rb, _)| rb.name == b.name) {
            match r {
                Ok(t) => eprintln!("tour {:<12} ok in {:.1}s", b.name, t.as_secs_f64()),
                Err(e) => {
                    eprintln!("tour {:<12} FAILED", b.name);
                    failed.push(format!("tour block {} (README:{}): {e}", b.name, b.line));
                }
            }
        }
    }
    eprintln!("tour: {:.1}s in all", t0.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
