//! A minimal pcapng writer: the four block types `wirelab capture` writes (section header,
//! interface description, enhanced packet, interface statistics), little-endian, with
//! nanosecond timestamps (`if_tsresol` = 9). Format: draft-ietf-opsawg-pcapng.
use std::io::{self, Write};

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 0x0000_0001;
const ISB: u32 = 0x0000_0005;
const EPB: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u16 = 1;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_MACADDR: u16 = 6;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
const ISB_STARTTIME: u16 = 2;
const ISB_ENDTIME: u16 = 3;
const ISB_IFRECV: u16 = 4;
const ISB_IFDROP: u16 = 5;
const ISB_FILTERACCEPT: u16 = 6;

/// Direction in `epb_flags` (bits 0-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound = 1,
    Outbound = 2,
}

/// What the IDB says of the interface.
#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub snaplen: u32,
}

/// One EPB.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    pub interface_id: u32,
    /// Wall-clock time, ns since the Unix epoch.
    pub ts_ns: u64,
    pub orig_len: u32,
    pub data: &'a [u8],
    pub direction: Option<Direction>,
    pub comment: Option<&'a str>,
}

/// One ISB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub interface_id: u32,
    pub ts_ns: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Frames the capture programs saw.
    pub ifrecv: u64,
    /// Frames lost by the capture (buffer full).
    pub ifdrop: u64,
    /// Frames the filter accepted.
    pub filter_accept: u64,
}

/// Options of one block, padded to 32 bits, ended by `opt_endofopt` when any.
#[derive(Default)]
struct Opts(Vec<u8>);

/// The end of a block's options (after at least one option).
fn end_of_options(out: &mut Vec<u8>) {
    out.extend_from_slice(&OPT_END.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
}

/// One option (code, length, value, padding) onto `out`, whose length is a multiple of 4.
fn option(out: &mut Vec<u8>, code: u16, val: &[u8]) {
    out.extend_from_slice(&code.to_le_bytes());
    // Option values are at most 65535 bytes; longer ones (none here) are cut.
    let len = val.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&val[..len]);
    pad(out);
}

impl Opts {
    fn add(&mut self, code: u16, val: &[u8]) {
        option(&mut self.0, code, val);
    }

    fn add_u64(&mut self, code: u16, v: u64) {
        self.add(code, &v.to_le_bytes());
    }

    /// A timestamp in the IDB's resolution, high word first.
    fn add_ts(&mut self, code: u16, ns: u64) {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&((ns >> 32) as u32).to_le_bytes());
        b[4..].copy_from_slice(&(ns as u32).to_le_bytes());
        self.add(code, &b);
    }

    fn finish(mut self) -> Vec<u8> {
        if !self.0.is_empty() {
            end_of_options(&mut self.0);
        }
        self.0
    }
}

fn pad(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

/// An enhanced packet block's fields before the data: type, total length, interface id,
/// timestamp (two words), captured and original length.
const EPB_FIXED: usize = 28;

/// Writes blocks to `W`; the caller flushes (or drops a `BufWriter`) at the end.
pub struct Writer<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Write the section header with `application` as `shb_userappl`.
    pub fn new(mut out: W, application: &str) -> io::Result<Self> {
        let mut body = Vec::new();
        body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        // Section length: unknown.
        body.extend_from_slice(&(-1i64).to_le_bytes());
        let mut o = Opts::default();
        o.add(SHB_USERAPPL, application.as_bytes());
        body.extend_from_slice(&o.finish());
        let mut buf = Vec::with_capacity(2048);
        block(&mut buf, SHB, &body);
        out.write_all(&buf)?;
        Ok(Self { out, buf })
    }

    /// Describe an interface; its id is the order of the calls, from 0.
    pub fn interface(&mut self, i: &Interface) -> io::Result<()> {
        let mut body = Vec::new();
        body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&i.snaplen.to_le_bytes());
        let mut o = Opts::default();
        o.add(IF_NAME, i.name.as_bytes());
        if let Some(mac) = i.mac {
            o.add(IF_MACADDR, &mac);
        }
        o.add(IF_TSRESOL, &[9]);
        body.extend_from_slice(&o.finish());
        self.emit(IDB, &body)
    }

    /// An enhanced packet block, written in pieces: its fixed fields, the frame's bytes as
    /// they are, their padding, then the options and the closing length (built in the
    /// writer's one buffer). With a `BufWriter` underneath the frame's bytes are copied once,
    /// into its buffer; no allocation per frame.
    pub fn packet(&mut self, p: &Packet<'_>) -> io::Result<()> {
        // What follows the data and its padding: the options, the closing total length.
        let pad = (4 - p.data.len() % 4) % 4;
        let t = &mut self.buf;
        t.clear();
        if let Some(d) = p.direction {
            option(t, EPB_FLAGS, &(d as u32).to_le_bytes());
        }
        if let Some(c) = p.comment {
            option(t, OPT_COMMENT, c.as_bytes());
        }
        if p.direction.is_some() || p.comment.is_some() {
            end_of_options(t);
        }
        let total = (EPB_FIXED + p.data.len() + pad + t.len() + 4) as u32;
        t.extend_from_slice(&total.to_le_bytes());
        let mut head = [0u8; EPB_FIXED];
        for (i, v) in [
            EPB,
            total,
            p.interface_id,
            (p.ts_ns >> 32) as u32,
            p.ts_ns as u32,
            p.data.len() as u32,
            p.orig_len,
        ]
        .into_iter()
        .enumerate()
        {
            head[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        self.out.write_all(&head)?;
        self.out.write_all(p.data)?;
        self.out.write_all(&[0; 3][..pad])?;
        self.out.write_all(&self.buf)
    }

    pub fn stats(&mut self, s: &Stats) -> io::Result<()> {
        let mut body = Vec::new();
        body.extend_from_slice(&s.interface_id.to_le_bytes());
        body.extend_from_slice(&((s.ts_ns >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(s.ts_ns as u32).to_le_bytes());
        let mut o = Opts::default();
        o.add_ts(ISB_STARTTIME, s.start_ns);
        o.add_ts(ISB_ENDTIME, s.end_ns);
        o.add_u64(ISB_IFRECV, s.ifrecv);
        o.add_u64(ISB_IFDROP, s.ifdrop);
        o.add_u64(ISB_FILTERACCEPT, s.filter_accept);
        body.extend_from_slice(&o.finish());
        self.emit(ISB, &body)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The writer back (after a flush).
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }

    fn emit(&mut self, ty: u32, body: &[u8]) -> io::Result<()> {
        self.buf.clear();
        block(&mut self.buf, ty, body);
        self.out.write_all(&self.buf)
    }
}

/// type, total length, body (padded already), total length.
fn block(out: &mut Vec<u8>, ty: u32, body: &[u8]) {
    let total = (12 + body.len()) as u32;
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&total.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{
        blocks::{
            enhanced_packet::EnhancedPacketOption,
            interface_description::InterfaceDescriptionOption,
            interface_statistics::InterfaceStatisticsOption, Block,
        },
        PcapNgReader,
    };

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), "wirelab test").unwrap();
        w.interface(&Interface {
            name: "eth0".into(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            snaplen: 96,
        })
        .unwrap();
        // 1 byte and 5 bytes of data: both need padding.
        for (i, data) in [&[0xaa_u8][..], &[1, 2, 3, 4, 5]].iter().enumerate() {
            w.packet(&Packet {
                interface_id: 0,
                ts_ns: 1_700_000_000_123_456_789 + i as u64,
                orig_len: 1500,
                data,
                direction: Some(if i == 0 {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                }),
                comment: (i == 1).then_some("fw: rule deny-ssh dropped"),
            })
            .unwrap();
        }
        w.stats(&Stats {
            interface_id: 0,
            ts_ns: 1_700_000_001_000_000_000,
            start_ns: 1_700_000_000_000_000_000,
            end_ns: 1_700_000_001_000_000_000,
            ifrecv: 10,
            ifdrop: 3,
            filter_accept: 2,
        })
        .unwrap();
        w.into_inner().unwrap()
    }

    #[test]
    fn a_reader_crate_reads_every_block_back() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0);
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut blocks = vec![];
        while let Some(b) = r.next_block() {
            blocks.push(b.unwrap().into_owned());
        }
        assert_eq!(blocks.len(), 4, "{blocks:?}");
        let Block::InterfaceDescription(idb) = &blocks[0] else {
            panic!("{:?}", blocks[0]);
        };
        assert_eq!(idb.snaplen, 96);
        assert!(idb
            .options
            .iter()
            .any(|o| matches!(o, InterfaceDescriptionOption::IfName(n) if n == "eth0")));
        assert!(idb
            .options
            .iter()
            .any(|o| matches!(o, InterfaceDescriptionOption::IfTsResol(9))));
        assert!(idb.options.iter().any(
            |o| matches!(o, InterfaceDescriptionOption::IfMacAddr(m) if m[..] == [2, 0, 0, 0, 0, 1])
        ));
        for (i, b) in blocks[1..3].iter().enumerate() {
            let Block::EnhancedPacket(p) = b else {
                panic!("{b:?}");
            };
            assert_eq!(p.original_len, 1500);
            assert_eq!(p.data.len(), if i == 0 { 1 } else { 5 });
            // With if_tsresol = 9 the reader's Duration is the ns count itself.
            assert_eq!(
                p.timestamp.as_nanos() as u64,
                1_700_000_000_123_456_789 + i as u64
            );
            assert!(p
                .options
                .iter()
                .any(|o| matches!(o, EnhancedPacketOption::Flags(f) if *f == (i as u32 + 1))));
            if i == 1 {
                assert!(p.options.iter().any(
                    |o| matches!(o, EnhancedPacketOption::Comment(c) if c.contains("deny-ssh"))
                ));
            }
        }
        let Block::InterfaceStatistics(s) = &blocks[3] else {
            panic!("{:?}", blocks[3]);
        };
        assert!(s
            .options
            .iter()
            .any(|o| matches!(o, InterfaceStatisticsOption::IsbIfDrop(3))));
        assert!(s
            .options
            .iter()
            .any(|o| matches!(o, InterfaceStatisticsOption::IsbIfRecv(10))));
    }
}
