//! The hub's dashboard in headless Chromium against a real hub and edge: sign in, open a
//! branch, a lend made at the edge appears live on the posts grid, "out of service" sent
//! from the grid comes back applied, and a kiosk language set in the branch's settings form
//! comes back applied by the edge; then a chain admin creates and disables a user on the
//! Users page (`tests/browser/dashboard.mjs` drives the page).
//!
//! The hub serves HTTP (API + dashboard) and QUIC on one Postgres; the edge is the seeded Pi
//! st-ra-pi-2 (posts 33-48 on one simulated board), enrolled with a re-issued code.
//!
//! Needs Node, Debian's Chromium and `npm ci --prefix tests/browser`; `./install.sh test`
//! installs them and sets `CARTWISE_BROWSER_TESTS=1`, which makes a missing piece a failure.
//! Without that variable the test says what is missing and passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cartwise_cloud_hub::enroll;
use cartwise_cloud_hub::http::{self, AppState};
use cartwise_cloud_hub::users::{self, NewUser, Role};
use cartwise_edge_node::identity;
use cartwise_schema::{DeviceId, Phone};
use cartwise_sync_core::identity::parse_sha256_fingerprint;
use cartwise_tests::{Station, eventually, seed_world, start_hub};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const DEVICE: &str = "0b1e3c2a-0000-4000-8000-000000001002"; // st-ra-pi-2, posts 33-48
const BRANCH: &str = "0b1e3c2a-0000-4000-8000-000000000101"; // ST-RA
const PASSWORD: &str = "a long dashboard password";

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser")
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

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn the_dashboard_shows_a_lend_live_and_applies_out_of_service(pool: PgPool) {
    if let Some(reason) = missing() {
        let required = std::env::var("CARTWISE_BROWSER_TESTS").is_ok_and(|v| v == "1");
        assert!(!required, "browser test required but {reason}");
        eprintln!("skipping the dashboard browser test: {reason}");
        return;
    }
    seed_world(&pool).await;
    let hub = start_hub(&pool).await;
    let device = DeviceId::parse(DEVICE).unwrap();

    // The seeded Pi enrolls with a re-issued code.
    let dir = tempfile::tempdir().unwrap();
    let code = enroll::reissue_code(&pool, device, enroll::CODE_TTL_DEFAULT)
        .await
        .unwrap();
    let ca = parse_sha256_fingerprint(&hub.handle.platform_ca_sha256).unwrap();
    let endpoint = identity::client_endpoint().unwrap();
    let peer = identity::enroll_exchange(
        &endpoint,
        &hub.handle.local_addr.to_string(),
        &code.code.grouped(),
        ca,
        dir.path(),
    )
    .await
    .unwrap()
    .peer();
    assert_eq!(peer.device, device);
    let now_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let station = Station::start_with(dir.path(), peer.device, peer.branch, 1, now_ms, |c| {
        c.bus.first_post_number = 33;
    })
    .await;
    eventually("the edge's posts projected at the hub", || {
        let pool = pool.clone();
        async move {
            let available: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM carts c JOIN controllers k ON k.id = c.controller_id \
                 WHERE k.device_id = $1 AND c.status = 'available'",
            )
            .bind(device.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
            available >= 2
        }
    })
    .await;

    // The hub's HTTP side and a branch manager of ST-RA.
    let branch = uuid::Uuid::parse_str(BRANCH).unwrap();
    let chain: uuid::Uuid = sqlx::query_scalar("SELECT chain_id FROM branches WHERE id = $1")
        .bind(branch)
        .fetch_one(&pool)
        .await
        .unwrap();
    users::add_user(
        &pool,
        &NewUser {
            login: "manager".into(),
            password: PASSWORD.into(),
            role: Role::BranchManager,
            chain: Some(chain),
            branches: vec![branch],
        },
    )
    .await
    .unwrap();
    // A chain admin for the Users page.
    users::add_user(
        &pool,
        &NewUser {
            login: "chief".into(),
            password: PASSWORD.into(),
            role: Role::ChainAdmin,
            chain: Some(chain),
            branches: vec![],
        },
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(
        listener,
        AppState { pool: pool.clone() },
        async move {
            let _ = http_stopped.await;
        },
    ));

    // Screenshots of each step, kept only if the run fails.
    let shots_dir = tempfile::tempdir().unwrap();
    let shots = shots_dir.path().to_path_buf();
    let mut child = tokio::process::Command::new("node")
        .arg(browser_dir().join("dashboard.mjs"))
        .args(["--url", &format!("http://{addr}/")])
        .args(["--login", "manager", "--password", PASSWORD])
        .args(["--branch", BRANCH])
        .args(["--admin-login", "chief", "--admin-password", PASSWORD])
        .arg("--screenshots")
        .arg(&shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut transcript = String::new();
    let engine = station.engine();
    let drive = async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            transcript.push_str(&line);
            transcript.push('\n');
            if line.trim() == "LEND?" {
                // The lend happens at the edge while the page is open.
                let lent = engine
                    .lend(&Phone::parse("0521234567").unwrap())
                    .await
                    .unwrap();
                station.wait_taken(lent.post.post).await;
                // Another post of this edge with its cart docked, for "out of service".
                let spare = engine
                    .posts()
                    .await
                    .unwrap()
                    .iter()
                    .find(|p| p.post != lent.post.post && p.present == Some(true))
                    .map(|p| p.post)
                    .unwrap();
                stdin
                    .write_all(format!("LENT {} SPARE {spare}\n", lent.post.post).as_bytes())
                    .await
                    .unwrap();
                stdin.flush().await.unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(150), drive)
        .await
        .expect("the browser run hung");
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let intents: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT kind, status, outcome_detail FROM intents WHERE branch_id = $1 ORDER BY created_at",
    )
    .bind(branch)
    .fetch_all(&pool)
    .await
    .unwrap();
    let passed =
        output.status.success() && transcript.contains("dashboard e2e: 1 passed, 0 failed");
    let shots = if passed { shots } else { shots_dir.keep() };
    assert!(
        passed,
        "browser run failed ({}):\n{transcript}\n{stderr}\nintents at the hub: {intents:?}\n\
         screenshots in {}",
        output.status,
        shots.display()
    );
    // The settings form reached the edge: its set_language intent came back applied.
    assert!(
        transcript.contains("ok - a branch setting is applied by the edge"),
        "{transcript}"
    );
    assert!(
        intents
            .iter()
            .any(|(kind, status, _)| kind == "set_language" && status == "applied"),
        "{intents:?}"
    );
    // The Users page created and disabled a user.
    let created: Option<bool> =
        sqlx::query_scalar("SELECT active FROM users WHERE login = 'e2e-viewer'")
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(created, Some(false), "{transcript}");
    let _ = stop_http.send(());
    server.await.unwrap().unwrap();
    station.stop().await;
}
