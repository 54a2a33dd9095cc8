//! The SMB view's state: connections (their two streams and what is live on them), clients
//! by address, requests waiting for their responses, and per-command latency.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{
    proto::{self, cmd, flag, status, Body, Message, Smb2},
    stream::Stream,
};

/// One TCP segment as the view needs it.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Nanoseconds (any epoch; differences are what count).
    pub t_ns: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub syn: bool,
    /// FIN or RST: the connection ends.
    pub end: bool,
    pub payload: &'a [u8],
}

/// A connection: the client's and the server's socket addresses.
type ConnKey = (SocketAddr, SocketAddr);

#[derive(Default)]
struct Conn {
    to_server: Stream,
    to_client: Stream,
    /// Sessions established on it: SessionId → encrypted.
    sessions: BTreeMap<u64, bool>,
    /// Tree connects live on it: (SessionId, TreeId) → share path.
    trees: BTreeMap<(u64, u32), String>,
    /// Opens live on it: FileId → (SessionId, TreeId).
    opens: HashMap<[u8; 16], (u64, u32)>,
}

/// A request waiting for its response.
struct Pending {
    t_ns: u64,
    command: u16,
    tree_id: u32,
    path: Option<String>,
    file_id: Option<[u8; 16]>,
}

#[derive(Default)]
struct Client {
    dialect: Option<u16>,
    connections: u64,
    sessions_total: u64,
    trees_total: u64,
    opens_total: u64,
    shares: BTreeSet<String>,
    requests: BTreeMap<u16, u64>,
    errors: BTreeMap<u32, u64>,
    encrypted_messages: u64,
    smb1_messages: u64,
}

/// A share (its tree connect path, `\\server\share`) over every client.
#[derive(Default)]
struct Share {
    live: u64,
    total: u64,
    /// The most tree connects live at once, and when (s since the origin).
    max: (u64, f64),
    clients: BTreeSet<IpAddr>,
}

impl Share {
    fn gone(shares: &mut BTreeMap<String, Share>, path: &str) {
        if let Some(s) = shares.get_mut(path) {
            s.live = s.live.saturating_sub(1);
        }
    }
}

pub struct View {
    port: u16,
    conns: HashMap<ConnKey, Conn>,
    clients: BTreeMap<IpAddr, Client>,
    shares: BTreeMap<String, Share>,
    pending: HashMap<(ConnKey, u64), Pending>,
    latency: BTreeMap<u16, Histogram<u64>>,
    first_ns: Option<u64>,
    last_ns: u64,
    /// Requests seen so far (all clients).
    pub requests: u64,
    /// Errors seen so far (all clients).
    pub errors: u64,
    pub segments: u64,
    pub messages: u64,
    /// The most tree connects live at once, and when (s since the first segment).
    trees_max: (u64, f64),
}

impl View {
    /// A view of the SMB server(s) on TCP `port` (445).
    pub fn new(port: u16) -> Self {
        Self {
            port,
            conns: HashMap::new(),
            clients: BTreeMap::new(),
            shares: BTreeMap::new(),
            pending: HashMap::new(),
            latency: BTreeMap::new(),
            first_ns: None,
            last_ns: 0,
            requests: 0,
            errors: 0,
            segments: 0,
            messages: 0,
            trees_max: (0, 0.0),
        }
    }

    /// Count time from `t_ns` (the same clock as the segments') instead of from the first
    /// segment: a live view counts from its start.
    pub fn set_origin(&mut self, t_ns: u64) {
        self.first_ns = Some(t_ns);
    }

    /// Seconds since the origin (the first segment, or [`View::set_origin`]).
    pub fn elapsed_s(&self, t_ns: u64) -> f64 {
        t_ns.saturating_sub(self.first_ns.unwrap_or(t_ns)) as f64 / 1e9
    }

    pub fn last_ns(&self) -> u64 {
        self.last_ns
    }

    /// Take one segment of a connection to or from `port`; others are ignored.
    pub fn segment(&mut self, s: &Segment<'_>) {
        let to_server = s.dst.port() == self.port;
        if !to_server && s.src.port() != self.port {
            return;
        }
        self.segments += 1;
        self.first_ns.get_or_insert(s.t_ns);
        self.last_ns = self.last_ns.max(s.t_ns);
        let key = if to_server {
            (s.src, s.dst)
        } else {
            (s.dst, s.src)
        };
        if !self.conns.contains_key(&key) {
            // A connection starts with a SYN, or (joined midway) with data; the last ACKs
            // after a FIN start nothing.
            if s.end || (!s.syn && s.payload.is_empty()) {
                return;
            }
            self.clients.entry(key.0.ip()).or_default().connections += 1;
        }
        let conn = self.conns.entry(key).or_default();
        let stream = if to_server {
            &mut conn.to_server
        } else {
            &mut conn.to_client
        };
        let msgs = stream.push(s.seq, s.syn, s.payload);
        for m in msgs {
            for msg in proto::messages(&m) {
                self.message(key, to_server, s.t_ns, msg);
            }
        }
        if s.end {
            // The server lets go of everything the connection held.
            if let Some(c) = self.conns.remove(&key) {
                for path in c.trees.values() {
                    Share::gone(&mut self.shares, path);
                }
            }
            self.pending.retain(|(k, _), _| *k != key);
        }
        let live = self.trees_live();
        if live > self.trees_max.0 {
            self.trees_max = (live, self.elapsed_s(s.t_ns));
        }
    }

    fn message(&mut self, key: ConnKey, to_server: bool, t_ns: u64, m: Message) {
        self.messages += 1;
        let t = self.elapsed_s(t_ns);
        let client = self.clients.entry(key.0.ip()).or_default();
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let h = match m {
            Message::Smb2(h) => h,
            Message::Encrypted { session_id } => {
                client.encrypted_messages += 1;
                conn.sessions.insert(session_id, true);
                return;
            }
            Message::Smb1 => {
                client.smb1_messages += 1;
                return;
            }
            Message::Compressed | Message::Unknown => return,
        };
        if to_server {
            if h.response() {
                return;
            }
            self.requests += 1;
            *client.requests.entry(h.command).or_default() += 1;
            if h.command != cmd::CANCEL {
                let (path, file_id) = match h.body {
                    Body::TreeConnectRequest { path } => (Some(path), None),
                    Body::CloseRequest { file_id } => (None, Some(file_id)),
                    _ => (None, None),
                };
                self.pending.insert(
                    (key, h.message_id),
                    Pending {
                        t_ns,
                        command: h.command,
                        tree_id: h.tree_id,
                        path,
                        file_id,
                    },
                );
            }
            return;
        }
        if !h.response() || (h.status == status::PENDING && h.flags & flag::ASYNC != 0) {
            // An interim response: the final one carries the same MessageId.
            return;
        }
        let p = self.pending.remove(&(key, h.message_id));
        if let Some(p) = &p {
            let us = t_ns.saturating_sub(p.t_ns).div_ceil(1000).max(1);
            let hist = self.latency.entry(p.command).or_insert_with(|| {
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds")
            });
            let _ = hist.record(us);
        }
        if status::is_error(h.status) {
            self.errors += 1;
            *client.errors.entry(h.status).or_default() += 1;
        }
        if h.status != status::SUCCESS {
            // Session setup rounds with MORE_PROCESSING_REQUIRED change nothing live.
            return;
        }
        let at = (&mut self.shares, key.0.ip(), t);
        Self::success(client, conn, at, &h, p.as_ref());
    }

    /// What a successful response makes live or ends; `at`: the shares, the client's address
    /// and the time (s).
    fn success(
        client: &mut Client,
        conn: &mut Conn,
        at: (&mut BTreeMap<String, Share>, IpAddr, f64),
        h: &Smb2,
        p: Option<&Pending>,
    ) {
        let (shares, ip, t) = at;
        match (h.command, &h.body) {
            (cmd::NEGOTIATE, Body::NegotiateResponse { dialect }) => {
                client.dialect = Some(*dialect);
            }
            (cmd::SESSION_SETUP, Body::SessionSetupResponse { session_flags }) => {
                let enc = session_flags & proto::SESSION_FLAG_ENCRYPT_DATA != 0;
                if conn.sessions.insert(h.session_id, enc).is_none() {
                    client.sessions_total += 1;
                }
            }
            (cmd::LOGOFF, _) => {
                conn.sessions.remove(&h.session_id);
                conn.trees.retain(|(s, _), path| {
                    let keep = *s != h.session_id;
                    if !keep {
                        Share::gone(shares, path);
                    }
                    keep
                });
                conn.opens.retain(|_, (s, _)| *s != h.session_id);
            }
            (cmd::TREE_CONNECT, _) => {
                let path = p.and_then(|p| p.path.clone()).unwrap_or_default();
                client.shares.insert(path.clone());
                let share = shares.entry(path.clone()).or_default();
                share.clients.insert(ip);
                match conn.trees.insert((h.session_id, h.tree_id), path) {
                    None => {
                        client.trees_total += 1;
                        share.total += 1;
                        share.live += 1;
                        if share.live > share.max.0 {
                            share.max = (share.live, t);
                        }
                    }
                    // The same TreeId again (a reconnect): it replaces the old one.
                    Some(old) => {
                        share.total += 1;
                        share.live += 1;
                        Share::gone(shares, &old);
                    }
                }
            }
            (cmd::TREE_DISCONNECT, _) => {
                let tid = p.map_or(h.tree_id, |p| p.tree_id);
                if let Some(path) = conn.trees.remove(&(h.session_id, tid)) {
                    Share::gone(shares, &path);
                }
                conn.opens.retain(|_, t| *t != (h.session_id, tid));
            }
            (cmd::CREATE, Body::CreateResponse { file_id }) => {
                conn.opens.insert(*file_id, (h.session_id, h.tree_id));
                client.opens_total += 1;
            }
            (cmd::CLOSE, _) => {
                if let Some(f) = p.and_then(|p| p.file_id) {
                    conn.opens.remove(&f);
                }
            }
            _ => {}
        }
    }

    /// Tree connects live now, over every connection.
    pub fn trees_live(&self) -> u64 {
        self.conns.values().map(|c| c.trees.len() as u64).sum()
    }

    /// The server-wide figures now.
    pub fn totals(&self) -> Totals {
        Totals {
            clients: self.clients.len() as u64,
            connections_live: self.conns.len() as u64,
            sessions_live: self.conns.values().map(|c| c.sessions.len() as u64).sum(),
            trees_live: self.trees_live(),
            opens_live: self.conns.values().map(|c| c.opens.len() as u64).sum(),
            requests: self.requests,
            errors: self.errors,
        }
    }

    /// Per client, as reported.
    pub fn clients(&self, duration_s: f64) -> Vec<ClientReport> {
        self.clients
            .iter()
            .map(|(ip, c)| {
                let live = self.conns.iter().filter(|((cl, _), _)| cl.ip() == *ip);
                let (mut sessions, mut trees, mut opens, mut encrypted) = (0, 0, 0, false);
                for (_, conn) in live {
                    sessions += conn.sessions.len() as u64;
                    trees += conn.trees.len() as u64;
                    opens += conn.opens.len() as u64;
                    encrypted |= conn.sessions.values().any(|e| *e);
                }
                let commands: u64 = c.requests.values().sum();
                ClientReport {
                    client: *ip,
                    dialect: c.dialect.map(proto::dialect_name),
                    connections: c.connections,
                    sessions_live: sessions,
                    sessions_total: c.sessions_total,
                    encrypted: encrypted || c.encrypted_messages > 0,
                    trees_live: trees,
                    trees_total: c.trees_total,
                    shares: c.shares.iter().cloned().collect(),
                    opens_live: opens,
                    opens_total: c.opens_total,
                    commands,
                    commands_per_s: if duration_s > 0.0 {
                        commands as f64 / duration_s
                    } else {
                        0.0
                    },
                    by_command: c
                        .requests
                        .iter()
                        .map(|(k, v)| (proto::command_name(*k), *v))
                        .collect(),
                    errors: c
                        .errors
                        .iter()
                        .map(|(k, v)| (status::name(*k), *v))
                        .collect(),
                    encrypted_messages: c.encrypted_messages,
                    smb1_messages: c.smb1_messages,
                }
            })
            .collect()
    }

    /// Per command: requests and response latency.
    pub fn commands(&self) -> Vec<CommandReport> {
        let mut req: BTreeMap<u16, u64> = BTreeMap::new();
        for c in self.clients.values() {
            for (k, v) in &c.requests {
                *req.entry(*k).or_default() += v;
            }
        }
        req.iter()
            .map(|(k, n)| {
                let h = self.latency.get(k);
                let ms = |q: f64| h.map(|h| h.value_at_quantile(q) as f64 / 1000.0);
                CommandReport {
                    command: proto::command_name(*k),
                    requests: *n,
                    responses: h.map_or(0, |h| h.len()),
                    mean_ms: h.map(|h| h.mean() / 1000.0),
                    p50_ms: ms(0.5),
                    p99_ms: ms(0.99),
                    max_ms: h.map(|h| h.max() as f64 / 1000.0),
                }
            })
            .collect()
    }

    /// Errors by NTSTATUS over every client.
    pub fn errors_by_status(&self) -> BTreeMap<String, u64> {
        let mut e = BTreeMap::new();
        for c in self.clients.values() {
            for (k, v) in &c.errors {
                *e.entry(status::name(*k)).or_default() += v;
            }
        }
        e
    }

    /// Per share (tree connect path): tree connects live now and in total, the most live at
    /// once and when, and how many client addresses connected it.
    pub fn shares(&self) -> Vec<ShareReport> {
        self.shares
            .iter()
            .map(|(path, s)| ShareReport {
                share: path.clone(),
                trees_live: s.live,
                trees_total: s.total,
                trees_live_max: s.max.0,
                trees_live_max_t: s.max.1,
                clients: s.clients.len() as u64,
            })
            .collect()
    }

    /// Tree connects live now per share (path).
    pub fn shares_live(&self) -> BTreeMap<String, u64> {
        self.shares
            .iter()
            .map(|(p, s)| (p.clone(), s.live))
            .collect()
    }

    /// The most tree connects live at once, and when.
    pub fn trees_max(&self) -> (u64, f64) {
        self.trees_max
    }

    /// Bytes the streams skipped (gaps, joining mid-connection).
    pub fn skipped(&self) -> u64 {
        self.conns
            .values()
            .map(|c| c.to_server.skipped + c.to_client.skipped)
            .sum()
    }
}

/// Server-wide figures at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    /// Client addresses seen so far.
    pub clients: u64,
    pub connections_live: u64,
    pub sessions_live: u64,
    /// Tree connects live: the founding scenario's quantity.
    pub trees_live: u64,
    pub opens_live: u64,
    /// Requests so far.
    pub requests: u64,
    /// Error responses so far.
    pub errors: u64,
}

/// One client address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientReport {
    pub client: IpAddr,
    /// The dialect the server chose (`3.1.1`).
    pub dialect: Option<String>,
    /// TCP connections seen.
    pub connections: u64,
    pub sessions_live: u64,
    pub sessions_total: u64,
    /// A session of it encrypts (SessionFlags, or encrypted messages seen).
    pub encrypted: bool,
    pub trees_live: u64,
    pub trees_total: u64,
    /// Share paths it connected to.
    pub shares: Vec<String>,
    pub opens_live: u64,
    pub opens_total: u64,
    /// Requests (commands) sent.
    pub commands: u64,
    pub commands_per_s: f64,
    pub by_command: BTreeMap<String, u64>,
    /// Error responses by NTSTATUS.
    pub errors: BTreeMap<String, u64>,
    pub encrypted_messages: u64,
    pub smb1_messages: u64,
}

/// One share over every client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShareReport {
    /// The tree connect's path (`\\198.18.0.2\share`).
    pub share: String,
    pub trees_live: u64,
    pub trees_total: u64,
    /// The most tree connects to it live at once, and when (s).
    pub trees_live_max: u64,
    pub trees_live_max_t: f64,
    /// Client addresses that connected it.
    pub clients: u64,
}

/// One command over every client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommandReport {
    pub command: String,
    pub requests: u64,
    /// Responses matched to their request by MessageId (the latency's sample count).
    pub responses: u64,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smb::proto::tests::{msg, tree_connect_request};

    struct Wire {
        v: View,
        seq_c: u32,
        seq_s: u32,
        t: u64,
        c: SocketAddr,
        s: SocketAddr,
    }

    impl Wire {
        fn new(c: &str) -> Self {
            let mut w = Wire {
                v: View::new(445),
                seq_c: 100,
                seq_s: 900,
                t: 1_000_000_000,
                c: c.parse().unwrap(),
                s: "198.18.0.2:445".parse().unwrap(),
            };
            let (c, s) = (w.c, w.s);
            w.seg(c, s, true, false, &[]);
            w.seg(s, c, true, false, &[]);
            w
        }

        fn seg(&mut self, src: SocketAddr, dst: SocketAddr, syn: bool, end: bool, p: &[u8]) {
            let to_server = dst == self.s;
            let seq = if to_server {
                &mut self.seq_c
            } else {
                &mut self.seq_s
            };
            let this = *seq;
            *seq = seq.wrapping_add(p.len() as u32 + u32::from(syn));
            self.t += 1_000_000; // 1 ms per segment
            self.v.segment(&Segment {
                t_ns: self.t,
                src,
                dst,
                seq: this,
                syn,
                end,
                payload: p,
            });
        }

        fn nbss(m: &[u8]) -> Vec<u8> {
            let mut v = (m.len() as u32).to_be_bytes().to_vec();
            v.extend_from_slice(m);
            v
        }

        fn req(&mut self, m: Vec<u8>) {
            let (c, s) = (self.c, self.s);
            self.seg(c, s, false, false, &Self::nbss(&m));
        }

        fn resp(&mut self, m: Vec<u8>) {
            let (c, s) = (self.c, self.s);
            self.seg(s, c, false, false, &Self::nbss(&m));
        }
    }

    #[test]
    fn a_session_lives_and_ends() {
        let mut w = Wire::new("198.18.4.1:40000");
        w.req(msg(cmd::NEGOTIATE, false, 0, 0, 0, 0, &[36, 0]));
        let mut neg = vec![65, 0, 1, 0];
        neg.extend_from_slice(&0x0311u16.to_le_bytes());
        w.resp(msg(cmd::NEGOTIATE, true, 0, 0, 0, 0, &neg));
        w.req(msg(cmd::SESSION_SETUP, false, 0, 1, 0, 0, &[25, 0]));
        w.resp(msg(
            cmd::SESSION_SETUP,
            true,
            status::MORE_PROCESSING_REQUIRED,
            1,
            7,
            0,
            &[9, 0, 0, 0],
        ));
        w.req(msg(cmd::SESSION_SETUP, false, 0, 2, 7, 0, &[25, 0]));
        w.resp(msg(cmd::SESSION_SETUP, true, 0, 2, 7, 0, &[9, 0, 1, 0]));
        w.req(tree_connect_request(3, 7, "\\\\198.18.0.2\\share"));
        w.resp(msg(cmd::TREE_CONNECT, true, 0, 3, 7, 5, &[16, 0]));
        // A tree connect to a share that does not exist.
        w.req(tree_connect_request(4, 7, "\\\\198.18.0.2\\nope"));
        w.resp(msg(cmd::TREE_CONNECT, true, 0xc000_00cc, 4, 7, 0, &[9, 0]));
        let mut create = vec![0u8; 88];
        create[64..80].copy_from_slice(&[3u8; 16]);
        w.req(msg(cmd::CREATE, false, 0, 5, 7, 5, &[57, 0]));
        // Pended first, then done.
        let mut interim = msg(cmd::CREATE, true, status::PENDING, 5, 7, 0, &[9, 0]);
        interim[16] |= flag::ASYNC as u8;
        w.resp(interim);
        w.resp(msg(cmd::CREATE, true, 0, 5, 7, 5, &create));
        let t = w.v.totals();
        assert_eq!((t.sessions_live, t.trees_live, t.opens_live), (1, 1, 1));
        let c = &w.v.clients(1.0)[0];
        assert_eq!(c.dialect.as_deref(), Some("3.1.1"));
        assert_eq!((c.sessions_total, c.trees_total, c.opens_total), (1, 1, 1));
        assert_eq!(c.errors.get("STATUS_BAD_NETWORK_NAME"), Some(&1));
        assert_eq!(c.commands, 6);
        assert!(c.shares.contains(&"\\\\198.18.0.2\\share".to_string()));
        let create =
            w.v.commands()
                .into_iter()
                .find(|c| c.command == "create")
                .unwrap();
        // Request to final response: two 1 ms segments later.
        assert_eq!(create.responses, 1);
        assert!((create.p50_ms.unwrap() - 2.0).abs() < 0.01, "{create:?}");
        let mut close = vec![24, 0, 0, 0, 0, 0, 0, 0];
        close.extend_from_slice(&[3u8; 16]);
        w.req(msg(cmd::CLOSE, false, 0, 6, 7, 5, &close));
        w.resp(msg(cmd::CLOSE, true, 0, 6, 7, 5, &[60, 0]));
        assert_eq!(w.v.totals().opens_live, 0);
        w.req(msg(cmd::TREE_DISCONNECT, false, 0, 7, 7, 5, &[4, 0]));
        w.resp(msg(cmd::TREE_DISCONNECT, true, 0, 7, 7, 5, &[4, 0]));
        assert_eq!(w.v.totals().trees_live, 0);
        assert_eq!(w.v.trees_max().0, 1);
        // A second tree, then the connection ends without a disconnect.
        w.req(tree_connect_request(8, 7, "\\\\198.18.0.2\\share"));
        w.resp(msg(cmd::TREE_CONNECT, true, 0, 8, 7, 6, &[16, 0]));
        assert_eq!(w.v.totals().trees_live, 1);
        let (c, s) = (w.c, w.s);
        w.seg(c, s, false, true, &[]);
        let t = w.v.totals();
        assert_eq!(
            (t.connections_live, t.sessions_live, t.trees_live),
            (0, 0, 0)
        );
        assert_eq!(w.v.clients(1.0)[0].trees_total, 2);
        // Per share: the failed tree connect counts nowhere; both connects of "share" and
        // their ends (a disconnect, the connection's end) do.
        let shares = w.v.shares();
        assert_eq!(shares.len(), 1, "{shares:?}");
        let s = &shares[0];
        assert_eq!(s.share, "\\\\198.18.0.2\\share");
        assert_eq!(
            (s.trees_live, s.trees_total, s.trees_live_max, s.clients),
            (0, 2, 1, 1)
        );
    }

    #[test]
    fn encrypted_messages_mark_the_client() {
        let mut w = Wire::new("198.18.4.2:40001");
        let mut t = vec![0u8; 80];
        t[..4].copy_from_slice(&proto::TRANSFORM_MAGIC);
        t[44..52].copy_from_slice(&9u64.to_le_bytes());
        w.req(t);
        let c = &w.v.clients(1.0)[0];
        assert!(c.encrypted);
        assert_eq!((c.encrypted_messages, c.commands), (1, 0));
    }
}
