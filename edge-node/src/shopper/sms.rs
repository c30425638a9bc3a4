//! Sending SMS: the [`SmsSender`] seam the daemon holds as `Arc<dyn SmsSender>`, its error,
//! and the two senders — [`OutboxSender`] (development: one JSON line per message in a file)
//! and [`InforuSender`] (Inforu's HTTP API).
//!
//! The trait returns a boxed future so that it stays dyn-compatible without the
//! `async-trait` crate. [`SmsError::is_unavailable`] tells "the network or the provider is
//! down, try later" from "the provider refused this message or our account": the branch's
//! [`SmsUnavailablePolicy`] decides what the kiosk does in the first case.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use cartwise_schema::Phone;

mod error;
pub mod inforu;
pub mod outbox;

pub use error::SmsError;

pub use inforu::{INFORU_ENDPOINT_DEFAULT, INFORU_TIMEOUT_MS_DEFAULT, InforuConfig, InforuSender};
pub use outbox::{OutboxEntry, OutboxSender, read_outbox};

/// The future of one send.
pub type SmsFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SmsError>> + Send + 'a>>;

/// Longest SMS text accepted (a few concatenated SMS; a code message is one).
pub const SMS_TEXT_CHARS_MAX: usize = 480;

/// One SMS to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsMessage {
    /// The recipient.
    pub to: Phone,
    /// The text, as the shopper reads it.
    pub text: String,
    /// The one-time code the text carries, if any: the outbox records it so tests and the
    /// demo can read it; real senders ignore it.
    pub code: Option<String>,
}

/// Something that delivers SMS. Implementations must bound the time a send takes.
pub trait SmsSender: Send + Sync {
    /// Sends one message.
    fn send<'a>(&'a self, message: &'a SmsMessage) -> SmsFuture<'a>;

    /// A short name for logs and `/health` (`"outbox"`, `"inforu"`).
    fn name(&self) -> &str;
}

/// What the branch does while SMS cannot be sent (the last send failed as
/// [`SmsError::is_unavailable`]): codes cannot be sent either way; the policy decides whether
/// shoppers holding a valid shopper token may still rent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmsUnavailablePolicy {
    /// Refuse sign-in with a clear message, by code and by token alike, until SMS works
    /// again (for branches that want a fresh phone check on every rental made offline).
    #[default]
    Refuse,
    /// Refuse codes, but let shoppers with a valid token rent (the token path serves), and
    /// say so in the message.
    AllowToken,
}

impl SmsUnavailablePolicy {
    /// Whether a valid shopper token is accepted while SMS is unavailable.
    pub fn token_path_serves(self) -> bool {
        self == SmsUnavailablePolicy::AllowToken
    }
}

/// Which sender the daemon uses (`[sms]` in the daemon config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "sender", rename_all = "snake_case", deny_unknown_fields)]
pub enum SmsSenderConfig {
    /// The development outbox: one JSON line per message appended to `path`.
    Outbox {
        /// The outbox file.
        path: PathBuf,
    },
    /// Inforu's HTTP API.
    Inforu(InforuConfig),
}

impl SmsSenderConfig {
    /// Builds the configured sender.
    pub fn build(&self) -> Result<Arc<dyn SmsSender>, SmsError> {
        Ok(match self {
            SmsSenderConfig::Outbox { path } => Arc::new(OutboxSender::new(path.clone())),
            SmsSenderConfig::Inforu(config) => Arc::new(InforuSender::new(config.clone())?),
        })
    }
}

/// Refuses a text longer than [`SMS_TEXT_CHARS_MAX`] characters.
pub(crate) fn check_text_len(text: &str) -> Result<(), SmsError> {
    let chars = text.chars().count();
    if chars > SMS_TEXT_CHARS_MAX {
        return Err(SmsError::TextTooLong {
            chars,
            max: SMS_TEXT_CHARS_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_network_failures_are_unavailable() {
        assert!(
            SmsError::Unavailable {
                detail: "connection refused".into()
            }
            .is_unavailable()
        );
        assert!(SmsError::TimedOut { timeout_ms: 200 }.is_unavailable());
        assert!(
            !SmsError::Unauthorized {
                detail: String::new()
            }
            .is_unavailable()
        );
        assert!(!SmsError::HttpStatus { status: 404 }.is_unavailable());
    }

    #[test]
    fn sender_config_parses_from_toml() {
        let outbox: SmsSenderConfig =
            toml::from_str("sender = \"outbox\"\npath = \"/tmp/sms.jsonl\"").unwrap();
        assert_eq!(
            outbox,
            SmsSenderConfig::Outbox {
                path: "/tmp/sms.jsonl".into()
            }
        );
        let inforu: SmsSenderConfig = toml::from_str(
            "sender = \"inforu\"\nusername = \"branch7\"\napi_token = \"s3cr3t-token\"\nsender_name = \"CartWise\"",
        )
        .unwrap();
        let SmsSenderConfig::Inforu(config) = inforu else {
            panic!("not inforu")
        };
        assert_eq!(config.endpoint_url, INFORU_ENDPOINT_DEFAULT);
        assert_eq!(config.timeout_ms, INFORU_TIMEOUT_MS_DEFAULT);
        assert!(!format!("{config:?}").contains("s3cr3t"));
        let policy: SmsUnavailablePolicy = serde_json::from_str("\"allow_token\"").unwrap();
        assert_eq!(policy, SmsUnavailablePolicy::AllowToken);
        assert!(policy.token_path_serves());
        assert!(!SmsUnavailablePolicy::default().token_path_serves());
    }

    #[test]
    fn long_texts_are_refused() {
        assert!(check_text_len(&"א".repeat(SMS_TEXT_CHARS_MAX)).is_ok());
        assert!(matches!(
            check_text_len(&"a".repeat(SMS_TEXT_CHARS_MAX + 1)),
            Err(SmsError::TextTooLong {
                chars: 481,
                max: 480
            })
        ));
    }
}
