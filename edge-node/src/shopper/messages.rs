//! What the kiosk tells a shopper about signing in, in Hebrew (the kiosk's first language)
//! and English, kept in one place and keyed by [`ShopperMessage`].
//!
//! The existing kiosk API returns these texts as `message` or `detail`; the SMS text itself
//! is here too ([`ShopperMessage::OtpSms`]).

use cartwise_schema::{OTP_TTL_MS, OtpCode, OtpError, Phone, PhoneError};

use super::otp::OtpVerifyError;
use super::rate_limit::RetryAfter;
use super::sms::{SmsError, SmsUnavailablePolicy};
use super::token::ShopperTokenError;

/// Minutes a code is valid, as told to the shopper.
pub const OTP_TTL_MINUTES: u64 = OTP_TTL_MS / 60_000;

/// One message to a shopper.
#[derive(Debug, Clone)]
pub enum ShopperMessage {
    /// A code was sent by SMS to this phone.
    OtpSent {
        /// The phone, shown in national form.
        phone: Phone,
    },
    /// The SMS text carrying a code.
    OtpSms {
        /// The code.
        code: OtpCode,
    },
    /// The code (or token) was accepted.
    Verified,
    /// A wrong code; `attempts_left` more tries.
    WrongCode {
        /// Tries left (at least 1).
        attempts_left: u32,
    },
    /// The code has expired.
    CodeExpired,
    /// No code was requested (or it was used, or forgotten).
    NoCode,
    /// Too many wrong codes: request a new one.
    TooManyAttempts,
    /// Too many requests: wait `minutes`.
    RateLimited {
        /// Whole minutes to wait, at least 1.
        minutes: u64,
    },
    /// SMS cannot be sent now (network or provider down); what to do depends on the policy.
    SmsUnavailable {
        /// The branch's policy.
        policy: SmsUnavailablePolicy,
    },
    /// The SMS provider refused the message (an account or configuration problem).
    SmsFailed,
    /// The phone number was not accepted.
    InvalidPhone(PhoneError),
    /// The typed code is not four digits.
    InvalidCode(OtpError),
    /// The saved sign-in (shopper token) has expired.
    TokenExpired,
    /// The saved sign-in is not valid here.
    TokenInvalid,
}

impl ShopperMessage {
    /// The Hebrew text.
    pub fn he(&self) -> String {
        match self {
            ShopperMessage::OtpSent { phone } => {
                format!("קוד אימות נשלח למספר {}", phone.national())
            }
            ShopperMessage::OtpSms { code } => {
                format!("קוד האימות שלך ל-CartWise: {code}. הקוד בתוקף ל-{OTP_TTL_MINUTES} דקות.")
            }
            ShopperMessage::Verified => "האימות הצליח".into(),
            ShopperMessage::WrongCode { attempts_left: 1 } => "קוד שגוי. נותר ניסיון אחד".into(),
            ShopperMessage::WrongCode { attempts_left } => {
                format!("קוד שגוי. נותרו {attempts_left} ניסיונות")
            }
            ShopperMessage::CodeExpired => "תוקף הקוד פג. יש לבקש קוד חדש".into(),
            ShopperMessage::NoCode => "לא נמצא קוד אימות פעיל למספר זה. יש לבקש קוד חדש".into(),
            ShopperMessage::TooManyAttempts => "יותר מדי ניסיונות שגויים. יש לבקש קוד חדש".into(),
            ShopperMessage::RateLimited { minutes: 1 } => "יותר מדי בקשות. נסו שוב בעוד דקה".into(),
            ShopperMessage::RateLimited { minutes } => {
                format!("יותר מדי בקשות. נסו שוב בעוד {minutes} דקות")
            }
            ShopperMessage::SmsUnavailable {
                policy: SmsUnavailablePolicy::Refuse,
            } => "לא ניתן לשלוח SMS כרגע. נסו שוב בעוד מספר דקות".into(),
            ShopperMessage::SmsUnavailable {
                policy: SmsUnavailablePolicy::AllowToken,
            } => "לא ניתן לשלוח SMS כרגע. אם התחברתם בעבר בקיוסק זה, ניתן להמשיך ללא קוד; \
                 אחרת נסו שוב בעוד מספר דקות"
                .into(),
            ShopperMessage::SmsFailed => "שליחת ה-SMS נכשלה. אנא פנו לצוות הסניף".into(),
            ShopperMessage::InvalidPhone(error) => error.message_he().into(),
            ShopperMessage::InvalidCode(error) => error.message_he().into(),
            ShopperMessage::TokenExpired => {
                "תוקף ההתחברות השמורה פג. יש לאמת את מספר הטלפון מחדש".into()
            }
            ShopperMessage::TokenInvalid => {
                "ההתחברות השמורה אינה תקפה. יש לאמת את מספר הטלפון מחדש".into()
            }
        }
    }

    /// The English text.
    pub fn en(&self) -> String {
        match self {
            ShopperMessage::OtpSent { phone } => {
                format!("A verification code was sent to {}", phone.national())
            }
            ShopperMessage::OtpSms { code } => format!(
                "Your CartWise verification code: {code}. It is valid for {OTP_TTL_MINUTES} minutes."
            ),
            ShopperMessage::Verified => "Verified".into(),
            ShopperMessage::WrongCode { attempts_left: 1 } => "Wrong code. 1 attempt left".into(),
            ShopperMessage::WrongCode { attempts_left } => {
                format!("Wrong code. {attempts_left} attempts left")
            }
            ShopperMessage::CodeExpired => "The code has expired. Please request a new code".into(),
            ShopperMessage::NoCode => {
                "No active code for this number. Please request a new code".into()
            }
            ShopperMessage::TooManyAttempts => {
                "Too many wrong attempts. Please request a new code".into()
            }
            ShopperMessage::RateLimited { minutes: 1 } => {
                "Too many requests. Please try again in a minute".into()
            }
            ShopperMessage::RateLimited { minutes } => {
                format!("Too many requests. Please try again in {minutes} minutes")
            }
            ShopperMessage::SmsUnavailable {
                policy: SmsUnavailablePolicy::Refuse,
            } => "SMS cannot be sent right now. Please try again in a few minutes".into(),
            ShopperMessage::SmsUnavailable {
                policy: SmsUnavailablePolicy::AllowToken,
            } => "SMS cannot be sent right now. If you signed in on this kiosk before, you can \
                 continue without a code; otherwise please try again in a few minutes"
                .into(),
            ShopperMessage::SmsFailed => {
                "The SMS could not be sent. Please ask the branch staff for help".into()
            }
            ShopperMessage::InvalidPhone(PhoneError::Empty) => {
                "Please enter a mobile phone number, e.g. 0501234567".into()
            }
            ShopperMessage::InvalidPhone(PhoneError::NotMobile) => {
                "Only Israeli mobile numbers (starting with 05) can be used, e.g. 0501234567".into()
            }
            ShopperMessage::InvalidPhone(_) => {
                "Invalid phone number. Please enter an Israeli mobile number, e.g. 0501234567"
                    .into()
            }
            ShopperMessage::InvalidCode(_) => "The code must have exactly 4 digits".into(),
            ShopperMessage::TokenExpired => {
                "Your saved sign-in has expired. Please verify your phone number again".into()
            }
            ShopperMessage::TokenInvalid => {
                "Your saved sign-in is not valid. Please verify your phone number again".into()
            }
        }
    }

    /// The message for a failed send under the branch's `policy`: unavailability follows
    /// the policy, a refusal is [`ShopperMessage::SmsFailed`].
    pub fn for_sms_error(error: &SmsError, policy: SmsUnavailablePolicy) -> Self {
        if error.is_unavailable() {
            ShopperMessage::SmsUnavailable { policy }
        } else {
            ShopperMessage::SmsFailed
        }
    }
}

impl From<OtpVerifyError> for ShopperMessage {
    fn from(error: OtpVerifyError) -> Self {
        match error {
            OtpVerifyError::Wrong { attempts_left } => ShopperMessage::WrongCode { attempts_left },
            OtpVerifyError::Expired => ShopperMessage::CodeExpired,
            OtpVerifyError::NoCode => ShopperMessage::NoCode,
            OtpVerifyError::TooManyAttempts => ShopperMessage::TooManyAttempts,
        }
    }
}

impl From<RetryAfter> for ShopperMessage {
    fn from(wait: RetryAfter) -> Self {
        ShopperMessage::RateLimited {
            minutes: wait.minutes_ceil(),
        }
    }
}

impl From<PhoneError> for ShopperMessage {
    fn from(error: PhoneError) -> Self {
        ShopperMessage::InvalidPhone(error)
    }
}

impl From<OtpError> for ShopperMessage {
    fn from(error: OtpError) -> Self {
        ShopperMessage::InvalidCode(error)
    }
}

impl From<&ShopperTokenError> for ShopperMessage {
    fn from(error: &ShopperTokenError) -> Self {
        match error {
            ShopperTokenError::Expired { .. } => ShopperMessage::TokenExpired,
            _ => ShopperMessage::TokenInvalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    fn both(message: ShopperMessage) -> String {
        format!("{} | {}", message.he(), message.en())
    }

    #[test]
    fn texts_in_both_languages() {
        let phone = Phone::parse("+972501234567").unwrap();
        let lines = [
            both(ShopperMessage::OtpSent { phone }),
            both(ShopperMessage::OtpSms {
                code: OtpCode::from_random_u16(42),
            }),
            both(OtpVerifyError::Wrong { attempts_left: 2 }.into()),
            both(OtpVerifyError::Wrong { attempts_left: 1 }.into()),
            both(OtpVerifyError::Expired.into()),
            both(OtpVerifyError::TooManyAttempts.into()),
            both(
                RetryAfter {
                    retry_after_ms: 200_000,
                }
                .into(),
            ),
            both(
                RetryAfter {
                    retry_after_ms: 5_000,
                }
                .into(),
            ),
            both(ShopperMessage::SmsUnavailable {
                policy: SmsUnavailablePolicy::Refuse,
            }),
            both(PhoneError::NotMobile.into()),
            both((&ShopperTokenError::Expired { expired_ms: 0 }).into()),
        ]
        .join("\n");
        expect![[r#"
            קוד אימות נשלח למספר 0501234567 | A verification code was sent to 0501234567
            קוד האימות שלך ל-CartWise: 0042. הקוד בתוקף ל-5 דקות. | Your CartWise verification code: 0042. It is valid for 5 minutes.
            קוד שגוי. נותרו 2 ניסיונות | Wrong code. 2 attempts left
            קוד שגוי. נותר ניסיון אחד | Wrong code. 1 attempt left
            תוקף הקוד פג. יש לבקש קוד חדש | The code has expired. Please request a new code
            יותר מדי ניסיונות שגויים. יש לבקש קוד חדש | Too many wrong attempts. Please request a new code
            יותר מדי בקשות. נסו שוב בעוד 4 דקות | Too many requests. Please try again in 4 minutes
            יותר מדי בקשות. נסו שוב בעוד דקה | Too many requests. Please try again in a minute
            לא ניתן לשלוח SMS כרגע. נסו שוב בעוד מספר דקות | SMS cannot be sent right now. Please try again in a few minutes
            ניתן להשתמש רק במספר טלפון נייד ישראלי (המתחיל ב-05), לדוגמה 0501234567 | Only Israeli mobile numbers (starting with 05) can be used, e.g. 0501234567
            תוקף ההתחברות השמורה פג. יש לאמת את מספר הטלפון מחדש | Your saved sign-in has expired. Please verify your phone number again"#]]
        .assert_eq(&lines);
    }

    #[test]
    fn sms_errors_follow_the_policy_only_when_unavailable() {
        let offline = SmsError::TimedOut { timeout_ms: 200 };
        let message = ShopperMessage::for_sms_error(&offline, SmsUnavailablePolicy::AllowToken);
        assert!(message.he().starts_with("לא ניתן לשלוח SMS כרגע."));
        assert!(message.en().contains("without a code"));
        let refused = SmsError::QuotaExhausted {
            detail: String::new(),
        };
        let message = ShopperMessage::for_sms_error(&refused, SmsUnavailablePolicy::AllowToken);
        assert!(matches!(message, ShopperMessage::SmsFailed));
    }
}
