//! Fuzz target: enrollment and renewal frames (read by the hub from devices that hold no
//! certificate yet, and by devices from the hub) and enrollment URLs must never panic.
//! Run: `cargo +nightly fuzz run --sanitizer none enroll_wire`. The logic lives in
//! `sync-core/tests/common/fuzz_drive.rs`, which `sync-core/tests/fuzz_replay.rs` replays.
#![no_main]

#[path = "../../sync-core/tests/common/fuzz_drive.rs"]
mod fuzz_drive;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_drive::drive_enroll(data));
