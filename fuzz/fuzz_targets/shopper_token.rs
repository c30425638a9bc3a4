//! Fuzz target: arbitrary bytes as a shopper token (the `Authorization: Bearer` value a kiosk
//! sends) must never panic the verifier. Run: `cargo +nightly fuzz run shopper_token`.
//! The key and time match `edge-node`'s corpus replay test, so the seed `seed-valid-v1`
//! reaches every check.
#![no_main]

use cartwise_edge_node::shopper::token::ShopperTokenKey;
use cartwise_schema::WallMillis;
use libfuzzer_sys::fuzz_target;

/// The replay test's key: 32 bytes of 0x42.
const FUZZ_KEY_BYTES: [u8; 32] = [0x42; 32];
/// The replay test's wall time (2023-11-14).
const FUZZ_NOW_MS: i64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = ShopperTokenKey::from_bytes(&FUZZ_KEY_BYTES) else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = key.verify(text, WallMillis::new(FUZZ_NOW_MS));
    }
});
