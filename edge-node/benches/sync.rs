//! Sync and bounded live state: the edge's real live-document writer (`live.rs`,
//! with rotation) against a hub-side copy, over in-memory `cartwise_sync_core::Session`s.
//!
//! `cargo bench -p cartwise-edge-node --bench sync -- [--quick] [--json FILE]`
//!
//! - A day offline: 300 rentals written (lent and returned) while the hub is away, then one
//!   reconnect: time to converge (all Automerge work included), round trips, sync bytes per
//!   rental. The device offers every own document (current epoch and retired ones), listed in
//!   a pipelined `Docs` as the uplink does.
//! - Idle reconnect: nothing changed; `Sync`/`SyncIdle` bytes per document both ways, round
//!   trips, and the whole session's bytes (Hello, Welcome, Docs included) for reference.
//! - 100,000 rentals (10,000 with `--quick`) through the same writer, the hub online (synced
//!   every 100 rentals, closed rentals acknowledged and removed once it holds them): the live
//!   state (current epoch plus retired epochs waiting, as stored) and the time a start takes
//!   to load it (a fresh store connection, then `LiveDoc::open`), beside the same rentals
//!   written into one document that is never rotated (baseline).
//!
//! Write durability is off in this process (`synchronous = OFF`): what is measured is the
//! documents, not fsync.
#![allow(clippy::expect_used)] // fixed, valid ids: the setup fails loudly if they ever are not

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use automerge::AutoCommit;
use cartwise_edge_node::ledger::RentalRow;
use cartwise_edge_node::live::{self, HUB_PEER, LiveDoc};
use cartwise_edge_node::store::open_connection;
use cartwise_edge_node::timekeeping::Timeline;
use cartwise_schema::{
    BootId, BranchId, ChainId, ClockReading, DeviceId, Hlc, MonoMillis, Phone, PostNo, RentalId,
    RentalStatus, Stamp, WallMillis,
};
use cartwise_sync_core::message::body::{DocHeads, Docs, Role};
use cartwise_sync_core::session::LocalIdentity;
use cartwise_sync_core::{
    DocId, FrameDecoder, HubActors, Message, Output, PeerDocState, Session, SessionConfig,
    SessionEvent, Side,
};
use rusqlite::{Connection, params};
use serde_json::{Value, json};

const DEVICE: &str = "0b1e3c2a-0000-4000-8000-000000001001";
const BRANCH: &str = "0b1e3c2a-0000-4000-8000-000000000101";
const CHAIN: &str = "0b1e3c2a-0000-4000-8000-000000000001";
const BOOT: &str = "0b1e3c2a-0000-4000-8000-0000000b0071";

/// The performance targets.
const CONVERGE_MS_MAX: f64 = 250.0;
const ROUND_TRIPS_MAX: f64 = 3.0;
const BYTES_PER_RENTAL_MAX: f64 = 300.0;
const IDLE_BYTES_PER_DOC_MAX: f64 = 200.0;
const LIVE_STATE_BYTES_MAX: f64 = 64.0 * 1024.0;
const LIVE_LOAD_MS_MAX: f64 = 10.0;

/// Start-up loads timed after the long run (p50 and p99 are reported).
const LOAD_SAMPLES: usize = 51;

/// Rentals in a day offline.
const DAY_RENTALS: u64 = 300;
/// The hub syncs (and acknowledges) every this many rentals in the long run.
const HUB_SYNC_EVERY: u64 = 100;

struct Args {
    quick: bool,
    json: Option<PathBuf>,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut args = Args {
            quick: false,
            json: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--quick" => args.quick = true,
                "--json" => args.json = Some(it.next().context("--json needs a FILE")?.into()),
                _ => {}
            }
        }
        Ok(args)
    }
}

fn device() -> DeviceId {
    DeviceId::parse(DEVICE).expect("device id")
}

fn branch() -> BranchId {
    BranchId::parse(BRANCH).expect("branch id")
}

fn reading(mono: u64) -> ClockReading {
    ClockReading {
        wall: WallMillis::new(1_700_000_000_000 + mono as i64),
        boot: BootId::parse(BOOT).expect("boot id"),
        mono: MonoMillis::new(mono),
    }
}

/// The edge's store and live document, written the way the engine writes them.
struct Edge {
    conn: Connection,
    live: LiveDoc,
    timeline: Timeline,
    _dir: tempfile::TempDir,
}

impl Edge {
    fn open(rotate: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let conn = open_connection(&dir.path().join("edge.db"))?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        let mut live = LiveDoc::open(&conn, device(), branch())?;
        if !rotate {
            live.set_rotate_saved_bytes(usize::MAX);
        }
        let timeline = Timeline::load(&conn)?;
        Ok(Self {
            conn,
            live,
            timeline,
            _dir: dir,
        })
    }

    fn stamp(n: u64, offset_ms: u64) -> Stamp {
        let mono = n * 60_000 + offset_ms;
        let r = reading(mono);
        let node = Hlc::node_from_uuid(device().as_uuid());
        Stamp {
            wall: r.wall,
            boot: r.boot,
            mono: r.mono,
            hlc: Hlc::new(1_700_000_000_000 + mono, 0, node).expect("hlc"),
        }
    }

    /// Rental `n`: lent (cart taken), as the live document mirrors it.
    fn lend(&mut self, n: u64) -> anyhow::Result<RentalRow> {
        let row = self.lend_in_memory(n)?;
        self.live.persist(&self.conn)?;
        Ok(row)
    }

    /// The rental docked back.
    fn close(&mut self, row: RentalRow, n: u64) -> anyhow::Result<RentalRow> {
        let row = self.close_in_memory(row, n)?;
        self.live.persist(&self.conn)?;
        Ok(row)
    }

    /// The hub acknowledged it: it leaves the live document.
    fn ack(&mut self, id: RentalId) -> anyhow::Result<()> {
        self.live.remove_rental(id)?;
        self.live.persist(&self.conn)?;
        Ok(())
    }

    /// Every own document as stored: current epoch first, then retired ones.
    fn own_docs(&self) -> anyhow::Result<BTreeMap<DocId, AutoCommit>> {
        let mut docs = BTreeMap::new();
        let current = self.live.doc_id();
        docs.insert(current, live::load_retired(&self.conn, current)?);
        for retired in live::retired_epochs(&self.conn, device())? {
            docs.insert(retired.doc, live::load_retired(&self.conn, retired.doc)?);
        }
        Ok(docs)
    }

    /// Bytes the live state takes in the store: every live document's snapshot and changes.
    fn stored_bytes(&self) -> anyhow::Result<(u64, usize)> {
        let snapshots: i64 = self.conn.query_row(
            "SELECT coalesce(sum(length(bytes)), 0) FROM doc_snapshots",
            [],
            |r| r.get(0),
        )?;
        let changes: i64 = self.conn.query_row(
            "SELECT coalesce(sum(length(bytes)), 0) FROM doc_changes",
            [],
            |r| r.get(0),
        )?;
        let docs: i64 = self
            .conn
            .query_row("SELECT count(*) FROM doc_snapshots", [], |r| r.get(0))?;
        Ok(((snapshots + changes) as u64, docs as usize))
    }

    fn save_hub_state(&self, state: &PeerDocState) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO sync_peer_states (peer, doc, state) VALUES (?1, ?2, ?3)
             ON CONFLICT (peer, doc) DO UPDATE SET state = excluded.state",
            params![HUB_PEER, state.doc().to_string(), state.encode()],
        )?;
        Ok(())
    }

    fn hub_state(&self, doc: DocId) -> anyhow::Result<PeerDocState> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT state FROM sync_peer_states WHERE peer = ?1 AND doc = ?2",
                params![HUB_PEER, doc.to_string()],
                |r| r.get(0),
            )
            .ok();
        Ok(bytes
            .and_then(|b| PeerDocState::decode(doc, &b).ok())
            .unwrap_or_else(|| PeerDocState::new(doc)))
    }
}

/// One end of an in-memory session with its documents and per-document sync states.
struct Node {
    session: Session,
    docs: BTreeMap<DocId, AutoCommit>,
    states: BTreeMap<DocId, PeerDocState>,
    hub: bool,
}

impl Node {
    fn new(
        hub: bool,
        docs: BTreeMap<DocId, AutoCommit>,
        states: &BTreeMap<DocId, Vec<u8>>,
    ) -> Self {
        let (config, identity, boot) = if hub {
            (
                SessionConfig {
                    wall_trusted: true,
                    ..SessionConfig::new(Side::Responder)
                },
                LocalIdentity {
                    role: Role::Hub,
                    chain: ChainId::parse(CHAIN).expect("chain"),
                    branch: None,
                    device: None,
                    schema_version: 1,
                },
                reading(1),
            )
        } else {
            (
                SessionConfig::new(Side::Initiator),
                LocalIdentity {
                    role: Role::Device,
                    chain: ChainId::parse(CHAIN).expect("chain"),
                    branch: Some(branch()),
                    device: Some(device()),
                    schema_version: 1,
                },
                reading(1),
            )
        };
        let states = states
            .iter()
            .filter_map(|(doc, bytes)| Some((*doc, PeerDocState::decode(*doc, bytes).ok()?)))
            .collect();
        Node {
            session: Session::new(config, identity, boot),
            docs,
            states,
            hub,
        }
    }

    /// Device: `Docs` listing every own document, then the first `Sync` of each.
    fn open_all(&mut self) {
        let docs: Vec<DocId> = self.docs.keys().copied().collect();
        let listing = docs
            .iter()
            .map(|doc| DocHeads {
                doc: *doc,
                heads: Vec::new(),
            })
            .collect();
        let _ = self.session.send(Message::Docs(Docs { docs: listing }));
        for doc in docs {
            self.generate(doc);
        }
    }

    fn generate(&mut self, doc: DocId) {
        let document = self.docs.entry(doc).or_default();
        let state = self
            .states
            .entry(doc)
            .or_insert_with(|| PeerDocState::new(doc));
        if let Ok(Some(body)) = state.generate(document) {
            let _ = self.session.send(Message::Sync(body));
        }
    }

    fn drain(&mut self, now: ClockReading) -> Vec<u8> {
        let mut wire = Vec::new();
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Send(frame) => wire.extend(frame),
                Output::Event(SessionEvent::PeerHello(_)) if self.hub => {
                    let _ = self.session.admit(now);
                }
                Output::Event(SessionEvent::Docs(docs)) if self.hub => {
                    for listed in docs.docs {
                        self.generate(listed.doc);
                    }
                }
                Output::Event(SessionEvent::SyncReceived(body)) => {
                    let doc = body.doc;
                    let document = self.docs.entry(doc).or_default();
                    let state = self
                        .states
                        .entry(doc)
                        .or_insert_with(|| PeerDocState::new(doc));
                    if state.receive(document, &body, &HubActors::new([])).is_ok() {
                        self.generate(doc);
                    }
                }
                Output::Event(_) => {}
            }
        }
        wire
    }

    fn persisted(&self) -> BTreeMap<DocId, Vec<u8>> {
        self.states
            .iter()
            .map(|(doc, state)| (*doc, state.encode()))
            .collect()
    }
}

#[derive(Debug, Default)]
struct Traffic {
    flights: usize,
    total_bytes: usize,
    sync_bytes: usize,
    sync_frames: usize,
    elapsed: Duration,
}

fn sync_frame_bytes(wire: &[u8]) -> (usize, usize) {
    let mut decoder = FrameDecoder::new();
    if decoder.feed(wire).is_err() {
        return (0, 0);
    }
    let (mut bytes, mut frames) = (0, 0);
    while let Ok(Some(payload)) = decoder.next() {
        if matches!(
            Message::decode(&payload),
            Ok(Message::Sync(_) | Message::SyncIdle(_))
        ) {
            bytes += payload.len() + 4;
            frames += 1;
        }
    }
    (bytes, frames)
}

/// Delivers flights alternately until neither side sends anything.
fn run(device: &mut Node, hub: &mut Node) -> Traffic {
    let started = Instant::now();
    let mut traffic = Traffic::default();
    let mut idle = 0;
    let mut from_device = true;
    let mut mono = 10;
    while idle < 2 && traffic.flights < 100 {
        mono += 1;
        let now = reading(mono);
        let (sender, receiver) = if from_device {
            (&mut *device, &mut *hub)
        } else {
            (&mut *hub, &mut *device)
        };
        let wire = sender.drain(now);
        let _ = receiver.session.handle_bytes(now, &wire);
        if wire.is_empty() {
            idle += 1;
        } else {
            idle = 0;
            traffic.flights += 1;
            traffic.total_bytes += wire.len();
            let (bytes, frames) = sync_frame_bytes(&wire);
            traffic.sync_bytes += bytes;
            traffic.sync_frames += frames;
        }
        from_device = !from_device;
    }
    traffic.elapsed = started.elapsed();
    traffic
}

/// Syncs every own document with the hub's copies directly (no session), as an online hub
/// keeps up; stores the edge's sync states; drops retired epochs the hub holds whole.
fn hub_keeps_up(
    edge: &mut Edge,
    hub: &mut BTreeMap<DocId, (AutoCommit, PeerDocState)>,
) -> anyhow::Result<()> {
    for (doc, mut document) in edge.own_docs()? {
        let mut state = edge.hub_state(doc)?;
        let (hub_doc, hub_state) = hub
            .entry(doc)
            .or_insert_with(|| (AutoCommit::new(), PeerDocState::new(doc)));
        for _ in 0..16 {
            let up = state.generate(&mut document)?;
            if let Some(body) = &up {
                hub_state.receive(hub_doc, body, &HubActors::new([]))?;
            }
            let down = hub_state.generate(hub_doc)?;
            if let Some(body) = &down {
                state.receive(&mut document, body, &HubActors::new([]))?;
            }
            if up.is_none() && down.is_none() {
                break;
            }
        }
        edge.save_hub_state(&state)?;
    }
    for retired in live::retired_epochs(&edge.conn, device())? {
        if live::hub_holds(&edge.conn, retired.doc, &retired.final_heads)? {
            live::drop_epoch(&edge.conn, retired.doc)?;
            hub.remove(&retired.doc);
        }
    }
    Ok(())
}

struct Row {
    name: &'static str,
    value: f64,
    unit: &'static str,
    target: Option<f64>,
    baseline: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let long_rentals: u64 = if args.quick { 10_000 } else { 100_000 };
    let mut rows = Vec::new();

    // ---- A day offline, then reconnect ----
    let mut edge = Edge::open(true)?;
    let mut hub_docs: BTreeMap<DocId, (AutoCommit, PeerDocState)> = BTreeMap::new();
    // Yesterday: 50 rentals, all at the hub and acknowledged.
    let mut n = 0;
    let mut closed = Vec::new();
    for _ in 0..50 {
        let row = edge.lend(n)?;
        closed.push(edge.close(row, n)?.id);
        n += 1;
    }
    hub_keeps_up(&mut edge, &mut hub_docs)?;
    for id in closed.drain(..) {
        edge.ack(id)?;
    }
    hub_keeps_up(&mut edge, &mut hub_docs)?;
    let epoch_before = edge.live.doc_id().epoch();
    // Offline: a day of rentals.
    for _ in 0..DAY_RENTALS {
        let row = edge.lend(n)?;
        edge.close(row, n)?;
        n += 1;
    }
    let rotations = edge.live.doc_id().epoch() - epoch_before;
    let device_states: BTreeMap<DocId, Vec<u8>> = edge
        .own_docs()?
        .keys()
        .filter_map(|doc| Some((*doc, edge.hub_state(*doc).ok()?.encode())))
        .collect();
    let hub_states: BTreeMap<DocId, Vec<u8>> = hub_docs
        .iter()
        .map(|(doc, (_, state))| (*doc, state.encode()))
        .collect();
    let hub_side: BTreeMap<DocId, AutoCommit> = hub_docs
        .iter_mut()
        .map(|(doc, (document, _))| (*doc, document.fork()))
        .collect();
    let own = edge.own_docs()?;
    let own_count = own.len();
    let mut device_node = Node::new(false, own, &device_states);
    let mut hub_node = Node::new(true, hub_side, &hub_states);
    let started = Instant::now();
    device_node.open_all();
    let day = run(&mut device_node, &mut hub_node);
    let converge_ms = started.elapsed().as_secs_f64() * 1000.0;
    for (doc, document) in device_node.docs.iter_mut() {
        let hub_heads = hub_node
            .docs
            .get_mut(doc)
            .map(|d| d.get_heads())
            .unwrap_or_default();
        anyhow::ensure!(document.get_heads() == hub_heads, "{doc} did not converge");
    }
    println!(
        "day offline: {DAY_RENTALS} rentals, {rotations} rotation(s), {own_count} own document(s) offered"
    );
    rows.push(Row {
        name: "day_offline_converge",
        value: converge_ms,
        unit: "ms",
        target: Some(CONVERGE_MS_MAX),
        baseline: None,
    });
    rows.push(Row {
        name: "day_offline_round_trips",
        value: day.flights.div_ceil(2) as f64,
        unit: "round trips",
        target: Some(ROUND_TRIPS_MAX),
        baseline: None,
    });
    rows.push(Row {
        name: "day_offline_bytes_per_rental",
        value: day.sync_bytes as f64 / DAY_RENTALS as f64,
        unit: "B/rental",
        target: Some(BYTES_PER_RENTAL_MAX),
        baseline: None,
    });
    rows.push(Row {
        name: "day_offline_session_bytes_per_rental",
        value: day.total_bytes as f64 / DAY_RENTALS as f64,
        unit: "B/rental",
        target: None,
        baseline: None,
    });

    // ---- Idle reconnect ----
    let (device_states, hub_states) = (device_node.persisted(), hub_node.persisted());
    let docs = device_node.docs.len();
    let mut device_node = Node::new(false, device_node.docs, &device_states);
    let mut hub_node = Node::new(true, hub_node.docs, &hub_states);
    device_node.open_all();
    let idle = run(&mut device_node, &mut hub_node);
    rows.push(Row {
        name: "idle_reconnect_sync_bytes_per_doc",
        value: idle.sync_bytes as f64 / docs as f64,
        unit: "B/doc",
        target: Some(IDLE_BYTES_PER_DOC_MAX),
        baseline: Some(294.0),
    });
    rows.push(Row {
        name: "idle_reconnect_round_trips",
        value: idle.flights.div_ceil(2) as f64,
        unit: "round trips",
        target: Some(1.0),
        baseline: None,
    });
    rows.push(Row {
        name: "idle_reconnect_session_bytes",
        value: idle.total_bytes as f64,
        unit: "B",
        target: None,
        baseline: None,
    });

    // ---- Long run: live state after many rentals ----
    let mut edge = Edge::open(true)?;
    let mut hub_docs = BTreeMap::new();
    let mut baseline = Edge::open(false)?;
    let started = Instant::now();
    let mut pending = Vec::new();
    for n in 0..long_rentals {
        let row = edge.lend(n)?;
        pending.push(edge.close(row, n)?.id);
        if (n + 1) % HUB_SYNC_EVERY == 0 {
            edge.conn.execute_batch("BEGIN")?;
            hub_keeps_up(&mut edge, &mut hub_docs)?;
            for id in pending.drain(..) {
                edge.ack(id)?;
            }
            edge.conn.execute_batch("COMMIT")?;
        }
    }
    hub_keeps_up(&mut edge, &mut hub_docs)?;
    let write_s = started.elapsed().as_secs_f64();
    let (live_bytes, live_docs) = edge.stored_bytes()?;
    let epochs = edge.live.doc_id().epoch();
    // What a Pi does at start: open the store (connection, migrations check) and load the
    // live document. The document alone is timed too, to tell the two apart.
    let db_path = edge._dir.path().join("edge.db");
    let mut loads = Vec::new();
    let mut doc_loads = Vec::new();
    for _ in 0..LOAD_SAMPLES {
        let t = Instant::now();
        let conn = open_connection(&db_path)?;
        let opened_at = Instant::now();
        let opened = LiveDoc::open(&conn, device(), branch())?;
        let done = Instant::now();
        loads.push((done - t).as_secs_f64() * 1000.0);
        doc_loads.push((done - opened_at).as_secs_f64() * 1000.0);
        drop(opened);
    }
    let (load_ms, load_p99_ms) = (percentile(&mut loads, 50), percentile(&mut loads, 99));
    let (doc_load_ms, doc_load_p99_ms) = (
        percentile(&mut doc_loads, 50),
        percentile(&mut doc_loads, 99),
    );
    let parts = load_parts(&edge.conn, &edge.live.doc_id().to_string())?;

    // Baseline: the same rentals in one document, never rotated (in memory; acknowledged ones
    // deleted, which Automerge keeps in history).
    let started = Instant::now();
    for n in 0..long_rentals {
        let row = baseline.lend_in_memory(n)?;
        let closed = baseline.close_in_memory(row, n)?;
        baseline.live.remove_rental(closed.id)?;
        baseline.live.heads();
    }
    let baseline_write_s = started.elapsed().as_secs_f64();
    let saved = baseline.live.save();
    let mut baseline_loads = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let doc = AutoCommit::load(&saved)?;
        baseline_loads.push(t.elapsed().as_secs_f64() * 1000.0);
        drop(doc);
    }
    baseline_loads.sort_by(f64::total_cmp);
    println!(
        "{long_rentals} rentals: {epochs} rotations, {live_docs} live document(s) stored; written in {write_s:.1} s (baseline {baseline_write_s:.1} s)"
    );
    println!(
        "start-up load of {LOAD_SAMPLES}: p50 {load_ms:.2} ms, p99 {load_p99_ms:.2} ms (store opened, then the live document: p50 {doc_load_ms:.2} ms, p99 {doc_load_p99_ms:.2} ms)"
    );
    println!(
        "  of which Automerge: snapshot {} B loaded in {:.2} ms, log of {} chunk(s), {} B, applied in {:.2} ms (p50); a save_incremental after loading would add {:.2} ms",
        parts.snapshot_bytes,
        parts.load_ms,
        parts.log_chunks,
        parts.log_bytes,
        parts.log_ms,
        parts.resave_ms
    );
    rows.push(Row {
        name: "live_state_bytes",
        value: live_bytes as f64,
        unit: "B",
        target: Some(LIVE_STATE_BYTES_MAX),
        baseline: Some(saved.len() as f64),
    });
    rows.push(Row {
        name: "live_state_load",
        value: load_ms,
        unit: "ms",
        target: Some(LIVE_LOAD_MS_MAX),
        baseline: Some(baseline_loads[baseline_loads.len() / 2]),
    });
    rows.push(Row {
        name: "live_state_load_p99",
        value: load_p99_ms,
        unit: "ms",
        target: Some(LIVE_LOAD_MS_MAX),
        baseline: None,
    });
    rows.push(Row {
        name: "live_state_doc_load",
        value: doc_load_ms,
        unit: "ms",
        target: None,
        baseline: None,
    });
    rows.push(Row {
        name: "live_state_epochs",
        value: f64::from(epochs),
        unit: "rotations",
        target: None,
        baseline: None,
    });

    println!(
        "\n{:<40} {:>12} {:<12} {:>10} {:>12}",
        "metric", "value", "unit", "target", "baseline"
    );
    for row in &rows {
        let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        let verdict = match row.target {
            Some(t) if row.value <= t => " ok",
            Some(_) => " OVER",
            None => "",
        };
        println!(
            "{:<40} {:>12.1} {:<12} {:>10} {:>12}{verdict}",
            row.name,
            row.value,
            row.unit,
            fmt(row.target),
            fmt(row.baseline)
        );
    }
    if let Some(path) = &args.json {
        let doc: Vec<Value> = rows
            .iter()
            .map(|row| {
                json!({
                    "name": row.name,
                    "value": row.value,
                    "unit": row.unit,
                    "target": row.target,
                    "baseline": row.baseline,
                })
            })
            .collect();
        let report = json!({ "rentals": long_rentals, "quick": args.quick, "results": doc });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// The live document's stored parts and the time Automerge takes for each.
struct LoadParts {
    snapshot_bytes: usize,
    load_ms: f64,
    log_chunks: usize,
    log_bytes: usize,
    log_ms: f64,
    /// A `save_incremental` right after the load (re-encodes the whole history).
    resave_ms: f64,
}

/// Times Automerge alone on the stored snapshot and change log of `name` (no SQLite).
fn load_parts(conn: &Connection, name: &str) -> anyhow::Result<LoadParts> {
    let snapshot: Vec<u8> = conn
        .query_row(
            "SELECT bytes FROM doc_snapshots WHERE doc = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap_or_default();
    let mut stmt = conn.prepare("SELECT bytes FROM doc_changes WHERE doc = ?1 ORDER BY seq")?;
    let chunks: Vec<Vec<u8>> = stmt
        .query_map([name], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let log = chunks.concat();
    let (mut loads, mut applies, mut resaves) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..LOAD_SAMPLES {
        let t = Instant::now();
        let mut doc = AutoCommit::load(&snapshot)?;
        let loaded = Instant::now();
        if !log.is_empty() {
            doc.load_incremental(&log)?;
        }
        let applied = Instant::now();
        // What a load followed by Automerge's own save cursor costs (not done on load).
        let _ = doc.save_incremental();
        let resaved = Instant::now();
        loads.push((loaded - t).as_secs_f64() * 1000.0);
        applies.push((applied - loaded).as_secs_f64() * 1000.0);
        resaves.push((resaved - applied).as_secs_f64() * 1000.0);
    }
    Ok(LoadParts {
        snapshot_bytes: snapshot.len(),
        load_ms: percentile(&mut loads, 50),
        log_chunks: chunks.len(),
        log_bytes: log.len(),
        log_ms: percentile(&mut applies, 50),
        resave_ms: percentile(&mut resaves, 50),
    })
}

/// The `pct`th percentile (nearest rank) of `samples`, sorting them.
fn percentile(samples: &mut [f64], pct: usize) -> f64 {
    samples.sort_by(f64::total_cmp);
    let rank = (samples.len() * pct).div_ceil(100).max(1);
    samples.get(rank - 1).copied().unwrap_or(f64::NAN)
}

impl Edge {
    /// `lend` without persisting (the never-rotated baseline lives in memory).
    fn lend_in_memory(&mut self, n: u64) -> anyhow::Result<RentalRow> {
        let mut random = [0u8; 10];
        let mix = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
        random[..8].copy_from_slice(&mix);
        random[8] = (n % 251) as u8;
        let row = RentalRow {
            id: RentalId::from_parts(1_700_000_000_000 + n * 60_000, random),
            phone: Phone::parse(&format!("05{}{:07}", 2 + n % 7, n % 10_000_000))?,
            post: PostNo::new((n % 48 + 1) as u16)?,
            status: RentalStatus::Active,
            rental_minutes: 120,
            start: Self::stamp(n, 0),
            taken: Some(Self::stamp(n, 3_000).hlc),
            end: None,
            return_post: None,
            note: None,
        };
        self.live.put_rental(&row, &self.timeline)?;
        self.live.heads();
        Ok(row)
    }

    fn close_in_memory(&mut self, mut row: RentalRow, n: u64) -> anyhow::Result<RentalRow> {
        row.status = RentalStatus::Returned;
        row.end = Some(Self::stamp(n, 40 * 60_000));
        row.return_post = Some(row.post);
        self.live.put_rental(&row, &self.timeline)?;
        self.live.heads();
        Ok(row)
    }
}
