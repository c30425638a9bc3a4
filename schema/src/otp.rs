//! `OtpCode`: the 4-digit SMS code of shopper sign-in, and the limits of the existing
//! system's shopper flow (code lifetime, attempts, token lifetime, rental length).
//!
//! The crate has no RNG: a code is made from a random number the caller draws. Codes are
//! secrets, so `Debug` hides the digits and [`OtpCode::matches`] compares in constant time.

use std::fmt;
use std::str::FromStr;

/// Digits in an OTP code.
pub const OTP_DIGITS: usize = 4;
/// How long an OTP code stays valid after it is sent: 5 minutes.
pub const OTP_TTL_MS: u64 = 5 * 60_000;
/// Wrong codes accepted for one sent code before it is burnt.
pub const OTP_ATTEMPTS_MAX: u32 = 3;
/// Lifetime of the shopper token issued after a correct code.
pub const SHOPPER_TOKEN_TTL_DAYS: u32 = 30;
/// Rental length before a rental is overdue, unless the branch configures another.
pub const RENTAL_MINUTES_DEFAULT: u32 = 120;
/// [`OtpCode::from_random_u16_unbiased`] accepts random numbers below this (6 × 10 000), so
/// that every code is equally likely; callers draw again on `None`.
pub const OTP_RANDOM_U16_UNBIASED_BELOW: u16 = 60_000;

/// Number of distinct codes, 10^OTP_DIGITS.
const OTP_CODES: u16 = 10_000;

/// Why an OTP code was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OtpError {
    /// The code does not have exactly four characters (after trimming surrounding whitespace).
    #[error("the code must have exactly 4 digits, found {len} characters")]
    WrongLength {
        /// Characters found.
        len: usize,
    },
    /// The code has four characters but not all are ASCII digits `0`–`9`.
    #[error("the code must have exactly 4 digits 0-9, found another character")]
    NotDigits,
}

impl OtpError {
    /// The message shown to a shopper on the Hebrew kiosk.
    pub fn message_he(&self) -> &'static str {
        "קוד האימות חייב להכיל 4 ספרות"
    }
}

/// A 4-digit code, stored as its ASCII digits. It has no `PartialEq`: compare codes with
/// [`OtpCode::matches`], which takes the same time whatever the input.
#[derive(Clone, Copy)]
pub struct OtpCode([u8; OTP_DIGITS]);

impl OtpCode {
    /// Parses exactly four ASCII digits, tolerating surrounding whitespace (a code pasted
    /// from an SMS). Leading zeros are significant: `"0042"` is a valid code.
    pub fn parse(input: &str) -> Result<Self, OtpError> {
        let trimmed = input.trim();
        let len = trimmed.chars().count();
        if len != OTP_DIGITS {
            return Err(OtpError::WrongLength { len });
        }
        match <[u8; OTP_DIGITS]>::try_from(trimmed.as_bytes()) {
            Ok(digits) if digits.iter().all(u8::is_ascii_digit) => Ok(Self(digits)),
            _ => Err(OtpError::NotDigits),
        }
    }

    /// The code `n % 10 000`, zero-padded. This is slightly biased (codes 0000–5535 come up
    /// 7 times in 65 536, the others 6); prefer [`OtpCode::from_random_u16_unbiased`].
    pub fn from_random_u16(n: u16) -> Self {
        Self::from_value(n % OTP_CODES)
    }

    /// The code `n % 10 000` if `n` is below [`OTP_RANDOM_U16_UNBIASED_BELOW`], else `None`
    /// (draw again). Every code is then equally likely.
    pub fn from_random_u16_unbiased(n: u16) -> Option<Self> {
        (n < OTP_RANDOM_U16_UNBIASED_BELOW).then(|| Self::from_value(n % OTP_CODES))
    }

    /// The code of a value below 10 000.
    fn from_value(value: u16) -> Self {
        let mut digits = [b'0'; OTP_DIGITS];
        let mut rest = value;
        for digit in digits.iter_mut().rev() {
            // `rest % 10` is below 10, so the cast cannot truncate.
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        Self(digits)
    }

    /// Whether `other` is the same code, comparing every digit whatever the first mismatch,
    /// so the time taken does not reveal how many leading digits were right.
    pub fn matches(&self, other: &OtpCode) -> bool {
        let difference = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |difference, (mine, theirs)| {
                difference | (mine ^ theirs)
            });
        std::hint::black_box(difference) == 0
    }

    /// The four digits, e.g. for the SMS text.
    pub fn as_str(&self) -> &str {
        // Always ASCII digits: checked in `parse`, built from digits in `from_value`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtpCode(****)")
    }
}

impl FromStr for OtpCode {
    type Err = OtpError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::parse(input)
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};
    use proptest::prelude::*;

    use super::*;

    fn check(input: &str, expect: Expect) {
        let actual = match OtpCode::parse(input) {
            Ok(code) => format!("ok {code}"),
            Err(error) => format!("err {error}"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn parse_table() {
        check("1234", expect![["ok 1234"]]);
        check("0042", expect![["ok 0042"]]);
        check(" 9876\n", expect![["ok 9876"]]);
        check(
            "123",
            expect![["err the code must have exactly 4 digits, found 3 characters"]],
        );
        check(
            "12345",
            expect![["err the code must have exactly 4 digits, found 5 characters"]],
        );
        check(
            "",
            expect![["err the code must have exactly 4 digits, found 0 characters"]],
        );
        check(
            "12a4",
            expect![["err the code must have exactly 4 digits 0-9, found another character"]],
        );
        check(
            "12 4",
            expect![["err the code must have exactly 4 digits 0-9, found another character"]],
        );
        check(
            "+123",
            expect![["err the code must have exactly 4 digits 0-9, found another character"]],
        );
        check(
            "١٢٣٤",
            expect![["err the code must have exactly 4 digits 0-9, found another character"]],
        );
        check(
            "１２３４",
            expect![["err the code must have exactly 4 digits 0-9, found another character"]],
        );
    }

    #[test]
    fn from_random_pads_and_wraps() {
        let codes = [0u16, 7, 42, 9999, 10_000, 12_345, u16::MAX]
            .map(|n| OtpCode::from_random_u16(n).to_string())
            .join(" ");
        expect![["0000 0007 0042 9999 0000 2345 5535"]].assert_eq(&codes);
        let unbiased = |n| OtpCode::from_random_u16_unbiased(n).map(|code| code.to_string());
        assert_eq!(unbiased(59_999).as_deref(), Some("9999"));
        assert_eq!(unbiased(60_000), None);
    }

    #[test]
    fn debug_hides_the_code() {
        let code = OtpCode::parse("1234").unwrap();
        assert_eq!(format!("{code:?}"), "OtpCode(****)");
        assert_eq!(
            OtpError::NotDigits.message_he(),
            "קוד האימות חייב להכיל 4 ספרות"
        );
    }

    #[test]
    fn constants_match_the_existing_system() {
        let constants = format!(
            "digits={OTP_DIGITS} ttl_ms={OTP_TTL_MS} attempts={OTP_ATTEMPTS_MAX} \
             token_days={SHOPPER_TOKEN_TTL_DAYS} rental_minutes={RENTAL_MINUTES_DEFAULT}"
        );
        expect![["digits=4 ttl_ms=300000 attempts=3 token_days=30 rental_minutes=120"]]
            .assert_eq(&constants);
    }

    proptest! {
        #[test]
        fn matches_is_equality(a in 0u16..10_000, b in 0u16..10_000) {
            let (code_a, code_b) = (OtpCode::from_random_u16(a), OtpCode::from_random_u16(b));
            prop_assert_eq!(code_a.matches(&code_b), a == b);
            prop_assert_eq!(code_a.matches(&code_b), code_a.as_str() == code_b.as_str());
        }

        #[test]
        fn every_random_code_parses_back(n in any::<u16>()) {
            let code = OtpCode::from_random_u16(n);
            let parsed = OtpCode::parse(code.as_str()).map(|parsed| parsed.matches(&code));
            prop_assert_eq!(parsed, Ok(true));
            prop_assert_eq!(code.as_str().parse::<u16>().ok(), Some(n % 10_000));
        }

        #[test]
        fn parse_never_panics(input in any::<String>()) {
            let _ = OtpCode::parse(&input);
        }
    }
}
