//! CartWise sync protocol, with no I/O. This documentation is the protocol specification:
//! a peer can be implemented from it.
//!
//! Architecture Invariant: no sockets, no tokio, no clocks, no ambient randomness. Time comes
//! in as arguments (`ClockReading`: wall, boot, monotonic), outputs are polled.
//!
//! # 1. Transport
//!
//! One QUIC connection with mutual TLS per pair of peers, ALPN [`session::ALPN`]
//! (`cartwise-sync/1`: the ALPN carries the major version), and one long-lived bidirectional
//! stream carrying the session. The certificate binds the peer to its chain, branch and
//! device: it is the **authority** on who the peer is. Everything a peer says about itself
//! in `Hello` is informational and is checked against the certificate.
//!
//! # 2. Frames ([`frame`])
//!
//! Each message is one frame: a u32 big-endian payload length, then the payload. A length
//! above [`frame::FRAME_LEN_MAX`] (32 MiB) is invalid on both sides: the sender never sends
//! it, the receiver closes the connection as soon as the four length bytes arrive (the
//! stream cannot be resynchronised). An incomplete frame just waits for more bytes.
//!
//! # 3. Envelope and registry ([`message`])
//!
//! The payload is a MessagePack map `{ "k": <u16 kind tag>, "b": <bin: the body> }`, written
//! with named fields (`rmp_serde::to_vec_named`). The body is itself a MessagePack map with
//! named fields; byte fields are MessagePack `bin` (`serde_bytes`); ids are strings in their
//! canonical forms (hyphenated lowercase UUIDs, [`DocId`] forms); times are integers of
//! milliseconds. Extra bytes after the envelope or a body are malformed.
//!
//! | tag | kind | direction | body fields |
//! |---:|---|---|---|
//! | 1 | `Hello` | both, first | `protocol_major`, `protocol_minor`, `capabilities`, `schema_version`, `role` (`device`/`hub`/`technician`), `chain`, `branch`?, `device`?, `wall_ms`, `boot`, `mono_ms`, `heartbeat_interval_ms` |
//! | 2 | `Welcome` | responder | `protocol_minor`, `capabilities`, `wall_ms`, `wall_trusted`, `your_wall_ms_echo`, `your_mono_ms_echo` |
//! | 3 | `Busy` | responder | `retry_after_ms` |
//! | 4 | `Refused` | responder | `code` ([`refusal`]), `reason` |
//! | 5 | `Bye` | both | `reason` |
//! | 6 | `Error` | both | `code` ([`error_code`]), `reason`, `doc`? |
//! | 16 | `Heartbeat` | both | `seq`, `wall_ms`, `boot`, `mono_ms` |
//! | 17 | `HeartbeatAck` | both | `seq`, `wall_ms`, `wall_trusted` |
//! | 32 | `Docs` | both | `docs`: [{`doc`, `heads`: [bin 32]}] |
//! | 33 | `Sync` | both | `doc`, `data`: bin (one `automerge::sync::Message::encode()`) |
//! | 34 | `SignedHeads` | both, cap `signed-heads` | `doc`, `heads`, `signer`, `signature`: bin |
//! | 35 | `SyncIdle` | both, minor 1, cap `sync-idle` | `doc`, `digest`: bin 16 |
//! | 48 | `LedgerAck` | hub → device | `device`, `rentals`: [rental id] |
//! | 64 | `Telemetry` | to a peer with cap `telemetry` | `events`: [{`kind`, `data_json`, `wall_ms`, `boot`, `mono_ms`}] |
//! | 65 | `TelemetryAck` | receiver of `Telemetry`, cap `telemetry-ack` | `events`, `last_boot`, `last_mono_ms` |
//! | 80 | `Bundle` | device ↔ technician, minor 2, cap `technician` | `bytes`: bin (a signed bundle, [`bundle`]) |
//! | 81 | `BundleResult` | device → technician, cap `technician` | `seq`, `applied`, `message` |
//! | 82 | `BusRequest` | technician → device, cap `technician` | `id`, `command` (`scan`/`status`/`unlock`), `board`?, `lock`?, `confirm` |
//! | 83 | `BusReply` | device → technician, cap `technician` | `id`, `ok`, `body_json`, `message` |
//!
//! (`?` marks a field that may be nil.) Rules:
//!
//! - A tag is never reused: retired tags are listed in [`message::RETIRED_TAGS`]; tag 0 is
//!   never assigned; `0xF000..=0xFFFF` is for experiments under an `x-…` capability.
//! - Bodies evolve only by adding optional fields in a minor version; receivers ignore map
//!   keys they do not know. Anything else is a new major version (a new ALPN).
//! - A new kind in a minor version is sent only to a peer that advertised its capability,
//!   with one exception: an initiator may pipeline `SyncIdle` before the `Welcome` (a
//!   responder of an older minor skips it, the initiator's minor being higher), and resends
//!   each one as its whole `Sync` when the `Welcome` does not include `sync-idle`.
//! - Counts and lengths are capped (`message::body::*_MAX`, e.g. 256 telemetry events per
//!   batch, 1024 documents per `Docs`); a message over a cap is answered with
//!   `Error{code: LIMIT}` and otherwise ignored.
//! - Golden bytes of one example per kind of v1 live in `fixtures/data/sync-v1/<kind>.bin`
//!   and are decoded by a test forever.
//!
//! # 4. Session ([`session`])
//!
//! The side that opened the connection is the *initiator*, the other the *responder*.
//!
//! 1. Each side sends `Hello` as its first message, without waiting. Anything else first is
//!    fatal (a responder answers `Refused{PROTOCOL}`).
//! 2. Versions: the majors must be equal, else the responder sends `Refused{VERSION}` and
//!    both close. The session uses the lower of the two minors and the sorted intersection of
//!    the capability lists.
//! 3. The responder checks the `Hello` against the certificate and its own load, then sends
//!    exactly one of: `Welcome` (negotiated minor and capabilities, its wall clock, and the
//!    initiator's `wall_ms`/`mono_ms` echoed), `Busy{retry_after_ms}` (come back later: the
//!    initiator waits at least that long plus jitter, so a fleet reconnecting after an outage
//!    spreads out), or `Refused{code, reason}`. After `Busy` or `Refused` both close.
//! 4. The initiator may pipeline up to [`session::PIPELINED_MAX`] `Docs`/`Sync`/`Error`
//!    messages right after its `Hello`, before the `Welcome`; the responder holds them (no
//!    more than that) until it admits, and drops them if it does not. This is what makes an
//!    idle reconnect a single round trip.
//! 5. Clock: when the `Welcome` (or a `HeartbeatAck`) says `wall_trusted`, the initiator takes
//!    `trusted_wall = wall_ms + rtt/2` at its receive instant, `rtt` measured on its monotonic
//!    clock from the echoed `mono_ms` (or the heartbeat's send time), and learns its boot
//!    offset from it (`cartwise_schema::BootOffset`). The hub's clock is trusted; a device's
//!    is trusted only once its own boot offset is learned.
//! 6. Established: each side sends `Heartbeat{seq}` every `heartbeat_interval_ms` of its own
//!    `Hello` (default 30 s); the other answers `HeartbeatAck{seq}` at once. A peer from which
//!    no frame arrived for 3 of its announced intervals (clamped to 1 s..300 s) is gone: close.
//!    Heartbeats closer than 500 ms apart are a flood and are not answered.
//! 7. `Error` reports a problem with one message; the session continues. Each violation by a
//!    peer (malformed body, over a limit, a kind not allowed in the phase, from the peer's
//!    role, or without its capability, an unknown tag not covered by the skip rule) is
//!    answered with an `Error`; after [`session::VIOLATIONS_MAX`] the session closes.
//! 8. Unknown tags: skipped silently when the peer announced a higher minor version (newer
//!    kinds are optional by rule) or the tag is experimental under a negotiated `x-`
//!    capability; otherwise a violation. Never a panic.
//! 9. `Bye` ends the session cleanly in any phase; then the stream is finished.
//!
//! # 5. Documents and sync ([`doc_id`], [`doc_sync`])
//!
//! State lives in Automerge documents, one per writer: `device/<uuid>[/e<N>]` holds a
//! device's facts and is written only by that device; `branch/<uuid>/intents[/e<N>]` holds a
//! branch's intents (configuration, maintenance requests) and is written only by the hub.
//! Intents flow down and outcomes flow up as ordinary document sync: the owning device
//! executes an intent and records the outcome in its own facts document. `e<N>` is the
//! rotation epoch: a live document is replaced by the next epoch to bound its history.
//!
//! Layouts (key names are constants in [`facts::keys`] and [`intents::keys`]; readers are
//! tolerant: a malformed entry is skipped with its reason, never a panic):
//!
//! - Device document ([`facts`]): `schema`, `device`, `branch`, `posts`, `rentals`,
//!   `anomalies`, and two maps that carry answers to other documents:
//!   `outcomes: { <intent id>: { status: applied|failed|expired, detail, wall, hlc } }` (this
//!   device's answer to an intent of its branch, at most one per intent) and
//!   `returns: { <rental id>: { origin, post, status: returned|returned_late, end_at,
//!   end_wall, end_boot, end_mono, end_hlc, time_trusted } }` (a cart of a rental started at
//!   device `origin` docked at this device's `post`; the origin closes its rental from it).
//! - Intents document ([`intents`]): `schema`, `branch`, `intents: { <intent id>: { device,
//!   kind, post?, minutes?, text?, created_at, created_by, expires_at? } }` with kinds
//!   `unlock_post`, `out_of_service`, `in_service` (`post`), `set_rental_minutes`
//!   (`minutes`), `note` (`text`, `post`?), `set_otp_policy` (`when_sms_unavailable`),
//!   `set_language` (`language`), and the others listed in [`intents`]. Only the addressed `device` acts on an entry, at
//!   most once (it records that it is executing durably before acting); an entry read after
//!   its `expires_at` is answered `expired` and not carried out; an unknown kind is skipped.
//!   The hub writes every intents document of a chain with one actor,
//!   [`authority::hub_actor`] (SHA-256 of `cartwise-hub-actor/<chain uuid>`, first 16 bytes),
//!   which is what a device checks intents against ([`HubActors::for_chain`]).
//! - Which documents a peer holds: a device holds its own documents, its branch's intents
//!   document and the other devices' documents of its branch; it accepts another device's
//!   document only from the hub (which verified it on that device's own session) or from that
//!   device directly, and the intents document only from the hub.
//!
//! - The peers exchange `Docs` (what each holds, with heads) when the set of documents is not
//!   known; the receiver starts sync for each listed document the sender is *entitled* to
//!   (same chain and branch per its certificate) and answers others with
//!   `Error{NOT_ENTITLED, doc}`.
//! - Per (peer, document) the Automerge sync protocol runs, one `Sync{doc, data}` per
//!   Automerge message, in order on the one stream. The initiator opens each document's
//!   exchange; both sides answer every received `Sync` by generating for that document, and
//!   send a new one after a local change. Each side persists the per-(peer, document) sync
//!   state (`PeerDocState::encode`, 2 + 32·k bytes for k shared heads) so a reconnect resumes:
//!   an idle reconnect costs one `Sync` each way per document.
//! - Idle messages (minor 1, capability `sync-idle`): an Automerge message that says only
//!   "my heads are the ones we last shared, nothing new" (no changes, no `need`, one `have`
//!   whose `last_sync` equals the `heads`, an empty Bloom filter, only the
//!   `supports-sync-reset` flag) is sent as `SyncIdle{doc, digest}`, the digest being the
//!   first 16 bytes of SHA-256 over `cartwise-sync-idle/` and the sorted heads. The receiver
//!   rebuilds the message from heads it knows with that digest (its shared heads with the
//!   sender, its own heads, the sender's last heads) and applies it as usual; if none match it
//!   applies nothing and answers with a whole `Sync` (never another `SyncIdle`), and the
//!   protocol proceeds as without persisted state. An idle reconnect is then about 87 bytes
//!   each way per document instead of about 147. The initiator need not send `Docs` for
//!   documents it resumes with persisted sync states: a `Sync`/`SyncIdle` opens a document's
//!   exchange by itself; `Docs` is for documents whose set is not known.
//! - Rotation: a device starts epoch N+1 of its document when its history outgrew it (the
//!   edge's `live.rs` says when and why it is safe); epoch N is frozen and still synced until
//!   the hub holds its final heads. The hub accepts any epoch of the device's own id; a
//!   reader of a device's facts takes the newest epoch it holds, and a projection never lets
//!   an older epoch undo what a newer one said (a closed rental stays closed).
//! - Before a received `Sync` is applied, every change it carries is decoded and checked
//!   ([`authority`]): a device document accepts only the owning device's actor id (its UUID's
//!   16 bytes), an intents document only the hub's actors. A refused message is not applied;
//!   the receiver sends `Error{AUTHORITY, doc}`, audits it, and keeps syncing everything else.
//! - Relays: a branch Pi or a technician may forward another device's changes; they are still
//!   checked by actor. The actor check does **not** prove authorship — any peer that can
//!   reach us could write a change labelled with another device's actor id. A direct session
//!   is covered by the certificate (a device may only send changes to its own document); a
//!   relayed change is accepted only when it is covered by heads the owner signed
//!   (`SignedHeads`, [`signed_heads`]).
//! - `LedgerAck{device, rentals}`: the hub holds these closed rentals — started or returned
//!   at this device — durably; the device may drop them from its live document: a rental it
//!   started from `rentals`, a cart of another device's rental that docked here from
//!   `returns`. The hub acknowledges a return only once its rental is closed in the hub's
//!   store and the origin device's own document shows it closed (the origin no longer needs
//!   the fact). Idempotent.
//! - `Telemetry`: batched events, at most 256 per message, each with its own clocks. With
//!   the `telemetry-ack` capability the receiver answers each batch, in order, with
//!   `TelemetryAck` once it holds it (or closes the session if it cannot store it), and the
//!   sender keeps a batch until then. Delivery is at least once: a sender gives two events of
//!   one kind distinct (`boot`, `mono_ms`), and the receiver deduplicates on
//!   (sender, `boot`, `mono_ms`, `kind`).
//!
//! Delivery is idempotent throughout: Automerge ignores changes it has, `LedgerAck` and
//! telemetry carry ids or are deduplicated by the receiver, so replaying a session changes
//! nothing.

pub mod authority;
pub mod bundle;
mod codes;
pub mod doc_id;
pub mod doc_sync;
pub mod facts;
pub mod frame;
pub mod intents;
pub mod message;
pub mod session;
pub mod signed_heads;
pub mod technician;

pub use authority::{AuthorityError, HubActors, check_changes, device_actor, hub_actor};
pub use codes::{error_code, refusal};
pub use doc_id::{DocId, DocIdError, DocOwner};
pub use doc_sync::{DocSyncError, PeerDocState, SyncDocument};
pub use frame::{FRAME_LEN_MAX, FrameDecoder, FrameError};
pub use message::{Message, MessageError, MessageKind};
pub use session::{CloseReason, Output, Session, SessionConfig, SessionError, SessionEvent, Side};
pub use signed_heads::{
    CertVerifier, HeadsSigner, HeadsVerifier, SignedHeads, covered, covered_incoming,
};
pub mod identity;
