//! "A document of this branch changed": an in-process broadcast per branch, fed by the merge
//! workers after each commit, by [`crate::sync_server::SyncServer::doc_changed`] (intents
//! written outside the merge path), by Postgres notifications of what other hub processes
//! wrote (intents on `crate::intents::DOC_CHANGED_CHANNEL`, merged documents on
//! [`DOC_WRITTEN_CHANNEL`], both delivered at commit), and by a slow poller that catches what
//! a lost listening connection missed (`sync_documents.version` moved). Sessions subscribe for
//! their branch and push `Sync` for the documents they relay.

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
/// How often the poller looks for documents written by other hub processes. Notifications
/// bring them at once; the poll only catches what a lost listening connection missed.
pub const VERSION_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// How far back the poller looks: a little more than two intervals.
const VERSION_POLL_WINDOW_SECS: i64 = 75;
/// Wait before listening again after the listening connection failed.
const LISTEN_RETRY: Duration = Duration::from_secs(2);
/// The Postgres `NOTIFY` channel on which a merge pass announces each document it wrote, as
/// `<doc id> <branch uuid> <version>`, at commit.
pub const DOC_WRITTEN_CHANNEL: &str = "cartwise_doc_written";

/// The payload announcing that `doc` of `branch` was written at `version`.
pub fn written_payload(doc: DocId, branch: BranchId, version: i64) -> String {
    format!("{doc} {branch} {version}")
}

/// Reads a [`written_payload`]; `None` for anything else.
pub fn parse_written(payload: &str) -> Option<(DocId, BranchId, i64)> {
    let mut parts = payload.split(' ');
    let doc = DocId::parse(parts.next()?).ok()?;
    let branch = BranchId::parse(parts.next()?).ok()?;
    let version = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((doc, branch, version))
}

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

    /// Publishes a document another writer announced on [`DOC_WRITTEN_CHANNEL`], unless this
    /// process already knows that version (its own writes).
    pub fn written(&self, payload: &str) {
        if let Some((doc, branch, version)) = parse_written(payload)
            && self.saw(doc, version)
        {
            self.publish(branch, doc);
        }
    }

    /// Listens for documents announced on `crate::intents::DOC_CHANGED_CHANNEL` (intents
    /// written by any hub process or the `intent` command) and on [`DOC_WRITTEN_CHANNEL`]
    /// (documents merged by any hub process) and publishes them. Runs until the process ends;
    /// reconnects after a lost connection.
    pub async fn listen(self: std::sync::Arc<Self>, pool: PgPool) {
        let channels = [crate::intents::DOC_CHANGED_CHANNEL, DOC_WRITTEN_CHANNEL];
        loop {
            match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(mut listener) => {
                    if let Err(error) = listener.listen_all(channels).await {
                        tracing::warn!(%error, "listening for changed documents failed");
                    } else {
                        while let Ok(notification) = listener.recv().await {
                            if notification.channel() == DOC_WRITTEN_CHANNEL {
                                self.written(notification.payload());
                            } else if let Ok(doc @ DocId::BranchIntents { branch, .. }) =
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
            tokio::time::sleep(LISTEN_RETRY).await;
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
                 WHERE updated_at > now() - make_interval(secs => $1) AND version > 0",
            )
            .bind(VERSION_POLL_WINDOW_SECS as f64)
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

#[cfg(test)]
mod tests {
    use super::*;
    use cartwise_schema::DeviceId;

    fn ids() -> (DocId, BranchId) {
        let device = DeviceId::parse("019a0000-0000-7000-8000-000000000001").unwrap();
        let branch = BranchId::parse("0b1e3c2a-0000-4000-8000-0000000000b1").unwrap();
        (DocId::device(device), branch)
    }

    #[test]
    fn a_written_payload_reads_back_and_nothing_else_does() {
        let (doc, branch) = ids();
        let payload = written_payload(doc, branch, 7);
        assert_eq!(parse_written(&payload), Some((doc, branch, 7)));
        assert_eq!(parse_written(&format!("{payload} extra")), None);
        assert_eq!(parse_written(&doc.to_string()), None);
        assert_eq!(parse_written(&format!("{doc} {branch} x")), None);
        assert_eq!(parse_written(""), None);
    }

    /// Another writer's version is published once; a version this process wrote (or heard of
    /// already) is not published again.
    #[test]
    fn a_written_document_is_published_once_per_version() {
        let (doc, branch) = ids();
        let events = BranchEvents::default();
        let mut receiver = events.subscribe(branch);
        events.written(&written_payload(doc, branch, 3));
        assert_eq!(receiver.try_recv().ok(), Some(doc));
        events.written(&written_payload(doc, branch, 3));
        assert!(receiver.try_recv().is_err(), "the same version twice");
        assert!(!events.saw(doc, 3));
        events.saw(doc, 4);
        events.written(&written_payload(doc, branch, 4));
        assert!(receiver.try_recv().is_err(), "a version this process wrote");
        events.written("garbage");
        assert!(receiver.try_recv().is_err());
    }
}
