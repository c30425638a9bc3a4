//! The live sync connections of this hub process, and the watcher that closes those of revoked
//! devices and loads chain CAs created by other hub processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cartwise_schema::DeviceId;
use cartwise_sync_core::identity::ChainCaRegistry;
use sqlx::PgPool;

use super::close_code;
use crate::pki;

/// A live connection: who, with which certificate.
struct Live {
    device: DeviceId,
    serial_hex: String,
    connection: quinn::Connection,
}

/// The authenticated sync connections of this hub process, by quinn's stable id.
#[derive(Default)]
pub struct LiveConnections {
    connections: Mutex<HashMap<usize, Live>>,
}

impl std::fmt::Debug for LiveConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConnections")
            .field("len", &self.len())
            .finish()
    }
}

/// Removes its connection from [`LiveConnections`] when dropped (the handler returned).
pub(super) struct LiveGuard {
    live: Arc<LiveConnections>,
    id: usize,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.live.lock().remove(&self.id);
    }
}

impl LiveConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Live>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn register(
        self: &Arc<Self>,
        connection: &quinn::Connection,
        device: DeviceId,
        serial_hex: String,
    ) -> LiveGuard {
        let id = connection.stable_id();
        self.lock().insert(
            id,
            Live {
                device,
                serial_hex,
                connection: connection.clone(),
            },
        );
        LiveGuard {
            live: self.clone(),
            id,
        }
    }

    /// How many sync connections are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The devices connected now (one entry per connection).
    pub fn devices(&self) -> Vec<DeviceId> {
        self.lock().values().map(|live| live.device).collect()
    }

    fn snapshot(&self) -> Vec<(DeviceId, String)> {
        self.lock()
            .values()
            .map(|live| (live.device, live.serial_hex.clone()))
            .collect()
    }

    /// Closes every connection of `devices`; returns how many were closed.
    fn close_devices(&self, devices: &[DeviceId]) -> usize {
        let connections = self.lock();
        let mut closed = 0;
        for live in connections
            .values()
            .filter(|live| devices.contains(&live.device))
        {
            live.connection
                .close(close_code::REVOKED.into(), b"device revoked");
            closed += 1;
        }
        closed
    }
}

/// Every `interval`: closes live connections of revoked devices (or revoked certificates), and
/// trusts chain CAs that another hub process created. Runs until aborted.
pub(super) async fn watch(
    pool: PgPool,
    live: Arc<LiveConnections>,
    registry: Arc<ChainCaRegistry>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let snapshot = live.snapshot();
        match pki::revoked_among(&pool, &snapshot).await {
            Ok(revoked) if !revoked.is_empty() => {
                let closed = live.close_devices(&revoked);
                tracing::info!(?revoked, closed, "closed connections of revoked devices");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "revocation check failed; retrying"),
        }
        if let Err(error) = refresh_chain_cas(&pool, &registry).await {
            tracing::warn!(%error, "loading new chain CAs failed; retrying");
        }
    }
}

/// Loads chain CAs this process does not know yet (one cheap count when nothing changed).
pub(super) async fn refresh_chain_cas(
    pool: &PgPool,
    registry: &ChainCaRegistry,
) -> Result<(), pki::PkiError> {
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM certificate_authorities WHERE kind = 'chain'")
            .fetch_one(pool)
            .await
            .map_err(pki::PkiError::db("counting chain CAs"))?;
    if usize::try_from(count).unwrap_or(0) == registry.len() {
        return Ok(());
    }
    for (chain, ca) in pki::load_chain_cas(pool).await? {
        if !registry.contains(chain) {
            registry.insert(chain, ca)?;
        }
    }
    Ok(())
}
