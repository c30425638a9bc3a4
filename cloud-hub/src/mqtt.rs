//! The optional MQTT bridge (`serve --mqtt URL`, off by default): for the chains it is
//! configured for, the hub publishes
//!
//! - `cartwise/{chain}/{branch}/devices/{device}/status` (retained) when a device's document
//!   changes: `{"status", "last_heartbeat", "firmware_version"}` from the projection;
//! - `cartwise/{chain}/{branch}/devices/{device}/telemetry` for every telemetry batch stored:
//!   `{"events": [{"type", "data", "at"}]}`;
//! - `cartwise/{chain}/{branch}/carts/{cart}/status` (retained) for each cart of a changed
//!   branch whose projected state differs from what was last published:
//!   `{"cart_number", "status", "is_locked", "assigned_to"}`;
//!
//! and accepts `cartwise/{chain}/{branch}/carts/{cart}/unlock` (a maintenance unlock of the
//! cart's post, [`IntentKind::UnlockPost`]) and `…/lock` (the post out of service,
//! [`IntentKind::OutOfService`]: the lock stays latched and nothing is lent from it; "in
//! service" stays with the API). Each becomes an intent through [`crate::intents::create`],
//! so it is validated, audited (actor `admin`/[`MQTT_ACTOR`]) and delivered like any other.
//! Ids in topics are the database UUIDs.
//!
//! Who may send lock/unlock is the broker's business (user names, passwords and ACLs there):
//! MQTT does not tell the bridge who published. The bridge itself only subscribes to, and
//! only acts on, topics of the chains in its configuration, and only for carts of that branch.
//!
//! The bridge listens to the same per-branch change broadcast as the sync sessions
//! ([`BranchEvents`]) and to [`crate::telemetry::subscribe_stored`]; it adds no work to the
//! merge path. Every queue is bounded: the client's request channel ([`MQTT_REQUESTS_MAX`]),
//! the changes and commands queues ([`CHANGES_MAX`], [`COMMANDS_MAX`]); a full commands queue
//! drops the message (counted in `cartwise_mqtt_refused_total`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cartwise_schema::{BranchId, ChainId, DeviceId};
use cartwise_sync_core::DocId;
use cartwise_sync_core::intents::IntentKind;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use crate::intents::{Actor, ActorKind, IntentRequest};
use crate::merge::events::BranchEvents;
use crate::metrics::{global, inc};

mod parse;
pub use parse::{CHAINS_MAX, Command, MqttConfig, MqttError, parse_command};

/// Requests (publishes, subscribes) waiting for the MQTT connection.
pub const MQTT_REQUESTS_MAX: usize = 256;
/// Branch changes waiting for the publisher.
pub const CHANGES_MAX: usize = 1_024;
/// Lock/unlock messages waiting to become intents.
pub const COMMANDS_MAX: usize = 64;
/// Carts whose last published state is remembered (beyond it the memory is cleared and every
/// cart is published again once).
pub const CARTS_REMEMBERED_MAX: usize = 100_000;
/// Largest MQTT packet the bridge takes or sends.
pub const PACKET_BYTES_MAX: usize = 256 * 1024;
/// How often the bridge looks for branches added to its chains.
pub const BRANCH_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// The wait before reconnecting to the broker after an error.
pub const RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// The name intents from MQTT are created and audited under.
pub const MQTT_ACTOR: &str = "mqtt-bridge";

/// A branch-change broadcast fed by Postgres only (when this process runs no sync server):
/// documents written by other hub processes, and intents.
pub fn watch_changes(pool: PgPool) -> Arc<BranchEvents> {
    let events = Arc::new(BranchEvents::default());
    tokio::spawn(Arc::clone(&events).poll_versions(pool.clone()));
    tokio::spawn(Arc::clone(&events).listen(pool));
    events
}

/// A running bridge; dropping it stops it.
#[derive(Debug)]
#[must_use = "the bridge stops when dropped"]
pub struct Bridge {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the bridge on the current runtime; it runs (reconnecting as needed) until the
/// returned [`Bridge`] is dropped.
pub fn spawn(config: MqttConfig, pool: PgPool, events: Arc<BranchEvents>) -> Bridge {
    let mut options = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(PACKET_BYTES_MAX, PACKET_BYTES_MAX);
    if let Some(user) = &config.username {
        options.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
    }
    let (client, eventloop) = AsyncClient::new(options, MQTT_REQUESTS_MAX);
    let chains: Arc<HashSet<ChainId>> = Arc::new(config.chains.iter().copied().collect());
    let (commands, commands_rx) = mpsc::channel(COMMANDS_MAX);
    let (changes, changes_rx) = mpsc::channel(CHANGES_MAX);
    let tasks = vec![
        tokio::spawn(connection(
            eventloop,
            client.clone(),
            config.chains.clone(),
            Arc::clone(&chains),
            commands,
        )),
        tokio::spawn(act_on_commands(pool.clone(), commands_rx)),
        tokio::spawn(follow_branches(
            pool.clone(),
            config.chains.clone(),
            events,
            changes,
        )),
        tokio::spawn(publish_changes(pool.clone(), client.clone(), changes_rx)),
        tokio::spawn(publish_telemetry(pool, client, chains)),
    ];
    Bridge { tasks }
}

/// Drives the MQTT connection: (re)subscribes to the command topics on every connection and
/// queues lock/unlock messages for [`act_on_commands`].
async fn connection(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    chain_list: Vec<ChainId>,
    chains: Arc<HashSet<ChainId>>,
    commands: mpsc::Sender<Command>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("mqtt bridge connected");
                for chain in &chain_list {
                    for action in ["lock", "unlock"] {
                        let topic = format!("cartwise/{chain}/+/carts/+/{action}");
                        if let Err(error) = client.try_subscribe(topic, QoS::AtLeastOnce) {
                            tracing::warn!(%error, "mqtt subscribe failed");
                        }
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => match parse_command(&publish.topic) {
                Some(command) if chains.contains(&command.chain) => {
                    if commands.try_send(command).is_err() {
                        inc(&global().mqtt_refused);
                        tracing::warn!(topic = %publish.topic, "mqtt command dropped: queue full");
                    }
                }
                _ => {
                    inc(&global().mqtt_refused);
                    tracing::info!(topic = %publish.topic, "mqtt message ignored");
                }
            },
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "mqtt connection failed; retrying");
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

/// Turns lock/unlock messages into intents for the device owning the cart's post.
async fn act_on_commands(pool: PgPool, mut commands: mpsc::Receiver<Command>) {
    let actor = Actor {
        kind: ActorKind::Admin,
        name: MQTT_ACTOR.to_owned(),
    };
    while let Some(command) = commands.recv().await {
        let owner: Result<Option<(i32, Option<Uuid>)>, sqlx::Error> = sqlx::query_as(
            "SELECT c.cart_number, k.device_id FROM carts c
             JOIN branches b ON b.id = c.branch_id
             LEFT JOIN controllers k ON k.id = c.controller_id
             WHERE c.id = $1 AND c.branch_id = $2 AND b.chain_id = $3",
        )
        .bind(command.cart)
        .bind(command.branch.as_uuid())
        .bind(command.chain.as_uuid())
        .fetch_optional(&pool)
        .await;
        let (post, device) = match owner {
            Ok(Some((number, Some(device)))) => match u16::try_from(number) {
                Ok(post) => (post, DeviceId::from_uuid(device)),
                Err(_) => {
                    inc(&global().mqtt_refused);
                    continue;
                }
            },
            Ok(_) => {
                inc(&global().mqtt_refused);
                tracing::info!(cart = %command.cart, "mqtt command for an unknown or unowned cart");
                continue;
            }
            Err(error) => {
                inc(&global().mqtt_refused);
                tracing::warn!(%error, "mqtt command: looking up the cart failed");
                continue;
            }
        };
        let kind = if command.lock {
            IntentKind::OutOfService { post }
        } else {
            IntentKind::UnlockPost { post }
        };
        let request = IntentRequest {
            device,
            branch: Some(command.branch),
            kind,
            expires_in: None,
        };
        match crate::intents::create(&pool, request, &actor).await {
            Ok(intent) => {
                inc(&global().mqtt_intents);
                tracing::info!(intent = %intent.id, cart = %command.cart, lock = command.lock, "mqtt intent created");
            }
            Err(error) => {
                inc(&global().mqtt_refused);
                tracing::info!(%error, cart = %command.cart, "mqtt intent refused");
            }
        }
    }
}

/// A branch document changed.
#[derive(Debug, Clone, Copy)]
struct Change {
    chain: ChainId,
    branch: BranchId,
    doc: DocId,
}

/// Subscribes to the change broadcast of every branch of the configured chains (new branches
/// are picked up every [`BRANCH_REFRESH_INTERVAL`]) and forwards the changes, bounded.
async fn follow_branches(
    pool: PgPool,
    chains: Vec<ChainId>,
    events: Arc<BranchEvents>,
    changes: mpsc::Sender<Change>,
) {
    let chain_ids: Vec<Uuid> = chains.iter().map(|chain| *chain.as_uuid()).collect();
    let mut followed: HashMap<BranchId, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut ticker = tokio::time::interval(BRANCH_REFRESH_INTERVAL);
    loop {
        ticker.tick().await;
        let rows: Result<Vec<(Uuid, Uuid)>, sqlx::Error> =
            sqlx::query_as("SELECT id, chain_id FROM branches WHERE chain_id = ANY($1)")
                .bind(&chain_ids)
                .fetch_all(&pool)
                .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "mqtt bridge: listing branches failed");
                continue;
            }
        };
        for (branch, chain) in rows {
            let branch = BranchId::from_uuid(branch);
            if followed
                .get(&branch)
                .is_some_and(|task| !task.is_finished())
            {
                continue;
            }
            let chain = ChainId::from_uuid(chain);
            let mut receiver = events.subscribe(branch);
            let changes = changes.clone();
            let task = tokio::spawn(async move {
                loop {
                    match receiver.recv().await {
                        Ok(doc) => {
                            if changes.send(Change { chain, branch, doc }).await.is_err() {
                                return;
                            }
                        }
                        // Missed some: publishing the branch's carts again catches up.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let doc = DocId::branch_intents(branch);
                            if changes.send(Change { chain, branch, doc }).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            followed.insert(branch, task);
        }
        if pool.is_closed() {
            return;
        }
    }
}

/// Publishes device and cart status for each change.
async fn publish_changes(pool: PgPool, client: AsyncClient, mut changes: mpsc::Receiver<Change>) {
    let mut published: HashMap<Uuid, serde_json::Value> = HashMap::new();
    while let Some(change) = changes.recv().await {
        if let DocId::Device { device, .. } = change.doc
            && let Err(error) = publish_device(&pool, &client, &change, device).await
        {
            tracing::warn!(%error, "mqtt bridge: device status not published");
        }
        if let Err(error) = publish_carts(&pool, &client, &change, &mut published).await {
            tracing::warn!(%error, "mqtt bridge: cart status not published");
        }
    }
}

/// Why one publication failed.
#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("mqtt: {0}")]
    Client(#[from] rumqttc::ClientError),
}

async fn publish_device(
    pool: &PgPool,
    client: &AsyncClient,
    change: &Change,
    device: DeviceId,
) -> Result<(), PublishError> {
    type Row = (
        String,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<String>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT status, last_heartbeat, firmware_version FROM devices
         WHERE id = $1 AND branch_id = $2",
    )
    .bind(device.as_uuid())
    .bind(change.branch.as_uuid())
    .fetch_optional(pool)
    .await?;
    let Some((status, last_heartbeat, firmware)) = row else {
        return Ok(());
    };
    let topic = format!(
        "cartwise/{}/{}/devices/{device}/status",
        change.chain, change.branch
    );
    let payload = json!({
        "status": status,
        "last_heartbeat": last_heartbeat,
        "firmware_version": firmware,
    });
    client
        .publish(topic, QoS::AtLeastOnce, true, payload.to_string())
        .await?;
    inc(&global().mqtt_published);
    Ok(())
}

async fn publish_carts(
    pool: &PgPool,
    client: &AsyncClient,
    change: &Change,
    published: &mut HashMap<Uuid, serde_json::Value>,
) -> Result<(), PublishError> {
    type Row = (Uuid, i32, String, bool, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, cart_number, status, is_locked, assigned_to FROM carts
         WHERE branch_id = $1 ORDER BY cart_number",
    )
    .bind(change.branch.as_uuid())
    .fetch_all(pool)
    .await?;
    if published.len() + rows.len() > CARTS_REMEMBERED_MAX {
        published.clear();
    }
    for (cart, number, status, is_locked, assigned_to) in rows {
        // `assigned_to` is a shopper's phone: only whether the cart is assigned goes out.
        let payload = json!({
            "cart_number": number,
            "status": status,
            "is_locked": is_locked,
            "assigned": assigned_to.is_some(),
        });
        if published.get(&cart) == Some(&payload) {
            continue;
        }
        let topic = format!(
            "cartwise/{}/{}/carts/{cart}/status",
            change.chain, change.branch
        );
        client
            .publish(topic, QoS::AtLeastOnce, true, payload.to_string())
            .await?;
        inc(&global().mqtt_published);
        published.insert(cart, payload);
    }
    Ok(())
}

/// Publishes every telemetry batch stored by this process for a device of the configured
/// chains.
async fn publish_telemetry(pool: PgPool, client: AsyncClient, chains: Arc<HashSet<ChainId>>) {
    let mut stored = crate::telemetry::subscribe_stored();
    let mut placed: HashMap<DeviceId, Option<(ChainId, BranchId)>> = HashMap::new();
    loop {
        let batch = match stored.recv().await {
            Ok(batch) => batch,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "mqtt bridge fell behind on telemetry");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if placed.len() >= CARTS_REMEMBERED_MAX {
            placed.clear();
        }
        let place = match placed.get(&batch.device) {
            Some(place) => *place,
            None => {
                let row: Result<Option<(Uuid, Uuid)>, sqlx::Error> = sqlx::query_as(
                    "SELECT b.chain_id, d.branch_id FROM devices d
                     JOIN branches b ON b.id = d.branch_id WHERE d.id = $1",
                )
                .bind(batch.device.as_uuid())
                .fetch_optional(&pool)
                .await;
                match row {
                    Ok(row) => {
                        let place = row.map(|(chain, branch)| {
                            (ChainId::from_uuid(chain), BranchId::from_uuid(branch))
                        });
                        placed.insert(batch.device, place);
                        place
                    }
                    Err(error) => {
                        tracing::warn!(%error, "mqtt bridge: placing a device failed");
                        continue;
                    }
                }
            }
        };
        let Some((chain, branch)) = place else {
            continue;
        };
        if !chains.contains(&chain) {
            continue;
        }
        let topic = format!(
            "cartwise/{chain}/{branch}/devices/{}/telemetry",
            batch.device
        );
        let payload = json!({ "events": &*batch.events });
        match client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await
        {
            Ok(()) => inc(&global().mqtt_published),
            Err(error) => tracing::warn!(%error, "mqtt bridge: telemetry not published"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAIN: &str = "0b1e3c2a-0000-4000-8000-000000000001";

    #[test]
    fn parses_a_url_with_credentials_port_and_chains() {
        let config = MqttConfig::parse(&format!(
            "mqtt://hub:s3cret@broker.local:1884?chain={CHAIN}"
        ))
        .unwrap();
        assert_eq!(config.host, "broker.local");
        assert_eq!(config.port, 1884);
        assert_eq!(config.username.as_deref(), Some("hub"));
        assert_eq!(config.password.as_deref(), Some("s3cret"));
        assert_eq!(config.chains, vec![ChainId::parse(CHAIN).unwrap()]);
        let plain = MqttConfig::parse(&format!("mqtt://127.0.0.1?chain={CHAIN}")).unwrap();
        assert_eq!((plain.port, plain.username), (1883, None));
        let v6 = MqttConfig::parse(&format!("mqtt://[::1]:1884?chain={CHAIN}")).unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1884));
        let v6 = MqttConfig::parse(&format!("mqtt://[::1]?chain={CHAIN}")).unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1883));
    }

    #[test]
    fn refuses_urls_without_a_chain_or_with_garbage() {
        for url in [
            "mqtt://broker",
            "http://broker?chain=x",
            "mqtt://broker:port?chain=0b1e3c2a-0000-4000-8000-000000000001",
            "mqtt://broker?chain=not-a-uuid",
            "mqtt://broker?color=red",
            "mqtt://?chain=0b1e3c2a-0000-4000-8000-000000000001",
        ] {
            assert!(MqttConfig::parse(url).is_err(), "{url}");
        }
    }

    proptest::proptest! {
        /// Topics and URLs are outside input: any string is parsed or refused, never a panic.
        #[test]
        fn never_panics_on_any_topic_or_url(text in "\\PC{0,200}", parts in proptest::collection::vec("[a-z0-9+#/-]{0,40}", 0..8)) {
            let _ = parse_command(&text);
            let _ = parse_command(&parts.join("/"));
            let _ = MqttConfig::parse(&text);
            let _ = MqttConfig::parse(&format!("mqtt://{}", parts.join("")));
        }
    }

    #[test]
    fn parses_only_lock_and_unlock_topics() {
        let cart = "0b1e3c2a-0000-4000-8000-00000000c001";
        let branch = "0b1e3c2a-0000-4000-8000-000000000101";
        let unlock =
            parse_command(&format!("cartwise/{CHAIN}/{branch}/carts/{cart}/unlock")).unwrap();
        assert!(!unlock.lock);
        assert_eq!(unlock.cart.to_string(), cart);
        assert!(
            parse_command(&format!("cartwise/{CHAIN}/{branch}/carts/{cart}/lock"))
                .unwrap()
                .lock
        );
        for topic in [
            format!("cartwise/{CHAIN}/{branch}/carts/{cart}/status"),
            format!("cartwise/{CHAIN}/{branch}/devices/{cart}/unlock"),
            format!("cartwise/{CHAIN}/{branch}/carts/{cart}/unlock/extra"),
            format!("cartwise/{CHAIN}/x/carts/{cart}/unlock"),
            String::new(),
            "/".repeat(100),
        ] {
            assert_eq!(parse_command(&topic), None, "{topic}");
        }
    }
}
