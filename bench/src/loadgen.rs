//! The demo's shoppers: at every kiosk, shoppers sign in with the SMS code from the edge's
//! development outbox, take a cart, keep it a while, and bring it back to the post the kiosk
//! reserves (docking it through the board simulator's control API). Rates are bounded per
//! kiosk, and at most [`SHOPPERS_MAX`] shoppers per kiosk are out at once.
//!
//! Every event is one line on standard output:
//! `<unix ms> <branch> <device> <event> key=value…`, with events `lent` (`asked=` is when the
//! lend was requested), `returned`, `refused` and `error`.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::endpoints::{Edge, Endpoints};

/// Most lends per minute one kiosk is asked for.
pub const LENDS_PER_MINUTE_MAX: f64 = 30.0;
/// Most shoppers per kiosk (and so most rentals out at once per kiosk).
pub const SHOPPERS_MAX: usize = 50;
/// Longest a shopper keeps a cart, in seconds.
pub const HOLD_SECS_MAX: u64 = 3600;
/// How long one HTTP call may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shopper waits for the kiosk to see a docked cart.
const RETURN_WAIT: Duration = Duration::from_secs(30);
/// How many times a shopper looks in the outbox for a code.
const OUTBOX_READS_MAX: u32 = 40;

/// How hard to drive the kiosks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadConfig {
    /// Lends asked of each kiosk per minute (clamped to `0.1..=LENDS_PER_MINUTE_MAX`).
    pub lends_per_minute: f64,
    /// Shoppers per kiosk (clamped to `1..=SHOPPERS_MAX`).
    pub shoppers: usize,
    /// Shortest time a shopper keeps a cart, seconds.
    pub hold_min_s: u64,
    /// Longest time a shopper keeps a cart, seconds (at most `HOLD_SECS_MAX`).
    pub hold_max_s: u64,
    /// Seed of the jitter.
    pub seed: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            lends_per_minute: 3.0,
            shoppers: 8,
            hold_min_s: 20,
            hold_max_s: 120,
            seed: 1,
        }
    }
}

impl LoadConfig {
    /// The configuration with every bound applied.
    pub fn bounded(self) -> Self {
        let hold_max_s = self.hold_max_s.clamp(1, HOLD_SECS_MAX);
        Self {
            lends_per_minute: if self.lends_per_minute.is_finite() {
                self.lends_per_minute.clamp(0.1, LENDS_PER_MINUTE_MAX)
            } else {
                1.0
            },
            shoppers: self.shoppers.clamp(1, SHOPPERS_MAX),
            hold_min_s: self.hold_min_s.clamp(1, hold_max_s),
            hold_max_s,
            seed: self.seed,
        }
    }
}

/// A small deterministic generator for jitter (xorshift64*).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// A generator from a seed (0 is replaced).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number in `0..n` (`n` ≥ 1).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// The demo phone number of shopper `shopper` at edge `edge` (national form, `050…`).
pub fn demo_phone(edge: usize, shopper: usize) -> String {
    format!("050{}{:06}", edge % 10, shopper % 1_000_000)
}

/// A national `05…` number in E.164.
pub fn e164(national: &str) -> String {
    format!("+972{}", national.trim_start_matches('0'))
}

/// Unix time in milliseconds.
fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// One shopper of one kiosk.
#[derive(Debug)]
pub(crate) struct Shopper {
    pub(crate) phone: String,
    pub(crate) token: Option<String>,
    /// The kiosk may hold an open rental of this phone (a refused lend said so).
    pub(crate) open: bool,
    pub(crate) hold: Duration,
}

/// What a failed shopper step says.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The kiosk or simulator did not answer.
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// It answered with an error.
    #[error("{what} answered {status}: {body}")]
    Status {
        /// The path called.
        what: &'static str,
        /// The HTTP status.
        status: u16,
        /// The answer.
        body: String,
    },
    /// The answer was not what the kiosk API promises.
    #[error("{0}")]
    Other(String),
}

/// One kiosk's client.
#[derive(Debug, Clone)]
pub(crate) struct Kiosk {
    pub(crate) http: reqwest::Client,
    pub(crate) edge: Edge,
    /// No event lines on standard output.
    pub(crate) quiet: bool,
}

impl Kiosk {
    /// A client of `edge`'s kiosk and simulator.
    pub(crate) fn new(edge: Edge) -> Result<Self, StepError> {
        let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build()?;
        Ok(Self {
            http,
            edge,
            quiet: false,
        })
    }

    fn log(&self, event: &str, detail: &str) {
        if self.quiet {
            return;
        }
        let line = format!(
            "{} {} {} {event} {detail}\n",
            now_ms(),
            self.edge.branch_code,
            if self.edge.name.is_empty() {
                &self.edge.device_id
            } else {
                &self.edge.name
            },
        );
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }

    async fn post(
        &self,
        base: &str,
        path: &str,
        body: &Value,
        bearer: Option<&str>,
    ) -> Result<(u16, Value), StepError> {
        let mut request = self
            .http
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .header("accept-language", "en")
            .body(body.to_string());
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn kiosk_ok(
        &self,
        what: &'static str,
        body: &Value,
        bearer: Option<&str>,
    ) -> Result<Value, StepError> {
        let (status, answer) = self.post(&self.edge.kiosk, what, body, bearer).await?;
        if status == 200 {
            Ok(answer)
        } else {
            Err(StepError::Status {
                what,
                status,
                body: answer.to_string(),
            })
        }
    }

    /// The newest code the outbox holds for `to`, if any.
    fn last_code(&self, to: &str) -> Option<String> {
        let text = std::fs::read_to_string(&self.edge.sms_outbox).ok()?;
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .rfind(|m| m["to"] == to)
            .and_then(|m| m["code"].as_str().map(str::to_owned))
    }

    async fn sign_in(&self, phone: &str) -> Result<String, StepError> {
        let to = e164(phone);
        let before = self.last_code(&to);
        self.kiosk_ok("/auth/request-otp", &json!({ "phone": phone }), None)
            .await?;
        let mut code = None;
        for _ in 0..OUTBOX_READS_MAX {
            let latest = self.last_code(&to);
            if latest.is_some() && latest != before {
                code = latest;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let code = code.ok_or_else(|| {
            StepError::Other(format!("no code for {to} in {}", self.edge.sms_outbox))
        })?;
        let verified = self
            .kiosk_ok(
                "/auth/verify-otp",
                &json!({ "phone": phone, "otp_code": code }),
                None,
            )
            .await?;
        verified["auth_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| StepError::Other(format!("verify-otp gave no token: {verified}")))
    }

    /// Lends a cart; `Ok(None)` when the kiosk says the phone already has one.
    pub(crate) async fn lend(&self, shopper: &mut Shopper) -> Result<Option<String>, StepError> {
        let token = match &shopper.token {
            Some(token) => token.clone(),
            None => {
                let token = self.sign_in(&shopper.phone).await?;
                shopper.token = Some(token.clone());
                token
            }
        };
        let asked = now_ms();
        let (status, answer) = self
            .post(
                &self.edge.kiosk,
                "/carts/assign",
                &json!({ "phone": shopper.phone }),
                Some(&token),
            )
            .await?;
        match status {
            200 => {
                let rental = answer["rental_id"].as_str().unwrap_or("?").to_owned();
                self.log(
                    "lent",
                    &format!(
                        "rental={rental} post={} phone={} asked={asked}",
                        answer["cart"]["cart_id"], shopper.phone
                    ),
                );
                Ok(Some(rental))
            }
            401 => {
                shopper.token = None;
                Err(StepError::Status {
                    what: "/carts/assign",
                    status,
                    body: answer.to_string(),
                })
            }
            409 if answer.to_string().contains("already have an active rental") => Ok(None),
            _ => Err(StepError::Status {
                what: "/carts/assign",
                status,
                body: answer.to_string(),
            }),
        }
    }

    /// Brings the shopper's cart back to the post the kiosk reserves; `Ok(false)` when the
    /// kiosk holds no rental of this phone.
    pub(crate) async fn give_back(&self, shopper: &Shopper) -> Result<bool, StepError> {
        let phone = json!({ "phone": shopper.phone });
        let (status, slot) = self
            .post(&self.edge.kiosk, "/carts/initiate-return", &phone, None)
            .await?;
        match status {
            200 => {}
            404 => return Ok(false),
            _ => {
                return Err(StepError::Status {
                    what: "/carts/initiate-return",
                    status,
                    body: slot.to_string(),
                });
            }
        }
        let post = slot["cart_id"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| StepError::Other(format!("initiate-return gave no post: {slot}")))?;
        let (board, lock) = self.edge.board_lock(post).ok_or_else(|| {
            StepError::Other(format!("post {post} is not on {}'s boards", self.edge.name))
        })?;
        let (status, answer) = self
            .post(
                &self.edge.sim_control,
                "/dock",
                &json!({ "board": board, "lock": lock }),
                None,
            )
            .await?;
        if status != 200 {
            return Err(StepError::Status {
                what: "/dock",
                status,
                body: answer.to_string(),
            });
        }
        let deadline = tokio::time::Instant::now() + RETURN_WAIT;
        loop {
            let state = self
                .kiosk_ok("/carts/complete-return", &phone, None)
                .await?;
            if state["returned"] == true {
                self.log(
                    "returned",
                    &format!(
                        "rental={} post={post} status={} phone={}",
                        state["rental_id"].as_str().unwrap_or("?"),
                        state["status"].as_str().unwrap_or("?"),
                        shopper.phone
                    ),
                );
                return Ok(true);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(StepError::Other(format!(
                    "post {post} docked but the return did not complete: {state}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// One shopper's visit: settle a cart left out (by an earlier run), then lend, keep and
    /// return.
    async fn visit(&self, mut shopper: Shopper) -> Shopper {
        if shopper.open {
            match self.give_back(&shopper).await {
                Ok(_) => shopper.open = false,
                Err(error) => {
                    self.log("error", &format!("return phone={}: {error}", shopper.phone));
                    return shopper;
                }
            }
        }
        match self.lend(&mut shopper).await {
            Ok(Some(_)) => {
                shopper.open = true;
                tokio::time::sleep(shopper.hold).await;
            }
            Ok(None) => {
                self.log("refused", &format!("open-rental phone={}", shopper.phone));
                shopper.open = true;
                return shopper;
            }
            Err(error) => {
                self.log("error", &format!("lend phone={}: {error}", shopper.phone));
                return shopper;
            }
        }
        match self.give_back(&shopper).await {
            Ok(_) => shopper.open = false,
            Err(error) => self.log("error", &format!("return phone={}: {error}", shopper.phone)),
        }
        shopper
    }
}

/// Drives one kiosk until `stop` turns true.
async fn drive(index: usize, edge: Edge, config: LoadConfig, mut stop: watch::Receiver<bool>) {
    let kiosk = match Kiosk::new(edge) {
        Ok(kiosk) => kiosk,
        Err(error) => {
            eprintln!("cannot build an HTTP client: {error}");
            return;
        }
    };
    let mut jitter = Jitter::new(config.seed.wrapping_add(index as u64 * 7919));
    let mut idle: VecDeque<Shopper> = (0..config.shoppers)
        .map(|i| Shopper {
            phone: demo_phone(index, i),
            token: None,
            open: true, // a cart may be out from an earlier run: settle it first
            hold: Duration::ZERO,
        })
        .collect();
    let (done_tx, mut done_rx) = mpsc::channel::<Shopper>(config.shoppers);
    let mut visits = JoinSet::new();
    let span = config.hold_max_s - config.hold_min_s + 1;
    let period_ms = (60_000.0 / config.lends_per_minute) as u64;
    kiosk.log(
        "start",
        &format!(
            "lends_per_minute={} shoppers={} hold_s={}..{}",
            config.lends_per_minute, config.shoppers, config.hold_min_s, config.hold_max_s
        ),
    );
    loop {
        // Sleep half to one and a half periods, so the kiosks do not tick together.
        let wait = Duration::from_millis(period_ms / 2 + jitter.below(period_ms.max(1)));
        tokio::select! {
            _ = stop.changed() => break,
            Some(shopper) = done_rx.recv() => { idle.push_back(shopper); continue; }
            Some(_) = visits.join_next() => continue,
            () = tokio::time::sleep(wait) => {}
        }
        let Some(mut shopper) = idle.pop_front() else {
            kiosk.log("busy", "every shopper is out; skipping a lend");
            continue;
        };
        shopper.hold = Duration::from_secs(config.hold_min_s + jitter.below(span));
        let kiosk = kiosk.clone();
        let done = done_tx.clone();
        visits.spawn(async move {
            let shopper = kiosk.visit(shopper).await;
            let _ = done.send(shopper).await;
        });
    }
    visits.shutdown().await;
}

/// Drives every kiosk of the demo until `stop` turns true.
pub async fn run(endpoints: &Endpoints, config: LoadConfig, stop: watch::Receiver<bool>) {
    let config = config.bounded();
    let mut kiosks = JoinSet::new();
    for (index, edge) in endpoints.edges.iter().enumerate() {
        kiosks.spawn(drive(index, edge.clone(), config, stop.clone()));
    }
    while kiosks.join_next().await.is_some() {}
}
