//! `TelemetryAck` (tag 65): sent and accepted only when both peers offered `telemetry-ack`;
//! a peer without it gets no acknowledgement and treats a stray one as a violation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

mod common;

use cartwise_sync_core::message::{Telemetry, TelemetryAck, TelemetryEvent};
use cartwise_sync_core::session::{SessionConfig, Side, capability};
use cartwise_sync_core::{Message, MessageKind, Session, SessionError, SessionEvent, error_code};
use common::{BOOT_A, BOOT_HUB, clock, drain};

/// Runs the handshake with `device_caps` offered by the device; returns (device, hub).
fn established(device_caps: &[&str]) -> (Session, Session) {
    let mut config = SessionConfig::new(Side::Initiator);
    config.capabilities = device_caps.iter().map(|cap| (*cap).to_owned()).collect();
    let mut device = Session::new(
        config,
        common::device_identity(common::device_a()),
        clock(BOOT_A, 100),
    );
    let mut hub = Session::new(
        common::hub_config(),
        common::hub_identity(),
        clock(BOOT_HUB, 1_000),
    );
    let (bytes, _, _) = drain(&mut device);
    hub.handle_bytes(clock(BOOT_HUB, 1_010), &bytes).unwrap();
    hub.admit(clock(BOOT_HUB, 1_020)).unwrap();
    let (bytes, _, _) = drain(&mut hub);
    device.handle_bytes(clock(BOOT_A, 140), &bytes).unwrap();
    drain(&mut device);
    assert!(device.is_established() && hub.is_established());
    (device, hub)
}

fn batch() -> (Telemetry, TelemetryAck) {
    let at = clock(BOOT_A, 5_000);
    let telemetry = Telemetry {
        events: vec![TelemetryEvent {
            kind: "bus.reopen".into(),
            data_json: "{}".into(),
            wall_ms: at.wall,
            boot: at.boot,
            mono_ms: at.mono,
        }],
    };
    let ack = TelemetryAck {
        events: 1,
        last_boot: at.boot,
        last_mono_ms: at.mono,
    };
    (telemetry, ack)
}

#[test]
fn the_hub_acknowledges_a_batch_and_the_device_is_told() {
    let (mut device, mut hub) = established(&[capability::TELEMETRY, capability::TELEMETRY_ACK]);
    let (telemetry, ack) = batch();
    device.send(Message::Telemetry(telemetry.clone())).unwrap();
    let (bytes, _, _) = drain(&mut device);
    hub.handle_bytes(clock(BOOT_HUB, 2_000), &bytes).unwrap();
    let (_, _, events) = drain(&mut hub);
    assert_eq!(events, [SessionEvent::Telemetry(telemetry)]);

    hub.send(Message::TelemetryAck(ack.clone())).unwrap();
    let (bytes, _, _) = drain(&mut hub);
    device.handle_bytes(clock(BOOT_A, 6_000), &bytes).unwrap();
    let (_, _, events) = drain(&mut device);
    assert_eq!(events, [SessionEvent::TelemetryAck(ack)]);
}

#[test]
fn without_the_capability_no_ack_is_sent_and_a_stray_one_is_a_violation() {
    let (mut device, mut hub) = established(&[capability::TELEMETRY]);
    let (_, ack) = batch();
    assert_eq!(
        hub.send(Message::TelemetryAck(ack.clone())),
        Err(SessionError::CapabilityMissing {
            kind: MessageKind::TelemetryAck,
            capability: capability::TELEMETRY_ACK,
        })
    );
    let frame = Message::TelemetryAck(ack).to_frame().unwrap();
    device.handle_bytes(clock(BOOT_A, 6_000), &frame).unwrap();
    let (_, _, events) = drain(&mut device);
    assert!(
        events.iter().any(|event| matches!(
            event,
            SessionEvent::PeerViolation { code, .. } if *code == error_code::UNEXPECTED
        )),
        "{events:?}"
    );
}

#[test]
fn telemetry_ack_has_its_own_never_reused_tag() {
    assert_eq!(MessageKind::TelemetryAck.tag(), 65);
    assert_eq!(MessageKind::from_tag(65), Some(MessageKind::TelemetryAck));
    assert!(
        SessionConfig::new(Side::Initiator)
            .capabilities
            .iter()
            .any(|cap| cap == capability::TELEMETRY_ACK),
        "offered by default"
    );
}
