//! The sans-IO session state machine of one connection: handshake, version and capability
//! negotiation, admission, heartbeats and liveness, message dispatch, bounded queues.
//!
//! The shell feeds it stream bytes (`handle_bytes`) or single frame payloads (`handle_frame`),
//! calls `handle_timeout` when `poll_timeout` says, and after every call drains `poll_output`:
//! framed bytes to write, events for the application. The session owns no documents: the
//! application runs one [`PeerDocState`](crate::doc_sync::PeerDocState) per document and
//! passes `Sync` bodies in and out with [`Session::send`] and
//! [`SessionEvent::SyncReceived`].

use std::collections::VecDeque;

use cartwise_schema::ClockReading;

use crate::doc_sync::idle_parts;
use crate::frame::{FEED_CHUNK_LEN_MAX, FrameDecoder};
use crate::message::{
    Busy, Bye, ErrorBody, Heartbeat, HeartbeatAck, Hello, Message, Refused, Role, SyncBody,
    SyncIdle, Welcome,
};
use crate::{error_code, refusal};

mod dispatch;
mod types;

pub use types::{
    ALPN, ClockSample, CloseReason, HANDSHAKE_TIMEOUT_MS_DEFAULT, HEARTBEAT_INTERVAL_MS_DEFAULT,
    HEARTBEAT_INTERVAL_MS_MAX, HEARTBEAT_INTERVAL_MS_MIN, HEARTBEAT_MISSES_MAX,
    HEARTBEAT_SPACING_MS_MIN, LocalIdentity, OUTPUT_QUEUE_MAX, Output, PIPELINED_MAX,
    PROTOCOL_MAJOR, PROTOCOL_MINOR, SessionConfig, SessionError, SessionEvent, Side,
    VIOLATIONS_MAX, capability,
};

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Our `Hello` is sent; the peer's has not arrived.
    AwaitingHello,
    /// Initiator: the peer's `Hello` arrived; waiting for `Welcome`, `Busy` or `Refused`.
    AwaitingWelcome,
    /// Responder: the peer's `Hello` arrived; the application decides.
    AwaitingAdmission,
    /// Messages flow.
    Established,
    /// Over.
    Closed,
}

/// What both sides agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Negotiated {
    minor: u16,
    capabilities: Vec<String>,
}

/// One connection's protocol state. See the crate documentation for the protocol.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    role: Role,
    phase: Phase,
    hello: Hello,
    peer: Option<Hello>,
    negotiated: Option<Negotiated>,
    decoder: FrameDecoder,
    outputs: VecDeque<Output>,
    /// Responder: messages received while admission is pending.
    held: VecDeque<Message>,
    /// Initiator: messages sent before the `Welcome`.
    pipelined: usize,
    /// Initiator: whole messages of the `SyncIdle`s pipelined before the `Welcome`, resent as
    /// `Sync` if the responder does not speak `sync-idle` (at most [`PIPELINED_MAX`]).
    idle_pipelined: Vec<SyncBody>,
    violations: u32,
    /// Monotonic deadline of the handshake.
    handshake_deadline_ms: u64,
    /// Monotonic time of the last frame received.
    last_received_ms: u64,
    /// Monotonic time the next heartbeat is due (once established).
    next_heartbeat_ms: u64,
    heartbeat_seq: u64,
    /// The heartbeat awaiting its ack: (seq, monotonic time sent).
    heartbeat_in_flight: Option<(u64, u64)>,
    /// Monotonic time of the last peer heartbeat answered.
    last_peer_heartbeat_ms: Option<u64>,
}

impl Session {
    /// A session that has just queued its `Hello` (drain `poll_output`).
    pub fn new(config: SessionConfig, identity: LocalIdentity, now: ClockReading) -> Self {
        let now_ms = now.mono.get();
        let hello = Hello {
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: config.protocol_minor,
            capabilities: config.capabilities.clone(),
            schema_version: identity.schema_version,
            role: identity.role,
            chain: identity.chain,
            branch: identity.branch,
            device: identity.device,
            wall_ms: now.wall,
            boot: now.boot,
            mono_ms: now.mono,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
        };
        let mut session = Session {
            handshake_deadline_ms: now_ms.saturating_add(config.handshake_timeout_ms),
            config,
            role: identity.role,
            phase: Phase::AwaitingHello,
            hello: hello.clone(),
            peer: None,
            negotiated: None,
            decoder: FrameDecoder::new(),
            outputs: VecDeque::new(),
            held: VecDeque::new(),
            pipelined: 0,
            idle_pipelined: Vec::new(),
            violations: 0,
            last_received_ms: now_ms,
            next_heartbeat_ms: u64::MAX,
            heartbeat_seq: 0,
            heartbeat_in_flight: None,
            last_peer_heartbeat_ms: None,
        };
        session.queue_message(&Message::Hello(hello));
        session
    }

    /// Feeds bytes read from the stream; handles every complete frame.
    pub fn handle_bytes(&mut self, now: ClockReading, bytes: &[u8]) -> Result<(), SessionError> {
        for chunk in bytes.chunks(FEED_CHUNK_LEN_MAX) {
            self.ensure_open()?;
            if let Err(error) = self.decoder.feed(chunk) {
                return Err(self.fail(CloseReason::Frame(error)));
            }
            loop {
                match self.decoder.next() {
                    Ok(Some(payload)) => self.handle_frame(now, &payload)?,
                    Ok(None) => break,
                    Err(error) => return Err(self.fail(CloseReason::Frame(error))),
                }
            }
        }
        Ok(())
    }

    /// Handles one frame payload (without its length prefix).
    pub fn handle_frame(&mut self, now: ClockReading, payload: &[u8]) -> Result<(), SessionError> {
        self.ensure_open()?;
        self.last_received_ms = self.last_received_ms.max(now.mono.get());
        let message = match Message::decode(payload) {
            Ok(message) => message,
            Err(error) => {
                let code = match error {
                    crate::message::MessageError::Limit { .. } => error_code::LIMIT,
                    _ => error_code::MALFORMED,
                };
                return self.violation(code, error.to_string(), None);
            }
        };
        self.dispatch(now, message)
    }

    /// The monotonic time (ms) at which `handle_timeout` must be called, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.phase {
            Phase::Closed => None,
            Phase::Established => Some(self.next_heartbeat_ms.min(self.peer_deadline_ms())),
            _ => Some(self.handshake_deadline_ms),
        }
    }

    /// Sends a due heartbeat, or closes a session whose peer went silent or whose handshake
    /// took too long.
    pub fn handle_timeout(&mut self, now: ClockReading) -> Result<(), SessionError> {
        self.ensure_open()?;
        let now_ms = now.mono.get();
        if self.phase != Phase::Established {
            if now_ms >= self.handshake_deadline_ms {
                return Err(self.fail(CloseReason::HandshakeTimedOut));
            }
            return Ok(());
        }
        if now_ms >= self.peer_deadline_ms() {
            return Err(self.fail(CloseReason::PeerTimedOut));
        }
        if now_ms >= self.next_heartbeat_ms {
            self.heartbeat_seq += 1;
            self.heartbeat_in_flight = Some((self.heartbeat_seq, now_ms));
            self.next_heartbeat_ms =
                now_ms.saturating_add(u64::from(self.config.heartbeat_interval_ms));
            self.queue_message(&Message::Heartbeat(Heartbeat {
                seq: self.heartbeat_seq,
                wall_ms: now.wall,
                boot: now.boot,
                mono_ms: now.mono,
            }));
        }
        self.check_output_room()
    }

    /// The next output, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Sends an application message: `Docs`, `Sync`, `SignedHeads`, `LedgerAck`, `Telemetry`
    /// or `Error`. An initiator may pipeline up to [`PIPELINED_MAX`] `Docs`/`Sync` messages
    /// before the `Welcome`. A `Sync` body in idle form (`doc_sync`) goes as `SyncIdle` when
    /// the peer speaks `sync-idle` (or, pipelined, may: it is resent whole if the `Welcome`
    /// says otherwise), else as its whole message.
    pub fn send(&mut self, message: Message) -> Result<(), SessionError> {
        self.ensure_open()?;
        let message = match message {
            Message::Sync(body) => self.sync_wire_form(body),
            other => other,
        };
        let kind = message
            .kind()
            .ok_or(SessionError::UnknownKind { tag: message.tag() })?;
        self.check_sendable(kind)?;
        let frame = message.to_frame()?;
        if self.phase != Phase::Established {
            self.pipelined += 1;
        }
        self.push(Output::Send(frame))?;
        Ok(())
    }

    /// The form a `Sync` body goes out in (see [`Session::send`]).
    fn sync_wire_form(&mut self, body: SyncBody) -> Message {
        let Some((digest, full)) = idle_parts(&body.data) else {
            return Message::Sync(body);
        };
        let idle = Message::SyncIdle(SyncIdle {
            doc: body.doc,
            digest,
        });
        let offered = self
            .config
            .capabilities
            .iter()
            .any(|cap| cap == capability::SYNC_IDLE);
        let whole = SyncBody {
            doc: body.doc,
            data: full.to_vec(),
        };
        if self.phase == Phase::Established {
            if self.has_capability(capability::SYNC_IDLE) || full.is_empty() {
                return idle;
            }
            return Message::Sync(whole);
        }
        if self.config.side == Side::Initiator
            && offered
            && !full.is_empty()
            && self.idle_pipelined.len() < PIPELINED_MAX
        {
            self.idle_pipelined.push(whole);
            return idle;
        }
        Message::Sync(whole)
    }

    /// Initiator, on `Welcome`: resends whole the `SyncIdle`s the responder cannot read.
    fn settle_idle_pipelined(&mut self) {
        let pipelined = std::mem::take(&mut self.idle_pipelined);
        if self.has_capability(capability::SYNC_IDLE) {
            return;
        }
        for body in pipelined {
            self.queue_message(&Message::Sync(body));
        }
    }

    /// Responder: accepts the peer after `PeerHello`; sends `Welcome` with this node's clock.
    pub fn admit(&mut self, now: ClockReading) -> Result<(), SessionError> {
        self.ensure_open()?;
        let (Phase::AwaitingAdmission, Some(peer), Some(negotiated)) =
            (self.phase, self.peer.as_ref(), self.negotiated.as_ref())
        else {
            return Err(SessionError::NoAdmissionPending);
        };
        let welcome = Welcome {
            protocol_minor: negotiated.minor,
            capabilities: negotiated.capabilities.clone(),
            wall_ms: now.wall,
            wall_trusted: self.config.wall_trusted,
            your_wall_ms_echo: peer.wall_ms,
            your_mono_ms_echo: peer.mono_ms,
        };
        self.queue_message(&Message::Welcome(welcome));
        self.establish(now);
        while let Some(message) = self.held.pop_front() {
            self.dispatch(now, message)?;
        }
        self.check_output_room()
    }

    /// Responder: tells the peer to come back after `retry_after_ms`, and closes.
    pub fn busy(&mut self, retry_after_ms: u32) -> Result<(), SessionError> {
        self.require_admission_pending()?;
        self.queue_message(&Message::Busy(Busy { retry_after_ms }));
        self.close_with(CloseReason::DeferredPeer);
        Ok(())
    }

    /// Responder: refuses the peer (e.g. its `Hello` disagrees with its certificate), and
    /// closes.
    pub fn refuse(&mut self, code: u16, reason: &str) -> Result<(), SessionError> {
        self.require_admission_pending()?;
        self.refuse_now(code, reason);
        Ok(())
    }

    /// Says `Bye` and closes.
    pub fn close(&mut self, reason: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        self.queue_message(&Message::Bye(Bye {
            reason: truncate(reason),
        }));
        self.close_with(CloseReason::Local);
    }

    /// Whether the handshake completed and the session is not closed.
    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The peer's `Hello`, once received.
    pub fn peer_hello(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    /// The negotiated capabilities (empty before the handshake).
    pub fn capabilities(&self) -> &[String] {
        self.negotiated
            .as_ref()
            .map_or(&[], |negotiated| negotiated.capabilities.as_slice())
    }

    /// Outputs waiting to be polled.
    pub fn pending_outputs(&self) -> usize {
        self.outputs.len()
    }

    // ---- internals shared with `dispatch` ----

    /// `Err(Closed)` once closed.
    fn ensure_open(&self) -> Result<(), SessionError> {
        match self.phase {
            Phase::Closed => Err(SessionError::Closed),
            _ => Ok(()),
        }
    }

    fn require_admission_pending(&self) -> Result<(), SessionError> {
        match self.phase {
            Phase::AwaitingAdmission => Ok(()),
            Phase::Closed => Err(SessionError::Closed),
            _ => Err(SessionError::NoAdmissionPending),
        }
    }

    /// Deadline for the next frame from the peer.
    fn peer_deadline_ms(&self) -> u64 {
        let interval = self
            .peer
            .as_ref()
            .map_or(self.config.heartbeat_interval_ms, |peer| {
                peer.heartbeat_interval_ms
            })
            .clamp(HEARTBEAT_INTERVAL_MS_MIN, HEARTBEAT_INTERVAL_MS_MAX);
        self.last_received_ms
            .saturating_add(u64::from(interval) * HEARTBEAT_MISSES_MAX)
    }

    /// Enters `Established` and starts the heartbeat timer.
    fn establish(&mut self, now: ClockReading) {
        self.phase = Phase::Established;
        self.next_heartbeat_ms = now
            .mono
            .get()
            .saturating_add(u64::from(self.config.heartbeat_interval_ms));
        if let Some(negotiated) = &self.negotiated {
            let event = SessionEvent::Established {
                protocol_minor: negotiated.minor,
                capabilities: negotiated.capabilities.clone(),
            };
            self.outputs.push_back(Output::Event(event));
        }
    }

    /// Sends `Refused` and closes.
    fn refuse_now(&mut self, code: u16, reason: &str) {
        self.queue_message(&Message::Refused(Refused {
            code,
            reason: truncate(reason),
        }));
        self.close_with(CloseReason::RefusedPeer { code });
    }

    /// Answers a rule broken by the peer with an `Error`; closes after [`VIOLATIONS_MAX`].
    fn violation(
        &mut self,
        code: u16,
        reason: String,
        doc: Option<crate::DocId>,
    ) -> Result<(), SessionError> {
        if self.phase == Phase::AwaitingHello {
            return Err(self.protocol_failure(format!("before Hello: {reason}")));
        }
        self.violations += 1;
        if self.violations > VIOLATIONS_MAX {
            self.queue_message(&Message::Error(ErrorBody {
                code: error_code::TOO_MANY_VIOLATIONS,
                reason: format!("more than {VIOLATIONS_MAX} violations; closing"),
                doc: None,
            }));
            return Err(self.fail(CloseReason::Protocol {
                reason: format!("more than {VIOLATIONS_MAX} violations, last: {reason}"),
            }));
        }
        let reason = truncate(&reason);
        self.queue_message(&Message::Error(ErrorBody {
            code,
            reason: reason.clone(),
            doc,
        }));
        self.push(Output::Event(SessionEvent::PeerViolation { code, reason }))
    }

    /// Closes for a broken handshake: a responder refuses, an initiator just closes.
    fn protocol_failure(&mut self, reason: String) -> SessionError {
        if self.config.side == Side::Responder && self.phase != Phase::Established {
            self.refuse_now(refusal::PROTOCOL, &reason);
            return SessionError::Fatal(CloseReason::RefusedPeer {
                code: refusal::PROTOCOL,
            });
        }
        self.fail(CloseReason::Protocol { reason })
    }

    /// Closes for `reason` and returns the error for the caller.
    fn fail(&mut self, reason: CloseReason) -> SessionError {
        if reason == CloseReason::OutputQueueFull {
            self.outputs.clear();
        }
        self.close_with(reason.clone());
        SessionError::Fatal(reason)
    }

    /// Enters `Closed` and queues the `Closed` event (always, even past the output limit).
    fn close_with(&mut self, reason: CloseReason) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.held.clear();
        self.outputs
            .push_back(Output::Event(SessionEvent::Closed(reason)));
    }

    /// Queues a session-generated message. These bodies are built within limits, so encoding
    /// cannot fail; if it ever did, the message is dropped rather than the process panicking.
    fn queue_message(&mut self, message: &Message) {
        if let Ok(frame) = message.to_frame() {
            self.outputs.push_back(Output::Send(frame));
        }
    }

    /// Queues an output, closing the session if the queue is over its limit.
    fn push(&mut self, output: Output) -> Result<(), SessionError> {
        self.outputs.push_back(output);
        self.check_output_room()
    }

    /// `Err` (and closed) when the output queue is over [`OUTPUT_QUEUE_MAX`].
    fn check_output_room(&mut self) -> Result<(), SessionError> {
        if self.outputs.len() > OUTPUT_QUEUE_MAX {
            return Err(self.fail(CloseReason::OutputQueueFull));
        }
        Ok(())
    }

    /// Answers a peer heartbeat, unless it floods.
    fn answer_heartbeat(
        &mut self,
        now: ClockReading,
        heartbeat: Heartbeat,
    ) -> Result<(), SessionError> {
        let now_ms = now.mono.get();
        if let Some(last) = self.last_peer_heartbeat_ms
            && now_ms.saturating_sub(last) < HEARTBEAT_SPACING_MS_MIN
        {
            return self.violation(
                error_code::FLOOD,
                format!("heartbeats closer than {HEARTBEAT_SPACING_MS_MIN} ms"),
                None,
            );
        }
        self.last_peer_heartbeat_ms = Some(now_ms);
        self.queue_message(&Message::HeartbeatAck(HeartbeatAck {
            seq: heartbeat.seq,
            wall_ms: now.wall,
            wall_trusted: self.config.wall_trusted,
        }));
        self.push(Output::Event(SessionEvent::Heartbeat(heartbeat)))
    }
}

/// At most `REASON_LEN_MAX` bytes of `reason`, cut on a character boundary.
fn truncate(reason: &str) -> String {
    let max = crate::message::body::REASON_LEN_MAX;
    if reason.len() <= max {
        return reason.to_owned();
    }
    let mut end = max;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}
