//! Golden bytes of protocol v1: one file per message kind under `fixtures/data/sync-v1/`.
//! The normal run decodes every file and compares it with the in-code example, so a released
//! wire format cannot change silently. `UPDATE_GOLDEN=1 cargo test -p cartwise-sync-core
//! --test golden` rewrites the files (only for a deliberate, new wire version) and the fuzz
//! seeds derived from them.

mod common;

use std::path::{Path, PathBuf};

use cartwise_sync_core::Message;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/data/sync-v1")
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn updating() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|value| value == "1")
}

#[test]
fn every_v1_kind_matches_its_golden_bytes() {
    let dir = golden_dir();
    if updating() {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (kind, example) in common::v1_examples() {
        let path = dir.join(format!("{}.bin", kind.name()));
        let encoded = example.encode().unwrap();
        if updating() {
            std::fs::write(&path, &encoded).unwrap();
        }
        let golden =
            std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert_eq!(
            Message::decode(&golden).unwrap(),
            example,
            "{} no longer decodes to its example",
            path.display()
        );
        assert_eq!(
            encoded,
            golden,
            "{} example encodes differently from its golden bytes",
            kind.name()
        );
    }
}

#[test]
fn no_golden_file_without_an_example() {
    let names: Vec<String> = common::v1_examples()
        .iter()
        .map(|(kind, _)| format!("{}.bin", kind.name()))
        .collect();
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".bin") {
            assert!(names.contains(&name), "golden file {name} has no example");
        }
    }
}

/// Writes the fuzz seeds: each golden message framed (`sync_frame`), and a peer's stream of
/// Hello then every example (`sync_session`, both sides).
#[test]
fn fuzz_seeds_are_written_on_update() {
    if !updating() {
        return;
    }
    let frame_dir = fuzz_dir().join("corpus/sync_frame");
    let session_dir = fuzz_dir().join("corpus/sync_session");
    std::fs::create_dir_all(&frame_dir).unwrap();
    std::fs::create_dir_all(&session_dir).unwrap();
    let mut stream = Vec::new();
    for (kind, example) in common::v1_examples() {
        let frame = example.to_frame().unwrap();
        std::fs::write(frame_dir.join(format!("seed-{}", kind.name())), &frame).unwrap();
        stream.extend(frame);
    }
    // First byte: bit 0 = responder, bits 1..5 = chunk size - 1 (see the fuzz target).
    for (name, first) in [("seed-initiator", 0x1E_u8), ("seed-responder", 0x1F_u8)] {
        let mut input = vec![first];
        input.extend(&stream);
        std::fs::write(session_dir.join(name), input).unwrap();
    }
}
