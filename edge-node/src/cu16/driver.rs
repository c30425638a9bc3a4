//! The lock-bus driver handle: typed operations (status, unlock, pulse, …) over one bus task.
//!
//! `Bus` is a cheap clone; every clone talks to the one task that owns the transport, so
//! only one request is ever in flight on the wire. Multi-step flows (unlock → wait →
//! confirm) run here, between requests, so the poller can use the bus while a lock settles.
//!
//! Architecture Invariant: every wait is bounded; bus input never panics; an unlock is never
//! resent blindly (the status is read first, and `AlreadyOpen` is reported instead).

mod actor;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

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
    /// Idle time kept between frames.
    pub frame_gap: Duration,
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
    /// Requests that may wait for the bus task.
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

/// One request handed to the bus task.
struct Exchange {
    request: Request,
    reply: oneshot::Sender<Result<Vec<Reply>, BusError>>,
}

/// State the bus task shares with its handles.
#[derive(Debug)]
struct Shared {
    config: BusConfig,
    /// Last known unlock pulse per board (for the unlock settle time).
    pulses: Mutex<[PulseTime; 10]>,
    /// "serial /dev/ttyUSB0 at 19200 baud", updated when the baud changes.
    line: Mutex<String>,
}

/// Handle to one lock bus. Clone it freely; drop every clone to stop the bus task.
#[derive(Debug, Clone)]
pub struct Bus {
    exchanges: mpsc::Sender<Exchange>,
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
        let shared = Arc::new(Shared {
            pulses: Mutex::new([PulseTime::DEFAULT; 10]),
            line: Mutex::new(transport.describe()),
            config,
        });
        tokio::spawn(actor::Actor::new(transport, Arc::clone(&shared)).run(inbox));
        Bus { exchanges, shared }
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

    /// Sends one request and returns the replies that answer it (retrying reads).
    pub async fn exchange(&self, request: Request) -> Result<Vec<Reply>, BusError> {
        let (reply, answer) = oneshot::channel();
        self.exchanges
            .send(Exchange { request, reply })
            .await
            .map_err(|_| BusError::Closed)?;
        answer.await.map_err(|_| BusError::Closed)?
    }

    /// Hooks and sensors of one board (0x30).
    pub async fn status(&self, board: BoardAddress) -> Result<BoardStatus, BusError> {
        let replies = self.exchange(Request::Status { board }).await?;
        replies
            .iter()
            .find_map(|reply| self.board_status(reply))
            .ok_or_else(|| wrong_reply(board))
    }

    /// Hooks and sensors of every board that answers the bus-wide 0x32, in address order.
    pub async fn status_all(&self) -> Result<Vec<BoardStatus>, BusError> {
        let replies = self.exchange(Request::StatusAll).await?;
        Ok(replies
            .iter()
            .filter_map(|reply| self.board_status(reply))
            .collect())
    }

    /// Unlocks one lock and reports what the hook did: 0x30 → 0x31 → wait → 0x30.
    pub async fn unlock(&self, board: BoardAddress, lock: Lock) -> Result<UnlockOutcome, BusError> {
        let before = self.status(board).await?;
        if !before.is_latched(lock) {
            return Ok(UnlockOutcome::AlreadyOpen);
        }
        self.exchange(Request::Unlock { board, lock }).await?;
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

    /// After an unlock: whether the hook now reads open.
    async fn reads_open(&self, board: BoardAddress, lock: Lock) -> Result<bool, BusError> {
        match self.status(board).await {
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

    fn board_status(&self, reply: &Reply) -> Option<BoardStatus> {
        match *reply {
            Reply::Status {
                board,
                source: StatusSource::Board | StatusSource::Bus,
                hooks,
                present,
            } => {
                let polarity = self.shared.config.polarity_of(board);
                Some(BoardStatus {
                    board,
                    latched: polarity.latched(hooks),
                    present,
                })
            }
            _ => None,
        }
    }

    fn known_pulse(&self, board: BoardAddress) -> PulseTime {
        self.shared
            .pulses
            .lock()
            .map(|pulses| pulses[usize::from(board.get())])
            .unwrap_or(PulseTime::DEFAULT)
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
