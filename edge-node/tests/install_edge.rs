//! `./install.sh edge` staged into a scratch prefix: the binaries, the config (from the
//! example, never overwritten), the data directory and the systemd unit land where the Pi
//! expects them, and a second run changes nothing. `systemd-analyze verify` checks the unit
//! where it is installed on this machine.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EDGE_BINARY: &str = env!("CARGO_BIN_EXE_cartwise-edge");
const TECH_BINARY: &str = env!("CARGO_BIN_EXE_cartwise-tech");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `program` (the installer or `install.sh edge`) into `prefix` without starting anything.
fn install(program: &[&str], prefix: &Path) -> String {
    let mut command = Command::new(repo().join(program[0]));
    command
        .args(&program[1..])
        .arg("--prefix")
        .arg(prefix)
        .arg("--no-start")
        .arg("--binary")
        .arg(EDGE_BINARY)
        .current_dir(repo());
    let output: Output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "installer failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

/// Every path under `root` with its mode, size, modification time and content.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, i64, i64, Vec<u8>)> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                stack.push(path.clone());
                Vec::new()
            };
            let key = path.strip_prefix(root).unwrap().to_path_buf();
            found.insert(key, (meta.mode(), meta.mtime(), meta.mtime_nsec(), content));
        }
    }
    found
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn install_edge_stages_everything_and_a_second_run_changes_nothing() {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let prefix = scratch.path().join("root");
    let first = install(&["scripts/install-edge.sh"], &prefix);
    assert!(
        first.contains("not starting the service (--no-start)"),
        "{first}"
    );
    assert!(first.contains("journalctl -u cartwise-edge -f"), "{first}");

    let edge = prefix.join("usr/local/bin/cartwise-edge");
    assert_eq!(
        std::fs::read(&edge).unwrap(),
        std::fs::read(EDGE_BINARY).unwrap()
    );
    assert_eq!(mode(&edge), 0o755);
    let tech = prefix.join("usr/local/bin/cartwise-tech");
    assert_eq!(
        std::fs::read(&tech).unwrap(),
        std::fs::read(TECH_BINARY).unwrap()
    );

    let config = prefix.join("etc/cartwise/edge.toml");
    let example = std::fs::read_to_string(repo().join("edge-node/config.example.toml")).unwrap();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), example);
    assert_eq!(mode(&config), 0o640);

    let data = prefix.join("var/lib/cartwise");
    assert!(data.is_dir());
    assert_eq!(mode(&data), 0o750);

    let unit_path = prefix.join("etc/systemd/system/cartwise-edge.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let shipped =
        std::fs::read_to_string(repo().join("edge-node/deploy/cartwise-edge.service")).unwrap();
    assert_eq!(unit, shipped);
    for line in [
        "ExecStart=/usr/local/bin/cartwise-edge run --config /etc/cartwise/edge.toml",
        "User=cartwise",
        "SupplementaryGroups=dialout",
        "Restart=on-failure",
        "RestartSec=2",
        "StandardOutput=journal",
        "StandardError=journal",
        "StateDirectory=cartwise",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/cartwise",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "DeviceAllow=char-ttyUSB rw",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks `{line}`");
    }
    assert!(
        !unit.lines().any(|l| l.starts_with("PrivateDevices=")),
        "PrivateDevices would hide the serial ports"
    );

    // The operator edits the config; the re-run (through `./install.sh edge`) keeps it and
    // touches nothing else either.
    let edited = example.replace("boards = [0, 1]", "boards = [0, 1, 2]");
    assert_ne!(edited, example);
    std::fs::write(&config, &edited).unwrap();
    let before = snapshot(&prefix);
    let second = install(&["install.sh", "edge"], &prefix);
    assert_eq!(
        snapshot(&prefix),
        before,
        "the second run changed files:\n{second}"
    );
    assert!(
        second.contains("nothing changed (already installed)"),
        "{second}"
    );
    assert!(second.contains("kept"), "{second}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
}

/// `systemd-analyze verify` on the shipped unit, with `ExecStart` pointed at the built binary
/// (verify checks that the command exists on this machine). Skipped without systemd-analyze.
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed; skipping");
        return;
    };
    assert!(probe.status.success());
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let shipped =
        std::fs::read_to_string(repo().join("edge-node/deploy/cartwise-edge.service")).unwrap();
    let unit = shipped.replace("/usr/local/bin/cartwise-edge", EDGE_BINARY);
    let path = scratch.path().join("cartwise-edge.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Unknown or misspelled settings are only warnings: refuse any.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze warned:\n{stderr}"
    );
}
