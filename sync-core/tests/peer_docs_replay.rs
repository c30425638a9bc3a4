//! Replays every `peer_docs` fuzz seed and committed crasher on stable (`fuzz/corpus/peer_docs/`
//! and `fuzz/regressions/peer_docs/`) through the code the fuzz target runs
//! (`common/fuzz_docs.rs`). `write_seeds` (ignored) regenerates the seeds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

#[path = "common/fuzz_docs.rs"]
mod fuzz_docs;

use std::path::{Path, PathBuf};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT};
use cartwise_schema::{BranchId, ChainId, DeviceId};
use cartwise_sync_core::intents::{Intent, IntentId, IntentKind, put_intent};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

#[test]
fn peer_docs_corpus_and_regressions_replay_without_panicking() {
    let mut replayed = 0;
    for dir in ["corpus/peer_docs", "regressions/peer_docs"] {
        let Ok(entries) = std::fs::read_dir(root().join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "md") {
                continue;
            }
            fuzz_docs::drive_docs(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed >= 3, "only {replayed} peer_docs inputs");
}

#[test]
#[ignore = "regenerates the committed seeds"]
fn write_seeds() {
    let dir = root().join("corpus/peer_docs");
    std::fs::create_dir_all(&dir).unwrap();
    let chain = ChainId::parse("0b1e3c2a-0000-4000-8000-000000000001").unwrap();
    let branch = BranchId::parse("0b1e3c2a-0000-4000-8000-000000000101").unwrap();
    let device = DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001001").unwrap();
    let mut intents = AutoCommit::new();
    for (n, kind) in [
        IntentKind::UnlockPost { post: 3 },
        IntentKind::SetRentalMinutes { minutes: 90 },
        IntentKind::Note {
            post: None,
            text: "hello".into(),
        },
    ]
    .into_iter()
    .enumerate()
    {
        let intent = Intent {
            id: IntentId::parse(&format!("01a1ffeb-fcae-72a9-aa32-a6e6c791df0{n}")).unwrap(),
            device,
            kind,
            created_at: 1,
            created_by: "seed".into(),
            expires_at: Some(2),
        };
        put_intent(&mut intents, chain, branch, &intent).unwrap();
    }
    let mut saved = vec![0_u8];
    saved.extend(intents.save());
    std::fs::write(dir.join("seed-intents"), saved).unwrap();

    let mut facts = AutoCommit::new();
    let outcomes = facts.put_object(ROOT, "outcomes", ObjType::Map).unwrap();
    let outcome = facts
        .put_object(
            &outcomes,
            "01a1ffeb-fcae-72a9-aa32-a6e6c791df01",
            ObjType::Map,
        )
        .unwrap();
    facts.put(&outcome, "status", "applied").unwrap();
    facts.put(&outcome, "wall", 5_i64).unwrap();
    let returns = facts.put_object(ROOT, "returns", ObjType::Map).unwrap();
    let ret = facts
        .put_object(
            &returns,
            "01a1ffeb-fcae-72a9-aa32-a6e6c791dff8",
            ObjType::Map,
        )
        .unwrap();
    facts
        .put(&ret, "origin", "0b1e3c2a-0000-4000-8000-000000001002")
        .unwrap();
    facts.put(&ret, "status", "returned").unwrap();
    let mut saved = vec![2_u8];
    saved.extend(facts.save());
    std::fs::write(dir.join("seed-device"), saved).unwrap();

    // A write script: intents map, one entry, kind and post of odd types.
    std::fs::write(
        dir.join("seed-script"),
        [1_u8, 0, 3, 0, 1, 0x80, 8, 1, 9, 3, 1, 10, 1, 1, 11, 2],
    )
    .unwrap();
}
