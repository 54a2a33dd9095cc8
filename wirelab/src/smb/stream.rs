//! One direction of a TCP connection put back in order, cut into NetBIOS session messages
//! (RFC 1002 framing as SMB2 uses it on port 445: a zero byte, a 24-bit length, the message).
//!
//! Segments are placed by sequence number: a retransmitted or overlapping segment adds only
//! the bytes not yet seen, a segment ahead of a gap waits (at most [`MAX_HELD`] segments)
//! until the gap fills. A direction first seen mid-stream (no SYN), or a gap given up on,
//! is resynchronised on the next byte pattern that starts an SMB message.
use std::collections::BTreeMap;

/// Segments held ahead of a gap, per direction; beyond that the gap is skipped.
pub const MAX_HELD: usize = 512;
/// Largest NetBIOS message accepted (SMB2 messages are at most 8 MiB + headers).
const MAX_MESSAGE: usize = 16 << 20;

#[derive(Debug, Default)]
pub struct Stream {
    /// Next sequence number expected; `None` before the first segment.
    next: Option<u32>,
    /// In-order bytes not yet cut into messages.
    buf: Vec<u8>,
    /// Segments past a gap, by sequence number relative to `next` at arrival.
    held: BTreeMap<u32, Vec<u8>>,
    /// The next byte may be mid-message: look for a message start.
    resync: bool,
    /// Bytes skipped (gaps given up on, resynchronisation).
    pub skipped: u64,
}

impl Stream {
    /// Add a segment; returns the complete NetBIOS session messages' payloads now available.
    pub fn push(&mut self, seq: u32, syn: bool, payload: &[u8]) -> Vec<Vec<u8>> {
        if syn {
            self.next = Some(seq.wrapping_add(1));
            self.buf.clear();
            self.held.clear();
            self.resync = false;
        }
        if payload.is_empty() {
            return Vec::new();
        }
        let next = *self.next.get_or_insert_with(|| {
            // Joined mid-connection.
            self.resync = true;
            seq
        });
        self.place(next, seq, payload);
        self.fill();
        self.cut()
    }

    fn place(&mut self, next: u32, seq: u32, payload: &[u8]) {
        let ahead = seq.wrapping_sub(next);
        if ahead == 0 || ahead > u32::MAX / 2 {
            // In order, or (wrapping "negative") partly or wholly seen already.
            let seen = (next.wrapping_sub(seq) as usize).min(payload.len());
            if ahead == 0 || seen < payload.len() {
                let fresh = &payload[if ahead == 0 { 0 } else { seen }..];
                self.buf.extend_from_slice(fresh);
                self.next = Some(next.wrapping_add(fresh.len() as u32));
            }
            return;
        }
        if self.held.len() >= MAX_HELD {
            // Give up on the gap: skip to the first held segment.
            if let Some((&s, _)) = self.held.iter().next() {
                self.skipped += s.wrapping_sub(next) as u64;
                self.buf.clear();
                self.resync = true;
                self.next = Some(s);
            }
        }
        self.held.entry(seq).or_insert_with(|| payload.to_vec());
    }

    /// Move held segments that are now in order into the buffer.
    fn fill(&mut self) {
        while let Some(next) = self.next {
            let Some(seq) = self
                .held
                .keys()
                .copied()
                .find(|s| s.wrapping_sub(next) == 0 || s.wrapping_sub(next) > u32::MAX / 2)
            else {
                break;
            };
            let Some(p) = self.held.remove(&seq) else {
                break;
            };
            let seen = next.wrapping_sub(seq) as usize;
            if seen < p.len() {
                self.buf.extend_from_slice(&p[seen..]);
                self.next = Some(next.wrapping_add((p.len() - seen) as u32));
            }
        }
    }

    /// Cut complete messages off the front of the buffer.
    fn cut(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0usize;
        loop {
            if self.resync {
                match find_start(&self.buf[at..]) {
                    Some(p) => {
                        self.skipped += p as u64;
                        at += p;
                        self.resync = false;
                    }
                    None => {
                        // Keep the last bytes: a start may straddle the next segment.
                        let keep = self.buf.len().saturating_sub(at).min(7);
                        let drop = self.buf.len() - at - keep;
                        self.skipped += drop as u64;
                        at += drop;
                        break;
                    }
                }
            }
            let Some(h) = self.buf.get(at..at + 4) else {
                break;
            };
            let len = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
            if h[0] != 0 || len > MAX_MESSAGE {
                self.resync = true;
                at += 1;
                continue;
            }
            let Some(m) = self.buf.get(at + 4..at + 4 + len) else {
                break;
            };
            out.push(m.to_vec());
            at += 4 + len;
        }
        self.buf.drain(..at);
        out
    }
}

/// Where an NBSS header followed by an SMB magic starts in `b`.
fn find_start(b: &[u8]) -> Option<usize> {
    b.windows(8)
        .position(|w| w[0] == 0 && matches!(w[4], 0xfc..=0xff) && &w[5..8] == b"SMB")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nbss(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes().to_vec();
        v[0] = 0;
        v.extend_from_slice(payload);
        v
    }

    fn smb(tag: u8, len: usize) -> Vec<u8> {
        let mut m = vec![tag; len];
        m[..4].copy_from_slice(&[0xfe, b'S', b'M', b'B']);
        m
    }

    #[test]
    fn in_order_split_and_joined_messages() {
        let mut s = Stream::default();
        assert!(s.push(1000, true, &[]).is_empty());
        let a = nbss(&smb(1, 100));
        let b = nbss(&smb(2, 3000));
        let mut wire = a.clone();
        wire.extend(&b);
        let mut got = Vec::new();
        let mut seq = 1001u32;
        for chunk in wire.chunks(1448) {
            got.extend(s.push(seq, false, chunk));
            seq = seq.wrapping_add(chunk.len() as u32);
        }
        assert_eq!(got, vec![smb(1, 100), smb(2, 3000)]);
        assert_eq!(s.skipped, 0);
    }

    #[test]
    fn reordered_retransmitted_and_wrapping_segments() {
        let wire: Vec<u8> = (0..5).flat_map(|i| nbss(&smb(i, 700))).collect();
        let chunks: Vec<&[u8]> = wire.chunks(500).collect();
        let isn = u32::MAX - 1200; // wraps inside the stream
        let seq_of = |i: usize| isn.wrapping_add(1).wrapping_add((i * 500) as u32);
        let mut s = Stream::default();
        s.push(isn, true, &[]);
        let mut order: Vec<usize> = (0..chunks.len()).collect();
        order.swap(1, 3);
        order.insert(2, 0); // a retransmission
        let mut got = Vec::new();
        for i in order {
            got.extend(s.push(seq_of(i), false, chunks[i]));
        }
        // A partial retransmission overlapping the end.
        got.extend(s.push(
            seq_of(chunks.len() - 1).wrapping_sub(10),
            false,
            &wire[wire.len() - 30..],
        ));
        assert_eq!(got, (0..5).map(|i| smb(i, 700)).collect::<Vec<_>>());
    }

    #[test]
    fn joined_mid_stream_resynchronises() {
        let wire: Vec<u8> = (0..3).flat_map(|i| nbss(&smb(i, 300))).collect();
        let mut s = Stream::default();
        // No SYN; start inside the first message.
        let got = s.push(5000, false, &wire[150..]);
        assert_eq!(got, vec![smb(1, 300), smb(2, 300)]);
        assert!(s.skipped >= 150);
    }
}
