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

use crate::parse::Frame;

#[map]
static GEN_CONF: Array<GenConf> = Array::with_max_entries(1, 0);
#[map]
static GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn gen_tx(ctx: XdpContext) -> u32 {
    match try_gen(&ctx) {
        Ok(()) => xdp_action::XDP_TX,
        Err(()) => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn try_gen(ctx: &XdpContext) -> Result<(), ()> {
    let c = *GEN_CONF.get(0).ok_or(())?;
    let seq = GEN_SEQ.get_ptr_mut(0).ok_or(())?;
    let n = unsafe {
        let n = *seq;
        *seq = n + 1;
        n
    };
    if c.flows <= 1 {
        return Ok(());
    }
    let f = Frame::new(ctx.data(), ctx.data_end());
    let l3 = (c.l3_off & 0x3f) as usize;
    let saddr = c.src_base.wrapping_add((n % c.flows as u64) as u32);
    let new = saddr.to_be_bytes();
    if c.family == 6 {
        let ip = f.ptr::<[u8; 40]>(l3).map_err(|_| ())? as *mut [u8; 40];
        let h = unsafe { &mut *ip };
        let old = [h[20], h[21], h[22], h[23]];
        h[20..24].copy_from_slice(&new);
        // Only the checksum field is touched (a UDP frame may end right after its header).
        let at = if c.proto == 6 { l3 + 56 } else { l3 + 46 };
        let cp = f.ptr::<[u8; 2]>(at).map_err(|_| ())? as *mut [u8; 2];
        let ck = unsafe { &mut *cp };
        let mut nc = csum::replace4(u16::from_be_bytes(*ck), old, new);
        if c.proto == 17 && nc == 0 {
            nc = 0xffff; // 0 means "no checksum", which IPv6 forbids
        }
        *ck = nc.to_be_bytes();
        return Ok(());
    }
    let ip = f.ptr::<[u8; 20]>(l3).map_err(|_| ())? as *mut [u8; 20];
    let h = unsafe { &mut *ip };
    let old = [h[12], h[13], h[14], h[15]];
    h[12..16].copy_from_slice(&new);
    // Full IPv4 header checksum (no options in the template).
    h[10] = 0;
    h[11] = 0;
    let cs = csum::ipv4_header(h);
    h[10..12].copy_from_slice(&cs.to_be_bytes());
    if c.proto == 6 {
        let tp = f.ptr::<[u8; 20]>(l3 + 20).map_err(|_| ())? as *mut [u8; 20];
        let t = unsafe { &mut *tp };
        let nc = csum::replace4(u16::from_be_bytes([t[16], t[17]]), old, new);
        t[16..18].copy_from_slice(&nc.to_be_bytes());
    }
    Ok(())
}
