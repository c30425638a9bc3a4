//! Lend-latency benchmark: lend latency from request to unlock frame
//! written, beside a raw durable SQLite insert on the same disk in the same run, and the
//! steady-state RSS of a real `cartwise-edge run` process.
//!
//! `cargo bench -p cartwise-edge-node --bench lend -- [--quick] [--json FILE]`
//!
//! How it measures:
//! - The engine (`Engine::open`, WAL + `synchronous = FULL`) and the board simulator (10 boards
//!   over TCP on 127.0.0.1:0, auto-take) run in this process, wired as `daemon.rs` wires them:
//!   the daemon's bus settings, a poller feeding `Engine::on_poll_event`. The only difference
//!   is the bus transport: the TCP transport wrapped in a tap that notes the instants a lend's
//!   frames have been written to the socket: a one-board status read (0x30) before the unlock,
//!   if the driver makes one; the unlock (0x31); and any poller read (bus-wide 0x32) written
//!   between the request and the unlock.
//! - "lend → unlock written" runs from calling `Engine::lend` to that instant: picking the
//!   post, recording the rental durably (fsync), the status read before the unlock when the
//!   engine's sensed state is not fresh, any wait for a poller read already on the wire, and
//!   the unlock frame itself. "Request → status read written" is the part before the bus for
//!   the lends that read first. "Round trip" is the whole `lend` call, which also waits for the
//!   hook to read open (the driver's settle wait, ≥ 200 ms of hardware pulse).
//! - Raw insert: one row per transaction in a WAL database with `synchronous = FULL`, in the
//!   same directory, interleaved with the lends so both see the same disk and background load.
//! - Shoppers return carts as they go (the kiosk's initiate-return, then a dock in the
//!   simulator), so the run is a steady stream, not a drain.
//! - RSS: `cartwise-edge run` (the binary cargo built beside this bench) against a second
//!   simulator, driven through the kiosk HTTP API (request-otp, assign, initiate-return), then
//!   `VmRSS` from `/proc/PID/status`. Without the binary, the in-process `VmRSS` is reported
//!   instead (an upper bound: it includes the simulator and the bench).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cartwise_edge_node::clock::SystemClock;
use cartwise_edge_node::config::EdgeConfig;
use cartwise_edge_node::cu16::transport::TcpTransport;
use cartwise_edge_node::cu16::{Baud, Bus, Lock, Pacing, PollerConfig, RequestFrame, Transport};
use cartwise_edge_node::engine::Engine;
use cartwise_edge_node::sim_board::{self, BoundBus, SimHandle, SimOptions};
use cartwise_schema::{Phone, PostNo};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::oneshot;

#[path = "lend/process.rs"]
mod process;
#[path = "lend/report.rs"]
mod report;

use report::Report;

/// Boards on the simulated bus (one Pi's maximum).
const BOARDS: u8 = 10;
/// A shopper takes the cart this long after the hook opens.
const AUTO_TAKE: Duration = Duration::from_millis(5);
/// Rentals left open while the stream runs; older ones are returned.
const OPEN_RENTALS_MAX: usize = 20;
/// Raw inserts per lend, interleaved.
const RAW_INSERTS_PER_LEND: usize = 4;
/// Longest wait for the node to see every post, or for the real process to come up.
const READY_WAIT_MAX: Duration = Duration::from_secs(20);
/// The KR-CU16 request framing: STX, address, command.
const STX: u8 = 0x02;
const STATUS_COMMAND: u8 = 0x30;
const UNLOCK_COMMAND: u8 = 0x31;
const STATUS_ALL_COMMAND: u8 = 0x32;
/// The performance targets.
const LEND_P99_OVER_RAW_MAX: f64 = 2.0;
const RSS_MB_MAX: f64 = 30.0;

struct Args {
    quick: bool,
    json: Option<PathBuf>,
}

impl Args {
    /// `--quick`, `--json FILE`; anything else cargo passes (`--bench`) is ignored.
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

    /// (lends in process, lends through the real process's kiosk API).
    fn plan(&self) -> (usize, usize) {
        if self.quick { (40, 10) } else { (120, 30) }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base)?;
    let dir = tempfile::Builder::new()
        .prefix("lend-bench-")
        .tempdir_in(&base)?;
    let (lends, http_lends) = args.plan();
    let started = Instant::now();
    let lend = runtime.block_on(lend_phase(dir.path(), lends))?;
    let rss = runtime.block_on(process::rss_phase(dir.path(), http_lends))?;
    let report = Report::new(&lend, rss, dir.path());
    report.print(started.elapsed());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

// --- the tap ---------------------------------------------------------------------------------

/// When a lend's frames were written: a one-board status read (0x30; the poller only sends the
/// bus-wide 0x32) before its unlock, the unlock (0x31), and the poller reads written between
/// the request and the unlock.
#[derive(Debug, Default, Clone, Copy)]
struct Tapped {
    status_read: Option<Instant>,
    unlock: Option<Instant>,
    polls_before_unlock: usize,
}

/// The TCP transport, noting when a lend's frames have been written to the socket.
struct TappedTransport {
    inner: TcpTransport,
    tapped: Arc<Mutex<Tapped>>,
}

impl Transport for TappedTransport {
    async fn send(&mut self, frame: &RequestFrame) -> io::Result<()> {
        self.inner.send(frame).await?;
        let written = Instant::now();
        if let Ok(mut tapped) = self.tapped.lock() {
            let before_unlock = tapped.unlock.is_none();
            match frame.as_bytes() {
                [STX, _, STATUS_COMMAND, ..] if before_unlock => {
                    tapped.status_read.get_or_insert(written);
                }
                [STX, _, STATUS_ALL_COMMAND, ..] if before_unlock => {
                    tapped.polls_before_unlock += 1;
                }
                [STX, _, UNLOCK_COMMAND, ..] => tapped.unlock = Some(written),
                _ => {}
            }
        }
        Ok(())
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

// --- in-process lends ------------------------------------------------------------------------

struct LendSamples {
    to_unlock: Vec<Duration>,
    /// Only the lends whose unlock read the board first.
    to_status_read: Vec<Duration>,
    /// Lends whose unlock frame followed a poller read written after the request.
    behind_poll: usize,
    roundtrip: Vec<Duration>,
    raw_insert: Vec<Duration>,
    returns: usize,
    in_process_rss_kb: Option<u64>,
}

/// A simulator running until its `stop` is sent or dropped.
struct Sim {
    handle: SimHandle,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start_sim() -> anyhow::Result<Sim> {
    let (stop, stopped) = oneshot::channel::<()>();
    let options = SimOptions {
        boards: BOARDS,
        auto_take: Some(AUTO_TAKE),
        ..SimOptions::default()
    };
    let handle = sim_board::spawn(options, async move {
        let _ = stopped.await;
    })
    .await?;
    let BoundBus::Tcp(addr) = handle.bus else {
        bail!("the simulator did not bind TCP")
    };
    Ok(Sim {
        handle,
        addr,
        _stop: stop,
    })
}

fn edge_config(sim: &Sim, data: &Path) -> anyhow::Result<EdgeConfig> {
    let mut config = EdgeConfig {
        data_dir: data.to_path_buf(),
        ..EdgeConfig::default()
    };
    config.bus.uri = format!("tcp:{}", sim.addr);
    config.bus.boards = (0..BOARDS).collect();
    config.validate()?;
    Ok(config)
}

async fn lend_phase(dir: &Path, lends: usize) -> anyhow::Result<LendSamples> {
    let sim = start_sim().await?;
    let data = dir.join("in-process");
    std::fs::create_dir_all(&data)?;
    let config = edge_config(&sim, &data)?;
    let engine = Arc::new(
        Engine::open(
            &data.join("edge.db"),
            config.engine_config()?,
            Arc::new(SystemClock::new()),
            StdRng::seed_from_u64(4),
        )
        .await?,
    );
    let tapped = Arc::new(Mutex::new(Tapped::default()));
    let bus_config = config.bus_config();
    let transport = TappedTransport {
        inner: TcpTransport::connect(
            &sim.addr.ip().to_string(),
            sim.addr.port(),
            bus_config.connect_timeout,
        )
        .await?,
        tapped: Arc::clone(&tapped),
    };
    let bus = Bus::spawn(transport, bus_config);
    engine.set_bus(Some(bus.clone()));
    let poller = cartwise_edge_node::cu16::spawn_poller(
        bus,
        PollerConfig {
            interval: Duration::from_millis(config.bus.poll_interval_ms),
            ..PollerConfig::default()
        },
    );
    let (mut events, poll_task) = (poller.events, poller.task);
    let feeder_engine = Arc::clone(&engine);
    let feeder = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Err(error) = feeder_engine.on_poll_event(event).await {
                eprintln!("recording a bus event failed: {error}");
            }
        }
    });
    wait_until_posts_available(&engine).await?;

    let mut raw = RawStore::open(&dir.join("raw.db"))?;
    let mut samples = LendSamples {
        to_unlock: Vec::with_capacity(lends),
        to_status_read: Vec::with_capacity(lends),
        behind_poll: 0,
        roundtrip: Vec::with_capacity(lends),
        raw_insert: Vec::with_capacity(lends * RAW_INSERTS_PER_LEND),
        returns: 0,
        in_process_rss_kb: None,
    };
    let mut open: VecDeque<Phone> = VecDeque::new();
    for n in 0..lends {
        let phone = bench_phone(n)?;
        if let Ok(mut slot) = tapped.lock() {
            *slot = Tapped::default();
        }
        let start = Instant::now();
        engine
            .lend(&phone)
            .await
            .with_context(|| format!("lend {n}"))?;
        samples.roundtrip.push(start.elapsed());
        let seen = tapped.lock().map(|slot| *slot).unwrap_or_default();
        let Some(unlock) = seen.unlock else {
            bail!("lend {n} returned but its unlock frame was not seen");
        };
        if let Some(status_read) = seen.status_read {
            samples
                .to_status_read
                .push(status_read.duration_since(start));
        }
        if seen.polls_before_unlock > 0 {
            samples.behind_poll += 1;
        }
        samples.to_unlock.push(unlock.duration_since(start));
        open.push_back(phone);
        for _ in 0..RAW_INSERTS_PER_LEND {
            samples
                .raw_insert
                .push(tokio::task::block_in_place(|| raw.insert(n))?);
        }
        if open.len() > OPEN_RENTALS_MAX
            && let Some(phone) = open.pop_front()
        {
            return_cart(&engine, &sim.handle, &phone).await?;
            samples.returns += 1;
        }
    }
    samples.in_process_rss_kb = process::rss_kb("self");
    poll_task.abort();
    feeder.abort();
    Ok(samples)
}

/// National form `050XXXXXXX`, one per lend.
fn bench_phone(n: usize) -> anyhow::Result<Phone> {
    Ok(Phone::parse(&format!("050{:07}", n % 10_000_000))?)
}

async fn wait_until_posts_available(engine: &Engine) -> anyhow::Result<()> {
    let posts = usize::from(BOARDS) * 16;
    let deadline = Instant::now() + READY_WAIT_MAX;
    loop {
        let available = engine
            .posts()
            .await?
            .iter()
            .filter(|p| p.status() == cartwise_schema::PostStatus::Available)
            .count();
        if available == posts {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {available} of {posts} posts became available");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The shopper asks where to return and docks the cart there; the poller sees the dock.
async fn return_cart(engine: &Engine, sim: &SimHandle, phone: &Phone) -> anyhow::Result<()> {
    let slot = engine.initiate_return(phone).await?;
    dock(engine, sim, slot.post)
}

fn dock(engine: &Engine, sim: &SimHandle, post: PostNo) -> anyhow::Result<()> {
    let (_, board, lock) = engine
        .config()
        .layout
        .posts()
        .iter()
        .find(|p| p.0 == post)
        .copied()
        .with_context(|| format!("post {post} is not in the layout"))?;
    let lock = Lock::new(lock.get())?;
    sim.sim()
        .with_bus(|bus, now| bus.dock(now, board.get(), lock))?;
    Ok(())
}

/// A bare durable SQLite table: what one fsync'd row costs on this disk.
struct RawStore {
    conn: rusqlite::Connection,
}

impl RawStore {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE rows (id INTEGER PRIMARY KEY, phone TEXT NOT NULL, post INTEGER NOT NULL,
                                at_ms INTEGER NOT NULL)",
        )?;
        Ok(Self { conn })
    }

    /// One row, one transaction, committed.
    fn insert(&mut self, n: usize) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO rows (phone, post, at_ms) VALUES (?1, ?2, ?3)",
            rusqlite::params![format!("+97250{n:07}"), (n % 160) as i64, n as i64],
        )?;
        tx.commit()?;
        Ok(start.elapsed())
    }
}
