//! The hub's side of a device's sync session: a thin shell that moves bytes between one QUIC
//! stream and a `cartwise_sync_core::Session`, hands documents to the merge workers
//! (`crate::merge`), and turns their answers into `Sync`, `LedgerAck` and `Error` messages,
//! plus heartbeats and telemetry rows.
//!
//! Authority: on a direct session the mTLS identity is the writer. A device writes only its
//! own device documents (any epoch); it reads (the hub relays) the other devices' documents of
//! its branch and the branch's intents document. Anything else is refused with
//! `Error{AUTHORITY}` (a write) or `Error{NOT_ENTITLED}` (a listing), audited, and the session
//! goes on. At admission the hub lists the documents it relays (`Docs`) and starts them; when
//! one changes (a merge here, an intents write, another hub process: `merge::events`) it
//! pushes a `Sync`.
//!
//! Relay: a Pi holds its branch peers' documents (LAN sync) and offers them here when the
//! peer's own link is down. It sends the owner's `SignedHeads` first; the hub checks them
//! ([`SyncServer::on_signed_heads`]: the signer owns the document and is a device of the
//! session's branch, its attached certificate chains to the chain CA and its serial is one the
//! hub issued to it, neither revoked, and the signature verifies with that certificate's key)
//! and remembers the latest per document for the session. The document's access then becomes
//! [`Access::Relay`]: changes covered by the signed heads are merged and projected as the
//! owner's own; anything else is refused and audited as before. A refusal repeated on one
//! session (the same reason for the same document) is audited once.
//!
//! Each session keeps its sync progress per document in memory (persisted by the merge pass
//! beside the document, so a reconnect resumes); everything else lives in Postgres.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cartwise_schema::{BranchId, Clock, DeviceId};
use cartwise_sync_core::doc_sync::idle_parts;
use cartwise_sync_core::identity::PeerIdentity;
use cartwise_sync_core::message::body::{
    DocHeads, Docs, ErrorBody, LEDGER_ACK_RENTALS_MAX, LedgerAck, SyncBody,
};
use cartwise_sync_core::session::LocalIdentity;
use cartwise_sync_core::{
    DocId, DocOwner, Message, Output, PeerDocState, Session, SessionConfig, SessionEvent, Side,
    SignedHeads, error_code, refusal,
};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::broadcast;

use crate::docs_store;
use crate::merge::events::BranchEvents;
use crate::merge::{Access, Job, MergeError, Merged, Merger, Work};

/// How long a peer has to open its session stream after connecting.
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer per connection.
const READ_CHUNK: usize = 64 * 1024;
/// Documents one session syncs at most (a branch has a few devices, each a few epochs).
pub const SESSION_DOCS_MAX: usize = 256;
/// Distinct refusals one session remembers having audited (beyond, the memory starts over).
pub const SESSION_REFUSALS_MAX: usize = 256;

/// What every session shares: the pool, the hub's clock, the merge workers and the branch
/// change notifications.
pub struct SyncServer {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    merger: Merger,
    events: Arc<BranchEvents>,
    admission: crate::admission::Admission,
}

impl std::fmt::Debug for SyncServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncServer").finish_non_exhaustive()
    }
}

/// One session's view: who the peer is and its sync progress per document.
struct Peer {
    id: PeerIdentity,
    states: HashMap<DocId, PeerDocState>,
    /// Other devices' branch membership, as looked up.
    same_branch: HashMap<DeviceId, bool>,
    /// The latest verified signed heads of each document the peer relays for its owner.
    relayed: HashMap<DocId, Arc<[automerge::ChangeHash]>>,
    /// Refusals already audited on this session (document, reason).
    refused: HashSet<(DocId, String)>,
    /// Per document the peer may only read: the shared heads when the hub last answered it
    /// with a message carrying no changes (see `on_sync`).
    read_answered: HashMap<DocId, Vec<automerge::ChangeHash>>,
}

impl SyncServer {
    /// A sync server on `pool`; starts the merge workers and the watchers of documents
    /// changed elsewhere (on the current runtime).
    pub fn new(pool: PgPool, clock: Arc<dyn Clock>) -> Arc<SyncServer> {
        let events = Arc::new(BranchEvents::default());
        let merger = Merger::spawn(pool.clone(), Arc::clone(&events));
        tokio::spawn(Arc::clone(&events).poll_versions(pool.clone()));
        tokio::spawn(Arc::clone(&events).listen(pool.clone()));
        Arc::new(SyncServer {
            pool,
            clock,
            merger,
            events,
            admission: crate::admission::Admission::default(),
        })
    }

    /// Admission control: when to answer a new session `Busy` (limits can be changed).
    pub fn admission(&self) -> &crate::admission::Admission {
        &self.admission
    }

    /// The per-branch change notifications (the MQTT bridge listens to them too).
    pub fn events(&self) -> Arc<BranchEvents> {
        Arc::clone(&self.events)
    }

    /// The merge workers (what sessions submit to).
    pub fn merger(&self) -> &Merger {
        &self.merger
    }

    /// Tells the sessions of `branch` that `doc` changed outside the merge path (an intents
    /// write in this process), so they push it now.
    pub fn doc_changed(&self, branch: BranchId, doc: DocId) {
        self.events.publish(branch, doc);
    }

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
        crate::metrics::inc(&crate::metrics::global().sync_sessions_opened);
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
        let mut me = Peer {
            id: peer,
            states: HashMap::new(),
            same_branch: HashMap::new(),
            relayed: HashMap::new(),
            refused: HashSet::new(),
            read_answered: HashMap::new(),
        };
        let mut changes = self.events.subscribe(peer.branch);
        let mut ticket = self.admission.ticket();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            while let Some(output) = session.poll_output() {
                match output {
                    Output::Send(bytes) => {
                        if send.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Output::Event(event) => {
                        let backlog = self.merger.backlog();
                        let step = self
                            .admission
                            .step(&mut ticket, &mut session, &event, backlog);
                        if step != crate::admission::Step::Deferred {
                            self.on_event(&mut session, &mut me, event).await;
                        }
                        ticket.after(step);
                    }
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
                            let reason: String =
                                format!("protocol error: {error}").chars().take(200).collect();
                            conn.close(crate::quic::close_code::PROTOCOL.into(), reason.as_bytes());
                            break;
                        }
                    }
                    _ => break,
                },
                changed = changes.recv(), if session.is_established() => match changed {
                    Ok(doc) => {
                        if relayed_in_branch(&me.id, &doc) {
                            self.generate(&mut session, &mut me, doc, Access::Read).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.start_relays(&mut session, &mut me, false).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        changes = self.events.subscribe(peer.branch);
                    }
                },
                () = tokio::time::sleep(wait) => {
                    if session.handle_timeout(self.clock.read()).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = send.finish();
        if ticket.deferred() {
            // Let the `Busy` reach the device; it closes the connection on reading it.
            let _ = tokio::time::timeout(crate::admission::BUSY_LINGER, conn.closed()).await;
        }
        tracing::info!(device = %peer.device, "sync session closed");
    }

    async fn on_event(&self, session: &mut Session, me: &mut Peer, event: SessionEvent) {
        let peer = me.id;
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
                        &peer,
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
                match outcome {
                    Ok(()) if matches => self.start_relays(session, me, true).await,
                    Ok(()) => {}
                    Err(error) => tracing::warn!(%error, "admitting the peer failed"),
                }
            }
            SessionEvent::Docs(docs) => {
                for DocHeads { doc, .. } in docs.docs {
                    match self.access(me, &doc).await {
                        Some(access) => self.generate(session, me, doc, access).await,
                        None => {
                            let _ = session.send(Message::Error(ErrorBody {
                                code: error_code::NOT_ENTITLED,
                                reason: format!("device {} may not sync {doc}", peer.device),
                                doc: Some(doc),
                            }));
                        }
                    }
                }
            }
            SessionEvent::SyncReceived(body) => self.on_sync(session, me, body).await,
            SessionEvent::SignedHeads(signed) => self.on_signed_heads(session, me, signed).await,
            SessionEvent::Heartbeat(_) => self.mark_online(&peer, "").await,
            SessionEvent::Telemetry(batch) => {
                crate::telemetry::on_batch(
                    &self.pool,
                    self.clock.read().wall,
                    session,
                    peer.device,
                    batch,
                )
                .await
            }
            SessionEvent::PeerViolation { code, reason } => {
                self.audit(
                    &peer,
                    "sync.violation",
                    None,
                    json!({ "code": code, "reason": reason }),
                )
                .await;
            }
            _ => {}
        }
    }

    /// What the peer may do with `doc`: write its own device documents, read the other
    /// devices' documents of its branch and its branch's intents; nothing else.
    async fn access(&self, me: &mut Peer, doc: &DocId) -> Option<Access> {
        match doc {
            DocId::Device { device, .. } if *device == me.id.device => Some(Access::Write),
            DocId::Device { device, .. } => {
                if !me.same_branch.contains_key(device) {
                    let branch: Option<uuid::Uuid> =
                        sqlx::query_scalar("SELECT branch_id FROM devices WHERE id = $1")
                            .bind(*device.as_uuid())
                            .fetch_optional(&self.pool)
                            .await
                            .ok()
                            .flatten();
                    if me.same_branch.len() >= SESSION_DOCS_MAX {
                        me.same_branch.clear();
                    }
                    me.same_branch
                        .insert(*device, branch == Some(*me.id.branch.as_uuid()));
                }
                if !me.same_branch.get(device).copied().unwrap_or(false) {
                    return None;
                }
                Some(match me.relayed.get(doc) {
                    Some(heads) => Access::Relay(Arc::clone(heads)),
                    None => Access::Read,
                })
            }
            DocId::BranchIntents { branch, .. } => {
                (*branch == me.id.branch).then_some(Access::Read)
            }
        }
    }

    /// Lists the documents the hub relays to the peer (`Docs`, at admission) and starts each.
    async fn start_relays(&self, session: &mut Session, me: &mut Peer, announce: bool) {
        let docs = match docs_store::branch_docs(&self.pool, me.id.branch).await {
            Ok(docs) => docs,
            Err(error) => {
                tracing::warn!(%error, "listing the branch's documents failed");
                return;
            }
        };
        let mut relayed: BTreeSet<DocId> = docs
            .into_iter()
            .map(|(doc, _)| doc)
            .filter(|doc| relayed_in_branch(&me.id, doc))
            .collect();
        relayed.insert(DocId::branch_intents(me.id.branch));
        if announce {
            let listing = relayed
                .iter()
                .take(cartwise_sync_core::message::body::DOCS_PER_MESSAGE_MAX)
                .map(|doc| DocHeads {
                    doc: *doc,
                    heads: Vec::new(),
                })
                .collect();
            let _ = session.send(Message::Docs(Docs { docs: listing }));
        }
        for doc in relayed {
            self.generate(session, me, doc, Access::Read).await;
        }
    }

    /// The session's sync progress with `doc` (loaded from Postgres the first time).
    async fn take_state(&self, me: &mut Peer, doc: DocId) -> Option<PeerDocState> {
        if let Some(state) = me.states.remove(&doc) {
            return Some(state);
        }
        if me.states.len() >= SESSION_DOCS_MAX {
            return None;
        }
        Some(
            docs_store::load_state(&self.pool, doc, me.id.device)
                .await
                .unwrap_or_else(|_| PeerDocState::new(doc)),
        )
    }

    /// Sends the peer the next `Sync` for `doc`, if there is one.
    async fn generate(&self, session: &mut Session, me: &mut Peer, doc: DocId, access: Access) {
        let Some(state) = self.take_state(me, doc).await else {
            return;
        };
        let done = self
            .merger
            .submit(Job {
                peer: me.id,
                doc,
                access,
                state,
                work: Work::Generate,
            })
            .await;
        me.states.insert(doc, done.state);
        if let Ok(Merged {
            reply: Some(reply), ..
        }) = done.outcome
        {
            let _ = session.send(Message::Sync(reply));
        }
    }

    async fn on_sync(&self, session: &mut Session, me: &mut Peer, body: SyncBody) {
        let peer = me.id;
        let doc = body.doc;
        let Some(access) = self.access(me, &doc).await else {
            self.refuse(
                session,
                &peer,
                doc,
                format!("device {} may not write {doc}", peer.device),
            )
            .await;
            return;
        };
        let Some(state) = self.take_state(me, doc).await else {
            let _ = session.send(Message::Error(ErrorBody {
                code: error_code::LIMIT,
                reason: format!("more than {SESSION_DOCS_MAX} documents in one session"),
                doc: Some(doc),
            }));
            return;
        };
        let read_only = matches!(access, Access::Read);
        let done = self
            .merger
            .submit(Job {
                peer,
                doc,
                access,
                state,
                work: Work::Receive(body),
            })
            .await;
        me.states.insert(doc, done.state);
        crate::metrics::inc(&crate::metrics::global().merge_passes);
        if done.outcome.is_ok() {
            crate::metrics::inc(&crate::metrics::global().documents_merged);
        }
        match done.outcome {
            Ok(merged) => {
                if let Some(reply) = merged.reply
                    && !(read_only && repeats_read_only_answer(me, &reply))
                {
                    let _ = session.send(Message::Sync(reply));
                }
                for rentals in merged.acked.chunks(LEDGER_ACK_RENTALS_MAX) {
                    let _ = session.send(Message::LedgerAck(LedgerAck {
                        device: peer.device,
                        rentals: rentals.to_vec(),
                    }));
                }
                for refused in &merged.refused_facts {
                    self.audit(
                        &peer,
                        "sync.refused_fact",
                        Some(doc.to_string()),
                        json!({ "reason": refused }),
                    )
                    .await;
                }
            }
            Err(MergeError::Refused(reason)) => {
                if me.refused.insert((doc, reason.clone())) {
                    if me.refused.len() >= SESSION_REFUSALS_MAX {
                        me.refused.clear();
                    }
                    self.refuse(session, &peer, doc, reason).await;
                } else {
                    // Audited already on this session: only answered.
                    let _ = session.send(Message::Error(ErrorBody {
                        code: error_code::AUTHORITY,
                        reason,
                        doc: Some(doc),
                    }));
                }
            }
            Err(MergeError::Failed(reason)) => {
                tracing::error!(%reason, %doc, "merging a sync message failed");
                let _ = session.send(Message::Error(ErrorBody {
                    code: error_code::SYNC_FAILED,
                    reason: "the hub could not apply this message; it will be retried".into(),
                    doc: Some(doc),
                }));
            }
        }
    }

    /// A relay's signed heads of another device's document: checked, then remembered for the
    /// session (the latest per document). Refused heads are audited (once per reason) and
    /// answered with `Error{AUTHORITY}`; the document stays read-only for the session.
    async fn on_signed_heads(&self, session: &mut Session, me: &mut Peer, signed: SignedHeads) {
        let peer = me.id;
        let doc = signed.doc;
        match self.check_signed_heads(me, &signed).await {
            Ok(()) => {
                if me.relayed.len() >= SESSION_DOCS_MAX && !me.relayed.contains_key(&doc) {
                    me.relayed.clear();
                }
                me.relayed.insert(doc, signed.change_hashes().into());
            }
            Err(reason) => {
                let first = me.refused.insert((doc, reason.clone()));
                if me.refused.len() >= SESSION_REFUSALS_MAX {
                    me.refused.clear();
                }
                if first {
                    self.audit(
                        &peer,
                        "sync.refused_signed_heads",
                        Some(doc.to_string()),
                        json!({ "reason": reason, "signer": signed.signer.to_string() }),
                    )
                    .await;
                }
                let _ = session.send(Message::Error(ErrorBody {
                    code: error_code::AUTHORITY,
                    reason,
                    doc: Some(doc),
                }));
            }
        }
    }

    /// Why `signed` may not vouch for relayed changes on this session, if it may not.
    async fn check_signed_heads(&self, me: &mut Peer, signed: &SignedHeads) -> Result<(), String> {
        let peer = me.id;
        let doc = signed.doc;
        match doc.owner() {
            DocOwner::Device(owner) if owner != peer.device => {}
            _ => {
                return Err(format!(
                    "device {} may relay signed heads only of another device's document, not {doc}",
                    peer.device
                ));
            }
        }
        if !matches!(
            self.access(me, &doc).await,
            Some(Access::Read | Access::Relay(_))
        ) {
            return Err(format!(
                "{doc} is not a document of branch {}; its heads cannot be relayed here",
                peer.branch
            ));
        }
        let ca = crate::pki::load_or_create_chain_ca(&self.pool, peer.chain)
            .await
            .map_err(|error| format!("the chain CA cannot be read: {error}"))?;
        let (identity, serial) = signed
            .verify_with_chain(&ca.cert_der, peer, crate::pki::unix_now())
            .map_err(|error| error.to_string())?;
        match crate::pki::check_device_allowed(&self.pool, &identity, &serial).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refusal)) => Err(format!("the signer {}: {refusal}", identity.device)),
            Err(error) => Err(format!("the signer could not be checked: {error}")),
        }
    }

    /// Refuses a write outside the peer's authority: audited, answered, the session goes on.
    async fn refuse(&self, session: &mut Session, peer: &PeerIdentity, doc: DocId, reason: String) {
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

/// Whether `reply` to a read-only peer would only repeat the hub's last answer: it carries no
/// changes and the heads both sides share have not moved since. A peer holding changes the hub
/// may not take (another device's, without its signed heads) keeps announcing heads the hub
/// does not have; answering each announcement again would ping-pong forever, since the peer
/// never resends what it already sent. New changes still reach it (a reply carrying changes,
/// or the `Generate` when the document changes). Found by the simulation
/// (`sim/src/world/deliver.rs`, the same rule).
fn repeats_read_only_answer(me: &mut Peer, reply: &SyncBody) -> bool {
    let full = match idle_parts(&reply.data) {
        Some((_, full)) => full,
        None => &reply.data[..],
    };
    let carries_changes = !full.is_empty()
        && automerge::sync::Message::decode(full).is_ok_and(|m| !m.changes.is_empty());
    if carries_changes {
        return false;
    }
    let shared = me
        .states
        .get(&reply.doc)
        .map(|state| state.shared_heads().to_vec())
        .unwrap_or_default();
    if me.read_answered.get(&reply.doc) == Some(&shared) {
        return true;
    }
    // Bounded like the session's document states.
    if me.read_answered.len() >= SESSION_DOCS_MAX {
        me.read_answered.clear();
    }
    me.read_answered.insert(reply.doc, shared);
    false
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

/// Whether `doc` is one the hub relays to `peer` when it changes in the peer's branch: the
/// branch's intents, another device's document. (Branch membership of a device document is
/// known from where the notification came from: a merge of that branch.)
fn relayed_in_branch(peer: &PeerIdentity, doc: &DocId) -> bool {
    match doc {
        DocId::Device { device, .. } => *device != peer.device,
        DocId::BranchIntents { branch, .. } => *branch == peer.branch,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};
    use cartwise_schema::ChainId;
    use cartwise_sync_core::HubActors;
    use cartwise_sync_core::identity::Role;

    use super::*;

    fn peer() -> Peer {
        Peer {
            id: PeerIdentity {
                role: Role::Device,
                chain: ChainId::parse("0b1e3c2a-0000-4000-8000-000000000001").unwrap(),
                branch: BranchId::parse("0b1e3c2a-0000-4000-8000-000000000002").unwrap(),
                device: DeviceId::parse("0b1e3c2a-0000-4000-8000-000000000003").unwrap(),
            },
            states: HashMap::new(),
            same_branch: HashMap::new(),
            relayed: HashMap::new(),
            refused: HashSet::new(),
            read_answered: HashMap::new(),
        }
    }

    /// What the hub says when it has nothing new: its heads only.
    fn heads_only(doc: DocId, hub: &mut AutoCommit) -> SyncBody {
        SyncBody {
            doc,
            data: automerge::sync::Message {
                heads: hub.get_heads(),
                need: Vec::new(),
                have: Vec::new(),
                changes: automerge::sync::ChunkList::empty(),
                flags: None,
                version: automerge::sync::MessageVersion::V1,
            }
            .encode(),
        }
    }

    #[test]
    fn a_read_only_peer_is_answered_again_only_when_something_moved() {
        let owner = DeviceId::parse("0b1e3c2a-0000-4000-8000-000000000004").unwrap();
        let doc = DocId::device(owner);
        // The hub's copy of the owner's document (the owner's changes).
        let mut hub = AutoCommit::new().with_actor(cartwise_sync_core::device_actor(&owner));
        hub.put(ROOT, "schema", 1).unwrap();
        hub.commit();
        let mut me = peer();
        me.states.insert(doc, PeerDocState::new(doc));

        // Nothing new to say at the same shared heads: answered once, then not again.
        let idle = heads_only(doc, &mut hub);
        assert!(
            !repeats_read_only_answer(&mut me, &idle),
            "first answer at these heads"
        );
        assert!(
            repeats_read_only_answer(&mut me, &idle),
            "the same answer again"
        );
        assert!(repeats_read_only_answer(&mut me, &idle), "and again");

        // A reply carrying the owner's changes is always sent.
        let actors = HubActors::new([]);
        let mut theirs = AutoCommit::new();
        let mut their_state = PeerDocState::new(doc);
        let state = me.states.get_mut(&doc).unwrap();
        let first = state.generate(&mut hub).unwrap().unwrap();
        their_state.receive(&mut theirs, &first, &actors).unwrap();
        let back = their_state.generate(&mut theirs).unwrap().unwrap();
        state.receive(&mut hub, &back, &actors).unwrap();
        let with_changes = state.generate(&mut hub).unwrap().unwrap();
        assert!(!repeats_read_only_answer(&mut me, &with_changes));
        assert!(!repeats_read_only_answer(&mut me, &with_changes));
    }
}
