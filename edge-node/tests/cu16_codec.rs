//! CU16 codec: golden vectors from the vendor spec (both directions), property tests, and the
//! fuzz corpus and regressions replayed on stable.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

mod support;

use cartwise_edge_node::cu16::codec::{
    DecodeError, Decoder, FRAME_LEN_MAX, Frame, Reply, Request, StatusSource, decode_frame,
};
use cartwise_edge_node::cu16::{
    Baud, BoardAddress, Lock, LockBits, PulseTime, Target, UnlockDelay,
};
use proptest::prelude::*;
use support::{hex, vectors};

fn board(n: u8) -> BoardAddress {
    BoardAddress::new(n).unwrap()
}

fn lock(n: u8) -> Lock {
    Lock::new(n).unwrap()
}

fn decode_whole(bytes: &[u8]) -> Frame {
    let (frame, len) = decode_frame(bytes).unwrap_or_else(|e| panic!("{bytes:02X?}: {e}"));
    assert_eq!(len, bytes.len(), "{bytes:02X?} decoded short");
    frame
}

fn encode(frame: &Frame) -> Vec<u8> {
    match frame {
        Frame::Request(request) => request.encode().as_bytes().to_vec(),
        Frame::Reply(reply) => reply.encode().as_bytes().to_vec(),
    }
}

#[test]
fn every_fixture_frame_decodes_and_reencodes_byte_for_byte() {
    let vectors = vectors();
    assert!(vectors.len() >= 20);
    for vector in vectors
        .iter()
        .filter(|v| v.name != "bad_checksum_is_silent")
    {
        let request = decode_whole(&vector.request);
        assert!(
            matches!(request, Frame::Request(_)),
            "{}: {request:?}",
            vector.name
        );
        assert_eq!(encode(&request), vector.request, "{}", vector.name);
        for reply_bytes in &vector.replies {
            let reply = decode_whole(reply_bytes);
            assert!(
                matches!(reply, Frame::Reply(_)),
                "{}: {reply:?}",
                vector.name
            );
            assert_eq!(&encode(&reply), reply_bytes, "{}", vector.name);
        }
    }
}

#[test]
fn typed_requests_encode_to_the_spec_bytes() {
    let all = Target::AllBoards;
    let cases: Vec<(Request, &str)> = vec![
        (Request::Status { board: board(0) }, "02 00 30 03 35"),
        (Request::Status { board: board(1) }, "02 10 30 03 45"),
        (
            Request::Unlock {
                board: board(0),
                lock: lock(1),
            },
            "02 00 31 03 36",
        ),
        (
            Request::Unlock {
                board: board(0),
                lock: lock(3),
            },
            "02 02 31 03 38",
        ),
        (
            Request::Unlock {
                board: board(0),
                lock: lock(16),
            },
            "02 0F 31 03 45",
        ),
        (
            Request::Unlock {
                board: board(1),
                lock: lock(1),
            },
            "02 10 31 03 46",
        ),
        (
            Request::Unlock {
                board: board(2),
                lock: lock(5),
            },
            "02 24 31 03 5A",
        ),
        (Request::StatusAll, "02 F0 32 03 27"),
        (Request::UnlockAll { board: board(0) }, "02 00 33 03 38"),
        (
            Request::QueryPulse {
                target: Target::Board(board(0)),
            },
            "02 00 37 03 3C",
        ),
        (
            Request::SetPulse {
                target: Target::Board(board(0)),
                pulse: PulseTime::from_millis(1000).unwrap(),
            },
            "02 00 37 00 64 03 A0",
        ),
        (Request::QueryPulse { target: all }, "02 F0 37 03 2C"),
        (
            Request::SetPulse {
                target: all,
                pulse: PulseTime::from_millis(1000).unwrap(),
            },
            "02 F0 37 00 64 03 90",
        ),
        (
            Request::SetUnlockDelay {
                target: Target::Board(board(0)),
                delay: UnlockDelay::from_secs(1).unwrap(),
            },
            "02 00 39 01 03 3F",
        ),
        (
            Request::SetUnlockDelay {
                target: all,
                delay: UnlockDelay::from_secs(1).unwrap(),
            },
            "02 F0 39 01 03 2F",
        ),
        (
            Request::SetBaud {
                target: Target::Board(board(0)),
                baud: Baud::B19200,
            },
            "02 00 40 01 03 46",
        ),
        (
            Request::SetBaud {
                target: all,
                baud: Baud::B9600,
            },
            "02 F0 40 00 03 35",
        ),
        (
            Request::Version {
                target: Target::Board(board(0)),
            },
            "F5 B6 00 00 5F 0A",
        ),
        (Request::Version { target: all }, "F5 B6 64 00 5F 6E"),
    ];
    for (request, bytes) in cases {
        assert_eq!(request.encode().as_bytes(), hex(bytes), "{request:?}");
        assert_eq!(decode_whole(&hex(bytes)), Frame::Request(request));
    }
}

#[test]
fn typed_replies_decode_from_the_spec_bytes() {
    let status = |b, source, hooks, present| {
        Frame::Reply(Reply::Status {
            board: board(b),
            source,
            hooks: LockBits(hooks),
            present: LockBits(present),
        })
    };
    let single = StatusSource::Board;
    let cases = vec![
        (
            "02 00 35 01 00 01 00 03 3C",
            status(0, single, 0x0001, 0x0001),
        ),
        (
            "02 00 35 FF FF 00 00 03 38",
            status(0, single, 0xFFFF, 0x0000),
        ),
        (
            "02 00 35 00 00 00 00 03 3A",
            status(0, single, 0x0000, 0x0000),
        ),
        (
            "02 10 35 FE FF 01 00 03 48",
            status(1, single, 0xFFFE, 0x0001),
        ),
        (
            "02 00 36 00 03 01 00 03 3F",
            status(0, StatusSource::Bus, 0x0300, 0x0001),
        ),
        (
            "02 10 36 01 00 00 08 03 54",
            status(1, StatusSource::Bus, 0x0001, 0x0800),
        ),
        (
            "02 00 38 0F 00 00 37 03 83",
            Frame::Reply(Reply::Pulse {
                board: board(0),
                hooks: LockBits(0x000F),
                pulse_units: 55,
            }),
        ),
        (
            "02 10 39 01 00 00 01 03 50",
            Frame::Reply(Reply::UnlockDelay {
                board: board(1),
                hooks: LockBits(1),
                data3: 0,
                delay_s: 1,
            }),
        ),
        (
            "02 20 40 00 00 00 00 03 65",
            Frame::Reply(Reply::Baud {
                board: board(2),
                hooks: LockBits(0),
                data3: 0,
                flag: 0,
            }),
        ),
        (
            "F5 B6 00 02 5F 0E 01 01",
            Frame::Reply(Reply::Version {
                board: board(0),
                software: 1,
                hardware: 1,
            }),
        ),
        (
            "F5 B6 02 02 5F 13 04 01",
            Frame::Reply(Reply::Version {
                board: board(2),
                software: 4,
                hardware: 1,
            }),
        ),
        (
            "F5 B6 05 02 5F 16 04 01",
            Frame::Reply(Reply::Version {
                board: board(5),
                software: 4,
                hardware: 1,
            }),
        ),
        (
            "F5 B6 07 02 5F 18 04 01",
            Frame::Reply(Reply::Version {
                board: board(7),
                software: 4,
                hardware: 1,
            }),
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(decode_whole(&hex(bytes)), expected, "{bytes}");
        assert_eq!(encode(&expected), hex(bytes));
    }
}

#[test]
fn the_upgrade_frame_is_never_a_frame() {
    let upgrade = hex("F5 B5 00 04 5F E7 35 36 37 38");
    assert!(matches!(
        decode_frame(&upgrade),
        Err(DecodeError::Invalid(_))
    ));
    let mut decoder = Decoder::new();
    decoder.feed(&upgrade);
    assert_eq!(decoder.next_frame(), None);
}

#[test]
fn frames_are_found_inside_garbage_that_contains_start_bytes() {
    let mut stream = hex("02 02 F5 02 00 35 02 03 F5 B5 00 04 5F");
    stream.extend(hex("02 00 30 03 35")); // an echo of our own request
    stream.extend(hex("02 00 35 01 00 01 00 03 3C"));
    stream.extend(hex("FF 02"));
    let mut decoder = Decoder::new();
    for byte in &stream {
        decoder.feed(std::slice::from_ref(byte));
    }
    let mut replies = Vec::new();
    while let Some(reply) = decoder.next_reply() {
        replies.push(reply);
    }
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(
        replies[0].encode().as_bytes(),
        hex("02 00 35 01 00 01 00 03 3C")
    );
    assert_eq!(decoder.echoes_dropped(), 1);
}

#[test]
fn fuzz_corpus_and_regressions_replay_without_panicking() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for dir in ["corpus/cu16_decode", "regressions/cu16_decode"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "md") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            decode_all(&bytes, 7);
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no seed inputs found under {}",
        root.display()
    );
}

/// Feeds `bytes` in chunks of `chunk` and pulls every frame; checks the buffer stays bounded.
fn decode_all(bytes: &[u8], chunk: usize) -> Vec<Frame> {
    let mut decoder = Decoder::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        decoder.feed(piece);
        while let Some(frame) = decoder.next_frame() {
            frames.push(frame);
        }
        assert!(decoder.pending_len() < FRAME_LEN_MAX);
    }
    let _ = decode_frame(bytes);
    frames
}

fn any_board() -> impl Strategy<Value = BoardAddress> {
    (0u8..=9).prop_map(board)
}

fn any_target() -> impl Strategy<Value = Target> {
    prop_oneof![any_board().prop_map(Target::Board), Just(Target::AllBoards)]
}

fn any_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        any_board().prop_map(|board| Request::Status { board }),
        (any_board(), 1u8..=16).prop_map(|(board, l)| Request::Unlock {
            board,
            lock: lock(l)
        }),
        Just(Request::StatusAll),
        any_board().prop_map(|board| Request::UnlockAll { board }),
        any_target().prop_map(|target| Request::QueryPulse { target }),
        (any_target(), 0u16..=6000).prop_map(|(target, units)| Request::SetPulse {
            target,
            pulse: PulseTime::from_units(units).unwrap()
        }),
        (any_target(), 0u32..=250).prop_map(|(target, s)| Request::SetUnlockDelay {
            target,
            delay: UnlockDelay::from_secs(s).unwrap()
        }),
        (any_target(), 0u8..=3).prop_map(|(target, flag)| Request::SetBaud {
            target,
            baud: Baud::from_flag(flag).unwrap()
        }),
        any_target().prop_map(|target| Request::Version { target }),
    ]
}

fn any_reply() -> impl Strategy<Value = Reply> {
    let source = prop_oneof![Just(StatusSource::Board), Just(StatusSource::Bus)];
    prop_oneof![
        (any_board(), source, any::<u16>(), any::<u16>()).prop_map(|(board, source, h, p)| {
            Reply::Status {
                board,
                source,
                hooks: LockBits(h),
                present: LockBits(p),
            }
        }),
        (any_board(), any::<u16>(), any::<u16>()).prop_map(|(board, h, pulse_units)| {
            Reply::Pulse {
                board,
                hooks: LockBits(h),
                pulse_units,
            }
        }),
        (any_board(), any::<u16>(), any::<u8>(), any::<u8>()).prop_map(|(board, h, d3, d4)| {
            Reply::UnlockDelay {
                board,
                hooks: LockBits(h),
                data3: d3,
                delay_s: d4,
            }
        }),
        (any_board(), any::<u16>(), any::<u8>(), any::<u8>()).prop_map(|(board, h, d3, d4)| {
            Reply::Baud {
                board,
                hooks: LockBits(h),
                data3: d3,
                flag: d4,
            }
        }),
        (any_board(), any::<u8>(), any::<u8>()).prop_map(|(board, software, hardware)| {
            Reply::Version {
                board,
                software,
                hardware,
            }
        }),
    ]
}

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        any_request().prop_map(Frame::Request),
        any_reply().prop_map(Frame::Reply)
    ]
}

/// Garbage that holds no start byte, so it cannot begin a frame of its own.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no start byte", |b| *b != 0x02 && *b != 0xF5),
        0..40,
    )
}

proptest! {
    #[test]
    fn every_frame_round_trips(frame in any_frame()) {
        let bytes = encode(&frame);
        prop_assert_eq!(decode_frame(&bytes), Ok((frame, bytes.len())));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), chunk in 1usize..16) {
        decode_all(&bytes, chunk);
    }

    #[test]
    fn a_frame_inside_garbage_is_found(before in garbage(), frame in any_frame(), after in garbage(), chunk in 1usize..12) {
        let mut stream = before;
        stream.extend(encode(&frame));
        stream.extend(after);
        prop_assert_eq!(decode_all(&stream, chunk), vec![frame]);
    }
}
