//! Fuzz target: arbitrary bytes as Inforu's answer to an SMS send. Must never panic.
//! Run: `scripts/fuzz.sh inforu_answer`. The logic lives in `fuzz/drivers/inforu_answer.rs`,
//! which `edge-node/tests/inforu_fuzz_replay.rs` replays.
#![no_main]

#[path = "../drivers/inforu_answer.rs"]
mod inforu_answer;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| inforu_answer::drive_answer(data));
