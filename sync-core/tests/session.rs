//! The session state machine through its inputs and outputs: handshake and negotiation,
//! version refusal, busy, admission, pipelining, heartbeats and liveness, clock samples,
//! unknown kinds, and bounded memory under a flood.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

mod common;

use cartwise_schema::ClockReading;
use cartwise_sync_core::message::{Heartbeat, Hello, Role, SyncBody};
use cartwise_sync_core::session::{
    HEARTBEAT_INTERVAL_MS_DEFAULT, OUTPUT_QUEUE_MAX, PIPELINED_MAX, SessionConfig, Side,
    VIOLATIONS_MAX,
};
use cartwise_sync_core::{
    CloseReason, DocId, Message, Session, SessionError, SessionEvent, error_code, refusal,
};
use common::{BOOT_A, BOOT_HUB, clock, drain};

fn device_at(mono: u64) -> Session {
    Session::new(
        SessionConfig::new(Side::Initiator),
        common::device_identity(common::device_a()),
        clock(BOOT_A, mono),
    )
}

fn hub_at(mono: u64) -> Session {
    Session::new(
        common::hub_config(),
        common::hub_identity(),
        clock(BOOT_HUB, mono),
    )
}

/// Moves everything `from` wants to send into `to`; returns `from`'s events.
fn deliver(from: &mut Session, to: &mut Session, now: ClockReading) -> Vec<SessionEvent> {
    let (bytes, _, events) = drain(from);
    let _ = to.handle_bytes(now, &bytes);
    events
}

/// Runs the handshake to `Established` on both sides; returns (device, hub).
fn established() -> (Session, Session) {
    let (mut device, mut hub) = (device_at(100), hub_at(1_000));
    deliver(&mut device, &mut hub, clock(BOOT_HUB, 1_010));
    deliver(&mut hub, &mut device, clock(BOOT_A, 120));
    hub.admit(clock(BOOT_HUB, 1_020)).unwrap();
    deliver(&mut hub, &mut device, clock(BOOT_A, 140));
    assert!(device.is_established() && hub.is_established());
    (device, hub)
}

#[test]
fn handshake_negotiates_and_samples_the_trusted_clock() {
    let mut device = device_at(100);
    let mut config = common::hub_config();
    config.capabilities = vec!["telemetry".into(), "x-future".into()];
    let mut hub = Session::new(config, common::hub_identity(), clock(BOOT_HUB, 1_000));
    deliver(&mut device, &mut hub, clock(BOOT_HUB, 1_010));
    let (mut hub_bytes, frames, hub_events) = drain(&mut hub);
    assert_eq!(frames, 1, "the hub's Hello");
    let [SessionEvent::PeerHello(hello)] = hub_events.as_slice() else {
        panic!("{hub_events:?}");
    };
    assert_eq!(hello.role, Role::Device);
    assert_eq!(hello.device, Some(common::device_a()));
    assert!(
        !hub.is_established(),
        "waits for the application's admission"
    );
    hub.admit(clock(BOOT_HUB, 1_020)).unwrap();
    let (welcome, frames, hub_events) = drain(&mut hub);
    assert_eq!(frames, 1, "the Welcome");
    assert_eq!(
        hub_events,
        vec![SessionEvent::Established {
            protocol_minor: cartwise_sync_core::session::PROTOCOL_MINOR,
            capabilities: vec!["telemetry".into()]
        }]
    );
    hub_bytes.extend(welcome);
    // The hub's Hello and Welcome arrive 60 ms after the device sent its Hello.
    device.handle_bytes(clock(BOOT_A, 160), &hub_bytes).unwrap();
    let (_, _, events) = drain(&mut device);
    let sample = events
        .iter()
        .find_map(|event| match event {
            SessionEvent::ClockSample(sample) => Some(*sample),
            _ => None,
        })
        .expect("a clock sample");
    assert_eq!(sample.rtt_ms, 60);
    assert_eq!(sample.local, clock(BOOT_A, 160));
    // The hub's wall at 1 020 ms (1_700_000_001_020) plus half the round trip.
    assert_eq!(sample.trusted_wall.get(), 1_700_000_001_050);
    assert!(device.is_established());
    assert_eq!(device.capabilities(), ["telemetry"]);
}

#[test]
fn a_different_major_is_refused() {
    let mut hub = hub_at(0);
    drain(&mut hub);
    let hello = Message::Hello(Hello {
        protocol_major: 2,
        protocol_minor: 0,
        capabilities: vec![],
        schema_version: 1,
        role: Role::Device,
        chain: common::chain(),
        branch: Some(common::branch()),
        device: Some(common::device_a()),
        wall_ms: clock(BOOT_A, 0).wall,
        boot: common::boot(BOOT_A),
        mono_ms: clock(BOOT_A, 0).mono,
        heartbeat_interval_ms: 30_000,
    });
    let result = hub.handle_bytes(clock(BOOT_HUB, 5), &hello.to_frame().unwrap());
    assert_eq!(
        result,
        Err(SessionError::Fatal(CloseReason::RefusedPeer {
            code: refusal::VERSION
        }))
    );
    let (bytes, frames, events) = drain(&mut hub);
    assert_eq!(frames, 1);
    let Message::Refused(refused) = Message::decode(&bytes[4..]).unwrap() else {
        panic!("not a Refused");
    };
    assert_eq!(refused.code, refusal::VERSION);
    assert_eq!(refused.reason, "protocol major 2 is not 1");
    assert_eq!(
        events,
        vec![SessionEvent::Closed(CloseReason::RefusedPeer {
            code: refusal::VERSION
        })]
    );
    assert!(hub.is_closed());

    // The initiator sees the refusal and closes with it.
    let mut device = device_at(0);
    drain(&mut device);
    let mut hub = hub_at(0);
    let (hub_hello, _, _) = drain(&mut hub);
    device.handle_bytes(clock(BOOT_A, 3), &hub_hello).unwrap();
    device.handle_bytes(clock(BOOT_A, 4), &bytes).unwrap();
    let (_, _, events) = drain(&mut device);
    assert_eq!(
        events.last(),
        Some(&SessionEvent::Closed(CloseReason::RefusedByPeer {
            code: refusal::VERSION,
            reason: "protocol major 2 is not 1".into()
        }))
    );
}

#[test]
fn busy_closes_with_the_retry_hint_and_drops_pipelined_messages() {
    let (mut device, mut hub) = (device_at(0), hub_at(0));
    let doc = DocId::device(common::device_a());
    device
        .send(Message::Sync(SyncBody {
            doc,
            data: vec![0x42],
        }))
        .unwrap();
    deliver(&mut device, &mut hub, clock(BOOT_HUB, 5));
    hub.busy(60_000).unwrap();
    let events = deliver(&mut hub, &mut device, clock(BOOT_A, 10));
    assert!(
        !events
            .iter()
            .any(|event| matches!(event, SessionEvent::SyncReceived(_))),
        "{events:?}"
    );
    assert_eq!(
        events.last(),
        Some(&SessionEvent::Closed(CloseReason::DeferredPeer))
    );
    let (_, _, events) = drain(&mut device);
    assert_eq!(
        events.last(),
        Some(&SessionEvent::Closed(CloseReason::Busy {
            retry_after_ms: 60_000
        }))
    );
}

#[test]
fn pipelined_messages_are_delivered_after_admission_and_bounded() {
    let (mut device, mut hub) = (device_at(0), hub_at(0));
    let doc = DocId::device(common::device_a());
    for _ in 0..PIPELINED_MAX {
        device
            .send(Message::Sync(SyncBody { doc, data: vec![1] }))
            .unwrap();
    }
    assert_eq!(
        device.send(Message::Sync(SyncBody { doc, data: vec![1] })),
        Err(SessionError::NotEstablished(
            cartwise_sync_core::MessageKind::Sync
        ))
    );
    deliver(&mut device, &mut hub, clock(BOOT_HUB, 5));
    hub.admit(clock(BOOT_HUB, 6)).unwrap();
    let (_, _, events) = drain(&mut hub);
    let synced = events
        .iter()
        .filter(|event| matches!(event, SessionEvent::SyncReceived(_)))
        .count();
    assert_eq!(synced, PIPELINED_MAX);
    // The responder's application cannot send before it admits.
    let mut hub = hub_at(0);
    assert!(matches!(
        hub.send(Message::Sync(SyncBody { doc, data: vec![] })),
        Err(SessionError::NotEstablished(_))
    ));
}

#[test]
fn heartbeats_flow_and_a_silent_peer_is_gone_after_three_intervals() {
    let (mut device, mut hub) = established();
    drain(&mut device);
    let interval = u64::from(HEARTBEAT_INTERVAL_MS_DEFAULT);
    let due = device.poll_timeout().unwrap();
    assert_eq!(due, 140 + interval);
    device.handle_timeout(clock(BOOT_A, due)).unwrap();
    deliver(&mut device, &mut hub, clock(BOOT_HUB, 31_000));
    let events = deliver(&mut hub, &mut device, clock(BOOT_A, due + 40));
    assert!(
        events
            .iter()
            .any(|event| matches!(event, SessionEvent::Heartbeat(Heartbeat { seq: 1, .. })))
    );
    let (_, _, events) = drain(&mut device);
    assert!(
        events
            .iter()
            .any(|event| matches!(event, SessionEvent::ClockSample(sample) if sample.rtt_ms == 40)),
        "{events:?}"
    );
    // Now the hub goes silent: the device gives up 3 intervals after the last frame.
    let mut now = due + 40;
    loop {
        let next = device.poll_timeout().unwrap();
        assert!(next >= now);
        now = next;
        match device.handle_timeout(clock(BOOT_A, now)) {
            Ok(()) => drain(&mut device),
            Err(error) => {
                assert_eq!(error, SessionError::Fatal(CloseReason::PeerTimedOut));
                break;
            }
        };
    }
    assert_eq!(now, due + 40 + 3 * interval);
}

#[test]
fn the_handshake_times_out() {
    let mut hub = hub_at(0);
    drain(&mut hub);
    let deadline = hub.poll_timeout().unwrap();
    hub.handle_timeout(clock(BOOT_HUB, deadline - 1)).unwrap();
    assert_eq!(
        hub.handle_timeout(clock(BOOT_HUB, deadline)),
        Err(SessionError::Fatal(CloseReason::HandshakeTimedOut))
    );
    assert_eq!(hub.poll_timeout(), None);
}

#[test]
fn unknown_kinds_are_violations_unless_the_peer_is_newer() {
    #[derive(serde::Serialize)]
    struct Envelope {
        k: u16,
        #[serde(with = "serde_bytes")]
        b: Vec<u8>,
    }
    let unknown = rmp_serde::to_vec_named(&Envelope {
        k: 200,
        b: vec![0x80],
    })
    .unwrap();
    let (device, mut hub) = established();
    drain(&mut hub);
    hub.handle_frame(clock(BOOT_HUB, 2_000), &unknown).unwrap();
    let (bytes, _, events) = drain(&mut hub);
    assert!(matches!(
        events.as_slice(),
        [SessionEvent::PeerViolation {
            code: error_code::UNEXPECTED,
            ..
        }]
    ));
    let Message::Error(error) = Message::decode(&bytes[4..]).unwrap() else {
        panic!()
    };
    assert_eq!(error.reason, "unknown message tag 200");
    drop(device);

    // A device that speaks a newer minor may send kinds this version does not know.
    let mut config = SessionConfig::new(Side::Initiator);
    config.protocol_minor = cartwise_sync_core::session::PROTOCOL_MINOR + 1;
    let mut newer = Session::new(
        config,
        common::device_identity(common::device_a()),
        clock(BOOT_A, 0),
    );
    let mut hub = hub_at(0);
    deliver(&mut newer, &mut hub, clock(BOOT_HUB, 1));
    hub.admit(clock(BOOT_HUB, 2)).unwrap();
    drain(&mut hub);
    hub.handle_frame(clock(BOOT_HUB, 3), &unknown).unwrap();
    let (_, frames, events) = drain(&mut hub);
    assert_eq!(frames, 0);
    assert_eq!(events, vec![SessionEvent::UnknownSkipped { kind: 200 }]);
}

#[test]
fn a_message_before_hello_is_refused() {
    let mut hub = hub_at(0);
    drain(&mut hub);
    let bye_not_first = Message::Sync(SyncBody {
        doc: DocId::device(common::device_a()),
        data: vec![],
    });
    let result = hub.handle_bytes(clock(BOOT_HUB, 1), &bye_not_first.to_frame().unwrap());
    assert_eq!(
        result,
        Err(SessionError::Fatal(CloseReason::RefusedPeer {
            code: refusal::PROTOCOL
        }))
    );
}

#[test]
fn a_ledger_ack_is_only_accepted_from_the_hub() {
    let (mut device, mut hub) = established();
    let ack = Message::LedgerAck(cartwise_sync_core::message::LedgerAck {
        device: common::device_a(),
        rentals: vec![],
    });
    assert!(matches!(
        device.send(ack.clone()),
        Err(SessionError::RoleMayNotSend { .. })
    ));
    hub.send(ack.clone()).unwrap();
    let events = deliver(&mut hub, &mut device, clock(BOOT_A, 500));
    drop(events);
    let (_, _, events) = drain(&mut device);
    assert!(
        events
            .iter()
            .any(|event| matches!(event, SessionEvent::LedgerAck(_)))
    );
    // Forged from the device side: a violation at the hub.
    drain(&mut hub);
    hub.handle_bytes(clock(BOOT_HUB, 2_000), &ack.to_frame().unwrap())
        .unwrap();
    let (_, _, events) = drain(&mut hub);
    assert!(matches!(
        events.as_slice(),
        [SessionEvent::PeerViolation {
            code: error_code::UNEXPECTED,
            ..
        }]
    ));
}

#[test]
fn a_heartbeat_flood_is_bounded_and_closes_the_session() {
    let (mut device, mut hub) = established();
    drain(&mut device);
    drain(&mut hub);
    // 100 000 heartbeats in one burst, fed in 64 KiB reads, never drained by the shell.
    let mut stream = Vec::new();
    for seq in 1..=100_000 {
        let now = clock(BOOT_A, 200);
        stream.extend(
            Message::Heartbeat(Heartbeat {
                seq,
                wall_ms: now.wall,
                boot: now.boot,
                mono_ms: now.mono,
            })
            .to_frame()
            .unwrap(),
        );
    }
    let mut result = Ok(());
    for chunk in stream.chunks(64 * 1024) {
        result = hub.handle_bytes(clock(BOOT_HUB, 3_000), chunk);
        assert!(hub.pending_outputs() <= OUTPUT_QUEUE_MAX + 1);
        if result.is_err() {
            break;
        }
    }
    let Err(SessionError::Fatal(CloseReason::Protocol { reason })) = result else {
        panic!("{result:?}");
    };
    assert!(
        reason.starts_with(&format!("more than {VIOLATIONS_MAX} violations")),
        "{reason}"
    );
    let (_, frames, events) = drain(&mut hub);
    // One ack, VIOLATIONS_MAX errors, the final error.
    assert_eq!(frames, 1 + VIOLATIONS_MAX as usize + 1);
    assert!(matches!(
        events.last(),
        Some(SessionEvent::Closed(CloseReason::Protocol { .. }))
    ));
    assert_eq!(
        hub.handle_bytes(clock(BOOT_HUB, 3_001), b"x"),
        Err(SessionError::Closed)
    );
}

#[test]
fn an_undrained_output_queue_closes_instead_of_growing() {
    let (_, mut hub) = established();
    // Well-spaced heartbeats (not a flood), but the shell never drains the acks.
    let mut result = Ok(());
    for seq in 0..(OUTPUT_QUEUE_MAX as u64) {
        let now = clock(BOOT_HUB, 10_000 + seq * 1_000);
        let heartbeat = Message::Heartbeat(Heartbeat {
            seq,
            wall_ms: now.wall,
            boot: now.boot,
            mono_ms: now.mono,
        });
        result = hub.handle_bytes(now, &heartbeat.to_frame().unwrap());
        if result.is_err() {
            break;
        }
    }
    assert_eq!(
        result,
        Err(SessionError::Fatal(CloseReason::OutputQueueFull))
    );
    let (_, frames, events) = drain(&mut hub);
    assert_eq!(frames, 0);
    assert_eq!(
        events,
        vec![SessionEvent::Closed(CloseReason::OutputQueueFull)]
    );
}

#[test]
fn an_oversized_frame_closes_the_connection() {
    let (_, mut hub) = established();
    let result = hub.handle_bytes(clock(BOOT_HUB, 5_000), &u32::MAX.to_be_bytes());
    assert!(matches!(
        result,
        Err(SessionError::Fatal(CloseReason::Frame(_)))
    ));
    assert!(hub.is_closed());
}

#[test]
fn session_controlled_and_capability_gated_kinds() {
    let (mut device, _) = established();
    drain(&mut device);
    assert!(matches!(
        device.send(Message::Bye(Default::default())),
        Err(SessionError::SessionControlled(_))
    ));
    device.close("done");
    let (bytes, frames, events) = drain(&mut device);
    assert_eq!(frames, 1);
    assert!(matches!(
        Message::decode(&bytes[4..]).unwrap(),
        Message::Bye(_)
    ));
    assert_eq!(events, vec![SessionEvent::Closed(CloseReason::Local)]);
}
