//! `Phone`: a shopper's Israeli mobile number, validated in exactly the formats the existing
//! kiosk accepts and normalised to E.164 (`+9725XXXXXXXX`).
//!
//! Accepted, after trimming surrounding whitespace (`str::trim`, i.e. Unicode `White_Space`):
//!
//! | form | example |
//! |---|---|
//! | `05XXXXXXXX` | `0501234567` |
//! | `05X-XXXXXXX` | `050-1234567` |
//! | `+9725XXXXXXXX` | `+972501234567` |
//!
//! where every `X` is an ASCII digit `0`–`9`. Everything else is rejected, deliberately
//! including forms a lenient parser might take: `972501234567` (no plus), `+972-50-1234567`,
//! `050 1234567` or `050-123-4567` (spaces or dashes elsewhere), `+9720501234567` (trunk zero
//! after the country code), non-ASCII digits (Arabic-Indic, full-width), and bidi marks. Any
//! second digit after `05` is accepted (the existing system does not list operator prefixes).
//!
//! A phone number is personal data: errors never quote the input, and `Debug` prints the
//! masked form. `Display` prints E.164, the form stored and sent on the wire.

use std::fmt;
use std::str::FromStr;

#[cfg(test)]
mod tests;

/// Digits after the trunk `0` or the country code: `5XXXXXXXX`.
const SUBSCRIBER_DIGITS: usize = 9;
/// The E.164 prefix of Israel.
const COUNTRY_PREFIX: &str = "+972";
/// Length of the E.164 form `+9725XXXXXXXX`.
const E164_LEN: usize = COUNTRY_PREFIX.len() + SUBSCRIBER_DIGITS;
/// Length of the national form `05XXXXXXXX`.
const NATIONAL_LEN: usize = 1 + SUBSCRIBER_DIGITS;
/// Length of the dashed national form `05X-XXXXXXX`.
const NATIONAL_DASHED_LEN: usize = NATIONAL_LEN + 1;
/// Index of the dash in the dashed national form.
const NATIONAL_DASH_AT: usize = 3;

/// An Israeli mobile number, stored in E.164 form (`+9725XXXXXXXX`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Phone {
    e164: String,
}

/// Why a phone number was rejected. The messages never contain the number itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Nothing but whitespace was entered.
    #[error("no phone number was given; {ACCEPTED_EN}")]
    Empty,
    /// A character other than ASCII digits, one leading `+` and one dash (letters, inner
    /// spaces, non-ASCII digits, punctuation).
    #[error("the phone number contains a character that is not allowed; {ACCEPTED_EN}")]
    InvalidCharacter,
    /// An Israeli number that is not a mobile one (a landline `02`…`09`, a `+972` number not
    /// followed by `5`), or a number of another country.
    #[error("the phone number is not an Israeli mobile number; {ACCEPTED_EN}")]
    NotMobile,
    /// A mobile prefix with too few or too many digits.
    #[error("the phone number has the wrong number of digits; {ACCEPTED_EN}")]
    WrongLength,
    /// Allowed characters in a layout that is not accepted (a dash or `+` elsewhere, `972`
    /// without `+`, a trunk zero after `+972`).
    #[error("the phone number is not written in an accepted form; {ACCEPTED_EN}")]
    Malformed,
}

/// The accepted forms, appended to every English message.
const ACCEPTED_EN: &str =
    "expected an Israeli mobile number as 05XXXXXXXX, 05X-XXXXXXX or +9725XXXXXXXX";

impl PhoneError {
    /// The message shown to a shopper on the Hebrew kiosk.
    pub fn message_he(&self) -> &'static str {
        match self {
            PhoneError::Empty => "יש להזין מספר טלפון נייד, לדוגמה 0501234567",
            PhoneError::NotMobile => {
                "ניתן להשתמש רק במספר טלפון נייד ישראלי (המתחיל ב-05), לדוגמה 0501234567"
            }
            PhoneError::InvalidCharacter | PhoneError::WrongLength | PhoneError::Malformed => {
                "מספר טלפון לא תקין. יש להזין מספר נייד ישראלי, לדוגמה 0501234567"
            }
        }
    }
}

impl Phone {
    /// Parses one of the accepted forms (see the module docs) and normalises it to E.164.
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        let trimmed = input.trim();
        match subscriber_digits(trimmed) {
            Some(subscriber) => Ok(Self {
                e164: format!("{COUNTRY_PREFIX}{subscriber}"),
            }),
            None => Err(classify_rejection(trimmed)),
        }
    }

    /// The E.164 form, `+9725XXXXXXXX`: the form stored, compared and sent.
    pub fn as_e164(&self) -> &str {
        &self.e164
    }

    /// The national form, `05XXXXXXXX`, as the existing kiosk API returns it.
    pub fn national(&self) -> String {
        format!("0{}", self.subscriber())
    }

    /// The form shown to roles without access to personal data: the country code and the
    /// first two digits, three stars, the last four digits (`+97250***4567`).
    pub fn masked(&self) -> String {
        let subscriber = self.subscriber();
        let head = subscriber.get(..2).unwrap_or_default();
        let tail = subscriber.get(SUBSCRIBER_DIGITS - 4..).unwrap_or_default();
        format!("{COUNTRY_PREFIX}{head}***{tail}")
    }

    /// The nine digits after the country code, `5XXXXXXXX`.
    fn subscriber(&self) -> &str {
        self.e164.get(COUNTRY_PREFIX.len()..).unwrap_or_default()
    }
}

/// The nine subscriber digits of an accepted form, or `None` if `text` is not one.
fn subscriber_digits(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let all_digits = |part: &[u8]| part.iter().all(u8::is_ascii_digit);
    let subscriber = match bytes.len() {
        NATIONAL_LEN if bytes.starts_with(b"05") && all_digits(bytes) => &bytes[1..],
        NATIONAL_DASHED_LEN
            if bytes.starts_with(b"05")
                && bytes[NATIONAL_DASH_AT] == b'-'
                && all_digits(&bytes[..NATIONAL_DASH_AT])
                && all_digits(&bytes[NATIONAL_DASH_AT + 1..]) =>
        {
            let mut digits = bytes[1..NATIONAL_DASH_AT].to_vec();
            digits.extend_from_slice(&bytes[NATIONAL_DASH_AT + 1..]);
            return String::from_utf8(digits).ok();
        }
        E164_LEN if bytes.starts_with(b"+9725") && all_digits(&bytes[COUNTRY_PREFIX.len()..]) => {
            &bytes[COUNTRY_PREFIX.len()..]
        }
        _ => return None,
    };
    std::str::from_utf8(subscriber).ok().map(str::to_owned)
}

/// Explains why `text` (already trimmed, and not an accepted form) was rejected.
fn classify_rejection(text: &str) -> PhoneError {
    if text.is_empty() {
        return PhoneError::Empty;
    }
    let allowed = |c: char| c.is_ascii_digit() || c == '+' || c == '-';
    if !text.chars().all(allowed) {
        return PhoneError::InvalidCharacter;
    }
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let has_plus = text.starts_with('+');
    let is_national = !has_plus && digits.starts_with('0');
    let is_international = has_plus && digits.starts_with("972");
    let after_prefix = if is_national {
        digits.get(1..)
    } else if is_international {
        digits.get(3..)
    } else {
        None
    };
    match after_prefix {
        // `+0…`: a national number with a plus.
        None if has_plus && digits.starts_with('0') => PhoneError::Malformed,
        // `+` followed by another country's code (at least three digits to tell).
        None if has_plus && digits.len() >= 3 => PhoneError::NotMobile,
        None => PhoneError::Malformed,
        // `+9720…`: a trunk zero after the country code.
        Some(rest) if is_international && rest.starts_with('0') => PhoneError::Malformed,
        Some("") => PhoneError::WrongLength,
        Some(rest) if !rest.starts_with('5') => PhoneError::NotMobile,
        Some(rest) if rest.len() != SUBSCRIBER_DIGITS => PhoneError::WrongLength,
        // Right digits, wrong layout: a dash or `+` in the wrong place.
        Some(_) => PhoneError::Malformed,
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.e164)
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phone({})", self.masked())
    }
}

impl FromStr for Phone {
    type Err = PhoneError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::parse(input)
    }
}
