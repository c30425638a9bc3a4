//! `InforuSender`: sends SMS through Inforu's HTTP API.
//!
//! The request follows Inforu's public XML API ("SMS Gateway Interface", send SMS using the
//! HTTP post interface): a form POST of one field, `InforuXML`, holding
//!
//! ```xml
//! <Inforu>
//!   <User><Username>…</Username><ApiToken>…</ApiToken></User>
//!   <Content Type="sms"><Message>…</Message></Content>
//!   <Recipients><PhoneNumber>05XXXXXXXX</PhoneNumber></Recipients>
//!   <Settings><Sender>…</Sender></Settings>
//! </Inforu>
//! ```
//!
//! to `https://api.inforu.co.il/SendMessageXml.ashx` (configurable), answered by
//! `<Result><Status>1</Status><Description>…</Description>…</Result>`. Status `1` is success;
//! a negative status is an error, mapped to an [`SmsError`] that says what to do (the codes
//! named below are those of Inforu's public status table; any other is `Refused` with the
//! provider's description).
//!
//! Every request is bounded by `timeout_ms` (connect, send and the whole answer), and the
//! answer body by [`INFORU_RESPONSE_BYTES_MAX`]. TLS is rustls (ring) with bundled web roots.

use std::time::Duration;

use super::{SmsError, SmsFuture, SmsMessage, SmsSender, check_text_len};

mod answer;
#[cfg(test)]
mod tests;

pub use answer::check_result;

/// Inforu's documented XML send endpoint.
pub const INFORU_ENDPOINT_DEFAULT: &str = "https://api.inforu.co.il/SendMessageXml.ashx";
/// Default bound on one request, connect to last byte.
pub const INFORU_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Longest timeout accepted in the configuration.
pub const INFORU_TIMEOUT_MS_MAX: u64 = 60_000;
/// Longest answer body read; an answer is a few hundred bytes.
pub const INFORU_RESPONSE_BYTES_MAX: usize = 16 * 1024;
/// Longest sender name accepted (Inforu: up to 11 letters, or a phone number).
pub const INFORU_SENDER_NAME_CHARS_MAX: usize = 15;

/// Inforu account settings (`[sms]` with `sender = "inforu"` in the daemon config).
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InforuConfig {
    /// The send endpoint. Default [`INFORU_ENDPOINT_DEFAULT`].
    #[serde(default = "endpoint_url_default")]
    pub endpoint_url: String,
    /// The account's user name.
    pub username: String,
    /// The account's API token (a secret: never logged).
    pub api_token: String,
    /// The sender shown on the shopper's phone, approved on the account.
    pub sender_name: String,
    /// Bound on one request, in milliseconds. Default [`INFORU_TIMEOUT_MS_DEFAULT`].
    #[serde(default = "timeout_ms_default")]
    pub timeout_ms: u64,
}

fn endpoint_url_default() -> String {
    INFORU_ENDPOINT_DEFAULT.to_owned()
}

fn timeout_ms_default() -> u64 {
    INFORU_TIMEOUT_MS_DEFAULT
}

impl std::fmt::Debug for InforuConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InforuConfig")
            .field("endpoint_url", &self.endpoint_url)
            .field("username", &self.username)
            .field("api_token", &"<redacted>")
            .field("sender_name", &self.sender_name)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl InforuConfig {
    /// Checks every field; the error names the field.
    fn validate(&self) -> Result<reqwest::Url, SmsError> {
        let config_error = |detail: String| SmsError::Config { detail };
        let endpoint = reqwest::Url::parse(&self.endpoint_url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| config_error("sms.endpoint_url must be an http(s) URL".into()))?;
        if self.username.trim().is_empty() {
            return Err(config_error("sms.username must not be empty".into()));
        }
        if self.api_token.trim().is_empty() {
            return Err(config_error("sms.api_token must not be empty".into()));
        }
        let sender_chars = self.sender_name.trim().chars().count();
        if sender_chars == 0 || sender_chars > INFORU_SENDER_NAME_CHARS_MAX {
            return Err(config_error(format!(
                "sms.sender_name must have 1 to {INFORU_SENDER_NAME_CHARS_MAX} characters"
            )));
        }
        if !(1..=INFORU_TIMEOUT_MS_MAX).contains(&self.timeout_ms) {
            return Err(config_error(format!(
                "sms.timeout_ms must be 1 to {INFORU_TIMEOUT_MS_MAX}"
            )));
        }
        Ok(endpoint)
    }
}

/// Sends SMS through Inforu.
#[derive(Debug)]
pub struct InforuSender {
    config: InforuConfig,
    endpoint: reqwest::Url,
    client: reqwest::Client,
}

impl InforuSender {
    /// A sender for a validated configuration.
    pub fn new(config: InforuConfig) -> Result<Self, SmsError> {
        let endpoint = config.validate()?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|error| SmsError::Config {
                detail: format!("building the HTTP client: {error}"),
            })?;
        Ok(Self {
            config,
            endpoint,
            client,
        })
    }

    async fn send_one(&self, message: &SmsMessage) -> Result<(), SmsError> {
        check_text_len(&message.text)?;
        let form = [("InforuXML", request_xml(&self.config, message))];
        let timeout_ms = self.config.timeout_ms;
        let mut response = self
            .client
            .post(self.endpoint.clone())
            .form(&form)
            .send()
            .await
            .map_err(|error| transport_error(&error, timeout_ms))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(SmsError::Unavailable {
                detail: format!("the provider answered HTTP {status}"),
            });
        }
        if matches!(status.as_u16(), 401 | 403) {
            return Err(SmsError::Unauthorized {
                detail: format!("HTTP {status}"),
            });
        }
        if !status.is_success() {
            return Err(SmsError::HttpStatus {
                status: status.as_u16(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| transport_error(&error, timeout_ms))?
        {
            if body.len() + chunk.len() > INFORU_RESPONSE_BYTES_MAX {
                return Err(SmsError::BadResponse {
                    detail: format!("the answer is longer than {INFORU_RESPONSE_BYTES_MAX} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        check_result(&String::from_utf8_lossy(&body))
    }
}

impl SmsSender for InforuSender {
    fn send<'a>(&'a self, message: &'a SmsMessage) -> SmsFuture<'a> {
        Box::pin(self.send_one(message))
    }

    fn name(&self) -> &str {
        "inforu"
    }
}

/// The `InforuXML` document for one message.
fn request_xml(config: &InforuConfig, message: &SmsMessage) -> String {
    format!(
        "<Inforu><User><Username>{}</Username><ApiToken>{}</ApiToken></User>\
         <Content Type=\"sms\"><Message>{}</Message></Content>\
         <Recipients><PhoneNumber>{}</PhoneNumber></Recipients>\
         <Settings><Sender>{}</Sender></Settings></Inforu>",
        xml_escape(config.username.trim()),
        xml_escape(config.api_token.trim()),
        xml_escape(&message.text),
        message.to.national(),
        xml_escape(config.sender_name.trim()),
    )
}

/// Escapes the five XML special characters.
fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// A failure before a full HTTP answer arrived.
fn transport_error(error: &reqwest::Error, timeout_ms: u64) -> SmsError {
    if error.is_timeout() {
        return SmsError::TimedOut { timeout_ms };
    }
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    SmsError::Unavailable { detail }
}
