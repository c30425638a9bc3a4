//! Every fuzz target keeps its crashers as regression tests: for each target under
//! `fuzz/fuzz_targets/`, this checks it is registered in `fuzz/Cargo.toml`, has a seed corpus
//! and a `fuzz/regressions/<target>/` folder, and that a stable test of the workspace replays
//! that folder through the target's own entry point (e.g. `sync-core/tests/fuzz_replay.rs`,
//! `edge-node/tests/cu16_codec.rs`). The replays themselves run in those crates' suites; this
//! test fails when a target is added without one, or a replay stops reading its folder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The fuzz targets, by file name.
fn targets() -> Vec<String> {
    let mut targets: Vec<String> = std::fs::read_dir(root().join("fuzz/fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    targets.sort();
    targets
}

#[test]
fn every_fuzz_target_is_registered_seeded_and_its_crashers_replayed() {
    let root = root();
    let targets = targets();
    assert!(targets.len() >= 6, "fuzz targets: {targets:?}");
    let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap();

    // Stable tests and sources of the workspace's crates (not the fuzz crate itself).
    let mut files = Vec::new();
    for krate in [
        "schema",
        "sync-core",
        "edge-node",
        "cloud-hub",
        "tests",
        "netfault",
    ] {
        rust_files(&root.join(krate).join("tests"), &mut files);
        rust_files(&root.join(krate).join("src"), &mut files);
    }
    let texts: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();

    let mut missing = Vec::new();
    for target in &targets {
        if !manifest.contains(&format!("name = \"{target}\"")) {
            missing.push(format!("{target}: no [[bin]] in fuzz/Cargo.toml"));
        }
        let corpus = root.join("fuzz/corpus").join(target);
        let seeds = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
        if seeds == 0 {
            missing.push(format!("{target}: no seed corpus in {}", corpus.display()));
        }
        if !root.join("fuzz/regressions").join(target).is_dir() {
            missing.push(format!("{target}: no fuzz/regressions/{target}/ folder"));
        }
        // A replay names the folder, literally or as `regressions/{target}` with the target
        // passed as a string.
        let literal = format!("regressions/{target}");
        let quoted = format!("\"{target}\"");
        let replayed = texts.iter().any(|(path, text)| {
            path != &PathBuf::from(file!())
                && !path.ends_with("fuzz_regressions.rs")
                && (text.contains(&literal)
                    || (text.contains("regressions/{target}") && text.contains(&quoted)))
        });
        if !replayed {
            missing.push(format!(
                "{target}: no stable test replays fuzz/regressions/{target}/ (add one beside the \
                 decoder, through the fuzz target's entry point)"
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn committed_crashers_are_files_the_replays_read() {
    // A crasher is any file but the README; the replays skip `.md` only, so nothing else may
    // hide in these folders (a subfolder would be skipped silently).
    for target in targets() {
        let dir = root().join("fuzz/regressions").join(&target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            assert!(
                path.is_file(),
                "{} is not a file: the replay of {target} would not read it",
                path.display()
            );
        }
    }
}
