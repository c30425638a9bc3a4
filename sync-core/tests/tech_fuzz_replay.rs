//! Replays the `bundle_decode` and `tech_credential` fuzz seeds and committed crashers
//! (`fuzz/corpus/<target>/*`, `fuzz/regressions/<target>/*`) on stable, through the code the
//! fuzz targets run (`common/fuzz_tech.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

#[path = "common/fuzz_tech.rs"]
mod fuzz_tech;

use std::path::Path;

fn replay(target: &str, drive: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for dir in [format!("corpus/{target}"), format!("regressions/{target}")] {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "md") {
                continue;
            }
            drive(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no inputs for {target} under {}",
        root.display()
    );
    replayed
}

#[test]
fn bundle_decode_corpus_replays_and_its_seed_is_a_real_bundle() {
    replay("bundle_decode", fuzz_tech::drive_bundle);
    let seed = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/bundle_decode/seed-facts"),
    )
    .unwrap();
    let bundle = cartwise_sync_core::bundle::decode_bundle(&seed).unwrap();
    assert_eq!(bundle.unverified_body().docs.len(), 1);
}

#[test]
fn tech_credential_corpus_replays_without_panicking() {
    replay("tech_credential", fuzz_tech::drive_credential);
}
