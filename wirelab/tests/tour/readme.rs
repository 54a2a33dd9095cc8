//! The README's tour as data: its marked command blocks ([`parse`]) and the matcher that
//! compares the output a block shows with the output a real run printed ([`matches`]).
//!
//! The convention (also written at the top of the README's tour, in an HTML comment):
//!
//! - Every fenced block with a line starting with `$ ` is a tour block and must follow a marker
//!   `<!-- tour: NAME [lab=LAB] [numbers=exact|any|P%] [long] [alone] [skip="REASON"] … -->`
//!   (`long`: starts first; `alone`: runs after the others, by itself).
//! - Lines of the marker after its first line: `$ CMD` is a setup command run before the block
//!   (its output is not compared); `skip $ CMD-START because REASON` leaves out the block's
//!   commands that start with `CMD-START`; `after $ CMD-START then $ CMD` runs setup command
//!   `CMD` right after the block's first command that starts with `CMD-START`.
//! - In a block, `$ ` starts a command; a line ending in `\` or a next line starting with `> `
//!   continues it; the lines up to the next command are the output it shows.
//! - `...` or `…` alone on a line of shown output stands for any number of lines; `…` as a word
//!   stands for any number of words; inside a word for any text (then the whole line is one
//!   pattern compared as text).
//! - Numbers are compared as `numbers=` says: `exact` (the default), `any`, or `P%` (within
//!   P % of the shown value, at least P % of 1). MAC addresses, link-local IPv6 addresses,
//!   `0x` hex numbers and log timestamps match any of their kind. Words, units, punctuation, the number of words on
//!   a line and the lines themselves must match; runs of spaces count as one.

/// How numbers in shown output are compared with the real ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Numbers {
    Exact,
    Any,
    /// Within this fraction of the shown value (at least this fraction of 1).
    Within(f64),
}

/// A command of a block and the output the README shows under it.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Its README line (1-based).
    pub line: usize,
    /// The command as bash runs it (continuation lines joined with newlines, `> ` removed).
    pub text: String,
    /// The shown output, one string per line.
    pub shown: Vec<String>,
    /// Why it is not run, when the marker leaves it out.
    pub skipped: Option<String>,
    /// Setup commands the marker runs right after it.
    pub after: Vec<String>,
}

/// A marked tour block.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub name: String,
    /// README line of the block's opening fence (1-based).
    pub line: usize,
    /// The lab name the block uses (`wirelab` for `lab up` without `--name`).
    pub lab: Option<String>,
    pub numbers: Numbers,
    /// Runs when no other block runs (it looks at the whole machine).
    pub alone: bool,
    /// Starts before the others (it takes the longest).
    pub long: bool,
    /// Why the whole block is not run.
    pub skip: Option<String>,
    pub setup: Vec<String>,
    pub commands: Vec<Command>,
}

fn attrs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let end = rest.find([' ', '=']).unwrap_or(rest.len());
        let key = rest[..end].to_string();
        rest = &rest[end..];
        let value = if let Some(r) = rest.strip_prefix('=') {
            if let Some(r) = r.strip_prefix('"') {
                let close = r
                    .find('"')
                    .ok_or_else(|| format!("{key}: unclosed quote"))?;
                rest = &r[close + 1..];
                r[..close].to_string()
            } else {
                let end = r.find(' ').unwrap_or(r.len());
                rest = &r[end..];
                r[..end].to_string()
            }
        } else {
            String::new()
        };
        out.push((key, value));
        rest = rest.trim_start();
    }
    Ok(out)
}

fn numbers(v: &str) -> Result<Numbers, String> {
    match v {
        "exact" => Ok(Numbers::Exact),
        "any" => Ok(Numbers::Any),
        _ => v
            .strip_suffix('%')
            .and_then(|p| p.parse::<f64>().ok())
            .filter(|p| *p > 0.0)
            .map(|p| Numbers::Within(p / 100.0))
            .ok_or_else(|| format!("numbers={v}: expected exact, any or a percentage like 20%")),
    }
}

/// The marker ending at line `end` (0-based, the line with `-->`), if it is a tour marker.
fn marker(lines: &[&str], end: usize) -> Option<(usize, Vec<String>)> {
    let mut start = end;
    loop {
        if lines[start].trim_start().starts_with("<!--") {
            break;
        }
        if start == 0 {
            return None;
        }
        start -= 1;
    }
    let first = lines[start].trim_start().strip_prefix("<!--")?.trim_start();
    first.strip_prefix("tour:")?;
    let mut body: Vec<String> = lines[start..=end].iter().map(|l| l.to_string()).collect();
    body[0] = first.to_string();
    let last = body.len() - 1;
    body[last] = body[last].trim_end().trim_end_matches("-->").to_string();
    Some((start, body))
}

fn block(name_line: &str, body: &[String], fence: usize, code: &[&str]) -> Result<Block, String> {
    let header = name_line.trim().trim_start_matches("tour:").trim();
    let (name, rest) = header.split_once(' ').unwrap_or((header, ""));
    if name.is_empty() {
        return Err("the marker has no block name".into());
    }
    let mut b = Block {
        name: name.to_string(),
        line: fence + 1,
        lab: None,
        numbers: Numbers::Exact,
        alone: false,
        long: false,
        skip: None,
        setup: Vec::new(),
        commands: Vec::new(),
    };
    for (k, v) in attrs(rest)? {
        match k.as_str() {
            "lab" => b.lab = Some(v),
            "numbers" => b.numbers = numbers(&v)?,
            "alone" => b.alone = true,
            "long" => b.long = true,
            "skip" if !v.trim().is_empty() => b.skip = Some(v),
            _ => {
                return Err(format!(
                    "unknown marker attribute {k:?} (or an empty skip reason)"
                ))
            }
        }
    }
    let mut skips = Vec::new();
    // (command start, setup command, index of the command it follows)
    let mut afters: Vec<(String, String, Option<usize>)> = Vec::new();
    for l in body.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        if let Some(c) = l.strip_prefix("$ ") {
            b.setup.push(c.to_string());
        } else if let Some(s) = l.strip_prefix("skip $ ") {
            let (prefix, reason) = s
                .split_once(" because ")
                .ok_or_else(|| format!("{l:?}: a skip needs `because REASON`"))?;
            skips.push((prefix.trim().to_string(), reason.trim().to_string(), false));
        } else if let Some(s) = l.strip_prefix("after $ ") {
            let (prefix, cmd) = s
                .split_once(" then $ ")
                .ok_or_else(|| format!("{l:?}: an after needs `then $ CMD`"))?;
            afters.push((prefix.trim().to_string(), cmd.trim().to_string(), None));
        } else {
            return Err(format!(
                "marker line {l:?}: expected `$ CMD`, `skip $ CMD because REASON` or \
                 `after $ CMD then $ CMD`"
            ));
        }
    }
    let mut i = 0;
    while i < code.len() {
        let Some(first) = code[i].strip_prefix("$ ") else {
            if b.commands.is_empty() {
                return Err(format!(
                    "line {}: output before the first `$ ` command",
                    fence + 2 + i
                ));
            }
            let last = b.commands.len() - 1;
            b.commands[last].shown.push(code[i].trim_end().to_string());
            i += 1;
            continue;
        };
        let line = fence + 2 + i;
        let mut text = first.to_string();
        i += 1;
        while i < code.len() {
            if text.ends_with('\\') {
                text.push('\n');
                text.push_str(code[i]);
            } else if let Some(c) = code[i].strip_prefix("> ") {
                text.push('\n');
                text.push_str(c);
            } else {
                break;
            }
            i += 1;
        }
        let skipped = skips
            .iter_mut()
            .find(|(p, _, _)| text.starts_with(p.as_str()))
            .map(|(_, r, used)| {
                *used = true;
                r.clone()
            });
        let mut after = Vec::new();
        for (p, c, at) in &mut afters {
            if text.starts_with(p.as_str()) && at.is_none_or(|k| k == b.commands.len()) {
                *at = Some(b.commands.len());
                after.push(c.clone());
            }
        }
        b.commands.push(Command {
            line,
            text,
            shown: Vec::new(),
            skipped,
            after,
        });
    }
    if let Some((p, _, _)) = skips.iter().find(|(_, _, used)| !used) {
        return Err(format!("`skip $ {p}` matches no command of the block"));
    }
    if let Some((p, _, _)) = afters.iter().find(|(_, _, at)| at.is_none()) {
        return Err(format!("`after $ {p}` matches no command of the block"));
    }
    for c in &mut b.commands {
        while c.shown.last().is_some_and(|l| l.is_empty()) {
            c.shown.pop();
        }
    }
    Ok(b)
}

/// The tour blocks of a README, in order. A block with commands and no marker, or a marker
/// that does not parse, is an error naming its line.
pub fn parse(readme: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    let mut i = 0;
    while i < lines.len() {
        // A fence may be indented (a block inside a list item); its lines lose that indent.
        let fence_line = lines[i].trim_start();
        if !fence_line.starts_with("```") {
            i += 1;
            continue;
        }
        let indent = lines[i].len() - fence_line.len();
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].trim_start().starts_with("```"))
            .ok_or_else(|| format!("README:{}: unclosed code block", i + 1))?;
        let code: Vec<&str> = lines[i + 1..end]
            .iter()
            .map(|l| {
                let ws = l.len() - l.trim_start().len();
                &l[ws.min(indent)..]
            })
            .collect();
        let code = &code[..];
        if code.iter().any(|l| l.starts_with("$ ")) {
            let before = (0..i).rev().find(|&j| !lines[j].trim().is_empty());
            let m = before
                .filter(|&j| lines[j].trim_end().ends_with("-->"))
                .and_then(|j| marker(&lines, j));
            let Some((mline, body)) = m else {
                return Err(format!(
                    "README:{}: a command block without a tour marker: add `<!-- tour: NAME … -->` \
                     before it (see the comment at the top of the tour) so the tour test runs it, \
                     or says why not with skip=\"REASON\"",
                    i + 1
                ));
            };
            let b = block(&body[0], &body[1..], i, code)
                .map_err(|e| format!("README:{}: tour marker: {e}", mline + 1))?;
            if !names.insert(b.name.clone()) {
                return Err(format!(
                    "README:{}: a second tour block named {}",
                    mline + 1,
                    b.name
                ));
            }
            blocks.push(b);
        }
        i = end + 1;
    }
    Ok(blocks)
}

#[derive(Debug, PartialEq)]
enum Seg<'a> {
    Text(&'a str),
    Num(&'a str),
    Mac,
    LinkLocal,
    Hex,
    Time,
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// A MAC address (`xx:xx:xx:xx:xx:xx`, lower-case hex) at the start of `s`.
fn mac_len(s: &[u8]) -> Option<usize> {
    (s.len() >= 17
        && (0..6).all(|k| is_hex(s[3 * k]) && is_hex(s[3 * k + 1]))
        && (0..5).all(|k| s[3 * k + 2] == b':')
        && s.get(17).is_none_or(|c| !is_hex(*c) && *c != b':'))
    .then_some(17)
}

/// A dotted IPv4 address at the start of `s` (compared as text: addresses are configuration).
fn ipv4_len(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    for part in 0..4 {
        let d = s[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if d == 0 || d > 3 {
            return None;
        }
        i += d;
        if part < 3 {
            if s.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    Some(i)
}

/// A log timestamp (`2026-11-30T20:58:06.053010Z`) at the start of `s`.
fn timestamp_len(s: &[u8]) -> Option<usize> {
    let shape = b"dddd-dd-ddTdd:dd:dd";
    (s.len() >= shape.len()
        && shape.iter().zip(s).all(|(p, c)| {
            if *p == b'd' {
                c.is_ascii_digit()
            } else {
                p == c
            }
        }))
    .then(|| {
        let frac = s[shape.len()..].strip_prefix(b".").map_or(0, |f| {
            1 + f.iter().take_while(|c| c.is_ascii_digit()).count()
        });
        let n = shape.len() + frac;
        n + usize::from(s.get(n) == Some(&b'Z'))
    })
}

fn segments(tok: &str) -> Vec<Seg<'_>> {
    let b = tok.as_bytes();
    let mut out = Vec::new();
    let mut text = 0; // start of the pending text run
    let mut i = 0;
    while i < b.len() {
        // Digits inside a word (`p50`, `ipv4`, `eth0`) are part of its name.
        let after_letter = i > text && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let special = if let Some(n) = timestamp_len(&b[i..]) {
            Some((Seg::Time, n))
        } else if let Some(n) = mac_len(&b[i..]) {
            Some((Seg::Mac, n))
        } else if b[i..].starts_with(b"fe80::") {
            let n = 6 + b[i + 6..]
                .iter()
                .take_while(|c| is_hex(**c) || **c == b':')
                .count();
            Some((Seg::LinkLocal, n))
        } else if b[i..].starts_with(b"0x") && b.get(i + 2).is_some_and(|c| is_hex(*c)) {
            let n = 2 + b[i + 2..].iter().take_while(|c| is_hex(**c)).count();
            Some((Seg::Hex, n))
        } else if b[i].is_ascii_digit() && !after_letter {
            if let Some(n) = ipv4_len(&b[i..]) {
                Some((Seg::Text(&tok[i..i + n]), n))
            } else {
                let mut n = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                if b.get(i + n) == Some(&b'.') && b.get(i + n + 1).is_some_and(u8::is_ascii_digit) {
                    n += 1 + b[i + n + 1..]
                        .iter()
                        .take_while(|c| c.is_ascii_digit())
                        .count();
                }
                Some((Seg::Num(&tok[i..i + n]), n))
            }
        } else {
            None
        };
        match special {
            Some((seg, n)) => {
                if text < i {
                    out.push(Seg::Text(&tok[text..i]));
                }
                out.push(seg);
                i += n;
                text = i;
            }
            None => {
                // Stay on character boundaries: skip a whole UTF-8 character.
                i += tok[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
    }
    if text < b.len() {
        out.push(Seg::Text(&tok[text..]));
    }
    // Adjacent text runs (an IPv4 address beside words) compare as one.
    let mut merged: Vec<Seg<'_>> = Vec::new();
    for s in out {
        if let (Some(Seg::Text(prev)), Seg::Text(t)) = (merged.last(), &s) {
            let start = prev.as_ptr() as usize - tok.as_ptr() as usize;
            let end = t.as_ptr() as usize - tok.as_ptr() as usize + t.len();
            *merged.last_mut().expect("just checked") = Seg::Text(&tok[start..end]);
        } else {
            merged.push(s);
        }
    }
    merged
}

fn number_ok(shown: &str, real: &str, numbers: Numbers) -> bool {
    match numbers {
        Numbers::Exact => shown == real,
        Numbers::Any => true,
        Numbers::Within(p) => match (shown.parse::<f64>(), real.parse::<f64>()) {
            (Ok(s), Ok(r)) => (s - r).abs() <= p * s.abs().max(1.0),
            _ => false,
        },
    }
}

/// `…` inside a word: any text there.
fn glob(pattern: &str, s: &str) -> bool {
    let mut parts = pattern.split('…');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (k, p) in parts.iter().enumerate() {
        if k == parts.len() - 1 {
            return rest.len() >= p.len() && rest.ends_with(p);
        }
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

fn word_ok(shown: &str, real: &str, numbers: Numbers) -> bool {
    if shown.contains('…') {
        return glob(shown, real);
    }
    let (a, b) = (segments(shown), segments(real));
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| match (x, y) {
            (Seg::Num(x), Seg::Num(y)) => number_ok(x, y, numbers),
            _ => x == y,
        })
}

fn words_ok(shown: &[&str], real: &[&str], numbers: Numbers) -> bool {
    match shown.split_first() {
        None => real.is_empty(),
        Some((&"…", rest)) => (0..=real.len()).any(|k| words_ok(rest, &real[k..], numbers)),
        Some((w, rest)) => real.split_first().is_some_and(|(r, real_rest)| {
            word_ok(w, r, numbers) && words_ok(rest, real_rest, numbers)
        }),
    }
}

/// Whether one shown line matches one real line.
pub fn line_ok(shown: &str, real: &str, numbers: Numbers) -> bool {
    let s: Vec<&str> = shown.split_whitespace().collect();
    let r: Vec<&str> = real.split_whitespace().collect();
    if words_ok(&s, &r, numbers) {
        return true;
    }
    // `…` inside a word may stand for several words (`[…]` for `["a", "b"]`): then the line is
    // one pattern, its text compared as written (values of a kind as their kind).
    s.iter().any(|w| w.contains('…') && *w != "…") && glob(&kinds(&s), &kinds(&r))
}

/// The words joined by spaces, MACs, link-local addresses, hex values and timestamps replaced
/// by their kind.
fn kinds(words: &[&str]) -> String {
    let word = |w: &str| -> String {
        if w.contains('…') {
            return w.to_string();
        }
        segments(w)
            .iter()
            .map(|s| match s {
                Seg::Text(t) | Seg::Num(t) => t,
                Seg::Mac => "<mac>",
                Seg::LinkLocal => "<fe80>",
                Seg::Hex => "<hex>",
                Seg::Time => "<time>",
            })
            .collect()
    };
    words.iter().map(|w| word(w)).collect::<Vec<_>>().join(" ")
}

fn is_gap(line: &str) -> bool {
    matches!(line.trim(), "..." | "…")
}

/// Compare shown output with real output. With `prefix`, real lines after the last shown one
/// are allowed (a background command still running). An error quotes the first shown line
/// that found no match and the real line it was compared with.
pub fn matches(shown: &[String], real: &str, numbers: Numbers, prefix: bool) -> Result<(), String> {
    let real: Vec<&str> = real
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.starts_with("progress: "))
        .collect();
    let mut real = real.as_slice();
    while real.last().is_some_and(|l| l.is_empty()) {
        real = &real[..real.len() - 1];
    }
    let (n, m) = (shown.len(), real.len());
    // ok[i][j]: shown[i..] matches real[j..].
    let mut ok = vec![vec![false; m + 1]; n + 1];
    for (j, row) in ok[n].iter_mut().enumerate() {
        *row = prefix || j == m;
    }
    for i in (0..n).rev() {
        for j in (0..=m).rev() {
            ok[i][j] = if is_gap(&shown[i]) {
                ok[i + 1][j] || (j < m && ok[i][j + 1])
            } else {
                j < m && ok[i + 1][j + 1] && line_ok(&shown[i], real[j], numbers)
            };
        }
    }
    if ok[0][0] {
        return Ok(());
    }
    // Explain: follow the shown lines as far as they match in order.
    let (mut i, mut j) = (0, 0);
    while i < n {
        if is_gap(&shown[i]) {
            i += 1;
            continue;
        }
        let gap_before = i > 0 && is_gap(&shown[i - 1]);
        match (j..m).find(|&k| line_ok(&shown[i], real[k], numbers)) {
            Some(k) if k == j || gap_before => {
                i += 1;
                j = k + 1;
            }
            _ => break,
        }
    }
    let shown_line = shown
        .get(i)
        .map_or("(end of the shown output)".to_string(), |l| {
            format!("{l:?}")
        });
    let real_line = real
        .get(j)
        .map_or("(end of the output)".to_string(), |l| format!("{l:?}"));
    Err(format!(
        "shown line {} {shown_line}\n  does not match real line {} {real_line}\n--- shown ---\n{}\n--- real ---\n{}",
        i + 1,
        j + 1,
        shown.join("\n"),
        real.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(String::from).collect()
    }

    #[test]
    fn varying_values_match_their_kind() {
        let shown = "    eth0         veth   UP   8a:9c:7d:b4:cf:a2 mtu 1500 198.18.0.1/24 fe80::889c:7dff:feb4:cfa2/64";
        let real =
            "    eth0 veth UP 42:82:06:b5:78:cb mtu 1500 198.18.0.1/24 fe80::4082:6ff:feb5:78cb/64";
        assert!(line_ok(shown, real, Numbers::Exact));
        // An address is configuration: a different one fails even with numbers=any.
        let other = real.replace("198.18.0.1/", "198.18.0.3/");
        assert!(!line_ok(shown, &other, Numbers::Any));
        assert!(line_ok(
            "id=0x5b70, seq=1/256",
            "id=0x01ff, seq=1/256",
            Numbers::Exact
        ));
    }

    #[test]
    fn numbers_follow_the_stated_tolerance() {
        let shown = "lost 28 (1.120%) in 5.00s";
        let real = "lost 31 (1.240%) in 5.01s";
        assert!(!line_ok(shown, real, Numbers::Exact));
        assert!(line_ok(shown, real, Numbers::Within(0.2)));
        assert!(!line_ok(shown, real, Numbers::Within(0.05)));
        assert!(line_ok(shown, real, Numbers::Any));
        // 0 shown: within P % of 1.
        assert!(line_ok("dup 0", "dup 0", Numbers::Within(0.5)));
        assert!(!line_ok("dup 0", "dup 1", Numbers::Within(0.5)));
        assert!(line_ok("dup 0", "dup 1", Numbers::Within(1.0)));
    }

    #[test]
    fn words_units_and_columns_must_match() {
        let n = Numbers::Any;
        assert!(
            !line_ok("delay ms p50 20.53", "delay us p50 20.53", n),
            "unit"
        );
        assert!(
            !line_ok("p50 20.5 p99 24.8", "p50 20.5 p90 24.8", n),
            "a number inside a name is a name"
        );
        assert!(!line_ok("ipv4 10", "ipv6 10", n));
        assert!(
            !line_ok("  class packets bytes", "  class packets octets", n),
            "renamed column"
        );
        assert!(
            !line_ok("total 27 2454", "total 27 2454 3.9", n),
            "an extra column"
        );
        assert!(
            !line_ok("5.08s", "5.08 s", n),
            "a number and its unit stay together"
        );
        assert!(!line_ok("4.98s", "4.98ms", n));
        assert!(
            line_ok("a    b", "a b", Numbers::Exact),
            "runs of spaces are one"
        );
    }

    #[test]
    fn ellipsis_words_and_lines() {
        let n = Numbers::Exact;
        assert!(line_ok(
            "swarm … 300 clients",
            "swarm wirelab-swarm-5715-c90c5 300 clients",
            n
        ));
        assert!(line_ok("a … b", "a b", n));
        assert!(!line_ok("a … b", "a x c", n));
        assert!(line_ok("labs: […];", "labs: [mine];", n));
        assert!(line_ok(
            "kept labs: […]; x: []",
            "kept labs: [\"a\", \"b\"]; x: []",
            n
        ));
        assert!(!line_ok(
            "kept labs: […]; x: []",
            "kept labs: [\"a\"]; y: []",
            n
        ));
        assert!(line_ok("[…]", "[]", n));
        let t = "2026-11-30T21:09:18.526591Z  INFO swarm ready run=[…] mac=aa:bb:cc:dd:ee:ff";
        let real = "2027-01-01T00:00:00.000001Z  INFO swarm ready run=[a b] mac=02:00:00:00:00:01";
        assert!(line_ok(t, real, n));
        assert!(!line_ok(t, &real.replace("INFO", "WARN"), n));
        let shown = lines("head\n...\ntail 1");
        assert!(matches(&shown, "head\ntail 1\n", n, false).is_ok());
        assert!(matches(&shown, "head\nx\ny\ntail 1\n", n, false).is_ok());
        assert!(matches(&shown, "head\nx\n", n, false).is_err());
        assert!(matches(&lines("head\n…"), "head\nx", n, false).is_ok());
        // Progress lines are what a terminal would not keep.
        assert!(matches(
            &lines("done 2"),
            "progress: 1/2 probes sent\ndone 2",
            n,
            false
        )
        .is_ok());
    }

    #[test]
    fn a_missing_or_extra_line_fails_and_prefix_allows_more() {
        let shown = lines("one 1\ntwo 2");
        let e = matches(&shown, "one 1\n", Numbers::Exact, false).unwrap_err();
        assert!(e.contains("shown line 2 \"two 2\""), "{e}");
        assert!(e.contains("(end of the output)"), "{e}");
        let e = matches(&shown, "one 1\ntwo 2\nthree 3\n", Numbers::Exact, false).unwrap_err();
        assert!(e.contains("end of the shown output"), "{e}");
        assert!(matches(&shown, "one 1\ntwo 2\nthree 3\n", Numbers::Exact, true).is_ok());
        assert!(matches(&shown, "one 1\n\n", Numbers::Exact, true).is_err());
    }

    #[test]
    fn blocks_need_markers_and_parse_commands() {
        let readme = "x\n\n```text\n$ wirelab lab up\nlab up\n```\n";
        let e = parse(readme).unwrap_err();
        assert!(
            e.contains("README:3") && e.contains("add `<!-- tour:"),
            "{e}"
        );
        assert!(parse("```sh\ncargo xtask demo\n```\n").unwrap().is_empty());
        // A block inside a list item is a tour block too.
        let e = parse("- item:\n\n  ```text\n  $ wirelab lab up\n  ```\n").unwrap_err();
        assert!(e.contains("README:3"), "{e}");
        let b = parse(
            "- item:\n\n  <!-- tour: t -->\n  ```text\n  $ wirelab lab up\n  lab up\n  ```\n",
        )
        .unwrap();
        assert_eq!(b[0].commands[0].text, "wirelab lab up");
        assert_eq!(b[0].commands[0].shown, ["lab up"]);
        let readme = "<!-- tour: wan lab=doc numbers=20%\n\
                      $ wirelab lab up --name doc\n\
                      skip $ wirelab report because it needs two runs\n-->\n\n\
                      ```text\n$ wirelab wan --netns doc-wan \\\n      --both \"delay 1ms\" &\nINFO wan running\n\
                      $ for i in 1 2; do\n>   echo $i\n> done\n1\n2\n\n$ wirelab report a b\n```\n";
        let b = parse(readme).unwrap();
        assert_eq!(b.len(), 1);
        let b = &b[0];
        assert_eq!(
            (b.name.as_str(), b.lab.as_deref(), b.numbers),
            ("wan", Some("doc"), Numbers::Within(0.2))
        );
        assert_eq!(b.setup, vec!["wirelab lab up --name doc"]);
        assert_eq!(b.commands.len(), 3);
        assert_eq!(
            b.commands[0].text,
            "wirelab wan --netns doc-wan \\\n      --both \"delay 1ms\" &"
        );
        assert_eq!(b.commands[0].shown, vec!["INFO wan running"]);
        assert_eq!(b.commands[1].text, "for i in 1 2; do\n  echo $i\ndone");
        assert_eq!(b.commands[1].shown, vec!["1", "2"]);
        assert_eq!(b.commands[2].skipped.as_deref(), Some("it needs two runs"));
        assert_eq!(b.commands[0].line, 7);
        let m = "<!-- tour: a\nafter $ echo 1 then $ touch x\nafter $ echo 1 then $ touch y\n-->\n";
        let b = parse(&format!("{m}```text\n$ echo 1\n1\n$ echo 1\n```\n")).unwrap();
        assert_eq!(b[0].commands[0].after, vec!["touch x", "touch y"]);
        assert!(b[0].commands[1].after.is_empty());
        assert!(parse(&format!("{m}```text\n$ echo 2\n```\n")).is_err());
    }

    #[test]
    fn bad_markers_are_refused() {
        let with = |m: &str| parse(&format!("{m}\n```text\n$ true\n```\n"));
        assert!(with("<!-- tour: a numbers=most -->")
            .unwrap_err()
            .contains("numbers=most"));
        assert!(with("<!-- tour: a colour=red -->")
            .unwrap_err()
            .contains("colour"));
        assert!(
            with("<!-- tour: a skip=\"\" -->").is_err(),
            "a skip needs a reason"
        );
        assert!(with("<!-- tour: a\nskip $ false because no -->")
            .unwrap_err()
            .contains("matches no command"));
        assert!(with("<!-- tour: a skip=\"needs a share\" -->").unwrap()[0]
            .skip
            .is_some());
        let two =
            "<!-- tour: a -->\n```text\n$ true\n```\n<!-- tour: a -->\n```text\n$ true\n```\n";
        assert!(parse(two)
            .unwrap_err()
            .contains("second tour block named a"));
    }
}
