//! "A document of this branch changed": an in-process broadcast per branch, fed by the merge
//! workers after each commit, by [`crate::sync_server::SyncServer::doc_changed`] (intents
//! written outside the merge path), and by a poller that notices documents written by other
//! hub processes (their `sync_documents.version` moved). Sessions subscribe for their branch
//! and push `Sync` for the documents they relay.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cartwise_schema::BranchId;
use cartwise_sync_core::DocId;
use sqlx::PgPool;
use tokio::sync::broadcast;

/// Notifications a slow subscriber may fall behind by; past it, it misses some and resyncs
/// everything it relays (`RecvError::Lagged`).
pub const BRANCH_EVENTS_MAX: usize = 256;
/// Versions remembered to tell other processes' writes from this process's own.
pub const VERSIONS_SEEN_MAX: usize = 100_000;
/// How often the poller looks for documents written by other hub processes.
pub const VERSION_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Per-branch change notifications and the document versions this process has seen.
#[derive(Debug, Default)]
pub struct BranchEvents {
    senders: Mutex<HashMap<BranchId, broadcast::Sender<DocId>>>,
    seen: Mutex<HashMap<DocId, i64>>,
}

impl BranchEvents {
    /// Subscribes to the changes of `branch`'s documents.
    pub fn subscribe(&self, branch: BranchId) -> broadcast::Receiver<DocId> {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        senders
            .entry(branch)
            .or_insert_with(|| broadcast::channel(BRANCH_EVENTS_MAX).0)
            .subscribe()
    }

    /// Tells `branch`'s subscribers that `doc` changed (and forgets branches nobody watches).
    pub fn publish(&self, branch: BranchId, doc: DocId) {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = senders.get(&branch)
            && sender.send(doc).is_err()
        {
            senders.remove(&branch);
        }
    }

    /// Records that this process knows `doc` at `version`; true if that is news.
    pub fn saw(&self, doc: DocId, version: i64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= VERSIONS_SEEN_MAX && !seen.contains_key(&doc) {
            seen.clear();
        }
        seen.insert(doc, version) != Some(version)
    }

    /// Listens for documents announced on `crate::intents::DOC_CHANGED_CHANNEL` (intents
    /// written by any hub process or the `intent` command) and publishes them. Runs until the
    /// process ends; reconnects after a lost connection.
    pub async fn listen(self: std::sync::Arc<Self>, pool: PgPool) {
        loop {
            match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(mut listener) => {
                    if let Err(error) = listener.listen(crate::intents::DOC_CHANGED_CHANNEL).await {
                        tracing::warn!(%error, "listening for changed documents failed");
                    } else {
                        while let Ok(notification) = listener.recv().await {
                            if let Ok(doc @ DocId::BranchIntents { branch, .. }) =
                                DocId::parse(notification.payload())
                            {
                                self.publish(branch, doc);
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "listening for changed documents failed"),
            }
            if pool.is_closed() {
                return;
            }
            tokio::time::sleep(VERSION_POLL_INTERVAL).await;
        }
    }

    /// Polls for documents written recently (by any hub process) and publishes those whose
    /// version this process has not seen. Runs until the process ends.
    pub async fn poll_versions(self: std::sync::Arc<Self>, pool: PgPool) {
        let mut ticker = tokio::time::interval(VERSION_POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if pool.is_closed() {
                return;
            }
            let rows: Result<Vec<(String, uuid::Uuid, i64)>, sqlx::Error> = sqlx::query_as(
                "SELECT doc_id, branch_id, version FROM sync_documents
                 WHERE updated_at > now() - interval '10 seconds' AND version > 0",
            )
            .fetch_all(&pool)
            .await;
            match rows {
                Ok(rows) => {
                    for (id, branch, version) in rows {
                        let Ok(doc) = DocId::parse(&id) else { continue };
                        if self.saw(doc, version) {
                            self.publish(BranchId::from_uuid(branch), doc);
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "polling document versions failed"),
            }
        }
    }
}
