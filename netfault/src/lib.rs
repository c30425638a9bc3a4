//! A UDP fault proxy: forwards datagrams between clients and one upstream, passing, dropping
//! or degrading them (loss, duplication, delay, jitter) on command.
//!
//! `NetFault::start` binds a listening socket; each client source address gets its own
//! upstream socket (a *flow*), so the upstream sees one peer per client, as through a NAT. The
//! flow table is bounded (`FLOWS_MAX`, the least recently active flow is evicted) and a flow
//! idle for `FLOW_IDLE` is closed. Every random choice comes from one RNG seeded by the caller,
//! so a lossy run is repeatable for the same order of datagrams. Delayed datagrams are bounded
//! too (`DELAYED_MAX`); one over the bound is dropped and counted.
//!
//! `control::router` is the HTTP control API (`POST /block`, `POST /heal`, `POST /mode`,
//! `GET /state`) served by the `cartwise-netfault` binary.

pub mod control;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Most client flows kept at once; a new client evicts the least recently active one.
pub const FLOWS_MAX: usize = 1024;
/// A flow with no datagram either way for this long is closed.
pub const FLOW_IDLE: Duration = Duration::from_secs(300);
/// Most datagrams held for a delayed send at once; one more is dropped.
pub const DELAYED_MAX: usize = 4096;
/// Largest datagram forwarded (the UDP maximum).
pub const DATAGRAM_MAX: usize = 65_535;

/// What the proxy does with each datagram, both directions alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Mode {
    /// Forward every datagram at once.
    Pass,
    /// Drop every datagram, both ways.
    Blackhole,
    /// Drop with probability `loss`, send twice with probability `duplicate`, and hold each
    /// datagram sent for `delay_ms` plus a uniform `0..=jitter_ms` (so datagrams reorder when
    /// jitter is set).
    Lossy {
        #[serde(default)]
        loss: f64,
        #[serde(default)]
        duplicate: f64,
        #[serde(default)]
        delay_ms: u64,
        #[serde(default)]
        jitter_ms: u64,
    },
}

impl Mode {
    /// Checks the probabilities are within 0..=1.
    pub fn validate(&self) -> Result<(), ModeError> {
        if let Mode::Lossy {
            loss, duplicate, ..
        } = self
        {
            for (name, p) in [("loss", *loss), ("duplicate", *duplicate)] {
                if !(0.0..=1.0).contains(&p) {
                    return Err(ModeError::Probability { name, value: p });
                }
            }
        }
        Ok(())
    }
}

/// A mode the proxy refuses.
#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    /// A probability outside 0..=1.
    #[error("{name} is {value}; give a probability between 0 and 1")]
    Probability { name: &'static str, value: f64 },
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionStats {
    /// Datagrams sent on (a duplicate counts once more).
    pub passed: u64,
    /// Datagrams dropped (black hole, loss, or no room to delay).
    pub dropped: u64,
    /// Extra copies sent.
    pub duplicated: u64,
}

/// A snapshot of the proxy's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub mode: Mode,
    /// Client → upstream.
    pub to_upstream: DirectionStats,
    /// Upstream → client.
    pub to_client: DirectionStats,
    /// Client flows open now.
    pub flows: usize,
}

#[derive(Default)]
struct Counters {
    passed: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            passed: self.passed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
        }
    }
}

struct Shared {
    mode: Mutex<Mode>,
    rng: Mutex<StdRng>,
    to_upstream: Counters,
    to_client: Counters,
    flows: AtomicU64,
    delayed: Arc<Semaphore>,
}

/// What to do with one datagram.
enum Verdict {
    Drop,
    /// Send `copies` (1 or 2) after `delay`.
    Send {
        copies: u8,
        delay: Duration,
    },
}

impl Shared {
    fn mode(&self) -> Mode {
        self.mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn verdict(&self) -> Verdict {
        match self.mode() {
            Mode::Pass => Verdict::Send {
                copies: 1,
                delay: Duration::ZERO,
            },
            Mode::Blackhole => Verdict::Drop,
            Mode::Lossy {
                loss,
                duplicate,
                delay_ms,
                jitter_ms,
            } => {
                let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
                if rng.random_bool(loss.clamp(0.0, 1.0)) {
                    return Verdict::Drop;
                }
                let copies = if rng.random_bool(duplicate.clamp(0.0, 1.0)) {
                    2
                } else {
                    1
                };
                let jitter = if jitter_ms == 0 {
                    0
                } else {
                    rng.random_range(0..=jitter_ms)
                };
                Verdict::Send {
                    copies,
                    delay: Duration::from_millis(delay_ms.saturating_add(jitter)),
                }
            }
        }
    }

    /// Applies the mode to one datagram and sends it (now or later) with `send`.
    async fn forward(&self, bytes: &[u8], direction: Direction, send: Sender) {
        let counters = match direction {
            Direction::ToUpstream => &self.to_upstream,
            Direction::ToClient => &self.to_client,
        };
        match self.verdict() {
            Verdict::Drop => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Send { copies, delay } if delay.is_zero() => {
                for _ in 0..copies {
                    send.send(bytes).await;
                }
                counters
                    .passed
                    .fetch_add(u64::from(copies), Ordering::Relaxed);
                counters
                    .duplicated
                    .fetch_add(u64::from(copies - 1), Ordering::Relaxed);
            }
            Verdict::Send { copies, delay } => {
                let Ok(permit) = Arc::clone(&self.delayed).try_acquire_owned() else {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                counters
                    .passed
                    .fetch_add(u64::from(copies), Ordering::Relaxed);
                counters
                    .duplicated
                    .fetch_add(u64::from(copies - 1), Ordering::Relaxed);
                let bytes = bytes.to_vec();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    for _ in 0..copies {
                        send.send(&bytes).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// Which way a datagram travels.
#[derive(Clone, Copy)]
enum Direction {
    ToUpstream,
    ToClient,
}

/// Where a forwarded datagram goes.
#[derive(Clone)]
enum Sender {
    /// The flow's connected upstream socket.
    Upstream(Arc<UdpSocket>),
    /// The listening socket, to one client.
    Client(Arc<UdpSocket>, SocketAddr),
}

impl Sender {
    async fn send(&self, bytes: &[u8]) {
        // UDP: a send that fails (buffer full, no route) is a lost datagram, which is what a
        // network does; the peers' own retransmission copes.
        let result = match self {
            Sender::Upstream(socket) => socket.send(bytes).await,
            Sender::Client(socket, to) => socket.send_to(bytes, *to).await,
        };
        if let Err(error) = result {
            tracing::trace!(%error, "datagram not sent");
        }
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Flow {
    upstream: Arc<UdpSocket>,
    last_seen: Arc<Mutex<Instant>>,
    _task: AbortOnDrop,
}

/// The proxy. Start it with [`NetFault::start`].
#[derive(Debug)]
pub struct NetFault;

impl NetFault {
    /// Binds `listen`, forwards to `upstream`, and starts in [`Mode::Pass`]. `seed` seeds the
    /// RNG every lossy decision is drawn from. The proxy runs until the handle is dropped.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        seed: u64,
    ) -> Result<NetFaultHandle, io::Error> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let local_addr = socket.local_addr()?;
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            to_upstream: Counters::default(),
            to_client: Counters::default(),
            flows: AtomicU64::new(0),
            delayed: Arc::new(Semaphore::new(DELAYED_MAX)),
        });
        let task = tokio::spawn(run(socket, upstream, Arc::clone(&shared)));
        Ok(NetFaultHandle {
            local_addr,
            upstream,
            shared,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }
}

/// A running proxy; cheap to clone. The proxy stops when the last clone is dropped.
#[derive(Clone)]
pub struct NetFaultHandle {
    local_addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    _task: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for NetFaultHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetFaultHandle")
            .field("local_addr", &self.local_addr)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl NetFaultHandle {
    /// Where clients send: the bound listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where datagrams are forwarded.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Switches the mode for every datagram from now on (already delayed ones still go).
    pub fn set_mode(&self, mode: Mode) -> Result<(), ModeError> {
        mode.validate()?;
        *self
            .shared
            .mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = mode;
        Ok(())
    }

    /// Drops everything both ways (`Mode::Blackhole`).
    pub fn block(&self) {
        *self
            .shared
            .mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Mode::Blackhole;
    }

    /// Forwards everything again (`Mode::Pass`).
    pub fn heal(&self) {
        *self
            .shared
            .mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Mode::Pass;
    }

    /// The mode and the counters now.
    pub fn stats(&self) -> Stats {
        Stats {
            mode: self.shared.mode(),
            to_upstream: self.shared.to_upstream.snapshot(),
            to_client: self.shared.to_client.snapshot(),
            flows: usize::try_from(self.shared.flows.load(Ordering::Relaxed)).unwrap_or(usize::MAX),
        }
    }
}

async fn run(socket: Arc<UdpSocket>, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (len, client) = match received {
                    Ok(got) => got,
                    Err(error) => {
                        // ICMP errors surface here on some platforms; the socket stays usable.
                        tracing::debug!(%error, "listening socket receive failed");
                        continue;
                    }
                };
                let flow = match flows.get(&client) {
                    Some(flow) => flow,
                    None => {
                        if flows.len() >= FLOWS_MAX {
                            evict_oldest(&mut flows);
                        }
                        match open_flow(&socket, client, upstream, &shared).await {
                            Ok(flow) => flows.entry(client).or_insert(flow),
                            Err(error) => {
                                tracing::warn!(%error, %client, "cannot open an upstream socket; datagram dropped");
                                shared.to_upstream.dropped.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                    }
                };
                *flow.last_seen.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
                shared.forward(&buf[..len], Direction::ToUpstream, Sender::Upstream(Arc::clone(&flow.upstream))).await;
            }
            _ = sweep.tick() => {
                flows.retain(|_, flow| {
                    flow.last_seen.lock().unwrap_or_else(PoisonError::into_inner).elapsed() < FLOW_IDLE
                });
            }
        }
        shared.flows.store(flows.len() as u64, Ordering::Relaxed);
    }
}

fn evict_oldest(flows: &mut HashMap<SocketAddr, Flow>) {
    let oldest = flows
        .iter()
        .min_by_key(|(_, flow)| {
            *flow
                .last_seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        })
        .map(|(addr, _)| *addr);
    if let Some(addr) = oldest {
        flows.remove(&addr);
    }
}

async fn open_flow(
    listen: &Arc<UdpSocket>,
    client: SocketAddr,
    upstream: SocketAddr,
    shared: &Arc<Shared>,
) -> io::Result<Flow> {
    let any: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let up = Arc::new(UdpSocket::bind(any).await?);
    up.connect(upstream).await?;
    let last_seen = Arc::new(Mutex::new(Instant::now()));
    let task = tokio::spawn(back_to_client(
        Arc::clone(&up),
        Arc::clone(listen),
        client,
        Arc::clone(&last_seen),
        Arc::clone(shared),
    ));
    Ok(Flow {
        upstream: up,
        last_seen,
        _task: AbortOnDrop(task),
    })
}

/// Forwards what the upstream sends on one flow back to its client.
async fn back_to_client(
    up: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    last_seen: Arc<Mutex<Instant>>,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let len = match up.recv(&mut buf).await {
            Ok(len) => len,
            Err(error) => {
                // A refused port (ICMP) while the upstream restarts: keep the flow.
                tracing::debug!(%error, "upstream socket receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        *last_seen.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        shared
            .forward(
                &buf[..len],
                Direction::ToClient,
                Sender::Client(Arc::clone(&listen), client),
            )
            .await;
    }
}
