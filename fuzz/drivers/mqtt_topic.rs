//! The `mqtt_topic` fuzz target's logic, shared with its stable replay
//! (`cloud-hub/tests/mqtt_fuzz_replay.rs`): arbitrary bytes as the topic of a message the hub's
//! MQTT bridge receives, through `parse_command`, and as a `--mqtt` URL through
//! `MqttConfig::parse` (the including crate provides them as `crate::parse`). Neither may
//! panic, and a topic that parses names a command that renders back to a topic parsing to the
//! same command.

use crate::parse::{MqttConfig, parse_command};

/// Feeds `data` to the topic and URL parsers.
pub fn drive_topic(data: &[u8]) {
    // The MQTT client hands the bridge topics as UTF-8 text (the protocol requires it).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(command) = parse_command(text) {
        let action = if command.lock { "lock" } else { "unlock" };
        let rendered = format!(
            "cartwise/{}/{}/carts/{}/{action}",
            command.chain, command.branch, command.cart
        );
        assert_eq!(
            parse_command(&rendered),
            Some(command),
            "{text:?} parsed to {command:?}, which does not survive {rendered:?}"
        );
    }
    if let Ok(config) = MqttConfig::parse(text) {
        assert!(
            !config.host.is_empty() && !config.chains.is_empty(),
            "{config:?}"
        );
    }
}
