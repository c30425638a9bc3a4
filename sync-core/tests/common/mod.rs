//! Shared test helpers: fixed ids and clocks, one example message per v1 kind (the golden
//! examples), and a two-session harness that delivers frames loss-free.
#![allow(dead_code)]

use cartwise_schema::{
    BootId, BranchId, ChainId, ClockReading, DeviceId, MonoMillis, RentalId, WallMillis,
};
use cartwise_sync_core::message::{
    Busy, Bye, DocHeads, Docs, ErrorBody, Head, Heartbeat, HeartbeatAck, Hello, LedgerAck, Refused,
    Role, SyncBody, Telemetry, TelemetryAck, TelemetryEvent, Welcome,
};
use cartwise_sync_core::session::{LocalIdentity, SessionConfig, Side};
use cartwise_sync_core::{DocId, Message, MessageKind, Output, Session, SessionEvent, SignedHeads};

pub const CHAIN: &str = "0b1e3c2a-0000-4000-8000-000000000001";
pub const BRANCH: &str = "0b1e3c2a-0000-4000-8000-000000000101";
pub const DEVICE_A: &str = "0b1e3c2a-0000-4000-8000-000000001001";
pub const DEVICE_B: &str = "0b1e3c2a-0000-4000-8000-000000001002";
pub const BOOT_A: &str = "0b1e3c2a-0000-4000-8000-00000000b001";
pub const BOOT_HUB: &str = "0b1e3c2a-0000-4000-8000-00000000b0ff";

pub fn chain() -> ChainId {
    CHAIN.parse().unwrap()
}
pub fn branch() -> BranchId {
    BRANCH.parse().unwrap()
}
pub fn device_a() -> DeviceId {
    DEVICE_A.parse().unwrap()
}
pub fn device_b() -> DeviceId {
    DEVICE_B.parse().unwrap()
}
pub fn boot(text: &str) -> BootId {
    text.parse().unwrap()
}

/// A clock reading: wall 2023-11-14 + `mono` ms, of boot `boot_text`.
pub fn clock(boot_text: &str, mono: u64) -> ClockReading {
    ClockReading {
        wall: WallMillis::new(1_700_000_000_000 + mono as i64),
        boot: boot(boot_text),
        mono: MonoMillis::new(mono),
    }
}

/// One fixed example per v1 kind, in tag order. Changing one is a wire change: the golden
/// files under `fixtures/data/sync-v1/` must then fail.
pub fn v1_examples() -> Vec<(MessageKind, Message)> {
    let a = clock(BOOT_A, 5_000);
    let doc = DocId::device(device_a());
    let head = Head([0xAB; 32]);
    let examples = vec![
        Message::Hello(Hello {
            protocol_major: 1,
            protocol_minor: 0,
            capabilities: vec!["signed-heads".into(), "telemetry".into()],
            schema_version: 1,
            role: Role::Device,
            chain: chain(),
            branch: Some(branch()),
            device: Some(device_a()),
            wall_ms: a.wall,
            boot: a.boot,
            mono_ms: a.mono,
            heartbeat_interval_ms: 30_000,
        }),
        Message::Welcome(Welcome {
            protocol_minor: 0,
            capabilities: vec!["signed-heads".into(), "telemetry".into()],
            wall_ms: WallMillis::new(1_700_000_123_456),
            wall_trusted: true,
            your_wall_ms_echo: a.wall,
            your_mono_ms_echo: a.mono,
        }),
        Message::Busy(Busy {
            retry_after_ms: 45_000,
        }),
        Message::Refused(Refused {
            code: 1,
            reason: "protocol major 2 is not 1".into(),
        }),
        Message::Bye(Bye {
            reason: "shutting down".into(),
        }),
        Message::Error(ErrorBody {
            code: 1,
            reason: "change by a foreign actor refused".into(),
            doc: Some(DocId::branch_intents(branch())),
        }),
        Message::Heartbeat(Heartbeat {
            seq: 7,
            wall_ms: a.wall,
            boot: a.boot,
            mono_ms: a.mono,
        }),
        Message::HeartbeatAck(HeartbeatAck {
            seq: 7,
            wall_ms: WallMillis::new(1_700_000_123_500),
            wall_trusted: true,
        }),
        Message::Docs(Docs {
            docs: vec![
                DocHeads {
                    doc,
                    heads: vec![head],
                },
                DocHeads {
                    doc: DocId::BranchIntents {
                        branch: branch(),
                        epoch: 3,
                    },
                    heads: vec![],
                },
            ],
        }),
        Message::Sync(SyncBody {
            doc,
            data: vec![0x42, 0x00, 0x00, 0x01, 0x00, 0x00],
        }),
        Message::SignedHeads(SignedHeads {
            doc,
            heads: vec![head],
            signer: device_a(),
            signature: vec![0x5A; 64],
            signer_cert: None,
        }),
        Message::SyncIdle(cartwise_sync_core::message::body::SyncIdle {
            doc,
            digest: cartwise_sync_core::message::body::HeadsDigest([0x1D; 16]),
        }),
        Message::LedgerAck(LedgerAck {
            device: device_a(),
            rentals: vec![
                RentalId::from_parts(1_700_000_000_000, [1; 10]),
                RentalId::from_parts(1_700_000_060_000, [2; 10]),
            ],
        }),
        Message::Telemetry(Telemetry {
            events: vec![TelemetryEvent {
                kind: "lock.fault".into(),
                data_json: r#"{"board":3,"lock":7}"#.into(),
                wall_ms: a.wall,
                boot: a.boot,
                mono_ms: a.mono,
            }],
        }),
        Message::TelemetryAck(TelemetryAck {
            events: 1,
            last_boot: a.boot,
            last_mono_ms: a.mono,
        }),
        Message::Bundle(cartwise_sync_core::message::Bundle {
            bytes: b"CWBUNDLE\x01".to_vec(),
        }),
        Message::BundleResult(cartwise_sync_core::message::BundleResult {
            seq: 7,
            applied: true,
            message: "applied 1 document".into(),
        }),
        Message::BusRequest(cartwise_sync_core::message::BusRequest::new(
            3,
            cartwise_sync_core::message::BusCommand::Unlock {
                board: 0,
                lock: 5,
                confirm: true,
            },
        )),
        Message::BusReply(cartwise_sync_core::message::BusReply {
            id: 3,
            ok: true,
            body_json: r#"{"outcome":"opened"}"#.into(),
            message: String::new(),
        }),
    ];
    let examples: Vec<_> = examples
        .into_iter()
        .map(|message| (message.kind().unwrap(), message))
        .collect();
    assert_eq!(
        examples.iter().map(|(kind, _)| *kind).collect::<Vec<_>>(),
        MessageKind::ALL_V1.to_vec(),
        "one example per v1 kind, in tag order"
    );
    examples
}

pub fn device_identity(device: DeviceId) -> LocalIdentity {
    LocalIdentity {
        role: Role::Device,
        chain: chain(),
        branch: Some(branch()),
        device: Some(device),
        schema_version: 1,
    }
}

pub fn hub_identity() -> LocalIdentity {
    LocalIdentity {
        role: Role::Hub,
        chain: chain(),
        branch: None,
        device: None,
        schema_version: 1,
    }
}

pub fn hub_config() -> SessionConfig {
    SessionConfig {
        wall_trusted: true,
        ..SessionConfig::new(Side::Responder)
    }
}

/// Drains a session: returns the framed bytes it wants sent (concatenated, with the number
/// of frames) and its events.
pub fn drain(session: &mut Session) -> (Vec<u8>, usize, Vec<SessionEvent>) {
    let mut bytes = Vec::new();
    let mut frames = 0;
    let mut events = Vec::new();
    while let Some(output) = session.poll_output() {
        match output {
            Output::Send(frame) => {
                bytes.extend(frame);
                frames += 1;
            }
            Output::Event(event) => events.push(event),
        }
    }
    (bytes, frames, events)
}
