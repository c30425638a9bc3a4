//! Enrollment codes, certificate authorities and revocation against a real Postgres (no QUIC:
//! the loopback runs are in the workspace `tests` crate).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cartwise_cloud_hub::enroll::{self, EnrollError};
use cartwise_cloud_hub::pki::{self, ConnectRefusal, RevokeOutcome};
use cartwise_schema::{BranchId, ChainId};
use cartwise_sync_core::identity::{PeerIdentity, device_csr_params, inspect_certificate};
use sqlx::PgPool;

/// A chain with one branch whose code is `code`.
async fn branch(pool: &PgPool, code: &str) -> (ChainId, BranchId) {
    let chain: uuid::Uuid =
        sqlx::query_scalar("INSERT INTO chains (name, slug) VALUES ($1, $1) RETURNING id")
            .bind(format!("chain-{code}"))
            .fetch_one(pool)
            .await
            .unwrap();
    let branch: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO branches (chain_id, name, branch_code) VALUES ($1, $2, $2) RETURNING id",
    )
    .bind(chain)
    .bind(code)
    .fetch_one(pool)
    .await
    .unwrap();
    (ChainId::from_uuid(chain), BranchId::from_uuid(branch))
}

fn csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    device_csr_params()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_code_enrolls_its_device_once(pool: PgPool) {
    let (chain, branch) = branch(&pool, "TLV-01").await;
    let new = enroll::add_device(&pool, "TLV-01", "pi-1", enroll::CODE_TTL_DEFAULT)
        .await
        .unwrap();
    assert_eq!((new.chain, new.branch), (chain, branch));

    // A bad request does not burn the code.
    let error = enroll::enroll(&pool, &new.code.grouped(), "not a csr")
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("certificate request is invalid"),
        "{error}"
    );

    let enrolled = enroll::enroll(&pool, &new.code.grouped().to_lowercase(), &csr())
        .await
        .unwrap();
    assert_eq!(
        enrolled.identity,
        PeerIdentity::device(chain, branch, new.device)
    );
    let cert =
        cartwise_sync_core::identity::certs_from_pem(&enrolled.issued.cert_chain_pem).unwrap();
    assert_eq!(cert.len(), 2, "device certificate then chain CA");
    assert_eq!(
        PeerIdentity::from_cert_der(&cert[0]).unwrap(),
        enrolled.identity
    );
    let info = inspect_certificate(&cert[0]).unwrap();
    assert_eq!(info.serial_hex, enrolled.issued.serial_hex);
    let allowed = pki::check_device_allowed(&pool, &enrolled.identity, &info.serial_hex)
        .await
        .unwrap();
    assert_eq!(allowed, Ok(()));

    let again = enroll::enroll(&pool, &new.code.grouped(), &csr())
        .await
        .unwrap_err();
    assert!(matches!(again, EnrollError::UsedCode(_)), "{again:?}");
    assert!(again.to_string().contains("already used"), "{again}");
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn expired_unknown_and_malformed_codes_are_refused_clearly(pool: PgPool) {
    branch(&pool, "HFA-02").await;
    let new = enroll::add_device(&pool, "HFA-02", "pi-1", Duration::from_secs(3600))
        .await
        .unwrap();
    sqlx::query("UPDATE enrollment_codes SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let expired = enroll::enroll(&pool, &new.code.grouped(), &csr())
        .await
        .unwrap_err();
    assert!(
        matches!(expired, EnrollError::ExpiredCode(_)),
        "{expired:?}"
    );
    assert!(expired.to_string().contains("expired"), "{expired}");

    let unknown = enroll::enroll(&pool, "ABCD-EFGH-JKMN-PQRS-TVWX", &csr())
        .await
        .unwrap_err();
    assert!(matches!(unknown, EnrollError::UnknownCode), "{unknown:?}");
    let malformed = enroll::enroll(&pool, "hello", &csr()).await.unwrap_err();
    assert!(
        matches!(malformed, EnrollError::UnknownCode),
        "{malformed:?}"
    );

    let no_branch = enroll::add_device(&pool, "NOPE", "pi", enroll::CODE_TTL_DEFAULT)
        .await
        .unwrap_err();
    assert!(
        matches!(no_branch, EnrollError::UnknownBranch(_)),
        "{no_branch:?}"
    );
    // Only the hash of a code is stored.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT code_hash FROM enrollment_codes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&new.code.grouped()));
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn cas_and_the_hub_certificate_are_created_once_under_a_race(pool: PgPool) {
    let (chain, _) = branch(&pool, "EIL-03").await;
    let hubs = (0..6).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let hub = pki::load_or_create_hub_identity(&pool).await.unwrap();
            let ca = pki::load_or_create_chain_ca(&pool, chain).await.unwrap();
            (hub.platform_ca.cert_pem, hub.chain[0].to_vec(), ca.cert_pem)
        })
    });
    let mut seen = Vec::new();
    for hub in hubs {
        seen.push(hub.await.unwrap());
    }
    assert!(
        seen.windows(2).all(|pair| pair[0] == pair[1]),
        "every hub sees the same CAs"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM certificate_authorities")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 2, "one platform CA and one chain CA");
    assert_eq!(pki::load_chain_cas(&pool).await.unwrap().len(), 1);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_revoked_device_is_refused_and_cannot_get_a_new_code(pool: PgPool) {
    branch(&pool, "JLM-04").await;
    let new = enroll::add_device(&pool, "JLM-04", "pi-1", enroll::CODE_TTL_DEFAULT)
        .await
        .unwrap();
    let enrolled = enroll::enroll(&pool, &new.code.grouped(), &csr())
        .await
        .unwrap();
    let serial = enrolled.issued.serial_hex.clone();
    let live = [(new.device, serial.clone())];
    assert!(pki::revoked_among(&pool, &live).await.unwrap().is_empty());

    let outcome = pki::revoke_device(&pool, new.device).await.unwrap();
    assert_eq!(outcome, RevokeOutcome::Revoked { certificates: 1 });
    assert_eq!(
        pki::revoke_device(&pool, new.device).await.unwrap(),
        RevokeOutcome::AlreadyRevoked
    );
    let refused = pki::check_device_allowed(&pool, &enrolled.identity, &serial)
        .await
        .unwrap();
    assert_eq!(refused, Err(ConnectRefusal::Revoked));
    assert_eq!(
        pki::revoked_among(&pool, &live).await.unwrap(),
        vec![new.device]
    );
    let code = enroll::reissue_code(&pool, new.device, enroll::CODE_TTL_DEFAULT)
        .await
        .unwrap_err();
    assert!(matches!(code, EnrollError::DeviceRevoked), "{code:?}");

    // A serial the hub never recorded is refused even for a live device.
    let other = enroll::add_device(&pool, "JLM-04", "pi-2", enroll::CODE_TTL_DEFAULT)
        .await
        .unwrap();
    let other = enroll::enroll(&pool, &other.code.grouped(), &csr())
        .await
        .unwrap();
    let unknown = pki::check_device_allowed(&pool, &other.identity, "00ff")
        .await
        .unwrap();
    assert_eq!(unknown, Err(ConnectRefusal::UnknownCertificate));
}
