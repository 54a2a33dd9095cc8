//! The capture filter: a subset of tcpdump's (libpcap's) filter language, compiled to the
//! table the kernel programs evaluate (`wirelab_common::capture`).
//!
//! Words: `host`, `net` (CIDR), `port`, `portrange`, each optionally after `src`, `dst`,
//! `src or dst`, `src and dst` and after `tcp`/`udp` for the ports; `ip`, `ip6`, `arp`, `tcp`,
//! `udp`, `icmp`, `icmp6`; `vlan [ID]`; `tcp[tcpflags] & FLAGS != 0`,
//! `tcp[tcpflags] & FLAGS = FLAGS`, `tcp[tcpflags] = FLAGS` (FLAGS: `tcp-syn`, ..., a number,
//! or several joined by `|` in parentheses); `and`/`&&`, `or`/`||`, `not`/`!`, parentheses;
//! a bare value repeats the previous word (`port 80 or 443`, `host A or B`).
//!
//! The expression is turned into a disjunction of conjunctions (negations pushed down to the
//! words); one that needs more than `MAX_TERMS` conjunctions or `MAX_ATOMS` words in one of
//! them is refused, as is every word outside the subset: always with the column of the
//! problem. Nothing is evaluated in userspace.
use std::{fmt, net::IpAddr};

use wirelab_common::capture::{
    cmp, kind, side, words, Atom, Term, MAX_ATOMS, MAX_TERMS, MAX_VLAN_ID_DEPTH, VLAN_ANY,
};

/// Why an expression was refused, and where (byte offset into it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub pos: usize,
    pub msg: String,
    pub expr: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad filter at column {}: {}\n  {}\n  {}^",
            self.pos + 1,
            self.msg,
            self.expr,
            " ".repeat(
                self.expr
                    .get(..self.pos.min(self.expr.len()))
                    .map_or(self.pos, |p| p.chars().count())
            )
        )
    }
}

impl std::error::Error for FilterError {}

/// A compiled filter: the terms to write into `CAPTURE_FILTER` (empty: match everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Tok {
    pos: usize,
    text: String,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, (usize, String)> {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let two = s.get(i..i + 2);
        if let Some(t @ ("&&" | "||" | "!=" | "==")) = two {
            out.push(Tok {
                pos: i,
                text: t.to_string(),
            });
            i += 2;
            continue;
        }
        if b"()[]&|!=".contains(&c) {
            out.push(Tok {
                pos: i,
                text: (c as char).to_string(),
            });
            i += 1;
            continue;
        }
        if c.is_ascii_alphanumeric() || b"._:/-".contains(&c) {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b"._:/-".contains(&b[i])) {
                i += 1;
            }
            out.push(Tok {
                pos: start,
                text: s[start..i].to_string(),
            });
            continue;
        }
        return Err((i, format!("unexpected character {:?}", c as char)));
    }
    Ok(out)
}

#[derive(Debug, Clone)]
enum Expr {
    Atom(Atom),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// The last word with a value, for tcpdump's "a bare value repeats the previous word".
#[derive(Clone, Copy)]
enum Qual {
    Host(u8),
    Net(u8),
    Port(u8, u8),
    PortRange(u8, u8),
}

struct Parser<'a> {
    toks: Vec<Tok>,
    i: usize,
    len: usize,
    _src: &'a str,
    /// `vlan` words seen so far: the headers later words test are inside that many tags.
    depth: u8,
    last: Option<Qual>,
}

type PResult<T> = Result<T, (usize, String)>;

impl Parser<'_> {
    fn peek(&self) -> Option<&str> {
        self.toks.get(self.i).map(|t| t.text.as_str())
    }

    fn peek_at(&self, k: usize) -> Option<&str> {
        self.toks.get(self.i + k).map(|t| t.text.as_str())
    }

    fn pos(&self) -> usize {
        self.toks.get(self.i).map_or(self.len, |t| t.pos)
    }

    fn next(&mut self, what: &str) -> PResult<Tok> {
        match self.toks.get(self.i) {
            Some(t) => {
                self.i += 1;
                Ok(t.clone())
            }
            None => Err((self.len, format!("expected {what}, found the end"))),
        }
    }

    fn expect(&mut self, text: &str) -> PResult<()> {
        let p = self.pos();
        let t = self.next(&format!("{text:?}"))?;
        if t.text != text {
            return Err((p, format!("expected {text:?}, found {:?}", t.text)));
        }
        Ok(())
    }

    /// Operands (each read by `operand`) joined left to right by the operator `words` (either
    /// spelling) into `join`.
    fn chain(
        &mut self,
        words: [&str; 2],
        operand: fn(&mut Self) -> PResult<Expr>,
        join: fn(Box<Expr>, Box<Expr>) -> Expr,
    ) -> PResult<Expr> {
        let mut e = operand(self)?;
        while self.peek().is_some_and(|w| words.contains(&w)) {
            self.i += 1;
            let r = operand(self)?;
            e = join(Box::new(e), Box::new(r));
        }
        Ok(e)
    }

    fn or(&mut self) -> PResult<Expr> {
        self.chain(["or", "||"], Self::and, Expr::Or)
    }

    fn and(&mut self) -> PResult<Expr> {
        self.chain(["and", "&&"], Self::unary, Expr::And)
    }

    fn unary(&mut self) -> PResult<Expr> {
        match self.peek() {
            Some("not" | "!") => {
                self.i += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some("(") => {
                self.i += 1;
                let e = self.or()?;
                self.expect(")")?;
                Ok(e)
            }
            Some(_) => self.primitive(),
            None => Err((self.len, "expected a filter word, found the end".into())),
        }
    }

    fn atom(&self, kind: u8) -> Atom {
        Atom {
            kind,
            depth: self.depth,
            ..Default::default()
        }
    }

    /// `src`, `dst`, `src or dst`, `src and dst`, or nothing.
    fn direction(&mut self) -> u8 {
        let first = match self.peek() {
            Some("src") => side::SRC,
            Some("dst") => side::DST,
            _ => return side::EITHER,
        };
        self.i += 1;
        match (self.peek(), self.peek_at(1)) {
            (Some("or"), Some(o @ ("src" | "dst"))) if (o == "src") != (first == side::SRC) => {
                self.i += 2;
                side::EITHER
            }
            (Some("and"), Some(o @ ("src" | "dst"))) if (o == "src") != (first == side::SRC) => {
                self.i += 2;
                side::BOTH
            }
            _ => first,
        }
    }

    fn primitive(&mut self) -> PResult<Expr> {
        let start = self.pos();
        let word = self.peek().unwrap_or_default().to_string();
        match word.as_str() {
            "ip" | "ip6" | "arp" => {
                self.i += 1;
                let mut a = self.atom(kind::ETHERTYPE);
                a.lo = match word.as_str() {
                    "ip" => 0x0800,
                    "ip6" => 0x86DD,
                    _ => 0x0806,
                };
                if let Some(w @ ("host" | "net" | "src" | "dst" | "proto")) = self.peek() {
                    return Err((
                        self.pos(),
                        format!("\"{word} {w}\" is not in the supported subset (write \"{word} and {w} ...\")"),
                    ));
                }
                return Ok(Expr::Atom(a));
            }
            "icmp" | "icmp6" => {
                self.i += 1;
                let mut a = self.atom(kind::IP_PROTO);
                (a.proto, a.family) = if word == "icmp" { (1, 4) } else { (58, 6) };
                return Ok(Expr::Atom(a));
            }
            "tcp" | "udp" => {
                self.i += 1;
                let proto = if word == "tcp" { 6 } else { 17 };
                if word == "tcp" && self.peek() == Some("[") {
                    return self.tcp_flags(start);
                }
                // `tcp port 80`, `udp dst portrange 1-2`
                let save = self.i;
                let s = self.direction();
                if let Some("port" | "portrange") = self.peek() {
                    return self.port(s, proto);
                }
                self.i = save;
                let mut a = self.atom(kind::IP_PROTO);
                a.proto = proto;
                return Ok(Expr::Atom(a));
            }
            "vlan" => {
                self.i += 1;
                let mut a = self.atom(kind::VLAN);
                a.lo = VLAN_ANY;
                if let Some(v) = self.peek() {
                    if v.bytes().all(|c| c.is_ascii_digit()) {
                        let p = self.pos();
                        let id: u16 = v
                            .parse()
                            .ok()
                            .filter(|id| *id < 4096)
                            .ok_or((p, format!("VLAN ID {v:?} is not 0-4095")))?;
                        if self.depth >= MAX_VLAN_ID_DEPTH {
                            return Err((p, format!("a VLAN ID can be tested in the first {MAX_VLAN_ID_DEPTH} tags only")));
                        }
                        a.lo = id;
                        self.i += 1;
                    }
                }
                if self.depth as usize >= 8 {
                    return Err((start, "more than 8 vlan words".into()));
                }
                self.depth += 1;
                return Ok(Expr::Atom(a));
            }
            _ => {}
        }
        let before = self.i;
        let s = self.direction();
        match self.peek() {
            Some("host") => {
                self.i += 1;
                self.host(s, false)
            }
            Some("net") => {
                self.i += 1;
                self.host(s, true)
            }
            Some("port" | "portrange") => self.port(s, 0),
            Some(v) => {
                let value = v.starts_with(|c: char| c.is_ascii_digit()) || v.contains(':');
                if !value {
                    return Err((self.pos(), format!("unknown or unsupported word {v:?}")));
                }
                if self.i != before {
                    // `src 198.18.0.1`: tcpdump takes a bare address after src/dst as host.
                    let net = v.contains('/');
                    return self.host(s, net);
                }
                // A bare value: the previous word again.
                match self.last {
                    Some(Qual::Host(s)) => self.host(s, false),
                    Some(Qual::Net(s)) => self.host(s, true),
                    Some(Qual::Port(s, p)) => self.port_value(s, p, false),
                    Some(Qual::PortRange(s, p)) => self.port_value(s, p, true),
                    None => Err((
                        start,
                        format!("a value ({v:?}) needs a word before it (host, net, port, ...)"),
                    )),
                }
            }
            None => Err((
                self.len,
                "expected host, net, port or portrange, found the end".into(),
            )),
        }
    }

    /// The address of `host`/`net` (net: CIDR; a host is a full-length prefix).
    fn host(&mut self, s: u8, net: bool) -> PResult<Expr> {
        let p = self.pos();
        let t = self.next("an address")?;
        let (addr, plen) = match t.text.split_once('/') {
            Some((a, l)) => {
                let addr: IpAddr = a.parse().map_err(|_| {
                    (
                        p,
                        format!("{a:?} is not an IP address (names are not resolved)"),
                    )
                })?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let plen: u8 = l
                    .parse()
                    .ok()
                    .filter(|n| *n <= max)
                    .ok_or((p, format!("prefix length {l:?} is not 0-{max}")))?;
                if !net {
                    return Err((p, "host takes an address; use net for a prefix".into()));
                }
                (addr, plen)
            }
            None => {
                let addr: IpAddr = t.text.parse().map_err(|_| {
                    (
                        p,
                        format!("{:?} is not an IP address (names are not resolved)", t.text),
                    )
                })?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let mut a = self.atom(kind::HOST);
        a.side = s;
        let mut bytes = [0u8; 16];
        match addr {
            IpAddr::V4(v) => {
                a.family = 4;
                bytes[..4].copy_from_slice(&v.octets());
            }
            IpAddr::V6(v) => {
                a.family = 6;
                bytes = v.octets();
            }
        }
        a.set_prefix(&bytes, plen);
        // Host bits set in a net: tcpdump refuses them too.
        if words(&bytes) != a.addr {
            return Err((p, format!("{:?} has host bits set beyond /{plen}", t.text)));
        }
        self.last = Some(if net { Qual::Net(s) } else { Qual::Host(s) });
        Ok(Expr::Atom(a))
    }

    fn port(&mut self, s: u8, proto: u8) -> PResult<Expr> {
        let range = self.next("port")?.text == "portrange";
        self.port_value(s, proto, range)
    }

    fn port_value(&mut self, s: u8, proto: u8, range: bool) -> PResult<Expr> {
        let p = self.pos();
        let t = self.next("a port")?;
        let (lo, hi) = if range {
            let (a, b) = t
                .text
                .split_once('-')
                .ok_or((p, format!("portrange takes LOW-HIGH, not {:?}", t.text)))?;
            (port_number(a, p)?, port_number(b, p + a.len() + 1)?)
        } else {
            let n = port_number(&t.text, p)?;
            (n, n)
        };
        let mut a = self.atom(kind::PORT);
        a.side = s;
        a.proto = proto;
        (a.lo, a.hi) = (lo.min(hi), lo.max(hi));
        self.last = Some(if range {
            Qual::PortRange(s, proto)
        } else {
            Qual::Port(s, proto)
        });
        Ok(Expr::Atom(a))
    }

    /// After `tcp`: `[tcpflags] & FLAGS != 0`, `[tcpflags] & FLAGS = VALUE`,
    /// `[tcpflags] = VALUE` (`[13]` works as `[tcpflags]`).
    fn tcp_flags(&mut self, start: usize) -> PResult<Expr> {
        self.expect("[")?;
        let p = self.pos();
        let t = self.next("tcpflags")?;
        if t.text != "tcpflags" && t.text != "13" {
            return Err((
                p,
                format!(
                    "only tcp[tcpflags] (tcp[13]) is supported, not tcp[{}]",
                    t.text
                ),
            ));
        }
        self.expect("]")?;
        let mut a = self.atom(kind::TCP_FLAGS);
        a.mask = 0xff;
        if self.peek() == Some("&") {
            self.i += 1;
            a.mask = self.flags_value()?;
        }
        let p = self.pos();
        let op = self.next("!=, = or ==")?.text;
        let v = self.flags_value()?;
        match op.as_str() {
            "!=" if v == 0 => a.cmp = cmp::ANY_SET,
            "=" | "==" => {
                a.cmp = cmp::EQ;
                a.value = v;
            }
            _ => {
                return Err((
                    p,
                    format!("tcp[tcpflags] comparisons: \"!= 0\" or \"= VALUE\" (at {start})"),
                ));
            }
        }
        Ok(Expr::Atom(a))
    }

    /// `tcp-syn`, a number, or `(tcp-syn|tcp-ack|...)`.
    fn flags_value(&mut self) -> PResult<u8> {
        if self.peek() == Some("(") {
            self.i += 1;
            let mut v = self.flag_word()?;
            while self.peek() == Some("|") {
                self.i += 1;
                v |= self.flag_word()?;
            }
            self.expect(")")?;
            return Ok(v);
        }
        self.flag_word()
    }

    fn flag_word(&mut self) -> PResult<u8> {
        let p = self.pos();
        let t = self.next("a TCP flag")?;
        let v = match t.text.as_str() {
            "tcp-fin" => 0x01,
            "tcp-syn" => 0x02,
            "tcp-rst" => 0x04,
            "tcp-push" => 0x08,
            "tcp-ack" => 0x10,
            "tcp-urg" => 0x20,
            "tcp-ece" => 0x40,
            "tcp-cwr" => 0x80,
            n => parse_num(n)
                .filter(|v| *v <= 0xff)
                .ok_or((p, format!("{n:?} is not a TCP flag or a byte")))? as u8,
        };
        Ok(v)
    }
}

fn parse_num(s: &str) -> Option<u32> {
    if let Some(h) = s.strip_prefix("0x") {
        u32::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

fn port_number(s: &str, pos: usize) -> PResult<u16> {
    let named = match s {
        "ssh" => Some(22),
        "domain" => Some(53),
        "http" => Some(80),
        "https" => Some(443),
        "microsoft-ds" => Some(445),
        _ => None,
    };
    named
        .or_else(|| s.parse().ok())
        .ok_or((pos, format!("{s:?} is not a port number (0-65535)")))
}

type Dnf = Vec<Vec<Atom>>;

fn too_big(terms: usize) -> String {
    format!(
        "the filter needs more than {MAX_TERMS} alternatives ({terms}) or more than {MAX_ATOMS} words in one of them once negations and parentheses are multiplied out; the kernel table holds {MAX_TERMS}x{MAX_ATOMS}"
    )
}

/// Disjunctive normal form of `e` (negated when `neg`), within the table's limits.
fn dnf(e: &Expr, neg: bool) -> Result<Dnf, String> {
    let product = |a: Dnf, b: Dnf| -> Result<Dnf, String> {
        let mut out = vec![];
        for x in &a {
            for y in &b {
                let mut t = x.clone();
                t.extend_from_slice(y);
                if t.len() > MAX_ATOMS {
                    return Err(too_big(a.len() * b.len()));
                }
                out.push(t);
            }
        }
        if out.len() > MAX_TERMS as usize {
            return Err(too_big(out.len()));
        }
        Ok(out)
    };
    let union = |mut a: Dnf, b: Dnf| -> Result<Dnf, String> {
        a.extend(b);
        if a.len() > MAX_TERMS as usize {
            return Err(too_big(a.len()));
        }
        Ok(a)
    };
    match e {
        Expr::Atom(a) => {
            let mut a = *a;
            a.negate = u8::from(neg);
            Ok(vec![vec![a]])
        }
        Expr::Not(x) => dnf(x, !neg),
        Expr::And(l, r) if !neg => product(dnf(l, false)?, dnf(r, false)?),
        Expr::And(l, r) => union(dnf(l, true)?, dnf(r, true)?),
        Expr::Or(l, r) if !neg => union(dnf(l, false)?, dnf(r, false)?),
        Expr::Or(l, r) => product(dnf(l, true)?, dnf(r, true)?),
    }
}

/// Compile `expr` (empty or blank: no filter).
pub fn compile(expr: &str) -> Result<Filter, FilterError> {
    let err = |(pos, msg): (usize, String)| FilterError {
        pos,
        msg,
        expr: expr.to_string(),
    };
    let toks = tokenize(expr).map_err(err)?;
    if toks.is_empty() {
        return Ok(Filter::default());
    }
    let mut p = Parser {
        toks,
        i: 0,
        len: expr.len(),
        _src: expr,
        depth: 0,
        last: None,
    };
    let e = p.or().map_err(err)?;
    if let Some(t) = p.toks.get(p.i) {
        return Err(err((t.pos, format!("unexpected {:?}", t.text))));
    }
    let d = dnf(&e, false).map_err(|m| err((0, m)))?;
    let terms = d
        .into_iter()
        .map(|atoms| {
            let mut t = Term {
                natoms: atoms.len() as u32,
                ..Default::default()
            };
            t.atoms[..atoms.len()].copy_from_slice(&atoms);
            t
        })
        .collect();
    Ok(Filter { terms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_compile_to_atoms() {
        let f = compile("tcp and dst port 80").unwrap();
        assert_eq!(f.terms.len(), 1);
        let t = &f.terms[0];
        assert_eq!(t.natoms, 2);
        assert_eq!(t.atoms[0].kind, kind::IP_PROTO);
        assert_eq!(t.atoms[1].kind, kind::PORT);
        assert_eq!(t.atoms[1].side, side::DST);
        assert_eq!((t.atoms[1].lo, t.atoms[1].hi), (80, 80));

        let f = compile("src net 198.18.0.0/15").unwrap();
        let a = f.terms[0].atoms[0];
        assert_eq!(
            (a.kind, a.side, a.plen, a.family),
            (kind::HOST, side::SRC, 15, 4)
        );
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[198, 18, 0, 0]);
        assert_eq!(a.addr, words(&b));

        let f = compile("host 2001:2::1").unwrap();
        assert_eq!(f.terms[0].atoms[0].family, 6);
        assert_eq!(f.terms[0].atoms[0].plen, 128);
        assert!(compile("").unwrap().terms.is_empty());
        assert!(compile("   ").unwrap().terms.is_empty());
    }

    #[test]
    fn negations_are_pushed_down_and_or_multiplies_out() {
        // not (tcp or udp) = not tcp and not udp: one term of two negated atoms.
        let f = compile("not (tcp or udp)").unwrap();
        assert_eq!(f.terms.len(), 1);
        assert_eq!(f.terms[0].natoms, 2);
        assert!(f.terms[0].atoms[..2].iter().all(|a| a.negate == 1));
        // (a or b) and (c or d): four terms.
        let f = compile("(tcp or udp) and (port 1 or port 2)").unwrap();
        assert_eq!(f.terms.len(), 4);
        let f = compile("!(host 198.18.0.1 && port 22)").unwrap();
        assert_eq!(f.terms.len(), 2);
    }

    #[test]
    fn bare_values_repeat_the_previous_word() {
        let f = compile("port 80 or 443").unwrap();
        assert_eq!(f.terms.len(), 2);
        assert_eq!(f.terms[1].atoms[0].lo, 443);
        let f = compile("src host 198.18.0.1 or 198.18.0.2").unwrap();
        assert_eq!(f.terms[1].atoms[0].side, side::SRC);
    }

    #[test]
    fn vlan_moves_later_words_inside_the_tag() {
        let f = compile("vlan 10 and ip").unwrap();
        let t = &f.terms[0];
        assert_eq!(
            (t.atoms[0].kind, t.atoms[0].depth, t.atoms[0].lo),
            (kind::VLAN, 0, 10)
        );
        assert_eq!((t.atoms[1].kind, t.atoms[1].depth), (kind::ETHERTYPE, 1));
        assert_eq!(compile("ip").unwrap().terms[0].atoms[0].depth, 0);
    }

    #[test]
    fn tcp_flags() {
        let f = compile("tcp[tcpflags] & (tcp-syn|tcp-ack) != 0").unwrap();
        let a = f.terms[0].atoms[0];
        assert_eq!(
            (a.kind, a.mask, a.cmp),
            (kind::TCP_FLAGS, 0x12, cmp::ANY_SET)
        );
        let f = compile("tcp[tcpflags] = tcp-syn").unwrap();
        let a = f.terms[0].atoms[0];
        assert_eq!((a.mask, a.value, a.cmp), (0xff, 0x02, cmp::EQ));
    }

    #[test]
    fn errors_carry_the_column() {
        let cases = [
            ("tcp and", 7, "found the end"),
            ("host 198.18.0.300", 5, "not an IP address"),
            ("port 80 and frobnicate", 12, "unsupported word"),
            ("(tcp or udp", 11, "expected \")\""),
            ("net 198.18.0.1/15", 4, "host bits"),
            ("portrange 10", 10, "LOW-HIGH"),
            ("tcp $", 4, "unexpected character"),
            ("ip proto 6", 3, "subset"),
            ("tcp) or udp", 3, "unexpected"),
            ("tcp[2] & 1 != 0", 4, "tcp[tcpflags]"),
            ("port 70000", 5, "port number"),
        ];
        for (expr, pos, msg) in cases {
            let e = compile(expr).unwrap_err();
            assert_eq!(e.pos, pos, "{expr}: {e}");
            assert!(e.msg.contains(msg), "{expr}: {e}");
            assert!(e.to_string().contains(&format!("column {}", pos + 1)));
        }
        // Odd input is refused, never a panic.
        for expr in [
            "host ü",
            "ü",
            "((((",
            "))",
            "not",
            "!!!",
            "port -",
            "portrange 5-",
            "vlan 99999",
            "tcp[",
            "tcp[tcpflags] &",
            "tcp[tcpflags] & (tcp-syn|",
            "net ::/129",
            "src",
            "and",
            "host 198.18.0.1/24",
            "port 80 or",
            "\u{0}",
            "port 1-2",
        ] {
            let e = compile(expr).unwrap_err();
            assert!(e.pos <= expr.len(), "{expr}: {e}");
            let _ = e.to_string();
        }
        let big = "(port 1 or port 2) and (port 3 or port 4) and (port 5 or port 6) and (port 7 or port 8)";
        assert!(compile(big).unwrap_err().msg.contains("alternatives"));
    }
}
