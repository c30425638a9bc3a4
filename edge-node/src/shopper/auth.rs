//! `ShopperAuth`: the sign-in steps of the kiosk API over the OTP book, the rate limits and
//! the token key. Pure and synchronous: the daemon holds it behind a lock, sends the SMS it
//! returns (outside the lock), and maps the [`ShopperMessage`] errors to HTTP answers.
//!
//! Order of checks, so that a malformed request never costs the shopper anything: parse
//! (done by the caller for the phone, here for the code) → rate limit → book.

use cartwise_schema::{MonoMillis, OtpCode, Phone, WallMillis};
use rand::CryptoRng;

use super::ShopperConfig;
use super::messages::{OTP_TTL_MINUTES, ShopperMessage};
use super::otp::{OtpBook, OtpBookConfig};
use super::rate_limit::{KioskKey, ShopperRateLimits};
use super::sms::{SmsError, SmsMessage, SmsUnavailablePolicy};
use super::token::{IssuedShopperToken, ShopperTokenClaims, ShopperTokenKey};

const DAY_MS: i64 = 24 * 60 * 60 * 1_000;

/// What `request-otp` sends and answers once the code is issued.
#[derive(Debug, Clone)]
pub struct OtpRequested {
    /// The SMS to send.
    pub sms: SmsMessage,
    /// The kiosk's answer once it is sent ([`ShopperMessage::OtpSent`]).
    pub reply: ShopperMessage,
    /// `expires_in_minutes` of the existing API.
    pub expires_in_minutes: u64,
}

/// Shopper sign-in state of one node.
#[derive(Debug)]
pub struct ShopperAuth {
    otp: OtpBook,
    limits: ShopperRateLimits,
    key: ShopperTokenKey,
    token_ttl_days: u32,
    sms_unavailable: SmsUnavailablePolicy,
}

impl ShopperAuth {
    /// Empty state for a validated `config` and the branch's token key.
    pub fn new(config: &ShopperConfig, key: ShopperTokenKey) -> Self {
        let otp_config = OtpBookConfig {
            pending_max: config.otp_pending_max,
            ..OtpBookConfig::default()
        };
        Self {
            otp: OtpBook::new(otp_config),
            limits: ShopperRateLimits::new(&config.rate_limits),
            key,
            token_ttl_days: config.token_ttl_days,
            sms_unavailable: config.sms_unavailable,
        }
    }

    /// `request-otp`: counts the request against the phone and the kiosk, then issues the
    /// code (the pending one again, if any) and the SMS that carries it.
    pub fn request_otp<R: CryptoRng + ?Sized>(
        &mut self,
        phone: &Phone,
        kiosk: &KioskKey,
        now: MonoMillis,
        rng: &mut R,
    ) -> Result<OtpRequested, ShopperMessage> {
        self.limits.check_otp_request(phone, kiosk, now)?;
        let issued = self.otp.request(phone, now, rng);
        let text = ShopperMessage::OtpSms { code: issued.code }.he();
        Ok(OtpRequested {
            sms: SmsMessage {
                to: phone.clone(),
                text,
                code: Some(issued.code.to_string()),
            },
            reply: ShopperMessage::OtpSent {
                phone: phone.clone(),
            },
            expires_in_minutes: OTP_TTL_MINUTES,
        })
    }

    /// `verify-otp`: parses and checks the typed code; on success issues a shopper token
    /// valid from wall time `wall`.
    pub fn verify_otp(
        &mut self,
        phone: &Phone,
        typed: &str,
        kiosk: &KioskKey,
        now: MonoMillis,
        wall: WallMillis,
    ) -> Result<IssuedShopperToken, ShopperMessage> {
        let code = OtpCode::parse(typed)?;
        self.limits.check_otp_verification(phone, kiosk, now)?;
        self.otp.verify(phone, &code, now)?;
        Ok(self
            .key
            .issue(phone, wall, i64::from(self.token_ttl_days) * DAY_MS))
    }

    /// Checks a shopper token (`Authorization: Bearer …`) at wall time `wall`.
    pub fn verify_token(
        &self,
        token: &str,
        wall: WallMillis,
    ) -> Result<ShopperTokenClaims, ShopperMessage> {
        self.key
            .verify(token, wall)
            .map_err(|error| ShopperMessage::from(&error))
    }

    /// What to tell the shopper when the SMS of [`Self::request_otp`] could not be sent.
    pub fn sms_failure_message(&self, error: &SmsError) -> ShopperMessage {
        ShopperMessage::for_sms_error(error, self.sms_unavailable)
    }

    /// The branch's policy while SMS is unavailable; the daemon, which knows whether the last
    /// send failed as unavailable, asks [`SmsUnavailablePolicy::token_path_serves`].
    pub fn sms_unavailable_policy(&self) -> SmsUnavailablePolicy {
        self.sms_unavailable
    }

    /// `token_expires_days` of the existing API.
    pub fn token_ttl_days(&self) -> u32 {
        self.token_ttl_days
    }

    /// Codes currently held (for `/health` and tests).
    pub fn otp_pending(&self) -> usize {
        self.otp.len()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn auth() -> ShopperAuth {
        ShopperAuth::new(
            &ShopperConfig::default(),
            ShopperTokenKey::from_bytes(&[9; 32]).unwrap(),
        )
    }

    #[test]
    fn request_verify_and_sign_in_with_the_token() {
        let mut auth = auth();
        let mut rng = StdRng::seed_from_u64(1);
        let phone = Phone::parse("0501234567").unwrap();
        let kiosk = KioskKey::from_id("kiosk-1");
        let requested = auth
            .request_otp(&phone, &kiosk, MonoMillis::new(0), &mut rng)
            .unwrap();
        let code = requested.sms.code.clone().unwrap();
        assert!(requested.sms.text.contains(&code));
        assert_eq!(requested.expires_in_minutes, 5);
        assert_eq!(requested.reply.he(), "קוד אימות נשלח למספר 0501234567");

        let wall = WallMillis::new(1_700_000_000_000);
        let wrong = if code == "0000" { "0001" } else { "0000" };
        let error = auth
            .verify_otp(&phone, wrong, &kiosk, MonoMillis::new(1), wall)
            .unwrap_err();
        assert!(matches!(
            error,
            ShopperMessage::WrongCode { attempts_left: 2 }
        ));
        let error = auth
            .verify_otp(&phone, "12a4", &kiosk, MonoMillis::new(1), wall)
            .unwrap_err();
        assert!(matches!(error, ShopperMessage::InvalidCode(_)));

        let issued = auth
            .verify_otp(&phone, &code, &kiosk, MonoMillis::new(2), wall)
            .unwrap();
        assert_eq!(auth.token_ttl_days(), 30);
        let claims = auth.verify_token(&issued.token, wall).unwrap();
        assert_eq!(claims.phone, phone);
        assert_eq!(auth.otp_pending(), 0);
        assert!(matches!(
            auth.verify_token("garbage", wall),
            Err(ShopperMessage::TokenInvalid)
        ));
    }

    #[test]
    fn the_fourth_request_in_a_burst_is_rate_limited() {
        let mut auth = auth();
        let mut rng = StdRng::seed_from_u64(2);
        let phone = Phone::parse("0501234567").unwrap();
        let kiosk = KioskKey::from_id("kiosk-1");
        for _ in 0..3 {
            auth.request_otp(&phone, &kiosk, MonoMillis::new(0), &mut rng)
                .unwrap();
        }
        let refused = auth
            .request_otp(&phone, &kiosk, MonoMillis::new(0), &mut rng)
            .unwrap_err();
        assert_eq!(refused.he(), "יותר מדי בקשות. נסו שוב בעוד 4 דקות");
        let offline = SmsError::Unavailable {
            detail: "no route".into(),
        };
        assert!(matches!(
            auth.sms_failure_message(&offline),
            ShopperMessage::SmsUnavailable { .. }
        ));
    }
}
