//! Golden bytes of protocol v1: one file per message kind under `fixtures/data/sync-v1/`.
//! The normal run decodes every file and compares it with the in-code example, so a released
//! wire format cannot change silently. `UPDATE_GOLDEN=1 cargo test -p cartwise-sync-core
//! --test golden` rewrites the files (only for a deliberate, new wire version) and the fuzz
//! seeds derived from them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

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
        // The session seed skips what ends a session, so every later kind is reached.
        if !matches!(
            example,
            Message::Busy(_) | Message::Refused(_) | Message::Bye(_)
        ) {
            stream.extend(frame);
        }
    }
    let real_sync = Message::Sync(real_sync_body()).to_frame().unwrap();
    std::fs::write(frame_dir.join("seed-sync-with-changes"), &real_sync).unwrap();
    stream.extend(real_sync);
    // First byte: bit 0 = responder, bits 1..5 = chunk size - 1 (see the fuzz target).
    for (name, first) in [("seed-initiator", 0x1E_u8), ("seed-responder", 0x1F_u8)] {
        let mut input = vec![first];
        input.extend(&stream);
        std::fs::write(session_dir.join(name), input).unwrap();
    }
}

/// A real Automerge sync message carrying device A's changes to an empty peer.
fn real_sync_body() -> cartwise_sync_core::message::SyncBody {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};
    let doc_id = cartwise_sync_core::DocId::device(common::device_a());
    let mut source =
        AutoCommit::new().with_actor(cartwise_sync_core::device_actor(&common::device_a()));
    source.put(ROOT, "post_1", "rented").unwrap();
    source.commit();
    let mut target = AutoCommit::new();
    let (mut source_state, mut target_state) = (
        cartwise_sync_core::PeerDocState::new(doc_id),
        cartwise_sync_core::PeerDocState::new(doc_id),
    );
    let hub_actors = cartwise_sync_core::HubActors::default();
    let first = source_state.generate(&mut source).unwrap().unwrap();
    target_state
        .receive(&mut target, &first, &hub_actors)
        .unwrap();
    let answer = target_state.generate(&mut target).unwrap().unwrap();
    source_state
        .receive(&mut source, &answer, &hub_actors)
        .unwrap();
    source_state.generate(&mut source).unwrap().unwrap()
}
