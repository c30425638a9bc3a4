//! The hub's side of a device's sync session: a thin shell that moves bytes between one QUIC
//! stream and a `cartwise_sync_core::Session`, and turns session events into document merges,
//! projections into Postgres, acknowledgements, heartbeats and telemetry rows.
//!
//! Authority: on a direct session the mTLS identity is the writer. A device may sync only its
//! own document (`device/<its id>`); anything else is refused with `Error{AUTHORITY}`, audited,
//! and the session goes on. Inside its document, `PeerDocState::receive` refuses changes by any
//! actor but the device's. Automerge work runs on the blocking pool, off the async threads.

use std::sync::Arc;
use std::time::Duration;

use cartwise_schema::Clock;
use cartwise_sync_core::facts::read_device_doc;
use cartwise_sync_core::identity::PeerIdentity;
use cartwise_sync_core::message::body::{DocHeads, ErrorBody, LedgerAck, SyncBody};
use cartwise_sync_core::session::LocalIdentity;
use cartwise_sync_core::{
    DocId, HubActors, Message, Output, Session, SessionConfig, SessionEvent, Side, error_code,
    refusal,
};
use serde_json::json;
use sqlx::PgPool;

use crate::{docs_store, project};

/// How long a peer has to open its session stream after connecting.
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer per connection.
const READ_CHUNK: usize = 64 * 1024;

/// What every session shares.
pub struct SyncServer {
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    pub hub_actors: HubActors,
}

impl std::fmt::Debug for SyncServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncServer").finish_non_exhaustive()
    }
}

impl SyncServer {
    /// The handler the QUIC endpoint calls for every authenticated sync connection.
    pub fn handler(self: Arc<Self>) -> crate::quic::SyncHandler {
        Arc::new(move |conn, peer| {
            let server = Arc::clone(&self);
            Box::pin(async move { server.serve(conn, peer).await })
        })
    }

    async fn serve(self: Arc<Self>, conn: quinn::Connection, peer: PeerIdentity) {
        let remote = conn.remote_address();
        let opened = tokio::time::timeout(STREAM_OPEN_TIMEOUT, conn.accept_bi()).await;
        let Ok(Ok((mut send, mut recv))) = opened else {
            tracing::info!(device = %peer.device, "no session stream opened");
            return;
        };
        self.mark_online(&peer, &remote.ip().to_string()).await;
        let config = SessionConfig {
            wall_trusted: true,
            ..SessionConfig::new(Side::Responder)
        };
        let identity = LocalIdentity {
            role: cartwise_sync_core::message::body::Role::Hub,
            chain: peer.chain,
            branch: None,
            device: None,
            schema_version: cartwise_sync_core::facts::DEVICE_DOC_SCHEMA as u32,
        };
        let mut session = Session::new(config, identity, self.clock.read());
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            while let Some(output) = session.poll_output() {
                match output {
                    Output::Send(bytes) => {
                        if send.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Output::Event(event) => self.on_event(&mut session, &peer, event).await,
                }
            }
            if session.is_closed() {
                break;
            }
            let now = self.clock.read();
            let wait = session
                .poll_timeout()
                .map(|deadline| Duration::from_millis(deadline.saturating_sub(now.mono.get())))
                .unwrap_or(Duration::from_secs(60));
            tokio::select! {
                read = recv.read(&mut buf) => match read {
                    Ok(Some(n)) => {
                        if let Err(error) = session.handle_bytes(self.clock.read(), &buf[..n]) {
                            tracing::info!(device = %peer.device, %error, "session ended by protocol error");
                            break;
                        }
                    }
                    _ => break,
                },
                () = tokio::time::sleep(wait) => {
                    if session.handle_timeout(self.clock.read()).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = send.finish();
        tracing::info!(device = %peer.device, "sync session closed");
    }

    async fn on_event(&self, session: &mut Session, peer: &PeerIdentity, event: SessionEvent) {
        match event {
            SessionEvent::PeerHello(hello) => {
                let matches = hello.device == Some(peer.device)
                    && hello.branch == Some(peer.branch)
                    && hello.chain == peer.chain;
                let now = self.clock.read();
                let outcome = if matches {
                    session.admit(now)
                } else {
                    self.audit(
                        peer,
                        "sync.hello_mismatch",
                        None,
                        json!({ "hello_device": hello.device.map(|d| d.to_string()) }),
                    )
                    .await;
                    session.refuse(
                        refusal::IDENTITY,
                        "the Hello does not match the certificate",
                    )
                };
                if let Err(error) = outcome {
                    tracing::warn!(%error, "admitting the peer failed");
                }
            }
            SessionEvent::Docs(docs) => {
                for DocHeads { doc, .. } in docs.docs {
                    if self.entitled(peer, &doc) {
                        self.push(session, peer, doc).await;
                    }
                }
            }
            SessionEvent::SyncReceived(body) => self.on_sync(session, peer, body).await,
            SessionEvent::Heartbeat(_) => self.mark_online(peer, "").await,
            SessionEvent::Telemetry(batch) => self.store_telemetry(peer, batch).await,
            SessionEvent::PeerViolation { code, reason } => {
                self.audit(
                    peer,
                    "sync.violation",
                    None,
                    json!({ "code": code, "reason": reason }),
                )
                .await;
            }
            _ => {}
        }
    }

    /// On a direct session a device reads and writes its own document only.
    fn entitled(&self, peer: &PeerIdentity, doc: &DocId) -> bool {
        matches!(doc, DocId::Device { device, .. } if *device == peer.device)
    }

    async fn on_sync(&self, session: &mut Session, peer: &PeerIdentity, body: SyncBody) {
        if !self.entitled(peer, &body.doc) {
            let reason = format!("device {} may not write {}", peer.device, body.doc);
            self.audit(
                peer,
                "sync.refused_out_of_authority",
                Some(body.doc.to_string()),
                json!({ "reason": reason }),
            )
            .await;
            let _ = session.send(Message::Error(ErrorBody {
                code: error_code::AUTHORITY,
                reason,
                doc: Some(body.doc),
            }));
            return;
        }
        match self.merge(peer, body).await {
            Ok((reply, acked)) => {
                if let Some(reply) = reply {
                    let _ = session.send(Message::Sync(reply));
                }
                if !acked.is_empty() {
                    let _ = session.send(Message::LedgerAck(LedgerAck {
                        device: peer.device,
                        rentals: acked,
                    }));
                }
            }
            Err(MergeError::Refused(reason, doc)) => {
                self.audit(
                    peer,
                    "sync.refused_out_of_authority",
                    Some(doc.to_string()),
                    json!({ "reason": reason }),
                )
                .await;
                let _ = session.send(Message::Error(ErrorBody {
                    code: error_code::AUTHORITY,
                    reason,
                    doc: Some(doc),
                }));
            }
            Err(MergeError::Failed(reason, doc)) => {
                tracing::error!(%reason, %doc, "merging a sync message failed");
                let _ = session.send(Message::Error(ErrorBody {
                    code: error_code::SYNC_FAILED,
                    reason: "the hub could not apply this message; it will be retried".into(),
                    doc: Some(doc),
                }));
            }
        }
    }

    /// Applies one sync message to the device's document, stores it, projects it, and returns
    /// the reply and the closed rentals now held in Postgres.
    async fn merge(
        &self,
        peer: &PeerIdentity,
        body: SyncBody,
    ) -> Result<(Option<SyncBody>, Vec<cartwise_schema::RentalId>), MergeError> {
        let doc_id = body.doc;
        let failed = |reason: String| MergeError::Failed(reason, doc_id);
        let mut doc = docs_store::load(&self.pool, &doc_id)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut state = docs_store::load_state(&self.pool, doc_id, peer.device)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let actors = self.hub_actors.clone();
        let (doc, state, received, reply) = tokio::task::spawn_blocking(move || {
            let received = state.receive(&mut doc, &body, &actors);
            let reply = state.generate(&mut doc);
            (doc, state, received, reply)
        })
        .await
        .map_err(|e| failed(e.to_string()))?;
        let received = received.map_err(|e| match e {
            cartwise_sync_core::DocSyncError::Authority(_) => {
                MergeError::Refused(e.to_string(), doc_id)
            }
            other => failed(other.to_string()),
        })?;
        let reply = reply.map_err(|e| failed(e.to_string()))?;
        let mut doc = doc;
        let mut acked = Vec::new();
        if received.heads_changed {
            let snapshot = doc.save();
            let heads: Vec<u8> = doc.get_heads().iter().flat_map(|h| h.0).collect();
            docs_store::save(
                &self.pool,
                &doc_id,
                peer.branch,
                Some(peer.device),
                &snapshot,
                &heads,
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
            let facts = read_device_doc(&doc);
            let projected = project::project_device(&self.pool, peer.device, peer.branch, &facts)
                .await
                .map_err(|e| failed(e.to_string()))?;
            for refused in &projected.refused {
                self.audit(
                    peer,
                    "sync.refused_fact",
                    Some(doc_id.to_string()),
                    json!({ "reason": refused }),
                )
                .await;
            }
            acked = projected.closed_held;
        }
        docs_store::save_state(&self.pool, &state, peer.device)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok((reply, acked))
    }

    /// Starts syncing `doc` with the peer.
    async fn push(&self, session: &mut Session, peer: &PeerIdentity, doc_id: DocId) {
        let Ok(mut doc) = docs_store::load(&self.pool, &doc_id).await else {
            return;
        };
        let Ok(mut state) = docs_store::load_state(&self.pool, doc_id, peer.device).await else {
            return;
        };
        if let Ok(Some(body)) = state.generate(&mut doc) {
            let _ = session.send(Message::Sync(body));
        }
    }

    async fn mark_online(&self, peer: &PeerIdentity, ip: &str) {
        let result = sqlx::query(
            "UPDATE devices SET status = 'online', last_heartbeat = now(),
                 ip_address = COALESCE(NULLIF($2, ''), ip_address)
             WHERE id = $1",
        )
        .bind(*peer.device.as_uuid())
        .bind(ip)
        .execute(&self.pool)
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, "recording a heartbeat failed");
        }
    }

    async fn store_telemetry(
        &self,
        peer: &PeerIdentity,
        batch: cartwise_sync_core::message::body::Telemetry,
    ) {
        for event in batch.events {
            let data: serde_json::Value =
                serde_json::from_str(&event.data_json).unwrap_or(json!({ "raw": event.data_json }));
            let at = chrono::DateTime::from_timestamp_millis(event.wall_ms.get())
                .unwrap_or_else(chrono::Utc::now);
            let result = sqlx::query("INSERT INTO telemetry (device_id, event_type, event_data, \"timestamp\") VALUES ($1, $2, $3, $4)")
                .bind(*peer.device.as_uuid())
                .bind(event.kind.chars().take(50).collect::<String>())
                .bind(data)
                .bind(at)
                .execute(&self.pool)
                .await;
            if let Err(error) = result {
                tracing::warn!(%error, "storing telemetry failed");
            }
        }
    }

    async fn audit(
        &self,
        peer: &PeerIdentity,
        action: &str,
        target: Option<String>,
        detail: serde_json::Value,
    ) {
        let result = sqlx::query(
            "INSERT INTO audit_log (actor_kind, actor_id, chain_id, branch_id, action, target, detail)
             VALUES ('device', $1, $2, $3, $4, $5, $6)",
        )
        .bind(peer.device.to_string())
        .bind(*peer.chain.as_uuid())
        .bind(*peer.branch.as_uuid())
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(&self.pool)
        .await;
        if let Err(error) = result {
            tracing::error!(%error, action, "writing the audit log failed");
        }
    }
}

enum MergeError {
    Refused(String, DocId),
    Failed(String, DocId),
}

/// Marks devices offline whose last heartbeat is older than three heartbeat intervals.
pub async fn sweep_offline(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE devices SET status = 'offline'
         WHERE status = 'online' AND (last_heartbeat IS NULL OR last_heartbeat < now() - interval '90 seconds')",
    )
    .execute(pool)
    .await?
    .rows_affected())
}
