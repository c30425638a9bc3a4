//! Lend-latency benchmark (issue 4, item 11): lend latency from request to unlock frame
//! written, beside a raw durable SQLite insert on the same disk in the same run, and the
//! steady-state RSS of a real `cartwise-edge run` process.
//!
//! `cargo bench -p cartwise-edge-node --bench lend -- [--quick] [--json FILE]`
//!
//! How it measures:
//! - The engine (`Engine::open`, WAL + `synchronous = FULL`) and the board simulator (10 boards
//!   over TCP on 127.0.0.1:0, auto-take) run in this process, wired as `daemon.rs` wires them:
//!   the daemon's bus settings, a poller feeding `Engine::on_poll_event`. The only difference
//!   is the bus transport: the TCP transport wrapped in a tap that notes the instant the 0x31
//!   (unlock) frame has been written to the socket.
//! - "lend → unlock written" runs from calling `Engine::lend` to that instant: picking the
//!   post, recording the rental durably (fsync), the status read the driver makes before an
//!   unlock, and the unlock frame itself. "Round trip" is the whole `lend` call, which also
//!   waits for the hook to read open (the driver's settle wait, ≥ 200 ms of hardware pulse).
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
use cartwise_edge_node::cu16::{Baud, Bus, Lock, PollerConfig, RequestFrame, Transport};
use cartwise_edge_node::engine::Engine;
use cartwise_edge_node::sim_board::{self, BoundBus, SimHandle, SimOptions};
use cartwise_schema::{Phone, PostNo};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Boards on the simulated bus (one Pi's maximum).
const BOARDS: u8 = 10;
/// A shopper takes the cart this long after the hook opens.
const AUTO_TAKE: Duration = Duration::from_millis(5);
/// Rentals left open while the stream runs; older ones are returned.
const OPEN_RENTALS_MAX: usize = 20;
/// Raw inserts per lend, interleaved.
const RAW_INSERTS_PER_LEND: usize = 2;
/// Longest wait for the node to see every post, or for the real process to come up.
const READY_WAIT_MAX: Duration = Duration::from_secs(20);
/// The KR-CU16 request framing: STX, address, command.
const STX: u8 = 0x02;
const UNLOCK_COMMAND: u8 = 0x31;
/// Targets from the issue.
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
        if self.quick { (40, 10) } else { (150, 40) }
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
    let rss = runtime.block_on(rss_phase(dir.path(), http_lends))?;
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

/// The TCP transport, noting when an unlock frame has been written.
struct TappedTransport {
    inner: TcpTransport,
    unlock_written: Arc<Mutex<Option<Instant>>>,
}

impl Transport for TappedTransport {
    async fn send(&mut self, frame: &RequestFrame) -> io::Result<()> {
        self.inner.send(frame).await?;
        if let [STX, _, UNLOCK_COMMAND, ..] = frame.as_bytes()
            && let Ok(mut slot) = self.unlock_written.lock()
        {
            *slot = Some(Instant::now());
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
}

// --- in-process lends ------------------------------------------------------------------------

struct LendSamples {
    to_unlock: Vec<Duration>,
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
    let unlock_written = Arc::new(Mutex::new(None));
    let bus_config = config.bus_config();
    let transport = TappedTransport {
        inner: TcpTransport::connect(
            &sim.addr.ip().to_string(),
            sim.addr.port(),
            bus_config.connect_timeout,
        )
        .await?,
        unlock_written: Arc::clone(&unlock_written),
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
        roundtrip: Vec::with_capacity(lends),
        raw_insert: Vec::with_capacity(lends * RAW_INSERTS_PER_LEND),
        returns: 0,
        in_process_rss_kb: None,
    };
    let mut open: VecDeque<Phone> = VecDeque::new();
    for n in 0..lends {
        let phone = bench_phone(n)?;
        if let Ok(mut slot) = unlock_written.lock() {
            *slot = None;
        }
        let start = Instant::now();
        engine
            .lend(&phone)
            .await
            .with_context(|| format!("lend {n}"))?;
        samples.roundtrip.push(start.elapsed());
        let written = unlock_written.lock().ok().and_then(|mut slot| slot.take());
        let written = written.context("lend returned but no unlock frame was written")?;
        samples.to_unlock.push(written.duration_since(start));
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
    samples.in_process_rss_kb = rss_kb("self");
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

// --- the real process ------------------------------------------------------------------------

struct RssReport {
    /// What was measured: the binary and how it was driven, or the in-process fallback.
    source: String,
    rss_kb: u64,
    hwm_kb: Option<u64>,
}

/// `VmRSS` of `/proc/<pid>/status` in kB.
fn rss_kb(pid: &str) -> Option<u64> {
    proc_status_kb(pid, "VmRSS:")
}

fn proc_status_kb(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The `cartwise-edge` binary cargo built with this bench, else one left in target/.
fn edge_binary() -> Option<PathBuf> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_cartwise-edge"));
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    [
        built,
        target.join("release/cartwise-edge"),
        target.join("debug/cartwise-edge"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

async fn rss_phase(dir: &Path, lends: usize) -> anyhow::Result<Option<RssReport>> {
    let Some(binary) = edge_binary() else {
        return Ok(None);
    };
    let sim = start_sim().await?;
    let data = dir.join("process");
    std::fs::create_dir_all(&data)?;
    let config_path = data.join("edge.toml");
    // Kiosk rate limits raised: the bench is one kiosk renting to many phones quickly.
    std::fs::write(
        &config_path,
        "[shopper.rate_limits]\n\
         otp_requests_per_kiosk = { requests = 100000, window_ms = 600000 }\n\
         otp_verifications_per_kiosk = { requests = 100000, window_ms = 600000 }\n",
    )?;
    let outbox = data.join("outbox.jsonl");
    let boards: Vec<String> = (0..BOARDS).map(|b| b.to_string()).collect();
    let mut child = tokio::process::Command::new(&binary)
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .arg("--data")
        .arg(&data)
        .args(["--http", "127.0.0.1:0", "--bus"])
        .arg(format!("tcp:{}", sim.addr))
        .arg("--boards")
        .arg(boards.join(","))
        .arg("--sms-outbox")
        .arg(&outbox)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child
        .id()
        .context("the edge process has no pid")?
        .to_string();
    let driven = drive_process(&mut child, &sim, &outbox, lends).await;
    // Steady state: the node idles with the poller reading all ten boards.
    let mut rss = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss = rss.max(rss_kb(&pid).unwrap_or(0));
    }
    let hwm_kb = proc_status_kb(&pid, "VmHWM:");
    child.kill().await?;
    let done = driven?;
    Ok(Some(RssReport {
        source: format!(
            "{} (`run`, {BOARDS} boards polled, {done} lends + returns over HTTP)",
            binary.display()
        ),
        rss_kb: rss,
        hwm_kb,
    }))
}

/// Waits for the kiosk address, then lends and returns through the kiosk API.
async fn drive_process(
    child: &mut tokio::process::Child,
    sim: &Sim,
    outbox: &Path,
    lends: usize,
) -> anyhow::Result<usize> {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(READY_WAIT_MAX, lines.next_line())
        .await
        .context("the edge process did not start")??
        .context("the edge process exited")?;
    let http = line
        .rsplit("http://")
        .next()
        .context("no kiosk address printed")?
        .trim()
        .to_string();
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        client
            .post(format!("http://{http}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let mut open: VecDeque<String> = VecDeque::new();
    for n in 0..lends {
        let phone = format!("052{:07}", n);
        let answer = post("/auth/request-otp", json!({ "phone": phone })).await?;
        if !answer.status().is_success() {
            bail!("request-otp: {}", answer.text().await?);
        }
        let deadline = Instant::now() + READY_WAIT_MAX;
        let code = loop {
            if let Some(code) = outbox_code(outbox, &phone)? {
                break code;
            }
            if Instant::now() > deadline {
                bail!("no code in {}", outbox.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let answer = post("/carts/assign", json!({ "phone": phone, "otp_code": code })).await?;
        if !answer.status().is_success() {
            // The node may still be reading its first bus round: wait and retry once.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let retry = post("/carts/assign", json!({ "phone": phone, "otp_code": code })).await?;
            if !retry.status().is_success() {
                bail!("assign: {}", retry.text().await?);
            }
        }
        open.push_back(phone);
        if open.len() > OPEN_RENTALS_MAX / 2
            && let Some(phone) = open.pop_front()
        {
            let answer: Value = post("/carts/initiate-return", json!({ "phone": phone }))
                .await?
                .json_text()
                .await?;
            // Posts are numbered from 1, 16 per board in address order.
            let cart = answer["cart_id"].as_u64().context("no cart_id")?;
            let index = cart.checked_sub(1).context("cart_id 0")?;
            let board = u8::try_from(index / 16)?;
            let lock = Lock::new(u8::try_from(index % 16 + 1)?)?;
            sim.handle
                .sim()
                .with_bus(|bus, now| bus.dock(now, board, lock))?;
        }
    }
    Ok(lends)
}

/// The last code the outbox holds for `phone` (national form).
fn outbox_code(outbox: &Path, phone: &str) -> anyhow::Result<Option<String>> {
    let e164 = format!("+972{}", &phone[1..]);
    let Ok(text) = std::fs::read_to_string(outbox) else {
        return Ok(None);
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["to"] == e164.as_str())
        .filter_map(|v| v["code"].as_str().map(str::to_string))
        .next_back())
}

trait JsonText {
    async fn json_text(self) -> anyhow::Result<Value>;
}

impl JsonText for reqwest::Response {
    /// The body as JSON, failing with the body's text on a non-2xx status.
    async fn json_text(self) -> anyhow::Result<Value> {
        let ok = self.status().is_success();
        let text = self.text().await?;
        if !ok {
            bail!("{text}");
        }
        Ok(serde_json::from_str(&text)?)
    }
}

// --- the report ------------------------------------------------------------------------------

/// Nearest-rank percentile in milliseconds.
fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

struct Report {
    machine: Value,
    lends: usize,
    returns: usize,
    lend_p50: f64,
    lend_p99: f64,
    roundtrip_p50: f64,
    roundtrip_p99: f64,
    raw_p50: f64,
    raw_p99: f64,
    raw_samples: usize,
    rss_mb: f64,
    rss_source: String,
    rss_hwm_mb: Option<f64>,
    in_process_rss_mb: Option<f64>,
}

impl Report {
    fn new(lend: &LendSamples, rss: Option<RssReport>, dir: &Path) -> Self {
        let mb = |kb: u64| kb as f64 / 1024.0;
        let in_process_rss_mb = lend.in_process_rss_kb.map(mb);
        let (rss_mb, rss_source, rss_hwm_mb) = match rss {
            Some(r) => (mb(r.rss_kb), r.source, r.hwm_kb.map(mb)),
            None => (
                in_process_rss_mb.unwrap_or(f64::NAN),
                "in process (no cartwise-edge binary found; includes simulator and bench)".into(),
                None,
            ),
        };
        Self {
            machine: machine(dir),
            lends: lend.to_unlock.len(),
            returns: lend.returns,
            lend_p50: percentile_ms(&lend.to_unlock, 50.0),
            lend_p99: percentile_ms(&lend.to_unlock, 99.0),
            roundtrip_p50: percentile_ms(&lend.roundtrip, 50.0),
            roundtrip_p99: percentile_ms(&lend.roundtrip, 99.0),
            raw_p50: percentile_ms(&lend.raw_insert, 50.0),
            raw_p99: percentile_ms(&lend.raw_insert, 99.0),
            raw_samples: lend.raw_insert.len(),
            rss_mb,
            rss_source,
            rss_hwm_mb,
            in_process_rss_mb,
        }
    }

    fn print(&self, took: Duration) {
        let ratio = self.lend_p99 / self.raw_p99;
        println!(
            "\ncartwise-edge lend benchmark ({:.1} s)",
            took.as_secs_f64()
        );
        println!("machine: {}", self.machine);
        println!(
            "{} lends ({} returns) with {BOARDS} simulated boards over TCP; {} raw inserts\n",
            self.lends, self.returns, self.raw_samples
        );
        println!("{:<44} {:>10} {:>10}", "metric", "p50", "p99");
        let row = |name: &str, p50: f64, p99: f64| {
            println!("{name:<44} {p50:>8.2}ms {p99:>8.2}ms");
        };
        row(
            "lend: request → unlock frame written",
            self.lend_p50,
            self.lend_p99,
        );
        row(
            "lend: round trip (incl. hook settle wait)",
            self.roundtrip_p50,
            self.roundtrip_p99,
        );
        row(
            "raw SQLite insert (WAL, synchronous=FULL)",
            self.raw_p50,
            self.raw_p99,
        );
        println!("\n{:<44} {:>8.1}MB", "edge RSS (steady state)", self.rss_mb);
        println!("  measured on: {}", self.rss_source);
        if let Some(hwm) = self.rss_hwm_mb {
            println!("  peak (VmHWM): {hwm:.1} MB");
        }
        if let Some(in_process) = self.in_process_rss_mb {
            println!("  bench process (engine + simulator + bench): {in_process:.1} MB");
        }
        let verdict = |met: bool| if met { "MET" } else { "NOT MET" };
        println!("\ntargets:");
        println!(
            "  lend p99 ≤ {LEND_P99_OVER_RAW_MAX}× raw insert p99: {:.2} ms vs {:.2} ms ({ratio:.2}×) — {}",
            self.lend_p99,
            self.raw_p99 * LEND_P99_OVER_RAW_MAX,
            verdict(ratio <= LEND_P99_OVER_RAW_MAX)
        );
        println!(
            "  RSS ≤ {RSS_MB_MAX} MB: {:.1} MB — {}",
            self.rss_mb,
            verdict(self.rss_mb <= RSS_MB_MAX)
        );
    }

    fn json(&self) -> Value {
        let result = |metric: &str, value: f64, unit: &str, baseline: Value| json!({ "metric": metric, "value": value, "unit": unit, "baseline": baseline });
        json!({
            "machine": self.machine,
            "results": [
                result("edge_lend_p99_ms", self.lend_p99, "ms",
                    json!({ "metric": "raw_sqlite_insert_p99_ms", "value": self.raw_p99 })),
                result("edge_lend_p50_ms", self.lend_p50, "ms", Value::Null),
                result("edge_lend_roundtrip_p99_ms", self.roundtrip_p99, "ms", Value::Null),
                result("edge_rss_mb", self.rss_mb, "MB", Value::Null),
            ],
        })
    }
}

/// What the numbers were measured on.
fn machine(dir: &Path) -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name") || l.starts_with("Model"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let mem_kb = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let disk = std::process::Command::new("df")
        .args(["--output=source,fstype"])
        .arg(dir)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "arch": std::env::consts::ARCH,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "memory_mb": mem_kb / 1024,
        "disk": disk,
        "data_dir": dir.display().to_string(),
    })
}
