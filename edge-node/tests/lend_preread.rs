//! A lend against the simulator over TCP, with a tap on the bus: the board is read before the
//! unlock unless the engine's sensed state is fresh (the poller read the board within two poll
//! intervals) and shows the hook latched on a present cart; either way the rental is on disk
//! as `unlocking` before the unlock frame is written.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

mod support;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cartwise_edge_node::clock::SystemClock;
use cartwise_edge_node::config::EdgeConfig;
use cartwise_edge_node::cu16::transport::TcpTransport;
use cartwise_edge_node::cu16::{
    Baud, BoardAddress, Bus, BusConfig, Pacing, PollEvent, PollerConfig, RequestFrame, Transport,
    spawn_poller,
};
use cartwise_edge_node::engine::Engine;
use cartwise_edge_node::sim_board::{BoundBus, Listen, SimOptions};
use cartwise_schema::{Phone, PostStatus};
use rand::SeedableRng;
use rand::rngs::StdRng;
use support::{Sim, TEST_WAIT_MAX, start_sim};
use tokio::task::JoinHandle;

const STATUS: u8 = 0x30;
const UNLOCK: u8 = 0x31;
/// The daemon's default: a reading stays fresh for two of these.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What the tap saw: every one-board frame (address, command), and for each unlock frame how
/// many rentals the database held as `unlocking` at the instant it was written.
#[derive(Default)]
struct Seen {
    frames: Vec<(u8, u8)>,
    unlocking_at_unlock: Vec<i64>,
}

struct Tap {
    inner: TcpTransport,
    db: PathBuf,
    seen: Arc<Mutex<Seen>>,
}

impl Transport for Tap {
    async fn send(&mut self, frame: &RequestFrame) -> io::Result<()> {
        let bytes = frame.as_bytes();
        if bytes[2] == UNLOCK {
            // A separate connection sees only what is committed.
            let conn = rusqlite::Connection::open(&self.db).unwrap();
            let unlocking: i64 = conn
                .query_row(
                    "SELECT count(*) FROM rentals WHERE status = 'unlocking'",
                    [],
                    |row| row.get(0),
                )
                .unwrap();
            self.seen
                .lock()
                .unwrap()
                .unlocking_at_unlock
                .push(unlocking);
        }
        if matches!(bytes[2], STATUS | UNLOCK) {
            self.seen.lock().unwrap().frames.push((bytes[1], bytes[2]));
        }
        self.inner.send(frame).await
    }

    async fn receive(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.receive(buf).await
    }

    async fn discard_input(&mut self) -> io::Result<()> {
        self.inner.discard_input().await
    }

    fn set_baud(&mut self, baud: Baud) -> io::Result<()> {
        self.inner.set_baud(baud)
    }

    fn baud(&self) -> Option<Baud> {
        self.inner.baud()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn pacing(&self) -> Pacing {
        self.inner.pacing()
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    _sim: Sim,
    engine: Arc<Engine>,
    bus: Bus,
    seen: Arc<Mutex<Seen>>,
}

/// One board over TCP, the engine, and the tapped bus (no poller yet).
async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(SimOptions {
        boards: 1,
        listen: Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
        auto_take: Some(Duration::from_millis(20)),
        ..SimOptions::default()
    })
    .await;
    let BoundBus::Tcp(addr) = sim.handle.bus else {
        panic!("the simulator did not bind TCP")
    };
    let mut config = EdgeConfig {
        data_dir: dir.path().to_path_buf(),
        ..EdgeConfig::default()
    };
    config.bus.uri = format!("tcp:{addr}");
    config.bus.boards = vec![0];
    config.validate().unwrap();
    let db = dir.path().join("edge.db");
    let engine = Arc::new(
        Engine::open(
            &db,
            config.engine_config().unwrap(),
            Arc::new(SystemClock::new()),
            StdRng::seed_from_u64(7),
        )
        .await
        .unwrap(),
    );
    let bus_config = BusConfig {
        boards: vec![BoardAddress::new(0).unwrap()],
        ..support::fast_config()
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let tap = Tap {
        inner: TcpTransport::connect("127.0.0.1", addr.port(), bus_config.connect_timeout)
            .await
            .unwrap(),
        db: db.clone(),
        seen: Arc::clone(&seen),
    };
    let bus = Bus::spawn(tap, bus_config);
    engine.set_bus(Some(bus.clone()));
    Rig {
        _dir: dir,
        _sim: sim,
        engine,
        bus,
        seen,
    }
}

/// Starts a poller feeding the engine, as the daemon does; returns its tasks.
fn poll(rig: &Rig) -> (JoinHandle<()>, JoinHandle<()>) {
    let poller = spawn_poller(
        rig.bus.clone(),
        PollerConfig {
            interval: POLL_INTERVAL,
            ..PollerConfig::default()
        },
    );
    let engine = Arc::clone(&rig.engine);
    let mut events = poller.events;
    let feeder = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            engine.on_poll_event(event).await.unwrap();
        }
    });
    (poller.task, feeder)
}

async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TEST_WAIT_MAX;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn all_posts_available(engine: &Engine) {
    eventually("every post available", async || {
        let posts = engine.posts().await.unwrap();
        posts.iter().all(|p| p.status() == PostStatus::Available)
    })
    .await;
}

/// Lends one cart and returns the one-board frames written during the lend.
async fn lend(rig: &Rig, phone: &str) -> (Vec<(u8, u8)>, Vec<i64>) {
    let before = {
        let mut seen = rig.seen.lock().unwrap();
        seen.unlocking_at_unlock.clear();
        seen.frames.len()
    };
    rig.engine
        .lend(&Phone::parse(phone).unwrap())
        .await
        .unwrap();
    let seen = rig.seen.lock().unwrap();
    (
        seen.frames[before..].to_vec(),
        seen.unlocking_at_unlock.clone(),
    )
}

/// The frames up to and including the first unlock.
fn up_to_unlock(frames: &[(u8, u8)]) -> &[(u8, u8)] {
    let unlock = frames
        .iter()
        .position(|f| f.1 == UNLOCK)
        .expect("no unlock frame was written");
    &frames[..=unlock]
}

#[tokio::test]
async fn a_fresh_poll_showing_a_latched_cart_skips_the_read_before_the_unlock() {
    let rig = rig().await;
    let (poller, feeder) = poll(&rig);
    all_posts_available(&rig.engine).await;

    let (frames, unlocking) = lend(&rig, "0501234567").await;
    assert_eq!(
        up_to_unlock(&frames),
        [(0x00, UNLOCK)],
        "the unlock was the lend's first frame"
    );
    assert_eq!(
        unlocking,
        [1],
        "the rental was durable before the unlock frame"
    );
    poller.abort();
    feeder.abort();
}

#[tokio::test]
async fn a_stale_poll_still_reads_the_board_before_the_unlock() {
    let rig = rig().await;
    let (poller, feeder) = poll(&rig);
    all_posts_available(&rig.engine).await;
    // The poller stops; its last reading ages past two intervals.
    poller.abort();
    feeder.abort();
    let board = BoardAddress::new(0).unwrap();
    eventually("the last reading is two poll intervals old", async || {
        let sensed = rig.bus.sensed(board).expect("board 0 was read");
        sensed.asked_at.elapsed() > POLL_INTERVAL * 2
    })
    .await;

    let (frames, unlocking) = lend(&rig, "0501234568").await;
    assert_eq!(up_to_unlock(&frames), [(0x00, STATUS), (0x00, UNLOCK)]);
    assert_eq!(
        unlocking,
        [1],
        "the rental was durable before the unlock frame"
    );
}

#[tokio::test]
async fn without_a_poller_no_reading_counts_as_fresh() {
    let rig = rig().await;
    // The engine learns the posts from one read handed over by hand, not from a poller.
    for status in rig.bus.status_all().await.unwrap() {
        rig.engine
            .on_poll_event(PollEvent::Baseline { status })
            .await
            .unwrap();
    }
    all_posts_available(&rig.engine).await;
    assert!(rig.bus.poll_interval().is_none());

    let (frames, _) = lend(&rig, "0501234569").await;
    assert_eq!(up_to_unlock(&frames), [(0x00, STATUS), (0x00, UNLOCK)]);
}
