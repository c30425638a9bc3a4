//! Branch settings the hub sets through intents (`branch_settings`): each overrides the
//! configuration where that is read — the rental time of new rentals, the shopper sign-in's
//! policy while SMS cannot be sent, the kiosk's default answer language — and the desired
//! firmware version `/health` reports. The latest intent wins.

use cartwise_sync_core::intents::{Intent, KioskLanguage, OtpFallback};
use rusqlite::{Connection, OptionalExtension, params};

use super::Engine;
use crate::store::StoreError;

/// `branch_settings` keys.
pub(super) const SETTING_RENTAL_MINUTES: &str = "rental_minutes";
pub(super) const SETTING_OTP_POLICY: &str = "otp_when_sms_unavailable";
pub(super) const SETTING_LANGUAGE: &str = "kiosk_language";
pub(super) const SETTING_FIRMWARE: &str = "firmware_version";

/// The version this build is.
pub const FIRMWARE_CURRENT: &str = env!("CARGO_PKG_VERSION");

/// The firmware this device runs and the one the hub asked for, for `/health`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Firmware {
    pub current: String,
    pub desired: Option<String>,
}

/// One `branch_settings` value, if set.
pub(super) fn setting(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT value FROM branch_settings WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?)
}

/// Records a setting an intent made (the latest intent wins).
pub(super) fn put_setting(
    conn: &Connection,
    key: &str,
    value: &str,
    intent: &Intent,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO branch_settings (key, value, intent) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, intent = excluded.intent",
        params![key, value, intent.id.to_string()],
    )?;
    Ok(())
}

/// The rental time set by the hub's latest `set_rental_minutes`, if any.
pub(crate) fn rental_minutes_override(conn: &Connection) -> Result<Option<u32>, StoreError> {
    Ok(setting(conn, SETTING_RENTAL_MINUTES)?.and_then(|v| v.parse().ok()))
}

impl Engine {
    /// The setting `key`, parsed; `None` when unset or not understood.
    async fn parsed_setting<T: Send + 'static>(
        &self,
        key: &'static str,
        parse: fn(&str) -> Option<T>,
    ) -> Result<Option<T>, StoreError> {
        self.store
            .read(move |conn, _| Ok(setting(conn, key)?.and_then(|v| parse(&v))))
            .await
    }

    /// The firmware this device runs and the one the hub last asked for.
    pub async fn firmware(&self) -> Result<Firmware, StoreError> {
        Ok(Firmware {
            current: FIRMWARE_CURRENT.to_owned(),
            desired: self
                .parsed_setting(SETTING_FIRMWARE, |v| Some(v.to_owned()))
                .await?,
        })
    }

    /// The rental time new rentals get: the hub's override if any, else the configuration.
    pub async fn rental_minutes(&self) -> Result<u32, StoreError> {
        let minutes = self
            .parsed_setting(SETTING_RENTAL_MINUTES, |v| v.parse().ok())
            .await?;
        Ok(minutes.unwrap_or(self.config.rental_minutes))
    }

    /// The sign-in policy while SMS cannot be sent that the hub's latest `set_otp_policy`
    /// set, if any (else the configuration's stands).
    pub async fn otp_policy_override(&self) -> Result<Option<OtpFallback>, StoreError> {
        self.parsed_setting(SETTING_OTP_POLICY, OtpFallback::parse)
            .await
    }

    /// The kiosk's default answer language the hub's latest `set_language` set, if any (else
    /// Hebrew).
    pub async fn language_override(&self) -> Result<Option<KioskLanguage>, StoreError> {
        self.parsed_setting(SETTING_LANGUAGE, KioskLanguage::parse)
            .await
    }
}
