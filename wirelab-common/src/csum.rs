//! Internet checksum arithmetic (RFC 1071, RFC 1624), used by the generator's kernel program
//! and by its AF_PACKET path in userspace.

/// Fold a 32-bit one's-complement sum to 16 bits (two folds suffice for any `u32`).
#[inline(always)]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum of a 20-byte IPv4 header whose checksum field (bytes 10-11) is zero.
#[inline(always)]
pub fn ipv4_header(h: &[u8; 20]) -> u16 {
    let mut s: u32 = 0;
    let mut i = 0;
    while i < 20 {
        s += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    !fold(s)
}

/// Update checksum `hc` for 4 covered bytes changed from `old` to `new` (RFC 1624:
/// HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub fn replace4(hc: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let mut acc: u32 = (!hc) as u32;
    acc += (!u16::from_be_bytes([old[0], old[1]])) as u32;
    acc += (!u16::from_be_bytes([old[2], old[3]])) as u32;
    acc += u16::from_be_bytes([new[0], new[1]]) as u32;
    acc += u16::from_be_bytes([new[2], new[3]]) as u32;
    !fold(acc)
}
