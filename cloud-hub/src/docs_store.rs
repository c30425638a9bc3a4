//! The hub's copies of Automerge documents and its per-peer sync progress, in Postgres (the
//! hub keeps no state outside it): a compacted snapshot per document, and one sync state per
//! (document, peer) so a reconnect resumes in one round trip.

use automerge::AutoCommit;
use cartwise_schema::{BranchId, DeviceId};
use cartwise_sync_core::{DocId, PeerDocState};
use sqlx::PgPool;

/// Why a stored document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the stored document {doc} does not load: {reason}")]
    Corrupt { doc: String, reason: String },
}

/// Loads a document, or a new empty one.
pub async fn load(pool: &PgPool, doc: &DocId) -> Result<AutoCommit, DocsError> {
    let bytes: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT snapshot FROM sync_documents WHERE doc_id = $1")
            .bind(doc.to_string())
            .fetch_optional(pool)
            .await?;
    match bytes {
        Some(bytes) => AutoCommit::load(&bytes).map_err(|e| DocsError::Corrupt {
            doc: doc.to_string(),
            reason: e.to_string(),
        }),
        None => Ok(AutoCommit::new()),
    }
}

/// Stores a document's snapshot.
pub async fn save(
    pool: &PgPool,
    doc: &DocId,
    branch: BranchId,
    device: Option<DeviceId>,
    snapshot: &[u8],
    heads: &[u8],
) -> Result<(), DocsError> {
    sqlx::query(
        "INSERT INTO sync_documents (doc_id, branch_id, device_id, snapshot, heads)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (doc_id) DO UPDATE SET snapshot = EXCLUDED.snapshot, heads = EXCLUDED.heads,
             updated_at = now()",
    )
    .bind(doc.to_string())
    .bind(*branch.as_uuid())
    .bind(device.map(|d| *d.as_uuid()))
    .bind(snapshot)
    .bind(heads)
    .execute(pool)
    .await?;
    Ok(())
}

/// The hub's sync progress with `peer` on `doc` (fresh if none or unreadable).
pub async fn load_state(
    pool: &PgPool,
    doc: DocId,
    peer: DeviceId,
) -> Result<PeerDocState, DocsError> {
    let bytes: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT state FROM sync_peer_states WHERE doc_id = $1 AND peer_id = $2")
            .bind(doc.to_string())
            .bind(*peer.as_uuid())
            .fetch_optional(pool)
            .await?;
    Ok(bytes
        .and_then(|b| PeerDocState::decode(doc, &b).ok())
        .unwrap_or_else(|| PeerDocState::new(doc)))
}

/// Stores the hub's sync progress.
pub async fn save_state(
    pool: &PgPool,
    state: &PeerDocState,
    peer: DeviceId,
) -> Result<(), DocsError> {
    sqlx::query(
        "INSERT INTO sync_peer_states (doc_id, peer_id, state) VALUES ($1, $2, $3)
         ON CONFLICT (doc_id, peer_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
    )
    .bind(state.doc().to_string())
    .bind(*peer.as_uuid())
    .bind(state.encode())
    .execute(pool)
    .await?;
    Ok(())
}
