//! Replays the `inforu_answer` fuzz seeds and committed crashers (`fuzz/corpus/inforu_answer/*`,
//! `fuzz/regressions/inforu_answer/*`) on stable, through the code the fuzz target runs
//! (`fuzz/drivers/inforu_answer.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

#[path = "../../fuzz/drivers/inforu_answer.rs"]
mod inforu_answer;

use std::path::Path;

use cartwise_edge_node::shopper::sms::SmsError;
use cartwise_edge_node::shopper::sms::inforu::check_result;

#[test]
fn inforu_answer_corpus_and_regressions_replay_and_the_seeds_reach_each_outcome() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for dir in ["corpus/inforu_answer", "regressions/inforu_answer"] {
        for entry in std::fs::read_dir(fuzz.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "md") {
                continue;
            }
            inforu_answer::drive_answer(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed >= 5, "{replayed} inputs replayed");
    let seed = |name: &str| {
        let bytes = std::fs::read(fuzz.join("corpus/inforu_answer").join(name)).unwrap();
        check_result(&String::from_utf8_lossy(&bytes))
    };
    assert!(seed("seed-accepted").is_ok());
    assert!(matches!(
        seed("seed-unauthorized"),
        Err(SmsError::Unauthorized { .. })
    ));
    assert!(matches!(
        seed("seed-quota"),
        Err(SmsError::QuotaExhausted { .. })
    ));
    assert!(matches!(
        seed("seed-garbage"),
        Err(SmsError::BadResponse { .. })
    ));
    assert!(matches!(
        seed("seed-hebrew-unknown-status"),
        Err(SmsError::Refused { status: -99, .. })
    ));
}
