//! The MQTT bridge's parsers of outside text: the `--mqtt` URL and the topics of the messages
//! the bridge receives. Pure (no I/O, no hub state): the `mqtt_topic` fuzz target includes this
//! file directly, so it names no `crate::` path.

use cartwise_schema::{BranchId, ChainId};
use uuid::Uuid;

/// Chains one bridge may serve.
pub const CHAINS_MAX: usize = 64;

/// Why the bridge could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The `--mqtt` URL is not `mqtt://[user[:password]@]host[:port]?chain=<id>[&chain=…]`.
    #[error("bad MQTT URL: {0}")]
    BadUrl(String),
}

/// Where the broker is and which chains the bridge serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id: String,
    /// The chains whose topics the bridge publishes and acts on (at least one).
    pub chains: Vec<ChainId>,
}

impl MqttConfig {
    /// Parses `mqtt://[user[:password]@]host[:port]?chain=<id>[&chain=…][&client_id=…]`.
    pub fn parse(url: &str) -> Result<MqttConfig, MqttError> {
        let bad = |why: &str| MqttError::BadUrl(why.to_owned());
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| bad("it must start with mqtt://"))?;
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.trim_end_matches('/');
        let (credentials, address) = match authority.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, authority),
        };
        let (username, password) = match credentials {
            Some(credentials) => match credentials.split_once(':') {
                Some((user, password)) => (Some(user.to_owned()), Some(password.to_owned())),
                None => (Some(credentials.to_owned()), None),
            },
            None => (None, None),
        };
        // host, host:port, [v6] or [v6]:port.
        let bracketed_without_port = address.starts_with('[') && address.ends_with(']');
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) if !bracketed_without_port => (
                host,
                port.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?,
            ),
            _ => (address, 1883),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let mut chains = Vec::new();
        let mut client_id = format!("cartwise-hub-{}", std::process::id());
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("chain", id)) => {
                    let chain = ChainId::parse(id).map_err(|_| bad("a chain is not a chain id"))?;
                    if !chains.contains(&chain) {
                        chains.push(chain);
                    }
                }
                Some(("client_id", id)) if !id.is_empty() && id.len() <= 64 => {
                    client_id = id.to_owned();
                }
                _ => return Err(bad("unknown parameter (chain=<id>, client_id=<name>)")),
            }
        }
        if chains.is_empty() {
            return Err(bad("name at least one chain: ?chain=<chain id>"));
        }
        if chains.len() > CHAINS_MAX {
            return Err(bad("too many chains"));
        }
        Ok(MqttConfig {
            host: host.to_owned(),
            port,
            username,
            password,
            client_id,
            chains,
        })
    }
}

/// A lock or unlock asked for over MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub chain: ChainId,
    pub branch: BranchId,
    pub cart: Uuid,
    /// True for `lock` (out of service), false for `unlock` (maintenance unlock).
    pub lock: bool,
}

/// Parses a `cartwise/{chain}/{branch}/carts/{cart}/lock|unlock` topic; `None` for anything
/// else (never panics on outside bytes).
pub fn parse_command(topic: &str) -> Option<Command> {
    let parts: Vec<&str> = topic.split('/').collect();
    let ["cartwise", chain, branch, "carts", cart, action] = parts.as_slice() else {
        return None;
    };
    let lock = match *action {
        "lock" => true,
        "unlock" => false,
        _ => return None,
    };
    Some(Command {
        chain: ChainId::parse(chain).ok()?,
        branch: BranchId::parse(branch).ok()?,
        cart: Uuid::parse_str(cart).ok()?,
        lock,
    })
}
