//! The session's configuration, limits, inputs and outputs: what an async shell needs to
//! drive a [`Session`](super::Session).

use cartwise_schema::{BranchId, ChainId, ClockReading, DeviceId, WallMillis};

use crate::frame::FrameError;
use crate::message::{
    Docs, ErrorBody, Heartbeat, Hello, LedgerAck, MessageError, MessageKind, Role, SyncBody,
    Telemetry, TelemetryAck,
};
use crate::signed_heads::SignedHeads;

/// The major protocol version; also in the ALPN ([`ALPN`]). Peers of different majors never
/// talk.
pub const PROTOCOL_MAJOR: u16 = 1;
/// The highest minor version this implementation speaks. Minor 1 added `SyncIdle`
/// (capability `sync-idle`); minor 2 the technician session's `Bundle`, `BundleResult`,
/// `BusRequest` and `BusReply` (capability `technician`).
pub const PROTOCOL_MINOR: u16 = 2;
/// The QUIC ALPN of this major version.
pub const ALPN: &[u8] = crate::identity::ALPN_SYNC;

/// Heartbeat interval when the configuration does not say (30 s).
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u32 = 30_000;
/// Shortest heartbeat interval a peer may announce; shorter ones are raised to it.
pub const HEARTBEAT_INTERVAL_MS_MIN: u32 = 1_000;
/// Longest heartbeat interval a peer may announce; longer ones are lowered to it.
pub const HEARTBEAT_INTERVAL_MS_MAX: u32 = 300_000;
/// A peer is gone after this many of its heartbeat intervals without a frame.
pub const HEARTBEAT_MISSES_MAX: u64 = 3;
/// Heartbeats closer together than this are a flood (a violation, not answered).
pub const HEARTBEAT_SPACING_MS_MIN: u64 = 500;
/// The handshake must complete within this long (10 s).
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Most outputs waiting for [`Session::poll_output`](super::Session::poll_output); the shell
/// drains after every input, so only a flood in one `handle_bytes` call can reach it.
pub const OUTPUT_QUEUE_MAX: usize = 16_384;
/// Most messages an initiator sends before the `Welcome` (pipelining), and most a responder
/// holds while the application decides admission.
pub const PIPELINED_MAX: usize = 64;
/// Violations (each answered by an `Error`) after which the session closes.
pub const VIOLATIONS_MAX: u32 = 16;

/// Capability strings of version 1.
pub mod capability {
    /// The peer accepts `SignedHeads` messages.
    pub const SIGNED_HEADS: &str = "signed-heads";
    /// The peer accepts `Telemetry` batches (the hub).
    pub const TELEMETRY: &str = "telemetry";
    /// The peer acknowledges `Telemetry` batches with `TelemetryAck` (and accepts them).
    pub const TELEMETRY_ACK: &str = "telemetry-ack";
    /// The peer reads `SyncIdle` (idle sync messages by heads digest; minor 1).
    pub const SYNC_IDLE: &str = "sync-idle";
    /// The peer speaks the technician session's messages (minor 2): a Pi and a technician's
    /// laptop offer it to each other, nobody else does.
    pub const TECHNICIAN: &str = "technician";
    /// Prefix of experimental capabilities, which allow experimental tags.
    pub const EXPERIMENTAL_PREFIX: &str = "x-";
}

/// Which end of the connection this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Opened the connection; waits for `Welcome`.
    Initiator,
    /// Accepted it; the application admits, defers (`Busy`) or refuses the peer.
    Responder,
}

/// Who this node is, as announced in its `Hello` (informational: mTLS is authoritative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalIdentity {
    /// This node's role.
    pub role: Role,
    /// Its chain.
    pub chain: ChainId,
    /// Its branch, if any.
    pub branch: Option<BranchId>,
    /// Its device id, if a device.
    pub device: Option<DeviceId>,
    /// The document schema version it writes.
    pub schema_version: u32,
}

/// How a session behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Which end this is.
    pub side: Side,
    /// The highest minor version to offer (normally [`PROTOCOL_MINOR`]).
    pub protocol_minor: u16,
    /// Capabilities to offer.
    pub capabilities: Vec<String>,
    /// How often to send heartbeats.
    pub heartbeat_interval_ms: u32,
    /// How long the handshake may take.
    pub handshake_timeout_ms: u64,
    /// Whether this node's wall clock is trusted (the hub; a device with a learned offset).
    pub wall_trusted: bool,
}

impl SessionConfig {
    /// Defaults for `side`: this version's minor, every v1 capability, 30 s heartbeats.
    pub fn new(side: Side) -> Self {
        SessionConfig {
            side,
            protocol_minor: PROTOCOL_MINOR,
            capabilities: vec![
                capability::SIGNED_HEADS.to_owned(),
                capability::TELEMETRY.to_owned(),
                capability::SYNC_IDLE.to_owned(),
                capability::TELEMETRY_ACK.to_owned(),
            ],
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            wall_trusted: false,
        }
    }
}

/// What the shell must do next, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes (already framed) to the stream.
    Send(Vec<u8>),
    /// Tell the application.
    Event(SessionEvent),
}

/// A trusted clock observation: at `local`, the trusted wall clock read `trusted_wall`
/// (the peer's time plus half the round trip). Feed it to `BootOffset::learn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    /// This node's clocks when the answer arrived.
    pub local: ClockReading,
    /// The trusted wall time at that instant.
    pub trusted_wall: WallMillis,
    /// The measured round trip.
    pub rtt_ms: u64,
}

/// Something the application must know or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The peer's `Hello`. A responder must now call `admit`, `busy` or `refuse` (after
    /// checking it against the mTLS identity).
    PeerHello(Hello),
    /// The handshake completed with these negotiated values; the session is established.
    Established {
        /// The minor version in use.
        protocol_minor: u16,
        /// The capabilities in use, sorted.
        capabilities: Vec<String>,
    },
    /// A trusted clock observation (from `Welcome` or `HeartbeatAck`).
    ClockSample(ClockSample),
    /// The peer lists documents it holds or wants.
    Docs(Docs),
    /// One Automerge sync message; hand it to the document's `PeerDocState`.
    SyncReceived(SyncBody),
    /// The peer's signed heads; verify before trusting relayed changes.
    SignedHeads(SignedHeads),
    /// The hub holds these closed rentals durably.
    LedgerAck(LedgerAck),
    /// A telemetry batch.
    Telemetry(Telemetry),
    /// The peer holds the oldest telemetry batch not yet acknowledged.
    TelemetryAck(TelemetryAck),
    /// A technician-session message (capability `technician`).
    Technician(crate::message::TechnicianMessage),
    /// A peer heartbeat (already answered): its clocks, for liveness records.
    Heartbeat(Heartbeat),
    /// The peer reported a non-fatal error.
    PeerError(ErrorBody),
    /// The peer broke a rule; an `Error` was sent. For the audit log.
    PeerViolation {
        /// The `error_code` sent.
        code: u16,
        /// What was wrong.
        reason: String,
    },
    /// A message of a kind this version does not know was skipped.
    UnknownSkipped {
        /// Its tag.
        kind: u16,
    },
    /// The session is over; nothing more will be sent or accepted.
    Closed(CloseReason),
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// This side called `close`.
    Local,
    /// The peer said `Bye`.
    PeerBye {
        /// Its reason.
        reason: String,
    },
    /// The peer refused the session.
    RefusedByPeer {
        /// The refusal code.
        code: u16,
        /// Its reason.
        reason: String,
    },
    /// This side refused the peer.
    RefusedPeer {
        /// The refusal code sent.
        code: u16,
    },
    /// The responder is busy; reconnect no sooner than this.
    Busy {
        /// Milliseconds to wait.
        retry_after_ms: u32,
    },
    /// This side told the peer to come back later.
    DeferredPeer,
    /// No frame from the peer for its heartbeat interval × [`HEARTBEAT_MISSES_MAX`].
    PeerTimedOut,
    /// The handshake did not complete in time.
    HandshakeTimedOut,
    /// The stream cannot be framed any more.
    Frame(FrameError),
    /// The peer broke the protocol beyond repair (a message before `Hello`, too many
    /// violations, more pipelined messages than allowed).
    Protocol {
        /// What happened.
        reason: String,
    },
    /// Outputs piled up past [`OUTPUT_QUEUE_MAX`]: the shell is not draining, or the peer
    /// floods.
    OutputQueueFull,
}

/// Why a session call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The session is closed.
    #[error("the session is closed")]
    Closed,
    /// The input closed the session; the reason is also in the `Closed` event.
    #[error("the session closed: {0:?}")]
    Fatal(CloseReason),
    /// The message cannot be sent yet (before the handshake, or pipelining is full).
    #[error("cannot send {} before the session is established", .0.name())]
    NotEstablished(MessageKind),
    /// The session sends this kind itself (`Hello`, `Welcome`, heartbeats, …).
    #[error("{} messages are sent by the session itself", .0.name())]
    SessionControlled(MessageKind),
    /// The kind needs a capability the peer did not agree to.
    #[error("{} needs capability {capability:?}, not negotiated", kind.name())]
    CapabilityMissing {
        /// The kind.
        kind: MessageKind,
        /// The capability.
        capability: &'static str,
    },
    /// This node's role may not send this kind (e.g. `LedgerAck` from a device).
    #[error("a {role:?} may not send {} messages", kind.name())]
    RoleMayNotSend {
        /// This node's role.
        role: Role,
        /// The kind.
        kind: MessageKind,
    },
    /// Messages of unknown kinds cannot be sent.
    #[error("cannot send a message of unknown tag {tag}")]
    UnknownKind {
        /// The tag.
        tag: u16,
    },
    /// The message does not encode (too large, over a limit).
    #[error(transparent)]
    Message(#[from] MessageError),
    /// `admit`/`busy`/`refuse` called when no admission is pending.
    #[error("no admission decision is pending")]
    NoAdmissionPending,
}
