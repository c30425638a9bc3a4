//! The lending engine: lends and returns carts on this device, with or without any network.
//!
//! It turns kiosk requests and bus transitions into facts, each written durably (SQLite, full
//! sync, mirrored into the live document in the same transaction) before anything physical
//! depends on it: a rental is recorded as `unlocking` before the unlock frame is written; the
//! unlock's outcome, the cart leaving, the dock and the return are recorded as they are sensed.
//! On start and periodically, rentals left `unlocking` (a crash, a bus that stopped answering)
//! are reconciled with what the board senses.
//!
//! Architecture Invariant: the engine makes every decision; the HTTP layer only translates, and
//! the bus driver only reports what the hardware did.

pub mod bundles;
mod docs;
pub(crate) mod fold;
mod give_back;
pub mod intents;
mod lend;
mod query;
mod rotation;
mod sense;
pub mod settings;
mod sync;
mod techbus;
pub mod techlog;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cartwise_schema::{
    AnomalyKind, BoardAddr, BranchId, Clock, ClockReading, DeviceId, HLC_MAX_DRIFT_MS_DEFAULT, Hlc,
    HlcClock, LockNo, PostNo, RentalId, Stamp,
};
use rand::rngs::StdRng;
use rusqlite::Connection;
use serde_json::json;

use crate::cu16::Bus;
use crate::ledger::{self, PostRow, RentalRow};
use crate::live::LiveDoc;
use crate::store::{Store, StoreError, StoreState};
use crate::timekeeping::Timeline;

pub use docs::{DocRefusal, HELD_DOCS_MAX, SyncPeer};
pub use give_back::{ReturnError, ReturnSlot, ReturnState};
pub use lend::{LendError, Lent};
pub use query::{RentalFilter, RentalView, Stats, iso};

/// Where each post is: post number → (board, lock), in board-address order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    posts: Vec<(PostNo, BoardAddr, LockNo)>,
}

impl Layout {
    /// Posts numbered from `first_post` contiguously over `boards` in address order, 16 each.
    pub fn contiguous(
        boards: &[BoardAddr],
        first_post: u16,
    ) -> Result<Self, cartwise_schema::PostError> {
        let mut sorted = boards.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut posts = Vec::with_capacity(sorted.len() * 16);
        for (nth, board) in sorted.iter().enumerate() {
            for lock in LockNo::all() {
                let number = u32::from(first_post) + 16 * nth as u32 + u32::from(lock.index());
                let post = PostNo::new(u16::try_from(number).unwrap_or(u16::MAX))?;
                posts.push((post, *board, lock));
            }
        }
        Ok(Self { posts })
    }

    /// Every (post, board, lock).
    pub fn posts(&self) -> &[(PostNo, BoardAddr, LockNo)] {
        &self.posts
    }

    /// The boards the layout uses, in address order.
    pub fn boards(&self) -> Vec<BoardAddr> {
        let mut boards: Vec<BoardAddr> = self.posts.iter().map(|p| p.1).collect();
        boards.dedup();
        boards
    }

    /// The post at a board's lock.
    pub fn post_at(&self, board: BoardAddr, lock: LockNo) -> Option<PostNo> {
        self.posts
            .iter()
            .find(|p| p.1 == board && p.2 == lock)
            .map(|p| p.0)
    }
}

/// What the engine is configured with.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub device: DeviceId,
    pub branch: BranchId,
    pub layout: Layout,
    /// Rental time before a rental is overdue.
    pub rental_minutes: u32,
    /// Posts tried for one lend before giving up (a jammed lock moves on to the next).
    pub lend_posts_max: usize,
    /// How long a post named for a return stays reserved.
    pub return_hold: Duration,
    /// Rentals `unlocking` for longer than this, and not in flight, are reconciled with the
    /// board.
    pub reconcile_after: Duration,
}

/// What the store thread owns beside the connection.
pub struct EdgeState {
    pub live: LiveDoc,
    /// Woken whenever the live document gained changes (the uplink then syncs them).
    pub changed: Arc<tokio::sync::Notify>,
    /// Bumped whenever the live document gained changes: unlike `changed`, every subscriber
    /// sees every bump (the branch peers' sessions, beside the uplink).
    pub revision: Arc<tokio::sync::watch::Sender<u64>>,
    pub timeline: Timeline,
    hlc: HlcClock,
    device: DeviceId,
    branch: BranchId,
    /// Documents of other writers held here, loaded on first use (`engine/docs.rs`).
    pub(crate) held: docs::HeldDocs,
}

impl std::fmt::Debug for EdgeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeState")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl EdgeState {
    /// Loads the live document, the timeline and the last HLC from the database.
    pub fn load(conn: &Connection, device: DeviceId, branch: BranchId) -> Result<Self, StoreError> {
        let node = Hlc::node_from_uuid(device.as_uuid());
        let hlc = match ledger::last_hlc(conn)? {
            Some(last) => HlcClock::resume(node, last, HLC_MAX_DRIFT_MS_DEFAULT),
            None => HlcClock::new(node, HLC_MAX_DRIFT_MS_DEFAULT),
        };
        Ok(Self {
            changed: Arc::new(tokio::sync::Notify::new()),
            revision: Arc::new(tokio::sync::watch::Sender::new(0)),
            live: LiveDoc::open(conn, device, branch)?,
            timeline: Timeline::load(conn)?,
            hlc,
            device,
            branch,
            held: docs::HeldDocs::new(),
        })
    }

    /// Stamps an event read at `reading`: records the boot's progress and issues an HLC.
    pub fn stamp(&mut self, conn: &Connection, reading: ClockReading) -> Result<Stamp, StoreError> {
        self.timeline.note(conn, reading)?;
        let hlc = self.hlc.now(self.timeline.corrected_reading(&reading));
        Ok(Stamp {
            wall: reading.wall,
            boot: reading.boot,
            mono: reading.mono,
            hlc,
        })
    }

    /// Re-reads a post and mirrors it into the live document.
    pub fn mirror_post(
        &mut self,
        conn: &Connection,
        post: PostNo,
    ) -> Result<Option<PostRow>, StoreError> {
        let row = ledger::post(conn, post)?;
        if let Some(row) = &row {
            self.live.put_post(row)?;
        }
        Ok(row)
    }

    /// Writes a rental's row and mirrors it; a closed rental also enters the ledger.
    pub fn save_rental(&mut self, conn: &Connection, rental: &RentalRow) -> Result<(), StoreError> {
        ledger::update_rental(conn, rental)?;
        self.live.put_rental(rental, &self.timeline)?;
        if !rental.status.is_open() {
            let row = query::rental_json(rental, &self.timeline, self.device);
            ledger::append_ledger(conn, rental, &row)?;
        }
        Ok(())
    }

    /// Records an anomaly as a fact for the manager.
    pub fn anomaly(
        &mut self,
        conn: &Connection,
        kind: AnomalyKind,
        post: Option<PostNo>,
        rental: Option<RentalId>,
        detail: &str,
        at: &Stamp,
    ) -> Result<(), StoreError> {
        tracing::warn!(kind = kind.as_str(), ?post, ?rental, detail, "anomaly");
        let data = json!({ "anomaly": kind.as_str(), "detail": detail });
        ledger::append_event(conn, "anomaly", rental, post, &data, at)?;
        self.live
            .put_anomaly(kind.as_str(), post, rental, detail, at)
    }

    /// Persists the live document's new changes; call last in a job.
    pub fn finish(&mut self, conn: &Connection) -> Result<(), StoreError> {
        if self.live.persist(conn)? {
            self.changed.notify_one();
            self.revision.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(())
    }

    /// The device this state belongs to.
    pub fn device(&self) -> DeviceId {
        self.device
    }
}

impl StoreState for EdgeState {
    fn reload(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let changed = Arc::clone(&self.changed);
        let revision = Arc::clone(&self.revision);
        let epoch = self.live.epoch_cell();
        *self = EdgeState::load(conn, self.device, self.branch)?;
        self.changed = changed;
        self.revision = revision;
        self.live.share_epoch(&epoch);
        Ok(())
    }
}

/// The engine: cheap to share behind an `Arc`.
pub struct Engine {
    store: Store<EdgeState>,
    clock: Arc<dyn Clock>,
    bus: RwLock<Option<Bus>>,
    bus_ok: std::sync::atomic::AtomicBool,
    in_flight: Mutex<BTreeSet<RentalId>>,
    /// Boards read at least once since start: only their posts' sensed state is current.
    baselined: Mutex<BTreeSet<BoardAddr>>,
    rng: Mutex<StdRng>,
    config: EngineConfig,
    /// The live document's current epoch (follows rotations; see `live.rs`).
    epoch: Arc<std::sync::atomic::AtomicU32>,
    /// The chain, once the enrolled identity tells it (`engine/docs.rs`).
    chain: RwLock<Option<cartwise_schema::ChainId>>,
    /// One intents run at a time (`engine/intents.rs`).
    intents_running: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("device", &self.config.device)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the store at `path`, creates the configured posts, and builds the engine.
    pub async fn open(
        path: &std::path::Path,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
        rng: StdRng,
    ) -> Result<Self, StoreError> {
        let (device, branch) = (config.device, config.branch);
        let layout = config.layout.clone();
        let (epoch_tx, epoch_rx) = std::sync::mpsc::sync_channel(1);
        let store = Store::open(path, move |conn| {
            ledger::ensure_posts(conn, layout.posts())?;
            let state = EdgeState::load(conn, device, branch)?;
            let _ = epoch_tx.send(state.live.epoch_cell());
            Ok(state)
        })?;
        let epoch = epoch_rx
            .try_recv()
            .map_err(|_| StoreError::Rejected("the live document did not open".into()))?;
        let engine = Self {
            epoch,
            chain: RwLock::new(None),
            intents_running: tokio::sync::Mutex::new(()),
            store,
            clock,
            bus: RwLock::new(None),
            bus_ok: std::sync::atomic::AtomicBool::new(false),
            in_flight: Mutex::new(BTreeSet::new()),
            baselined: Mutex::new(BTreeSet::new()),
            rng: Mutex::new(rng),
            config,
        };
        let posts: Vec<PostNo> = engine.config.layout.posts().iter().map(|p| p.0).collect();
        let reading = engine.clock.read();
        engine
            .store
            .transact(move |tx, state| {
                state.stamp(tx, reading)?;
                for post in posts {
                    state.mirror_post(tx, post)?;
                }
                state.finish(tx)
            })
            .await?;
        Ok(engine)
    }

    /// The live document as `save()` writes it (for sync and tests).
    pub async fn document(&self) -> Result<Vec<u8>, StoreError> {
        self.store.transact(|_, state| Ok(state.live.save())).await
    }

    /// Hands the engine a bus (or `None` when it stopped answering altogether).
    pub fn set_bus(&self, bus: Option<Bus>) {
        self.bus_ok
            .store(bus.is_some(), std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut slot) = self.bus.write() {
            *slot = bus;
        }
    }

    fn bus(&self) -> Option<Bus> {
        self.bus.read().ok().and_then(|slot| slot.clone())
    }

    /// Whether the lock bus answered its last read.
    pub fn bus_connected(&self) -> bool {
        self.bus_ok.load(std::sync::atomic::Ordering::Relaxed) && self.bus().is_some()
    }

    fn note_bus(&self, ok: bool) {
        self.bus_ok.store(ok, std::sync::atomic::Ordering::Relaxed);
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The store, for other modules of the daemon (sync, diagnostics).
    pub fn store(&self) -> &Store<EdgeState> {
        &self.store
    }

    /// Reads the clock.
    pub fn now(&self) -> ClockReading {
        self.clock.read()
    }

    fn new_rental_id(&self, unix_ms: i64) -> RentalId {
        let mut bytes = [0u8; 10];
        if let Ok(mut rng) = self.rng.lock() {
            rand::Rng::fill_bytes(&mut *rng, &mut bytes);
        }
        RentalId::from_parts(u64::try_from(unix_ms).unwrap_or(0), bytes)
    }

    /// Learns the trusted wall time for the current boot (from an operator or a technician)
    /// and returns the offset in milliseconds (trusted − local).
    pub async fn set_trusted_time(
        &self,
        trusted_wall_ms: i64,
        source: &'static str,
    ) -> Result<i64, StoreError> {
        self.learn_time(
            self.clock.read(),
            cartwise_schema::WallMillis::new(trusted_wall_ms),
            source,
        )
        .await
    }

    fn begin_flight(&self, id: RentalId) {
        if let Ok(mut set) = self.in_flight.lock() {
            set.insert(id);
        }
    }

    fn end_flight(&self, id: RentalId) {
        if let Ok(mut set) = self.in_flight.lock() {
            set.remove(&id);
        }
    }

    fn note_baseline(&self, board: BoardAddr) {
        if let Ok(mut set) = self.baselined.lock() {
            set.insert(board);
        }
    }

    fn baselined(&self) -> Vec<BoardAddr> {
        self.baselined
            .lock()
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    fn in_flight(&self) -> Vec<RentalId> {
        self.in_flight
            .lock()
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }
}
