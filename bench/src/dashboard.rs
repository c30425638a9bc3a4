//! Edge → dashboard latency: the demo system (hub, fault proxies, every edge on its simulated
//! boards, the load generator in the background) is started by `scripts/demo.sh` in a scratch
//! directory; a bench shopper lends a cart at one kiosk and the clock runs until the hub's
//! live channel (`GET /api/events`, what the dashboard listens to) announced a change of that
//! branch after which the rental is listed by `GET /api/branches/{id}/rentals/active` (what the
//! dashboard refetches on each announcement). The cart is returned before the next lend.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::endpoints::Endpoints;
use crate::loadgen::{Kiosk, Shopper, StepError};

/// How long one lend may take to show on the dashboard before the run fails.
const VISIBLE_WAIT: Duration = Duration::from_secs(20);
/// How long the demo may take to come up.
const START_WAIT: Duration = Duration::from_secs(120);

/// The scenario failed.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// Starting or driving the demo failed.
    #[error("{0}")]
    Demo(String),
    /// A kiosk step failed.
    #[error("kiosk: {0}")]
    Kiosk(#[from] StepError),
    /// The hub's API failed.
    #[error("hub API: {0}")]
    Http(#[from] reqwest::Error),
    /// Local I/O failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The demo, stopped (SIGTERM, as Ctrl-C's clean-up does) when dropped.
struct RunningDemo(Child);

impl Drop for RunningDemo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Per lend, in the order measured: (milliseconds until the dashboard listed it,
/// milliseconds until the kiosk answered the lend).
pub async fn measure(
    root: &Path,
    bin: &Path,
    database_url: &str,
    lends: usize,
) -> Result<Vec<(f64, f64)>, DashboardError> {
    let dir = root.join("target/bench-demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(dir.join("demo.out"))?;
    let child = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .env("DATABASE_URL", database_url)
        .env("CARTWISE_DEMO_BIN", bin)
        .env("CARTWISE_DEMO_DIR", dir.join("var"))
        .env("CARTWISE_DEMO_HUB_PORT", "28080")
        .env("CARTWISE_LOADGEN_ARGS", "--lends-per-minute 2 --shoppers 4")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut demo = RunningDemo(child);
    let endpoints_path = dir.join("var/endpoints.json");
    let started = Instant::now();
    let endpoints = loop {
        if let Ok(endpoints) = Endpoints::read(&endpoints_path) {
            break endpoints;
        }
        if let Ok(Some(status)) = demo.0.try_wait() {
            return Err(DashboardError::Demo(format!(
                "the demo exited ({status}); see {}",
                dir.join("demo.out").display()
            )));
        }
        if started.elapsed() > START_WAIT {
            return Err(DashboardError::Demo(format!(
                "the demo did not come up in {} s; see {}",
                START_WAIT.as_secs(),
                dir.join("demo.out").display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    run(&endpoints, lends).await
}

async fn run(endpoints: &Endpoints, lends: usize) -> Result<Vec<(f64, f64)>, DashboardError> {
    let edge = endpoints
        .edges
        .first()
        .ok_or_else(|| DashboardError::Demo("the demo has no edges".to_owned()))?
        .clone();
    let admin = endpoints
        .users
        .iter()
        .find(|u| u.role == "platform_admin")
        .ok_or_else(|| DashboardError::Demo("the demo has no platform admin".to_owned()))?;
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{}/auth/login", endpoints.hub.api))
        .header("content-type", "application/json")
        .body(
            json!({ "login": admin.login, "password": admin.password, "issue_token": true })
                .to_string(),
        )
        .send()
        .await?
        .error_for_status()?
        .json_text()
        .await?;
    let token = login["data"]["token"]
        .as_str()
        .ok_or_else(|| DashboardError::Demo(format!("login gave no token: {login}")))?
        .to_owned();
    let mut events = http
        .get(format!(
            "{}/events?branch_id={}",
            endpoints.hub.api, edge.branch_id
        ))
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?;
    let active = format!(
        "{}/branches/{}/rentals/active",
        endpoints.hub.api, edge.branch_id
    );
    let mut kiosk = Kiosk::new(edge)?;
    kiosk.quiet = true;
    let mut shopper = Shopper {
        phone: "0509000001".to_owned(),
        token: None,
        open: true,
        hold: Duration::ZERO,
    };
    kiosk.give_back(&shopper).await?;
    let mut latencies = Vec::with_capacity(lends);
    for _ in 0..lends {
        let started = Instant::now();
        let Some(rental) = kiosk.lend(&mut shopper).await? else {
            return Err(DashboardError::Demo(
                "the bench shopper already had a rental".to_owned(),
            ));
        };
        let answered = started.elapsed().as_secs_f64() * 1e3;
        loop {
            let remaining = VISIBLE_WAIT.saturating_sub(started.elapsed());
            let chunk = tokio::time::timeout(remaining, events.chunk())
                .await
                .map_err(|_| {
                    DashboardError::Demo(format!(
                        "rental {rental} did not reach the dashboard in {} s",
                        VISIBLE_WAIT.as_secs()
                    ))
                })??
                .ok_or_else(|| DashboardError::Demo("the event stream ended".to_owned()))?;
            if !String::from_utf8_lossy(&chunk).contains("event: change") {
                continue;
            }
            let listed = http
                .get(&active)
                .bearer_auth(&token)
                .send()
                .await?
                .text()
                .await?;
            if listed.contains(&rental) {
                break;
            }
        }
        latencies.push((started.elapsed().as_secs_f64() * 1e3, answered));
        // Let the auto-take happen, then bring the cart back.
        tokio::time::sleep(Duration::from_millis(1800)).await;
        kiosk.give_back(&shopper).await?;
    }
    Ok(latencies)
}

/// `Response::json` without reqwest's `json` feature.
trait JsonText {
    async fn json_text(self) -> Result<Value, reqwest::Error>;
}

impl JsonText for reqwest::Response {
    async fn json_text(self) -> Result<Value, reqwest::Error> {
        let text = self.text().await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

/// The workspace root, from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
