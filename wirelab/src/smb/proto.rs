//! SMB2/3 on the wire (MS-SMB2): the NetBIOS session framing, the 64-byte SMB2 header and
//! the few body fields the view needs. Pure functions over byte slices; every read is
//! bounds-checked, so a truncated or foreign message gives `None`, never a panic.

/// `0xFE 'S' 'M' 'B'`: an SMB2/3 header.
pub const SMB2_MAGIC: [u8; 4] = [0xfe, b'S', b'M', b'B'];
/// `0xFD 'S' 'M' 'B'`: an SMB3 transform header (an encrypted message).
pub const TRANSFORM_MAGIC: [u8; 4] = [0xfd, b'S', b'M', b'B'];
/// `0xFC 'S' 'M' 'B'`: an SMB3 compression transform header.
pub const COMPRESSED_MAGIC: [u8; 4] = [0xfc, b'S', b'M', b'B'];
/// `0xFF 'S' 'M' 'B'`: SMB1 (a client's first negotiate may still be one).
pub const SMB1_MAGIC: [u8; 4] = [0xff, b'S', b'M', b'B'];
/// Length of the SMB2 header.
pub const HEADER_LEN: usize = 64;

/// SMB2 commands (MS-SMB2 2.2.1), by number.
pub mod cmd {
    pub const NEGOTIATE: u16 = 0x00;
    pub const SESSION_SETUP: u16 = 0x01;
    pub const LOGOFF: u16 = 0x02;
    pub const TREE_CONNECT: u16 = 0x03;
    pub const TREE_DISCONNECT: u16 = 0x04;
    pub const CREATE: u16 = 0x05;
    pub const CLOSE: u16 = 0x06;
    pub const CANCEL: u16 = 0x0c;
    /// Commands 0..COUNT have names.
    pub const COUNT: usize = 0x13;
    pub const NAMES: [&str; COUNT] = [
        "negotiate",
        "session_setup",
        "logoff",
        "tree_connect",
        "tree_disconnect",
        "create",
        "close",
        "flush",
        "read",
        "write",
        "lock",
        "ioctl",
        "cancel",
        "echo",
        "query_directory",
        "change_notify",
        "query_info",
        "set_info",
        "oplock_break",
    ];
}

/// Header flags.
pub mod flag {
    /// A response (server to client).
    pub const SERVER_TO_REDIR: u32 = 0x1;
    /// The async form of the header (interim and final responses of a pended request).
    pub const ASYNC: u32 = 0x2;
}

/// NTSTATUS values the view treats specially or names.
pub mod status {
    pub const SUCCESS: u32 = 0x0000_0000;
    /// An interim response: the final one follows with the same MessageId.
    pub const PENDING: u32 = 0x0000_0103;
    /// A session setup round that continues (not an error).
    pub const MORE_PROCESSING_REQUIRED: u32 = 0xc000_0016;
    /// Names of common statuses, for the errors table.
    pub const NAMES: [(u32, &str); 22] = [
        (0x8000_0005, "STATUS_BUFFER_OVERFLOW"),
        (0x8000_0006, "STATUS_NO_MORE_FILES"),
        (0xc000_000d, "STATUS_INVALID_PARAMETER"),
        (0xc000_000f, "STATUS_NO_SUCH_FILE"),
        (0xc000_0011, "STATUS_END_OF_FILE"),
        (0xc000_0022, "STATUS_ACCESS_DENIED"),
        (0xc000_0034, "STATUS_OBJECT_NAME_NOT_FOUND"),
        (0xc000_0035, "STATUS_OBJECT_NAME_COLLISION"),
        (0xc000_003a, "STATUS_OBJECT_PATH_NOT_FOUND"),
        (0xc000_0043, "STATUS_SHARING_VIOLATION"),
        (0xc000_006d, "STATUS_LOGON_FAILURE"),
        (0xc000_00ba, "STATUS_FILE_IS_A_DIRECTORY"),
        (0xc000_00bb, "STATUS_NOT_SUPPORTED"),
        (0xc000_00c9, "STATUS_NETWORK_NAME_DELETED"),
        (0xc000_00cc, "STATUS_BAD_NETWORK_NAME"),
        (0xc000_0103, "STATUS_NOT_A_DIRECTORY"),
        (0xc000_0120, "STATUS_CANCELLED"),
        (0xc000_0128, "STATUS_FILE_CLOSED"),
        (0xc000_0203, "STATUS_USER_SESSION_DELETED"),
        (0xc000_0225, "STATUS_NOT_FOUND"),
        (0xc000_0016, "STATUS_MORE_PROCESSING_REQUIRED"),
        (0x0000_0103, "STATUS_PENDING"),
    ];

    /// `STATUS_NAME` or the hex value.
    pub fn name(s: u32) -> String {
        NAMES
            .iter()
            .find(|(v, _)| *v == s)
            .map_or_else(|| format!("0x{s:08x}"), |(_, n)| (*n).to_string())
    }

    /// An error or warning the view counts (not success, pending or "more processing").
    pub fn is_error(s: u32) -> bool {
        !matches!(s, SUCCESS | PENDING | MORE_PROCESSING_REQUIRED)
    }
}

/// SESSION_SETUP response SessionFlags: the session encrypts its messages.
pub const SESSION_FLAG_ENCRYPT_DATA: u16 = 0x0004;

/// A command name (`cmd_0x1f` outside the table).
pub fn command_name(c: u16) -> String {
    cmd::NAMES
        .get(c as usize)
        .map_or_else(|| format!("cmd_0x{c:02x}"), |n| (*n).to_string())
}

/// Dialect names (`2.0.2` … `3.1.1`).
pub fn dialect_name(d: u16) -> String {
    match d {
        0x0202 => "2.0.2".into(),
        0x0210 => "2.1".into(),
        0x0300 => "3.0".into(),
        0x0302 => "3.0.2".into(),
        0x0311 => "3.1.1".into(),
        0x02ff => "2.???".into(),
        d => format!("0x{d:04x}"),
    }
}

fn u16le(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32le(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64le(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// One SMB2 header and what the view reads from its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smb2 {
    pub command: u16,
    pub status: u32,
    pub flags: u32,
    pub message_id: u64,
    pub session_id: u64,
    /// 0 in the async form of the header (it has an AsyncId there instead).
    pub tree_id: u32,
    pub body: Body,
}

impl Smb2 {
    pub fn response(&self) -> bool {
        self.flags & flag::SERVER_TO_REDIR != 0
    }
}

/// The body fields the view uses; `Other` for everything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// NEGOTIATE response: the dialect chosen.
    NegotiateResponse {
        dialect: u16,
    },
    /// SESSION_SETUP response: SessionFlags.
    SessionSetupResponse {
        session_flags: u16,
    },
    /// TREE_CONNECT request: the share's path (`\\server\share`).
    TreeConnectRequest {
        path: String,
    },
    /// CREATE response: the FileId of the open.
    CreateResponse {
        file_id: [u8; 16],
    },
    /// CLOSE request: the FileId it closes.
    CloseRequest {
        file_id: [u8; 16],
    },
    Other,
}

/// One message in an NBSS frame: an SMB2 header (a compound frame holds several), an
/// encrypted message (its session id), or something else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Smb2(Smb2),
    Encrypted { session_id: u64 },
    Compressed,
    Smb1,
    Unknown,
}

/// The messages of one NetBIOS session message's payload (without its 4-byte header):
/// compounded SMB2 messages follow NextCommand.
pub fn messages(payload: &[u8]) -> Vec<Message> {
    let Some(magic) = payload.get(..4) else {
        return vec![Message::Unknown];
    };
    if magic == TRANSFORM_MAGIC {
        // ProtocolId 4, Signature 16, Nonce 16, OriginalMessageSize 4, Reserved 2, Flags 2.
        return vec![u64le(payload, 44).map_or(Message::Unknown, |session_id| {
            Message::Encrypted { session_id }
        })];
    }
    if magic == COMPRESSED_MAGIC {
        return vec![Message::Compressed];
    }
    if magic == SMB1_MAGIC {
        return vec![Message::Smb1];
    }
    let mut out = Vec::new();
    let mut off = 0usize;
    // A compound holds a bounded number of messages; a loop in NextCommand cannot spin.
    for _ in 0..64 {
        let Some(m) = payload.get(off..) else { break };
        match header(m) {
            Some((h, next)) => {
                out.push(Message::Smb2(h));
                if next == 0 {
                    break;
                }
                off += next as usize;
            }
            None => {
                out.push(Message::Unknown);
                break;
            }
        }
    }
    out
}

/// Parse one SMB2 header (and its body's fields) at the start of `m`; with NextCommand.
fn header(m: &[u8]) -> Option<(Smb2, u32)> {
    if m.get(..4)? != SMB2_MAGIC || u16le(m, 4)? as usize != HEADER_LEN {
        return None;
    }
    let status = u32le(m, 8)?;
    let command = u16le(m, 12)?;
    let flags = u32le(m, 16)?;
    let next = u32le(m, 20)?;
    let message_id = u64le(m, 24)?;
    let tree_id = if flags & flag::ASYNC != 0 {
        0
    } else {
        u32le(m, 36)?
    };
    let session_id = u64le(m, 40)?;
    let response = flags & flag::SERVER_TO_REDIR != 0;
    let end = if next == 0 {
        m.len()
    } else {
        (next as usize).min(m.len())
    };
    let body = m.get(HEADER_LEN..end).unwrap_or(&[]);
    let ok = status == status::SUCCESS;
    let b = match (command, response) {
        (cmd::NEGOTIATE, true) if ok => {
            u16le(body, 4).map_or(Body::Other, |dialect| Body::NegotiateResponse { dialect })
        }
        (cmd::SESSION_SETUP, true) => u16le(body, 2).map_or(Body::Other, |session_flags| {
            Body::SessionSetupResponse { session_flags }
        }),
        (cmd::TREE_CONNECT, false) => {
            tree_path(m, body).map_or(Body::Other, |path| Body::TreeConnectRequest { path })
        }
        // StructureSize 2, OplockLevel 1, Flags 1, CreateAction 4, four times 8, size
        // twice 8, attributes 4, Reserved2 4: FileId at 64.
        (cmd::CREATE, true) if ok => {
            file_id(body, 64).map_or(Body::Other, |file_id| Body::CreateResponse { file_id })
        }
        // StructureSize 2, Flags 2, Reserved 4: FileId at 8.
        (cmd::CLOSE, false) => {
            file_id(body, 8).map_or(Body::Other, |file_id| Body::CloseRequest { file_id })
        }
        _ => Body::Other,
    };
    Some((
        Smb2 {
            command,
            status,
            flags,
            message_id,
            session_id,
            tree_id,
            body: b,
        },
        next,
    ))
}

fn file_id(body: &[u8], off: usize) -> Option<[u8; 16]> {
    body.get(off..off + 16)?.try_into().ok()
}

/// TREE_CONNECT request: PathOffset (from the header's start) at body 4, PathLength at 6,
/// the path in UTF-16LE.
fn tree_path(m: &[u8], body: &[u8]) -> Option<String> {
    let off = u16le(body, 4)? as usize;
    let len = u16le(body, 6)? as usize;
    let raw = m.get(off..off + len)?;
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Some(String::from_utf16_lossy(&units))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An SMB2 header with `body` after it (and NextCommand 0).
    pub fn msg(
        command: u16,
        response: bool,
        status: u32,
        mid: u64,
        sid: u64,
        tid: u32,
        body: &[u8],
    ) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        m[..4].copy_from_slice(&SMB2_MAGIC);
        m[4..6].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        m[8..12].copy_from_slice(&status.to_le_bytes());
        m[12..14].copy_from_slice(&command.to_le_bytes());
        let flags = if response { flag::SERVER_TO_REDIR } else { 0 };
        m[16..20].copy_from_slice(&flags.to_le_bytes());
        m[24..32].copy_from_slice(&mid.to_le_bytes());
        m[36..40].copy_from_slice(&tid.to_le_bytes());
        m[40..48].copy_from_slice(&sid.to_le_bytes());
        m.extend_from_slice(body);
        m
    }

    pub fn tree_connect_request(mid: u64, sid: u64, path: &str) -> Vec<u8> {
        let p: Vec<u8> = path.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        let mut body = vec![9, 0, 0, 0];
        body.extend_from_slice(&((HEADER_LEN + 8) as u16).to_le_bytes());
        body.extend_from_slice(&(p.len() as u16).to_le_bytes());
        body.extend_from_slice(&p);
        msg(cmd::TREE_CONNECT, false, 0, mid, sid, 0, &body)
    }

    #[test]
    fn headers_bodies_and_compounds() {
        let mut neg = vec![65, 0, 1, 0];
        neg.extend_from_slice(&0x0311u16.to_le_bytes());
        let m = msg(cmd::NEGOTIATE, true, 0, 0, 0, 0, &neg);
        let [Message::Smb2(h)] = &messages(&m)[..] else {
            panic!("{:?}", messages(&m))
        };
        assert!(h.response());
        assert_eq!(h.body, Body::NegotiateResponse { dialect: 0x0311 });
        assert_eq!(dialect_name(0x0311), "3.1.1");

        let tc = tree_connect_request(4, 77, "\\\\198.18.0.2\\share");
        let [Message::Smb2(h)] = &messages(&tc)[..] else {
            panic!()
        };
        assert_eq!(h.session_id, 77);
        assert_eq!(
            h.body,
            Body::TreeConnectRequest {
                path: "\\\\198.18.0.2\\share".into()
            }
        );

        // A compound: CREATE + CLOSE, NextCommand 8-aligned.
        let mut a = msg(cmd::CREATE, false, 0, 5, 77, 1, &[0u8; 60]);
        let next = a.len().next_multiple_of(8);
        a.resize(next, 0);
        a[20..24].copy_from_slice(&(next as u32).to_le_bytes());
        let mut close = vec![24, 0, 0, 0, 0, 0, 0, 0];
        close.extend_from_slice(&[7u8; 16]);
        a.extend(msg(cmd::CLOSE, false, 0, 6, 77, 1, &close));
        let ms = messages(&a);
        assert_eq!(ms.len(), 2, "{ms:?}");
        let Message::Smb2(c) = &ms[1] else { panic!() };
        assert_eq!(c.body, Body::CloseRequest { file_id: [7; 16] });
    }

    #[test]
    fn truncated_foreign_and_encrypted_messages() {
        for n in 0..HEADER_LEN {
            let m = msg(cmd::CREATE, true, 0, 1, 1, 1, &[]);
            let _ = messages(&m[..n]); // no panic
        }
        assert_eq!(messages(b"GET / HTTP/1.1"), vec![Message::Unknown]);
        let mut t = vec![0u8; 52];
        t[..4].copy_from_slice(&TRANSFORM_MAGIC);
        t[44..52].copy_from_slice(&99u64.to_le_bytes());
        assert_eq!(messages(&t), vec![Message::Encrypted { session_id: 99 }]);
        // A NextCommand pointing past the end stops the walk.
        let mut m = msg(0x0d, false, 0, 1, 1, 1, &[4, 0, 0, 0]);
        m[20..24].copy_from_slice(&4000u32.to_le_bytes());
        assert_eq!(messages(&m).len(), 1);
        assert_eq!(status::name(0xc000_0022), "STATUS_ACCESS_DENIED");
        assert_eq!(status::name(0xc0ff_0001), "0xc0ff0001");
        assert!(!status::is_error(status::MORE_PROCESSING_REQUIRED));
    }
}
