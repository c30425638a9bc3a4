//! The `inforu_answer` fuzz target's logic, shared with its stable replay
//! (`edge-node/tests/inforu_fuzz_replay.rs`): arbitrary bytes as the body of Inforu's answer
//! to an SMS send, read the way the sender reads it (lossy UTF-8, then `check_result`). Must
//! never panic, only status 1 is success, and the error a person sees stays short whatever the
//! provider sent.

use cartwise_edge_node::shopper::sms::inforu::check_result;

/// Longest error text an answer may produce (the parser clips what it quotes).
pub const ERROR_TEXT_BYTES_MAX: usize = 2048;

/// Feeds `data` to the answer parser.
pub fn drive_answer(data: &[u8]) {
    let body = String::from_utf8_lossy(data);
    match check_result(&body) {
        Ok(()) => assert!(
            body.contains("<Status>"),
            "success without a <Status>: {body:?}"
        ),
        Err(error) => {
            let text = error.to_string();
            assert!(
                text.len() <= ERROR_TEXT_BYTES_MAX,
                "{} bytes of error text from {} bytes of answer",
                text.len(),
                body.len()
            );
        }
    }
}
