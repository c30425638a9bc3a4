//! The edge daemon's configuration: one TOML file (`--config`), validated once at start with
//! errors that name the field, then passed by value. `Default` is the development config.
//! A commented `edge-node/config.example.toml` documents every field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cartwise_schema::{BoardAddr, BranchId, DeviceId, RENTAL_MINUTES_DEFAULT};
use serde::Deserialize;

use crate::cu16::{BusConfig, BusUri, HookPolarity};
use crate::engine::{EngineConfig, Layout};
use crate::shopper::{ShopperConfig, SmsSenderConfig};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    pub device: DeviceSection,
    /// SQLite, the live documents and the shopper-token key live here.
    pub data_dir: PathBuf,
    pub http: HttpSection,
    pub bus: BusSection,
    pub rental: RentalSection,
    pub shopper: ShopperConfig,
    /// The SMS sender; absent means SMS is not configured (codes cannot be sent).
    pub sms: Option<SmsSenderConfig>,
    /// The other Pis of this branch on the LAN.
    pub lan: LanSection,
}

/// Most LAN peers one Pi is configured with (a branch has a few Pis).
pub const LAN_PEERS_MAX: usize = 16;

/// Direct sync with the other Pis of the branch over QUIC (mutual TLS with the device
/// certificate; only devices of this chain and branch are accepted).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LanSection {
    /// Where to accept branch peers (UDP), e.g. `0.0.0.0:7443`; absent: accept none.
    pub listen: Option<SocketAddr>,
    /// The other Pis of the branch, `HOST:PORT` each; this Pi connects to every one.
    pub peers: Vec<String>,
}

/// Who this device is.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceSection {
    pub id: DeviceId,
    pub branch_id: BranchId,
    pub name: String,
}

/// The kiosk HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    pub listen: SocketAddr,
}

/// The RS485 lock bus and the posts on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSection {
    /// `serial:/dev/ttyUSB0[@baud]`, `tcp:HOST:PORT` (KR-BU bridge or simulator), `pty:PATH`.
    pub uri: String,
    /// Board addresses (DIP switch, 0–9).
    pub boards: Vec<u8>,
    /// Number of the first post; posts follow in board-address order, 16 per board.
    pub first_post_number: u16,
    /// Boards whose hook bit reads 0 when latched.
    pub inverted_boards: Vec<u8>,
    pub poll_interval_ms: u64,
    pub reply_timeout_ms: u64,
}

/// Rental rules of the branch.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RentalSection {
    pub minutes: u32,
    pub return_hold_minutes: u32,
    pub lend_posts_max: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            device: DeviceSection::default(),
            data_dir: PathBuf::from("var/edge"),
            http: HttpSection::default(),
            bus: BusSection::default(),
            rental: RentalSection::default(),
            shopper: ShopperConfig::default(),
            sms: None,
            lan: LanSection::default(),
        }
    }
}

impl Default for DeviceSection {
    fn default() -> Self {
        Self {
            id: DeviceId::from_uuid(uuid::Uuid::from_u128(
                0x0b1e_3c2a_0000_4000_8000_0000_0000_1001,
            )),
            branch_id: BranchId::from_uuid(uuid::Uuid::from_u128(
                0x0b1e_3c2a_0000_4000_8000_0000_0000_0101,
            )),
            name: "dev-edge".into(),
        }
    }
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
        }
    }
}

impl Default for BusSection {
    fn default() -> Self {
        Self {
            uri: "tcp:127.0.0.1:7000".into(),
            boards: vec![0],
            first_post_number: 1,
            inverted_boards: Vec::new(),
            poll_interval_ms: 500,
            reply_timeout_ms: 1_000,
        }
    }
}

impl Default for RentalSection {
    fn default() -> Self {
        Self {
            minutes: RENTAL_MINUTES_DEFAULT,
            return_hold_minutes: 5,
            lend_posts_max: 3,
        }
    }
}

/// A configuration that cannot be used; names the field and what is accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
}

fn field(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        reason: reason.into(),
    }
}

impl EdgeConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: EdgeConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field that the type system does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bus_uri()?;
        self.layout()?;
        if self
            .bus
            .inverted_boards
            .iter()
            .any(|b| !self.bus.boards.contains(b))
        {
            return Err(field(
                "bus.inverted_boards",
                "every entry must also be in bus.boards",
            ));
        }
        if !(50..=60_000).contains(&self.bus.poll_interval_ms) {
            return Err(field("bus.poll_interval_ms", "must be 50 to 60000"));
        }
        if !(50..=10_000).contains(&self.bus.reply_timeout_ms) {
            return Err(field("bus.reply_timeout_ms", "must be 50 to 10000"));
        }
        if !(1..=7 * 24 * 60).contains(&self.rental.minutes) {
            return Err(field("rental.minutes", "must be 1 to 10080 (a week)"));
        }
        if !(1..=60).contains(&self.rental.return_hold_minutes) {
            return Err(field("rental.return_hold_minutes", "must be 1 to 60"));
        }
        if !(1..=16).contains(&self.rental.lend_posts_max) {
            return Err(field("rental.lend_posts_max", "must be 1 to 16"));
        }
        self.shopper.validate().map_err(|e| ConfigError::Field {
            field: e.field,
            reason: e.reason,
        })?;
        self.lan.validate()?;
        Ok(())
    }

    /// The parsed bus URI.
    pub fn bus_uri(&self) -> Result<BusUri, ConfigError> {
        self.bus
            .uri
            .parse()
            .map_err(|e: crate::cu16::transport::BusUriError| field("bus.uri", e.to_string()))
    }

    /// Where each post is.
    pub fn layout(&self) -> Result<Layout, ConfigError> {
        if self.bus.boards.is_empty() {
            return Err(field("bus.boards", "list at least one board address (0–9)"));
        }
        let mut boards = Vec::new();
        for &b in &self.bus.boards {
            boards.push(BoardAddr::new(b).map_err(|e| field("bus.boards", e.to_string()))?);
        }
        let mut unique = boards.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != boards.len() {
            return Err(field("bus.boards", "each board address may appear once"));
        }
        if self.bus.first_post_number == 0 {
            return Err(field("bus.first_post_number", "posts are numbered from 1"));
        }
        Layout::contiguous(&boards, self.bus.first_post_number)
            .map_err(|e| field("bus.first_post_number", e.to_string()))
    }

    /// The bus driver's settings.
    pub fn bus_config(&self) -> BusConfig {
        let mut config = BusConfig {
            reply_timeout: Duration::from_millis(self.bus.reply_timeout_ms),
            ..BusConfig::default()
        };
        config.boards = self
            .bus
            .boards
            .iter()
            .filter_map(|b| crate::cu16::BoardAddress::new(*b).ok())
            .collect();
        for &b in &self.bus.inverted_boards {
            if let Some(slot) = config.polarity.get_mut(usize::from(b)) {
                *slot = HookPolarity::LatchedLow;
            }
        }
        config
    }

    /// The engine's settings.
    pub fn engine_config(&self) -> Result<EngineConfig, ConfigError> {
        Ok(EngineConfig {
            device: self.device.id,
            branch: self.device.branch_id,
            layout: self.layout()?,
            rental_minutes: self.rental.minutes,
            lend_posts_max: self.rental.lend_posts_max,
            return_hold: Duration::from_secs(u64::from(self.rental.return_hold_minutes) * 60),
            reconcile_after: Duration::from_secs(10),
        })
    }
}

impl LanSection {
    /// Checks the peer list: at most `LAN_PEERS_MAX` distinct `HOST:PORT` entries.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.peers.len() > LAN_PEERS_MAX {
            return Err(field(
                "lan.peers",
                format!("list at most {LAN_PEERS_MAX} peers"),
            ));
        }
        for (nth, peer) in self.peers.iter().enumerate() {
            let (host, port) = peer
                .rsplit_once(':')
                .ok_or_else(|| field("lan.peers", format!("{peer:?} is not HOST:PORT")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || host.chars().any(char::is_whitespace) {
                return Err(field("lan.peers", format!("{peer:?} names no host")));
            }
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(field(
                    "lan.peers",
                    format!("{peer:?}: the port must be 1 to 65535"),
                ));
            }
            if self.peers[..nth].contains(peer) {
                return Err(field("lan.peers", format!("{peer:?} is listed twice")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let config = EdgeConfig::load(&path).unwrap();
        assert_eq!(config.rental.minutes, 120);
        assert_eq!(config.layout().unwrap().posts().len(), 32);
    }

    #[test]
    fn errors_name_the_field() {
        let mut config = EdgeConfig::default();
        config.bus.boards = vec![0, 12];
        assert_eq!(
            config.validate().unwrap_err().to_string().split(':').next(),
            Some("bus.boards")
        );
        let mut config = EdgeConfig::default();
        config.rental.minutes = 0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("rental.minutes")
        );
        let mut config = EdgeConfig::default();
        config.bus.uri = "usb:/dev/x".into();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("bus.uri")
        );
    }

    #[test]
    fn lan_peers_are_checked() {
        let config: EdgeConfig = toml::from_str(
            "[lan]\nlisten = \"0.0.0.0:7443\"\npeers = [\"10.0.0.2:7443\", \"pi-b.local:7443\"]\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.lan.peers.len(), 2);
        for bad in ["10.0.0.2", ":7443", "10.0.0.2:0", "10.0.0.2:99999"] {
            let mut config = EdgeConfig::default();
            config.lan.peers = vec![bad.into()];
            let error = config.validate().unwrap_err().to_string();
            assert!(error.starts_with("lan.peers"), "{bad}: {error}");
        }
        let mut config = EdgeConfig::default();
        config.lan.peers = vec!["a:1".into(), "a:1".into()];
        assert!(config.validate().is_err());
        let mut config = EdgeConfig::default();
        config.lan.peers = (0..=LAN_PEERS_MAX)
            .map(|n| format!("pi-{n}:7443"))
            .collect();
        assert!(config.validate().is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<EdgeConfig>("[rental]\nminute = 3\n").unwrap_err();
        assert!(err.to_string().contains("minute"), "{err}");
    }
}
