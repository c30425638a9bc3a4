//! Shopper sign-in for the kiosk: SMS one-time codes ([`otp`]), rate limits
//! ([`rate_limit`]), 30-day shopper tokens that skip the code ([`token`]), SMS senders
//! ([`sms`]), the shopper-facing texts ([`messages`]), and [`ShopperAuth`], which ties them
//! into the steps of `request-otp` and `verify-otp`.
//!
//! Architecture Invariant: everything here but the SMS senders is pure and synchronous.
//! Nothing reads a clock or a random source: monotonic time (codes, rate limits), wall time
//! (tokens) and the RNG come in as arguments, so tests drive time by hand.
//!
//! Architecture Invariant: every table is bounded by a named `*_MAX` and evicts its oldest
//! entry ([`OTP_PENDING_MAX`], [`RATE_LIMIT_KEYS_MAX`]); a flood of phones cannot grow memory.
//!
//! Architecture Invariant: the shopper token key is the branch's, not the device's: it is a
//! separate 32-byte file, so every node of a branch can share it and honour each other's
//! tokens. Device identity (certificates) never signs tokens.
//!
//! Architecture Invariant: token decoding is a parser of outside bytes: it never panics and
//! has a fuzz target (`fuzz/fuzz_targets/shopper_token.rs`) whose corpus a test replays.

pub mod auth;
mod bounded;
pub mod messages;
pub mod otp;
pub mod rate_limit;
pub mod sms;
pub mod token;

use cartwise_schema::SHOPPER_TOKEN_TTL_DAYS;

pub use auth::{OtpRequested, ShopperAuth};
pub use messages::ShopperMessage;
pub use otp::{IssuedOtp, OTP_PENDING_MAX, OtpBook, OtpBookConfig, OtpVerifyError};
pub use rate_limit::{
    KioskKey, RATE_LIMIT_KEYS_MAX, RateLimit, RateLimitConfig, RateLimiter, RetryAfter,
    ShopperRateLimits,
};
pub use sms::{SmsError, SmsMessage, SmsSender, SmsSenderConfig, SmsUnavailablePolicy};
pub use token::{
    IssuedShopperToken, ShopperTokenClaims, ShopperTokenError, ShopperTokenKey,
    load_or_create_key_file,
};

/// Longest token lifetime a branch may configure, in days.
pub const SHOPPER_TOKEN_TTL_DAYS_MAX: u32 = 365;

/// Shopper sign-in settings (`[shopper]` in the daemon config). The code's length, lifetime
/// and attempts are those of the existing system and not configurable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShopperConfig {
    /// Codes waiting to be typed, at most. Default [`OTP_PENDING_MAX`].
    pub otp_pending_max: usize,
    /// Lifetime of a shopper token. Default [`SHOPPER_TOKEN_TTL_DAYS`] (30).
    pub token_ttl_days: u32,
    /// What to do when SMS cannot be sent. Default `refuse`.
    pub sms_unavailable: SmsUnavailablePolicy,
    /// Rate limits of the OTP endpoints.
    pub rate_limits: RateLimitConfig,
}

impl Default for ShopperConfig {
    fn default() -> Self {
        Self {
            otp_pending_max: OTP_PENDING_MAX,
            token_ttl_days: SHOPPER_TOKEN_TTL_DAYS,
            sms_unavailable: SmsUnavailablePolicy::default(),
            rate_limits: RateLimitConfig::default(),
        }
    }
}

/// A shopper setting out of range; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shopper.{field}: {reason}")]
pub struct ShopperConfigError {
    /// The field, as written in the config file.
    pub field: &'static str,
    /// What is accepted.
    pub reason: String,
}

impl ShopperConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ShopperConfigError> {
        let error = |field, reason: &str| {
            Err(ShopperConfigError {
                field,
                reason: reason.into(),
            })
        };
        if self.otp_pending_max == 0 {
            return error("otp_pending_max", "must be at least 1");
        }
        if !(1..=SHOPPER_TOKEN_TTL_DAYS_MAX).contains(&self.token_ttl_days) {
            return error("token_ttl_days", "must be 1 to 365");
        }
        let limits = &self.rate_limits;
        let named = [
            (
                "rate_limits.otp_requests_per_phone",
                limits.otp_requests_per_phone,
            ),
            (
                "rate_limits.otp_requests_per_kiosk",
                limits.otp_requests_per_kiosk,
            ),
            (
                "rate_limits.otp_verifications_per_phone",
                limits.otp_verifications_per_phone,
            ),
            (
                "rate_limits.otp_verifications_per_kiosk",
                limits.otp_verifications_per_kiosk,
            ),
        ];
        for (field, limit) in named {
            if limit.requests == 0 || limit.window_ms == 0 {
                return error(field, "requests and window_ms must be at least 1");
            }
        }
        if limits.keys_max == 0 {
            return error("rate_limits.keys_max", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_is_the_default_and_fields_override() {
        let config: ShopperConfig = toml::from_str("").unwrap();
        assert_eq!(config, ShopperConfig::default());
        assert_eq!(config.validate(), Ok(()));
        let config: ShopperConfig = toml::from_str(
            "sms_unavailable = \"allow_token\"\n\
             [rate_limits]\notp_requests_per_phone = { requests = 5, window_ms = 60000 }",
        )
        .unwrap();
        assert_eq!(config.sms_unavailable, SmsUnavailablePolicy::AllowToken);
        assert_eq!(
            config.rate_limits.otp_requests_per_phone,
            RateLimit {
                requests: 5,
                window_ms: 60_000
            }
        );
        assert_eq!(config.rate_limits.otp_requests_per_kiosk.requests, 30);
        assert!(toml::from_str::<ShopperConfig>("otp_ttl_ms = 1").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut config = ShopperConfig {
            token_ttl_days: 0,
            ..ShopperConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "shopper.token_ttl_days: must be 1 to 365"
        );
        config.token_ttl_days = 30;
        config.rate_limits.otp_verifications_per_kiosk.requests = 0;
        assert_eq!(
            config.validate().unwrap_err().field,
            "rate_limits.otp_verifications_per_kiosk"
        );
    }
}
