//! Loading and creating the CAs and the hub's server certificate in Postgres, race-safe across
//! hub processes (insert if absent, then read back the row that won).

use cartwise_schema::ChainId;
use cartwise_sync_core::identity::{self, certs_from_pem, inspect_certificate, key_from_pem};
use rcgen::{CertificateParams, KeyPair};
use sqlx::{PgPool, Row};

use super::{HubIdentity, PkiError, StoredCa, first_cert, unix_now};

/// A new self-signed CA from `params`: (certificate PEM, key PEM).
fn self_signed(params: CertificateParams) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The platform CA, created on first call (by whichever hub gets there first).
pub async fn load_or_create_platform_ca(pool: &PgPool) -> Result<StoredCa, PkiError> {
    if let Some(ca) = read_platform_ca(pool).await? {
        return Ok(ca);
    }
    let (cert_pem, key_pem) = self_signed(identity::platform_ca_params(unix_now())?)?;
    sqlx::query(
        "INSERT INTO certificate_authorities (kind, cert_pem, key_pem) \
         VALUES ('platform', $1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(&cert_pem)
    .bind(&key_pem)
    .execute(pool)
    .await
    .map_err(PkiError::db("creating the platform CA"))?;
    read_platform_ca(pool).await?.ok_or(PkiError::Db {
        what: "reading back the platform CA",
        source: sqlx::Error::RowNotFound,
    })
}

async fn read_platform_ca(pool: &PgPool) -> Result<Option<StoredCa>, PkiError> {
    let row = sqlx::query(
        "SELECT cert_pem, key_pem FROM certificate_authorities WHERE kind = 'platform'",
    )
    .fetch_optional(pool)
    .await
    .map_err(PkiError::db("reading the platform CA"))?;
    row.map(|row| StoredCa::from_pem("platform CA", row.get(0), row.get(1)))
        .transpose()
}

/// The CA of `chain`, created on first need. The chain must exist.
pub async fn load_or_create_chain_ca(pool: &PgPool, chain: ChainId) -> Result<StoredCa, PkiError> {
    if let Some(ca) = read_chain_ca(pool, chain).await? {
        return Ok(ca);
    }
    let (cert_pem, key_pem) = self_signed(identity::chain_ca_params(chain, unix_now())?)?;
    sqlx::query(
        "INSERT INTO certificate_authorities (kind, chain_id, cert_pem, key_pem) \
         VALUES ('chain', $1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(chain.as_uuid())
    .bind(&cert_pem)
    .bind(&key_pem)
    .execute(pool)
    .await
    .map_err(PkiError::db("creating a chain CA"))?;
    read_chain_ca(pool, chain).await?.ok_or(PkiError::Db {
        what: "reading back a chain CA",
        source: sqlx::Error::RowNotFound,
    })
}

async fn read_chain_ca(pool: &PgPool, chain: ChainId) -> Result<Option<StoredCa>, PkiError> {
    let row = sqlx::query(
        "SELECT cert_pem, key_pem FROM certificate_authorities \
         WHERE kind = 'chain' AND chain_id = $1",
    )
    .bind(chain.as_uuid())
    .fetch_optional(pool)
    .await
    .map_err(PkiError::db("reading a chain CA"))?;
    row.map(|row| StoredCa::from_pem("chain CA", row.get(0), row.get(1)))
        .transpose()
}

/// Every chain CA certificate (not the keys): what the hub trusts for client certificates.
pub async fn load_chain_cas(
    pool: &PgPool,
) -> Result<Vec<(ChainId, rustls::pki_types::CertificateDer<'static>)>, PkiError> {
    let rows = sqlx::query(
        "SELECT chain_id, cert_pem FROM certificate_authorities WHERE kind = 'chain' \
         ORDER BY created_at",
    )
    .fetch_all(pool)
    .await
    .map_err(PkiError::db("reading the chain CAs"))?;
    rows.into_iter()
        .map(|row| {
            let chain = ChainId::from_uuid(row.get(0));
            let pem: String = row.get(1);
            Ok((chain, first_cert("chain CA", &pem)?))
        })
        .collect()
}

/// The hub's server certificate and key, created (signed by the platform CA) on first call and
/// replaced once less than a third of its life is left. Every hub process shares it.
pub async fn load_or_create_hub_identity(pool: &PgPool) -> Result<HubIdentity, PkiError> {
    let platform_ca = load_or_create_platform_ca(pool).await?;
    let current = read_hub(pool).await?;
    let due = match &current {
        None => true,
        Some((cert_pem, _)) => {
            let der = first_cert("hub certificate", cert_pem)?;
            inspect_certificate(&der)
                .map(|info| info.renewal_due(unix_now()))
                .unwrap_or(true)
        }
    };
    if due {
        let key = KeyPair::generate()?;
        let cert =
            identity::hub_server_params(unix_now())?.signed_by(&key, &platform_ca.issuer()?)?;
        let not_after = inspect_certificate(cert.der())
            .map(|info| info.not_after_unix)
            .unwrap_or(0);
        // Replace only the row this process saw, so concurrent hubs converge on one.
        let old = current.as_ref().map(|(cert_pem, _)| cert_pem.as_str());
        sqlx::query(
            "INSERT INTO hub_identity (id, cert_pem, key_pem, not_after) \
             VALUES (true, $1, $2, to_timestamp($3)) \
             ON CONFLICT (id) DO UPDATE SET cert_pem = $1, key_pem = $2, not_after = to_timestamp($3), \
             created_at = now() WHERE hub_identity.cert_pem = $4",
        )
        .bind(cert.pem())
        .bind(key.serialize_pem())
        .bind(not_after as f64)
        .bind(old)
        .execute(pool)
        .await
        .map_err(PkiError::db("storing the hub certificate"))?;
    }
    let (cert_pem, key_pem) = read_hub(pool).await?.ok_or(PkiError::Db {
        what: "reading back the hub certificate",
        source: sqlx::Error::RowNotFound,
    })?;
    let stored = |source| PkiError::Stored {
        what: "hub certificate",
        source,
    };
    let mut chain = certs_from_pem(&cert_pem).map_err(stored)?;
    chain.truncate(1);
    chain.push(platform_ca.cert_der.clone());
    Ok(HubIdentity {
        chain,
        key: key_from_pem(&key_pem).map_err(stored)?,
        platform_ca,
    })
}

async fn read_hub(pool: &PgPool) -> Result<Option<(String, String)>, PkiError> {
    let row = sqlx::query("SELECT cert_pem, key_pem FROM hub_identity WHERE id")
        .fetch_optional(pool)
        .await
        .map_err(PkiError::db("reading the hub certificate"))?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}
