//! What a received message does in each phase of the session, and which messages the
//! application may send when.

use cartwise_schema::ClockReading;

use super::{
    ClockSample, CloseReason, Negotiated, Output, PIPELINED_MAX, PROTOCOL_MAJOR, Phase, Session,
    SessionError, SessionEvent, Side, capability,
};
use crate::message::{
    EXPERIMENTAL_TAGS, HeartbeatAck, Hello, Message, MessageKind, Role, TechnicianMessage, Welcome,
};
use crate::{error_code, refusal};

impl Session {
    /// Routes one decoded message by phase.
    pub(super) fn dispatch(
        &mut self,
        now: ClockReading,
        message: Message,
    ) -> Result<(), SessionError> {
        if let Message::Bye(bye) = message {
            let reason = CloseReason::PeerBye { reason: bye.reason };
            self.close_with(reason);
            return Ok(());
        }
        match self.phase {
            Phase::Closed => Err(SessionError::Closed),
            Phase::AwaitingHello => self.on_first(message),
            Phase::AwaitingWelcome => self.on_awaiting_welcome(now, message),
            Phase::AwaitingAdmission => self.hold(message),
            Phase::Established => self.on_established(now, message),
        }
    }

    /// The first message must be the peer's `Hello`, of our major version.
    fn on_first(&mut self, message: Message) -> Result<(), SessionError> {
        let Message::Hello(hello) = message else {
            return Err(
                self.protocol_failure(format!("expected Hello first, got tag {}", message.tag()))
            );
        };
        if hello.protocol_major != PROTOCOL_MAJOR {
            let reason = format!(
                "protocol major {} is not {PROTOCOL_MAJOR}",
                hello.protocol_major
            );
            if self.config.side == Side::Responder {
                self.refuse_now(refusal::VERSION, &reason);
                return Err(SessionError::Fatal(CloseReason::RefusedPeer {
                    code: refusal::VERSION,
                }));
            }
            return Err(self.fail(CloseReason::Protocol { reason }));
        }
        self.negotiated = Some(negotiate(&self.hello, &hello));
        self.peer = Some(hello.clone());
        self.phase = match self.config.side {
            Side::Initiator => Phase::AwaitingWelcome,
            Side::Responder => Phase::AwaitingAdmission,
        };
        self.push(Output::Event(SessionEvent::PeerHello(hello)))
    }

    /// Initiator, after the peer's `Hello`: the responder's decision.
    fn on_awaiting_welcome(
        &mut self,
        now: ClockReading,
        message: Message,
    ) -> Result<(), SessionError> {
        match message {
            Message::Welcome(welcome) => self.on_welcome(now, welcome),
            Message::Busy(busy) => {
                self.close_with(CloseReason::Busy {
                    retry_after_ms: busy.retry_after_ms,
                });
                Ok(())
            }
            Message::Refused(refused) => {
                self.close_with(CloseReason::RefusedByPeer {
                    code: refused.code,
                    reason: refused.reason,
                });
                Ok(())
            }
            Message::Error(error) => self.push(Output::Event(SessionEvent::PeerError(error))),
            Message::Unknown { kind, .. } => self.on_unknown(kind),
            other => self.unexpected(&other, "before Welcome"),
        }
    }

    /// Initiator: checks the `Welcome` against what was offered and learns the clock.
    fn on_welcome(&mut self, now: ClockReading, welcome: Welcome) -> Result<(), SessionError> {
        let offered_all = welcome
            .capabilities
            .iter()
            .all(|cap| self.hello.capabilities.contains(cap));
        if welcome.protocol_minor > self.hello.protocol_minor || !offered_all {
            return Err(self.fail(CloseReason::Protocol {
                reason: "Welcome chose a minor version or capability that was not offered"
                    .to_owned(),
            }));
        }
        self.negotiated = Some(Negotiated {
            minor: welcome.protocol_minor,
            capabilities: welcome.capabilities.clone(),
        });
        if welcome.wall_trusted && welcome.your_mono_ms_echo == self.hello.mono_ms {
            let rtt_ms = now.mono.get().saturating_sub(self.hello.mono_ms.get());
            self.clock_sample(now, welcome.wall_ms, rtt_ms);
        }
        self.establish(now);
        self.settle_idle_pipelined();
        self.check_output_room()
    }

    /// Responder awaiting admission: holds messages until `admit` (bounded).
    fn hold(&mut self, message: Message) -> Result<(), SessionError> {
        if self.held.len() >= PIPELINED_MAX {
            return Err(self.protocol_failure(format!(
                "more than {PIPELINED_MAX} messages before admission"
            )));
        }
        self.held.push_back(message);
        Ok(())
    }

    /// Established: hand application messages over, answer heartbeats.
    fn on_established(&mut self, now: ClockReading, message: Message) -> Result<(), SessionError> {
        let event = match message {
            Message::Docs(docs) => SessionEvent::Docs(docs),
            Message::Sync(sync) => SessionEvent::SyncReceived(sync),
            Message::SyncIdle(idle) if self.has_capability(capability::SYNC_IDLE) => {
                SessionEvent::SyncReceived(crate::message::SyncBody {
                    doc: idle.doc,
                    data: crate::doc_sync::idle_form(idle.digest, &[]),
                })
            }
            // Without the capability it is what an older version sees: an unknown kind.
            Message::SyncIdle(_) => return self.on_unknown(MessageKind::SyncIdle.tag()),
            Message::Error(error) => SessionEvent::PeerError(error),
            Message::Heartbeat(heartbeat) => return self.answer_heartbeat(now, heartbeat),
            Message::HeartbeatAck(ack) => return self.on_heartbeat_ack(now, ack),
            Message::SignedHeads(signed) if self.has_capability(capability::SIGNED_HEADS) => {
                SessionEvent::SignedHeads(signed)
            }
            Message::Telemetry(telemetry) if self.has_capability(capability::TELEMETRY) => {
                SessionEvent::Telemetry(telemetry)
            }
            Message::TelemetryAck(ack) if self.has_capability(capability::TELEMETRY_ACK) => {
                SessionEvent::TelemetryAck(ack)
            }
            Message::LedgerAck(ack) if self.peer_role() == Some(Role::Hub) => {
                SessionEvent::LedgerAck(ack)
            }
            Message::Bundle(body) if self.has_capability(capability::TECHNICIAN) => {
                SessionEvent::Technician(TechnicianMessage::Bundle(body))
            }
            Message::BundleResult(body) if self.has_capability(capability::TECHNICIAN) => {
                SessionEvent::Technician(TechnicianMessage::BundleResult(body))
            }
            Message::BusRequest(body) if self.has_capability(capability::TECHNICIAN) => {
                SessionEvent::Technician(TechnicianMessage::BusRequest(body))
            }
            Message::BusReply(body) if self.has_capability(capability::TECHNICIAN) => {
                SessionEvent::Technician(TechnicianMessage::BusReply(body))
            }
            Message::Unknown { kind, .. } => return self.on_unknown(kind),
            other => return self.unexpected(&other, "in this session"),
        };
        self.push(Output::Event(event))
    }

    /// Learns the clock from the ack of our in-flight heartbeat; stale acks are ignored.
    fn on_heartbeat_ack(
        &mut self,
        now: ClockReading,
        ack: HeartbeatAck,
    ) -> Result<(), SessionError> {
        match self.heartbeat_in_flight {
            Some((seq, sent_ms)) if seq == ack.seq => {
                self.heartbeat_in_flight = None;
                if ack.wall_trusted {
                    let rtt_ms = now.mono.get().saturating_sub(sent_ms);
                    self.clock_sample(now, ack.wall_ms, rtt_ms);
                }
                self.check_output_room()
            }
            _ => Ok(()),
        }
    }

    /// Queues a clock sample: the peer's wall time plus half the round trip.
    fn clock_sample(
        &mut self,
        now: ClockReading,
        peer_wall: cartwise_schema::WallMillis,
        rtt_ms: u64,
    ) {
        let half = i64::try_from(rtt_ms / 2).unwrap_or(i64::MAX);
        let sample = ClockSample {
            local: now,
            trusted_wall: peer_wall.saturating_add_ms(half),
            rtt_ms,
        };
        self.outputs
            .push_back(Output::Event(SessionEvent::ClockSample(sample)));
    }

    /// An unknown kind is skipped when the peer speaks a newer minor version (whose new kinds
    /// are optional by rule) or it is an experimental tag under a negotiated `x-` capability;
    /// otherwise it is a violation.
    fn on_unknown(&mut self, kind: u16) -> Result<(), SessionError> {
        let peer_newer = self
            .peer
            .as_ref()
            .is_some_and(|peer| peer.protocol_minor > self.hello.protocol_minor);
        let experimental = EXPERIMENTAL_TAGS.contains(&kind)
            && self
                .capabilities()
                .iter()
                .any(|cap| cap.starts_with(capability::EXPERIMENTAL_PREFIX));
        if peer_newer || experimental {
            return self.push(Output::Event(SessionEvent::UnknownSkipped { kind }));
        }
        self.violation(
            error_code::UNEXPECTED,
            format!("unknown message tag {kind}"),
            None,
        )
    }

    /// A known message that is not allowed here.
    fn unexpected(&mut self, message: &Message, context: &str) -> Result<(), SessionError> {
        let name = message.kind().map_or("unknown", MessageKind::name);
        self.violation(
            error_code::UNEXPECTED,
            format!("{name} not allowed {context} (role, phase or capability)"),
            None,
        )
    }

    pub(super) fn has_capability(&self, capability: &str) -> bool {
        self.capabilities().iter().any(|cap| cap == capability)
    }

    fn peer_role(&self) -> Option<Role> {
        self.peer.as_ref().map(|peer| peer.role)
    }

    /// Whether the application may send `kind` now.
    pub(super) fn check_sendable(&self, kind: MessageKind) -> Result<(), SessionError> {
        use MessageKind as K;
        match kind {
            K::Hello
            | K::Welcome
            | K::Busy
            | K::Refused
            | K::Bye
            | K::Heartbeat
            | K::HeartbeatAck => return Err(SessionError::SessionControlled(kind)),
            K::LedgerAck if self.role != Role::Hub => {
                return Err(SessionError::RoleMayNotSend {
                    role: self.role,
                    kind,
                });
            }
            _ => {}
        }
        if self.phase != Phase::Established {
            let pipelinable = matches!(kind, K::Docs | K::Sync | K::SyncIdle | K::Error);
            if self.config.side == Side::Responder
                || !pipelinable
                || self.pipelined >= PIPELINED_MAX
            {
                return Err(SessionError::NotEstablished(kind));
            }
            return Ok(());
        }
        let needed = match kind {
            K::SignedHeads => Some(capability::SIGNED_HEADS),
            K::SyncIdle => Some(capability::SYNC_IDLE),
            K::Telemetry => Some(capability::TELEMETRY),
            K::TelemetryAck => Some(capability::TELEMETRY_ACK),
            K::Bundle | K::BundleResult | K::BusRequest | K::BusReply => {
                Some(capability::TECHNICIAN)
            }
            _ => None,
        };
        match needed {
            Some(capability) if !self.has_capability(capability) => {
                Err(SessionError::CapabilityMissing { kind, capability })
            }
            _ => Ok(()),
        }
    }
}

/// The lower minor version and the sorted intersection of capabilities.
fn negotiate(local: &Hello, peer: &Hello) -> Negotiated {
    let mut capabilities: Vec<String> = local
        .capabilities
        .iter()
        .filter(|cap| peer.capabilities.contains(cap))
        .cloned()
        .collect();
    capabilities.sort();
    capabilities.dedup();
    Negotiated {
        minor: local.protocol_minor.min(peer.protocol_minor),
        capabilities,
    }
}
