//! Fuzz target: arbitrary bytes through the CU16 streaming decoder must never panic, and the
//! decoder's buffer must stay bounded. Run: `cargo +nightly fuzz run cu16_decode`.
#![no_main]

use cartwise_edge_node::cu16::codec::{Decoder, FRAME_LEN_MAX, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame(data);
    // The first byte picks a chunk size, so split frames are exercised too.
    let (chunk, body) = match data.split_first() {
        Some((first, rest)) => (usize::from(*first % 16) + 1, rest),
        None => (1, data),
    };
    let mut decoder = Decoder::new();
    for piece in body.chunks(chunk) {
        decoder.feed(piece);
        while let Some(frame) = decoder.next_frame() {
            let _ = frame;
        }
        assert!(decoder.pending_len() < FRAME_LEN_MAX);
    }
});
