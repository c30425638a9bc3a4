//! Fuzz target: a bundle file (USB stick, laptop push) through the decoder, scope, authority
//! and signature checks. Must never panic.
//! Run: `cargo +nightly fuzz run --sanitizer none bundle_decode`. The logic lives in
//! `sync-core/tests/common/fuzz_tech.rs`, which `sync-core/tests/tech_fuzz_replay.rs` replays.
#![no_main]

#[path = "../../sync-core/tests/common/fuzz_tech.rs"]
mod fuzz_tech;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_tech::drive_bundle(data));
