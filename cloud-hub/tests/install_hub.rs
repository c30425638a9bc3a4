//! `./install.sh hub` staged into a scratch prefix: the binary, the settings file (from the
//! example, never overwritten), the data directory, the alert rules and the systemd unit land
//! where a server expects them, and a second run changes nothing. `systemd-analyze verify`
//! checks the unit where it is installed on this machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const HUB_BINARY: &str = env!("CARGO_BIN_EXE_cartwise-hub");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn install(program: &[&str], prefix: &Path) -> String {
    let output = Command::new(repo().join(program[0]))
        .args(&program[1..])
        .arg("--prefix")
        .arg(prefix)
        .arg("--no-start")
        .arg("--binary")
        .arg(HUB_BINARY)
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "installer failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

/// Every path under `root` with its mode, modification time and content.
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
fn install_hub_stages_everything_and_a_second_run_changes_nothing() {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let prefix = scratch.path().join("root");
    let first = install(&["install.sh", "hub"], &prefix);
    assert!(
        first.contains("not starting the service (--no-start)"),
        "{first}"
    );
    assert!(first.contains("journalctl -u cartwise-hub -f"), "{first}");
    assert!(first.contains("skipped    staging into"), "{first}");

    let hub = prefix.join("usr/local/bin/cartwise-hub");
    assert_eq!(
        std::fs::read(&hub).unwrap(),
        std::fs::read(HUB_BINARY).unwrap()
    );
    assert_eq!(mode(&hub), 0o755);

    let env = prefix.join("etc/cartwise/hub.env");
    let example = std::fs::read_to_string(repo().join("cloud-hub/deploy/hub.env.example")).unwrap();
    assert_eq!(std::fs::read_to_string(&env).unwrap(), example);
    assert_eq!(mode(&env), 0o640);
    for key in ["DATABASE_URL=", "CARTWISE_HUB_HTTP=", "CARTWISE_HUB_QUIC="] {
        assert!(example.lines().any(|l| l.starts_with(key)), "{key}");
    }

    let data = prefix.join("var/lib/cartwise-hub");
    assert!(data.is_dir());
    assert_eq!(mode(&data), 0o750);

    let alerts = prefix.join("usr/local/share/cartwise/hub-alerts.yml");
    assert_eq!(
        std::fs::read(&alerts).unwrap(),
        std::fs::read(repo().join("cloud-hub/deploy/alerts.yml")).unwrap()
    );

    let unit =
        std::fs::read_to_string(prefix.join("etc/systemd/system/cartwise-hub.service")).unwrap();
    let shipped =
        std::fs::read_to_string(repo().join("cloud-hub/deploy/cartwise-hub.service")).unwrap();
    assert_eq!(unit, shipped);
    for line in [
        "EnvironmentFile=/etc/cartwise/hub.env",
        "ExecStart=/usr/local/bin/cartwise-hub serve",
        "User=cartwise-hub",
        "Restart=on-failure",
        "StandardOutput=journal",
        "StandardError=journal",
        "StateDirectory=cartwise-hub",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks `{line}`");
    }

    // The operator edits the settings; the re-run keeps them and touches nothing else.
    let edited = example.replace("127.0.0.1:8080", "0.0.0.0:8080");
    assert_ne!(edited, example);
    std::fs::write(&env, &edited).unwrap();
    let before = snapshot(&prefix);
    let second = install(&["scripts/install-hub.sh"], &prefix);
    assert_eq!(
        snapshot(&prefix),
        before,
        "the second run changed files:\n{second}"
    );
    assert!(
        second.contains("nothing changed (already installed)"),
        "{second}"
    );
    assert_eq!(std::fs::read_to_string(&env).unwrap(), edited);
}

/// The settings file is what `serve` reads: its keys are the command's environment.
#[test]
fn serve_takes_the_settings_file_keys_from_the_environment() {
    let output = Command::new(HUB_BINARY)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for key in [
        "DATABASE_URL",
        "CARTWISE_HUB_HTTP",
        "CARTWISE_HUB_QUIC",
        "CARTWISE_HUB_MQTT",
    ] {
        assert!(help.contains(key), "serve --help lacks {key}:\n{help}");
    }
}

/// `systemd-analyze verify` on the shipped unit, with `ExecStart` pointed at the built binary.
/// Skipped without systemd-analyze.
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed; skipping");
        return;
    };
    assert!(probe.status.success());
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let shipped =
        std::fs::read_to_string(repo().join("cloud-hub/deploy/cartwise-hub.service")).unwrap();
    let env = scratch.path().join("hub.env");
    std::fs::copy(repo().join("cloud-hub/deploy/hub.env.example"), &env).unwrap();
    let unit = shipped
        .replace("/usr/local/bin/cartwise-hub", HUB_BINARY)
        .replace("/etc/cartwise/hub.env", env.to_str().unwrap());
    let path = scratch.path().join("cartwise-hub.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze warned:\n{stderr}"
    );
}
