//! The hub's copies of Automerge documents and its per-peer sync progress, in Postgres (the
//! hub keeps no state outside it).
//!
//! A document is a snapshot (`sync_documents.snapshot`) plus the change chunks appended since
//! (`sync_document_changes`, each one `save_after` of the heads before the write). A write
//! appends one chunk and bumps `version`; when the chunks pass [`DOC_CHUNKS_MAX`] or
//! [`DOC_CHUNK_BYTES_MAX`] the writer stores a fresh snapshot instead and drops them. Writers
//! lock the row (`SELECT … FOR UPDATE`, [`lock_versions`]) for the whole load-change-save, so
//! writes of several hub processes to one document serialize, and a process that cached the
//! document compares the locked `version` with its copy's before trusting it.
//!
//! Sync progress is one row per (document, peer): `PeerDocState::encode`, so a reconnect
//! resumes in one round trip.

use std::collections::HashMap;

use automerge::Automerge;
use cartwise_schema::{BranchId, DeviceId};
use cartwise_sync_core::{DocId, PeerDocState};
use sqlx::{PgConnection, PgPool};

/// Appended chunks after which the next write stores a fresh snapshot instead.
pub const DOC_CHUNKS_MAX: i32 = 64;
/// Appended bytes after which the next write stores a fresh snapshot instead.
pub const DOC_CHUNK_BYTES_MAX: i64 = 512 * 1024;

/// Why a stored document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the stored document {doc} does not load: {reason}")]
    Corrupt { doc: String, reason: String },
}

/// A document's row as locked for a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocVersion {
    /// Bumped by every write; 0 for a row that holds nothing yet.
    pub version: i64,
    /// Chunks appended since the snapshot.
    pub chunk_count: i32,
    /// Their bytes.
    pub chunk_bytes: i64,
}

/// How a write stores the document.
#[derive(Debug)]
pub enum DocWrite {
    /// Append these changes (`save_after` of the heads before the write).
    Append(Vec<u8>),
    /// Replace everything with this snapshot (`save()`).
    Snapshot(Vec<u8>),
}

impl DocVersion {
    /// Whether a write of `len` more bytes should compact into a snapshot.
    pub fn compaction_due(&self, len: usize) -> bool {
        self.chunk_count + 1 > DOC_CHUNKS_MAX
            || self.chunk_bytes.saturating_add(len as i64) > DOC_CHUNK_BYTES_MAX
    }
}

/// Parses a stored snapshot and its chunks into a document.
pub fn assemble(doc: &DocId, snapshot: &[u8], chunks: &[Vec<u8>]) -> Result<Automerge, DocsError> {
    let corrupt = |e: automerge::AutomergeError| DocsError::Corrupt {
        doc: doc.to_string(),
        reason: e.to_string(),
    };
    let mut document = if snapshot.is_empty() {
        Automerge::new()
    } else {
        Automerge::load(snapshot).map_err(corrupt)?
    };
    for chunk in chunks {
        document.load_incremental(chunk).map_err(corrupt)?;
    }
    Ok(document)
}

/// The stored bytes of a document (snapshot, chunks in order), if it has a row.
pub async fn load_bytes(
    conn: &mut PgConnection,
    doc: &DocId,
) -> Result<Option<(Vec<u8>, Vec<Vec<u8>>)>, DocsError> {
    let key = doc.to_string();
    let snapshot: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT snapshot FROM sync_documents WHERE doc_id = $1")
            .bind(&key)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(snapshot) = snapshot else {
        return Ok(None);
    };
    let chunks: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT chunk FROM sync_document_changes WHERE doc_id = $1 ORDER BY version",
    )
    .bind(&key)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some((snapshot, chunks)))
}

/// Loads a document (snapshot and appended changes), or a new empty one.
pub async fn load(pool: &PgPool, doc: &DocId) -> Result<Automerge, DocsError> {
    let mut conn = pool.acquire().await?;
    match load_bytes(&mut conn, doc).await? {
        Some((snapshot, chunks)) => assemble(doc, &snapshot, &chunks),
        None => Ok(Automerge::new()),
    }
}

/// Makes sure each document has a row (empty, version 0) and locks the rows in id order (so
/// two processes locking overlapping sets never deadlock); returns their versions. The last
/// field of each entry says the caller knows the row exists (it holds a copy written at a
/// version above 0: such rows are never deleted), so no row is created for it; a row that is
/// missing after all is simply absent from the answer, and the caller's write of it fails the
/// pass, which then reloads.
pub async fn lock_versions(
    conn: &mut PgConnection,
    docs: &[(DocId, BranchId, Option<DeviceId>, bool)],
) -> Result<HashMap<DocId, DocVersion>, DocsError> {
    let mut sorted: Vec<&(DocId, BranchId, Option<DeviceId>, bool)> = docs.iter().collect();
    sorted.sort_by_key(|(doc, ..)| doc.to_string());
    let ids: Vec<String> = sorted.iter().map(|(doc, ..)| doc.to_string()).collect();
    // Rows are created only for documents not known to have one (on a busy hub, almost
    // every document of a pass is cached, so this is usually one statement, not two).
    let (mut create_ids, mut create_branches, mut create_devices) =
        (Vec::new(), Vec::new(), Vec::new());
    for ((_, branch, device, exists), id) in sorted.iter().zip(&ids) {
        if !exists {
            create_ids.push(id.clone());
            create_branches.push(*branch.as_uuid());
            create_devices.push(device.map(|d| *d.as_uuid()));
        }
    }
    if !create_ids.is_empty() {
        sqlx::query(
            "INSERT INTO sync_documents (doc_id, branch_id, device_id, snapshot)
             SELECT d, b, v, ''::bytea FROM UNNEST($1::text[], $2::uuid[], $3::uuid[]) AS t(d, b, v)
             ORDER BY d
             ON CONFLICT (doc_id) DO NOTHING",
        )
        .bind(&create_ids)
        .bind(&create_branches)
        .bind(&create_devices)
        .execute(&mut *conn)
        .await?;
    }
    let rows: Vec<(String, i64, i32, i64)> = sqlx::query_as(
        "SELECT doc_id, version, chunk_count, chunk_bytes FROM sync_documents
         WHERE doc_id = ANY($1) ORDER BY doc_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for (id, version, chunk_count, chunk_bytes) in rows {
        if let Ok(doc) = DocId::parse(&id) {
            out.insert(
                doc,
                DocVersion {
                    version,
                    chunk_count,
                    chunk_bytes,
                },
            );
        }
    }
    Ok(out)
}

/// Stores a write of a document whose row is locked at `locked`; returns the new version.
pub async fn write(
    conn: &mut PgConnection,
    doc: &DocId,
    locked: DocVersion,
    write: &DocWrite,
    heads: &[u8],
) -> Result<DocVersion, DocsError> {
    let key = doc.to_string();
    let version = locked.version + 1;
    let next = match write {
        DocWrite::Append(chunk) => {
            sqlx::query(
                "INSERT INTO sync_document_changes (doc_id, version, chunk) VALUES ($1, $2, $3)",
            )
            .bind(&key)
            .bind(version)
            .bind(chunk)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE sync_documents SET version = $2, heads = $3, chunk_count = chunk_count + 1,
                     chunk_bytes = chunk_bytes + $4, updated_at = now()
                 WHERE doc_id = $1",
            )
            .bind(&key)
            .bind(version)
            .bind(heads)
            .bind(chunk.len() as i64)
            .execute(&mut *conn)
            .await?;
            DocVersion {
                version,
                chunk_count: locked.chunk_count + 1,
                chunk_bytes: locked.chunk_bytes + chunk.len() as i64,
            }
        }
        DocWrite::Snapshot(snapshot) => {
            sqlx::query("DELETE FROM sync_document_changes WHERE doc_id = $1")
                .bind(&key)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "UPDATE sync_documents SET version = $2, heads = $3, snapshot = $4, chunk_count = 0,
                     chunk_bytes = 0, updated_at = now()
                 WHERE doc_id = $1",
            )
            .bind(&key)
            .bind(version)
            .bind(heads)
            .bind(snapshot)
            .execute(&mut *conn)
            .await?;
            DocVersion {
                version,
                chunk_count: 0,
                chunk_bytes: 0,
            }
        }
    };
    Ok(next)
}

/// Stores several documents' writes (rows locked at the given versions) in as few
/// statements as it takes: every appended chunk in one insert and every version bump in one
/// update, whatever the number of documents; a compacting write (rare) on its own. Returns
/// the new versions, in order.
pub async fn write_many(
    conn: &mut PgConnection,
    writes: &[(DocId, DocVersion, &DocWrite, &[u8])],
) -> Result<Vec<DocVersion>, DocsError> {
    let mut out = Vec::with_capacity(writes.len());
    let mut keys = Vec::new();
    let mut versions = Vec::new();
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut heads: Vec<&[u8]> = Vec::new();
    let mut lens = Vec::new();
    for (doc, locked, write, doc_heads) in writes {
        match write {
            DocWrite::Append(chunk) => {
                let version = locked.version + 1;
                keys.push(doc.to_string());
                versions.push(version);
                chunks.push(chunk);
                heads.push(doc_heads);
                lens.push(chunk.len() as i64);
                out.push(DocVersion {
                    version,
                    chunk_count: locked.chunk_count + 1,
                    chunk_bytes: locked.chunk_bytes + chunk.len() as i64,
                });
            }
            DocWrite::Snapshot(_) => {
                out.push(self::write(conn, doc, *locked, write, doc_heads).await?)
            }
        }
    }
    if keys.is_empty() {
        return Ok(out);
    }
    // The chunks and the version bumps in one statement (one round trip).
    sqlx::query(
        "WITH t AS (
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bytea[], $4::bytea[], $5::bigint[])
                 AS t(doc_id, version, chunk, heads, len)
         ), appended AS (
             INSERT INTO sync_document_changes (doc_id, version, chunk)
             SELECT doc_id, version, chunk FROM t
         )
         UPDATE sync_documents d SET version = t.version, heads = t.heads,
             chunk_count = d.chunk_count + 1, chunk_bytes = d.chunk_bytes + t.len,
             updated_at = now()
         FROM t WHERE d.doc_id = t.doc_id",
    )
    .bind(&keys)
    .bind(&versions)
    .bind(&chunks)
    .bind(&heads)
    .bind(&lens)
    .execute(&mut *conn)
    .await?;
    Ok(out)
}

/// Drops the rows of documents that were locked but never written (version 0, no content).
pub async fn forget_empty_many(conn: &mut PgConnection, docs: &[DocId]) -> Result<(), DocsError> {
    if docs.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = docs.iter().map(ToString::to_string).collect();
    sqlx::query(
        "DELETE FROM sync_documents WHERE doc_id = ANY($1) AND version = 0 AND snapshot = ''",
    )
    .bind(&keys)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Drops the row of a document that was locked but never written (version 0, no content).
pub async fn forget_empty(conn: &mut PgConnection, doc: &DocId) -> Result<(), DocsError> {
    sqlx::query("DELETE FROM sync_documents WHERE doc_id = $1 AND version = 0 AND snapshot = ''")
        .bind(doc.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Stores a whole document (a full snapshot) outside the merge path, in its own transaction:
/// locks the row, replaces the snapshot, drops appended chunks and bumps the version, so
/// every cached copy is reloaded.
pub async fn save(
    pool: &PgPool,
    doc: &DocId,
    branch: BranchId,
    device: Option<DeviceId>,
    snapshot: &[u8],
    heads: &[u8],
) -> Result<(), DocsError> {
    let mut tx = pool.begin().await?;
    let locked = lock_versions(&mut tx, &[(*doc, branch, device, false)]).await?;
    let version = locked.get(doc).copied().unwrap_or(DocVersion {
        version: 0,
        chunk_count: 0,
        chunk_bytes: 0,
    });
    write(
        &mut tx,
        doc,
        version,
        &DocWrite::Snapshot(snapshot.to_vec()),
        heads,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The documents of a branch the hub holds, with their versions.
pub async fn branch_docs(pool: &PgPool, branch: BranchId) -> Result<Vec<(DocId, i64)>, DocsError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT doc_id, version FROM sync_documents WHERE branch_id = $1 AND version > 0",
    )
    .bind(*branch.as_uuid())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, v)| DocId::parse(&id).ok().map(|d| (d, v)))
        .collect())
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

/// Stores the hub's sync progress with several (peer, document) pairs; unchanged rows are not
/// rewritten.
pub async fn save_states(
    conn: &mut PgConnection,
    states: &[(DeviceId, DocId, Vec<u8>)],
) -> Result<(), DocsError> {
    if states.is_empty() {
        return Ok(());
    }
    // One row per pair (the last state wins): a statement may not update a row twice.
    let latest: HashMap<(DeviceId, DocId), &Vec<u8>> =
        states.iter().map(|(p, d, s)| ((*p, *d), s)).collect();
    let docs: Vec<String> = latest.keys().map(|(_, d)| d.to_string()).collect();
    let peers: Vec<uuid::Uuid> = latest.keys().map(|(p, _)| *p.as_uuid()).collect();
    let bytes: Vec<Vec<u8>> = latest.values().map(|s| (*s).clone()).collect();
    sqlx::query(
        "INSERT INTO sync_peer_states (doc_id, peer_id, state)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::bytea[])
         ON CONFLICT (doc_id, peer_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()
         WHERE sync_peer_states.state IS DISTINCT FROM EXCLUDED.state",
    )
    .bind(&docs)
    .bind(&peers)
    .bind(&bytes)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores the hub's sync progress with one peer.
pub async fn save_state(
    pool: &PgPool,
    state: &PeerDocState,
    peer: DeviceId,
) -> Result<(), DocsError> {
    let mut conn = pool.acquire().await?;
    save_states(&mut conn, &[(peer, state.doc(), state.encode())]).await
}
