//! Fuzz target: a technician credential and a chain CA certificate through
//! `verify_credential`. Must never panic.
//! Run: `cargo +nightly fuzz run --sanitizer none tech_credential`. The logic lives in
//! `sync-core/tests/common/fuzz_tech.rs`, which `sync-core/tests/tech_fuzz_replay.rs` replays.
#![no_main]

#[path = "../../sync-core/tests/common/fuzz_tech.rs"]
mod fuzz_tech;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_tech::drive_credential(data));
