//! `var/demo/endpoints.json`, written by `scripts/demo.sh` while the demo runs: how scripts
//! reach the hub, the database, the demo users, every edge's kiosk and simulator, and the
//! per-branch fault proxies.

use std::path::Path;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
pub struct Endpoints {
    /// The hub's addresses.
    pub hub: Hub,
    /// The Postgres URL the hub writes to.
    pub database_url: String,
    /// The demo logins.
    #[serde(default)]
    pub users: Vec<User>,
    /// One entry per simulated Pi.
    pub edges: Vec<Edge>,
    /// One fault proxy per branch, between its edges and the hub's QUIC port.
    #[serde(default)]
    pub proxies: Vec<Proxy>,
}

/// The hub's addresses.
#[derive(Debug, Clone, Deserialize)]
pub struct Hub {
    /// REST API base URL (`…/api`).
    pub api: String,
    /// The dashboard page.
    pub dashboard: String,
    /// The QUIC sync endpoint, `HOST:PORT`.
    pub quic: String,
}

/// A demo login.
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    /// `platform_admin`, `chain_admin`, `branch_manager`, `technician` or `viewer`.
    pub role: String,
    /// Login name.
    pub login: String,
    /// Password (demo only).
    pub password: String,
    /// What the user may see, in words.
    pub scope: String,
}

/// One simulated Pi.
#[derive(Debug, Clone, Deserialize)]
pub struct Edge {
    /// The chain's id.
    pub chain: String,
    /// The branch's code, e.g. `ST-RA`.
    pub branch_code: String,
    /// The branch's id.
    #[serde(default)]
    pub branch_id: String,
    /// The device's id.
    pub device_id: String,
    /// The device's name.
    #[serde(default)]
    pub name: String,
    /// Kiosk base URL.
    pub kiosk: String,
    /// The development SMS outbox (one JSON object per line, `to` and `code`).
    pub sms_outbox: String,
    /// The board simulator's control base URL.
    pub sim_control: String,
    /// Board addresses, in the order the device numbers its posts.
    #[serde(default = "default_boards")]
    pub boards: Vec<u8>,
    /// The device's first post number.
    #[serde(default = "default_first_post")]
    pub first_post: u32,
}

fn default_boards() -> Vec<u8> {
    vec![0]
}

fn default_first_post() -> u32 {
    1
}

/// A branch's fault proxy.
#[derive(Debug, Clone, Deserialize)]
pub struct Proxy {
    /// The branch it cuts off.
    pub branch_code: String,
    /// Where the branch's edges dial (UDP `HOST:PORT`).
    pub listen: String,
    /// Control base URL (`POST /block`, `POST /heal`, `GET /state`).
    pub control: String,
}

/// Reading the endpoints file failed.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}; is the demo running (./install.sh demo)?")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not the demo's endpoints JSON.
    #[error("{path} is not a demo endpoints file: {source}; restart the demo to rewrite it")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
}

impl Endpoints {
    /// Reads and parses the file.
    pub fn read(path: &Path) -> Result<Self, EndpointsError> {
        let text = std::fs::read_to_string(path).map_err(|source| EndpointsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|source| EndpointsError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

impl Edge {
    /// The simulator's (board address, lock 1–16) of a branch post number, if it is this
    /// device's.
    pub fn board_lock(&self, post: u32) -> Option<(u8, u8)> {
        let index = post.checked_sub(self.first_post)?;
        let board = *self.boards.get(usize::try_from(index / 16).ok()?)?;
        let lock = u8::try_from(index % 16 + 1).ok()?;
        Some((board, lock))
    }
}
