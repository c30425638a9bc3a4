//! `GET /api/events?branch_id=…`: a Server-Sent Events stream telling the dashboard that a
//! branch's carts, rentals, intents or devices changed, so it refetches without reloading.
//!
//! - The source is the merge path's per-branch change broadcast
//!   ([`crate::merge::events::BranchEvents`]). When this process runs the sync server (`serve
//!   --quic`), the stream subscribes to the server's own broadcast, which the merge workers
//!   publish to right after each commit: a lend at a Pi reaches the dashboard as soon as its
//!   merge commits, with no poll in between. That broadcast's own feeders (the intents
//!   `NOTIFY` and the `sync_documents` version poll) bring in what other hub processes write.
//!   A process that serves only HTTP starts the same two feeders on a broadcast of its own.
//! - Scoped like every API route: the caller must see the branch (else 404).
//! - Bounded: at most [`SSE_CLIENTS_MAX`] streams at once (more get 503); each stream's buffer
//!   is the broadcast's [`crate::merge::events::BRANCH_EVENTS_MAX`]; a client too slow to keep
//!   up lags and its stream ends (the browser's `EventSource` reconnects and refetches).
//! - The stream is not JSON, so it is not in the OpenAPI document.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cartwise_schema::BranchId;
use cartwise_sync_core::DocId;
use futures_util::StreamExt;
use futures_util::stream::{self, Stream};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::ApiState;
use super::auth::{Action, Caller};
use super::error::ApiError;
use crate::merge::events::BranchEvents;

/// Event streams open at once in this process.
pub const SSE_CLIENTS_MAX: usize = 256;
/// A comment line this often keeps proxies from closing an idle stream.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// The change feed of the HTTP side and its open streams.
#[derive(Debug, Default)]
pub struct Feed {
    events: OnceLock<Arc<BranchEvents>>,
    clients: Arc<AtomicUsize>,
}

impl Feed {
    /// The broadcast: the sync server's if this process runs one (merges push to it), else
    /// one of its own with its feeders started on first use (inside the server's runtime).
    fn events(&self, pool: &PgPool) -> Arc<BranchEvents> {
        Arc::clone(self.events.get_or_init(|| {
            if let Some(server) = crate::metrics::global().sync_server() {
                return server.events();
            }
            let events = Arc::new(BranchEvents::default());
            tokio::spawn(Arc::clone(&events).listen(pool.clone()));
            tokio::spawn(Arc::clone(&events).poll_versions(pool.clone()));
            events
        }))
    }

    /// Streams open now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

/// Counts one open stream until dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(clients: &Arc<AtomicUsize>) -> Option<Slot> {
        clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < SSE_CLIENTS_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(clients)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn branch_param(query: Option<&str>) -> Result<Uuid, ApiError> {
    let value = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "branch_id")
        .map(|(_, value)| value)
        .ok_or_else(|| ApiError::invalid("branch_id", "branch_id is required"))?;
    Uuid::parse_str(value).map_err(|_| ApiError::invalid("branch_id", "branch_id is a UUID"))
}

/// What a stream says about one changed document: which part of the branch to refetch.
fn topic(doc: &DocId) -> &'static str {
    match doc {
        DocId::BranchIntents { .. } => "intents",
        _ => "branch",
    }
}

fn change_stream(
    branch: Uuid,
    changes: broadcast::Receiver<DocId>,
    slot: Slot,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let ready = Event::default()
        .event("ready")
        .data(json!({ "branch_id": branch }).to_string());
    let changes = stream::unfold(Some((changes, slot)), move |state| async move {
        let (mut changes, slot) = state?;
        match changes.recv().await {
            Ok(doc) => {
                let event = Event::default().event("change").data(
                    json!({ "branch_id": branch, "topic": topic(&doc), "doc": doc.to_string() })
                        .to_string(),
                );
                Some((Ok(event), Some((changes, slot))))
            }
            // Too slow or the feed closed: end the stream; the client reconnects and
            // refetches everything.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let event = Event::default().event("lagged").data("{}");
                Some((Ok(event), None))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    stream::once(async move { Ok(ready) }).chain(changes)
}

/// `GET /api/events?branch_id=…`.
pub async fn stream(
    State(state): State<ApiState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let branch = branch_param(query.as_deref())?;
    caller.branch(&state.pool, branch, Action::Read).await?;
    let slot = Slot::take(&state.events.clients).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "too many event streams are open; retry later",
        )
    })?;
    let changes = state
        .events
        .events(&state.pool)
        .subscribe(BranchId::from_uuid(branch));
    let sse = Sse::new(change_stream(branch, changes, slot))
        .keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE));
    Ok(sse.into_response())
}
