//! The body of each message kind: one struct per kind, MessagePack maps with named fields
//! (`rmp_serde::to_vec_named`), byte fields as MessagePack `bin` (`serde_bytes`).
//!
//! Evolution rule: a later minor version may add fields only with `#[serde(default)]`, and a
//! receiver ignores map keys it does not know, so old and new peers read each other's bodies.
//! Renaming, retyping or removing a field is a major version.

use cartwise_schema::{BootId, BranchId, ChainId, DeviceId, MonoMillis, RentalId, WallMillis};
use serde::{Deserialize, Serialize};

use crate::doc_id::DocId;

/// Most capability strings in a `Hello` or `Welcome`.
pub const CAPABILITIES_MAX: usize = 32;
/// Longest capability string, in bytes.
pub const CAPABILITY_LEN_MAX: usize = 64;
/// Longest human-readable reason (`Refused`, `Error`, `Bye`), in bytes.
pub const REASON_LEN_MAX: usize = 512;
/// Most documents in one `Docs` message.
pub const DOCS_PER_MESSAGE_MAX: usize = 1024;
/// Most heads listed for one document (`Docs`, `SignedHeads`); real documents have a few.
pub const HEADS_PER_DOC_MAX: usize = 256;
/// Most rentals acknowledged by one `LedgerAck`.
pub const LEDGER_ACK_RENTALS_MAX: usize = 1024;
/// Most events in one `Telemetry` batch.
pub const TELEMETRY_EVENTS_MAX: usize = 256;
/// Longest telemetry event kind, in bytes.
pub const TELEMETRY_KIND_LEN_MAX: usize = 64;
/// Longest telemetry event payload (JSON text), in bytes.
pub const TELEMETRY_DATA_JSON_LEN_MAX: usize = 16 * 1024;
/// Longest signature in a `SignedHeads`, in bytes.
pub const SIGNATURE_LEN_MAX: usize = 512;
/// Longest certificate attached to a `SignedHeads`, in bytes of DER (a device certificate is
/// well under 1 KiB).
pub const SIGNER_CERT_LEN_MAX: usize = 4 * 1024;

/// What kind of node a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A branch Raspberry Pi: the only writer of its own facts document.
    Device,
    /// The cloud hub: the only writer of intents documents, the trusted clock.
    Hub,
    /// A technician's laptop: relays documents, writes nothing.
    Technician,
}

/// One Automerge change hash (SHA-256), on the wire as 32 bytes of MessagePack `bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Head(pub [u8; 32]);

impl Serialize for Head {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Head {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_bytes::ByteArray::<32>::deserialize(deserializer)
            .map(|bytes| Head(bytes.into_array()))
    }
}

impl From<automerge::ChangeHash> for Head {
    fn from(hash: automerge::ChangeHash) -> Self {
        Head(hash.0)
    }
}

impl From<Head> for automerge::ChangeHash {
    fn from(head: Head) -> Self {
        automerge::ChangeHash(head.0)
    }
}

/// The first message each side sends. Its identity fields are informational: the transport's
/// mutual-TLS certificate is the authority on who the peer is, and a receiver refuses a
/// `Hello` that disagrees with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal the receiver's major version.
    pub protocol_major: u16,
    /// The highest minor version the sender speaks; the session uses the lower of the two.
    pub protocol_minor: u16,
    /// Optional features the sender supports; the session uses the intersection.
    pub capabilities: Vec<String>,
    /// The document schema version (`cartwise-schema`) the sender writes.
    pub schema_version: u32,
    /// What kind of node the sender is.
    pub role: Role,
    /// The sender's chain.
    pub chain: ChainId,
    /// The sender's branch (none for the hub and a chain-wide technician).
    pub branch: Option<BranchId>,
    /// The sender's device id (devices only).
    pub device: Option<DeviceId>,
    /// The sender's wall clock when it sent the `Hello` (possibly wrong on a device).
    pub wall_ms: WallMillis,
    /// The sender's current boot.
    pub boot: BootId,
    /// The sender's monotonic clock when it sent the `Hello`.
    pub mono_ms: MonoMillis,
    /// How often the sender will send `Heartbeat`s.
    pub heartbeat_interval_ms: u32,
}

/// The responder's acceptance of a `Hello`, with what was negotiated and its clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The minor version in use: the lower of both `Hello`s.
    pub protocol_minor: u16,
    /// The capabilities in use: the intersection of both `Hello`s, sorted.
    pub capabilities: Vec<String>,
    /// The responder's wall clock when it sent the `Welcome`.
    pub wall_ms: WallMillis,
    /// Whether that clock is trusted (the hub; a device whose boot offset is learned). Only
    /// a trusted clock corrects the initiator's boot offset.
    pub wall_trusted: bool,
    /// The initiator's `Hello.wall_ms`, echoed.
    pub your_wall_ms_echo: WallMillis,
    /// The initiator's `Hello.mono_ms`, echoed: the initiator's round trip is its monotonic
    /// time on receipt minus this.
    pub your_mono_ms_echo: MonoMillis,
}

/// "Come back later": the responder is overloaded. The initiator closes and reconnects no
/// sooner than `retry_after_ms`, plus its own jitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Busy {
    /// The earliest retry, in milliseconds from receipt.
    pub retry_after_ms: u32,
}

/// The responder refuses the session; the connection closes. Codes: [`refusal`](crate::refusal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// A machine-readable refusal code.
    pub code: u16,
    /// A human-readable explanation.
    pub reason: String,
}

/// A non-fatal error about one message; the session continues. Codes: [`error_code`](crate::error_code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A machine-readable error code.
    pub code: u16,
    /// A human-readable explanation.
    pub reason: String,
    /// The document the error is about, if any.
    #[serde(default)]
    pub doc: Option<DocId>,
}

/// The sender is closing the session cleanly.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Bye {
    /// Why, for logs; may be empty.
    #[serde(default)]
    pub reason: String,
}

/// A liveness probe with the sender's clocks; answered by `HeartbeatAck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Increases by one per heartbeat of the session, from 1.
    pub seq: u64,
    /// The sender's wall clock.
    pub wall_ms: WallMillis,
    /// The sender's boot.
    pub boot: BootId,
    /// The sender's monotonic clock.
    pub mono_ms: MonoMillis,
}

/// The answer to a `Heartbeat`, with the responder's wall clock (a clock sample when trusted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The `Heartbeat.seq` answered.
    pub seq: u64,
    /// The answering side's wall clock.
    pub wall_ms: WallMillis,
    /// Whether that clock is trusted (see [`Welcome::wall_trusted`]).
    pub wall_trusted: bool,
}

/// A document and the heads the sender holds of it (empty: it holds nothing and wants it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocHeads {
    /// The document.
    pub doc: DocId,
    /// The sender's heads of it.
    pub heads: Vec<Head>,
}

/// What documents the sender holds or wants. The receiver starts per-document sync for each
/// listed document the sender is entitled to, and answers an unentitled one with an `Error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Docs {
    /// The documents.
    pub docs: Vec<DocHeads>,
}

/// One Automerge sync message (`automerge::sync::Message::encode()`) for one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncBody {
    /// The document.
    pub doc: DocId,
    /// The encoded Automerge sync message.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Length of a [`HeadsDigest`].
pub const HEADS_DIGEST_LEN: usize = 16;

/// The first 16 bytes of SHA-256 over a document's sorted heads
/// ([`crate::doc_sync::heads_digest`]), on the wire as MessagePack `bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeadsDigest(pub [u8; HEADS_DIGEST_LEN]);

impl Serialize for HeadsDigest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for HeadsDigest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_bytes::ByteArray::<HEADS_DIGEST_LEN>::deserialize(deserializer)
            .map(|bytes| HeadsDigest(bytes.into_array()))
    }
}

/// An idle Automerge sync message in a few bytes (minor 1, capability `sync-idle`): "my heads
/// are the heads with this digest, they are the heads we last shared, and I have nothing new".
/// It stands for the Automerge message whose `heads` and only `have.last_sync` are those
/// heads, with an empty Bloom filter, no `need`, no changes and the `supports-sync-reset`
/// flag; the receiver rebuilds that message from the heads it knows (its shared heads with the
/// sender, its own heads, or the sender's last heads). If none matches, it answers with a full
/// `Sync`, which the protocol then resolves as usual.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncIdle {
    /// The document.
    pub doc: DocId,
    /// The digest of the sender's heads.
    pub digest: HeadsDigest,
}

/// The hub holds these closed rentals of `device` durably (in Postgres); the device may drop
/// them from its live document. Idempotent: acknowledging twice changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerAck {
    /// The device whose rentals these are.
    pub device: DeviceId,
    /// The closed rentals now durable at the hub.
    pub rentals: Vec<RentalId>,
}

/// One telemetry event: a kind, a JSON payload, and when it happened on the sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryEvent {
    /// What happened, e.g. `lock.fault`.
    pub kind: String,
    /// The details, as JSON text (kept opaque here).
    pub data_json: String,
    /// The sender's wall clock at the event.
    pub wall_ms: WallMillis,
    /// The sender's boot at the event.
    pub boot: BootId,
    /// The sender's monotonic clock at the event.
    pub mono_ms: MonoMillis,
}

/// A batch of telemetry events, at most [`TELEMETRY_EVENTS_MAX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Telemetry {
    /// The events, oldest first.
    pub events: Vec<TelemetryEvent>,
}

/// The receiver holds the oldest `Telemetry` batch of this session not yet acknowledged
/// (stored, or already held from an earlier delivery); the sender may forget it. Batches are
/// acknowledged in the order they were sent; the count and the last event's clocks let the
/// sender check which batch is meant. A receiver that cannot store a batch closes the session
/// instead, so the sender sends it again later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryAck {
    /// Events in the acknowledged batch.
    pub events: u32,
    /// The boot of its last event.
    pub last_boot: BootId,
    /// The monotonic time of its last event.
    pub last_mono_ms: MonoMillis,
}

/// Most bytes of a `Bundle` body's bundle (the bundle format's own limit, 16 MiB).
pub const BUNDLE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Longest `BusReply.body_json`, in bytes.
pub const BUS_REPLY_JSON_LEN_MAX: usize = 64 * 1024;
/// Longest `BusRequest.command`, in bytes.
pub const BUS_COMMAND_LEN_MAX: usize = 16;

/// A signed bundle (`crate::bundle`), either direction of a technician session (minor 2,
/// capability `technician`): the laptop hands a Pi the hub's intents bundle for its branch; the
/// Pi hands the laptop its facts bundle. The bytes are verified by the receiver, never trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// The encoded bundle, at most [`BUNDLE_BYTES_MAX`].
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// The Pi's answer to a `Bundle` from the laptop: whether it was applied, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleResult {
    /// The bundle's sequence number (0 when it could not be read).
    pub seq: u64,
    /// Whether anything was applied (`false` for a replay or a refusal).
    pub applied: bool,
    /// What happened, for the technician (a refusal says why and what to do).
    pub message: String,
}

/// A lock-bus command, typed (the wire form is the flat [`BusRequest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusCommand {
    /// Which boards answer.
    Scan,
    /// One board's locks and sensors.
    Status {
        /// The board address.
        board: u8,
    },
    /// Opens one lock; only with `confirm: true` (the technician confirmed it).
    Unlock {
        /// The board address.
        board: u8,
        /// The lock on it.
        lock: u8,
        /// The technician confirmed the unlock.
        confirm: bool,
    },
}

/// A remote lock-bus command from a technician's laptop (minor 2, capability `technician`),
/// answered by one `BusReply` with the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusRequest {
    /// Chosen by the laptop; echoed in the reply.
    pub id: u64,
    /// `scan`, `status` or `unlock`.
    pub command: String,
    /// The board (`status`, `unlock`).
    #[serde(default)]
    pub board: Option<u8>,
    /// The lock (`unlock`).
    #[serde(default)]
    pub lock: Option<u8>,
    /// `unlock` only: the technician confirmed it.
    #[serde(default)]
    pub confirm: bool,
}

impl BusRequest {
    /// The wire form of `command`.
    pub fn new(id: u64, command: BusCommand) -> Self {
        let (name, board, lock, confirm) = match command {
            BusCommand::Scan => ("scan", None, None, false),
            BusCommand::Status { board } => ("status", Some(board), None, false),
            BusCommand::Unlock {
                board,
                lock,
                confirm,
            } => ("unlock", Some(board), Some(lock), confirm),
        };
        BusRequest {
            id,
            command: name.to_owned(),
            board,
            lock,
            confirm,
        }
    }

    /// The typed command, or what is missing.
    pub fn command(&self) -> Result<BusCommand, String> {
        let board = || {
            self.board
                .ok_or_else(|| format!("{} needs a board", self.command))
        };
        match self.command.as_str() {
            "scan" => Ok(BusCommand::Scan),
            "status" => Ok(BusCommand::Status { board: board()? }),
            "unlock" => Ok(BusCommand::Unlock {
                board: board()?,
                lock: self.lock.ok_or_else(|| "unlock needs a lock".to_owned())?,
                confirm: self.confirm,
            }),
            other => Err(format!("unknown bus command {other:?}")),
        }
    }
}

/// The answer to a `BusRequest`: on success the result as JSON text, else a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusReply {
    /// The request's id.
    pub id: u64,
    /// Whether the command ran.
    pub ok: bool,
    /// The result (`ok`), JSON text of at most [`BUS_REPLY_JSON_LEN_MAX`] bytes.
    #[serde(default)]
    pub body_json: String,
    /// Why it did not run (not `ok`), for the technician.
    #[serde(default)]
    pub message: String,
}

/// A technician-session message handed to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TechnicianMessage {
    /// See [`Bundle`].
    Bundle(Bundle),
    /// See [`BundleResult`].
    BundleResult(BundleResult),
    /// See [`BusRequest`].
    BusRequest(BusRequest),
    /// See [`BusReply`].
    BusReply(BusReply),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_requests_round_trip_their_command_and_name_what_is_missing() {
        for command in [
            BusCommand::Scan,
            BusCommand::Status { board: 3 },
            BusCommand::Unlock {
                board: 1,
                lock: 16,
                confirm: false,
            },
        ] {
            assert_eq!(BusRequest::new(9, command).command(), Ok(command));
        }
        let mut unlock = BusRequest::new(
            1,
            BusCommand::Unlock {
                board: 0,
                lock: 2,
                confirm: true,
            },
        );
        unlock.lock = None;
        assert_eq!(unlock.command(), Err("unlock needs a lock".to_owned()));
        unlock.command = "erase".into();
        assert!(
            unlock
                .command()
                .unwrap_err()
                .contains("unknown bus command")
        );
    }
}
