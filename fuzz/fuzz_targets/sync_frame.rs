//! Fuzz target: arbitrary bytes through the sync `FrameDecoder` (split into chunks), every
//! frame through `Message::decode` and a re-encode round trip, and `Sync` bodies through
//! Automerge's decoder and the authority check. Must never panic.
//! Run: `cargo +nightly fuzz run --sanitizer none sync_frame`.
//! The logic lives in `sync-core/tests/common/fuzz_drive.rs`, which the stable replay test
//! `sync-core/tests/fuzz_replay.rs` runs over the corpus and `fuzz/regressions/sync_frame/`.
#![no_main]

#[path = "../../sync-core/tests/common/fuzz_drive.rs"]
mod fuzz_drive;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_drive::drive_frames(data));
