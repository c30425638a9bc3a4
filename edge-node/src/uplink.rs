//! The edge's connection to the hub: connect with mutual TLS (capped, jittered backoff;
//! honouring the hub's "come back later"), run a sync session over one stream, push the live
//! document whenever it changes, apply the hub's acknowledgements and learn trusted time.
//! A thin shell: the session logic is `cartwise_sync_core::Session`, the decisions the
//! engine's.
//!
//! Retry waits: after a failure the backoff doubles from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]
//! (plus up to half again of jitter). The hub's two "come back later" answers do not grow it:
//! `Busy{retry_after_ms}` at admission is waited out (plus the same jitter), and a connection
//! the hub refused at its door (QUIC `CONNECTION_REFUSED`: too many handshakes waiting,
//! [`is_refusal`]) is retried after a random [`refused_retry`] wait of 1–10 s, so a fleet
//! turned away together comes back spread out and promptly rather than after a minute.
//!
//! Relay: the other devices' documents this Pi holds are offered to the hub too. For a branch
//! peer's document whose signed heads this Pi holds (`peers::RelayHeads`, filled by the LAN
//! sessions), the `SignedHeads` go first (at admission, and again whenever newer ones arrive,
//! followed by a `Sync` of that document), so the hub accepts the peer's changes through this
//! Pi while the peer's own link is down. Such documents are opened after admission, never
//! pipelined before it (`SignedHeads` cannot be).
//!
//! Nothing here is needed to lend or return: when the hub is unreachable the node keeps
//! working and this task keeps retrying.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cartwise_schema::Clock;
use cartwise_sync_core::identity::HUB_SERVER_NAME;
use cartwise_sync_core::message::body::{
    DOCS_PER_MESSAGE_MAX, DocHeads, Docs, ErrorBody, Head, Role,
};
use cartwise_sync_core::session::LocalIdentity;
use cartwise_sync_core::{
    DocId, Message, Output, Session, SessionConfig, SessionEvent, Side, error_code,
};
use rand::RngExt as _;
use tokio::sync::watch;

use crate::engine::{Engine, SyncPeer};
use crate::identity::{self, EdgeIdentity};
use crate::outbox::{self, Outbox};
use crate::peers::RelayHeads;
use crate::store::StoreError;

/// First wait after a failed connection.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest wait after the hub refused a connection at its door.
pub const REFUSED_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait after the hub refused a connection at its door.
pub const REFUSED_RETRY_MAX: Duration = Duration::from_secs(10);
/// `Sync` messages pipelined behind the `Hello` at most (the `Docs` listing takes one more of
/// the session's `PIPELINED_MAX`).
pub const PIPELINED_SYNCS_MAX: usize = cartwise_sync_core::session::PIPELINED_MAX / 2;
/// The peer name sync progress with the hub is stored under.
pub const HUB_PEER: &str = "hub";

/// Whether a connection attempt ended because the hub refused it at its door (QUIC
/// `CONNECTION_REFUSED`: its handshake slots and their queue are full). The hub is up and
/// answering, only busy: retry after [`refused_retry`], not on the failure backoff.
pub fn is_refusal(error: &quinn::ConnectionError) -> bool {
    matches!(
        error,
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    )
}

/// The wait after a refusal at the hub's door: uniformly random between
/// [`REFUSED_RETRY_MIN`] and [`REFUSED_RETRY_MAX`] (the jitter is in the range; add none).
pub fn refused_retry() -> Duration {
    let min = REFUSED_RETRY_MIN.as_millis() as u64;
    let max = REFUSED_RETRY_MAX.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(min..=max))
}

/// Why a session ended other than cleanly or with the hub's `Busy`.
#[derive(Debug)]
enum Failure {
    /// The hub refused the connection at its door ([`is_refusal`]).
    Refused,
    /// Anything else (unreachable, timed out, TLS, stream or protocol): what happened.
    Other(String),
}

impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Failure::Other(reason)
    }
}

/// Whether the node is in session with the hub (for `/health`), and the branch peers' signed
/// heads to relay.
#[derive(Debug, Default)]
pub struct HubLink {
    connected: AtomicBool,
    relay: Arc<RelayHeads>,
}

impl HubLink {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The branch peers' signed heads this link relays (give it to the LAN sessions:
    /// `peers::LanLink::relaying`).
    pub fn relay(&self) -> Arc<RelayHeads> {
        Arc::clone(&self.relay)
    }
}

/// Sends the signed heads held for relay that this session has not sent yet (or older ones),
/// each followed by a `Sync` of its document when `open` (a document opened later gets its
/// `Sync` then). Returns nothing: a refusal by the session (capability not negotiated) only
/// means the hub reads the document without relayed changes.
async fn send_relay_heads(
    engine: &Engine,
    session: &mut Session,
    relay: &RelayHeads,
    sent: &mut HashMap<DocId, Vec<Head>>,
    open: bool,
) -> Result<(), String> {
    for signed in relay.all() {
        if sent.get(&signed.doc) == Some(&signed.heads) {
            continue;
        }
        let (doc, heads) = (signed.doc, signed.heads.clone());
        if session.send(Message::SignedHeads(signed)).is_err() {
            continue;
        }
        if sent.len() >= crate::engine::HELD_DOCS_MAX {
            sent.clear();
        }
        sent.insert(doc, heads);
        if open {
            open_doc(engine, session, doc).await?;
        }
    }
    Ok(())
}

/// Runs until `stopped`; waits for an enrollment if the node has none yet.
pub async fn run(
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    data_dir: PathBuf,
    link: Arc<HubLink>,
    outbox: Arc<Outbox>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let wait = match identity::load(&data_dir) {
            Ok(identity) => {
                match session(&engine, &clock, &identity, &link, &outbox, &mut stopped).await {
                    Ok(Some(hint)) => with_jitter(hint),
                    Ok(None) => {
                        backoff = BACKOFF_MIN;
                        with_jitter(BACKOFF_MIN)
                    }
                    Err(Failure::Refused) => {
                        let wait = refused_retry();
                        tracing::info!(retry_in = ?wait, "the hub is busy (connection refused at its door); lending continues offline");
                        wait
                    }
                    Err(Failure::Other(reason)) => {
                        tracing::info!(%reason, retry_in = ?backoff, "hub not reachable; lending continues offline");
                        let this = backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        with_jitter(this)
                    }
                }
            }
            Err(_) => with_jitter(BACKOFF_MAX),
        };
        outbox.session_ended();
        link.connected.store(false, Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wait_stopped(&mut stopped) => return,
        }
    }
}

/// `wait` plus a random jitter of up to half of it.
fn with_jitter(wait: Duration) -> Duration {
    let half = wait.as_millis().min(u128::from(u32::MAX)) as u64 / 2;
    wait + Duration::from_millis(rand::rng().random_range(0..=half))
}

/// Connects to the hub (resolve, then the QUIC handshake within [`CONNECT_TIMEOUT`]), telling
/// a refusal at the hub's door apart from other failures.
async fn connect_hub(
    endpoint: &quinn::Endpoint,
    hub: &str,
    config: quinn::ClientConfig,
) -> Result<quinn::Connection, Failure> {
    let resolve = |reason: String| identity::ExchangeError::Resolve {
        hub: hub.to_owned(),
        reason,
    };
    let addr = tokio::net::lookup_host(hub)
        .await
        .map_err(|error| resolve(error.to_string()).to_string())?
        .next()
        .ok_or_else(|| resolve("no address".to_owned()).to_string())?;
    let fail = |reason: String| {
        Failure::Other(
            identity::ExchangeError::Connect {
                hub: hub.to_owned(),
                reason,
            }
            .to_string(),
        )
    };
    let connecting = endpoint
        .connect_with(config, addr, HUB_SERVER_NAME)
        .map_err(|error| fail(error.to_string()))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) if is_refusal(&error) => Err(Failure::Refused),
        Ok(Err(error)) => Err(fail(error.to_string())),
        Err(_) => Err(fail(format!("no answer within {CONNECT_TIMEOUT:?}"))),
    }
}

/// Sends the first `Sync` of `doc` (if the engine has one to send).
async fn open_doc(engine: &Engine, session: &mut Session, doc: DocId) -> Result<(), String> {
    match engine.sync_generate_doc(HUB_PEER.into(), doc).await {
        Ok(Some(body)) => {
            let _ = session.send(Message::Sync(body));
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, %doc, "generating a sync message failed"),
    }
    Ok(())
}

async fn wait_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// One session. `Ok(Some(wait))` is the hub's "come back later"; `Ok(None)` a clean end.
async fn session(
    engine: &Engine,
    clock: &Arc<dyn Clock>,
    identity: &EdgeIdentity,
    link: &HubLink,
    outbox: &Outbox,
    stopped: &mut watch::Receiver<bool>,
) -> Result<Option<Duration>, Failure> {
    let config = identity::hub_client_config(identity).map_err(|e| e.to_string())?;
    let endpoint = identity::client_endpoint().map_err(|e| e.to_string())?;
    // A stop while connecting ends the attempt at once rather than after the timeout.
    let conn = tokio::select! {
        connected = connect_hub(&endpoint, &identity.hub, config) => connected?,
        () = wait_stopped(stopped) => return Ok(None),
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let peer = identity.peer();
    let local = LocalIdentity {
        role: Role::Device,
        chain: peer.chain,
        branch: Some(peer.branch),
        device: Some(peer.device),
        schema_version: cartwise_sync_core::facts::DEVICE_DOC_SCHEMA as u32,
    };
    engine.set_chain(peer.chain);
    let mut session = Session::new(SessionConfig::new(Side::Initiator), local, clock.read());
    // Pipelined behind the Hello: an idle reconnect is one round trip. Every document this
    // device syncs (its own epochs, the branch's intents, the other devices' documents it
    // holds) is listed and opened; what does not fit in the pipeline opens once admitted.
    let listing = engine.doc_listing().await.map_err(|e| e.to_string())?;
    let docs: Vec<DocId> = listing.iter().map(|heads| heads.doc).collect();
    let _ = session.send(Message::Docs(Docs {
        docs: listing.into_iter().take(DOCS_PER_MESSAGE_MAX).collect(),
    }));
    // A document with signed heads to relay opens after them, once admitted.
    let (relayed, direct): (Vec<DocId>, Vec<DocId>) = docs
        .into_iter()
        .partition(|doc| link.relay.get(doc).is_some());
    let (pipelined, rest) = direct.split_at(direct.len().min(PIPELINED_SYNCS_MAX));
    for doc in pipelined {
        open_doc(engine, &mut session, *doc).await?;
    }
    let mut deferred: Vec<DocId> = rest.iter().copied().chain(relayed).collect();
    let mut relay_changed = link.relay.subscribe();
    relay_changed.mark_unchanged();
    let mut relay_sent: HashMap<DocId, Vec<Head>> = HashMap::new();
    let changed = engine.document_changed().await;
    let mut buf = vec![0u8; 64 * 1024];
    let mut hint = None;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(bytes) => send.write_all(&bytes).await.map_err(|e| e.to_string())?,
                Output::Event(event) => match event {
                    SessionEvent::Established { .. } => {
                        link.connected.store(true, Ordering::Relaxed);
                        tracing::info!(hub = %identity.hub, "in session with the hub");
                        send_relay_heads(engine, &mut session, &link.relay, &mut relay_sent, false)
                            .await?;
                        for doc in std::mem::take(&mut deferred) {
                            open_doc(engine, &mut session, doc).await?;
                        }
                        outbox::drain_into(outbox, &mut session).await;
                    }
                    SessionEvent::Docs(listed) => {
                        // The hub relays these (the branch's intents, the other devices'
                        // documents): open each; the engine decides what it accepts.
                        for DocHeads { doc, .. } in listed.docs {
                            open_doc(engine, &mut session, doc).await?;
                        }
                    }
                    SessionEvent::ClockSample(sample) => {
                        if let Err(error) = engine
                            .learn_time(sample.local, sample.trusted_wall, "hub")
                            .await
                        {
                            tracing::warn!(%error, "learning the hub's time failed");
                        }
                    }
                    SessionEvent::SyncReceived(body) => {
                        let doc = body.doc;
                        match engine
                            .sync_receive_doc(HUB_PEER.into(), SyncPeer::Hub, body)
                            .await
                        {
                            Ok(Some(reply)) => {
                                let _ = session.send(Message::Sync(reply));
                            }
                            Ok(None) => {}
                            Err(StoreError::Refused(refusal)) => {
                                tracing::warn!(%refusal, "a document from the hub was refused");
                                let _ = session.send(Message::Error(ErrorBody {
                                    code: error_code::AUTHORITY,
                                    reason: refusal.to_string(),
                                    doc: Some(doc),
                                }));
                            }
                            Err(error) => {
                                tracing::warn!(%error, %doc, "a sync message from the hub was not applied")
                            }
                        }
                    }
                    SessionEvent::LedgerAck(ack) => match engine.ledger_acked(ack.rentals).await {
                        Ok(dropped) => {
                            tracing::debug!(dropped, "closed rentals left the live document")
                        }
                        Err(error) => {
                            tracing::warn!(%error, "applying the hub's acknowledgement failed")
                        }
                    },
                    SessionEvent::TelemetryAck(ack) => {
                        outbox::on_ack(outbox, &mut session, &ack).await
                    }
                    SessionEvent::Closed(reason) => {
                        tracing::info!(?reason, "hub session closed");
                        if let cartwise_sync_core::CloseReason::Busy { retry_after_ms } = reason {
                            hint = Some(Duration::from_millis(u64::from(retry_after_ms)));
                        }
                    }
                    SessionEvent::PeerError(error) => {
                        tracing::warn!(code = error.code, reason = %error.reason, "the hub reported an error")
                    }
                    _ => {}
                },
            }
        }
        if session.is_closed() {
            return Ok(hint);
        }
        let now = clock.read();
        let wait = session
            .poll_timeout()
            .map(|deadline| Duration::from_millis(deadline.saturating_sub(now.mono.get())))
            .unwrap_or(Duration::from_secs(60));
        tokio::select! {
            read = recv.read(&mut buf) => match read {
                Ok(Some(n)) => session.handle_bytes(clock.read(), &buf[..n]).map_err(|e| e.to_string())?,
                Ok(None) => return Ok(None),
                Err(error) => return Err(error.to_string().into()),
            },
            () = changed.notified(), if session.is_established() => {
                if let Some(body) = engine.sync_generate(HUB_PEER.into()).await.map_err(|e| e.to_string())? {
                    let _ = session.send(Message::Sync(body));
                }
            }
            () = outbox.ready(), if session.is_established() => outbox::drain_into(outbox, &mut session).await,
            seen = relay_changed.changed(), if session.is_established() => {
                if seen.is_ok() {
                    send_relay_heads(engine, &mut session, &link.relay, &mut relay_sent, true).await?;
                }
            }
            () = tokio::time::sleep(wait) => session.handle_timeout(clock.read()).map_err(|e| e.to_string())?,
            () = wait_stopped(stopped) => {
                session.close("the node is stopping");
                while let Some(Output::Send(bytes)) = session.poll_output() {
                    let _ = send.write_all(&bytes).await;
                }
                let _ = send.finish();
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(error_code: quinn::TransportErrorCode) -> quinn::ConnectionError {
        quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code,
            frame_type: None,
            reason: Default::default(),
        })
    }

    #[test]
    fn only_a_refusal_at_the_door_counts_as_one() {
        assert!(is_refusal(&closed(
            quinn::TransportErrorCode::CONNECTION_REFUSED
        )));
        assert!(!is_refusal(&closed(
            quinn::TransportErrorCode::PROTOCOL_VIOLATION
        )));
        assert!(!is_refusal(&quinn::ConnectionError::TimedOut));
        assert!(!is_refusal(&quinn::ConnectionError::Reset));
    }

    #[test]
    fn a_refused_device_comes_back_within_seconds_spread_out() {
        let waits: Vec<Duration> = (0..500).map(|_| refused_retry()).collect();
        assert!(
            waits
                .iter()
                .all(|w| (REFUSED_RETRY_MIN..=REFUSED_RETRY_MAX).contains(w))
        );
        // Spread, not one value: a crowd turned away together must not return together.
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "{} distinct waits", distinct.len());
    }
}
