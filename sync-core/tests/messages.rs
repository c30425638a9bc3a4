//! Codec properties: every message round-trips, arbitrary bytes never panic the decoders,
//! unknown tags decode as `Unknown`, and limits hold on both sides.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

mod common;

use cartwise_schema::{BootId, DeviceId, MonoMillis, RentalId, WallMillis};
use cartwise_sync_core::message::body::{TELEMETRY_EVENTS_MAX, TELEMETRY_KIND_LEN_MAX};
use cartwise_sync_core::message::{
    Busy, Bye, DocHeads, Docs, ErrorBody, Head, Heartbeat, HeartbeatAck, Hello, LedgerAck, Refused,
    Role, SyncBody, Telemetry, TelemetryEvent, Welcome,
};
use cartwise_sync_core::{
    DocId, FrameDecoder, Message, MessageError, MessageKind, SignedHeads, frame::encode_frame,
};
use proptest::prelude::*;

/// A valid UUID string from 128 bits (never nil).
fn uuid_text(bits: u128) -> String {
    let bits = bits | 1;
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn device() -> impl Strategy<Value = DeviceId> {
    any::<u128>().prop_map(|bits| uuid_text(bits).parse().unwrap())
}

fn boot() -> impl Strategy<Value = BootId> {
    any::<u128>().prop_map(|bits| uuid_text(bits).parse().unwrap())
}

fn doc_id() -> impl Strategy<Value = DocId> {
    (any::<u128>(), any::<bool>(), any::<u32>()).prop_map(|(bits, is_device, epoch)| {
        let id = uuid_text(bits);
        if is_device {
            DocId::Device {
                device: id.parse().unwrap(),
                epoch,
            }
        } else {
            DocId::BranchIntents {
                branch: id.parse().unwrap(),
                epoch,
            }
        }
    })
}

fn heads() -> impl Strategy<Value = Vec<Head>> {
    prop::collection::vec(any::<[u8; 32]>().prop_map(Head), 0..4)
}

fn short_text() -> impl Strategy<Value = String> {
    "[a-z\u{5d0}-\u{5ea} .-]{0,40}"
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Device), Just(Role::Hub), Just(Role::Technician)]
}

fn telemetry_event() -> impl Strategy<Value = TelemetryEvent> {
    (
        short_text(),
        short_text(),
        any::<i64>(),
        boot(),
        any::<u64>(),
    )
        .prop_map(|(kind, data_json, wall, boot, mono)| TelemetryEvent {
            kind,
            data_json,
            wall_ms: WallMillis::new(wall),
            boot,
            mono_ms: MonoMillis::new(mono),
        })
}

fn message() -> impl Strategy<Value = Message> {
    let hello = (
        (
            any::<u16>(),
            any::<u16>(),
            prop::collection::vec(short_text(), 0..4),
        ),
        (any::<u32>(), role(), device(), prop::option::of(device())),
        (any::<i64>(), boot(), any::<u64>(), any::<u32>()),
    )
        .prop_map(
            |((major, minor, caps), (schema, role, chain, device), (wall, boot, mono, hb))| {
                Message::Hello(Hello {
                    protocol_major: major,
                    protocol_minor: minor,
                    capabilities: caps,
                    schema_version: schema,
                    role,
                    chain: chain.as_uuid().to_owned().into(),
                    branch: None,
                    device,
                    wall_ms: WallMillis::new(wall),
                    boot,
                    mono_ms: MonoMillis::new(mono),
                    heartbeat_interval_ms: hb,
                })
            },
        );
    let welcome = (
        any::<u16>(),
        any::<i64>(),
        any::<bool>(),
        any::<i64>(),
        any::<u64>(),
    )
        .prop_map(|(minor, wall, trusted, echo, mono)| {
            Message::Welcome(Welcome {
                protocol_minor: minor,
                capabilities: vec!["telemetry".into()],
                wall_ms: WallMillis::new(wall),
                wall_trusted: trusted,
                your_wall_ms_echo: WallMillis::new(echo),
                your_mono_ms_echo: MonoMillis::new(mono),
            })
        });
    let small = prop_oneof![
        any::<u32>().prop_map(|retry_after_ms| Message::Busy(Busy { retry_after_ms })),
        (any::<u16>(), short_text())
            .prop_map(|(code, reason)| Message::Refused(Refused { code, reason })),
        short_text().prop_map(|reason| Message::Bye(Bye { reason })),
        (any::<u16>(), short_text(), prop::option::of(doc_id()))
            .prop_map(|(code, reason, doc)| Message::Error(ErrorBody { code, reason, doc })),
        (any::<u64>(), any::<i64>(), boot(), any::<u64>()).prop_map(|(seq, wall, boot, mono)| {
            Message::Heartbeat(Heartbeat {
                seq,
                wall_ms: WallMillis::new(wall),
                boot,
                mono_ms: MonoMillis::new(mono),
            })
        }),
        (any::<u64>(), any::<i64>(), any::<bool>()).prop_map(|(seq, wall, trusted)| {
            Message::HeartbeatAck(HeartbeatAck {
                seq,
                wall_ms: WallMillis::new(wall),
                wall_trusted: trusted,
            })
        }),
    ];
    let docs = prop_oneof![
        prop::collection::vec((doc_id(), heads()), 0..5).prop_map(|docs| Message::Docs(Docs {
            docs: docs
                .into_iter()
                .map(|(doc, heads)| DocHeads { doc, heads })
                .collect(),
        })),
        (
            doc_id(),
            // A `Sync` body on the wire is a whole Automerge message, never in the in-memory
            // idle form (which `encode` turns into the message it carries).
            prop::collection::vec(any::<u8>(), 0..300)
                .prop_filter("a wire Sync body is never in idle form", |data| {
                    cartwise_sync_core::doc_sync::idle_parts(data).is_none()
                })
        )
            .prop_map(|(doc, data)| Message::Sync(SyncBody { doc, data })),
        (
            doc_id(),
            heads(),
            device(),
            prop::collection::vec(any::<u8>(), 0..96)
        )
            .prop_map(|(doc, heads, signer, signature)| Message::SignedHeads(
                SignedHeads {
                    doc,
                    heads,
                    signer,
                    signature,
                    signer_cert: None,
                }
            )),
        (
            device(),
            prop::collection::vec((any::<u64>(), any::<[u8; 10]>()), 0..8)
        )
            .prop_map(|(device, rentals)| Message::LedgerAck(LedgerAck {
                device,
                rentals: rentals
                    .into_iter()
                    .map(|(ms, bytes)| RentalId::from_parts(ms, bytes))
                    .collect(),
            })),
        prop::collection::vec(telemetry_event(), 0..5)
            .prop_map(|events| Message::Telemetry(Telemetry { events })),
        (
            0xF000_u16..=0xFFFF,
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(kind, body)| Message::Unknown { kind, body }),
    ];
    prop_oneof![hello, welcome, small, docs]
}

proptest! {
    #[test]
    fn every_message_round_trips(message in message()) {
        let encoded = message.encode().unwrap();
        prop_assert_eq!(Message::decode(&encoded).unwrap(), message.clone());
        let mut decoder = FrameDecoder::new();
        decoder.feed(&message.to_frame().unwrap()).unwrap();
        let payload = decoder.next().unwrap().unwrap();
        prop_assert_eq!(Message::decode(&payload).unwrap(), message);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes);
        let mut decoder = FrameDecoder::new();
        if decoder.feed(&bytes).is_ok() {
            while let Ok(Some(payload)) = decoder.next() {
                let _ = Message::decode(&payload);
            }
        }
        let _ = DocId::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_golden_messages_never_panic(index in 0usize..13, flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let (_, example) = &common::v1_examples()[index];
        let mut bytes = example.encode().unwrap();
        for (at, value) in flips {
            let len = bytes.len();
            bytes[at % len] = value;
        }
        let _ = Message::decode(&bytes);
    }
}

#[test]
fn unknown_tags_decode_as_unknown_with_their_body() {
    #[derive(serde::Serialize)]
    struct Envelope {
        k: u16,
        #[serde(with = "serde_bytes")]
        b: Vec<u8>,
    }
    let bytes = rmp_serde::to_vec_named(&Envelope {
        k: 999,
        b: vec![1, 2, 3],
    })
    .unwrap();
    assert_eq!(
        Message::decode(&bytes).unwrap(),
        Message::Unknown {
            kind: 999,
            body: vec![1, 2, 3]
        }
    );
    assert_eq!(MessageKind::from_tag(999), None);
    assert_eq!(MessageKind::from_tag(0), None);
}

#[test]
fn tags_are_unique_and_outside_reserved_ranges() {
    let tags: Vec<u16> = MessageKind::ALL_V1.iter().map(|kind| kind.tag()).collect();
    let mut unique = tags.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), tags.len());
    for tag in tags {
        assert_ne!(tag, 0);
        assert!(!cartwise_sync_core::message::EXPERIMENTAL_TAGS.contains(&tag));
        assert!(!cartwise_sync_core::message::RETIRED_TAGS.contains(&tag));
        assert_eq!(MessageKind::from_tag(tag).unwrap().tag(), tag);
    }
}

#[test]
fn limits_are_checked_when_encoding_and_decoding() {
    let event = TelemetryEvent {
        kind: "x".into(),
        data_json: "{}".into(),
        wall_ms: WallMillis::new(0),
        boot: common::boot(common::BOOT_A),
        mono_ms: MonoMillis::new(0),
    };
    let too_many = Message::Telemetry(Telemetry {
        events: vec![event.clone(); TELEMETRY_EVENTS_MAX + 1],
    });
    assert!(matches!(too_many.encode(), Err(MessageError::Limit { .. })));

    // A hostile peer encodes past the limit by hand: the decoder refuses it.
    #[derive(serde::Serialize)]
    struct Envelope {
        k: u16,
        #[serde(with = "serde_bytes")]
        b: Vec<u8>,
    }
    let long_kind = TelemetryEvent {
        kind: "k".repeat(TELEMETRY_KIND_LEN_MAX + 1),
        ..event
    };
    let body = rmp_serde::to_vec_named(&Telemetry {
        events: vec![long_kind],
    })
    .unwrap();
    let bytes = rmp_serde::to_vec_named(&Envelope { k: 64, b: body }).unwrap();
    let error = Message::decode(&bytes).unwrap_err();
    assert_eq!(
        error.to_string(),
        "telemetry message: field telemetry.kind has length 65, more than the limit of 64"
    );
}

#[test]
fn byte_fields_are_msgpack_bin_not_arrays() {
    let data = vec![0xFF; 1000];
    let message = Message::Sync(SyncBody {
        doc: DocId::device(common::device_a()),
        data,
    });
    let encoded = message.encode().unwrap();
    assert!(
        encoded.len() < 1100,
        "{} bytes: byte field encoded as an array?",
        encoded.len()
    );
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut bytes = common::v1_examples()[2].1.encode().unwrap();
    bytes.push(0xC0);
    assert!(matches!(
        Message::decode(&bytes),
        Err(MessageError::Envelope { .. })
    ));
    assert!(encode_frame(&bytes).is_ok());
}
