//! `OtpBook`: the one-time codes sent by SMS and waiting to be typed at the kiosk, with
//! their expiry and attempt count. Pure: time and randomness come in as arguments.
//!
//! Rules (those of the existing system, constants from `cartwise_schema::otp`):
//!
//! - a code is valid for [`OTP_TTL_MS`] (5 minutes) after it is sent: still valid at
//!   `sent + ttl - 1 ms`, expired at exactly `sent + ttl`;
//! - a correct code is used up: a second verify with it finds no code;
//! - [`OTP_ATTEMPTS_MAX`] (3) wrong codes burn it: the third wrong code answers
//!   `TooManyAttempts`, and so does every later verify, even with the right code, until the
//!   shopper requests a new one.
//!
//! **Re-request before expiry** re-sends *the same code* with a fresh 5-minute lifetime and
//! keeps its attempt count. So two SMS that arrive out of order both carry a working code, and
//! asking again never buys an attacker more guesses at one code. A burnt or expired code is
//! replaced by a new one with a fresh attempt count. How often a phone may ask is the rate
//! limiter's business ([`super::rate_limit`]); the book does not limit requests itself.
//!
//! The book holds at most `pending_max` codes ([`OTP_PENDING_MAX`] by default). Entries are
//! ordered by the time they were last sent, which is also the order of their expiry, so
//! expired entries are dropped from the old end on every request, and when the book is still
//! full the oldest pending code is evicted (its shopper gets `NoCode` and asks again).
//!
//! Times are monotonic ([`MonoMillis`]): codes live in memory and die with the boot.

use cartwise_schema::{MonoMillis, OTP_ATTEMPTS_MAX, OTP_TTL_MS, OtpCode, Phone};
use rand::CryptoRng;

use super::bounded::BoundedMap;

/// Default maximum of codes waiting to be typed, over all phones.
pub const OTP_PENDING_MAX: usize = 10_000;
/// Random draws tried for an unbiased code before accepting a slightly biased one. A draw is
/// rejected with probability 5 536 / 65 536, so 32 rejections in a row never happen in practice.
pub const OTP_RANDOM_DRAWS_MAX: u32 = 32;

/// Limits of an [`OtpBook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtpBookConfig {
    /// Lifetime of a sent code. Default [`OTP_TTL_MS`].
    pub ttl_ms: u64,
    /// Wrong codes that burn a code. Default [`OTP_ATTEMPTS_MAX`].
    pub attempts_max: u32,
    /// Codes held at most. Default [`OTP_PENDING_MAX`].
    pub pending_max: usize,
}

impl Default for OtpBookConfig {
    fn default() -> Self {
        Self {
            ttl_ms: OTP_TTL_MS,
            attempts_max: OTP_ATTEMPTS_MAX,
            pending_max: OTP_PENDING_MAX,
        }
    }
}

/// A code to send by SMS, as [`OtpBook::request`] issued it.
#[derive(Debug, Clone, Copy)]
pub struct IssuedOtp {
    /// The code to put in the SMS.
    pub code: OtpCode,
    /// When it stops being valid.
    pub expires: MonoMillis,
    /// `true` when this is the code already pending for the phone, sent again.
    pub resent: bool,
}

/// Why a typed code was not accepted. Each variant maps to one shopper message
/// ([`super::messages::ShopperMessage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OtpVerifyError {
    /// The code is wrong; the shopper may try `attempts_left` more times (at least 1).
    #[error("wrong code, {attempts_left} attempts left")]
    Wrong {
        /// Tries left before the code is burnt.
        attempts_left: u32,
    },
    /// The code was sent more than five minutes ago; request a new one.
    #[error("the code has expired; request a new code")]
    Expired,
    /// No code is pending for this phone (never requested, already used, or evicted).
    #[error("no code is pending for this phone; request a code first")]
    NoCode,
    /// Too many wrong codes: this code is burnt; request a new one.
    #[error("too many wrong codes; request a new code")]
    TooManyAttempts,
}

/// A code waiting to be typed.
#[derive(Debug, Clone, Copy)]
struct PendingOtp {
    code: OtpCode,
    expires: MonoMillis,
    wrong_attempts: u32,
}

impl PendingOtp {
    fn is_expired(&self, now: MonoMillis) -> bool {
        now >= self.expires
    }

    fn is_burnt(&self, attempts_max: u32) -> bool {
        self.wrong_attempts >= attempts_max
    }
}

/// The codes sent and not yet used, at most one per phone.
#[derive(Debug)]
pub struct OtpBook {
    config: OtpBookConfig,
    pending: BoundedMap<Phone, PendingOtp>,
}

impl OtpBook {
    /// An empty book.
    pub fn new(config: OtpBookConfig) -> Self {
        Self {
            config,
            pending: BoundedMap::new(config.pending_max),
        }
    }

    /// Issues the code to send to `phone` (see the module docs for re-requests).
    pub fn request<R: CryptoRng + ?Sized>(
        &mut self,
        phone: &Phone,
        now: MonoMillis,
        rng: &mut R,
    ) -> IssuedOtp {
        self.prune_expired(now);
        let expires = MonoMillis::new(now.get().saturating_add(self.config.ttl_ms));
        let reusable = self
            .pending
            .get(phone)
            .filter(|pending| !pending.is_burnt(self.config.attempts_max))
            .copied();
        let (pending, resent) = match reusable {
            Some(old) => (PendingOtp { expires, ..old }, true),
            None => (
                PendingOtp {
                    code: draw_code(rng),
                    expires,
                    wrong_attempts: 0,
                },
                false,
            ),
        };
        self.pending.insert(phone.clone(), pending);
        IssuedOtp {
            code: pending.code,
            expires,
            resent,
        }
    }

    /// Checks a typed code. A correct code is used up; a wrong one counts an attempt.
    pub fn verify(
        &mut self,
        phone: &Phone,
        typed: &OtpCode,
        now: MonoMillis,
    ) -> Result<(), OtpVerifyError> {
        let attempts_max = self.config.attempts_max;
        let Some(pending) = self.pending.get_mut(phone) else {
            return Err(OtpVerifyError::NoCode);
        };
        if pending.is_expired(now) {
            self.pending.remove(phone);
            return Err(OtpVerifyError::Expired);
        }
        if pending.is_burnt(attempts_max) {
            return Err(OtpVerifyError::TooManyAttempts);
        }
        if pending.code.matches(typed) {
            self.pending.remove(phone);
            return Ok(());
        }
        pending.wrong_attempts = pending.wrong_attempts.saturating_add(1);
        if pending.is_burnt(attempts_max) {
            // Kept until it expires, so the shopper keeps hearing "too many attempts".
            return Err(OtpVerifyError::TooManyAttempts);
        }
        Err(OtpVerifyError::Wrong {
            attempts_left: attempts_max - pending.wrong_attempts,
        })
    }

    /// Drops every expired code. Entries are in expiry order, so this stops at the first
    /// live one.
    pub fn prune_expired(&mut self, now: MonoMillis) {
        while self
            .pending
            .oldest()
            .is_some_and(|(_, pending)| pending.is_expired(now))
        {
            self.pending.pop_oldest();
        }
    }

    /// Codes held (pending, burnt or expired but not yet pruned).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no code is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A uniformly random code: rejection sampling over 16-bit draws, bounded by
/// [`OTP_RANDOM_DRAWS_MAX`].
fn draw_code<R: CryptoRng + ?Sized>(rng: &mut R) -> OtpCode {
    let mut draw = 0u16;
    for _ in 0..OTP_RANDOM_DRAWS_MAX {
        let mut bytes = [0u8; 2];
        rng.fill_bytes(&mut bytes);
        draw = u16::from_le_bytes(bytes);
        if let Some(code) = OtpCode::from_random_u16_unbiased(draw) {
            return code;
        }
    }
    OtpCode::from_random_u16(draw)
}

#[cfg(test)]
mod tests;
