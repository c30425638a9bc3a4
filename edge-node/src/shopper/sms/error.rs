//! Why an SMS was not sent. Built with and without the `node` feature: the Inforu answer
//! parser (`inforu/answer.rs`) returns it, and its fuzz target builds without the daemon.

use std::path::PathBuf;

/// Why an SMS was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    /// The provider could not be reached (no network, DNS failure, connection refused) or
    /// answered that it is temporarily down (HTTP 5xx). Try later; meanwhile the branch
    /// policy applies.
    #[error("the SMS provider cannot be reached: {detail}")]
    Unavailable {
        /// What failed.
        detail: String,
    },
    /// The provider did not answer within the configured timeout. Counts as unavailable.
    #[error("the SMS provider did not answer within {timeout_ms} ms")]
    TimedOut {
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// The provider refused our credentials: check the username and API token in the SMS
    /// configuration.
    #[error(
        "the SMS provider refused the credentials ({detail}); check the username and API token"
    )]
    Unauthorized {
        /// The provider's words.
        detail: String,
    },
    /// The account has no SMS credit left: top it up with the provider.
    #[error("the SMS account's quota is exhausted ({detail}); top up the account")]
    QuotaExhausted {
        /// The provider's words.
        detail: String,
    },
    /// The provider refused the recipient number.
    #[error("the SMS provider refused the recipient ({detail})")]
    RecipientRefused {
        /// The provider's words.
        detail: String,
    },
    /// The provider refused the sender name: use a sender name approved on the account.
    #[error(
        "the SMS provider refused the sender name ({detail}); use a sender name approved on the account"
    )]
    SenderRefused {
        /// The provider's words.
        detail: String,
    },
    /// The provider refused the message for another reason.
    #[error("the SMS provider refused the message with status {status}: {detail}")]
    Refused {
        /// The provider's status code.
        status: i32,
        /// The provider's words.
        detail: String,
    },
    /// An HTTP status that is neither success nor a known failure (e.g. 404: a wrong
    /// endpoint URL in the configuration).
    #[error("the SMS provider answered HTTP {status}; check the endpoint URL")]
    HttpStatus {
        /// The HTTP status code.
        status: u16,
    },
    /// The provider's answer could not be understood.
    #[error("the SMS provider's answer could not be understood: {detail}")]
    BadResponse {
        /// What was wrong with it.
        detail: String,
    },
    /// The message itself is not sendable (too long).
    #[error("the SMS text has {chars} characters, more than the {max} allowed")]
    TextTooLong {
        /// Characters in the text.
        chars: usize,
        /// The maximum.
        max: usize,
    },
    /// The sender's configuration is not valid.
    #[error("SMS configuration: {detail}")]
    Config {
        /// Which field, and what is wrong.
        detail: String,
    },
    /// Writing the development outbox failed.
    #[error("writing the SMS outbox {path}: {source}")]
    Outbox {
        /// The outbox file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl SmsError {
    /// Whether the failure is "cannot reach the provider now" (network down, timeout,
    /// provider outage), as opposed to a refusal that retrying will not fix.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            SmsError::Unavailable { .. } | SmsError::TimedOut { .. }
        )
    }
}
