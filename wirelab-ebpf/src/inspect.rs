//! `inspect`: count every frame arriving on an interface by class, then pass it on.
use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use wirelab_common::{
    inspect::{class, NUM_CLASSES},
    Counter,
};

use crate::{
    counter,
    parse::{
        self, Frame, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP,
    },
};

#[map]
static INSPECT_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(NUM_CLASSES, 0);

/// Counts and always passes: inspect never changes what the host sees.
#[xdp]
pub fn inspect(ctx: XdpContext) -> u32 {
    try_inspect(&ctx);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn bump(idx: u32, bytes: u64) {
    counter::update(&INSPECT_COUNTERS, idx, |c| {
        c.packets += 1;
        c.bytes += bytes;
    });
}

#[inline(always)]
fn try_inspect(ctx: &XdpContext) {
    let f = Frame::xdp(ctx);
    let bytes = f.len() as u64;
    bump(class::TOTAL, bytes);
    let Ok(p) = parse::parse(&f) else {
        bump(class::MALFORMED, bytes);
        return;
    };
    if p.vlans > 0 {
        bump(class::VLAN, bytes);
    }
    match p.ethertype {
        ETH_P_ARP => {
            bump(class::ARP, bytes);
            return;
        }
        ETH_P_IP => bump(class::IPV4, bytes),
        ETH_P_IPV6 => bump(class::IPV6, bytes),
        _ => {
            bump(class::OTHER, bytes);
            return;
        }
    }
    if p.fragment {
        bump(class::FRAGMENT, bytes);
    }
    if p.ip_options {
        bump(class::IP_OPTIONS, bytes);
    }
    match p.ip_proto {
        IPPROTO_ICMP => bump(class::ICMP, bytes),
        IPPROTO_ICMPV6 => bump(class::ICMPV6, bytes),
        IPPROTO_TCP => bump(class::TCP, bytes),
        IPPROTO_UDP => bump(class::UDP, bytes),
        _ => bump(class::OTHER, bytes),
    }
}
