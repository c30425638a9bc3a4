//! The telemetry outbox: lock faults, bus trouble and status snapshots waiting for the hub,
//! kept in SQLite until the hub acknowledges them.
//!
//! Why it looks like this:
//!
//! - **An SD card is slow to fsync and wears out.** Telemetry is not a rental fact, so it is
//!   not written as it happens: producers [`Outbox::push`] into a bounded in-memory buffer, and
//!   one transaction per [`Outbox::flush`] (every [`FLUSH_INTERVAL`], or at once when a fault
//!   arrives or the buffer is half full) writes the buffer, deletes what the hub acknowledged,
//!   turns new anomalies of the events log into faults and enforces the bound. A power cut
//!   loses at most one interval of non-fault telemetry.
//! - **Bounded on disk.** At most [`OUTBOX_ROWS_MAX`] rows: past it the lowest priority goes
//!   first, oldest first (faults outlive telemetry, which outlives status snapshots), and the
//!   drops are counted into an `outbox.dropped` event, which is itself never evicted.
//! - **At least once, deduplicated by the hub.** Rows are drained in priority order into
//!   `Telemetry` batches and deleted only after the hub's `TelemetryAck` for that batch; a
//!   session that ends first leaves them to be sent again. The hub deduplicates on
//!   (device, boot, mono_ms, kind): the outbox gives each event of a kind its own monotonic
//!   millisecond within a boot (an event that would share one is moved 1 ms later).
//! - **Faults come from the durable events log.** The engine records every anomaly (a lock
//!   that did not open, an unexplained unlock, …) in `events` in the transaction that decides
//!   it; the flush reads new ones past a cursor kept in the same transaction as the rows it
//!   writes, so each becomes exactly one fault event and the engine needs no hook.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cartwise_schema::{BootId, Clock, ClockReading, MonoMillis, WallMillis};
use cartwise_sync_core::message::body::{
    TELEMETRY_DATA_JSON_LEN_MAX, TELEMETRY_EVENTS_MAX, Telemetry, TelemetryAck, TelemetryEvent,
};
use cartwise_sync_core::session::capability;
use cartwise_sync_core::{Message, Session};
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::store::{Store, StoreError, StoreState};

mod rows;
pub mod status;

use rows::{evict, insert, meta, record_drops, set_meta, tap_events};

/// Most rows the outbox keeps on disk; past it the lowest priority, oldest rows are dropped.
pub const OUTBOX_ROWS_MAX: u64 = 10_000;
/// Most events waiting in memory for the next flush; past it the lowest priority, oldest go.
pub const OUTBOX_BUFFER_MAX: usize = 512;
/// How often buffered events are written (one transaction each time).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Most batches sent and not yet acknowledged in one session.
pub const BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Most acknowledged rows waiting for the next flush to delete them; past it no new batch is
/// drained until a flush ran.
pub const ACKED_PENDING_MAX: usize = 4 * BATCHES_IN_FLIGHT_MAX * TELEMETRY_EVENTS_MAX;
/// Most events-log rows turned into faults by one flush (the rest wait for the next).
pub const EVENTS_TAP_MAX: usize = 256;
/// Longest event kind, in bytes: the hub's `telemetry.event_type` column holds 50.
pub const KIND_LEN_MAX: usize = 50;
/// Most kinds whose last monotonic millisecond is remembered (kinds are a small fixed set).
const KINDS_TRACKED_MAX: usize = 256;
/// The kind of the event that counts dropped rows.
pub const DROPPED_KIND: &str = "outbox.dropped";

const META_EVENTS_CURSOR: &str = "events_seq";
const META_DROPPED_TOTAL: &str = "dropped_total";

/// How urgent an event is: drained highest first, evicted lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Periodic status snapshots (the heartbeat class).
    Status = 0,
    /// Everything else worth knowing (bus reopened, drops).
    Telemetry = 1,
    /// Lock faults, failed unlocks, a bus that went away: flushed at once.
    Fault = 2,
}

impl Priority {
    fn index(self) -> usize {
        self as usize
    }

    fn from_db(value: i64) -> Priority {
        match value {
            2 => Priority::Fault,
            1 => Priority::Telemetry,
            _ => Priority::Status,
        }
    }
}

/// What [`Outbox::push`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Buffered for the next periodic flush.
    Buffered,
    /// Buffered, and the flusher was woken (a fault, or the buffer is half full).
    FlushRequested,
    /// The buffer is full of events at least as urgent: this one was dropped (and counted).
    Dropped,
}

/// One event waiting in memory.
#[derive(Debug, Clone)]
struct Pending {
    priority: Priority,
    kind: String,
    data: String,
    wall_ms: i64,
    boot: BootId,
    mono_ms: u64,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Rows written (buffered events and faults from the events log).
    pub written: usize,
    /// Acknowledged rows deleted.
    pub deleted: usize,
    /// Rows dropped by the bound (on disk and in memory) since the last flush.
    pub dropped: u64,
}

/// Counters for the status snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Rows on disk.
    pub rows: u64,
    /// Rows dropped by the bound since the outbox was created.
    pub dropped_total: u64,
}

/// A batch handed to the uplink, to send as one `Telemetry` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The message body.
    pub telemetry: Telemetry,
}

/// The acknowledgement of one batch: its event count and its last event's clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchKey {
    /// Events in the batch.
    pub events: u32,
    /// The last event's boot.
    pub last_boot: BootId,
    /// The last event's monotonic time.
    pub last_mono_ms: u64,
}

#[derive(Debug, Default)]
struct Inner {
    buffer: Vec<Pending>,
    /// Per kind, the last (boot, monotonic ms) given, so no two events of a kind share one.
    last_by_kind: BTreeMap<String, (BootId, u64)>,
    /// Dropped from the buffer since the last flush, by priority.
    dropped_in_memory: [u64; 3],
    /// Batches sent in this session, oldest first: their key and row ids.
    in_flight: VecDeque<(BatchKey, Vec<i64>)>,
    /// Rows the hub acknowledged, deleted by the next flush.
    acked: BTreeSet<i64>,
}

/// The outbox; share it behind an `Arc`. `S` is the store's owned state (the engine's, in the
/// daemon; `()` in tests).
pub struct Outbox<S: StoreState = crate::engine::EdgeState> {
    store: Store<S>,
    clock: Arc<dyn Clock>,
    rows_max: u64,
    inner: Arc<Mutex<Inner>>,
    flush_now: Notify,
    ready: Notify,
}

impl<S: StoreState> std::fmt::Debug for Outbox<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("rows_max", &self.rows_max)
            .finish_non_exhaustive()
    }
}

impl<S: StoreState> Outbox<S> {
    /// An outbox over `store` keeping at most `rows_max` rows. The first open starts reading
    /// the events log at its end: older anomalies are already in the device's document.
    pub async fn open(
        store: Store<S>,
        clock: Arc<dyn Clock>,
        rows_max: u64,
    ) -> Result<Self, StoreError> {
        store
            .transact(|tx, _| {
                let cursor: Option<String> = meta(tx, META_EVENTS_CURSOR)?;
                if cursor.is_none() {
                    let last: i64 =
                        tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
                    set_meta(tx, META_EVENTS_CURSOR, &last.to_string())?;
                }
                Ok(())
            })
            .await?;
        Ok(Self {
            store,
            clock,
            rows_max: rows_max.max(1),
            inner: Arc::new(Mutex::new(Inner::default())),
            flush_now: Notify::new(),
            ready: Notify::new(),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Queues an event in memory (no disk write). A fault, or a buffer half full, wakes the
    /// flusher at once. `kind` is cut to [`KIND_LEN_MAX`] bytes; a payload over the protocol's
    /// limit is replaced by a note saying so.
    pub fn push(
        &self,
        priority: Priority,
        kind: &str,
        data: serde_json::Value,
        at: ClockReading,
    ) -> Pushed {
        let mut data = data.to_string();
        if data.len() > TELEMETRY_DATA_JSON_LEN_MAX {
            data = json!({ "truncated": true, "len": data.len() }).to_string();
        }
        let pending = Pending {
            priority,
            kind: cut(kind, KIND_LEN_MAX),
            data,
            wall_ms: at.wall.get(),
            boot: at.boot,
            mono_ms: at.mono.get(),
        };
        let wake = {
            let mut inner = self.inner();
            if inner.buffer.len() >= OUTBOX_BUFFER_MAX {
                let victim = lowest_oldest(&inner.buffer);
                match victim {
                    Some(index) if inner.buffer[index].priority <= priority => {
                        let gone = inner.buffer.remove(index);
                        inner.dropped_in_memory[gone.priority.index()] += 1;
                    }
                    _ => {
                        inner.dropped_in_memory[priority.index()] += 1;
                        return Pushed::Dropped;
                    }
                }
            }
            let pending = stamped(&mut inner, pending);
            inner.buffer.push(pending);
            priority == Priority::Fault || inner.buffer.len() >= OUTBOX_BUFFER_MAX / 2
        };
        if wake {
            self.flush_now.notify_one();
            return Pushed::FlushRequested;
        }
        Pushed::Buffered
    }

    /// Writes the buffer, deletes acknowledged rows, taps the events log for anomalies and
    /// enforces the bound, in one transaction. On failure the buffer is kept for the next try.
    pub async fn flush(&self) -> Result<FlushReport, StoreError> {
        let (buffer, dropped_in_memory, acked) = {
            let mut inner = self.inner();
            (
                std::mem::take(&mut inner.buffer),
                std::mem::take(&mut inner.dropped_in_memory),
                inner.acked.clone(),
            )
        };
        let shared = Arc::clone(&self.inner);
        let rows_max = self.rows_max;
        let now = self.clock.read();
        let in_flight: BTreeSet<i64> = self
            .inner()
            .in_flight
            .iter()
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        let job_buffer = buffer.clone();
        let job_acked = acked.clone();
        let outcome = self
            .store
            .transact(move |tx, _| {
                let mut report = FlushReport::default();
                for id in &job_acked {
                    report.deleted += tx.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
                }
                for pending in &job_buffer {
                    insert(tx, pending)?;
                    report.written += 1;
                }
                report.written += tap_events(tx, &shared)?;
                let mut dropped = dropped_in_memory;
                evict(tx, rows_max, &mut dropped)?;
                report.dropped = dropped.iter().sum();
                if report.dropped > 0 {
                    record_drops(tx, &shared, &in_flight, dropped, now)?;
                }
                Ok(report)
            })
            .await;
        let mut inner = self.inner();
        match &outcome {
            Ok(report) => {
                inner.acked.retain(|id| !acked.contains(id));
                if report.written > 0 {
                    self.ready.notify_one();
                }
            }
            Err(_) => {
                // Nothing was written: put the events back (newer pushes stay after them) and
                // count the drops again at the next flush.
                let newer = std::mem::take(&mut inner.buffer);
                inner.buffer = buffer;
                inner.buffer.extend(newer);
                for (slot, count) in inner.dropped_in_memory.iter_mut().zip(dropped_in_memory) {
                    *slot += count;
                }
                while inner.buffer.len() > OUTBOX_BUFFER_MAX {
                    let Some(index) = lowest_oldest(&inner.buffer) else {
                        break;
                    };
                    let gone = inner.buffer.remove(index);
                    inner.dropped_in_memory[gone.priority.index()] += 1;
                }
            }
        }
        outcome
    }

    /// The next batch to send, highest priority first, or `None` when nothing is waiting,
    /// [`BATCHES_IN_FLIGHT_MAX`] batches await their acknowledgement, or acknowledged rows
    /// await a flush. The batch counts as in flight until [`Outbox::acked`] or
    /// [`Outbox::session_ended`].
    pub async fn next_batch(&self) -> Result<Option<Batch>, StoreError> {
        let skip: BTreeSet<i64> = {
            let inner = self.inner();
            if inner.in_flight.len() >= BATCHES_IN_FLIGHT_MAX
                || inner.acked.len() >= ACKED_PENDING_MAX
            {
                return Ok(None);
            }
            inner
                .in_flight
                .iter()
                .flat_map(|(_, ids)| ids.iter().copied())
                .chain(inner.acked.iter().copied())
                .collect()
        };
        let limit = i64::try_from(TELEMETRY_EVENTS_MAX + skip.len()).unwrap_or(i64::MAX);
        let rows = self
            .store
            .read(move |conn, _| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, kind, data, wall_ms, boot, mono_ms FROM outbox
                     ORDER BY priority DESC, id ASC LIMIT ?1",
                )?;
                let rows = stmt.query_map([limit], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, i64>(5)?,
                    ))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        let mut ids = Vec::new();
        let mut events = Vec::new();
        for (id, kind, data_json, wall_ms, boot, mono_ms) in rows {
            if skip.contains(&id) || events.len() >= TELEMETRY_EVENTS_MAX {
                continue;
            }
            let Ok(boot) = BootId::parse(&boot) else {
                // A row this program did not write; acknowledge it away at the next flush.
                lock(&self.inner).acked.insert(id);
                continue;
            };
            ids.push(id);
            events.push(TelemetryEvent {
                kind,
                data_json,
                wall_ms: WallMillis::new(wall_ms),
                boot,
                mono_ms: MonoMillis::new(u64::try_from(mono_ms).unwrap_or(0)),
            });
        }
        let Some(last) = events.last() else {
            return Ok(None);
        };
        let key = BatchKey {
            events: u32::try_from(events.len()).unwrap_or(u32::MAX),
            last_boot: last.boot,
            last_mono_ms: last.mono_ms.get(),
        };
        self.inner().in_flight.push_back((key, ids));
        Ok(Some(Batch {
            telemetry: Telemetry { events },
        }))
    }

    /// The hub holds the oldest batch in flight; its rows are deleted by the next flush.
    /// Returns how many rows that is. An acknowledgement that does not match the oldest batch
    /// (which an in-order hub never sends) puts every batch back to be sent again.
    pub fn acked(&self, key: BatchKey) -> usize {
        let mut inner = self.inner();
        match inner.in_flight.front() {
            Some((front, _)) if *front == key => {
                let (_, ids) = inner.in_flight.pop_front().unwrap_or((key, Vec::new()));
                let count = ids.len();
                inner.acked.extend(ids);
                count
            }
            _ => {
                tracing::warn!(
                    ?key,
                    "a telemetry acknowledgement matches no batch in flight; resending"
                );
                inner.in_flight.clear();
                0
            }
        }
    }

    /// The session ended: batches not acknowledged will be sent again.
    pub fn session_ended(&self) {
        self.inner().in_flight.clear();
    }

    /// Batches sent and not yet acknowledged.
    pub fn batches_in_flight(&self) -> usize {
        self.inner().in_flight.len()
    }

    /// Completes when rows were written since the last call (the uplink then drains).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Rows on disk and drops so far.
    pub async fn stats(&self) -> Result<OutboxStats, StoreError> {
        self.store
            .read(|conn, _| {
                let rows: i64 = conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
                let dropped_total = meta(conn, META_DROPPED_TOTAL)?
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Ok(OutboxStats {
                    rows: u64::try_from(rows).unwrap_or(0),
                    dropped_total,
                })
            })
            .await
    }

    /// Flushes every [`FLUSH_INTERVAL`] or when woken, until `stopped`; flushes once more on
    /// the way out.
    pub async fn run_flusher(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = ticker.tick() => false,
                () = self.flush_now.notified() => false,
                _ = stopped.wait_for(|s| *s) => true,
            };
            if let Err(error) = self.flush().await {
                tracing::warn!(%error, "writing the telemetry outbox failed");
            }
            if stopping {
                return;
            }
        }
    }
}

// ---- The uplink's hooks: drain in batches, forget what the hub acknowledged ----

/// Whether the session's peer takes telemetry and acknowledges it. Without acknowledgements
/// nothing is sent: rows would never leave the outbox and would be sent again every session.
pub fn session_takes_telemetry(session: &Session) -> bool {
    let caps = session.capabilities();
    session.is_established()
        && [capability::TELEMETRY, capability::TELEMETRY_ACK]
            .iter()
            .all(|needed| caps.iter().any(|cap| cap == needed))
}

/// Sends waiting rows as `Telemetry` batches, highest priority first, while the in-flight
/// limit allows. Nothing on the lending path waits for this.
pub async fn drain_into<S: StoreState>(outbox: &Outbox<S>, session: &mut Session) {
    if !session_takes_telemetry(session) {
        return;
    }
    loop {
        let batch = match outbox.next_batch().await {
            Ok(Some(batch)) => batch,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "reading the telemetry outbox failed");
                return;
            }
        };
        if let Err(error) = session.send(Message::Telemetry(batch.telemetry)) {
            tracing::warn!(%error, "sending telemetry failed; it stays in the outbox");
            outbox.session_ended();
            return;
        }
    }
}

/// The hub's `TelemetryAck`: the batch's rows go at the next flush; more rows are drained.
pub async fn on_ack<S: StoreState>(outbox: &Outbox<S>, session: &mut Session, ack: &TelemetryAck) {
    let forgotten = outbox.acked(BatchKey {
        events: ack.events,
        last_boot: ack.last_boot,
        last_mono_ms: ack.last_mono_ms.get(),
    });
    tracing::debug!(forgotten, "the hub holds a telemetry batch");
    drain_into(outbox, session).await;
}

/// Locks the shared state; a poisoned lock still holds consistent data (no code panics while
/// holding it), so it is used as is.
fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The index of the lowest priority, oldest buffered event.
fn lowest_oldest(buffer: &[Pending]) -> Option<usize> {
    buffer
        .iter()
        .enumerate()
        .min_by_key(|(index, pending)| (pending.priority, *index))
        .map(|(index, _)| index)
}

/// At most `max` bytes of `text`, cut on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The monotonic millisecond for an event of `kind`: its own, or 1 ms after the last one of
/// that kind in this boot, so no two events of a kind share (boot, mono_ms).
fn unique_mono(inner: &mut Inner, kind: &str, boot: BootId, mono_ms: u64) -> u64 {
    let mono = match inner.last_by_kind.get(kind) {
        Some((last_boot, last)) if *last_boot == boot && mono_ms <= *last => last + 1,
        _ => mono_ms,
    };
    if inner.last_by_kind.len() >= KINDS_TRACKED_MAX && !inner.last_by_kind.contains_key(kind) {
        inner.last_by_kind.clear();
    }
    inner.last_by_kind.insert(kind.to_owned(), (boot, mono));
    mono
}

fn stamped(inner: &mut Inner, mut pending: Pending) -> Pending {
    pending.mono_ms = unique_mono(inner, &pending.kind, pending.boot, pending.mono_ms);
    pending
}
