//! The device's side of enrollment and renewal over QUIC: make a key on the Pi, send a
//! certificate request, store what the hub grants.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cartwise_sync_core::identity::{
    ENROLL_FRAME_HEADER_LEN, EnrollRequest, EnrollResponse, EnrollWireError, Granted,
    HUB_SERVER_NAME, RenewRequest, decode_enroll_payload, device_csr_params, encode_enroll_frame,
    enroll_client_config, enroll_frame_len, to_hex,
};
use serde::Serialize;

use super::{EdgeIdentity, IdentityError, quic_client, renew_client_config};

/// The longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest an enrollment or renewal exchange may take once connected.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Close code of a finished exchange.
const DONE: u32 = 0;

/// Why enrollment or renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The identity could not be loaded, checked or stored.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The hub's name does not resolve.
    #[error("cannot resolve the hub address {hub}: {reason}; check --hub (HOST:PORT) and DNS")]
    Resolve {
        /// The address given.
        hub: String,
        /// Why.
        reason: String,
    },
    /// No local UDP socket.
    #[error("cannot open a UDP socket: {0}")]
    Endpoint(#[source] std::io::Error),
    /// The connection failed (unreachable, refused, certificate rejected).
    #[error("cannot connect to the hub at {hub}: {reason}")]
    Connect {
        /// The address.
        hub: String,
        /// Why.
        reason: String,
    },
    /// The hub's certificate does not chain to the pinned CA.
    #[error(
        "the server at {hub} does not hold the CA with fingerprint {ca}: wrong --ca, or not a CartWise hub ({reason})"
    )]
    WrongCa {
        /// The address.
        hub: String,
        /// The pinned fingerprint.
        ca: String,
        /// rustls' reason.
        reason: String,
    },
    /// The hub answered with a refusal.
    #[error("the hub refused: {0}")]
    Refused(String),
    /// The exchange broke off.
    #[error("the exchange with the hub broke off: {0}; retry")]
    Stream(String),
    /// A frame was malformed.
    #[error(transparent)]
    Wire(#[from] EnrollWireError),
    /// The key or the certificate request could not be made.
    #[error("cannot make the device key or certificate request: {0}")]
    Key(#[from] rcgen::Error),
    /// The exchange did not finish in time.
    #[error("the hub did not answer within {0:?}; retry")]
    Timeout(Duration),
}

/// A client endpoint: dual-stack `[::]:0`, or `0.0.0.0:0` where IPv6 is off.
pub fn client_endpoint() -> Result<quinn::Endpoint, ExchangeError> {
    quinn::Endpoint::client(SocketAddr::from(([0u16; 8], 0)))
        .or_else(|_| quinn::Endpoint::client(SocketAddr::from(([0u8; 4], 0))))
        .map_err(ExchangeError::Endpoint)
}

/// Resolves `hub` (`HOST:PORT`) and connects with `config`, verifying `server_name`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    hub: &str,
    config: quinn::ClientConfig,
    server_name: &str,
) -> Result<quinn::Connection, ExchangeError> {
    let resolve = |reason: String| ExchangeError::Resolve {
        hub: hub.to_owned(),
        reason,
    };
    let addr = tokio::net::lookup_host(hub)
        .await
        .map_err(|error| resolve(error.to_string()))?
        .next()
        .ok_or_else(|| resolve("no address".to_owned()))?;
    let fail = |reason: String| ExchangeError::Connect {
        hub: hub.to_owned(),
        reason,
    };
    let connecting = endpoint
        .connect_with(config, addr, server_name)
        .map_err(|error| fail(error.to_string()))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(fail(error.to_string())),
        Err(_) => Err(fail(format!("no answer within {CONNECT_TIMEOUT:?}"))),
    }
}

/// Sends one request and reads the answer on a new bidirectional stream, then closes.
async fn exchange<T: Serialize>(
    connection: &quinn::Connection,
    request: &T,
) -> Result<Granted, ExchangeError> {
    let stream = |error: &dyn std::fmt::Display| ExchangeError::Stream(error.to_string());
    let work = async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| stream(&e))?;
        send.write_all(&encode_enroll_frame(request)?)
            .await
            .map_err(|e| stream(&e))?;
        send.finish().map_err(|e| stream(&e))?;
        let mut header = [0u8; ENROLL_FRAME_HEADER_LEN];
        recv.read_exact(&mut header).await.map_err(|e| stream(&e))?;
        let mut payload = vec![0u8; enroll_frame_len(header)?];
        recv.read_exact(&mut payload)
            .await
            .map_err(|e| stream(&e))?;
        Ok::<EnrollResponse, ExchangeError>(decode_enroll_payload(&payload)?)
    };
    let response = tokio::time::timeout(EXCHANGE_TIMEOUT, work)
        .await
        .map_err(|_| ExchangeError::Timeout(EXCHANGE_TIMEOUT))?;
    connection.close(DONE.into(), b"done");
    match response? {
        EnrollResponse::Granted(granted) => Ok(granted),
        EnrollResponse::Error(message) => Err(ExchangeError::Refused(message)),
    }
}

/// A new key (generated here, never sent) and a certificate request for it.
fn new_key_and_csr() -> Result<(String, String), ExchangeError> {
    let key = rcgen::KeyPair::generate()?;
    let csr = device_csr_params().serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Stores a grant on a blocking thread (fsync on an SD card is slow).
async fn store_blocking(
    data_dir: &Path,
    granted: Granted,
    key_pem: String,
    hub: String,
    expected: Option<cartwise_sync_core::identity::PeerIdentity>,
) -> Result<EdgeIdentity, ExchangeError> {
    let data_dir = data_dir.to_owned();
    tokio::task::spawn_blocking(move || super::store(&data_dir, &granted, &key_pem, &hub, expected))
        .await
        .map_err(|error| ExchangeError::Stream(format!("storing the identity: {error}")))?
        .map_err(ExchangeError::from)
}

/// Enrolls this device: a key made here, a request with `code` to the hub at `hub` whose
/// platform CA must have SHA-256 `ca_sha256`, and the granted identity stored in `data_dir`.
pub async fn enroll_exchange(
    endpoint: &quinn::Endpoint,
    hub: &str,
    code: &str,
    ca_sha256: [u8; 32],
    data_dir: &Path,
) -> Result<EdgeIdentity, ExchangeError> {
    let (key_pem, csr_pem) = new_key_and_csr()?;
    let config = quic_client(enroll_client_config(ca_sha256).map_err(IdentityError::from)?)?;
    let connection = connect(endpoint, hub, config, HUB_SERVER_NAME)
        .await
        .map_err(|error| match error {
            ExchangeError::Connect { hub, reason } if reason.contains("PinMismatch") => {
                ExchangeError::WrongCa {
                    hub,
                    ca: to_hex(&ca_sha256),
                    reason,
                }
            }
            other => other,
        })?;
    let request = EnrollRequest {
        code: code.to_owned(),
        csr_pem,
    };
    let granted = exchange(&connection, &request).await?;
    store_blocking(data_dir, granted, key_pem, hub.to_owned(), None).await
}

/// What [`renew_if_due`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewOutcome {
    /// More than a third of the certificate's life is left; nothing was done.
    NotDue {
        /// End of validity of the current certificate, Unix seconds.
        not_after_unix: i64,
    },
    /// A new key and certificate are stored; reconnect to use them.
    Renewed {
        /// End of validity of the new certificate, Unix seconds.
        not_after_unix: i64,
    },
}

/// Renews the certificate of `data_dir` if less than a third of its life is left at
/// `now_unix` (pass the hub-corrected time: a Pi's wall clock can be wrong after a reboot).
/// Connects to the enrolled hub with the current certificate (ALPN `cartwise-renew/1`), sends a
/// request for a new key made here, and atomically replaces the identity file.
pub async fn renew_if_due(
    endpoint: &quinn::Endpoint,
    data_dir: &Path,
    now_unix: i64,
) -> Result<RenewOutcome, ExchangeError> {
    let dir = data_dir.to_owned();
    let current = tokio::task::spawn_blocking(move || super::load(&dir))
        .await
        .map_err(|error| ExchangeError::Stream(format!("loading the identity: {error}")))??;
    let info = cartwise_sync_core::identity::CertInfo {
        not_before_unix: current.credentials.not_before_unix,
        not_after_unix: current.credentials.not_after_unix,
        serial_hex: String::new(),
    };
    if !info.renewal_due(now_unix) {
        return Ok(RenewOutcome::NotDue {
            not_after_unix: info.not_after_unix,
        });
    }
    let (key_pem, csr_pem) = new_key_and_csr()?;
    let config = renew_client_config(&current)?;
    let connection = connect(endpoint, &current.hub, config, HUB_SERVER_NAME).await?;
    let granted = exchange(&connection, &RenewRequest { csr_pem }).await?;
    let renewed = store_blocking(
        data_dir,
        granted,
        key_pem,
        current.hub.clone(),
        Some(current.peer()),
    )
    .await?;
    Ok(RenewOutcome::Renewed {
        not_after_unix: renewed.credentials.not_after_unix,
    })
}
