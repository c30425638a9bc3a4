//! The lock-bus driver handle: typed operations (status, unlock, pulse, …) over one bus task.
//!
//! `Bus` is a cheap clone; every clone talks to the one task that owns the transport, so
//! only one request is ever in flight on the wire. Requests wait in two bounded lanes: the
//! urgent lane (an unlock and the reads that confirm it: a shopper is waiting) is always served
//! before the ordinary lane (the poller's bus-wide reads, diagnostics), but never interrupts a
//! request already on the wire. Multi-step flows (unlock → wait → confirm) run here, between
//! requests, so the poller can use the bus while a lock settles.
//!
//! The handle remembers each board's latest status reading and when it was asked for
//! (`Bus::sensed`), and the poller's interval (`Bus::poll_interval`), so a caller that knows a
//! hook is latched from a fresh poll may unlock without reading it again
//! (`Bus::unlock_with(.., PreRead::Skip)`); a reading asked for before the board's last unlock
//! is never kept.
//!
//! Architecture Invariant: every wait is bounded; bus input never panics; an unlock is never
//! resent blindly (the hook is known latched, from a fresh reading or a read just before, and
//! `AlreadyOpen` is reported instead of pulsing an open lock that was read).

mod actor;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::codec::{Reply, Request, StatusSource};
use super::transport::{BusUri, SerialTransport, TcpTransport, Transport};
use super::{Baud, BoardAddress, BoardStatus, HookPolarity, Lock, PulseTime, Target, UnlockDelay};

/// Timing, retries and per-board settings of one bus. `Default` suits real boards.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// How long one board gets to answer a request.
    pub reply_timeout: Duration,
    /// Extra tries for a read or a setting that got no answer (unlocks are never retried).
    pub read_retries: u8,
    /// Bus-wide requests: stop collecting after this much silence following a reply.
    pub quiet_gap: Duration,
    /// Bus-wide requests: stop collecting after this long whatever happens.
    pub bus_collect_max: Duration,
    /// Silence kept after a setting write while the board saves it (vendor: > 500 ms).
    pub setting_guard: Duration,
    /// Idle time kept between frames on a serial line the host drives itself (USB RS485
    /// adapter, PTY): counted from each frame written, answered or not.
    pub frame_gap: Duration,
    /// Idle time kept after a frame no board answers (an unlock) on a TCP serial-server bridge
    /// (KR-BU): long enough for the bridge to put it on the line at the slowest speed before
    /// the next frame arrives. After an answered frame a bridge needs none (see
    /// `transport::Pacing`).
    pub bridge_frame_gap: Duration,
    /// Shortest wait between an unlock and the status read that confirms it.
    pub unlock_settle_min: Duration,
    /// Margin over the pulse length before an unlock is declared "did not open".
    pub unlock_confirm_margin: Duration,
    /// Boards expected on the bus; bus-wide reads stop as soon as all have answered.
    pub boards: Vec<BoardAddress>,
    /// Hook polarity of each board, indexed by address.
    pub polarity: [HookPolarity; 10],
    /// On a serial line with no fixed baud: probe 19200 → 115200 → 9600 when nothing answers.
    pub probe_baud: bool,
    /// How long to wait for a TCP bridge to accept the connection.
    pub connect_timeout: Duration,
    /// Requests that may wait for the bus task in the ordinary lane.
    pub queue_max: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            reply_timeout: Duration::from_secs(1),
            read_retries: 2,
            quiet_gap: Duration::from_millis(300),
            bus_collect_max: Duration::from_millis(1500),
            setting_guard: Duration::from_millis(500),
            frame_gap: Duration::from_millis(20),
            bridge_frame_gap: Duration::from_millis(10),
            unlock_settle_min: Duration::from_millis(200),
            unlock_confirm_margin: Duration::from_millis(200),
            boards: Vec::new(),
            polarity: [HookPolarity::LatchedHigh; 10],
            probe_baud: true,
            connect_timeout: Duration::from_secs(5),
            queue_max: 16,
        }
    }
}

impl BusConfig {
    /// The polarity configured for `board`.
    pub fn polarity_of(&self, board: BoardAddress) -> HookPolarity {
        self.polarity[usize::from(board.get())]
    }
}

/// Requests that may wait in the urgent lane (unlocks and their confirming reads). Each lend
/// has at most one there at a time, so this bounds concurrent lends, not a backlog.
pub const URGENT_QUEUE_MAX: usize = 8;

/// Whether an unlock reads the hook first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PreRead {
    /// Read the board first; an open hook is reported `AlreadyOpen` and not pulsed.
    Read,
    /// The caller knows the hook is latched (a fresh reading it trusts): pulse at once.
    Skip,
}

/// A board's latest status reading and when it was asked for (the reading is at least this
/// recent; the request may have waited for the bus after that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sensed {
    /// What the board answered.
    pub status: BoardStatus,
    /// When the read was asked for.
    pub asked_at: Instant,
}

/// What an unlock did, as the board reports it afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnlockOutcome {
    /// The hook was latched and now reads open.
    Opened,
    /// The hook still reads latched after the pulse and a margin: a jammed lock, or a cart
    /// pushing on the latch. Nothing was resent.
    DidNotOpen,
    /// The hook already read open, so no pulse was sent.
    AlreadyOpen,
}

/// Firmware and hardware versions of one board (`F5 B6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BoardVersion {
    /// The board.
    pub board: BoardAddress,
    /// Firmware version.
    pub software: u8,
    /// Hardware version.
    pub hardware: u8,
}

/// What went wrong on the lock bus, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The port or bridge could not be opened.
    #[error(
        "cannot open bus {bus}: {source}; check the device path or address, that nothing else \
         holds the port, and permissions (the dialout group)"
    )]
    Open { bus: String, source: io::Error },
    /// Reading or writing failed: the adapter went away or the bridge closed.
    #[error(
        "i/o error on {line}: {source}; check that the adapter is plugged in or the bridge is up"
    )]
    Io { line: String, source: io::Error },
    /// One board stayed silent through every try.
    #[error(
        "{board} did not answer {request} after {attempts} tries on {line}; check the RS485 \
         wiring (A/B), the board's power and its DIP address"
    )]
    NoReply {
        board: BoardAddress,
        request: &'static str,
        attempts: u8,
        line: String,
    },
    /// No board answered a bus-wide request.
    #[error(
        "no board answered {request} after {attempts} tries on {line}; check power, the RS485 \
         wiring (A/B) and the line speed"
    )]
    NoBoards {
        request: &'static str,
        attempts: u8,
        line: String,
    },
    /// Unlock-all got no reply; it is never retried because locks may already be opening.
    #[error(
        "{board} did not answer unlock-all on {line}; some locks may be opening: read the \
         status before trying again"
    )]
    UnlockAllUnanswered { board: BoardAddress, line: String },
    /// The unlock was sent but the status read that should confirm it failed.
    #[error(
        "unlock of {board} {lock} was sent but could not be confirmed: {source}; the lock may \
         be open, look before unlocking again"
    )]
    UnlockUnconfirmed {
        board: BoardAddress,
        lock: Lock,
        source: Box<BusError>,
    },
    /// A board sent a well-formed frame with a value outside the protocol.
    #[error("{board} sent {what}; the board may run unsupported firmware")]
    Unexpected { board: BoardAddress, what: String },
    /// The bus task has stopped (its transport failed for good, or the runtime shut down).
    #[error("the lock bus task has stopped; reopen the bus")]
    Closed,
}

/// What the bus task is asked to do in one turn (nothing else goes on the wire meanwhile).
#[derive(Debug, Clone, Copy)]
enum Work {
    /// One request and the replies that answer it.
    Request(Request),
    /// An unlock frame, after reading the hook first when `read_first`.
    Unlock {
        board: BoardAddress,
        lock: Lock,
        read_first: bool,
    },
}

/// What one turn of the bus task did.
#[derive(Debug)]
enum Done {
    /// The replies to a `Work::Request`.
    Replies(Vec<Reply>),
    /// The unlock frame was written.
    UnlockWritten,
    /// The read before the unlock found the hook open; nothing was pulsed.
    AlreadyOpen,
}

/// One piece of work handed to the bus task.
struct Exchange {
    work: Work,
    reply: oneshot::Sender<Result<Done, BusError>>,
}

/// What the handles remember of one board.
#[derive(Debug, Clone, Copy, Default)]
struct BoardMemory {
    /// The latest reading kept.
    sensed: Option<Sensed>,
    /// When an unlock of this board was last asked for: older readings are not kept.
    unlock_asked_at: Option<Instant>,
}

/// State the bus task shares with its handles.
#[derive(Debug)]
struct Shared {
    config: BusConfig,
    /// Last known unlock pulse per board (for the unlock settle time).
    pulses: Mutex<[PulseTime; 10]>,
    /// "serial /dev/ttyUSB0 at 19200 baud", updated when the baud changes.
    line: Mutex<String>,
    /// Latest readings per board, indexed by address.
    boards: Mutex<[BoardMemory; 10]>,
    /// The interval of the poller reading this bus, once one runs.
    poll_interval: Mutex<Option<Duration>>,
}

/// Handle to one lock bus. Clone it freely; drop every clone to stop the bus task.
#[derive(Debug, Clone)]
pub struct Bus {
    exchanges: mpsc::Sender<Exchange>,
    urgent: mpsc::Sender<Exchange>,
    shared: Arc<Shared>,
}

impl Bus {
    /// Opens the bus at `uri` and starts its task.
    pub async fn open(uri: &BusUri, mut config: BusConfig) -> Result<Bus, BusError> {
        let open_error = |source| BusError::Open {
            bus: uri.to_string(),
            source,
        };
        match uri {
            BusUri::Serial { path, baud } => {
                config.probe_baud &= baud.is_none();
                let baud = baud.unwrap_or(Baud::B19200);
                let transport = SerialTransport::open(path.clone(), baud).map_err(open_error)?;
                Ok(Bus::spawn(transport, config))
            }
            BusUri::Tcp { host, port } => {
                let transport = TcpTransport::connect(host, *port, config.connect_timeout)
                    .await
                    .map_err(open_error)?;
                Ok(Bus::spawn(transport, config))
            }
        }
    }

    /// Starts a bus task over any transport (tests and simulators pass their own).
    pub fn spawn<T: Transport>(transport: T, config: BusConfig) -> Bus {
        let (exchanges, inbox) = mpsc::channel(config.queue_max.max(1));
        let (urgent, urgent_inbox) = mpsc::channel(URGENT_QUEUE_MAX);
        let shared = Arc::new(Shared {
            pulses: Mutex::new([PulseTime::DEFAULT; 10]),
            line: Mutex::new(transport.describe()),
            boards: Mutex::new([BoardMemory::default(); 10]),
            poll_interval: Mutex::new(None),
            config,
        });
        let lanes = actor::Lanes {
            urgent: urgent_inbox,
            ordinary: inbox,
        };
        tokio::spawn(actor::Actor::new(transport, Arc::clone(&shared)).run(lanes));
        Bus {
            exchanges,
            urgent,
            shared,
        }
    }

    /// The configuration the bus runs with.
    pub fn config(&self) -> &BusConfig {
        &self.shared.config
    }

    /// The line as it is now, e.g. "serial /dev/ttyUSB0 at 19200 baud".
    pub fn line(&self) -> String {
        self.shared
            .line
            .lock()
            .map(|line| line.clone())
            .unwrap_or_default()
    }

    /// Sends one request in the ordinary lane and returns the replies that answer it
    /// (retrying reads).
    pub async fn exchange(&self, request: Request) -> Result<Vec<Reply>, BusError> {
        self.replies(&self.exchanges, request).await
    }

    /// Hands `work` to the bus task through `lane` and waits for it to be done.
    async fn submit(&self, lane: &mpsc::Sender<Exchange>, work: Work) -> Result<Done, BusError> {
        let (reply, answer) = oneshot::channel();
        lane.send(Exchange { work, reply })
            .await
            .map_err(|_| BusError::Closed)?;
        answer.await.map_err(|_| BusError::Closed)?
    }

    async fn replies(
        &self,
        lane: &mpsc::Sender<Exchange>,
        request: Request,
    ) -> Result<Vec<Reply>, BusError> {
        match self.submit(lane, Work::Request(request)).await? {
            Done::Replies(replies) => Ok(replies),
            Done::UnlockWritten | Done::AlreadyOpen => Ok(Vec::new()),
        }
    }

    /// Requests waiting for the bus task in both lanes (not counting the one on the wire).
    pub fn queued(&self) -> usize {
        let waiting = |lane: &mpsc::Sender<Exchange>| lane.max_capacity() - lane.capacity();
        waiting(&self.exchanges) + waiting(&self.urgent)
    }

    /// Hooks and sensors of one board (0x30).
    pub async fn status(&self, board: BoardAddress) -> Result<BoardStatus, BusError> {
        self.status_in(&self.exchanges, board).await
    }

    async fn status_in(
        &self,
        lane: &mpsc::Sender<Exchange>,
        board: BoardAddress,
    ) -> Result<BoardStatus, BusError> {
        let asked_at = Instant::now();
        let replies = self.replies(lane, Request::Status { board }).await?;
        let status = replies
            .iter()
            .find_map(|reply| self.board_status(reply))
            .ok_or_else(|| wrong_reply(board))?;
        self.remember(status, asked_at);
        Ok(status)
    }

    /// Hooks and sensors of every board that answers the bus-wide 0x32, in address order.
    pub async fn status_all(&self) -> Result<Vec<BoardStatus>, BusError> {
        let asked_at = Instant::now();
        let replies = self.exchange(Request::StatusAll).await?;
        let statuses: Vec<BoardStatus> = replies
            .iter()
            .filter_map(|reply| self.board_status(reply))
            .collect();
        for status in &statuses {
            self.remember(*status, asked_at);
        }
        Ok(statuses)
    }

    /// The latest status reading of `board` kept since its last unlock, if any.
    pub fn sensed(&self, board: BoardAddress) -> Option<Sensed> {
        self.shared
            .boards
            .lock()
            .ok()
            .and_then(|boards| boards[usize::from(board.get())].sensed)
    }

    /// The interval of the poller reading this bus, once one has started.
    pub fn poll_interval(&self) -> Option<Duration> {
        self.shared
            .poll_interval
            .lock()
            .ok()
            .and_then(|interval| *interval)
    }

    /// Noted by the poller when it starts reading this bus.
    pub(crate) fn note_poll_interval(&self, interval: Duration) {
        if let Ok(mut slot) = self.shared.poll_interval.lock() {
            *slot = Some(interval);
        }
    }

    /// Keeps `status` as the board's latest reading unless a newer one, or an unlock asked for
    /// after this read was, is already known.
    fn remember(&self, status: BoardStatus, asked_at: Instant) {
        let Ok(mut boards) = self.shared.boards.lock() else {
            return;
        };
        let memory = &mut boards[usize::from(status.board.get())];
        let older_than_unlock = memory.unlock_asked_at.is_some_and(|at| asked_at < at);
        let older_than_kept = memory.sensed.is_some_and(|kept| asked_at < kept.asked_at);
        if !older_than_unlock && !older_than_kept {
            memory.sensed = Some(Sensed { status, asked_at });
        }
    }

    /// An unlock of `board` is about to be asked for: its readings so far are outdated.
    fn forget_readings(&self, board: BoardAddress) {
        if let Ok(mut boards) = self.shared.boards.lock() {
            let memory = &mut boards[usize::from(board.get())];
            memory.sensed = None;
            memory.unlock_asked_at = Some(Instant::now());
        }
    }

    /// Unlocks one lock and reports what the hook did: 0x30 → 0x31 → wait → 0x30.
    pub async fn unlock(&self, board: BoardAddress, lock: Lock) -> Result<UnlockOutcome, BusError> {
        self.unlock_with(board, lock, PreRead::Read).await
    }

    /// Unlocks one lock in the urgent lane and reports what the hook did. With
    /// `PreRead::Read` the hook is read first (an open one is not pulsed); with `PreRead::Skip`
    /// the caller vouches that it is latched. The read (if any) and the unlock frame go out in
    /// one turn of the bus task, nothing between them; then the hook is read until it opens
    /// (after `unlock_settle_min` or half the pulse, and once more after the pulse and
    /// `unlock_confirm_margin`).
    pub async fn unlock_with(
        &self,
        board: BoardAddress,
        lock: Lock,
        pre_read: PreRead,
    ) -> Result<UnlockOutcome, BusError> {
        self.forget_readings(board);
        let work = Work::Unlock {
            board,
            lock,
            read_first: pre_read == PreRead::Read,
        };
        match self.submit(&self.urgent, work).await? {
            Done::AlreadyOpen => return Ok(UnlockOutcome::AlreadyOpen),
            Done::UnlockWritten | Done::Replies(_) => {}
        }
        let pulse = self.known_pulse(board).duration();
        let config = &self.shared.config;
        let settle = config.unlock_settle_min.max(pulse / 2);
        let rest = (pulse + config.unlock_confirm_margin).saturating_sub(settle);
        for wait in [settle, rest] {
            tokio::time::sleep(wait).await;
            if self.reads_open(board, lock).await? {
                return Ok(UnlockOutcome::Opened);
            }
        }
        Ok(UnlockOutcome::DidNotOpen)
    }

    /// After an unlock: whether the hook now reads open (an urgent read).
    async fn reads_open(&self, board: BoardAddress, lock: Lock) -> Result<bool, BusError> {
        match self.status_in(&self.urgent, board).await {
            Ok(status) => Ok(!status.is_latched(lock)),
            Err(source) => Err(BusError::UnlockUnconfirmed {
                board,
                lock,
                source: Box::new(source),
            }),
        }
    }

    /// Unlocks all 16 locks of a board one by one (0x33); returns the state before.
    pub async fn unlock_all(&self, board: BoardAddress) -> Result<BoardStatus, BusError> {
        self.forget_readings(board);
        let replies = self.exchange(Request::UnlockAll { board }).await?;
        replies
            .iter()
            .find_map(|reply| self.board_status(reply))
            .ok_or_else(|| wrong_reply(board))
    }

    /// The unlock pulse of one board (0x37 query).
    pub async fn pulse(&self, board: BoardAddress) -> Result<PulseTime, BusError> {
        let target = Target::Board(board);
        let replies = self.exchange(Request::QueryPulse { target }).await?;
        let pulses = pulses_of(&replies)?;
        pulses
            .first()
            .map(|(_, pulse)| *pulse)
            .ok_or_else(|| wrong_reply(board))
    }

    /// Sets the unlock pulse (0x37 set); returns the boards that confirmed and their pulse.
    pub async fn set_pulse(
        &self,
        target: Target,
        pulse: PulseTime,
    ) -> Result<Vec<(BoardAddress, PulseTime)>, BusError> {
        pulses_of(&self.exchange(Request::SetPulse { target, pulse }).await?)
    }

    /// Sets the delayed unlock (0x39); returns the boards that confirmed. Cart posts want 0.
    pub async fn set_unlock_delay(
        &self,
        target: Target,
        delay: UnlockDelay,
    ) -> Result<Vec<BoardAddress>, BusError> {
        let replies = self
            .exchange(Request::SetUnlockDelay { target, delay })
            .await?;
        Ok(replies.iter().map(Reply::board).collect())
    }

    /// Sets the line speed (0x40); returns the boards that confirmed. For `AllBoards` the
    /// driver follows to the new speed; after a single board's change that board is only
    /// reachable once the whole bus runs at its speed.
    pub async fn set_baud(
        &self,
        target: Target,
        baud: Baud,
    ) -> Result<Vec<BoardAddress>, BusError> {
        let replies = self.exchange(Request::SetBaud { target, baud }).await?;
        Ok(replies.iter().map(Reply::board).collect())
    }

    /// Firmware versions (`F5 B6`). Older boards may not answer outside upgrade mode.
    pub async fn version(&self, target: Target) -> Result<Vec<BoardVersion>, BusError> {
        let replies = self.exchange(Request::Version { target }).await?;
        Ok(replies
            .iter()
            .filter_map(|reply| match *reply {
                Reply::Version {
                    board,
                    software,
                    hardware,
                } => Some(BoardVersion {
                    board,
                    software,
                    hardware,
                }),
                _ => None,
            })
            .collect())
    }

    /// The status a reply carries, with this board's hook polarity applied.
    fn board_status(&self, reply: &Reply) -> Option<BoardStatus> {
        board_status(&self.shared.config, reply)
    }

    fn known_pulse(&self, board: BoardAddress) -> PulseTime {
        self.shared
            .pulses
            .lock()
            .map(|pulses| pulses[usize::from(board.get())])
            .unwrap_or(PulseTime::DEFAULT)
    }
}

/// The status a reply carries, with the board's configured hook polarity applied.
pub(super) fn board_status(config: &BusConfig, reply: &Reply) -> Option<BoardStatus> {
    match *reply {
        Reply::Status {
            board,
            source: StatusSource::Board | StatusSource::Bus,
            hooks,
            present,
        } => Some(BoardStatus {
            board,
            latched: config.polarity_of(board).latched(hooks),
            present,
        }),
        _ => None,
    }
}

fn wrong_reply(board: BoardAddress) -> BusError {
    BusError::Unexpected {
        board,
        what: "a reply of the wrong kind".into(),
    }
}

fn pulses_of(replies: &[Reply]) -> Result<Vec<(BoardAddress, PulseTime)>, BusError> {
    replies
        .iter()
        .filter_map(|reply| match *reply {
            Reply::Pulse {
                board, pulse_units, ..
            } => Some((board, pulse_units)),
            _ => None,
        })
        .map(|(board, units)| {
            PulseTime::from_units(units)
                .map(|pulse| (board, pulse))
                .map_err(|_| BusError::Unexpected {
                    board,
                    what: format!("pulse {units}×10 ms"),
                })
        })
        .collect()
}
