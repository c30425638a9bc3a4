//! Fuzz target: arbitrary bytes as the peer's stream into a sync `Session` (either side),
//! with timeouts, admission and per-document Automerge sync driven as a shell would. Must
//! never panic, and outputs never pile up.
//! Run: `cargo +nightly fuzz run --sanitizer none sync_session`.
//! The logic lives in `sync-core/tests/common/fuzz_drive.rs`, which the stable replay test
//! `sync-core/tests/fuzz_replay.rs` runs over the corpus and `fuzz/regressions/sync_session/`.
#![no_main]

#[path = "../../sync-core/tests/common/fuzz_drive.rs"]
mod fuzz_drive;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_drive::drive_session(data));
