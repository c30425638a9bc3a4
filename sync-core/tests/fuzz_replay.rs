//! Replays every fuzz seed and every committed crasher on stable: `fuzz/corpus/<target>/*`
//! and `fuzz/regressions/<target>/*` for `sync_frame` and `sync_session`, through the same
//! code the fuzz targets run (`common/fuzz_drive.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

#[path = "common/fuzz_drive.rs"]
mod fuzz_drive;

use std::path::Path;

fn replay(target: &str, drive: fn(&[u8])) {
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
}

#[test]
fn sync_frame_corpus_and_regressions_replay_without_panicking() {
    replay("sync_frame", fuzz_drive::drive_frames);
}

#[test]
fn sync_session_corpus_and_regressions_replay_without_panicking() {
    replay("sync_session", fuzz_drive::drive_session);
}

#[test]
fn enroll_wire_corpus_and_regressions_replay_without_panicking() {
    replay("enroll_wire", fuzz_drive::drive_enroll);
}
