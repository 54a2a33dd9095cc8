//! The names of every map in the kernel objects, one constant per map, grouped by tool (each
//! tool has its own object; a map's name starts with its tool's). The eBPF side declares each
//! map as a `static` of exactly this name (aya names a map after its static); userspace and
//! the tests ask for maps only through these constants, and `wirelab`'s
//! `each_object_holds_its_tools_maps_and_no_other` test checks the objects against [`ALL`]
//! both ways, so a renamed map fails a test instead of failing at attach time.

// capture
pub const CAPTURE_CONF: &str = "CAPTURE_CONF";
pub const CAPTURE_FILTER: &str = "CAPTURE_FILTER";
pub const CAPTURE_EVENTS: &str = "CAPTURE_EVENTS";
pub const CAPTURE_STATS: &str = "CAPTURE_STATS";
pub const CAPTURE_SCRATCH: &str = "CAPTURE_SCRATCH";
pub const CAPTURE_XDP_PROG: &str = "CAPTURE_XDP_PROG";
pub const CAPTURE_TC_PROG: &str = "CAPTURE_TC_PROG";

// fw
pub const FW_GEN: &str = "FW_GEN";
pub const FW_CONF: &str = "FW_CONF";
pub const FW_META: &str = "FW_META";
pub const FW_SRC4: &str = "FW_SRC4";
pub const FW_DST4: &str = "FW_DST4";
pub const FW_SRC6: &str = "FW_SRC6";
pub const FW_DST6: &str = "FW_DST6";
pub const FW_HSRC4: &str = "FW_HSRC4";
pub const FW_HDST4: &str = "FW_HDST4";
pub const FW_HSRC6: &str = "FW_HSRC6";
pub const FW_HDST6: &str = "FW_HDST6";
pub const FW_PROTO: &str = "FW_PROTO";
pub const FW_SPORT: &str = "FW_SPORT";
pub const FW_DPORT: &str = "FW_DPORT";
pub const FW_FLAGS: &str = "FW_FLAGS";
pub const FW_ICMP: &str = "FW_ICMP";
pub const FW_COUNTERS: &str = "FW_COUNTERS";
pub const FW_BUCKETS: &str = "FW_BUCKETS";
pub const FW_LOG: &str = "FW_LOG";
pub const FW_TAP: &str = "FW_TAP";
pub const FW_TAP_ON: &str = "FW_TAP_ON";

// gen
pub const GEN_CONF: &str = "GEN_CONF";
pub const GEN_SEQ: &str = "GEN_SEQ";

// inspect
pub const INSPECT_COUNTERS: &str = "INSPECT_COUNTERS";

// lb
pub const LB_CONF: &str = "LB_CONF";
pub const LB_GEN: &str = "LB_GEN";
pub const LB_VIPS: &str = "LB_VIPS";
pub const LB_VIP_BLOOM: &str = "LB_VIP_BLOOM";
pub const LB_SERVICES: &str = "LB_SERVICES";
pub const LB_BACKENDS: &str = "LB_BACKENDS";
pub const LB_TABLE: &str = "LB_TABLE";
pub const LB_FLOWS: &str = "LB_FLOWS";
pub const LB_SVC_STATS: &str = "LB_SVC_STATS";
pub const LB_BACKEND_STATS: &str = "LB_BACKEND_STATS";
pub const LB_EVENTS: &str = "LB_EVENTS";
pub const LB_NAT: &str = "LB_NAT";
pub const LB_FRAGS: &str = "LB_FRAGS";
pub const LB_VIP_FRAGS: &str = "LB_VIP_FRAGS";
pub const LB_RATE: &str = "LB_RATE";
pub const LB_TAP: &str = "LB_TAP";
pub const LB_TAP_ON: &str = "LB_TAP_ON";
pub const LB_TC_TAP: &str = "LB_TC_TAP";
pub const LB_ICMP_TC: &str = "LB_ICMP_TC";
pub const LB_ICMP_XDP: &str = "LB_ICMP_XDP";
pub const LB_NAT_REWRITE: &str = "LB_NAT_REWRITE";
pub const LB_NAT_SCRATCH: &str = "LB_NAT_SCRATCH";
pub const LB_ICMP_PATCH: &str = "LB_ICMP_PATCH";
pub const LB_ICMP_FIB: &str = "LB_ICMP_FIB";
pub const LB_REPLY_FIB: &str = "LB_REPLY_FIB";

// swarm
pub const SWARM_CONFIG: &str = "SWARM_CONFIG";
pub const SWARM_IDS: &str = "SWARM_IDS";
pub const SWARM_SOCKS: &str = "SWARM_SOCKS";
pub const SWARM_CLAIMS: &str = "SWARM_CLAIMS";
pub const SWARM_NEXT: &str = "SWARM_NEXT";
pub const SWARM_STATS: &str = "SWARM_STATS";

// wan
pub const WAN_CONFIG: &str = "WAN_CONFIG";
pub const WAN_PROFILES: &str = "WAN_PROFILES";
pub const WAN_LOSS: &str = "WAN_LOSS";
pub const WAN_COUNTERS: &str = "WAN_COUNTERS";
pub const WAN_CLASS_HOSTS: &str = "WAN_CLASS_HOSTS";
pub const WAN_CLASSES: &str = "WAN_CLASSES";
pub const WAN_XSKS: &str = "WAN_XSKS";
pub const WAN_TAP: &str = "WAN_TAP";
pub const WAN_TAP_ON: &str = "WAN_TAP_ON";

/// Every map of the object.
pub const ALL: &[&str] = &[
    CAPTURE_CONF,
    CAPTURE_FILTER,
    CAPTURE_EVENTS,
    CAPTURE_STATS,
    CAPTURE_SCRATCH,
    CAPTURE_XDP_PROG,
    CAPTURE_TC_PROG,
    FW_GEN,
    FW_CONF,
    FW_META,
    FW_SRC4,
    FW_DST4,
    FW_SRC6,
    FW_DST6,
    FW_HSRC4,
    FW_HDST4,
    FW_HSRC6,
    FW_HDST6,
    FW_PROTO,
    FW_SPORT,
    FW_DPORT,
    FW_FLAGS,
    FW_ICMP,
    FW_COUNTERS,
    FW_BUCKETS,
    FW_LOG,
    FW_TAP,
    FW_TAP_ON,
    GEN_CONF,
    GEN_SEQ,
    INSPECT_COUNTERS,
    LB_CONF,
    LB_GEN,
    LB_VIPS,
    LB_VIP_BLOOM,
    LB_SERVICES,
    LB_BACKENDS,
    LB_TABLE,
    LB_FLOWS,
    LB_SVC_STATS,
    LB_BACKEND_STATS,
    LB_EVENTS,
    LB_NAT,
    LB_FRAGS,
    LB_VIP_FRAGS,
    LB_RATE,
    LB_TAP,
    LB_TAP_ON,
    LB_TC_TAP,
    LB_NAT_REWRITE,
    LB_NAT_SCRATCH,
    LB_ICMP_TC,
    LB_ICMP_XDP,
    LB_ICMP_PATCH,
    LB_ICMP_FIB,
    LB_REPLY_FIB,
    SWARM_CONFIG,
    SWARM_IDS,
    SWARM_SOCKS,
    SWARM_CLAIMS,
    SWARM_NEXT,
    SWARM_STATS,
    WAN_CONFIG,
    WAN_PROFILES,
    WAN_LOSS,
    WAN_COUNTERS,
    WAN_CLASS_HOSTS,
    WAN_CLASSES,
    WAN_XSKS,
    WAN_TAP,
    WAN_TAP_ON,
];
