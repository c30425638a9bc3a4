//! Shared helpers for edge-node's integration tests: golden vectors, an in-process simulator,
//! and a tiny HTTP client for the simulator's control API.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cartwise_edge_node::cu16::BusConfig;
use cartwise_edge_node::sim_board::{self, SimHandle, SimOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Upper bound on any single await in a test: a hang fails instead of stalling the suite.
pub const TEST_WAIT_MAX: Duration = Duration::from_secs(20);

/// One line of `fixtures/data/cu16/vectors.txt`.
#[derive(Debug, Clone)]
pub struct Vector {
    pub name: String,
    pub boards: u8,
    /// (board, latched, present)
    pub state: Vec<(u8, u16, u16)>,
    pub request: Vec<u8>,
    pub replies: Vec<Vec<u8>>,
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/data/cu16")
}

pub fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect()
}

pub fn vectors() -> Vec<Vector> {
    let text = std::fs::read_to_string(fixtures_dir().join("vectors.txt")).unwrap();
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(parse_vector)
        .collect()
}

fn parse_vector(line: &str) -> Vector {
    let cols: Vec<&str> = line.split('|').map(str::trim).collect();
    assert_eq!(cols.len(), 5, "bad vector line: {line}");
    let state = match cols[2] {
        "-" => Vec::new(),
        states => states.split(',').map(parse_state).collect(),
    };
    let replies = match cols[4] {
        "-" => Vec::new(),
        frames => frames.split(';').map(hex).collect(),
    };
    Vector {
        name: cols[0].into(),
        boards: cols[1].parse().unwrap(),
        state,
        request: hex(cols[3]),
        replies,
    }
}

fn parse_state(text: &str) -> (u8, u16, u16) {
    let (board, bits) = text.trim().split_once(':').unwrap();
    let (latched, present) = bits.split_once('/').unwrap();
    (
        board.parse().unwrap(),
        u16::from_str_radix(latched, 16).unwrap(),
        u16::from_str_radix(present, 16).unwrap(),
    )
}

/// A running in-process simulator; dropping `stop` (or sending on it) shuts it down.
pub struct Sim {
    pub handle: SimHandle,
    pub stop: oneshot::Sender<()>,
}

pub async fn start_sim(options: SimOptions) -> Sim {
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let handle = sim_board::spawn(options, shutdown).await.unwrap();
    Sim { handle, stop }
}

/// Driver timings shortened for tests (the behaviour is the same, only faster).
pub fn fast_config() -> BusConfig {
    BusConfig {
        reply_timeout: Duration::from_millis(300),
        quiet_gap: Duration::from_millis(100),
        bus_collect_max: Duration::from_millis(600),
        setting_guard: Duration::from_millis(50),
        frame_gap: Duration::from_millis(2),
        unlock_settle_min: Duration::from_millis(20),
        unlock_confirm_margin: Duration::from_millis(50),
        ..BusConfig::default()
    }
}

/// A fresh path for a PTY symlink.
pub fn pty_link(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// One HTTP/1.1 request to the control API; returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(TEST_WAIT_MAX, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `POST` a JSON body to the simulator's control API and insist on 200.
pub async fn control(sim: &Sim, path: &str, body: &str) -> String {
    let addr = sim
        .handle
        .control
        .expect("simulator started without --control");
    let (status, body) = http(addr, "POST", path, body).await;
    assert_eq!(status, 200, "POST {path}: {body}");
    body
}
