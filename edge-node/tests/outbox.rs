//! The telemetry outbox: drained by priority, bounded on disk with counted drops, durable
//! across a restart, written in one transaction per flush, deleted only when acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use cartwise_edge_node::outbox::{
    BatchKey, DROPPED_KIND, OUTBOX_BUFFER_MAX, Outbox, Priority, Pushed,
};
use cartwise_edge_node::store::Store;
use cartwise_fixtures::clock::ManualClock;
use cartwise_schema::Clock;
use cartwise_sync_core::message::body::{TELEMETRY_EVENTS_MAX, Telemetry};
use serde_json::json;

const ROWS_MAX: u64 = 10_000;

struct Node {
    clock: Arc<ManualClock>,
    outbox: Outbox<()>,
}

async fn open(path: &Path, clock: Arc<ManualClock>, rows_max: u64) -> Node {
    let store: Store<()> = Store::open(path, |_| Ok(())).unwrap();
    let outbox = Outbox::open(store, clock.clone(), rows_max).await.unwrap();
    Node { clock, outbox }
}

impl Node {
    fn push(&self, priority: Priority, kind: &str) -> Pushed {
        self.clock.advance_ms(10);
        self.outbox
            .push(priority, kind, json!({ "kind": kind }), self.clock.read())
    }

    async fn rows(&self) -> u64 {
        self.outbox.stats().await.unwrap().rows
    }

    async fn batch(&self) -> Telemetry {
        self.outbox.next_batch().await.unwrap().unwrap().telemetry
    }
}

fn kinds(batch: &Telemetry) -> Vec<&str> {
    batch.events.iter().map(|e| e.kind.as_str()).collect()
}

fn key_of(batch: &Telemetry) -> BatchKey {
    let last = batch.events.last().unwrap();
    BatchKey {
        events: batch.events.len() as u32,
        last_boot: last.boot,
        last_mono_ms: last.mono_ms.get(),
    }
}

fn data(batch: &Telemetry, kind: &str) -> serde_json::Value {
    let event = batch.events.iter().find(|e| e.kind == kind).unwrap();
    serde_json::from_str(&event.data_json).unwrap()
}

#[tokio::test]
async fn events_are_drained_faults_first_then_telemetry_then_status_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(
        &dir.path().join("edge.db"),
        Arc::new(ManualClock::new(0)),
        ROWS_MAX,
    )
    .await;
    node.push(Priority::Status, "status.1");
    node.push(Priority::Telemetry, "bus.reopened.1");
    node.push(Priority::Fault, "bus.lost.1");
    node.push(Priority::Status, "status.2");
    node.push(Priority::Fault, "bus.lost.2");
    node.push(Priority::Telemetry, "bus.reopened.2");
    node.outbox.flush().await.unwrap();
    let batch = node.batch().await;
    assert_eq!(
        kinds(&batch),
        [
            "bus.lost.1",
            "bus.lost.2",
            "bus.reopened.1",
            "bus.reopened.2",
            "status.1",
            "status.2"
        ]
    );
}

#[tokio::test]
async fn pushes_stay_in_memory_until_one_flush_writes_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(
        &dir.path().join("edge.db"),
        Arc::new(ManualClock::new(0)),
        ROWS_MAX,
    )
    .await;
    for _ in 0..100 {
        assert_eq!(node.push(Priority::Status, "status"), Pushed::Buffered);
    }
    assert_eq!(node.rows().await, 0, "nothing is written per event");
    let report = node.outbox.flush().await.unwrap();
    assert_eq!(report.written, 100);
    assert_eq!(node.rows().await, 100);
    // Nothing new: the next flush writes nothing.
    assert_eq!(node.outbox.flush().await.unwrap().written, 0);
    // A fault asks for a flush at once; so does a buffer half full.
    assert_eq!(
        node.push(Priority::Fault, "bus.lost"),
        Pushed::FlushRequested
    );
    node.outbox.flush().await.unwrap();
    let mut pushed = Vec::new();
    for _ in 0..OUTBOX_BUFFER_MAX / 2 {
        pushed.push(node.push(Priority::Status, "status"));
    }
    assert!(
        pushed[..OUTBOX_BUFFER_MAX / 2 - 1]
            .iter()
            .all(|p| *p == Pushed::Buffered)
    );
    assert_eq!(pushed.last(), Some(&Pushed::FlushRequested));
}

#[tokio::test]
async fn a_full_outbox_drops_the_lowest_priority_oldest_first_and_reports_the_drops() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(
        &dir.path().join("edge.db"),
        Arc::new(ManualClock::new(0)),
        10,
    )
    .await;
    for n in 0..5 {
        node.push(Priority::Status, &format!("status.{n}"));
        node.push(Priority::Telemetry, &format!("telemetry.{n}"));
        node.push(Priority::Fault, &format!("fault.{n}"));
    }
    let report = node.outbox.flush().await.unwrap();
    assert_eq!(report.dropped, 5);
    let batch = node.batch().await;
    let drained = kinds(&batch);
    assert!(
        drained.iter().all(|k| !k.starts_with("status")),
        "{drained:?}"
    );
    assert_eq!(drained.iter().filter(|k| k.starts_with("fault")).count(), 5);
    assert_eq!(
        drained
            .iter()
            .filter(|k| k.starts_with("telemetry"))
            .count(),
        5
    );
    assert_eq!(
        data(&batch, DROPPED_KIND),
        json!({ "dropped": 5, "status": 5, "telemetry": 0, "fault": 0 })
    );
    node.outbox.session_ended();

    // Three more faults: the four oldest telemetry rows go next, and the unsent report adds
    // them up.
    for n in 5..8 {
        node.push(Priority::Fault, &format!("fault.{n}"));
    }
    assert_eq!(node.outbox.flush().await.unwrap().dropped, 4);
    let batch = node.batch().await;
    assert_eq!(
        kinds(&batch)
            .iter()
            .filter(|k| k.starts_with("telemetry"))
            .collect::<Vec<_>>(),
        [&"telemetry.4"]
    );
    assert_eq!(
        data(&batch, DROPPED_KIND),
        json!({ "dropped": 9, "status": 5, "telemetry": 4, "fault": 0 })
    );
    assert_eq!(node.outbox.stats().await.unwrap().dropped_total, 9);
    assert_eq!(node.rows().await, 10);
}

#[tokio::test]
async fn a_full_buffer_drops_in_memory_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(
        &dir.path().join("edge.db"),
        Arc::new(ManualClock::new(0)),
        ROWS_MAX,
    )
    .await;
    for _ in 0..OUTBOX_BUFFER_MAX {
        node.push(Priority::Telemetry, "telemetry");
    }
    assert_eq!(node.push(Priority::Status, "status"), Pushed::Dropped);
    assert_eq!(
        node.push(Priority::Fault, "fault"),
        Pushed::FlushRequested,
        "a fault displaces the oldest telemetry"
    );
    let report = node.outbox.flush().await.unwrap();
    assert_eq!(report.dropped, 2);
    assert_eq!(report.written, OUTBOX_BUFFER_MAX);
    let mut drained = Vec::new();
    while let Some(batch) = node.outbox.next_batch().await.unwrap() {
        assert!(batch.telemetry.events.len() <= TELEMETRY_EVENTS_MAX);
        drained.extend(batch.telemetry.events);
    }
    assert_eq!(
        drained.len(),
        OUTBOX_BUFFER_MAX + 1,
        "the buffer and the report"
    );
    assert_eq!(drained[0].kind, "fault");
    let all = Telemetry { events: drained };
    assert_eq!(
        data(&all, DROPPED_KIND),
        json!({ "dropped": 2, "status": 1, "telemetry": 1, "fault": 0 })
    );
}

#[tokio::test]
async fn rows_survive_a_restart_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.db");
    let clock = Arc::new(ManualClock::new(0));
    let node = open(&path, clock.clone(), ROWS_MAX).await;
    for n in 0..(TELEMETRY_EVENTS_MAX + 44) {
        node.push(Priority::Telemetry, &format!("t.{n}"));
    }
    node.outbox.flush().await.unwrap();
    let first = node.batch().await;
    assert_eq!(first.events.len(), TELEMETRY_EVENTS_MAX);
    let second = node.batch().await;
    assert_eq!(second.events.len(), 44);
    assert_eq!(node.outbox.batches_in_flight(), 2);
    // The hub holds the first batch; the second is never acknowledged.
    assert_eq!(node.outbox.acked(key_of(&first)), TELEMETRY_EVENTS_MAX);
    node.outbox.flush().await.unwrap();
    assert_eq!(node.rows().await, 44);
    drop(node);

    let node = open(&path, clock, ROWS_MAX).await;
    assert_eq!(node.rows().await, 44);
    let again = node.batch().await;
    assert_eq!(again, second, "the unacknowledged batch is sent again");
    assert!(node.outbox.next_batch().await.unwrap().is_none());
}

#[tokio::test]
async fn an_ack_for_another_batch_or_a_closed_session_sends_everything_again() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(
        &dir.path().join("edge.db"),
        Arc::new(ManualClock::new(0)),
        ROWS_MAX,
    )
    .await;
    node.push(Priority::Fault, "a");
    node.outbox.flush().await.unwrap();
    let first = node.batch().await;
    assert!(
        node.outbox.next_batch().await.unwrap().is_none(),
        "in flight"
    );
    let mut wrong = key_of(&first);
    wrong.last_mono_ms += 1;
    assert_eq!(node.outbox.acked(wrong), 0);
    assert_eq!(node.batch().await, first);
    node.outbox.session_ended();
    assert_eq!(node.batch().await, first);
    assert_eq!(node.outbox.acked(key_of(&first)), 1);
    node.outbox.flush().await.unwrap();
    assert_eq!(node.rows().await, 0);
}

#[tokio::test]
async fn events_of_one_kind_never_share_a_monotonic_millisecond() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(
        &dir.path().join("edge.db"),
        Arc::new(ManualClock::new(0)),
        ROWS_MAX,
    )
    .await;
    let at = node.clock.read();
    for _ in 0..3 {
        node.outbox.push(Priority::Telemetry, "same", json!({}), at);
    }
    node.outbox
        .push(Priority::Telemetry, "other", json!({}), at);
    node.outbox.flush().await.unwrap();
    let batch = node.batch().await;
    let monos: Vec<(String, u64)> = batch
        .events
        .iter()
        .map(|e| (e.kind.clone(), e.mono_ms.get()))
        .collect();
    let t = at.mono.get();
    assert_eq!(
        monos,
        [
            ("same".to_string(), t),
            ("same".to_string(), t + 1),
            ("same".to_string(), t + 2),
            ("other".to_string(), t),
        ]
    );
}

#[tokio::test]
async fn anomalies_of_the_events_log_become_faults_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.db");
    let clock = Arc::new(ManualClock::new(0));
    let store: Store<()> = Store::open(&path, |_| Ok(())).unwrap();
    let log = |kind: &'static str, data: serde_json::Value| {
        let store = store.clone();
        let at = clock.read();
        async move {
            store
                .transact(move |tx, _| {
                    tx.execute(
                        "INSERT INTO events (kind, post, data, wall_ms, boot, mono_ms, hlc)
                         VALUES (?1, 7, ?2, ?3, ?4, ?5, 'h')",
                        rusqlite::params![
                            kind,
                            data.to_string(),
                            at.wall.get(),
                            at.boot.to_string(),
                            at.mono.get() as i64
                        ],
                    )?;
                    Ok(())
                })
                .await
                .unwrap();
        }
    };
    log(
        "anomaly",
        json!({ "anomaly": "before_open", "detail": "old" }),
    )
    .await;
    let outbox = Outbox::open(store.clone(), clock.clone(), ROWS_MAX)
        .await
        .unwrap();
    log("cart_taken", json!({})).await;
    log(
        "anomaly",
        json!({ "anomaly": "unlock_not_opened", "detail": "stayed latched" }),
    )
    .await;
    log(
        "anomaly",
        json!({ "anomaly": "unlock_not_opened", "detail": "stayed latched" }),
    )
    .await;
    assert_eq!(outbox.flush().await.unwrap().written, 2);
    assert_eq!(outbox.flush().await.unwrap().written, 0, "read once");
    let batch = outbox.next_batch().await.unwrap().unwrap().telemetry;
    assert_eq!(
        kinds(&batch),
        ["anomaly.unlock_not_opened", "anomaly.unlock_not_opened"]
    );
    let fault = data(&batch, "anomaly.unlock_not_opened");
    assert_eq!(fault["post"], 7);
    assert_eq!(fault["detail"], "stayed latched");
    assert_eq!(
        batch.events[1].mono_ms.get(),
        batch.events[0].mono_ms.get() + 1,
        "same kind, same stamp: one millisecond apart"
    );
}
