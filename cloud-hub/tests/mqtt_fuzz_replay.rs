//! Replays the `mqtt_topic` fuzz seeds and committed crashers (`fuzz/corpus/mqtt_topic/*`,
//! `fuzz/regressions/mqtt_topic/*`) on stable, through the code the fuzz target runs
//! (`fuzz/drivers/mqtt_topic.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

/// What the fuzz target includes by path, here through the crate's exports.
mod parse {
    pub use cartwise_cloud_hub::mqtt::{MqttConfig, parse_command};
}

#[path = "../../fuzz/drivers/mqtt_topic.rs"]
mod mqtt_topic;

use std::path::Path;

#[test]
fn mqtt_topic_corpus_and_regressions_replay_and_the_seeds_reach_the_parser() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for dir in ["corpus/mqtt_topic", "regressions/mqtt_topic"] {
        for entry in std::fs::read_dir(fuzz.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "md") {
                continue;
            }
            mqtt_topic::drive_topic(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed >= 5, "{replayed} inputs replayed");
    // The seeds reach past the shape check: a real command and a real URL.
    let unlock = std::fs::read_to_string(fuzz.join("corpus/mqtt_topic/seed-unlock")).unwrap();
    let command = cartwise_cloud_hub::mqtt::parse_command(&unlock).unwrap();
    assert!(!command.lock);
    let url = std::fs::read_to_string(fuzz.join("corpus/mqtt_topic/seed-url")).unwrap();
    assert!(cartwise_cloud_hub::mqtt::MqttConfig::parse(&url).is_ok());
}
