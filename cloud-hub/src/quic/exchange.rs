//! The hub's side of the enrollment and renewal exchanges: one request frame in, one response
//! frame out, on the first bidirectional stream the device opens.

use std::time::Duration;

use cartwise_sync_core::identity::ChainCaRegistry;
use cartwise_sync_core::identity::{
    ENROLL_FRAME_HEADER_LEN, EnrollRequest, EnrollResponse, EnrollWireError, Granted, PeerIdentity,
    RenewRequest, decode_enroll_payload, encode_enroll_frame, enroll_frame_len,
};
use serde::de::DeserializeOwned;
use sqlx::PgPool;

use super::close_code;
use super::revocation::refresh_chain_cas;
use crate::enroll::{self, EnrollError};
use crate::pki::{self, IssuedCert, PkiError};

/// The longest an enrollment or renewal exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the device to close after it was answered.
const LINGER: Duration = Duration::from_secs(5);

/// Why an exchange broke off (the peer's fault or the network's).
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("reading the request: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("writing the response: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error(transparent)]
    Wire(#[from] EnrollWireError),
    #[error("timed out")]
    Timeout,
}

async fn read_frame<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, ExchangeError> {
    let mut header = [0u8; ENROLL_FRAME_HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let mut payload = vec![0u8; enroll_frame_len(header)?];
    recv.read_exact(&mut payload).await?;
    Ok(decode_enroll_payload(&payload)?)
}

/// Runs `exchange` (request → response) under a timeout, then lets the device close.
async fn serve<Req, F, Fut>(connection: quinn::Connection, exchange: F)
where
    Req: DeserializeOwned,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = EnrollResponse>,
{
    let result = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let (mut send, mut recv) = connection.accept_bi().await?;
        let request: Req = read_frame(&mut recv).await?;
        let response = exchange(request).await;
        send.write_all(&encode_enroll_frame(&response)?).await?;
        send.finish()?;
        Ok::<(), ExchangeError>(())
    })
    .await
    .unwrap_or(Err(ExchangeError::Timeout));
    match result {
        Ok(()) => {
            let _ = tokio::time::timeout(LINGER, connection.closed()).await;
            connection.close(close_code::DONE.into(), b"done");
        }
        Err(error) => {
            tracing::info!(remote = %connection.remote_address(), %error, "exchange failed");
            connection.close(close_code::PROTOCOL.into(), error.to_string().as_bytes());
        }
    }
}

/// What a device is told when the hub itself failed: nothing about the hub's internals.
const HUB_FAILED: &str = "the hub could not complete the request (internal error); retry later";

fn granted(identity: &PeerIdentity, issued: IssuedCert, platform_ca_pem: &str) -> EnrollResponse {
    EnrollResponse::Granted(Granted {
        cert_chain_pem: issued.cert_chain_pem,
        platform_ca_pem: platform_ca_pem.to_owned(),
        chain_id: identity.chain,
        branch_id: identity.branch,
        device_id: identity.device,
    })
}

/// `cartwise-enroll/1`: a code and a CSR in, a certificate (or a clear refusal) out.
pub(super) async fn enroll(
    pool: &PgPool,
    registry: &ChainCaRegistry,
    platform_ca_pem: &str,
    connection: quinn::Connection,
) {
    serve(connection, |request: EnrollRequest| async move {
        match enroll::enroll(pool, &request.code, &request.csr_pem).await {
            Ok(enrolled) => {
                tracing::info!(device = %enrolled.identity.device, "device enrolled");
                // Trust the chain's CA at once if this enrollment created it.
                if !registry.contains(enrolled.identity.chain)
                    && let Err(error) = refresh_chain_cas(pool, registry).await
                {
                    tracing::warn!(%error, "loading the new chain CA failed");
                }
                granted(&enrolled.identity, enrolled.issued, platform_ca_pem)
            }
            Err(error @ (EnrollError::Db { .. } | EnrollError::Pki(PkiError::Db { .. }))) => {
                tracing::warn!(%error, "enrollment failed");
                EnrollResponse::Error(HUB_FAILED.to_owned())
            }
            Err(error) => {
                tracing::info!(%error, "enrollment refused");
                EnrollResponse::Error(error.to_string())
            }
        }
    })
    .await;
}

/// `cartwise-renew/1`: an authenticated device sends a CSR for a new key and gets a new
/// certificate with the identity of its current one.
pub(super) async fn renew(
    pool: &PgPool,
    platform_ca_pem: &str,
    connection: quinn::Connection,
    identity: PeerIdentity,
) {
    serve(connection, |request: RenewRequest| async move {
        match pki::issue_device_cert(pool, &identity, &request.csr_pem).await {
            Ok(issued) => {
                tracing::info!(device = %identity.device, "certificate renewed");
                granted(&identity, issued, platform_ca_pem)
            }
            Err(error @ PkiError::BadCsr(_)) => EnrollResponse::Error(error.to_string()),
            Err(error) => {
                tracing::warn!(%error, "renewal failed");
                EnrollResponse::Error(HUB_FAILED.to_owned())
            }
        }
    })
    .await;
}
