//! The periodic status snapshot: the lowest-priority telemetry, one event every
//! [`STATUS_INTERVAL`] (and one at start), so the dashboard sees a device's posts, memory and
//! versions without a write per poll. It is the first thing dropped when the outbox is full.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cartwise_schema::{HookState, PostStatus};
use serde_json::json;
use tokio::sync::watch;

use super::{Outbox, Priority};
use crate::engine::Engine;

/// How often a status snapshot is queued.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The kind of the snapshot event.
pub const STATUS_KIND: &str = "status";

/// Queues a snapshot now and every `interval` until `stopped`.
pub async fn run(
    engine: Arc<Engine>,
    outbox: Arc<Outbox>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        match snapshot(&engine, &outbox, started.elapsed()).await {
            Ok(data) => {
                outbox.push(Priority::Status, STATUS_KIND, data, engine.now());
            }
            Err(error) => tracing::warn!(%error, "reading the status snapshot failed"),
        }
    }
}

/// The snapshot: post counts, uptime, resident memory, versions, outbox counters.
pub async fn snapshot(
    engine: &Engine,
    outbox: &Outbox,
    uptime: Duration,
) -> Result<serde_json::Value, crate::store::StoreError> {
    let posts = engine.posts().await?;
    let count = |keep: &dyn Fn(&crate::ledger::PostRow) -> bool| {
        posts.iter().filter(|post| keep(post)).count()
    };
    let stats = outbox.stats().await?;
    Ok(json!({
        "posts": {
            "total": posts.len(),
            "latched": count(&|p| p.hook == HookState::Latched),
            "open": count(&|p| p.hook == HookState::Open),
            "faulty": count(&|p| p.status() == PostStatus::Fault),
            "available": count(&|p| p.status() == PostStatus::Available),
            "present": count(&|p| p.present == Some(true)),
        },
        "bus_connected": engine.bus_connected(),
        "uptime_s": uptime.as_secs(),
        "rss_kb": rss_kb(),
        "app_version": env!("CARGO_PKG_VERSION"),
        "outbox_rows": stats.rows,
        "outbox_dropped_total": stats.dropped_total,
    }))
}

/// This process's resident memory (`VmRSS`), where `/proc` has it.
fn rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}
