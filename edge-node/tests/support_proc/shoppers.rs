//! The shopper stream of the SIGKILL tests (edge-node's `crash_recovery.rs` and the
//! workspace's `faults_edge_sigkill.rs`, which adds the hub): shoppers lending and returning
//! through the kiosk API while the edge is killed, what they were told (`Record`), the store
//! after a restart (`settle`) and the invariant-1 checks (`violations`). The including test
//! names the edge's poll interval (`POLL`) and includes `support_proc` beside it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use crate::POLL;
use crate::support_proc::{
    Api, Db, EdgeFiles, EdgeProc, EventRec, RentalRec, SimPost, SimProc, posts_match,
};

/// Shoppers lending and returning at once.
pub const SHOPPERS: usize = 4;
/// The simulated shopper takes an unlocked cart after this long.
pub const AUTO_TAKE_MS: u64 = 100;
/// Longest a rental may stay `unlocking`. The reconciler runs after each board's first read
/// and every 5 s; it settles a rental of an earlier boot (power loss) at once, and one of the
/// same boot (a process crash) once it is 10 s old (`reconcile_after`), so 20 s leaves margin.
pub const PENDING_MAX: Duration = Duration::from_secs(20);
/// How long the edge may take to see an unlocked cart leave (a few polls).
pub const TAKE_SEEN_MAX: Duration = Duration::from_secs(10);
/// Statuses of a rental whose lock did open.
pub const OPENED: [&str; 3] = ["active", "returned", "returned_late"];
/// Events that record a cart docking (the hook latching on a present cart) at their post.
pub const DOCK_FACTS: [&str; 3] = ["returned", "cart_docked", "lend_cancelled"];

/// What the test was told and did, across every edge process.
#[derive(Debug, Default)]
pub struct Record {
    /// Rental id → post of every `assign` that answered 200.
    pub lent: BTreeMap<String, u16>,
    /// Rental id → status of every `complete-return` that answered `returned: true`.
    pub returned: BTreeMap<String, String>,
    /// Post → docks the test made there (each is a physical fact the edge must record).
    pub docks: BTreeMap<u16, usize>,
    /// Answers no shopper should ever get (5xx other than "try again", refused tokens, ...).
    pub unexpected: Vec<String>,
}

/// One shopper: a phone with its 30-day token, and the return it docked, if unconfirmed.
#[derive(Debug, Clone)]
pub struct Shopper {
    pub phone: String,
    pub token: String,
    /// (rental id, post) of a dock not yet confirmed by `complete-return`.
    pub docked: Option<(String, u16)>,
}

/// Why a shopper stopped for this cycle.
pub enum Halt {
    /// The edge went away (killed): a request failed.
    EdgeGone,
    /// The cycle is over.
    Stop,
}

pub struct Ctx {
    pub edge: Api,
    pub sim: Arc<SimProc>,
    pub record: Arc<Mutex<Record>>,
    pub stop: Arc<AtomicBool>,
}

impl Ctx {
    pub fn halt_if_stopped(&self) -> Result<(), Halt> {
        if self.stop.load(Ordering::SeqCst) {
            Err(Halt::Stop)
        } else {
            Ok(())
        }
    }

    pub fn unexpected(&self, what: String) -> Halt {
        self.record.lock().unwrap().unexpected.push(what);
        Halt::Stop
    }

    pub async fn post(
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
pub async fn pause(ms: std::ops::Range<u64>, rng: &mut StdRng, stop: &AtomicBool) {
    let until = Instant::now() + Duration::from_millis(rng.random_range(ms));
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A shopper's stream of lends and returns until the cycle stops or the edge dies.
pub async fn shop(mut shopper: Shopper, ctx: Ctx, seed: u64) -> Shopper {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        match shop_once(&mut shopper, &ctx, &mut rng).await {
            Ok(()) => {}
            Err(Halt::EdgeGone | Halt::Stop) => return shopper,
        }
    }
}

/// One lend (if the phone has no rental) followed by its return.
pub async fn shop_once(shopper: &mut Shopper, ctx: &Ctx, rng: &mut StdRng) -> Result<(), Halt> {
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
pub async fn walk_off(post: u16, ctx: &Ctx) -> Result<(), Halt> {
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
pub async fn give_back(shopper: &mut Shopper, ctx: &Ctx, rng: &mut StdRng) -> Result<(), Halt> {
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
pub async fn await_return(shopper: &mut Shopper, ctx: &Ctx) -> Result<(), Halt> {
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
pub async fn settle(edge: &EdgeProc, sim: &SimProc, files: &EdgeFiles, all: bool) -> Settled {
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
pub fn too_long(rental: &RentalRec, now_ms: i64) -> bool {
    let pending_ms = i64::try_from(PENDING_MAX.as_millis()).unwrap();
    now_ms - rental.start_wall_ms > pending_ms
}

pub fn wall_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since_epoch.as_millis()).unwrap()
}

pub struct Settled {
    pub rentals: Vec<RentalRec>,
    pub events: Vec<EventRec>,
    pub boards: Vec<SimPost>,
}

pub fn is_anomaly(event: &EventRec, kind: &str) -> bool {
    event.kind == "anomaly" && event.data["anomaly"] == json!(kind)
}

/// Invariant 1 against the settled store; returns every violation found.
pub fn violations(record: &Record, s: &Settled) -> Vec<String> {
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

pub fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

pub fn fresh_phone(n: &mut u32) -> String {
    *n += 1;
    format!("052{:07}", *n)
}
