//! A whole station in-process for kiosk tests: the board simulator over TCP, the edge daemon
//! on port 0 with a manual clock, an SMS outbox, and a small JSON client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cartwise_edge_node::config::EdgeConfig;
use cartwise_edge_node::daemon::{self, RunningEdge};
use cartwise_edge_node::shopper::SmsSenderConfig;
use cartwise_edge_node::sim_board::{self, Listen, SimHandle, SimOptions};
use cartwise_fixtures::clock::ManualClock;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Upper bound on any wait in these tests.
pub const WAIT_MAX: Duration = Duration::from_secs(20);
/// A fixed start time: 2026-11-21T08:00:00Z.
pub const T0: i64 = 1_795_248_000_000;
pub const MINUTE: u64 = 60_000;

pub struct Station {
    pub dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    pub sim: SimHandle,
    pub control: SocketAddr,
    pub edge: Option<(RunningEdge, oneshot::Sender<()>)>,
    pub http: SocketAddr,
    pub client: reqwest::Client,
    _sim_stop: oneshot::Sender<()>,
}

impl Station {
    /// Two boards, carts taken 100 ms after each unlock, posts polled every 100 ms.
    pub async fn start() -> Station {
        let dir = tempfile::tempdir().unwrap();
        let (sim_stop, sim_stopped) = oneshot::channel::<()>();
        let sim = sim_board::spawn(
            SimOptions {
                boards: 2,
                listen: Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
                control: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                auto_take: Some(Duration::from_millis(100)),
                ..SimOptions::default()
            },
            async move {
                let _ = sim_stopped.await;
            },
        )
        .await
        .unwrap();
        let control = sim.control.unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let mut station = Station {
            dir,
            clock,
            sim,
            control,
            edge: None,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            client: reqwest::Client::builder()
                .timeout(WAIT_MAX)
                .build()
                .unwrap(),
            _sim_stop: sim_stop,
        };
        station.start_edge().await;
        station
    }

    pub fn config(&self) -> EdgeConfig {
        let mut config = EdgeConfig {
            data_dir: self.dir.path().join("data"),
            sms: Some(SmsSenderConfig::Outbox {
                path: self.outbox(),
            }),
            ..EdgeConfig::default()
        };
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.bus.uri = self.sim.bus_uri().to_string();
        config.bus.boards = vec![0, 1];
        config.bus.poll_interval_ms = 100;
        config.sms = Some(SmsSenderConfig::Outbox {
            path: self.outbox(),
        });
        config
    }

    pub fn outbox(&self) -> PathBuf {
        self.dir.path().join("outbox.jsonl")
    }

    /// Starts the edge daemon (again) on the same data directory and waits for its first
    /// board reads.
    pub async fn start_edge(&mut self) {
        let (stop, stopped) = oneshot::channel::<()>();
        let running = daemon::spawn(self.config(), self.clock.clone(), async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        self.http = running.http;
        self.edge = Some((running, stop));
        self.wait_for(|h| h["rs485_connected"] == true, "/health")
            .await;
        // Two poll rounds: every board read at least once.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Stops the edge daemon cleanly (a restart, not a crash).
    pub async fn stop_edge(&mut self) {
        if let Some((running, stop)) = self.edge.take() {
            let _ = stop.send(());
            tokio::time::timeout(WAIT_MAX, running.wait())
                .await
                .unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        decode(response).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_with(path, body, &[]).await
    }

    pub async fn post_with(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        decode(request.send().await.unwrap()).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>, content_type: &str) -> (u16, Value) {
        let request = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        decode(request.send().await.unwrap()).await
    }

    /// The simulator's control API.
    pub async fn sim_post(&self, path: &str, body: Value) -> Value {
        let response = self
            .client
            .post(format!("http://{}{}", self.control, path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "sim {path}: {}",
            response.status()
        );
        serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null)
    }

    pub async fn sim_state(&self) -> Value {
        let text = self
            .client
            .get(format!("http://{}/state", self.control))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Whether the simulator shows post `post` (1-based, 16 per board) latched and with a cart.
    pub async fn sim_post_state(&self, post: u64) -> (bool, bool) {
        let state = self.sim_state().await;
        let board = ((post - 1) / 16) as usize;
        let lock = ((post - 1) % 16) as usize;
        let b = &state["boards"][board];
        (b["hooks"][lock] == true, b["present"][lock] == true)
    }

    /// Docks a cart at `post`.
    pub async fn dock(&self, post: u64) {
        let board = (post - 1) / 16;
        let lock = (post - 1) % 16 + 1;
        self.sim_post("/dock", json!({ "board": board, "lock": lock }))
            .await;
    }

    /// Polls GET `path` until `done` holds.
    pub async fn wait_for(&self, done: impl Fn(&Value) -> bool, path: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let (_, body) = self.get(path).await;
            if done(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting on {path}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last code sent to `e164`.
    pub fn last_code(&self, e164: &str) -> String {
        let text = std::fs::read_to_string(self.outbox()).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .rfind(|m| m["to"] == e164)
            .and_then(|m| m["code"].as_str().map(str::to_string))
            .unwrap()
    }

    /// Requests and verifies a code; returns the shopper token.
    pub async fn sign_in(&self, phone: &str, e164: &str) -> String {
        let (status, body) = self
            .post("/auth/request-otp", json!({ "phone": phone }))
            .await;
        assert_eq!(status, 200, "{body}");
        let code = self.last_code(e164);
        let (status, body) = self
            .post(
                "/auth/verify-otp",
                json!({ "phone": phone, "otp_code": code }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["auth_token"].as_str().unwrap().to_string()
    }

    /// Signs in and rents; returns the assign answer.
    pub async fn rent(&self, phone: &str, e164: &str) -> Value {
        let token = self.sign_in(phone, e164).await;
        let bearer = format!("Bearer {token}");
        let (status, body) = self
            .post_with(
                "/carts/assign",
                json!({ "phone": phone }),
                &[("authorization", bearer.as_str())],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Initiates a return, docks at the named post and waits for `returned`.
    pub async fn give_back(&self, phone: &str) -> u64 {
        let (status, body) = self
            .post("/carts/initiate-return", json!({ "phone": phone }))
            .await;
        if status != 200 {
            let (_, carts) = self.get("/carts").await;
            let (_, rentals) = self.get("/rentals/active").await;
            panic!("initiate-return: {status} {body}; carts {carts}; rentals {rentals}");
        }
        let post = body["locker_number"].as_u64().unwrap() + 1;
        self.dock(post).await;
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let (status, body) = self
                .post("/carts/complete-return", json!({ "phone": phone }))
                .await;
            assert_eq!(status, 200, "{body}");
            if body["returned"] == true {
                return post;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the return never completed: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// RFC 3339 text of a wall time, as the API writes it.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
