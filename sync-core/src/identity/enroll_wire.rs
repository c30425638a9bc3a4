//! The enrollment and renewal exchange (ALPN `cartwise-enroll/1` and `cartwise-renew/1`):
//! one request and one response on one bidirectional stream, each a frame of a u32
//! big-endian length and a MessagePack map; and the QR-encodable enrollment URL.
//!
//! Enrollment: `EnrollRequest { code, csr_pem }` → `EnrollResponse`. Renewal (mutual TLS with
//! the current certificate): `RenewRequest { csr_pem }` → `EnrollResponse`.

use std::fmt;

use cartwise_schema::{BranchId, ChainId, DeviceId};
use serde::{Deserialize, Serialize};

use super::{FingerprintError, parse_sha256_fingerprint, to_hex};

/// Largest enrollment frame, either way (a CSR or two certificates fit many times over).
pub const ENROLL_FRAME_LEN_MAX: usize = 32 * 1024;

/// Bytes of the length prefix.
pub const ENROLL_FRAME_HEADER_LEN: usize = 4;

/// A device asking for its first certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The one-time code, as typed (groups and case do not matter).
    pub code: String,
    /// A PEM PKCS#10 request signed by the device's new key.
    pub csr_pem: String,
}

/// A device asking to renew its certificate (over mutual TLS with the current one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// A PEM PKCS#10 request signed by the device's new key.
    pub csr_pem: String,
}

/// A certificate granted by the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    /// Device certificate then chain CA, PEM.
    pub cert_chain_pem: String,
    /// The platform CA (signs the hub's certificate), PEM.
    pub platform_ca_pem: String,
    /// The device's chain.
    pub chain_id: ChainId,
    /// The device's branch.
    pub branch_id: BranchId,
    /// The device.
    pub device_id: DeviceId,
}

/// The hub's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollResponse {
    /// The certificate.
    Granted(Granted),
    /// Refused; the message says what to do (a used, expired or unknown code, ...).
    Error(String),
}

/// Why an enrollment frame is invalid.
#[derive(Debug, thiserror::Error)]
pub enum EnrollWireError {
    /// The frame is longer than [`ENROLL_FRAME_LEN_MAX`].
    #[error(
        "enrollment message of {0} bytes is larger than the {ENROLL_FRAME_LEN_MAX}-byte maximum"
    )]
    TooLong(usize),
    /// The payload is not the expected MessagePack map.
    #[error("malformed enrollment message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The message could not be encoded.
    #[error("cannot encode the enrollment message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Encodes `message` as one frame: u32 big-endian length, then MessagePack (named fields).
pub fn encode_enroll_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, EnrollWireError> {
    let payload = rmp_serde::to_vec_named(message)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len as usize <= ENROLL_FRAME_LEN_MAX)
        .ok_or(EnrollWireError::TooLong(payload.len()))?;
    let mut frame = Vec::with_capacity(ENROLL_FRAME_HEADER_LEN + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// The payload length announced by a frame header, checked against the maximum before the
/// caller allocates.
pub fn enroll_frame_len(header: [u8; ENROLL_FRAME_HEADER_LEN]) -> Result<usize, EnrollWireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > ENROLL_FRAME_LEN_MAX {
        return Err(EnrollWireError::TooLong(len));
    }
    Ok(len)
}

/// Decodes a frame's payload (without its header).
pub fn decode_enroll_payload<T: serde::de::DeserializeOwned>(
    payload: &[u8],
) -> Result<T, EnrollWireError> {
    if payload.len() > ENROLL_FRAME_LEN_MAX {
        return Err(EnrollWireError::TooLong(payload.len()));
    }
    Ok(crate::message::from_strict(payload)?)
}

/// What an admin hands a technician: `cartwise-enroll://HOST:PORT?code=CODE&ca=SHA256HEX`
/// (fits a QR code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollUrl {
    /// The hub's `HOST:PORT`.
    pub hub: String,
    /// The one-time code.
    pub code: String,
    /// SHA-256 of the platform CA certificate.
    pub ca_sha256: [u8; 32],
}

/// Why an enrollment URL does not parse.
#[derive(Debug, thiserror::Error)]
pub enum EnrollUrlError {
    /// Wrong scheme or shape.
    #[error(
        "invalid enrollment URL {0:?}: expected cartwise-enroll://HOST:PORT?code=CODE&ca=SHA256HEX"
    )]
    Shape(String),
    /// The `ca` parameter is not a fingerprint.
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
}

const URL_SCHEME: &str = "cartwise-enroll://";

impl fmt::Display for EnrollUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{URL_SCHEME}{}?code={}&ca={}",
            self.hub,
            self.code,
            to_hex(&self.ca_sha256)
        )
    }
}

impl std::str::FromStr for EnrollUrl {
    type Err = EnrollUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shape = || EnrollUrlError::Shape(text.chars().take(200).collect());
        let rest = text.trim().strip_prefix(URL_SCHEME).ok_or_else(shape)?;
        let (hub, query) = rest.split_once('?').ok_or_else(shape)?;
        let hub = hub.trim_end_matches('/');
        let (mut code, mut ca) = (None, None);
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("code", value)) if code.is_none() => code = Some(value),
                Some(("ca", value)) if ca.is_none() => ca = Some(value),
                _ => return Err(shape()),
            }
        }
        let (Some(code), Some(ca)) = (code, ca) else {
            return Err(shape());
        };
        if hub.is_empty() || code.is_empty() || !hub.contains(':') {
            return Err(shape());
        }
        Ok(Self {
            hub: hub.to_owned(),
            code: code.to_owned(),
            ca_sha256: parse_sha256_fingerprint(ca)?,
        })
    }
}
