//! Safe wrappers over the kernel helpers, context fields and map lookups the programs use
//! that the aya API leaves `unsafe`, each with the reason it is sound.

use core::borrow::Borrow;

use aya_ebpf::{
    bindings::{bpf_fib_lookup, sockaddr, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_F_CURRENT_CPU},
    helpers::{
        bpf_bind, bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_perf_event_output, bpf_redirect, bpf_redirect_neigh, bpf_xdp_adjust_meta,
    },
    maps::{HashMap, LruHashMap, PerfEventArray},
    programs::{SockAddrContext, TcContext, XdpContext},
    EbpfContext,
};

/// CLOCK_MONOTONIC, nanoseconds.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments, callable from every program type.
    unsafe { bpf_ktime_get_ns() }
}

/// `bpf_redirect(ifindex, 0)`: send the packet out of `ifindex` once the program returns.
/// Returns the verdict to return (`TC_ACT_REDIRECT`, or `TC_ACT_SHOT` for a bad ifindex).
#[inline(always)]
pub fn redirect(ifindex: u32) -> i32 {
    // SAFETY: takes plain integers; the kernel validates the ifindex when it redirects.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Send a tc program's packet out of the interface of the route to its destination (`fib`:
/// the lookup's parameters, the destination and family filled in, `ifindex` the interface the
/// lookup is made from), its link-layer header made by the kernel's neighbour table
/// (`bpf_redirect_neigh`, Linux 5.10). `None` when there is no such route (or the lookup
/// refuses: forwarding off, not a unicast route): nothing was changed.
#[inline(always)]
pub fn redirect_by_route(ctx: &TcContext, fib: &mut bpf_fib_lookup) -> Option<i32> {
    // SAFETY: `ctx.skb.skb` is this tc program's context; `fib` is a whole, aligned
    // `bpf_fib_lookup` the helper reads and writes within its size.
    let rc = unsafe {
        aya_ebpf::helpers::bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    // The route is found whether or not the next hop's address is resolved yet (the
    // neighbour table resolves it on the way out).
    if rc != 0 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return None;
    }
    // SAFETY: takes plain integers and no next hop (the kernel looks it up); the kernel
    // validates the ifindex when it redirects.
    Some(unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) as i32 })
}

/// `bpf_fib_lookup` for a tc program's packet (`fib` filled in as for
/// [`redirect_by_route`]): the helper's return code (`BPF_FIB_LKUP_RET_*`). Without GSO the
/// packet's length is checked against the route's device (`BPF_FIB_LKUP_RET_FRAG_NEEDED`).
#[inline(always)]
pub fn fib_lookup_tc(ctx: &TcContext, fib: &mut bpf_fib_lookup) -> i64 {
    // SAFETY: as in `redirect_by_route`.
    unsafe {
        aya_ebpf::helpers::bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    }
}

/// `bpf_fib_lookup` for an XDP program's packet: `fib.tot_len` is checked against the route's
/// MTU (`BPF_FIB_LKUP_RET_FRAG_NEEDED`).
#[inline(always)]
pub fn fib_lookup_xdp(ctx: &XdpContext, fib: &mut bpf_fib_lookup) -> i64 {
    // SAFETY: `ctx.ctx` is the `xdp_md` the kernel passed to this program; `fib` is a whole,
    // aligned `bpf_fib_lookup` the helper reads and writes within its size.
    unsafe {
        aya_ebpf::helpers::bpf_fib_lookup(
            ctx.ctx as *mut _,
            fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    }
}

/// Grow (negative `delta`) or shrink the XDP metadata area in front of the packet. True on
/// success. Invalidates every `Frame` of this packet: build new ones after the call.
#[inline(always)]
pub fn xdp_adjust_meta(ctx: &XdpContext, delta: i32) -> bool {
    // SAFETY: `ctx.ctx` is the `xdp_md` the kernel passed to this program; the helper checks
    // `delta` against the headroom and fails without changing anything when it does not fit.
    unsafe { bpf_xdp_adjust_meta(ctx.ctx, delta) == 0 }
}

/// `skb->pkt_type` (PACKET_HOST, PACKET_OTHERHOST, ...).
#[inline(always)]
pub fn skb_pkt_type(ctx: &TcContext) -> u32 {
    // SAFETY: `ctx.skb.skb` is the `__sk_buff` the kernel passed to this tc program, valid
    // for its whole run; `pkt_type` is readable by tc programs.
    unsafe { (*ctx.skb.skb).pkt_type }
}

/// `skb->vlan_tci`: the VLAN tag the driver or stack already took out of the frame (0 if none).
#[inline(always)]
pub fn skb_vlan_tci(ctx: &TcContext) -> u32 {
    // SAFETY: as in `skb_pkt_type`; `vlan_tci` is readable by tc programs.
    unsafe { (*ctx.skb.skb).vlan_tci }
}

/// `skb->ingress_ifindex`: the interface the packet arrived on.
#[inline(always)]
pub fn skb_ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: as in `skb_pkt_type`; `ingress_ifindex` is readable by tc programs.
    unsafe { (*ctx.skb.skb).ingress_ifindex }
}

/// `xdp_md->ingress_ifindex`: the interface an XDP program's packet arrived on.
#[inline(always)]
pub fn xdp_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: `ctx.ctx` is the `xdp_md` the kernel passed to this program, valid for its run.
    unsafe { (*ctx.ctx).ingress_ifindex }
}

/// `skb->ifindex`: the interface a tc program runs on.
#[inline(always)]
pub fn skb_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: as in `skb_pkt_type`; `ifindex` is readable by tc programs.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Cookie of the socket a cgroup sock_addr hook runs for.
#[inline(always)]
pub fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: `ctx.sock_addr` is the `bpf_sock_addr` context the kernel passed to this
    // program, the argument the helper expects in sock_addr programs.
    unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) }
}

/// cgroup v2 id of the calling task.
#[inline(always)]
pub fn current_cgroup_id() -> u64 {
    // SAFETY: a helper without arguments, allowed in cgroup sock_addr programs.
    unsafe { bpf_get_current_cgroup_id() }
}

/// Destination IPv4 address the task connects / sends to, network order.
#[inline(always)]
pub fn sock_user_ip4(ctx: &SockAddrContext) -> u32 {
    // SAFETY: `ctx.sock_addr` is the context the kernel passed to this program, valid for its
    // whole run; `user_ip4` is readable by connect4 and sendmsg4 programs.
    unsafe { (*ctx.sock_addr).user_ip4 }
}

/// Set the source IPv4 address (network order) of an unconnected UDP send.
#[inline(always)]
pub fn sock_set_msg_src_ip4(ctx: &SockAddrContext, ip: u32) {
    // SAFETY: as in `sock_user_ip4`; `msg_src_ip4` is writable by sendmsg4 programs (the
    // verifier rejects the store anywhere else).
    unsafe { (*ctx.sock_addr).msg_src_ip4 = ip };
}

const AF_INET: u16 = 2;

/// `struct sockaddr_in`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

/// Bind the socket of a connect4 hook to `addr` (network order), port 0 (the kernel picks
/// the port at connect time). Returns the helper's result: 0 or a negative errno.
#[inline(always)]
pub fn bind4(ctx: &SockAddrContext, addr: u32) -> i64 {
    let mut sa = SockaddrIn {
        family: AF_INET,
        port: 0,
        addr,
        zero: [0; 8],
    };
    // SAFETY: `ctx.sock_addr` is this connect4 program's context; `sa` is a complete
    // `sockaddr_in` on the stack whose size is passed with it, and outlives the call.
    unsafe {
        bpf_bind(
            ctx.sock_addr,
            &mut sa as *mut SockaddrIn as *mut sockaddr,
            core::mem::size_of::<SockaddrIn>() as i32,
        )
    }
}

/// A copy of the value under `key` in a hash map.
///
/// Only for maps whose values are single words (`u32`, `u64`): a value userspace replaces
/// while the program reads it is then seen whole, old or new.
#[inline(always)]
pub fn hash_get<K, V: Copy>(map: &HashMap<K, V>, key: impl Borrow<K>) -> Option<V> {
    let p = map.get_ptr(key)?;
    // SAFETY: a successful lookup returns a pointer to the element's value, aligned for `V`,
    // which the kernel frees only after an RCU grace period, and programs run inside an RCU
    // read-side section: the memory is valid for this read. The value is copied out at once,
    // so no reference to it outlives the call.
    Some(unsafe { core::ptr::read(p) })
}

/// A copy of the value under `key` in an LRU hash map (values written by programs only; a
/// value another CPU replaces meanwhile may be seen half old, half new, which callers accept
/// for the statistics-grade fields they read).
#[inline(always)]
pub fn lru_get<K, V: Copy>(map: &LruHashMap<K, V>, key: impl Borrow<K>) -> Option<V> {
    let p = map.get_ptr(key)?;
    // SAFETY: as in `hash_get`: the element stays allocated for this RCU read-side section,
    // the pointer is aligned for `V`, and the value is copied out at once.
    Some(unsafe { core::ptr::read(p) })
}

/// `xdp_md->ingress_ifindex`: the interface an XDP program's packet arrived on.
#[inline(always)]
pub fn xdp_ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: `ctx.ctx` is the `xdp_md` the kernel passed to this XDP program, valid for its
    // whole run; `ingress_ifindex` is readable by XDP programs.
    unsafe { (*ctx.ctx).ingress_ifindex }
}

/// Largest packet length `perf_output_with_packet` can ask for (`BPF_F_CTXLEN_MASK`).
pub const PERF_CTXLEN_MAX: u32 = 0xfffff;

/// `bpf_perf_event_output` on this CPU's buffer of `map`: the bytes of `hdr`, then the first
/// `cap` bytes of the program's packet, which the kernel copies itself (from the XDP buffer or
/// the skb, `cap` passed in the upper flag bits), so no verifier-bounded copy loop is needed.
/// `cap` must not exceed the packet's length (the helper refuses the output otherwise).
/// Returns false when the sample was not written (the CPU's buffer is full, or no reader
/// opened it).
#[inline(always)]
pub fn perf_output_with_packet<C: EbpfContext, T>(
    ctx: &C,
    map: &PerfEventArray<T>,
    hdr: &T,
    cap: u32,
) -> bool {
    let flags = (u64::from(cap & PERF_CTXLEN_MAX) << 32) | BPF_F_CURRENT_CPU;
    // SAFETY: `ctx.as_ptr()` is the context the kernel passed to this XDP or tc program (the
    // helper's expected first argument for both); `map` is a perf event array map declared
    // with `#[map]` (`PerfEventArray` is a transparent wrapper of its definition, whose
    // address the loader relocates to the map); `hdr` is a live `T` whose size is passed with
    // it and outlives the call. The kernel checks `cap` against the packet's length.
    let r = unsafe {
        bpf_perf_event_output(
            ctx.as_ptr(),
            core::ptr::from_ref(map).cast_mut().cast(),
            flags,
            core::ptr::from_ref(hdr).cast_mut().cast(),
            core::mem::size_of::<T>() as u64,
        )
    };
    r == 0
}
