//! Shopper tokens: the 30-day sign-in a shopper gets after a correct code, so later rentals
//! skip the SMS (and still work while SMS cannot be sent). Stateless and branch-wide: any
//! node holding the branch's [`ShopperTokenKey`] verifies a token any other node issued.
//!
//! Format, version 1 — URL-safe base64 without padding of `payload ‖ mac`:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version, `1` |
//! | 8 | issued at, wall ms since the Unix epoch, `i64` big-endian |
//! | 8 | expires at, same form |
//! | 1 | length `n` of the phone, 1..=[`TOKEN_PHONE_BYTES_MAX`] |
//! | n | the phone in E.164, ASCII |
//! | 32 | HMAC-SHA256 under the branch key of [`TOKEN_MAC_CONTEXT`] ‖ payload |
//!
//! A 13-character phone gives 63 bytes, 84 characters. The MAC is compared in constant time
//! (`hmac`'s `verify_slice`). Decoding is the parser of outside bytes: it checks the length
//! first ([`SHOPPER_TOKEN_CHARS_MAX`]), never panics (fuzz target `shopper_token`), and
//! answers a typed [`ShopperTokenError`].
//!
//! Times are wall times (tokens outlive boots and cross devices); the caller passes its best
//! wall time, corrected once the boot's offset is known. A token "issued in the future" is
//! accepted (the issuer's clock may be right and ours behind); only expiry is checked, plus a
//! sanity bound on the lifetime written in the token. A new key format or a key id for
//! rotation would be version 2; version 1 tokens then fail with `UnsupportedVersion`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cartwise_schema::{Phone, SHOPPER_TOKEN_TTL_DAYS, WallMillis};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

mod key;
#[cfg(test)]
mod tests;

pub use key::{
    SHOPPER_TOKEN_KEY_BYTES, ShopperTokenKey, ShopperTokenKeyError, ShopperTokenKeyFileError,
    load_or_create_key_file,
};

/// The only token version issued and accepted.
pub const SHOPPER_TOKEN_VERSION: u8 = 1;
/// Longest token text accepted; longer input is refused before decoding.
pub const SHOPPER_TOKEN_CHARS_MAX: usize = 128;
/// Longest phone field accepted in a token.
pub const TOKEN_PHONE_BYTES_MAX: usize = 16;
/// Domain separation: what the MAC covers before the payload, so a MAC made with the branch
/// key for another purpose is never a valid token MAC.
pub const TOKEN_MAC_CONTEXT: &[u8] = b"cartwise shopper token\0";
/// Default lifetime of a token: [`SHOPPER_TOKEN_TTL_DAYS`] days.
pub const SHOPPER_TOKEN_TTL_MS_DEFAULT: i64 = SHOPPER_TOKEN_TTL_DAYS as i64 * DAY_MS;
/// Longest lifetime a token may claim (a sanity bound on issuers' configuration).
pub const SHOPPER_TOKEN_TTL_MS_MAX: i64 = 366 * DAY_MS;

const DAY_MS: i64 = 24 * 60 * 60 * 1_000;
const MAC_BYTES: usize = 32;
const SHA256_BLOCK_BYTES: usize = 64;
/// Version, issued, expires, phone length.
const HEADER_BYTES: usize = 1 + 8 + 8 + 1;

type HmacSha256 = Hmac<Sha256>;

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopperTokenClaims {
    /// The shopper's phone, verified by a code when the token was issued.
    pub phone: Phone,
    /// When it was issued (the issuer's wall clock).
    pub issued: WallMillis,
    /// When it stops being accepted.
    pub expires: WallMillis,
}

/// A token just issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedShopperToken {
    /// The token text for the kiosk (`auth_token`).
    pub token: String,
    /// What it says.
    pub claims: ShopperTokenClaims,
}

/// Why a token was refused. Every variant but `Expired` means "not a token of this branch":
/// the shopper signs in with a code again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShopperTokenError {
    /// Empty text.
    #[error("the shopper token is empty")]
    Empty,
    /// Longer than [`SHOPPER_TOKEN_CHARS_MAX`].
    #[error("the shopper token has {len} characters, more than the {max} accepted")]
    TooLong {
        /// Characters given (bytes of the text).
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Not URL-safe base64 without padding.
    #[error("the shopper token is not URL-safe base64")]
    NotBase64,
    /// Decoded bytes too short, or a phone length that does not fit.
    #[error("the shopper token has a malformed layout ({len} bytes)")]
    Malformed {
        /// Decoded bytes.
        len: usize,
    },
    /// A version this node does not know.
    #[error("the shopper token has version {version}; this node accepts version 1")]
    UnsupportedVersion {
        /// The version byte.
        version: u8,
    },
    /// The MAC does not match: tampered, or issued with another branch's key.
    #[error("the shopper token's signature does not match this branch's key")]
    BadSignature,
    /// Signed, but the phone field is not a valid phone (an issuer bug).
    #[error("the shopper token's phone field is not a valid phone number")]
    BadPhone,
    /// Signed, but expiry is not after issue or the lifetime exceeds the maximum.
    #[error("the shopper token's validity period is not valid")]
    BadValidity,
    /// The token has expired; sign in with a code again.
    #[error("the shopper token expired at {expired_ms} ms since the epoch")]
    Expired {
        /// When it expired.
        expired_ms: i64,
    },
}

impl ShopperTokenKey {
    /// Issues a token for `phone`, valid for `ttl_ms` from `now` (clamped to
    /// 1..=[`SHOPPER_TOKEN_TTL_MS_MAX`]).
    pub fn issue(&self, phone: &Phone, now: WallMillis, ttl_ms: i64) -> IssuedShopperToken {
        let ttl_ms = ttl_ms.clamp(1, SHOPPER_TOKEN_TTL_MS_MAX);
        let claims = ShopperTokenClaims {
            phone: phone.clone(),
            issued: now,
            expires: now.saturating_add_ms(ttl_ms),
        };
        let mut bytes = encode_payload(&claims);
        let mac = self.mac().chain_update(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&mac);
        IssuedShopperToken {
            token: URL_SAFE_NO_PAD.encode(&bytes),
            claims,
        }
    }

    /// Verifies a token at wall time `now`: layout, version, MAC, fields, expiry.
    pub fn verify(
        &self,
        token: &str,
        now: WallMillis,
    ) -> Result<ShopperTokenClaims, ShopperTokenError> {
        let bytes = decode_text(token)?;
        let (payload, mac) = split_payload(&bytes)?;
        let fields = parse_payload(payload)?;
        self.mac()
            .chain_update(payload)
            .verify_slice(mac)
            .map_err(|_| ShopperTokenError::BadSignature)?;
        let claims = fields.into_claims()?;
        if now >= claims.expires {
            return Err(ShopperTokenError::Expired {
                expired_ms: claims.expires.get(),
            });
        }
        Ok(claims)
    }

    /// A MAC keyed with this key, fed the context.
    fn mac(&self) -> HmacSha256 {
        // HMAC pads a key shorter than the SHA-256 block with zeros; padding here makes the
        // construction infallible (`new_from_slice` has an error case for other MACs).
        let mut block = [0u8; SHA256_BLOCK_BYTES];
        block[..SHOPPER_TOKEN_KEY_BYTES].copy_from_slice(self.as_bytes());
        <HmacSha256 as KeyInit>::new(&block.into()).chain_update(TOKEN_MAC_CONTEXT)
    }
}

/// The payload bytes of `claims`.
fn encode_payload(claims: &ShopperTokenClaims) -> Vec<u8> {
    let phone = claims.phone.as_e164().as_bytes();
    let mut bytes = Vec::with_capacity(HEADER_BYTES + phone.len() + MAC_BYTES);
    bytes.push(SHOPPER_TOKEN_VERSION);
    bytes.extend_from_slice(&claims.issued.get().to_be_bytes());
    bytes.extend_from_slice(&claims.expires.get().to_be_bytes());
    // E.164 numbers have at most 16 characters, so the length fits a byte.
    bytes.push(u8::try_from(phone.len()).unwrap_or(u8::MAX));
    bytes.extend_from_slice(phone);
    bytes
}

/// Base64 text to bytes, refusing long input before decoding.
fn decode_text(token: &str) -> Result<Vec<u8>, ShopperTokenError> {
    let text = token.trim();
    if text.is_empty() {
        return Err(ShopperTokenError::Empty);
    }
    if text.len() > SHOPPER_TOKEN_CHARS_MAX {
        return Err(ShopperTokenError::TooLong {
            len: text.len(),
            max: SHOPPER_TOKEN_CHARS_MAX,
        });
    }
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| ShopperTokenError::NotBase64)
}

/// Splits decoded bytes into the signed payload and the MAC.
fn split_payload(bytes: &[u8]) -> Result<(&[u8], &[u8]), ShopperTokenError> {
    let malformed = ShopperTokenError::Malformed { len: bytes.len() };
    let payload_len = bytes
        .len()
        .checked_sub(MAC_BYTES)
        .ok_or(malformed.clone())?;
    if payload_len < HEADER_BYTES {
        return Err(malformed);
    }
    Ok(bytes.split_at(payload_len))
}

/// The fields of a payload, not yet trusted.
struct PayloadFields<'a> {
    issued_ms: i64,
    expires_ms: i64,
    phone: &'a [u8],
}

/// Parses the layout of a payload (lengths and version); no field is trusted yet.
fn parse_payload(payload: &[u8]) -> Result<PayloadFields<'_>, ShopperTokenError> {
    let malformed = || ShopperTokenError::Malformed {
        len: payload.len() + MAC_BYTES,
    };
    let (header, phone) = payload
        .split_first_chunk::<HEADER_BYTES>()
        .ok_or_else(malformed)?;
    let [version, issued @ .., phone_len] = header;
    if *version != SHOPPER_TOKEN_VERSION {
        return Err(ShopperTokenError::UnsupportedVersion { version: *version });
    }
    let (issued, expires) = issued.split_at(8);
    let read_i64 = |bytes: &[u8]| {
        <[u8; 8]>::try_from(bytes)
            .map(i64::from_be_bytes)
            .map_err(|_| malformed())
    };
    let phone_len = usize::from(*phone_len);
    if phone_len == 0 || phone_len > TOKEN_PHONE_BYTES_MAX || phone.len() != phone_len {
        return Err(malformed());
    }
    Ok(PayloadFields {
        issued_ms: read_i64(issued)?,
        expires_ms: read_i64(expires)?,
        phone,
    })
}

impl PayloadFields<'_> {
    /// The claims of a payload whose MAC was verified.
    fn into_claims(self) -> Result<ShopperTokenClaims, ShopperTokenError> {
        let phone = std::str::from_utf8(self.phone)
            .ok()
            .and_then(|text| Phone::parse(text).ok())
            .filter(|phone| phone.as_e164().as_bytes() == self.phone)
            .ok_or(ShopperTokenError::BadPhone)?;
        let lifetime_ms = self.expires_ms.checked_sub(self.issued_ms);
        if !lifetime_ms.is_some_and(|ms| ms > 0 && ms <= SHOPPER_TOKEN_TTL_MS_MAX) {
            return Err(ShopperTokenError::BadValidity);
        }
        Ok(ShopperTokenClaims {
            phone,
            issued: WallMillis::new(self.issued_ms),
            expires: WallMillis::new(self.expires_ms),
        })
    }
}
