//! The deciding side of the capture tap (`wirelab_common::tap`): hand the frame and its
//! decision to the capture program a running `wirelab capture` put in the tool's program array.

use aya_ebpf::{
    maps::{Array, ProgramArray},
    programs::{TcContext, XdpContext},
};
use wirelab_common::{
    tap::{Decision, DECISION_LEN, MAGIC_TC},
    wan::Meta,
};

use crate::{
    parse::{Frame, Plain},
    sys,
};

// SAFETY: four bytes and a u32, valid for every bit pattern, no pointers.
unsafe impl Plain for Decision {}

// SAFETY: `Meta` is `#[repr(C)]` with two `u32` fields and a `u64`, no padding: every bit
// pattern is a valid value and it holds no pointers. (Here, not in `wan`: the capture behind
// wan's tap reads it too.)
unsafe impl Plain for Meta {}
const _: () = assert!(core::mem::size_of::<Meta>() == 16);

/// Returns the verdict to return: `d.action` (the capture program, when it runs, returns it
/// itself). `on[0]` is the ifindex of the interface being captured (0: none), since one
/// program can run on several (wan, lb's NAT interfaces). With no capture this is one array
/// lookup. A redirect (`XDP_REDIRECT`) is set up before the call and survives the tail call.
#[inline(always)]
pub fn xdp(ctx: &XdpContext, on: &Array<u32>, progs: &ProgramArray, d: Decision) -> u32 {
    let captured = on.get(0).map_or(0, |v| *v);
    if captured == 0 || captured != sys::xdp_ingress_ifindex(ctx) {
        return d.action as u32;
    }
    let n = DECISION_LEN as i32;
    if !sys::xdp_adjust_meta(ctx, -n) {
        return d.action as u32;
    }
    if Frame::xdp_meta(ctx).store(0, d).is_ok() {
        // SAFETY: `ctx` is this XDP program's context and the array holds XDP programs only
        // (the kernel refuses another type); on success the call does not return, and the
        // capture program returns `d.action`. On failure (slot empty) nothing changed.
        unsafe { progs.tail_call(ctx, 0) };
    }
    // No capture took it: the frame goes on without the metadata.
    let _ = sys::xdp_adjust_meta(ctx, n);
    d.action as u32
}

/// The tc version of [`xdp`]: `d` (its `action` the tc verdict `verdict` as a byte, its
/// magic [`MAGIC_TC`]) goes in the skb's control block, which the tail call keeps. Returns
/// `verdict` (the capture program, when it runs, returns it itself). A redirect set up
/// before the call survives it.
#[inline(always)]
pub fn tc(
    ctx: &mut TcContext,
    on: &Array<u32>,
    progs: &ProgramArray,
    d: Decision,
    verdict: i32,
) -> i32 {
    let captured = on.get(0).map_or(0, |v| *v);
    if captured == 0 || captured != sys::skb_ifindex(ctx) {
        return verdict;
    }
    let [w0, w1, ..] = ctx.cb_mut() else {
        return verdict;
    };
    *w0 = u32::from_ne_bytes([MAGIC_TC, d.tool, d.what, verdict as u8]);
    *w1 = d.id;
    // SAFETY: `ctx` is this tc program's context and the array holds tc programs only (the
    // kernel refuses another type); on success the call does not return, and the capture
    // program returns the verdict. On failure (slot empty) nothing changed.
    unsafe { progs.tail_call(ctx, 0) };
    verdict
}

/// The decision [`tc`] left in the skb's control block (`None`: not one).
#[inline(always)]
pub fn tc_decision(ctx: &TcContext) -> Option<Decision> {
    let [w0, w1, ..] = ctx.cb() else {
        return None;
    };
    let [magic, tool, what, action] = w0.to_ne_bytes();
    (magic == MAGIC_TC).then_some(Decision {
        magic,
        tool,
        what,
        action,
        id: *w1,
    })
}
