//! The MQTT bridge against a real Mosquitto: a private broker on a free port with password
//! authentication and ACLs. After a change the seed's topics appear (device status, telemetry,
//! cart status); an `unlock` from an authorised client becomes an intent row, and one from a
//! client the broker's ACL forbids never reaches the hub.
//!
//! Needs the `mosquitto` binary (Debian package `mosquitto`, installed by `./install.sh test`).
//! Without it the test is skipped with a loud message, except under `CI=true`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cartwise_cloud_hub::merge::events::BranchEvents;
use cartwise_cloud_hub::mqtt::{self, MqttConfig};
use cartwise_cloud_hub::{seed, telemetry, world::World};
use cartwise_schema::{BootId, BranchId, DeviceId, MonoMillis, WallMillis};
use cartwise_sync_core::DocId;
use cartwise_sync_core::message::body::{Telemetry, TelemetryEvent};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

const CHAIN: &str = "0b1e3c2a-0000-4000-8000-000000000001";
const BOOT: &str = "0193a1c2-0000-7000-8000-00000000b007";
/// What the test clients put in their inbox when the broker acknowledges a publish.
const PUBACK: &str = "$puback";
/// How long any one thing may take to show up.
const WITHIN: Duration = Duration::from_secs(20);

fn mosquitto_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MOSQUITTO") {
        return Some(PathBuf::from(path));
    }
    let known = [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ];
    if let Some(found) = known.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return Some(found);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("mosquitto"))
        .find(|p| p.is_file())
}

/// The broker, or `None` (skip) when it is missing outside CI.
fn require_mosquitto() -> Option<PathBuf> {
    if let Some(found) = mosquitto_binary() {
        return Some(found);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "mosquitto is not installed but CI is set: `./install.sh test` installs the Debian package"
    );
    eprintln!();
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPING the MQTT bridge test: the `mosquitto` broker is not installed.");
    eprintln!("!!! Install it with `./install.sh deps` (Debian package `mosquitto`).");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    None
}

/// A private broker, killed when dropped.
struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn add_user(passwd: &Path, binary: &Path, user: &str, password: &str) {
    // mosquitto_passwd lives beside the broker's package; the same directory or PATH.
    let tool = ["/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd"]
        .iter()
        .map(PathBuf::from)
        .chain(binary.parent().map(|d| d.join("mosquitto_passwd")))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("mosquitto_passwd"));
    let mut command = Command::new(tool);
    if !passwd.exists() {
        command.arg("-c");
    }
    let status = command
        .arg("-b")
        .arg(passwd)
        .arg(user)
        .arg(password)
        .status()
        .unwrap();
    assert!(status.success());
}

async fn start_broker(binary: &Path) -> Broker {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let passwd = dir.path().join("passwd");
    add_user(&passwd, binary, "hub", "hub-secret");
    add_user(&passwd, binary, "ops", "ops-secret");
    add_user(&passwd, binary, "viewer", "viewer-secret");
    // The hub reads and writes everything; operators may send lock/unlock and read; a
    // viewer may only read.
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user hub\ntopic readwrite cartwise/#\n\n\
         user ops\ntopic read cartwise/#\ntopic write cartwise/+/+/carts/+/unlock\n\
         topic write cartwise/+/+/carts/+/lock\n\n\
         user viewer\ntopic read cartwise/#\n",
    )
    .unwrap();
    let port = free_port();
    let config = dir.path().join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\n\
             persistence false\nlog_dest stderr\n",
            passwd.display(),
            acl.display()
        ),
    )
    .unwrap();
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let broker = Broker {
        child,
        port,
        _dir: dir,
    };
    let deadline = tokio::time::Instant::now() + WITHIN;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker
}

/// A client of the broker; what it receives (and [`PUBACK`] for each acknowledgement of its
/// own publishes) goes to the returned channel.
fn client(
    port: u16,
    user: &str,
    password: &str,
) -> (AsyncClient, mpsc::Receiver<(String, String)>) {
    let mut options = MqttOptions::new(format!("test-{user}"), "127.0.0.1", port);
    options.set_credentials(user, password);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (sender, receiver) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                    if sender.send((publish.topic, payload)).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if sender
                        .send((PUBACK.to_owned(), String::new()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (client, receiver)
}

/// Receives until a topic matching `wanted` arrives, calling `nudge` every half second (to
/// make a change happen again until the bridge is subscribed).
async fn wait_for<F, Fut>(
    seen: &mut HashMap<String, String>,
    inbox: &mut mpsc::Receiver<(String, String)>,
    wanted: impl Fn(&str) -> bool,
    mut nudge: F,
) -> (String, String)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if let Some((topic, payload)) = seen.iter().find(|(t, _)| wanted(t)) {
        return (topic.clone(), payload.clone());
    }
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        nudge().await;
        let tick = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                got = inbox.recv() => {
                    let (topic, payload) = got.unwrap();
                    seen.insert(topic.clone(), payload.clone());
                    if wanted(&topic) {
                        return (topic, payload);
                    }
                }
                () = &mut tick => break,
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw the topic; saw {:?}",
            seen.keys().collect::<Vec<_>>()
        );
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn the_bridge_publishes_the_seed_topics_and_turns_an_unlock_into_an_intent(pool: PgPool) {
    let Some(binary) = require_mosquitto() else {
        return;
    };
    let text = std::fs::read_to_string(cartwise_fixtures::world_path()).unwrap();
    seed::seed(&pool, &World::parse(&text).unwrap())
        .await
        .unwrap();
    // A cart owned by a device (through its controller) in a branch of the chain.
    let (cart, cart_number, device, branch): (Uuid, i32, Uuid, Uuid) = sqlx::query_as(
        "SELECT c.id, c.cart_number, k.device_id, c.branch_id FROM carts c
         JOIN controllers k ON k.id = c.controller_id
         JOIN branches b ON b.id = c.branch_id
         WHERE b.chain_id = $1 ORDER BY c.branch_id, c.cart_number LIMIT 1",
    )
    .bind(Uuid::parse_str(CHAIN).unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    let (device, branch) = (DeviceId::from_uuid(device), BranchId::from_uuid(branch));
    sqlx::query("UPDATE devices SET status = 'online', last_heartbeat = now() WHERE id = $1")
        .bind(device.as_uuid())
        .execute(&pool)
        .await
        .unwrap();

    let broker = start_broker(&binary).await;
    let events = Arc::new(BranchEvents::default());
    let config = MqttConfig::parse(&format!(
        "mqtt://hub:hub-secret@127.0.0.1:{}?chain={CHAIN}",
        broker.port
    ))
    .unwrap();
    let _bridge = mqtt::spawn(config, pool.clone(), Arc::clone(&events));

    let (ops, mut inbox) = client(broker.port, "ops", "ops-secret");
    ops.subscribe("cartwise/#", QoS::AtLeastOnce).await.unwrap();
    let mut seen = HashMap::new();

    // A change of the device's document: its status and the branch's carts appear.
    let prefix = format!("cartwise/{CHAIN}/{branch}");
    let status_topic = format!("{prefix}/devices/{device}/status");
    let nudge = || {
        events.publish(branch, DocId::device(device));
        async {}
    };
    let (_, payload) = wait_for(&mut seen, &mut inbox, |t| t == status_topic, nudge).await;
    let status: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(status["status"], "online");
    let cart_topic = format!("{prefix}/carts/{cart}/status");
    let (_, payload) = wait_for(&mut seen, &mut inbox, |t| t == cart_topic, || async {}).await;
    let cart_status: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(cart_status["cart_number"], cart_number);
    let projected: String = sqlx::query_scalar("SELECT status FROM carts WHERE id = $1")
        .bind(cart)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(cart_status["status"], projected.as_str());

    // A telemetry batch stored for the device is published on its telemetry topic.
    let telemetry_topic = format!("{prefix}/devices/{device}/telemetry");
    let mut mono = 0;
    let store = || {
        mono += 1;
        let pool = pool.clone();
        let now = WallMillis::new(chrono::Utc::now().timestamp_millis());
        let batch = Telemetry {
            events: vec![TelemetryEvent {
                kind: "lock.fault".into(),
                data_json: format!(r#"{{"post":{cart_number},"n":{mono}}}"#),
                wall_ms: now,
                boot: BootId::parse(BOOT).unwrap(),
                mono_ms: MonoMillis::new(mono),
            }],
        };
        async move {
            telemetry::store_batch(&pool, device, &batch, now)
                .await
                .unwrap();
        }
    };
    let (_, payload) = wait_for(&mut seen, &mut inbox, |t| t == telemetry_topic, store).await;
    let batch: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(batch["events"][0]["type"], "lock.fault");
    assert_eq!(batch["events"][0]["data"]["post"], cart_number);

    // A viewer may not send commands: the broker drops its lock (acknowledged, not
    // delivered). Then an operator's unlock becomes an intent; the bridge handles commands in
    // order, so once the operator's exists, the viewer's would have too.
    let (viewer, mut viewer_inbox) = client(broker.port, "viewer", "viewer-secret");
    let unlock_topic = format!("{prefix}/carts/{cart}/unlock");
    let lock_topic = format!("{prefix}/carts/{cart}/lock");
    viewer
        .publish(&lock_topic, QoS::AtLeastOnce, false, "")
        .await
        .unwrap();
    // The broker has taken (and dropped) it once it acknowledges it.
    wait_for(
        &mut HashMap::new(),
        &mut viewer_inbox,
        |t| t == PUBACK,
        || async {},
    )
    .await;

    ops.publish(&unlock_topic, QoS::AtLeastOnce, false, "")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    let intents = loop {
        let rows: Vec<(String, Option<i32>, Uuid, String, String)> = sqlx::query_as(
            "SELECT kind, post, device_id, status, created_by FROM intents ORDER BY created_at",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if rows.iter().any(|row| row.0 == "unlock_post") {
            break rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no intent from the unlock"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        intents.len(),
        1,
        "the viewer's lock got through: {intents:?}"
    );
    let (kind, post, owner, status, created_by) = &intents[0];
    assert_eq!(kind, "unlock_post");
    assert_eq!(*post, Some(cart_number));
    assert_eq!(owner, device.as_uuid());
    assert_eq!(status, "pending");
    assert_eq!(created_by, mqtt::MQTT_ACTOR);

    // An operator's lock takes the cart's post out of service.
    ops.publish(&lock_topic, QoS::AtLeastOnce, false, "")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let post: Option<Option<i32>> =
            sqlx::query_scalar("SELECT post FROM intents WHERE kind = 'out_of_service'")
                .fetch_optional(&pool)
                .await
                .unwrap();
        if let Some(post) = post {
            assert_eq!(post, Some(cart_number));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no intent from the lock"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
