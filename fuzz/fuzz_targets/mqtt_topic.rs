//! Fuzz target: arbitrary bytes as the topic of an MQTT message the hub's bridge receives
//! (and as a `--mqtt` URL). Must never panic.
//! Run: `scripts/fuzz.sh mqtt_topic`. The parsers are `cloud-hub/src/mqtt/parse.rs`, included by
//! path (pure, so the hub's dependencies stay out of the fuzz build); the logic lives in
//! `fuzz/drivers/mqtt_topic.rs`, which `cloud-hub/tests/mqtt_fuzz_replay.rs` replays through the
//! hub crate's own exports.
#![no_main]

#[path = "../../cloud-hub/src/mqtt/parse.rs"]
mod parse;

#[path = "../drivers/mqtt_topic.rs"]
mod mqtt_topic;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mqtt_topic::drive_topic(data));
