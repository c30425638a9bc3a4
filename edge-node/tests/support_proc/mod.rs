//! Real-process helpers for the fault tests (edge-node's, and the workspace's through
//! `#[path]`): the `cartwise-edge sim-board` and `cartwise-edge run` binaries as child
//! processes (killed on drop), a small JSON client for the kiosk and the simulator's control
//! API, shopper sign-in through the SMS outbox, and read-only views of the edge's SQLite store.
//! The including test crate says where the binary is: a `fn edge_bin() -> PathBuf` at its root.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::edge_bin;
/// Upper bound on any single wait: a hang fails the test instead of stalling the suite.
pub const WAIT_MAX: Duration = Duration::from_secs(20);
/// Per-request timeout of the HTTP client.
pub const REQUEST_MAX: Duration = Duration::from_secs(10);

/// A scratch directory that is kept (and named on stderr) when the test panics, or always
/// when `CARTWISE_KEEP_TEST_DATA` is set, so the edge's database and logs can be inspected.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    pub fn new(prefix: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        Self { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let keep =
            std::thread::panicking() || std::env::var_os("CARTWISE_KEEP_TEST_DATA").is_some();
        if keep && let Some(dir) = self.dir.take() {
            eprintln!("kept the test's data and logs in {}", dir.keep().display());
        }
    }
}

/// A child process that is SIGKILLed when dropped, so a failing test leaves nothing behind.
pub struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    /// SIGKILLs the process (`Child::kill` sends SIGKILL on Unix) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let waited = tokio::time::timeout(WAIT_MAX, self.child.wait()).await;
        assert!(waited.is_ok(), "{} did not die after SIGKILL", self.name);
    }

    /// The process id.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Reads the first `n` lines the child prints, then keeps draining its stdout in the
/// background (so a later write never meets a closed pipe).
async fn first_lines(stdout: ChildStdout, n: usize, what: &str) -> Vec<String> {
    let mut lines = BufReader::new(stdout).lines();
    let mut out = Vec::new();
    while out.len() < n {
        let line = tokio::time::timeout(WAIT_MAX, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{what} printed nothing for {WAIT_MAX:?}"))
            .unwrap();
        match line {
            Some(line) => out.push(line),
            None => panic!("{what} exited before printing its address (got {out:?})"),
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    out
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// One post as the simulator shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimPost {
    pub latched: bool,
    pub present: bool,
}

/// Board and lock of a post number (posts 1..16·N in board order).
pub fn board_lock(post: u16) -> (u8, u8) {
    let index = post - 1;
    (
        u8::try_from(index / 16).unwrap(),
        u8::try_from(index % 16 + 1).unwrap(),
    )
}

/// `cartwise-edge sim-board` as a process: the boards outlive edge restarts, like hardware.
pub struct SimProc {
    pub proc: Proc,
    /// `tcp:HOST:PORT`, for `--bus`.
    pub bus: String,
    pub control: SocketAddr,
    pub api: Api,
}

impl SimProc {
    pub async fn start(boards: u8, auto_take_ms: Option<u64>, log: &Path) -> Self {
        let mut command = Command::new(edge_bin());
        command
            .args(["sim-board", "--boards", &boards.to_string()])
            .args(["--listen", "tcp:127.0.0.1:0", "--control", "127.0.0.1:0"]);
        if let Some(ms) = auto_take_ms {
            command.args(["--auto-take-ms", &ms.to_string()]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let proc = Proc {
            child,
            name: "sim-board",
        };
        let lines = first_lines(stdout, 2, "sim-board").await;
        let bus = lines[0]
            .strip_prefix("bus ")
            .unwrap_or_else(|| panic!("unexpected sim-board line {:?}", lines[0]))
            .to_string();
        let control: SocketAddr = lines[1]
            .strip_prefix("control ")
            .unwrap_or_else(|| panic!("unexpected sim-board line {:?}", lines[1]))
            .parse()
            .unwrap();
        Self {
            proc,
            bus,
            control,
            api: Api::new(control),
        }
    }

    /// Every post, in post order.
    pub async fn posts(&self) -> Vec<SimPost> {
        let (status, body) = self.api.get("/state").await.unwrap();
        assert_eq!(status, 200, "GET /state: {body}");
        let mut posts = Vec::new();
        for board in body["boards"].as_array().unwrap() {
            let hooks = board["hooks"].as_array().unwrap();
            let present = board["present"].as_array().unwrap();
            for (hook, cart) in hooks.iter().zip(present) {
                posts.push(SimPost {
                    latched: hook.as_bool().unwrap(),
                    present: cart.as_bool().unwrap(),
                });
            }
        }
        posts
    }

    /// `POST /dock` or `/take` at a post; returns the HTTP status.
    pub async fn act(&self, action: &str, post: u16) -> u16 {
        let (board, lock) = board_lock(post);
        let body = json!({ "board": board, "lock": lock });
        let (status, _) = self.api.post(&format!("/{action}"), &body).await.unwrap();
        status
    }

    /// Unlocks a post over the bus with the technician CLI (as a technician on site would).
    pub async fn cli_unlock(&self, post: u16) {
        let (board, lock) = board_lock(post);
        let output = Command::new(edge_bin())
            .args(["bus", "--bus", &self.bus, "--timeout-ms", "500", "unlock"])
            .args(["--board", &board.to_string(), "--lock", &lock.to_string()])
            .arg("--yes")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(WAIT_MAX, output)
            .await
            .unwrap()
            .unwrap();
        assert!(
            output.status.success(),
            "bus unlock failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `cartwise-edge run` as a process.
pub struct EdgeProc {
    pub proc: Proc,
    pub http: SocketAddr,
    pub api: Api,
}

/// Where an edge keeps its files.
#[derive(Debug, Clone)]
pub struct EdgeFiles {
    pub data: PathBuf,
    pub outbox: PathBuf,
    pub log: PathBuf,
}

impl EdgeFiles {
    pub fn under(dir: &Path) -> Self {
        Self {
            data: dir.join("edge"),
            outbox: dir.join("sms-outbox.jsonl"),
            log: dir.join("edge.log"),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.data.join("edge.db")
    }
}

impl EdgeProc {
    /// Starts the edge on port 0 (with the config file `config`, if any) and waits for the
    /// address it prints.
    pub async fn start(files: &EdgeFiles, config: Option<&Path>, bus: &str, boards: &str) -> Self {
        let mut command = Command::new(edge_bin());
        command.arg("run");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .arg("--data")
            .arg(&files.data)
            .args(["--http", "127.0.0.1:0", "--bus", bus, "--boards", boards])
            .arg("--sms-outbox")
            .arg(&files.outbox)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(&files.log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let proc = Proc {
            child,
            name: "cartwise-edge run",
        };
        let lines = first_lines(stdout, 1, "cartwise-edge run").await;
        let http: SocketAddr = lines[0]
            .strip_prefix("edge kiosk listening on http://")
            .unwrap_or_else(|| panic!("unexpected edge line {:?}", lines[0]))
            .parse()
            .unwrap();
        Self {
            proc,
            http,
            api: Api::new(http),
        }
    }

    /// Waits until `/health` says the lock bus is connected.
    pub async fn wait_bus(&self) {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            if let Ok((200, health)) = self.api.get("/health").await
                && health["rs485_connected"] == json!(true)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the edge never reported rs485_connected"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A JSON-over-HTTP client bound to one server. Every request is bounded by
/// [`REQUEST_MAX`]; errors (refused, reset, timed out) are returned, not panicked on, since a
/// killed edge is expected to fail requests.
#[derive(Clone)]
pub struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_MAX)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Self {
            base: format!("http://{addr}"),
            client,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), reqwest::Error> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value), reqwest::Error> {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), reqwest::Error> {
        self.post_auth(path, body, None).await
    }

    pub async fn post_auth(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }
}

/// `05XXXXXXXX` → `+9725XXXXXXXX`, the form the store and the outbox use.
pub fn e164(phone: &str) -> String {
    format!("+972{}", &phone[1..])
}

/// Signs a phone in: requests a code, reads it from the SMS outbox, verifies it; returns the
/// 30-day shopper token (it survives restarts: the key file is in the data directory).
pub async fn sign_in(api: &Api, outbox: &Path, phone: &str) -> String {
    let (status, body) = api
        .post("/auth/request-otp", &json!({ "phone": phone }))
        .await
        .unwrap();
    assert_eq!(status, 200, "request-otp {phone}: {body}");
    let to = e164(phone);
    let text = std::fs::read_to_string(outbox).unwrap();
    let code = text
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|sms| sms["to"] == json!(to))
        .and_then(|sms| sms["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no SMS to {to} in the outbox"));
    let (status, body) = api
        .post(
            "/auth/verify-otp",
            &json!({ "phone": phone, "otp_code": code }),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "verify-otp {phone}: {body}");
    body["auth_token"].as_str().unwrap().to_string()
}

/// A rental row of the edge's store.
#[derive(Debug, Clone)]
pub struct RentalRec {
    pub id: String,
    pub phone: String,
    pub post: u16,
    pub status: String,
    pub start_wall_ms: i64,
    pub start_hlc: String,
    pub taken_hlc: Option<String>,
    pub return_post: Option<u16>,
    pub note: Option<String>,
}

/// An event of the edge's append-only log.
#[derive(Debug, Clone)]
pub struct EventRec {
    pub seq: i64,
    pub kind: String,
    pub rental_id: Option<String>,
    pub post: Option<u16>,
    pub data: Value,
}

/// A post row of the edge's store: what the edge last sensed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostRec {
    pub post: u16,
    pub hook: String,
    pub present: Option<bool>,
}

/// Read-only access to the edge's SQLite store, safe while the edge runs (WAL).
pub struct Db {
    conn: rusqlite::Connection,
}

impl Db {
    pub fn open(path: &Path) -> Self {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        Self { conn }
    }

    pub fn rentals(&self) -> Vec<RentalRec> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, phone, post, status, start_wall_ms, start_hlc, taken_hlc, return_post,
                        note
                 FROM rentals ORDER BY start_hlc",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok(RentalRec {
                id: r.get(0)?,
                phone: r.get(1)?,
                post: r.get(2)?,
                status: r.get(3)?,
                start_wall_ms: r.get(4)?,
                start_hlc: r.get(5)?,
                taken_hlc: r.get(6)?,
                return_post: r.get(7)?,
                note: r.get(8)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    pub fn events(&self) -> Vec<EventRec> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, kind, rental_id, post, data FROM events ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| {
            Ok(EventRec {
                seq: r.get(0)?,
                kind: r.get(1)?,
                rental_id: r.get(2)?,
                post: r.get(3)?,
                data: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or(Value::Null),
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    pub fn posts(&self) -> Vec<PostRec> {
        let mut stmt = self
            .conn
            .prepare("SELECT post, hook, present FROM posts ORDER BY post")
            .unwrap();
        stmt.query_map([], |r| {
            Ok(PostRec {
                post: r.get(0)?,
                hook: r.get(1)?,
                present: r.get::<_, Option<i64>>(2)?.map(|v| v != 0),
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }
}

/// Whether the edge's sensed state of every post equals what the simulator shows.
pub fn posts_match(db: &[PostRec], sim: &[SimPost]) -> bool {
    db.len() == sim.len()
        && db.iter().zip(sim).all(|(row, real)| {
            let hook = if real.latched { "latched" } else { "open" };
            row.hook == hook && row.present == Some(real.present)
        })
}
