//! Direct sync with the other Pis of the branch over the store LAN, so a branch keeps its
//! branch-wide rules (one open rental per phone, a return at any Pi) while the hub is away.
//!
//! Each Pi serves its branch peers over QUIC (`[lan] listen`) and keeps a session with every
//! configured peer (`[lan] peers`), with capped, jittered backoff. Both ends present their
//! device certificates: the handshake admits only a device of this chain's CA and this branch
//! (`identity::lan_server_config` / `lan_client_config`), the verified [`PeerIdentity`] is
//! checked again here, and the peer's `Hello` must name exactly that identity.
//!
//! A session is the same sans-IO [`Session`] the uplink runs. It syncs two documents only:
//! this device's own and the peer's own. A peer may send changes to its own document (the
//! engine still checks every change's actor); a message for any other document, or one that
//! carries changes to this device's document, is refused with `Error{AUTHORITY}` and logged,
//! and the session goes on. There is no relay between Pis: what a third Pi or the hub wrote
//! travels only over the hub's sessions. Sync progress is persisted per peer, under the peer's
//! device id. When the peer's document changes, the engine folds it (`engine::fold`): a return
//! here of one of this device's rentals closes it.
//!
//! Relay to the hub (`cartwise_sync_core::signed_heads`): with a peer that has the
//! `signed-heads` capability, a Pi signs the heads of its own document with its certificate's
//! key and sends `SignedHeads` before any `Sync` of that document whose heads changed since it
//! last signed (only the latest heads, never one per write). The receiving Pi verifies them
//! with the key of the certificate the peer presented in the TLS handshake and keeps the latest
//! verified ones per document, with that certificate, in [`RelayHeads`] (`peers/relay.rs`;
//! memory only, at most [`crate::engine::HELD_DOCS_MAX`] documents: a restarted Pi gets them
//! again when the peer's session reopens). The uplink sends them to the hub before offering the peer's document, so the hub
//! accepts the peer's changes from this Pi when the peer's own link is down.
//!
//! One session per peer device at a time, whichever side dialled: a second one is told to come
//! back later (`Busy`).
//!
//! A peer the hub revoked is refused (at the handshake, and an open session is closed within
//! `REVOCATION_CHECK_INTERVAL`) as soon as the branch's intents document this Pi holds lists it
//! under `revoked`: its certificate still verifies against the chain's CA, and the hub may be
//! unreachable, so the held document is what carries the revocation across the LAN.
//!
//! A technician's laptop dials the same listener with its credential: such a connection is
//! handed to `tech_session.rs` (which checks the credential and records the session).
//!
//! Nothing here is needed to lend or return at this Pi.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cartwise_schema::{Clock, DeviceId};
use cartwise_sync_core::identity::PeerIdentity;
use cartwise_sync_core::message::body::{DocHeads, Docs, ErrorBody, Head, Role, SyncBody};
use cartwise_sync_core::session::{LocalIdentity, capability};
use cartwise_sync_core::{
    CloseReason, DocId, Message, Output, Session, SessionConfig, SessionEvent, Side, SignedHeads,
    error_code, refusal,
};
use rand::RngExt as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::LanSection;
use crate::engine::{Engine, SyncPeer};
use crate::identity::{self, EdgeIdentity, LAN_SERVER_NAME};
use crate::store::StoreError;
use crate::uplink::{BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT};

/// Inbound connections served at once (a branch has a few Pis; more is a misconfiguration or
/// a flood).
pub const LAN_SESSIONS_MAX: usize = 16;
/// How long a second session with a peer already in session is told to wait.
pub const BUSY_RETRY_MS: u32 = 2_000;
/// How often a session checks the held intents document for its peer's revocation.
const REVOCATION_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How often the identity is read again (a renewed certificate replaces the served one).
pub const IDENTITY_RELOAD: Duration = Duration::from_secs(600);
/// How long stopping waits for sessions to end before cutting them off.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Bytes read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;

mod relay;
pub use relay::RelayHeads;
use relay::Signing;

/// The branch peers in session now (for `/health`), and the signed heads they sent.
#[derive(Debug, Default)]
pub struct LanLink {
    sessions: Mutex<BTreeSet<DeviceId>>,
    relay: Arc<RelayHeads>,
}

impl LanLink {
    /// A link whose sessions keep their peers' signed heads in `relay` (shared with the uplink).
    pub fn relaying(relay: Arc<RelayHeads>) -> Self {
        LanLink {
            sessions: Mutex::new(BTreeSet::new()),
            relay,
        }
    }

    /// The peers' signed heads held here.
    pub fn relay(&self) -> Arc<RelayHeads> {
        Arc::clone(&self.relay)
    }

    /// How many peers are in session.
    pub fn connected(&self) -> usize {
        self.sessions.lock().map(|set| set.len()).unwrap_or(0)
    }

    /// Whether `device` is in session.
    pub fn is_connected(&self, device: DeviceId) -> bool {
        self.sessions
            .lock()
            .map(|set| set.contains(&device))
            .unwrap_or(false)
    }

    /// Claims the one session slot of `device`; `None` if a session with it runs already.
    fn claim(self: &Arc<Self>, device: DeviceId) -> Option<Claim> {
        let mut set = self.sessions.lock().ok()?;
        set.insert(device).then(|| Claim {
            link: Arc::clone(self),
            device,
        })
    }
}

/// A held session slot, released when dropped.
struct Claim {
    link: Arc<LanLink>,
    device: DeviceId,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut set) = self.link.sessions.lock() {
            set.remove(&self.device);
        }
    }
}

/// Why a session could not run or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Connecting or the QUIC connection failed.
    #[error("connection: {0}")]
    Connection(String),
    /// The peer is not a device of this branch, or its `Hello` disagrees with its
    /// certificate.
    #[error("peer refused: {0}")]
    Identity(String),
    /// The protocol session failed.
    #[error(transparent)]
    Session(#[from] cartwise_sync_core::SessionError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Binds the LAN listener's socket (so a port in use is an error at start, and tests learn the
/// port); the endpoint is built on it once the device is enrolled.
pub fn bind(lan: &LanSection) -> std::io::Result<Option<std::net::UdpSocket>> {
    lan.listen.map(std::net::UdpSocket::bind).transpose()
}

/// Runs the listener (on `socket`, if any) and a client per configured peer until `stopped`;
/// waits for an enrollment first.
pub async fn run(
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    data_dir: PathBuf,
    lan: LanSection,
    socket: Option<std::net::UdpSocket>,
    link: Arc<LanLink>,
    mut stopped: watch::Receiver<bool>,
) {
    if socket.is_none() && lan.peers.is_empty() {
        return;
    }
    let identity = loop {
        match identity::load(&data_dir) {
            Ok(identity) => break identity,
            Err(error) => {
                tracing::debug!(%error, "no identity yet; branch peers wait for the enrollment");
                tokio::select! {
                    () = tokio::time::sleep(BACKOFF_MAX) => {}
                    () = wait_stopped(&mut stopped) => return,
                }
            }
        }
    };
    let node = Node {
        engine,
        clock,
        data_dir,
        link,
    };
    let mut tasks = JoinSet::new();
    if let Some(socket) = socket {
        tasks.spawn(
            node.clone()
                .serve(identity.clone(), socket, stopped.clone()),
        );
    }
    for address in lan.peers {
        tasks.spawn(node.clone().dial(address, stopped.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn wait_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// What every task of this module shares.
#[derive(Clone)]
struct Node {
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    data_dir: PathBuf,
    link: Arc<LanLink>,
}

impl Node {
    /// Accepts branch peers on `socket`; each connection runs one responder session.
    async fn serve(
        self,
        mut identity: EdgeIdentity,
        socket: std::net::UdpSocket,
        mut stopped: watch::Receiver<bool>,
    ) {
        let endpoint = match self.endpoint(&identity, socket) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::error!(%error, "cannot serve branch peers");
                return;
            }
        };
        if let Ok(addr) = endpoint.local_addr() {
            tracing::info!(%addr, "serving branch peers");
        }
        let mut sessions = JoinSet::new();
        let mut reload = tokio::time::interval(IDENTITY_RELOAD);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    while sessions.try_join_next().is_some() {}
                    if sessions.len() >= LAN_SESSIONS_MAX {
                        tracing::warn!(remote = %incoming.remote_address(), "too many branch peer connections; refused");
                        incoming.refuse();
                        continue;
                    }
                    let me = identity.peer();
                    sessions.spawn(self.clone().accepted(me, incoming, stopped.clone()));
                }
                _ = reload.tick() => {
                    if let Ok(fresh) = identity::load(&self.data_dir)
                        && fresh.peer() == identity.peer()
                    {
                        match identity::lan_server_config(&fresh) {
                            Ok(config) => {
                                endpoint.set_server_config(Some(config));
                                identity = fresh;
                            }
                            Err(error) => tracing::warn!(%error, "renewed identity not usable for branch peers"),
                        }
                    }
                }
                () = wait_stopped(&mut stopped) => break,
            }
        }
        endpoint.close(0u32.into(), b"stopping");
        // Sessions see the stop themselves; a connection still in its handshake may not.
        let drained = tokio::time::timeout(STOP_GRACE, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            sessions.abort_all();
        }
    }

    fn endpoint(
        &self,
        identity: &EdgeIdentity,
        socket: std::net::UdpSocket,
    ) -> Result<quinn::Endpoint, String> {
        let config = identity::lan_server_config(identity).map_err(|e| e.to_string())?;
        let runtime = quinn::default_runtime().ok_or("no async runtime for QUIC")?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            socket,
            runtime,
        )
        .map_err(|e| e.to_string())
    }

    async fn accepted(
        self,
        me: PeerIdentity,
        incoming: quinn::Incoming,
        stopped: watch::Receiver<bool>,
    ) {
        let remote = incoming.remote_address();
        let outcome = async {
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, incoming)
                .await
                .map_err(|_| PeerError::Connection("handshake timed out".into()))?
                .map_err(|e| PeerError::Connection(e.to_string()))?;
            if crate::tech_session::technician_peer(&conn).is_some() {
                // A technician's laptop (`tech_session.rs`), not a branch peer.
                return self.technician(conn, stopped).await;
            }
            let peer = verified_peer(&conn, me)?;
            self.refuse_revoked(&conn, peer).await?;
            let peer_cert = identity::peer_cert_der(&conn);
            let (send, recv) = tokio::time::timeout(CONNECT_TIMEOUT, conn.accept_bi())
                .await
                .map_err(|_| PeerError::Connection("no stream opened".into()))?
                .map_err(|e| PeerError::Connection(e.to_string()))?;
            let claim = self.link.claim(peer.device);
            let result = self
                .session(
                    me,
                    peer,
                    peer_cert,
                    Side::Responder,
                    claim.is_some(),
                    send,
                    recv,
                    stopped,
                )
                .await;
            drop(claim);
            conn.close(0u32.into(), b"done");
            result.map(|_| ())
        }
        .await;
        if let Err(error) = outcome {
            tracing::info!(%remote, %error, "branch peer session ended");
        }
    }

    /// Serves a technician's laptop on an accepted connection.
    async fn technician(
        &self,
        conn: quinn::Connection,
        stopped: watch::Receiver<bool>,
    ) -> Result<(), PeerError> {
        let identity = identity::load(&self.data_dir)
            .map_err(|e| PeerError::Identity(format!("no identity: {e}")))?;
        crate::tech_session::serve(
            Arc::clone(&self.engine),
            Arc::clone(&self.clock),
            identity,
            conn,
            stopped,
        )
        .await
        .map_err(|e| PeerError::Identity(e.to_string()))
    }

    /// Keeps a session with the peer at `address`, reconnecting with capped, jittered backoff.
    async fn dial(self, address: String, mut stopped: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        // The device behind the address, once seen: while it is in session (it dialled this
        // Pi), there is nothing to dial.
        let mut known: Option<DeviceId> = None;
        let mut stopping = stopped.clone();
        loop {
            if known.is_some_and(|device| self.link.is_connected(device)) {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(u64::from(BUSY_RETRY_MS))) => continue,
                    () = wait_stopped(&mut stopped) => return,
                }
            }
            let wait = match identity::load(&self.data_dir) {
                Ok(identity) => match tokio::select! {
                    result = self.dial_once(&identity, &address, &mut known, &stopped) => result,
                    () = wait_stopped(&mut stopping) => return,
                } {
                    Ok(Some(hint)) => hint,
                    Ok(None) => {
                        backoff = BACKOFF_MIN;
                        BACKOFF_MIN
                    }
                    Err(error) => {
                        tracing::info!(peer = %address, %error, retry_in = ?backoff, "branch peer not reachable");
                        let this = backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        this
                    }
                },
                Err(_) => BACKOFF_MAX,
            };
            let jitter =
                rand::rng().random_range(0..=wait.as_millis().min(u128::from(u32::MAX)) as u64 / 2);
            tokio::select! {
                () = tokio::time::sleep(wait + Duration::from_millis(jitter)) => {}
                () = wait_stopped(&mut stopped) => return,
            }
        }
    }

    /// One connection to a peer. `Ok(Some(wait))` is the peer's "come back later".
    async fn dial_once(
        &self,
        identity: &EdgeIdentity,
        address: &str,
        known: &mut Option<DeviceId>,
        stopped: &watch::Receiver<bool>,
    ) -> Result<Option<Duration>, PeerError> {
        let me = identity.peer();
        let config = identity::lan_client_config(identity)
            .map_err(|e| PeerError::Connection(e.to_string()))?;
        let endpoint =
            identity::client_endpoint().map_err(|e| PeerError::Connection(e.to_string()))?;
        let conn = identity::connect(&endpoint, address, config, LAN_SERVER_NAME)
            .await
            .map_err(|e| PeerError::Connection(e.to_string()))?;
        let peer = verified_peer(&conn, me)?;
        *known = Some(peer.device);
        self.refuse_revoked(&conn, peer).await?;
        if peer.device == me.device {
            conn.close(0u32.into(), b"self");
            return Err(PeerError::Identity(
                "the configured peer is this device itself".into(),
            ));
        }
        let Some(claim) = self.link.claim(peer.device) else {
            conn.close(0u32.into(), b"already in session");
            return Ok(Some(Duration::from_millis(u64::from(BUSY_RETRY_MS))));
        };
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| PeerError::Connection(e.to_string()))?;
        let peer_cert = identity::peer_cert_der(&conn);
        let result = self
            .session(
                me,
                peer,
                peer_cert,
                Side::Initiator,
                true,
                send,
                recv,
                stopped.clone(),
            )
            .await;
        drop(claim);
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        result
    }

    /// Closes the connection of a peer the hub revoked (the branch's intents document says so):
    /// its certificate still verifies against the chain's CA, so this is what keeps a revoked
    /// Pi off the LAN while the hub is unreachable.
    async fn refuse_revoked(
        &self,
        conn: &quinn::Connection,
        peer: PeerIdentity,
    ) -> Result<(), PeerError> {
        if self.engine.peer_revoked(peer.device).await?.is_some() {
            conn.close(0u32.into(), b"revoked");
            tracing::warn!(peer = %peer.device, "refused a revoked branch peer");
            return Err(PeerError::Identity(format!(
                "{} was revoked by the hub",
                peer.device
            )));
        }
        Ok(())
    }

    /// Runs one session with `peer` over a stream. `admit` is false when another session with
    /// the same peer runs already (a responder then answers `Busy`).
    #[allow(clippy::too_many_arguments)]
    async fn session(
        &self,
        me: PeerIdentity,
        peer: PeerIdentity,
        peer_cert: Option<Vec<u8>>,
        side: Side,
        admit: bool,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<Option<Duration>, PeerError> {
        let engine = &self.engine;
        let clock = &self.clock;
        let local = LocalIdentity {
            role: Role::Device,
            chain: me.chain,
            branch: Some(me.branch),
            device: Some(me.device),
            schema_version: cartwise_sync_core::facts::DEVICE_DOC_SCHEMA as u32,
        };
        let mut session = Session::new(SessionConfig::new(side), local, clock.read());
        let own = engine.document_id();
        let name = peer.device.to_string();
        let mut signing = Signing::new(&self.data_dir, peer_cert);
        if side == Side::Initiator {
            // Pipelined behind the Hello: an idle reconnect is one round trip.
            let _ = session.send(Message::Docs(Docs {
                docs: vec![DocHeads {
                    doc: own,
                    heads: Vec::new(),
                }],
            }));
            if let Some(body) = engine.sync_generate_doc(name.clone(), own).await? {
                let _ = session.send(Message::Sync(body));
            }
        }
        let mut changed = engine
            .store()
            .read(|_, state| Ok(state.revision.subscribe()))
            .await?;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut hint = None;
        let mut revocation = tokio::time::interval(REVOCATION_CHECK_INTERVAL);
        revocation.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while let Some(output) = session.poll_output() {
                match output {
                    Output::Send(bytes) => send
                        .write_all(&bytes)
                        .await
                        .map_err(|e| PeerError::Connection(e.to_string()))?,
                    Output::Event(event) => {
                        if let Some(wait) = self
                            .on_event(
                                &mut session,
                                &mut signing,
                                side,
                                me,
                                peer,
                                admit,
                                &name,
                                event,
                            )
                            .await?
                        {
                            hint = Some(wait);
                        }
                    }
                }
            }
            if session.is_closed() {
                let _ = send.finish();
                return Ok(hint);
            }
            let now = clock.read();
            let wait = session
                .poll_timeout()
                .map(|deadline| Duration::from_millis(deadline.saturating_sub(now.mono.get())))
                .unwrap_or(Duration::from_secs(60));
            tokio::select! {
                read = recv.read(&mut buf) => match read {
                    Ok(Some(n)) => session.handle_bytes(clock.read(), &buf[..n])?,
                    Ok(None) => return Ok(hint),
                    Err(error) => return Err(PeerError::Connection(error.to_string())),
                },
                seen = changed.changed(), if session.is_established() => {
                    if seen.is_err() {
                        return Ok(None);
                    }
                    let own = engine.document_id();
                    self.sign_own(&mut session, &mut signing).await?;
                    if let Some(body) = engine.sync_generate_doc(name.clone(), own).await? {
                        let _ = session.send(Message::Sync(body));
                    }
                }
                () = tokio::time::sleep(wait) => session.handle_timeout(clock.read())?,
                _ = revocation.tick() => {
                    if engine.peer_revoked(peer.device).await?.is_some() {
                        tracing::warn!(peer = %peer.device, "a branch peer was revoked; session closed");
                        session.close("revoked by the hub");
                        while let Some(Output::Send(bytes)) = session.poll_output() {
                            let _ = send.write_all(&bytes).await;
                        }
                        let _ = send.finish();
                        return Err(PeerError::Identity(format!(
                            "{} was revoked by the hub",
                            peer.device
                        )));
                    }
                }
                () = wait_stopped(&mut stopped) => {
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

    /// Acts on one session event; returns the peer's "come back later", if it said so.
    #[allow(clippy::too_many_arguments)]
    async fn on_event(
        &self,
        session: &mut Session,
        signing: &mut Signing,
        side: Side,
        me: PeerIdentity,
        peer: PeerIdentity,
        admit: bool,
        name: &str,
        event: SessionEvent,
    ) -> Result<Option<Duration>, PeerError> {
        match event {
            SessionEvent::PeerHello(hello) => {
                let matches = hello.role == Role::Device
                    && hello.chain == peer.chain
                    && hello.branch == Some(peer.branch)
                    && hello.device == Some(peer.device);
                let responder = side == Side::Responder;
                if !matches {
                    tracing::warn!(peer = %peer, hello_device = ?hello.device, "a branch peer's Hello does not match its certificate; refused");
                    if responder
                        && session
                            .refuse(
                                refusal::IDENTITY,
                                "the Hello does not match the certificate",
                            )
                            .is_ok()
                    {
                        return Ok(None);
                    }
                    session.close("the Hello does not match the certificate");
                    return Err(PeerError::Identity(
                        "the Hello does not match the certificate".into(),
                    ));
                }
                if !responder {
                    return Ok(None);
                }
                if !admit {
                    let _ = session.busy(BUSY_RETRY_MS);
                    return Ok(None);
                }
                if session.admit(self.clock.read()).is_ok() {
                    // Admitted as responder: offer this device's document, its signed heads
                    // first.
                    self.sign_own(session, signing).await?;
                    let own = self.engine.document_id();
                    if let Some(body) = self.engine.sync_generate_doc(name.to_owned(), own).await? {
                        let _ = session.send(Message::Sync(body));
                    }
                }
            }
            SessionEvent::Established { .. } => {
                tracing::info!(peer = %peer.device, "in session with a branch peer");
                self.sign_own(session, signing).await?;
            }
            SessionEvent::SyncReceived(body) => {
                if body.doc == self.engine.document_id() {
                    // The peer asks for this device's document: the answer may carry changes.
                    self.sign_own(session, signing).await?;
                }
                self.on_sync(session, me, peer, name, body).await?
            }
            SessionEvent::SignedHeads(signed) => {
                self.on_signed_heads(session, signing, peer, signed)
            }
            SessionEvent::PeerError(error) => {
                tracing::warn!(peer = %peer.device, code = error.code, reason = %error.reason, "a branch peer reported an error");
            }
            SessionEvent::PeerViolation { code, reason } => {
                tracing::warn!(peer = %peer.device, code, %reason, "a branch peer broke the protocol");
            }
            SessionEvent::Closed(reason) => {
                tracing::info!(peer = %peer.device, ?reason, "branch peer session closed");
                if let CloseReason::Busy { retry_after_ms } = reason {
                    return Ok(Some(Duration::from_millis(u64::from(retry_after_ms))));
                }
            }
            _ => {}
        }
        Ok(None)
    }

    /// Sends the signed heads of this device's document if they changed since last sent on
    /// this session (and the peer reads them).
    async fn sign_own(
        &self,
        session: &mut Session,
        signing: &mut Signing,
    ) -> Result<(), PeerError> {
        let Some(key) = &signing.key else {
            return Ok(());
        };
        if !session.is_established()
            || !session
                .capabilities()
                .iter()
                .any(|cap| cap == capability::SIGNED_HEADS)
        {
            return Ok(());
        }
        let (doc, heads) = self
            .engine
            .store()
            .transact(|_, state| {
                let heads: Vec<Head> = state.live.heads().into_iter().map(Head::from).collect();
                Ok((state.live.doc_id(), heads))
            })
            .await?;
        if signing.sent.as_ref() == Some(&(doc, heads.clone())) {
            return Ok(());
        }
        let signed = key.sign_heads(doc, &heads);
        if session.send(Message::SignedHeads(signed)).is_ok() {
            signing.sent = Some((doc, heads));
        }
        Ok(())
    }

    /// A peer's signed heads of its own document: verified with the key of the certificate it
    /// presented, then kept (with that certificate) for the uplink to relay.
    fn on_signed_heads(
        &self,
        session: &mut Session,
        signing: &Signing,
        peer: PeerIdentity,
        mut signed: SignedHeads,
    ) {
        let doc = signed.doc;
        let verified = match &signing.peer_key {
            None => Err("no certificate of the peer to verify with".to_owned()),
            Some(_) if signed.doc.owner() != cartwise_sync_core::DocOwner::Device(peer.device) => {
                Err(format!(
                    "device {} may sign only the heads of its own document, not {doc}",
                    peer.device
                ))
            }
            Some((verifier, cert)) => signed
                .verify(verifier)
                .map(|()| cert.clone())
                .map_err(|error| error.to_string()),
        };
        match verified {
            Ok(cert) => {
                signed.signer_cert = Some(cert);
                if !self.link.relay.keep(signed) {
                    tracing::warn!(peer = %peer.device, %doc, "signed heads not kept: too many documents held for relay");
                }
            }
            Err(reason) => {
                tracing::warn!(peer = %peer.device, %doc, %reason, "refused a branch peer's signed heads");
                let _ = session.send(Message::Error(ErrorBody {
                    code: error_code::AUTHORITY,
                    reason,
                    doc: Some(doc),
                }));
            }
        }
    }

    /// A peer's sync message: only for its own document, or (without changes) for this one.
    async fn on_sync(
        &self,
        session: &mut Session,
        me: PeerIdentity,
        peer: PeerIdentity,
        name: &str,
        body: SyncBody,
    ) -> Result<(), PeerError> {
        if let Some(reason) = out_of_authority(me, peer, &body) {
            refuse(session, peer, body.doc, reason);
            return Ok(());
        }
        let doc = body.doc;
        match self
            .engine
            .sync_receive_doc(name.to_owned(), SyncPeer::Device(peer.device), body)
            .await
        {
            Ok(Some(reply)) => {
                let _ = session.send(Message::Sync(reply));
            }
            Ok(None) => {}
            Err(StoreError::Refused(refusal)) => refuse(session, peer, doc, refusal.to_string()),
            Err(error) => {
                tracing::error!(%error, %doc, "applying a branch peer's sync message failed");
                let _ = session.send(Message::Error(ErrorBody {
                    code: error_code::SYNC_FAILED,
                    reason: "this message could not be applied; it will be retried".into(),
                    doc: Some(doc),
                }));
            }
        }
        Ok(())
    }
}

/// Why a branch peer may not send `body` on a direct session, if it may not: only its own
/// document may change; this device's document may be synced (heads, needs) but never
/// written; every other document is out of a direct session's scope (no relay between Pis).
pub fn out_of_authority(me: PeerIdentity, peer: PeerIdentity, body: &SyncBody) -> Option<String> {
    match body.doc {
        DocId::Device { device, .. } if device == peer.device => None,
        DocId::Device { device, .. } if device == me.device => {
            let writes = automerge::sync::Message::decode(&body.data)
                .map(|message| message.changes.iter().any(|change| !change.is_empty()))
                .unwrap_or(false);
            writes.then(|| {
                format!(
                    "device {} may not write {} (this device's document)",
                    peer.device, body.doc
                )
            })
        }
        doc => Some(format!(
            "device {} may send only its own document on a direct session, not {doc}",
            peer.device
        )),
    }
}

fn refuse(session: &mut Session, peer: PeerIdentity, doc: DocId, reason: String) {
    tracing::warn!(peer = %peer.device, %doc, %reason, "refused a branch peer's out-of-authority write");
    let _ = session.send(Message::Error(ErrorBody {
        code: error_code::AUTHORITY,
        reason,
        doc: Some(doc),
    }));
}

/// The connection's verified peer, if it is a device of this device's chain and branch.
fn verified_peer(conn: &quinn::Connection, me: PeerIdentity) -> Result<PeerIdentity, PeerError> {
    let peer = identity::peer_identity(conn)
        .ok_or_else(|| PeerError::Identity("no verified peer certificate".into()))?;
    if peer.role != cartwise_sync_core::identity::Role::Device || !me.same_branch(&peer) {
        conn.close(0u32.into(), b"not a device of this branch");
        return Err(PeerError::Identity(format!(
            "{peer} is not a device of this branch"
        )));
    }
    Ok(peer)
}

/// The listener's address, for logs and tests.
pub fn local_addr(socket: &Option<std::net::UdpSocket>) -> Option<SocketAddr> {
    socket.as_ref().and_then(|s| s.local_addr().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use cartwise_schema::{BranchId, ChainId};

    fn ids() -> (PeerIdentity, PeerIdentity, PeerIdentity) {
        let chain = ChainId::parse("0b1e3c2a-0000-4000-8000-000000000001").unwrap();
        let branch = BranchId::parse("0b1e3c2a-0000-4000-8000-000000000101").unwrap();
        let device = |n: u128| DeviceId::from_uuid(uuid::Uuid::from_u128(0x1000 + n));
        (
            PeerIdentity::device(chain, branch, device(1)),
            PeerIdentity::device(chain, branch, device(2)),
            PeerIdentity::device(chain, branch, device(3)),
        )
    }

    fn sync_of(doc: DocId, writer: DeviceId, with_change: bool) -> SyncBody {
        let mut source =
            automerge::AutoCommit::new().with_actor(cartwise_sync_core::device_actor(&writer));
        if with_change {
            source
                .put(automerge::ROOT, "device", writer.to_string())
                .unwrap();
        }
        let mut state = cartwise_sync_core::PeerDocState::new(doc);
        let first = state.generate(&mut source).unwrap().unwrap();
        if !with_change {
            return first;
        }
        // Answer as an empty replica would, so the next message carries the change.
        let mut empty = automerge::AutoCommit::new();
        let mut back = cartwise_sync_core::PeerDocState::new(doc);
        back.receive(&mut empty, &first, &cartwise_sync_core::HubActors::new([]))
            .unwrap();
        let reply = back.generate(&mut empty).unwrap().unwrap();
        state
            .receive(&mut source, &reply, &cartwise_sync_core::HubActors::new([]))
            .unwrap();
        state.generate(&mut source).unwrap().unwrap()
    }

    #[test]
    fn a_peer_writes_only_its_own_document() {
        let (me, peer, third) = ids();
        let theirs = sync_of(DocId::device(peer.device), peer.device, true);
        assert_eq!(out_of_authority(me, peer, &theirs), None);
        // Syncing this device's document without changes is how the peer asks for it.
        let asking = sync_of(DocId::device(me.device), me.device, false);
        assert_eq!(out_of_authority(me, peer, &asking), None);
        // Changes to this device's document, even under its actor, are refused.
        let forged = sync_of(DocId::device(me.device), me.device, true);
        let reason = out_of_authority(me, peer, &forged).unwrap();
        assert!(reason.contains("may not write"), "{reason}");
        // A third device's document (a relay) and the intents are refused outright.
        let relayed = sync_of(DocId::device(third.device), third.device, false);
        assert!(out_of_authority(me, peer, &relayed).is_some());
        let intents = sync_of(DocId::branch_intents(me.branch), me.device, false);
        assert!(out_of_authority(me, peer, &intents).is_some());
    }

    #[test]
    fn one_session_per_peer() {
        let (_, peer, _) = ids();
        let link = Arc::new(LanLink::default());
        let claim = link.claim(peer.device).unwrap();
        assert!(link.claim(peer.device).is_none());
        assert_eq!(link.connected(), 1);
        drop(claim);
        assert_eq!(link.connected(), 0);
        assert!(link.claim(peer.device).is_some());
    }
}
