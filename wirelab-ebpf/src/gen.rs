//! `gen_tx`: the packet generator's XDP program, run by BPF_PROG_TEST_RUN in live-frames mode.
//!
//! Each run rewrites the template's source address to the next one of `flows` addresses and
//! returns XDP_TX, which the live-frames test run turns into a transmit on the interface named
//! in the context. IPv4: the header checksum is recomputed and the TCP checksum updated (UDP
//! goes without one); IPv6: the low 32 bits of the source change and the UDP or TCP checksum
//! is updated incrementally (RFC 1624).
use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use wirelab_common::{csum, fw::GenConf};

use crate::{
    counter,
    error::{Error, Result},
    parse::{
        Frame, IPPROTO_TCP, IPPROTO_UDP, IPV4_CSUM_OFF, IPV4_HLEN, IPV4_SADDR_OFF, IPV6_HLEN,
        IPV6_SADDR_OFF, TCP_CSUM_OFF, TCP_HLEN, UDP_CSUM_OFF,
    },
};

#[map]
static GEN_CONF: Array<GenConf> = Array::with_max_entries(1, 0);
#[map]
static GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `GenConf::family` of an IPv6 template (anything else is IPv4).
const FAMILY_IPV6: u32 = 6;
/// `GenConf::l3_off` is masked to this (a bound the verifier can see; templates start the IP
/// header well below it).
const L3_OFF_MASK: u32 = 0x3f;
/// Offset, in an IPv6 header, of the low 32 bits of the source address (the part rewritten).
const IPV6_SADDR_LOW_OFF: usize = IPV6_SADDR_OFF + 12;
/// A UDP checksum of 0 means "none", which IPv6 forbids; one's complement -0 is sent instead.
const UDP_CSUM_ZERO: u16 = 0xffff;

/// Transmits the frame; drops it when the configuration is missing or the template is shorter
/// than the headers it names.
#[xdp]
pub fn gen_tx(ctx: XdpContext) -> u32 {
    try_gen(&ctx).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
fn try_gen(ctx: &XdpContext) -> Result<u32> {
    let c = *GEN_CONF.get(0).ok_or(Error::Map)?;
    let n = counter::update(&GEN_SEQ, 0, |seq| {
        let n = *seq;
        *seq = n + 1;
        n
    })
    .ok_or(Error::Map)?;
    if c.flows <= 1 {
        return Ok(xdp_action::XDP_TX);
    }
    let f = Frame::xdp(ctx);
    let l3 = (c.l3_off & L3_OFF_MASK) as usize;
    let saddr = c.src_base.wrapping_add((n % c.flows as u64) as u32);
    let new = saddr.to_be_bytes();
    if c.family == FAMILY_IPV6 {
        // The whole IPv6 header must be there (checked as one range).
        let h = f.at::<[u8; IPV6_HLEN]>(l3)?.get();
        let s = IPV6_SADDR_LOW_OFF;
        let old = [h[s], h[s + 1], h[s + 2], h[s + 3]];
        // Only the checksum field is touched (a UDP frame may end right after its header).
        let at = if c.proto == IPPROTO_TCP as u32 {
            l3 + IPV6_HLEN + TCP_CSUM_OFF
        } else {
            l3 + IPV6_HLEN + UDP_CSUM_OFF
        };
        f.store(l3 + s, new)?;
        let ck = f.at::<[u8; 2]>(at)?.get();
        let mut nc = csum::replace4(u16::from_be_bytes(ck), old, new);
        if c.proto == IPPROTO_UDP as u32 && nc == 0 {
            nc = UDP_CSUM_ZERO;
        }
        f.store(at, nc.to_be_bytes())?;
        return Ok(xdp_action::XDP_TX);
    }
    let mut h = f.at::<[u8; IPV4_HLEN]>(l3)?.get();
    let s = IPV4_SADDR_OFF;
    let old = [h[s], h[s + 1], h[s + 2], h[s + 3]];
    h[s..s + 4].copy_from_slice(&new);
    // Full IPv4 header checksum (no options in the template).
    h[IPV4_CSUM_OFF] = 0;
    h[IPV4_CSUM_OFF + 1] = 0;
    let cs = csum::ipv4_header(&h);
    f.store(l3 + s, new)?;
    f.store(l3 + IPV4_CSUM_OFF, cs.to_be_bytes())?;
    if c.proto == IPPROTO_TCP as u32 {
        let t = l3 + IPV4_HLEN;
        // The whole TCP header must be there.
        let th = f.at::<[u8; TCP_HLEN]>(t)?.get();
        let ck = [th[TCP_CSUM_OFF], th[TCP_CSUM_OFF + 1]];
        let nc = csum::replace4(u16::from_be_bytes(ck), old, new);
        f.store(t + TCP_CSUM_OFF, nc.to_be_bytes())?;
    }
    Ok(xdp_action::XDP_TX)
}
