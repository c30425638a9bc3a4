//! Invariant 1 under SIGKILL with real processes, end to end to Postgres: an edge enrolled
//! with an in-process hub lends and returns through its kiosk API while it is SIGKILLed at
//! random instants of the stream; after each restart its SQLite store is checked against what
//! the shoppers were told (every 200) and what the boards show, and at the end Postgres is
//! checked against both once the edge has synced.
//!
//! The suite runs `KILLS_PER_TEST` kills in each of four tests (100 in all), each on its own
//! database, sim-board and data directory; the shopper stream and the store checks are edge-node's
//! `crash_recovery` test's. `CARTWISE_FAULT_KILLS` changes the kills per test and
//! `CARTWISE_FAULT_SEED` replays a seed (each test prints its own). The `cartwise-edge` binary
//! must be built (`cargo build --locked --bin cartwise-edge`; a whole-workspace test build does
//! it). `CARTWISE_KEEP_TEST_DATA=1` keeps the data and logs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

#[path = "../../edge-node/tests/support_proc/mod.rs"]
mod faults_common;

/// The edge binary under test, built beside this test.
fn edge_bin() -> std::path::PathBuf {
    cartwise_tests::workspace_bin("cartwise-edge")
}

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faults_common::{
    Api, Db, EdgeFiles, EdgeProc, EventRec, RentalRec, Scratch, SimPost, SimProc, WAIT_MAX,
    posts_match, sign_in,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use sqlx::PgPool;

/// Boards on the simulated bus, as `--boards` takes them.
const BOARDS: &str = "0";
/// Shoppers lending and returning at once.
const SHOPPERS: usize = 4;
/// The simulated shopper takes an unlocked cart after this long.
const AUTO_TAKE_MS: u64 = 100;
/// Longest a rental may stay `unlocking`. The reconciler runs after each board's first read
/// and every 5 s; it settles a rental of an earlier boot (power loss) at once, and one of the
/// same boot (a process crash) once it is 10 s old (`reconcile_after`), so 20 s leaves margin.
const PENDING_MAX: Duration = Duration::from_secs(20);
/// How long the edge may take to see an unlocked cart leave (a poll every 200 ms).
const TAKE_SEEN_MAX: Duration = Duration::from_secs(10);
/// The edge's poll interval (`bus.poll_interval_ms` of the test's config): it is given two
/// before any check.
const POLL: Duration = Duration::from_millis(200);
/// Statuses of a rental whose lock did open.
const OPENED: [&str; 3] = ["active", "returned", "returned_late"];
/// Events that record a cart docking (the hook latching on a present cart) at their post.
const DOCK_FACTS: [&str; 3] = ["returned", "cart_docked", "lend_cancelled"];

/// What the test was told and did, across every edge process.
#[derive(Debug, Default)]
struct Record {
    /// Rental id → post of every `assign` that answered 200.
    lent: BTreeMap<String, u16>,
    /// Rental id → status of every `complete-return` that answered `returned: true`.
    returned: BTreeMap<String, String>,
    /// Post → docks the test made there (each is a physical fact the edge must record).
    docks: BTreeMap<u16, usize>,
    /// Answers no shopper should ever get (5xx other than "try again", refused tokens, ...).
    unexpected: Vec<String>,
}

/// One shopper: a phone with its 30-day token, and the return it docked, if unconfirmed.
#[derive(Debug, Clone)]
struct Shopper {
    phone: String,
    token: String,
    /// (rental id, post) of a dock not yet confirmed by `complete-return`.
    docked: Option<(String, u16)>,
}

/// Why a shopper stopped for this cycle.
enum Halt {
    /// The edge went away (killed): a request failed.
    EdgeGone,
    /// The cycle is over.
    Stop,
}

struct Ctx {
    edge: Api,
    sim: Arc<SimProc>,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
}

impl Ctx {
    fn halt_if_stopped(&self) -> Result<(), Halt> {
        if self.stop.load(Ordering::SeqCst) {
            Err(Halt::Stop)
        } else {
            Ok(())
        }
    }

    fn unexpected(&self, what: String) -> Halt {
        self.record.lock().unwrap().unexpected.push(what);
        Halt::Stop
    }

    async fn post(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<(u16, Value), Halt> {
        self.edge
            .post_auth(path, body, token)
            .await
            .map_err(|_| Halt::EdgeGone)
    }
}

/// Sleeps a random time in `ms`, cut short when the cycle stops.
async fn pause(ms: std::ops::Range<u64>, rng: &mut StdRng, stop: &AtomicBool) {
    let until = Instant::now() + Duration::from_millis(rng.random_range(ms));
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A shopper's stream of lends and returns until the cycle stops or the edge dies.
async fn shop(mut shopper: Shopper, ctx: Ctx, seed: u64) -> Shopper {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        match shop_once(&mut shopper, &ctx, &mut rng).await {
            Ok(()) => {}
            Err(Halt::EdgeGone | Halt::Stop) => return shopper,
        }
    }
}

/// One lend (if the phone has no rental) followed by its return.
async fn shop_once(shopper: &mut Shopper, ctx: &Ctx, rng: &mut StdRng) -> Result<(), Halt> {
    if shopper.docked.is_some() {
        return await_return(shopper, ctx).await;
    }
    ctx.halt_if_stopped()?;
    let phone = json!({ "phone": shopper.phone });
    let (status, body) = ctx
        .post("/carts/assign", &phone, Some(&shopper.token))
        .await?;
    match status {
        200 => {
            let id = body["rental_id"].as_str().unwrap().to_string();
            let post = u16::try_from(body["cart"]["cart_id"].as_u64().unwrap()).unwrap();
            ctx.record.lock().unwrap().lent.insert(id, post);
            walk_off(post, ctx).await?;
            pause(200..800, rng, &ctx.stop).await;
        }
        // The phone already has a rental (one whose 200 was lost to a kill): return it.
        409 => {}
        // No cart, or the bus is busy reopening: try again shortly.
        503 => {
            pause(200..500, rng, &ctx.stop).await;
            return Ok(());
        }
        _ => {
            return Err(ctx.unexpected(format!(
                "assign {} answered {status}: {body}",
                shopper.phone
            )));
        }
    }
    give_back(shopper, ctx, rng).await
}

/// The shopper walks off with the cart: waits until the edge has seen it leave its post. (A
/// cart pushed back before the edge saw it go is rightly a cancelled lend, not a return.)
async fn walk_off(post: u16, ctx: &Ctx) -> Result<(), Halt> {
    let deadline = Instant::now() + TAKE_SEEN_MAX;
    loop {
        ctx.halt_if_stopped()?;
        let (status, cart) = ctx
            .edge
            .get(&format!("/carts/{post}"))
            .await
            .map_err(|_| Halt::EdgeGone)?;
        if status == 200 && cart["has_cart"] == json!(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ctx.unexpected(format!(
                "{TAKE_SEEN_MAX:?} after the lend the edge still shows a cart at post {post}: \
                 {status} {cart}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `initiate-return`, dock at the named post, then wait for `complete-return`.
async fn give_back(shopper: &mut Shopper, ctx: &Ctx, rng: &mut StdRng) -> Result<(), Halt> {
    let phone = json!({ "phone": shopper.phone });
    loop {
        ctx.halt_if_stopped()?;
        let (status, body) = ctx.post("/carts/initiate-return", &phone, None).await?;
        match status {
            200 => {
                let post = u16::try_from(body["cart_id"].as_u64().unwrap()).unwrap();
                let rental = body["rental_id"].as_str().unwrap().to_string();
                // The shopper docks where told, whatever happens to the edge meanwhile.
                let docked = ctx.sim.act("dock", post).await;
                if docked != 200 {
                    return Err(ctx.unexpected(format!(
                        "the simulator refused a dock at post {post}, named for {rental}: {docked}"
                    )));
                }
                *ctx.record.lock().unwrap().docks.entry(post).or_default() += 1;
                shopper.docked = Some((rental, post));
                return await_return(shopper, ctx).await;
            }
            404 => return Ok(()),
            409 | 503 => pause(150..400, rng, &ctx.stop).await,
            _ => {
                return Err(ctx.unexpected(format!(
                    "initiate-return {} answered {status}: {body}",
                    shopper.phone
                )));
            }
        }
    }
}

/// Polls `complete-return` until the docked rental is returned (the edge may die meanwhile).
async fn await_return(shopper: &mut Shopper, ctx: &Ctx) -> Result<(), Halt> {
    let Some((rental, post)) = shopper.docked.clone() else {
        return Ok(());
    };
    let phone = json!({ "phone": shopper.phone });
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (status, body) = ctx.post("/carts/complete-return", &phone, None).await?;
        if status == 200 && body["returned"] == json!(true) {
            let id = body["rental_id"].as_str().unwrap_or_default().to_string();
            let state = body["status"].as_str().unwrap_or_default().to_string();
            if id != rental {
                return Err(ctx.unexpected(format!(
                    "docked {rental} at post {post} but complete-return closed {id}"
                )));
            }
            ctx.record.lock().unwrap().returned.insert(id, state);
            shopper.docked = None;
            return Ok(());
        }
        if status != 200 {
            return Err(ctx.unexpected(format!(
                "complete-return {} answered {status}: {body}",
                shopper.phone
            )));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Still waiting with the edge up: leave it to the check after the next restart.
    Err(Halt::Stop)
}

/// Waits until the restarted edge has read the boards (its posts match the simulator) and
/// every rental left `unlocking` is settled — or, unless `all`, is still young enough that the
/// reconciler may rightly be waiting on it (see [`PENDING_MAX`]). Returns the store and the
/// boards as they then are.
async fn settle(edge: &EdgeProc, sim: &SimProc, files: &EdgeFiles, all: bool) -> Settled {
    edge.wait_bus().await;
    tokio::time::sleep(POLL * 2).await;
    let deadline = Instant::now() + PENDING_MAX;
    loop {
        let boards = sim.posts().await;
        let db = Db::open(&files.db());
        let posts = db.posts();
        let rentals = db.rentals();
        let now = wall_ms();
        let waiting: Vec<&RentalRec> = rentals
            .iter()
            .filter(|r| r.status == "unlocking" && (all || too_long(r, now)))
            .collect();
        if posts_match(&posts, &boards) && waiting.is_empty() {
            return Settled {
                rentals,
                events: db.events(),
                boards,
            };
        }
        assert!(
            Instant::now() < deadline,
            "{PENDING_MAX:?} after a restart the edge has not settled: rentals left \
             unlocking {waiting:#?}; posts sensed {posts:?}; boards {boards:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a rental has been `unlocking` for longer than [`PENDING_MAX`] at wall time `now`.
fn too_long(rental: &RentalRec, now_ms: i64) -> bool {
    let pending_ms = i64::try_from(PENDING_MAX.as_millis()).unwrap();
    now_ms - rental.start_wall_ms > pending_ms
}

fn wall_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since_epoch.as_millis()).unwrap()
}

struct Settled {
    rentals: Vec<RentalRec>,
    events: Vec<EventRec>,
    boards: Vec<SimPost>,
}

fn is_anomaly(event: &EventRec, kind: &str) -> bool {
    event.kind == "anomaly" && event.data["anomaly"] == json!(kind)
}

/// Invariant 1 against the settled store; returns every violation found.
fn violations(record: &Record, s: &Settled) -> Vec<String> {
    let mut found = Vec::new();
    let by_id: BTreeMap<&str, &RentalRec> = s.rentals.iter().map(|r| (r.id.as_str(), r)).collect();

    // Every rental that got a 200 is there, at its post, and its lock is recorded as opened.
    for (id, post) in &record.lent {
        match by_id.get(id.as_str()) {
            None => found.push(format!("acknowledged rental {id} (post {post}) is missing")),
            Some(r) if r.post != *post || !OPENED.contains(&r.status.as_str()) => found.push(
                format!("acknowledged rental {id} (post {post}) is now {r:?}"),
            ),
            Some(_) => {}
        }
    }
    // Every return that got `returned: true` stays returned.
    for (id, status) in &record.returned {
        match by_id.get(id.as_str()) {
            Some(r) if r.status == *status => {}
            other => found.push(format!(
                "acknowledged return of {id} ({status}) is now {other:?}"
            )),
        }
    }
    // No rental stays `unlocking` past the reconciler's window (settle waited for the rest).
    let now = wall_ms();
    for r in s.rentals.iter().filter(|r| r.status == "unlocking") {
        if too_long(r, now) {
            found.push(format!(
                "rental left unlocking for over {PENDING_MAX:?}: {r:?}"
            ));
        }
    }

    for (index, board) in s.boards.iter().enumerate() {
        let post = u16::try_from(index + 1).unwrap();
        let here: Vec<&EventRec> = s.events.iter().filter(|e| e.post == Some(post)).collect();
        // No unrecorded unlock: only an unlock opens a hook, so an open post must have a
        // recorded opening (a rental's unlock, confirmed or reconciled as active, or a
        // recorded failure) later than the last dock recorded there.
        if !board.latched {
            let last_dock = here
                .iter()
                .filter(|e| DOCK_FACTS.contains(&e.kind.as_str()))
                .map(|e| e.seq)
                .max()
                .unwrap_or(0);
            // A rental still `unlocking` here (not yet reconciled) is checked again later.
            let pending = |e: &EventRec| {
                e.kind == "lend_started"
                    && s.rentals
                        .iter()
                        .any(|r| Some(&r.id) == e.rental_id.as_ref() && r.status == "unlocking")
            };
            let opened = here.iter().any(|e| {
                e.seq > last_dock
                    && (e.kind == "unlocked"
                        || e.kind == "anomaly"
                        || (e.kind == "unlock_reconciled" && e.data["outcome"] == json!("active"))
                        || pending(e))
            });
            if !opened {
                let tail: Vec<&&EventRec> = here.iter().rev().take(6).collect();
                found.push(format!(
                    "post {post} is open with no recorded unlock since its last dock; \
                     latest events there: {tail:#?}"
                ));
            }
        }
        // Every dock the test made is a recorded fact at that post, never dropped.
        let made = record.docks.get(&post).copied().unwrap_or(0);
        let recorded = here
            .iter()
            .filter(|e| DOCK_FACTS.contains(&e.kind.as_str()))
            .count();
        if recorded < made {
            found.push(format!(
                "post {post}: the test docked {made} carts there, the edge recorded {recorded}"
            ));
        }
    }

    // No phantom rental: an active rental whose cart never left must not sit on a post that
    // is latched on its cart (the lock never opened).
    for r in s
        .rentals
        .iter()
        .filter(|r| r.status == "active" && r.taken_hlc.is_none())
    {
        let board = s.boards[usize::from(r.post) - 1];
        if board.latched && board.present {
            found.push(format!(
                "phantom rental {r:?}: its post is latched on a present cart"
            ));
        }
    }
    found
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

fn fresh_phone(n: &mut u32) -> String {
    *n += 1;
    format!("052{:07}", *n)
}

/// Kills per test function; four functions make the suite's 100.
const KILLS_PER_TEST: u64 = 25;

/// The edge's config: its enrolled identity and a fast poll (so each kill cycle is short).
fn write_config(path: &std::path::Path, device: &str, branch: &str) {
    let text = format!(
        "[device]\nid = \"{device}\"\nbranch_id = \"{branch}\"\nname = \"fault-pi\"\n\n\
         [bus]\npoll_interval_ms = {}\n",
        POLL.as_millis()
    );
    std::fs::write(path, text).unwrap();
}

/// Kills the edge `runs` times during the shopper stream, checking the store after each
/// restart, then checks Postgres once the edge has synced. `salt` keeps the four tests' default
/// seeds apart.
async fn kills_lose_nothing(pool: PgPool, salt: u64) {
    let runs = env_u64("CARTWISE_FAULT_KILLS").unwrap_or(KILLS_PER_TEST);
    let seed = env_u64("CARTWISE_FAULT_SEED").unwrap_or_else(|| rand::rng().random::<u64>() ^ salt);
    eprintln!(
        "faults_edge_sigkill: seed {seed}, {runs} kills (replay: CARTWISE_FAULT_SEED={seed})"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    cartwise_tests::seed_world(&pool).await;
    let hub = cartwise_tests::start_hub(&pool).await;
    let scratch = Scratch::new("cartwise-fault-kill-");
    let files = EdgeFiles::under(scratch.path());
    std::fs::create_dir_all(&files.data).unwrap();
    let peer = cartwise_tests::enroll_device(&pool, &hub, "ST-RA", "fault-pi", &files.data)
        .await
        .peer();
    let config = scratch.path().join("edge.toml");
    write_config(&config, &peer.device.to_string(), &peer.branch.to_string());

    let sim =
        Arc::new(SimProc::start(1, Some(AUTO_TAKE_MS), &scratch.path().join("sim.log")).await);
    let mut edge = EdgeProc::start(&files, Some(&config), &sim.bus, BOARDS).await;
    settle(&edge, &sim, &files, true).await;

    let mut numbers = u32::try_from(salt % 1000).unwrap() * 100;
    let mut shoppers = Vec::new();
    for _ in 0..SHOPPERS {
        let phone = fresh_phone(&mut numbers);
        let token = sign_in(&edge.api, &files.outbox, &phone).await;
        shoppers.push(Shopper {
            phone,
            token,
            docked: None,
        });
    }
    let record = Arc::new(Mutex::new(Record::default()));
    let mut settled = None;

    for cycle in 1..=runs {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = shoppers
            .drain(..)
            .map(|shopper| {
                let ctx = Ctx {
                    edge: edge.api.clone(),
                    sim: Arc::clone(&sim),
                    record: Arc::clone(&record),
                    stop: Arc::clone(&stop),
                };
                tokio::spawn(shop(shopper, ctx, rng.random()))
            })
            .collect();
        // SIGKILL at a random instant of the stream; in-flight requests may fail.
        let stream_ms = rng.random_range(150..1500);
        tokio::time::sleep(Duration::from_millis(stream_ms)).await;
        edge.proc.kill().await;
        stop.store(true, Ordering::SeqCst);
        for task in tasks {
            let shopper = tokio::time::timeout(WAIT_MAX, task)
                .await
                .expect("a shopper did not stop after the kill")
                .expect("a shopper task panicked");
            shoppers.push(shopper);
        }

        edge = EdgeProc::start(&files, Some(&config), &sim.bus, BOARDS).await;
        // The last restart waits for every rental to settle; earlier ones check what is due.
        let now = settle(&edge, &sim, &files, cycle == runs).await;
        let mut found = violations(&record.lock().unwrap(), &now);
        found.extend(
            now.events
                .iter()
                .filter(|e| is_anomaly(e, "unrecorded_unlock"))
                .map(|e| format!("false unrecorded-unlock anomaly: {e:?}")),
        );
        for shopper in &mut shoppers {
            let Some((rental, post)) = shopper.docked.take() else {
                continue;
            };
            let row = now.rentals.iter().find(|r| r.id == rental);
            let closed_there =
                |r: &RentalRec| r.status.starts_with("returned") && r.return_post == Some(post);
            if !row.is_some_and(closed_there) {
                found.push(format!(
                    "{} docked {rental} at its named post {post}, but after the restart it is \
                     {row:?}",
                    shopper.phone
                ));
            }
        }
        let unexpected = record.lock().unwrap().unexpected.clone();
        found.extend(
            unexpected
                .into_iter()
                .map(|u| format!("unexpected answer: {u}")),
        );
        assert!(
            found.is_empty(),
            "seed {seed}, after kill {cycle}: invariant 1 violated:\n{}",
            found.join("\n")
        );
        settled = Some(now);
    }
    let settled = settled.expect("at least one kill");

    // After sync, Postgres holds every rental whose lock opened, in the edge's final state, and
    // every acknowledged rental and return among them.
    let opened: BTreeMap<String, String> = settled
        .rentals
        .iter()
        .filter(|r| OPENED.contains(&r.status.as_str()))
        .map(|r| (r.id.clone(), r.status.clone()))
        .collect();
    let mut last_seen: BTreeMap<String, String>;
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let rows: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM rentals WHERE branch_id = $1")
                .bind(peer.branch.as_uuid())
                .fetch_all(&pool)
                .await
                .unwrap();
        last_seen = rows
            .into_iter()
            .map(|(id, s)| (id.to_string(), s))
            .collect();
        if opened
            .iter()
            .all(|(id, status)| last_seen.get(id) == Some(status))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: Postgres never caught up with the edge: edge {opened:#?}, Postgres \
             {last_seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let record = std::mem::take(&mut *record.lock().unwrap());
    for (id, post) in &record.lent {
        assert!(
            last_seen.contains_key(id),
            "seed {seed}: acknowledged rental {id} (post {post}) is not in Postgres"
        );
    }
    for (id, status) in &record.returned {
        assert_eq!(
            last_seen.get(id),
            Some(status),
            "seed {seed}: acknowledged return of {id} is not in Postgres as {status}"
        );
    }
    let unrecorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM anomalies WHERE device_id = $1 AND kind = 'unrecorded_unlock'",
    )
    .bind(peer.device.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        unrecorded, 0,
        "seed {seed}: unrecorded unlocks reached Postgres"
    );

    eprintln!(
        "faults_edge_sigkill: seed {seed}: {runs} kills, {} lends and {} returns acknowledged, \
         {} docks, {} rentals in Postgres, in {:.1?}",
        record.lent.len(),
        record.returned.len(),
        record.docks.values().sum::<usize>(),
        last_seen.len(),
        started.elapsed()
    );
    assert!(
        !record.lent.is_empty() && !record.returned.is_empty(),
        "seed {seed}: the stream lent or returned nothing; the test exercised nothing"
    );
    edge.proc.kill().await;
    drop(hub);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn sigkill_edge_kills_1_to_25(pool: PgPool) {
    kills_lose_nothing(pool, 1).await;
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn sigkill_edge_kills_26_to_50(pool: PgPool) {
    kills_lose_nothing(pool, 2).await;
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn sigkill_edge_kills_51_to_75(pool: PgPool) {
    kills_lose_nothing(pool, 3).await;
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn sigkill_edge_kills_76_to_100(pool: PgPool) {
    kills_lose_nothing(pool, 4).await;
}
