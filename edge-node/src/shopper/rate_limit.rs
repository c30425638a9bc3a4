//! Rate limits of the shopper endpoints: a token bucket per key (phone or kiosk), kept in a
//! bounded map, and [`ShopperRateLimits`], the four buckets the kiosk consults.
//!
//! Each bucket holds up to `requests` tokens and refills one every `window_ms / requests`,
//! so a key may burst `requests` calls and then sustain `requests` per window (3 per 10
//! minutes: three at once, then one every 200 s). It is stored
//! as the "theoretical arrival time" of the generic cell-rate algorithm (GCRA): one `u64`
//! per key, integer arithmetic only. A bucket whose arrival time has passed is full, the
//! same as an absent one, so evicting idle keys loses nothing.
//!
//! Maps hold at most `keys_max` keys ([`RATE_LIMIT_KEYS_MAX`] by default) and evict the key
//! used longest ago: only a flood of more distinct keys than that within one window could
//! reset a bucket that is still draining, and the per-kiosk buckets bound such a flood.
//!
//! Defaults (per 10 minutes): OTP requests 3 per phone and 30 per kiosk; code verifications
//! 10 per phone (3 codes × 3 attempts, plus one) and 60 per kiosk.

use std::hash::Hash;
use std::net::IpAddr;

use cartwise_schema::{MonoMillis, Phone};

use super::bounded::BoundedMap;

/// Default maximum of keys tracked by one limiter.
pub const RATE_LIMIT_KEYS_MAX: usize = 10_000;
/// Kiosk keys longer than this are cut (at a character boundary).
pub const KIOSK_KEY_BYTES_MAX: usize = 64;
/// Ten minutes, the window of every default limit.
const TEN_MINUTES_MS: u64 = 10 * 60_000;

/// `requests` calls per `window_ms`, with bursts of up to `requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Calls allowed per window, and the burst size. At least 1.
    pub requests: u32,
    /// The window, in milliseconds. At least 1.
    pub window_ms: u64,
}

impl RateLimit {
    /// Time between two refilled tokens (at least 1 ms).
    fn emission_interval_ms(&self) -> u64 {
        (self.window_ms / u64::from(self.requests.max(1))).max(1)
    }

    /// How far ahead of now the arrival time may run before calls are refused.
    fn burst_tolerance_ms(&self) -> u64 {
        self.emission_interval_ms()
            .saturating_mul(u64::from(self.requests.max(1)) - 1)
    }
}

/// The rate limits of the shopper endpoints (`[shopper.rate_limits]` in the daemon config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// OTP requests per phone. Default 3 per 10 minutes.
    pub otp_requests_per_phone: RateLimit,
    /// OTP requests per kiosk. Default 30 per 10 minutes.
    pub otp_requests_per_kiosk: RateLimit,
    /// Code verifications per phone. Default 10 per 10 minutes.
    pub otp_verifications_per_phone: RateLimit,
    /// Code verifications per kiosk. Default 60 per 10 minutes.
    pub otp_verifications_per_kiosk: RateLimit,
    /// Keys tracked by each limiter. Default [`RATE_LIMIT_KEYS_MAX`].
    pub keys_max: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let per_ten_minutes = |requests| RateLimit {
            requests,
            window_ms: TEN_MINUTES_MS,
        };
        Self {
            otp_requests_per_phone: per_ten_minutes(3),
            otp_requests_per_kiosk: per_ten_minutes(30),
            otp_verifications_per_phone: per_ten_minutes(10),
            otp_verifications_per_kiosk: per_ten_minutes(60),
            keys_max: RATE_LIMIT_KEYS_MAX,
        }
    }
}

/// A refused call: the caller may try again after `retry_after_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
#[error("too many requests; retry after {retry_after_ms} ms")]
pub struct RetryAfter {
    /// Milliseconds until the call would be allowed.
    pub retry_after_ms: u64,
}

impl RetryAfter {
    /// Whole minutes to wait, rounded up, at least 1: what the shopper is told.
    pub fn minutes_ceil(&self) -> u64 {
        self.retry_after_ms.div_ceil(60_000).max(1)
    }

    /// Whole seconds to wait, rounded up, at least 1: for an HTTP `Retry-After` header.
    pub fn seconds_ceil(&self) -> u64 {
        self.retry_after_ms.div_ceil(1_000).max(1)
    }
}

/// Who is calling from the kiosk side: the kiosk's id, or the client IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KioskKey(String);

impl KioskKey {
    /// The key of a client address.
    pub fn from_ip(ip: IpAddr) -> Self {
        Self(ip.to_string())
    }

    /// The key of a configured kiosk id, cut to [`KIOSK_KEY_BYTES_MAX`] bytes.
    pub fn from_id(id: &str) -> Self {
        let mut end = id.len().min(KIOSK_KEY_BYTES_MAX);
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        Self(id.get(..end).unwrap_or_default().to_owned())
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One token bucket per key, for one [`RateLimit`].
#[derive(Debug)]
pub struct RateLimiter<K> {
    limit: RateLimit,
    /// Theoretical arrival time of the next call, per key.
    arrival_ms: BoundedMap<K, u64>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter tracking at most `keys_max` keys.
    pub fn new(limit: RateLimit, keys_max: usize) -> Self {
        Self {
            limit,
            arrival_ms: BoundedMap::new(keys_max),
        }
    }

    /// Whether a call for `key` would be allowed now, without counting it.
    pub fn peek(&self, key: &K, now: MonoMillis) -> Result<(), RetryAfter> {
        self.next_arrival_ms(key, now).map(|_| ())
    }

    /// Counts a call for `key` if it is allowed, or says how long to wait.
    pub fn check(&mut self, key: &K, now: MonoMillis) -> Result<(), RetryAfter> {
        let next = self.next_arrival_ms(key, now)?;
        self.arrival_ms.insert(key.clone(), next);
        Ok(())
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.arrival_ms.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The arrival time to store if a call is allowed now.
    fn next_arrival_ms(&self, key: &K, now: MonoMillis) -> Result<u64, RetryAfter> {
        let now_ms = now.get();
        let arrival = self
            .arrival_ms
            .get(key)
            .copied()
            .unwrap_or(now_ms)
            .max(now_ms);
        let ahead = arrival - now_ms;
        let tolerance = self.limit.burst_tolerance_ms();
        if ahead > tolerance {
            return Err(RetryAfter {
                retry_after_ms: ahead - tolerance,
            });
        }
        Ok(arrival.saturating_add(self.limit.emission_interval_ms()))
    }
}

/// The limiters of the OTP endpoints. A call is counted against both its phone and its
/// kiosk only when both allow it.
#[derive(Debug)]
pub struct ShopperRateLimits {
    otp_requests_per_phone: RateLimiter<Phone>,
    otp_requests_per_kiosk: RateLimiter<KioskKey>,
    otp_verifications_per_phone: RateLimiter<Phone>,
    otp_verifications_per_kiosk: RateLimiter<KioskKey>,
}

impl ShopperRateLimits {
    /// Empty limiters.
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            otp_requests_per_phone: RateLimiter::new(
                config.otp_requests_per_phone,
                config.keys_max,
            ),
            otp_requests_per_kiosk: RateLimiter::new(
                config.otp_requests_per_kiosk,
                config.keys_max,
            ),
            otp_verifications_per_phone: RateLimiter::new(
                config.otp_verifications_per_phone,
                config.keys_max,
            ),
            otp_verifications_per_kiosk: RateLimiter::new(
                config.otp_verifications_per_kiosk,
                config.keys_max,
            ),
        }
    }

    /// Counts an OTP request (an SMS sent) from `kiosk` for `phone`.
    pub fn check_otp_request(
        &mut self,
        phone: &Phone,
        kiosk: &KioskKey,
        now: MonoMillis,
    ) -> Result<(), RetryAfter> {
        check_both(
            (&mut self.otp_requests_per_phone, phone),
            (&mut self.otp_requests_per_kiosk, kiosk),
            now,
        )
    }

    /// Counts a code verification from `kiosk` for `phone`.
    pub fn check_otp_verification(
        &mut self,
        phone: &Phone,
        kiosk: &KioskKey,
        now: MonoMillis,
    ) -> Result<(), RetryAfter> {
        check_both(
            (&mut self.otp_verifications_per_phone, phone),
            (&mut self.otp_verifications_per_kiosk, kiosk),
            now,
        )
    }
}

/// Counts a call against both limiters if both allow it; otherwise the longer wait.
fn check_both<A: Hash + Eq + Clone, B: Hash + Eq + Clone>(
    (first, first_key): (&mut RateLimiter<A>, &A),
    (second, second_key): (&mut RateLimiter<B>, &B),
    now: MonoMillis,
) -> Result<(), RetryAfter> {
    match (first.peek(first_key, now), second.peek(second_key, now)) {
        (Ok(()), Ok(())) => {
            first.check(first_key, now)?;
            second.check(second_key, now)
        }
        (Err(wait), Ok(())) | (Ok(()), Err(wait)) => Err(wait),
        (Err(a), Err(b)) => Err(a.max(b)),
    }
}

#[cfg(test)]
mod tests;
