//! One control socket for every tool: an abstract unix socket `@wirelab-TOOL/NAME` inside the
//! tool's network namespace (it vanishes with the process, however it ends), one JSON request
//! line in, one JSON reply line out. Requests are each tool's typed enum or struct; replies
//! share one envelope, `{"ok":true, …}` or `{"ok":false,"error":"…"}`, written and read by the
//! same [`Reply`] type.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixListener, UnixStream},
    },
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The reply envelope of every control socket.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply<T> {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub body: Option<T>,
}

impl<T> Reply<T> {
    pub fn from_result(r: Result<T>) -> Self {
        match r {
            Ok(body) => Self {
                ok: true,
                error: None,
                body: Some(body),
            },
            Err(e) => Self {
                ok: false,
                error: Some(format!("{e:#}")),
                body: None,
            },
        }
    }
}

fn addr(name: &str) -> Result<SocketAddr> {
    Ok(SocketAddr::from_abstract_name(name.as_bytes())?)
}

/// Bind `@name` (non-blocking), refusing when another process already serves it.
pub fn bind(name: &str, what: &str) -> Result<UnixListener> {
    if UnixStream::connect_addr(&addr(name)?).is_ok() {
        bail!("{what} already runs in this namespace (@{name} answers)");
    }
    let l = UnixListener::bind_addr(&addr(name)?)
        .with_context(|| format!("binding control socket @{name}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Read one request line from an accepted connection (`timeout` at most).
pub fn read_request<Req: DeserializeOwned>(s: &UnixStream, timeout: Duration) -> Result<Req> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(line.trim()).context("malformed request")
}

/// Answer a request.
pub fn reply<T: Serialize>(mut s: &UnixStream, r: &Reply<T>) -> Result<()> {
    writeln!(s, "{}", serde_json::to_string(r)?)?;
    Ok(())
}

/// Send `req` to `@name` and return the reply's body; a refused request is an error with the
/// tool's own message. `timeout` bounds the wait for the answer.
pub fn request<Req: Serialize, Resp: DeserializeOwned>(
    name: &str,
    req: &Req,
    timeout: Duration,
) -> Result<Resp> {
    let s = UnixStream::connect_addr(&addr(name)?)
        .with_context(|| format!("nothing answers on @{name}"))?;
    s.set_read_timeout(Some(timeout))?;
    let mut w = &s;
    writeln!(w, "{}", serde_json::to_string(req)?)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let r: Reply<Resp> = serde_json::from_str(line.trim())
        .with_context(|| format!("bad reply from @{name}: {}", line.trim()))?;
    match (r.ok, r.body) {
        (true, Some(b)) => Ok(b),
        (true, None) => bail!("empty reply from @{name}"),
        (false, _) => bail!("{}", r.error.unwrap_or_else(|| "request failed".into())),
    }
}

/// Names of the control sockets `@PREFIX…` listening in the calling thread's namespace,
/// sorted (each at most once).
pub fn listening(prefix: &str) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/thread-self/net/unix").unwrap_or_default();
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter_map(|n| n.strip_prefix('@'))
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The one socket of a tool in this namespace: `explicit` when given, else the only one
/// listening; an error names the choices when there are several.
pub fn pick(
    prefix: &str,
    explicit: Option<String>,
    what: &str,
    choose_with: &str,
) -> Result<String> {
    if let Some(n) = explicit {
        return Ok(n);
    }
    let mut names = listening(prefix);
    match names.len() {
        0 => bail!("no {what} runs in this network namespace (use --netns NAME?)"),
        1 => Ok(names.remove(0)),
        _ => bail!(
            "several run here ({}); pick one with {choose_with}",
            names.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(tag = "cmd", rename_all = "lowercase")]
    enum Req {
        Ping { n: u32 },
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Pong {
        n: u32,
    }

    #[test]
    fn request_and_reply_round_trip() {
        let name = format!("wirelab-test/{}", std::process::id());
        let l = bind(&name, "a test server").unwrap();
        assert!(
            bind(&name, "a test server").is_err(),
            "second bind must be refused"
        );
        assert_eq!(listening("wirelab-test/"), vec![name.clone()]);
        let server = std::thread::spawn(move || {
            let mut answered = 0;
            // The refused second bind connected once and hung up: an empty request, skipped.
            while answered < 2 {
                let Ok((s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Ok(Req::Ping { n }) = read_request(&s, Duration::from_secs(2)) else {
                    continue;
                };
                let r = if answered == 0 {
                    Ok(Pong { n: n + 1 })
                } else {
                    Err(anyhow::anyhow!("refused {n}"))
                };
                reply(&s, &Reply::from_result(r)).unwrap();
                answered += 1;
            }
        });
        let p: Pong = request(&name, &Req::Ping { n: 41 }, Duration::from_secs(2)).unwrap();
        assert_eq!(p, Pong { n: 42 });
        let e = request::<_, Pong>(&name, &Req::Ping { n: 7 }, Duration::from_secs(2))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "refused 7");
        server.join().unwrap();
        // The wire format: the tag names the command, the envelope carries ok/error.
        assert_eq!(
            serde_json::to_string(&Req::Ping { n: 1 }).unwrap(),
            r#"{"cmd":"ping","n":1}"#
        );
        let r: Reply<Pong> = Reply::from_result(Ok(Pong { n: 2 }));
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"ok":true,"n":2}"#);
    }
}
