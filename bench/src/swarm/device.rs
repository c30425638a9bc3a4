//! One simulated Pi of the swarm: a real QUIC connection with mutual TLS (the edge's own
//! client config, `cartwise_edge_node::identity::hub_client_config`) running the sync-core
//! `Session` the way `edge-node/src/uplink.rs` runs it: a `Docs` listing and the first `Sync`
//! of every document pipelined behind the `Hello`, the hub's relayed documents opened as it
//! lists them, heartbeats, a `Sync` after every write, the hub's "come back later" honoured
//! with the edge's jitter, a refusal at the hub's door retried after the edge's short random
//! wait (`uplink::is_refusal`, `uplink::refused_retry`), and the edge's capped backoff after
//! any other failure. Sync progress per document survives a reconnect the way the edge
//! persists it (encoded, in-flight forgotten).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use automerge::{AutoCommit, ChangeHash, ROOT, transaction::Transactable as _};
use cartwise_edge_node::identity::{EdgeIdentity, hub_client_config};
use cartwise_edge_node::ledger::RentalRow;
use cartwise_edge_node::live::LiveDoc;
use cartwise_edge_node::store::open_connection;
use cartwise_edge_node::timekeeping::Timeline;
use cartwise_edge_node::uplink::{
    BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT, PIPELINED_SYNCS_MAX, is_refusal, refused_retry,
};
use cartwise_schema::{
    BootId, ClockReading, Hlc, MonoMillis, Phone, PostNo, RentalId, RentalStatus, Stamp, WallMillis,
};
use cartwise_sync_core::facts::{DEVICE_DOC_SCHEMA, keys};
use cartwise_sync_core::identity::HUB_SERVER_NAME;
use cartwise_sync_core::message::body::{DOCS_PER_MESSAGE_MAX, DocHeads, Docs, Head, Role};
use cartwise_sync_core::session::LocalIdentity;
use cartwise_sync_core::{
    CloseReason, DocId, HubActors, Message, Output, PeerDocState, Session, SessionConfig,
    SessionEvent, Side,
};
use rand::RngExt as _;
use tokio::sync::watch;

use super::fleet::{FleetDevice, POSTS_PER_DEVICE};

/// The boot id every simulated device reports (time here is never corrected).
const BOOT: &str = "0b1e3c2a-0000-4000-8000-00000005a4e1";
/// Error messages kept for the report.
const ERROR_SAMPLES_MAX: usize = 8;
/// The pool's UDP socket buffers asked for, each way (capped by the kernel's maximum).
const POOL_SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// Rounds the coordinator may run (connect, reconnect storm, …).
pub const ROUNDS_MAX: usize = 4;

/// What the coordinator asks of every device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    /// Each new round drops every connection; the devices reconnect at once.
    pub round: usize,
    /// Start writing the planned rentals.
    pub write: bool,
    /// Close and end.
    pub stop: bool,
}

/// Counters shared by the pool and its coordinator.
#[derive(Debug, Default)]
pub struct Stats {
    /// Devices that completed their handshake and the idle sync of every document, per round.
    pub synced: [AtomicUsize; ROUNDS_MAX],
    /// Devices that finished their writes.
    pub written: AtomicUsize,
    /// Connections that failed (QUIC or TLS handshake, timeout; not refusals at the door).
    pub connect_errors: AtomicU64,
    /// Connections the hub refused at its door (handshake slots and queue full), retried after
    /// the edge's short random wait; the hub's "come back later", not errors.
    pub refused: AtomicU64,
    /// Sessions that ended in an error (stream, protocol, timeout, refusal) or a peer `Error`.
    pub session_errors: AtomicU64,
    /// `Busy` answers honoured (not errors).
    pub deferred: AtomicU64,
    /// Sessions established.
    pub sessions: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Stats {
    fn sample(&self, what: String) {
        if let Ok(mut samples) = self.samples.lock()
            && samples.len() < ERROR_SAMPLES_MAX
        {
            samples.push(what);
        }
    }

    /// A few of the errors seen, for the report.
    pub fn samples(&self) -> Vec<String> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Connection and session errors.
    pub fn errors(&self) -> u64 {
        self.connect_errors.load(Ordering::Relaxed) + self.session_errors.load(Ordering::Relaxed)
    }
}

/// What every device task shares.
#[derive(Debug)]
pub struct Pool {
    /// One client endpoint (one UDP socket) for every connection.
    pub endpoint: quinn::Endpoint,
    /// The hub's QUIC address.
    pub hub: SocketAddr,
    /// The devices' heartbeat interval.
    pub heartbeat_ms: u32,
    /// Counters.
    pub stats: Stats,
    started: Instant,
    boot: BootId,
}

impl Pool {
    /// A pool connecting to `hub` with `heartbeat_ms` heartbeats.
    pub fn new(hub: SocketAddr, heartbeat_ms: u32) -> anyhow::Result<Self> {
        // Every device's traffic passes through this one socket (a real Pi has its own): give
        // it large buffers, as the hub's, so the pool does not drop what the hub sends.
        let socket = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let state = quinn::udp::UdpSocketState::new((&socket).into())?;
        state.set_recv_buffer_size((&socket).into(), POOL_SOCKET_BUFFER_BYTES)?;
        state.set_send_buffer_size((&socket).into(), POOL_SOCKET_BUFFER_BYTES)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            std::sync::Arc::new(quinn::TokioRuntime),
        )?;
        Ok(Pool {
            endpoint,
            hub,
            heartbeat_ms,
            stats: Stats::default(),
            started: Instant::now(),
            boot: BootId::parse(BOOT).map_err(|e| anyhow::anyhow!("boot id: {e}"))?,
        })
    }

    fn now(&self) -> ClockReading {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        ClockReading {
            wall: WallMillis::new(wall),
            boot: self.boot,
            mono: MonoMillis::new(self.started.elapsed().as_millis() as u64 + 1),
        }
    }
}

/// The edge's store and live document, written by the edge's own writer (`live.rs`).
struct LiveEdge {
    conn: rusqlite::Connection,
    live: LiveDoc,
    timeline: Timeline,
    _dir: tempfile::TempDir,
    /// Events still to write (two per rental).
    events_left: u32,
    events_done: u32,
    open: Option<RentalRow>,
}

/// The device's own document.
enum Own {
    /// Only the header, written in memory (the swarm's ten thousand idle devices).
    Plain(Box<AutoCommit>),
    /// The edge's live document in its SQLite store (the same-workload devices).
    Live(Box<LiveEdge>),
}

/// One simulated Pi.
pub struct Device {
    fleet: FleetDevice,
    client: quinn::ClientConfig,
    own_id: DocId,
    own: Own,
    relayed: BTreeMap<DocId, AutoCommit>,
    states: BTreeMap<DocId, PeerDocState>,
    actors: HubActors,
    synced_round: usize,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("device", &self.fleet.credentials.identity.device)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A device whose own document holds only its header (what `LiveDoc::open` writes).
    pub fn idle(fleet: FleetDevice, hub: SocketAddr) -> anyhow::Result<Self> {
        let peer = fleet.credentials.identity;
        let mut doc = AutoCommit::new().with_actor(cartwise_sync_core::device_actor(&peer.device));
        doc.put(ROOT, keys::SCHEMA, DEVICE_DOC_SCHEMA)?;
        doc.put(ROOT, keys::DEVICE, peer.device.to_string())?;
        doc.put(ROOT, keys::BRANCH, peer.branch.to_string())?;
        doc.commit();
        Self::with_own(fleet, hub, Own::Plain(Box::new(doc)))
    }

    /// A device with the edge's store and live document, which will lend and return
    /// `rentals` rentals when told to write.
    pub fn writer(fleet: FleetDevice, hub: SocketAddr, rentals: u32) -> anyhow::Result<Self> {
        let peer = fleet.credentials.identity;
        let dir = tempfile::tempdir()?;
        let conn = open_connection(&dir.path().join("edge.db"))?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        let mut live = LiveDoc::open(&conn, peer.device, peer.branch)?;
        live.persist(&conn)?;
        let timeline = Timeline::load(&conn)?;
        Self::with_own(
            fleet,
            hub,
            Own::Live(Box::new(LiveEdge {
                conn,
                live,
                timeline,
                _dir: dir,
                events_left: 2 * rentals,
                events_done: 0,
                open: None,
            })),
        )
    }

    fn with_own(fleet: FleetDevice, hub: SocketAddr, own: Own) -> anyhow::Result<Self> {
        let peer = fleet.credentials.identity;
        let identity = EdgeIdentity {
            credentials: fleet.credentials.clone(),
            hub: hub.to_string(),
        };
        let client = hub_client_config(&identity)?;
        let own_id = DocId::device(peer.device);
        Ok(Device {
            fleet,
            client,
            own_id,
            own,
            relayed: BTreeMap::new(),
            states: BTreeMap::new(),
            actors: HubActors::for_chain(peer.chain),
            synced_round: 0,
        })
    }

    fn doc_ids(&self) -> Vec<DocId> {
        std::iter::once(self.own_id)
            .chain(self.relayed.keys().copied())
            .collect()
    }

    /// The document and its sync state (an unknown relayed document starts empty).
    fn doc_and_state(&mut self, doc: DocId) -> (&mut AutoCommit, &mut PeerDocState) {
        let state = self
            .states
            .entry(doc)
            .or_insert_with(|| PeerDocState::new(doc));
        let document = if doc == self.own_id {
            match &mut self.own {
                Own::Plain(doc) => doc,
                Own::Live(edge) => edge.live.doc_mut(),
            }
        } else {
            self.relayed.entry(doc).or_default()
        };
        (document, state)
    }

    fn heads(&mut self, doc: DocId) -> Vec<ChangeHash> {
        self.doc_and_state(doc).0.get_heads()
    }

    /// Sends the next `Sync` of `doc`, if there is one.
    fn open_doc(&mut self, session: &mut Session, doc: DocId, stats: &Stats) {
        let (document, state) = self.doc_and_state(doc);
        match state.generate(document) {
            Ok(Some(body)) => {
                let _ = session.send(Message::Sync(body));
            }
            Ok(None) => {}
            Err(error) => {
                stats.session_errors.fetch_add(1, Ordering::Relaxed);
                stats.sample(format!("generating a sync message: {error}"));
            }
        }
    }

    /// Every document's state as the edge reloads it after a reconnect.
    fn resume_states(&mut self) {
        for state in self.states.values_mut() {
            let doc = state.doc();
            if let Ok(resumed) = PeerDocState::decode(doc, &state.encode()) {
                *state = resumed;
            }
        }
    }

    /// Whether every document heard from the hub in this session and both sides share its
    /// heads.
    fn settled(&mut self, heard: &BTreeSet<DocId>) -> bool {
        for doc in self.doc_ids() {
            if !heard.contains(&doc) {
                return false;
            }
            let mut mine = self.heads(doc);
            let mut shared = self
                .states
                .get(&doc)
                .map(|s| s.shared_heads().to_vec())
                .unwrap_or_default();
            mine.sort();
            shared.sort();
            if mine != shared {
                return false;
            }
        }
        true
    }

    /// Whether rentals are still to be written.
    fn writes_left(&self) -> bool {
        matches!(&self.own, Own::Live(edge) if edge.events_left > 0)
    }

    /// Writes the next event (a lend, or the return of the rental lent last) as the engine
    /// does: the row into the live document, then persisted (one Automerge change).
    fn write_next(&mut self, pool: &Pool) -> anyhow::Result<bool> {
        let first_post = self.fleet.first_post;
        let device = self.fleet.credentials.identity.device;
        let Own::Live(edge) = &mut self.own else {
            return Ok(false);
        };
        if edge.events_left == 0 {
            return Ok(false);
        }
        let n = u64::from(edge.events_done);
        let now = pool.now();
        let node = Hlc::node_from_uuid(device.as_uuid());
        let stamp = Stamp {
            wall: now.wall,
            boot: now.boot,
            mono: now.mono,
            hlc: Hlc::new(now.wall.get().max(0) as u64, (n % 1_000) as u16, node)
                .map_err(|e| anyhow::anyhow!("hlc: {e}"))?,
        };
        let row = match edge.open.take() {
            None => {
                let post = first_post + (edge.events_done / 2) as u16 % POSTS_PER_DEVICE;
                RentalRow {
                    id: RentalId::from_parts(now.wall.get().max(0) as u64, rand::random()),
                    phone: Phone::parse(&format!("052{:07}", n % 10_000_000))
                        .map_err(|e| anyhow::anyhow!("phone: {e}"))?,
                    post: PostNo::new(post).map_err(|e| anyhow::anyhow!("post: {e}"))?,
                    status: RentalStatus::Active,
                    rental_minutes: 120,
                    start: stamp,
                    taken: Some(stamp.hlc),
                    end: None,
                    return_post: None,
                    note: None,
                }
            }
            Some(mut row) => {
                row.status = RentalStatus::Returned;
                row.end = Some(stamp);
                row.return_post = Some(row.post);
                row
            }
        };
        edge.live.put_rental(&row, &edge.timeline)?;
        edge.live.persist(&edge.conn)?;
        if row.status == RentalStatus::Active {
            edge.open = Some(row);
        }
        edge.events_left -= 1;
        edge.events_done += 1;
        Ok(edge.events_left > 0)
    }
}

/// How a session ended.
enum End {
    /// The hub said `Busy`: come back after this long.
    Busy(Duration),
    /// The hub refused the connection at its door.
    Refused,
    /// The coordinator dropped the connection (a new round).
    Dropped,
    /// The coordinator stopped the pool.
    Stop,
    /// The hub ended the session cleanly.
    Clean,
    /// A failure, counted and sampled already.
    Failed,
}

/// Runs one device until the pool stops; returns it.
pub async fn run(
    pool: std::sync::Arc<Pool>,
    mut device: Device,
    mut control: watch::Receiver<Phase>,
) -> Device {
    let mut backoff = BACKOFF_MIN;
    loop {
        if control.borrow().stop {
            return device;
        }
        let wait = match session(&pool, &mut device, &mut control).await {
            // As the edge: the hint plus jitter; the failure backoff is kept as it was.
            End::Busy(hint) => {
                pool.stats.deferred.fetch_add(1, Ordering::Relaxed);
                with_jitter(hint)
            }
            // The edge's wait after a refusal: random 1–10 s, jitter included, backoff kept.
            End::Refused => refused_retry(),
            End::Dropped => Duration::ZERO,
            End::Stop => return device,
            End::Clean => {
                backoff = BACKOFF_MIN;
                with_jitter(BACKOFF_MIN)
            }
            End::Failed => {
                let this = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                with_jitter(this)
            }
        };
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                changed = control.changed() => {
                    if changed.is_err() || control.borrow().stop {
                        return device;
                    }
                }
            }
        }
    }
}

/// The edge's jitter: `wait` plus up to half of it again.
fn with_jitter(wait: Duration) -> Duration {
    let half = wait.as_millis().min(u128::from(u32::MAX)) as u64 / 2;
    wait + Duration::from_millis(rand::rng().random_range(0..=half))
}

fn failed(stats: &Stats, counter: &AtomicU64, what: String) -> End {
    counter.fetch_add(1, Ordering::Relaxed);
    stats.sample(what);
    End::Failed
}

async fn session(pool: &Pool, device: &mut Device, control: &mut watch::Receiver<Phase>) -> End {
    let stats = &pool.stats;
    let mut phase = *control.borrow_and_update();
    let connecting =
        match pool
            .endpoint
            .connect_with(device.client.clone(), pool.hub, HUB_SERVER_NAME)
        {
            Ok(connecting) => connecting,
            Err(error) => return failed(stats, &stats.connect_errors, format!("connect: {error}")),
        };
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) if is_refusal(&error) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return End::Refused;
        }
        Ok(Err(error)) => {
            return failed(stats, &stats.connect_errors, format!("connect: {error}"));
        }
        Err(_) => {
            return failed(
                stats,
                &stats.connect_errors,
                format!("connect: no answer within {CONNECT_TIMEOUT:?}"),
            );
        }
    };
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(streams) => streams,
        Err(error) => {
            return failed(
                stats,
                &stats.connect_errors,
                format!("open stream: {error}"),
            );
        }
    };
    let peer = device.fleet.credentials.identity;
    let local = LocalIdentity {
        role: Role::Device,
        chain: peer.chain,
        branch: Some(peer.branch),
        device: Some(peer.device),
        schema_version: DEVICE_DOC_SCHEMA as u32,
    };
    let config = SessionConfig {
        heartbeat_interval_ms: pool.heartbeat_ms,
        ..SessionConfig::new(Side::Initiator)
    };
    let mut session = Session::new(config, local, pool.now());
    device.resume_states();
    let docs = device.doc_ids();
    let listing = docs
        .iter()
        .take(DOCS_PER_MESSAGE_MAX)
        .map(|&doc| DocHeads {
            doc,
            heads: device.heads(doc).into_iter().map(Head::from).collect(),
        })
        .collect();
    let _ = session.send(Message::Docs(Docs { docs: listing }));
    let (pipelined, deferred) = docs.split_at(docs.len().min(PIPELINED_SYNCS_MAX));
    let mut deferred = deferred.to_vec();
    for &doc in pipelined {
        device.open_doc(&mut session, doc, stats);
    }
    let mut heard = BTreeSet::new();
    let mut established = false;
    let mut settled = false;
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = None;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(bytes) => {
                    if let Err(error) = send.write_all(&bytes).await {
                        return failed(stats, &stats.session_errors, format!("write: {error}"));
                    }
                }
                Output::Event(event) => match event {
                    SessionEvent::Established { .. } => {
                        established = true;
                        stats.sessions.fetch_add(1, Ordering::Relaxed);
                        for doc in std::mem::take(&mut deferred) {
                            device.open_doc(&mut session, doc, stats);
                        }
                    }
                    SessionEvent::Docs(listed) => {
                        for DocHeads { doc, .. } in listed.docs {
                            device.open_doc(&mut session, doc, stats);
                        }
                    }
                    SessionEvent::SyncReceived(body) => {
                        let doc = body.doc;
                        let actors = device.actors.clone();
                        let (document, state) = device.doc_and_state(doc);
                        match state.receive(document, &body, &actors) {
                            Ok(_) => {
                                heard.insert(doc);
                            }
                            Err(error) => {
                                stats.session_errors.fetch_add(1, Ordering::Relaxed);
                                stats.sample(format!("applying the hub's {doc}: {error}"));
                            }
                        }
                        device.open_doc(&mut session, doc, stats);
                    }
                    SessionEvent::PeerError(error) => {
                        stats.session_errors.fetch_add(1, Ordering::Relaxed);
                        stats.sample(format!("hub error {}: {}", error.code, error.reason));
                    }
                    SessionEvent::Closed(reason) => {
                        end = Some(match reason {
                            CloseReason::Busy { retry_after_ms } => {
                                End::Busy(Duration::from_millis(u64::from(retry_after_ms)))
                            }
                            CloseReason::Local => End::Clean,
                            CloseReason::PeerBye { .. } => End::Clean,
                            other => failed(
                                stats,
                                &stats.session_errors,
                                format!("session closed: {other:?}"),
                            ),
                        });
                    }
                    _ => {}
                },
            }
        }
        if !settled && established && device.settled(&heard) {
            settled = true;
            if device.synced_round < phase.round {
                device.synced_round = phase.round;
                if let Some(count) = stats.synced.get(phase.round) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if session.is_closed() {
            let _ = send.finish();
            return end.unwrap_or(End::Clean);
        }
        let now = pool.now();
        let wait = session
            .poll_timeout()
            .map(|deadline| Duration::from_millis(deadline.saturating_sub(now.mono.get())))
            .unwrap_or(Duration::from_secs(60));
        let writing = phase.write && established && settled && device.writes_left();
        tokio::select! {
            biased;
            read = recv.read(&mut buf) => match read {
                Ok(Some(n)) => {
                    if let Err(error) = session.handle_bytes(pool.now(), &buf[..n])
                        && end.is_none()
                        && !session.is_closed()
                    {
                        let what = format!("protocol: {error}");
                        return failed(stats, &stats.session_errors, what);
                    }
                }
                Ok(None) => {
                    if session.is_closed() {
                        continue;
                    }
                    let what = "the hub ended the stream".to_owned();
                    return failed(stats, &stats.session_errors, what);
                }
                Err(error) => {
                    return failed(stats, &stats.session_errors, format!("read: {error}"));
                }
            },
            changed = control.changed() => {
                if changed.is_err() {
                    return End::Stop;
                }
                let next = *control.borrow_and_update();
                if next.stop || next.round > phase.round {
                    session.close("the pool drops the connection");
                    while let Some(Output::Send(bytes)) = session.poll_output() {
                        let _ = send.write_all(&bytes).await;
                    }
                    let _ = send.finish();
                    conn.close(0u32.into(), b"dropped");
                    return if next.stop { End::Stop } else { End::Dropped };
                }
                phase = next;
            }
            () = tokio::time::sleep(wait) => {
                if let Err(error) = session.handle_timeout(pool.now()) {
                    return failed(stats, &stats.session_errors, format!("timeout: {error}"));
                }
            }
            () = std::future::ready(()), if writing => {
                match device.write_next(pool) {
                    Ok(more) => {
                        let own = device.own_id;
                        device.open_doc(&mut session, own, stats);
                        if !more {
                            stats.written.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(error) => {
                        stats.session_errors.fetch_add(1, Ordering::Relaxed);
                        stats.sample(format!("writing a rental: {error}"));
                        phase.write = false;
                    }
                }
                tokio::task::yield_now().await;
            }
        }
    }
}
