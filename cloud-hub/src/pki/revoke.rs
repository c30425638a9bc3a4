//! Revocation: marking a device (and every certificate it holds) revoked, and the checks the
//! QUIC endpoint runs at connect and every few seconds on live connections.

use cartwise_schema::DeviceId;
use cartwise_sync_core::identity::PeerIdentity;
use sqlx::{PgPool, Row};

use super::PkiError;

/// What `revoke_device` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// The device is now revoked; `certificates` of its certificates were revoked with it.
    Revoked {
        /// How many certificates were newly revoked.
        certificates: u64,
    },
    /// The device was revoked before; nothing changed.
    AlreadyRevoked,
    /// No device has this id.
    UnknownDevice,
}

/// Why a device with a valid certificate is refused at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefusal {
    /// No device row has this id (deleted, or a database restored from an old backup).
    #[error("unknown device: no device has this id; enroll it again")]
    UnknownDevice,
    /// The device was revoked (`cartwise-hub device revoke`).
    #[error("device revoked: it may not sync; enroll a new device if this is a mistake")]
    Revoked,
    /// The device is now in another branch or chain than its certificate says.
    #[error(
        "the device's branch or chain changed since its certificate was issued; enroll it again"
    )]
    WrongScope,
    /// The certificate's serial was never recorded as issued to this device.
    #[error("certificate not issued to this device; enroll it again")]
    UnknownCertificate,
    /// This certificate was revoked.
    #[error("certificate revoked; enroll the device again")]
    CertificateRevoked,
}

/// Revokes `device`: marks the device and all its certificates revoked and voids its unused
/// enrollment codes, in one transaction. Connected sessions are closed by the endpoint's
/// revocation watcher within seconds.
pub async fn revoke_device(pool: &PgPool, device: DeviceId) -> Result<RevokeOutcome, PkiError> {
    let db = PkiError::db;
    let mut tx = pool.begin().await.map_err(db("revoking a device"))?;
    let row = sqlx::query("SELECT revoked_at IS NOT NULL FROM devices WHERE id = $1 FOR UPDATE")
        .bind(device.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("revoking a device"))?;
    let Some(row) = row else {
        return Ok(RevokeOutcome::UnknownDevice);
    };
    if row.get::<bool, _>(0) {
        return Ok(RevokeOutcome::AlreadyRevoked);
    }
    sqlx::query("UPDATE devices SET revoked_at = now() WHERE id = $1")
        .bind(device.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(db("revoking a device"))?;
    let certificates = sqlx::query(
        "UPDATE device_certificates SET revoked_at = now() \
         WHERE device_id = $1 AND revoked_at IS NULL",
    )
    .bind(device.as_uuid())
    .execute(&mut *tx)
    .await
    .map_err(db("revoking a device's certificates"))?
    .rows_affected();
    sqlx::query(
        "UPDATE enrollment_codes SET expires_at = least(expires_at, now()) \
         WHERE device_id = $1 AND used_at IS NULL",
    )
    .bind(device.as_uuid())
    .execute(&mut *tx)
    .await
    .map_err(db("voiding a device's enrollment codes"))?;
    // The branch's peers learn it from the intents document (they refuse the device on the
    // LAN without the hub). A damaged document does not stop the revocation: a savepoint.
    let at_ms = chrono::Utc::now().timestamp_millis();
    let mut savepoint = sqlx::Connection::begin(&mut *tx)
        .await
        .map_err(db("revoking a device"))?;
    match crate::enroll::put_revoked_in_intents(&mut savepoint, device, at_ms).await {
        Ok(_) => savepoint
            .commit()
            .await
            .map_err(db("recording the revocation for the branch"))?,
        Err(crate::enroll::RevocationDocError::Db { what, source }) => {
            return Err(PkiError::Db { what, source });
        }
        Err(error) => {
            tracing::error!(%device, %error, "revocation not written into the intents document");
            savepoint
                .rollback()
                .await
                .map_err(db("recording the revocation for the branch"))?;
        }
    }
    tx.commit().await.map_err(db("revoking a device"))?;
    Ok(RevokeOutcome::Revoked { certificates })
}

/// Whether a device presenting a verified certificate (`identity`, `serial_hex`) may connect.
/// `Ok(Err(refusal))` is a refusal; `Err` is a database failure.
pub async fn check_device_allowed(
    pool: &PgPool,
    identity: &PeerIdentity,
    serial_hex: &str,
) -> Result<Result<(), ConnectRefusal>, PkiError> {
    let row = sqlx::query(
        "SELECT d.revoked_at IS NOT NULL, d.branch_id, b.chain_id, \
                c.serial IS NOT NULL, c.revoked_at IS NOT NULL \
         FROM devices d JOIN branches b ON b.id = d.branch_id \
         LEFT JOIN device_certificates c ON c.serial = $2 AND c.device_id = d.id \
         WHERE d.id = $1",
    )
    .bind(identity.device.as_uuid())
    .bind(serial_hex)
    .fetch_optional(pool)
    .await
    .map_err(PkiError::db("checking a connecting device"))?;
    let Some(row) = row else {
        return Ok(Err(ConnectRefusal::UnknownDevice));
    };
    let (revoked, branch, chain, issued, cert_revoked): (bool, uuid::Uuid, uuid::Uuid, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    Ok(if revoked {
        Err(ConnectRefusal::Revoked)
    } else if branch != *identity.branch.as_uuid() || chain != *identity.chain.as_uuid() {
        Err(ConnectRefusal::WrongScope)
    } else if !issued {
        Err(ConnectRefusal::UnknownCertificate)
    } else if cert_revoked {
        Err(ConnectRefusal::CertificateRevoked)
    } else {
        Ok(())
    })
}

/// Of the given live connections (device, certificate serial), the devices that are revoked or
/// whose certificate is. One query, for the endpoint's revocation watcher.
pub async fn revoked_among(
    pool: &PgPool,
    live: &[(DeviceId, String)],
) -> Result<Vec<DeviceId>, PkiError> {
    if live.is_empty() {
        return Ok(Vec::new());
    }
    let devices: Vec<uuid::Uuid> = live.iter().map(|(device, _)| *device.as_uuid()).collect();
    let serials: Vec<&str> = live.iter().map(|(_, serial)| serial.as_str()).collect();
    let rows = sqlx::query(
        "SELECT id FROM devices WHERE id = ANY($1) AND revoked_at IS NOT NULL \
         UNION SELECT device_id FROM device_certificates \
         WHERE serial = ANY($2) AND revoked_at IS NOT NULL",
    )
    .bind(&devices)
    .bind(&serials)
    .fetch_all(pool)
    .await
    .map_err(PkiError::db("checking live devices for revocation"))?;
    Ok(rows
        .into_iter()
        .map(|row| DeviceId::from_uuid(row.get(0)))
        .collect())
}
