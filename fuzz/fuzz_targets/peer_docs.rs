//! Fuzz target: arbitrary bytes as a peer's document (intents, another device's facts)
//! through Automerge's loader and the tolerant readers (`read_intents_doc`,
//! `read_device_doc`). Must never panic.
//! Run: `cargo +nightly fuzz run --sanitizer none peer_docs`.
//! The logic lives in `sync-core/tests/common/fuzz_docs.rs`, which the stable replay test
//! `sync-core/tests/peer_docs_replay.rs` runs over the corpus and `fuzz/regressions/peer_docs/`.
#![no_main]

#[path = "../../sync-core/tests/common/fuzz_docs.rs"]
mod fuzz_docs;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_docs::drive_docs(data));
