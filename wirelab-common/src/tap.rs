//! `tap`: how a deciding program (the XDP programs of fw, lb and wan, and lb's tc program)
//! hands each packet, with what it decided, to a `wirelab capture` running on the same
//! interface.
//!
//! Only one XDP program runs on an interface, so capture cannot see what fw drops from its
//! own hook. Instead the deciding program owns a one-slot program array (`FW_TAP`, `LB_TAP`,
//! `WAN_TAP`) and a flag (`*_TAP_ON`); a capture on that interface loads `capture_xdp_tap`,
//! puts it in the slot and sets the flag to the interface's ifindex (one program can run on
//! several interfaces: wan on two, lb on its NAT interfaces too). For a frame arriving on
//! that interface the deciding program then writes its [`Decision`] into the XDP metadata in
//! front of the frame (in front of wan's own metadata for its engine) and tail-calls the
//! capture program, which copies the frame out with the decision, removes the decision and
//! returns the deciding program's verdict. With no capture, the cost is one array lookup
//! (inlined by the verifier) per packet.
//!
//! lb's tc program does the same through its own program array (`LB_TC_TAP`: a program
//! array holds one program type) and `capture_tc_tap`, with the decision in the skb's control
//! block (`cb[0]`, `cb[1]`), which a tail call keeps, and [`MAGIC_TC`].

/// Which program decided.
pub mod tool {
    /// No decision: capture's own hook.
    pub const NONE: u8 = 0;
    pub const FW: u8 = 1;
    pub const LB: u8 = 2;
    pub const WAN: u8 = 3;
}

/// What an fw decision refers to (`Decision::what`).
pub mod fw_what {
    /// A rule matched: `Decision::id` is the rule's id (`fw stats`' `id`).
    pub const RULE: u8 = 0;
    /// No rule matched: the default policy.
    pub const DEFAULT: u8 = 1;
    /// The parser refused the frame: the malformed policy.
    pub const MALFORMED: u8 = 2;
    /// Neither IPv4 nor IPv6: the non-IP policy.
    pub const NON_IP: u8 = 3;
    /// A rate-limit rule's packet over its rate (dropped): `id` is the rule's id.
    pub const RATE_LIMITED: u8 = 4;
}

/// What an lb decision refers to (`Decision::what`).
pub mod lb_what {
    /// Not a service's packet (nor a NAT reply): passed to the stack.
    pub const NOT_SERVICE: u8 = 0;
    /// A tracked flow's packet, sent to its backend: `id` is the backend's id.
    pub const TRACKED: u8 = 1;
    /// Hashed through the Maglev table (a new flow): `id` is the backend's id.
    pub const HASHED: u8 = 2;
    /// Dropped: `id` is the reason (`lb::event::*`).
    pub const DROPPED: u8 = 3;
    /// A NAT backend's reply, its source translated back to the VIP.
    pub const NAT_REPLY: u8 = 4;
}

/// What a wan decision refers to (`Decision::what`); `id` is the class id.
pub mod wan_what {
    /// Handed to the timing engine (delay, rate, duplicate, corrupt, reorder). A drop there
    /// reaches a capture behind the tap as a note from the engine (`QUEUE_DROP`,
    /// `LINK_ENDED`, `LINK_DOWN`).
    pub const ENGINE: u8 = 0;
    /// Passed on unimpaired (the class has nothing to hold).
    pub const FAST: u8 = 1;
    /// Dropped by the loss model.
    pub const LOST: u8 = 2;
    /// Dropped in a blackhole period.
    pub const BLACKHOLE: u8 = 3;
    /// Meant for the engine but passed on unimpaired (no socket on its queue).
    pub const FALLBACK: u8 = 4;
    /// Handed to the engine, which dropped it: its queue (or its link's queue) was full.
    /// Never set by the kernel: the capture relabels an `ENGINE` frame from the engine's note.
    pub const QUEUE_DROP: u8 = 5;
    /// Handed to the engine, which dropped it: its `once` trace had ended (the link is gone).
    pub const LINK_ENDED: u8 = 6;
    /// Handed to the engine, which dropped it: the interface it was to leave by was down
    /// when it was due (a `flap` or `down` of the timeline, or the link itself).
    pub const LINK_DOWN: u8 = 7;
}

/// `Decision::magic`: the metadata in front of the frame is a decision.
pub const MAGIC: u8 = 0xd5;

/// `Decision::magic` of a decision made at tc (lb on its tc path), handed over in the skb's
/// control block: its `action` is the tc verdict as a byte (`TC_ACT_UNSPEC` = 255, `OK` 0,
/// `SHOT` 2, `REDIRECT` 7), which the capture program returns.
pub const MAGIC_TC: u8 = 0xd6;

/// A deciding program's verdict on one frame: 8 bytes, the XDP metadata the tap carries and
/// the tail of every captured frame's [`crate::capture::EventHeader`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// [`MAGIC`] when set by a deciding program.
    pub magic: u8,
    /// `tool::*`.
    pub tool: u8,
    /// Tool-specific kind (`fw_what::*`).
    pub what: u8,
    /// The program's return code (XDP action: 1 drop, 2 pass, 3 tx, 4 redirect).
    pub action: u8,
    /// Rule id (fw), backend id or drop reason (lb), class id (wan).
    pub id: u32,
}

/// Bytes of [`Decision`] (a multiple of 4, as `bpf_xdp_adjust_meta` requires).
pub const DECISION_LEN: usize = core::mem::size_of::<Decision>();

#[cfg(feature = "user")]
unsafe impl aya::Pod for Decision {}
