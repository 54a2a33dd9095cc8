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

/// Update checksum `hc` for 2 covered bytes (a port) changed from `old` to `new` (RFC 1624).
#[inline(always)]
pub fn replace2(hc: u16, old: [u8; 2], new: [u8; 2]) -> u16 {
    let mut acc: u32 = (!hc) as u32;
    acc += (!u16::from_be_bytes(old)) as u32;
    acc += u16::from_be_bytes(new) as u32;
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum of `words` (one's complement of their one's-complement sum).
    fn full(words: &[u16]) -> u16 {
        !fold(words.iter().map(|w| *w as u32).sum())
    }

    #[test]
    fn incremental_updates_equal_a_full_recompute() {
        let mut w = [
            0x4500u16, 0x0054, 0x1c46, 0x4000, 0x4006, 0xc612, 0x0001, 0xc612, 0x0264,
        ];
        let hc = full(&w);
        // A port: one 16-bit word.
        let (old, new) = (w[3], 0xd431u16);
        w[3] = new;
        let hc2 = replace2(hc, old.to_be_bytes(), new.to_be_bytes());
        assert_eq!(hc2, full(&w));
        // An address: two words.
        let (a, b) = (w[5].to_be_bytes(), w[6].to_be_bytes());
        w[6] = 0x02fa;
        let (c, d) = (w[5].to_be_bytes(), w[6].to_be_bytes());
        let hc3 = replace4(hc2, [a[0], a[1], b[0], b[1]], [c[0], c[1], d[0], d[1]]);
        assert_eq!(hc3, full(&w));
    }
}
