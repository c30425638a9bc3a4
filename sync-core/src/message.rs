//! The message registry: every message kind with its never-reused `u16` tag, the envelope
//! `{ "k": tag, "b": bin body }`, and decoding that turns an unknown tag into
//! [`Message::Unknown`] instead of an error.
//!
//! Registry rules (the wire contract):
//!
//! - A tag, once released, means that kind forever. A retired kind's tag goes into
//!   [`RETIRED_TAGS`] and is never assigned again; tag 0 is never assigned.
//! - Tags `0xF000..=0xFFFF` ([`EXPERIMENTAL_TAGS`]) are for experiments between peers that
//!   both advertise an `x-…` capability; they never appear in a release.
//! - A kind added in a minor version is sent only to a peer that advertised the capability
//!   that introduced it, so a receiver that does not know a tag only sees one from a peer
//!   that ignored the rule (or from a newer minor): it skips it (see the session rules).
//! - Each released wire version keeps golden bytes of one example per kind under
//!   `fixtures/data/sync-v<major>/`, which a test decodes forever.

use serde::{Deserialize, Serialize};

use crate::frame::{FrameError, encode_frame};
use crate::signed_heads::SignedHeads;

pub mod body;
mod limits;

pub use body::{
    Bundle, BundleResult, BusCommand, BusReply, BusRequest, Busy, Bye, DocHeads, Docs, ErrorBody,
    Head, Heartbeat, HeartbeatAck, Hello, LedgerAck, Refused, Role, SyncBody, SyncIdle,
    TechnicianMessage, Telemetry, TelemetryAck, TelemetryEvent, Welcome,
};
pub use limits::LimitError;

/// Tags reserved for experiments; never in a release.
pub const EXPERIMENTAL_TAGS: std::ops::RangeInclusive<u16> = 0xF000..=0xFFFF;

/// Tags of retired kinds: never assigned again. (None yet.)
pub const RETIRED_TAGS: &[u16] = &[];

/// Deepest MessagePack nesting accepted in an envelope or body (real bodies nest 3 deep).
const NESTING_DEPTH_MAX: usize = 16;

/// Every message kind of the protocol, with its wire tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u16)]
pub enum MessageKind {
    /// [`Hello`]: first message of each side.
    Hello = 1,
    /// [`Welcome`]: the responder accepts.
    Welcome = 2,
    /// [`Busy`]: the responder asks to come back later.
    Busy = 3,
    /// [`Refused`]: the responder refuses.
    Refused = 4,
    /// [`Bye`]: clean close.
    Bye = 5,
    /// [`ErrorBody`]: a non-fatal error about one message.
    Error = 6,
    /// [`Heartbeat`].
    Heartbeat = 16,
    /// [`HeartbeatAck`].
    HeartbeatAck = 17,
    /// [`Docs`]: documents held or wanted.
    Docs = 32,
    /// [`SyncBody`]: one Automerge sync message.
    Sync = 33,
    /// [`SignedHeads`]: a writer's signature over a document's heads.
    SignedHeads = 34,
    /// [`SyncIdle`]: an idle sync message by heads digest; minor 1, cap `sync-idle`.
    SyncIdle = 35,
    /// [`LedgerAck`]: closed rentals durable at the hub.
    LedgerAck = 48,
    /// [`Telemetry`]: a batch of telemetry events.
    Telemetry = 64,
    /// [`TelemetryAck`]: a telemetry batch is held; cap `telemetry-ack`.
    TelemetryAck = 65,
    /// [`Bundle`]: a signed bundle, either way of a technician session; minor 2, cap
    /// `technician`.
    Bundle = 80,
    /// [`BundleResult`]: a Pi's answer to a `Bundle`; cap `technician`.
    BundleResult = 81,
    /// [`BusRequest`]: a remote lock-bus command from a technician; cap `technician`.
    BusRequest = 82,
    /// [`BusReply`]: the answer to a `BusRequest`; cap `technician`.
    BusReply = 83,
}

impl MessageKind {
    /// Every kind of protocol version 1, in tag order.
    pub const ALL_V1: [MessageKind; 19] = [
        MessageKind::Hello,
        MessageKind::Welcome,
        MessageKind::Busy,
        MessageKind::Refused,
        MessageKind::Bye,
        MessageKind::Error,
        MessageKind::Heartbeat,
        MessageKind::HeartbeatAck,
        MessageKind::Docs,
        MessageKind::Sync,
        MessageKind::SignedHeads,
        MessageKind::SyncIdle,
        MessageKind::LedgerAck,
        MessageKind::Telemetry,
        MessageKind::TelemetryAck,
        MessageKind::Bundle,
        MessageKind::BundleResult,
        MessageKind::BusRequest,
        MessageKind::BusReply,
    ];

    /// The wire tag.
    pub const fn tag(self) -> u16 {
        self as u16
    }

    /// The kind of a wire tag, if this version knows it.
    pub fn from_tag(tag: u16) -> Option<Self> {
        Self::ALL_V1.into_iter().find(|kind| kind.tag() == tag)
    }

    /// The snake-case name (golden file names, logs).
    pub const fn name(self) -> &'static str {
        match self {
            MessageKind::Hello => "hello",
            MessageKind::Welcome => "welcome",
            MessageKind::Busy => "busy",
            MessageKind::Refused => "refused",
            MessageKind::Bye => "bye",
            MessageKind::Error => "error",
            MessageKind::Heartbeat => "heartbeat",
            MessageKind::HeartbeatAck => "heartbeat_ack",
            MessageKind::Docs => "docs",
            MessageKind::Sync => "sync",
            MessageKind::SignedHeads => "signed_heads",
            MessageKind::SyncIdle => "sync_idle",
            MessageKind::LedgerAck => "ledger_ack",
            MessageKind::Telemetry => "telemetry",
            MessageKind::TelemetryAck => "telemetry_ack",
            MessageKind::Bundle => "bundle",
            MessageKind::BundleResult => "bundle_result",
            MessageKind::BusRequest => "bus_request",
            MessageKind::BusReply => "bus_reply",
        }
    }
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Busy`].
    Busy(Busy),
    /// See [`Refused`].
    Refused(Refused),
    /// See [`Bye`].
    Bye(Bye),
    /// See [`ErrorBody`].
    Error(ErrorBody),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`HeartbeatAck`].
    HeartbeatAck(HeartbeatAck),
    /// See [`Docs`].
    Docs(Docs),
    /// See [`SyncBody`].
    Sync(SyncBody),
    /// See [`SignedHeads`].
    SignedHeads(SignedHeads),
    /// See [`SyncIdle`].
    SyncIdle(SyncIdle),
    /// See [`LedgerAck`].
    LedgerAck(LedgerAck),
    /// See [`Telemetry`].
    Telemetry(Telemetry),
    /// See [`TelemetryAck`].
    TelemetryAck(TelemetryAck),
    /// See [`Bundle`].
    Bundle(Bundle),
    /// See [`BundleResult`].
    BundleResult(BundleResult),
    /// See [`BusRequest`].
    BusRequest(BusRequest),
    /// See [`BusReply`].
    BusReply(BusReply),
    /// A well-formed envelope with a tag this version does not know; `body` is kept opaque.
    Unknown {
        /// The unknown tag.
        kind: u16,
        /// The undecoded body.
        body: Vec<u8>,
    },
}

/// Why a message could not be encoded or decoded. Only `Frame` is fatal for the stream; the
/// others concern one frame, and a session answers them with an `Error` and continues.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The payload is not a MessagePack envelope `{ "k": u16, "b": bin }`.
    #[error("malformed message envelope: {reason}")]
    Envelope {
        /// What the decoder said.
        reason: String,
    },
    /// The body does not decode as the kind's body struct.
    #[error("malformed {} body: {reason}", kind.name())]
    Body {
        /// The kind whose body failed.
        kind: MessageKind,
        /// What the decoder said.
        reason: String,
    },
    /// The body decoded but breaks a limit.
    #[error("{} message: {source}", kind.name())]
    Limit {
        /// The kind.
        kind: MessageKind,
        /// The limit broken.
        source: LimitError,
    },
    /// Serialising failed (a bug, not peer input).
    #[error("cannot encode message: {reason}")]
    Encode {
        /// What the encoder said.
        reason: String,
    },
    /// The encoded message does not fit in a frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The envelope around every body.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The kind tag.
    k: u16,
    /// The body, itself a MessagePack map.
    b: serde_bytes::ByteBuf,
}

impl Message {
    /// The kind, or `None` for [`Message::Unknown`].
    pub fn kind(&self) -> Option<MessageKind> {
        Some(match self {
            Message::Hello(_) => MessageKind::Hello,
            Message::Welcome(_) => MessageKind::Welcome,
            Message::Busy(_) => MessageKind::Busy,
            Message::Refused(_) => MessageKind::Refused,
            Message::Bye(_) => MessageKind::Bye,
            Message::Error(_) => MessageKind::Error,
            Message::Heartbeat(_) => MessageKind::Heartbeat,
            Message::HeartbeatAck(_) => MessageKind::HeartbeatAck,
            Message::Docs(_) => MessageKind::Docs,
            Message::Sync(_) => MessageKind::Sync,
            Message::SignedHeads(_) => MessageKind::SignedHeads,
            Message::SyncIdle(_) => MessageKind::SyncIdle,
            Message::LedgerAck(_) => MessageKind::LedgerAck,
            Message::Telemetry(_) => MessageKind::Telemetry,
            Message::TelemetryAck(_) => MessageKind::TelemetryAck,
            Message::Bundle(_) => MessageKind::Bundle,
            Message::BundleResult(_) => MessageKind::BundleResult,
            Message::BusRequest(_) => MessageKind::BusRequest,
            Message::BusReply(_) => MessageKind::BusReply,
            Message::Unknown { .. } => return None,
        })
    }

    /// The wire tag.
    pub fn tag(&self) -> u16 {
        match self {
            Message::Unknown { kind, .. } => *kind,
            known => known.kind().map_or(0, MessageKind::tag),
        }
    }

    /// Encodes the envelope (not framed). Checks the limits, so a peer never receives a
    /// message this side would refuse.
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        if let Some(kind) = self.kind() {
            limits::check(self).map_err(|source| MessageError::Limit { kind, source })?;
        }
        let body = match self {
            Message::Hello(body) => to_named(body),
            Message::Welcome(body) => to_named(body),
            Message::Busy(body) => to_named(body),
            Message::Refused(body) => to_named(body),
            Message::Bye(body) => to_named(body),
            Message::Error(body) => to_named(body),
            Message::Heartbeat(body) => to_named(body),
            Message::HeartbeatAck(body) => to_named(body),
            Message::Docs(body) => to_named(body),
            Message::Sync(body) => sync_wire_body(body),
            Message::SignedHeads(body) => to_named(body),
            Message::SyncIdle(body) => to_named(body),
            Message::LedgerAck(body) => to_named(body),
            Message::Telemetry(body) => to_named(body),
            Message::TelemetryAck(body) => to_named(body),
            Message::Bundle(body) => to_named(body),
            Message::BundleResult(body) => to_named(body),
            Message::BusRequest(body) => to_named(body),
            Message::BusReply(body) => to_named(body),
            Message::Unknown { body, .. } => Ok(body.clone()),
        }?;
        to_named(&Envelope {
            k: self.tag(),
            b: serde_bytes::ByteBuf::from(body),
        })
    }

    /// Encodes and frames the message: the bytes to write to the stream.
    pub fn to_frame(&self) -> Result<Vec<u8>, MessageError> {
        Ok(encode_frame(&self.encode()?)?)
    }

    /// Decodes one frame payload. Never panics; an unknown tag is [`Message::Unknown`].
    pub fn decode(payload: &[u8]) -> Result<Message, MessageError> {
        let envelope: Envelope = from_strict(payload).map_err(|reason| MessageError::Envelope {
            reason: reason.to_string(),
        })?;
        let body = envelope.b.into_vec();
        let Some(kind) = MessageKind::from_tag(envelope.k) else {
            return Ok(Message::Unknown {
                kind: envelope.k,
                body,
            });
        };
        let message = decode_body(kind, &body).map_err(|reason| MessageError::Body {
            kind,
            reason: reason.to_string(),
        })?;
        limits::check(&message).map_err(|source| MessageError::Limit { kind, source })?;
        Ok(message)
    }
}

/// Decodes the body of a known kind.
fn decode_body(kind: MessageKind, body: &[u8]) -> Result<Message, rmp_serde::decode::Error> {
    Ok(match kind {
        MessageKind::Hello => Message::Hello(from_strict(body)?),
        MessageKind::Welcome => Message::Welcome(from_strict(body)?),
        MessageKind::Busy => Message::Busy(from_strict(body)?),
        MessageKind::Refused => Message::Refused(from_strict(body)?),
        MessageKind::Bye => Message::Bye(from_strict(body)?),
        MessageKind::Error => Message::Error(from_strict(body)?),
        MessageKind::Heartbeat => Message::Heartbeat(from_strict(body)?),
        MessageKind::HeartbeatAck => Message::HeartbeatAck(from_strict(body)?),
        MessageKind::Docs => Message::Docs(from_strict(body)?),
        MessageKind::Sync => Message::Sync(from_strict(body)?),
        MessageKind::SignedHeads => Message::SignedHeads(from_strict(body)?),
        MessageKind::SyncIdle => Message::SyncIdle(from_strict(body)?),
        MessageKind::LedgerAck => Message::LedgerAck(from_strict(body)?),
        MessageKind::Telemetry => Message::Telemetry(from_strict(body)?),
        MessageKind::TelemetryAck => Message::TelemetryAck(from_strict(body)?),
        MessageKind::Bundle => Message::Bundle(from_strict(body)?),
        MessageKind::BundleResult => Message::BundleResult(from_strict(body)?),
        MessageKind::BusRequest => Message::BusRequest(from_strict(body)?),
        MessageKind::BusReply => Message::BusReply(from_strict(body)?),
    })
}

/// A `Sync` body as it goes on the wire: always one whole Automerge sync message. A body in
/// the in-memory idle form (`doc_sync`, from `PeerDocState::generate`) carries its whole
/// message after the digest, which is what is sent; an idle form without it (one rebuilt from a
/// received `SyncIdle`) cannot be sent as `Sync`.
fn sync_wire_body(body: &SyncBody) -> Result<Vec<u8>, MessageError> {
    match crate::doc_sync::idle_parts(&body.data) {
        None => to_named(body),
        Some((_, full)) if !full.is_empty() => to_named(&SyncBody {
            doc: body.doc,
            data: full.to_vec(),
        }),
        Some(_) => Err(MessageError::Encode {
            reason: "an idle sync digest without its message cannot be sent as Sync".to_owned(),
        }),
    }
}

/// `rmp_serde::to_vec_named`, with the error as a [`MessageError`].
fn to_named<T: Serialize>(value: &T) -> Result<Vec<u8>, MessageError> {
    rmp_serde::to_vec_named(value).map_err(|error| MessageError::Encode {
        reason: error.to_string(),
    })
}

/// Decodes `bytes` as exactly one `T`: bounded nesting, no trailing bytes. Every MessagePack
/// decoder of outside bytes in this crate goes through here: rmp-serde's own nesting limit
/// (1,024) is deep enough to overflow a 2 MiB task stack on crafted input.
pub(crate) fn from_strict<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::new(bytes);
    deserializer.set_max_depth(NESTING_DEPTH_MAX);
    let value = T::deserialize(&mut deserializer)?;
    let trailing = deserializer.get_ref().len();
    if trailing != 0 {
        return Err(rmp_serde::decode::Error::Syntax(format!(
            "{trailing} trailing bytes after the value"
        )));
    }
    Ok(value)
}
