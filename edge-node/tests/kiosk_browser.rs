//! Our kiosk page in headless Chromium against a real station: take and return a cart in
//! Hebrew, then switch to English (`tests/browser/kiosk-flow.mjs` drives the page).
//!
//! Needs Node, Debian's Chromium and `npm ci --prefix tests/browser`; `./install.sh test`
//! installs them and sets `CARTWISE_BROWSER_TESTS=1`, which makes a missing piece a failure.
//! Without that variable the test says what is missing and passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod station;

use std::path::PathBuf;
use std::time::Duration;

use station::Station;

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        return Some(format!("no Chromium at {chromium}"));
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Some("playwright-core is not installed (npm ci --prefix tests/browser)".into());
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("no node on PATH".into());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kiosk_page_takes_and_returns_a_cart_in_hebrew() {
    if let Some(reason) = missing() {
        let required = std::env::var("CARTWISE_BROWSER_TESTS").is_ok_and(|v| v == "1");
        assert!(!required, "browser test required but {reason}");
        eprintln!("skipping the browser test: {reason}");
        return;
    }
    let station = Station::start().await;
    let shots = station.dir.path().join("screenshots");
    let script = browser_dir().join("kiosk-flow.mjs");
    let child = tokio::process::Command::new("node")
        .arg(&script)
        .args(["--kiosk", &format!("http://{}/kiosk/", station.http)])
        .arg("--outbox")
        .arg(station.outbox())
        .args(["--sim-control", &format!("http://{}", station.control)])
        .arg("--screenshots")
        .arg(&shots)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("the browser run hung")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("kiosk e2e: 1 passed, 0 failed"),
        "browser run failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}
