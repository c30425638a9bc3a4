//! The simulator's pure core: a bus of CU16 boards as a state machine.
//!
//! Requests and control actions go in with the time (`now`, since the simulator started);
//! reply bytes (each with a delay) come out. Timed effects (a delayed unlock, unlock-all
//! opening locks one by one, a shopper taking a cart) are scheduled and applied by the next
//! call whose `now` has passed them. No I/O, no clock, no randomness.

use std::time::Duration;

use crate::cu16::codec::{Decoder, Frame, Reply, ReplyFrame, Request, StatusSource};
use crate::cu16::{
    Baud, BoardAddress, HookPolarity, Lock, LockBits, PulseTime, Target, UnlockDelay,
};

/// Timed effects waiting to happen, at most.
pub const SCHEDULE_MAX: usize = 1024;

/// One simulated board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimBoard {
    /// DIP address.
    pub address: BoardAddress,
    /// Locks whose hook is latched.
    pub latched: LockBits,
    /// Locks with a cart in front of the sensor.
    pub present: LockBits,
    /// Unlock pulse (0x37).
    pub pulse: PulseTime,
    /// Delayed unlock (0x39).
    pub delay: UnlockDelay,
    /// Line speed the board listens at (0x40).
    pub baud: Baud,
    /// How the board's micro-switches report a latched hook.
    pub polarity: HookPolarity,
}

impl SimBoard {
    fn new(address: BoardAddress, baud: Baud) -> Self {
        Self {
            address,
            latched: LockBits::ALL,
            present: LockBits::ALL,
            pulse: PulseTime::DEFAULT,
            delay: UnlockDelay::NONE,
            baud,
            polarity: HookPolarity::LatchedHigh,
        }
    }

    fn hooks_wire(&self) -> LockBits {
        self.polarity.wire(self.latched)
    }
}

/// A fault to inject, as the control API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The board (or every board) hears requests but never answers.
    DropReply { board: Option<BoardAddress> },
    /// Replies go out with a wrong checksum.
    CorruptSum { board: Option<BoardAddress> },
    /// The lock does not open when pulsed.
    Jam { board: BoardAddress, lock: Lock },
    /// The line echoes every request back before the replies (a USB adapter quirk).
    Echo,
    /// Replies go out `delay` late.
    Slow {
        board: Option<BoardAddress>,
        delay: Duration,
    },
}

/// Faults in force, per board.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Faults {
    drop_reply: [bool; 10],
    corrupt_sum: [bool; 10],
    jammed: [LockBits; 10],
    slow: [Option<Duration>; 10],
    echo: bool,
}

/// A control action the simulated world refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// No such board on this simulated bus.
    #[error("there is no board {0} on this bus")]
    NoBoard(u8),
    /// Only an open post releases its cart.
    #[error("board {board} lock {lock} is latched: unlock it before taking the cart")]
    Latched { board: u8, lock: u8 },
    /// Nothing to take.
    #[error("there is no cart at board {board} lock {lock}")]
    NoCart { board: u8, lock: u8 },
    /// Something is already docked.
    #[error("a cart is already docked at board {board} lock {lock}")]
    Occupied { board: u8, lock: u8 },
}

/// Bytes to write, after waiting `delay` since the previous write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Wait this long first.
    pub delay: Duration,
    /// The bytes.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Open,
    TakeCart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scheduled {
    at: Duration,
    board: BoardAddress,
    lock: Lock,
    effect: Effect,
}

/// A bus of simulated boards at addresses 0..N-1.
#[derive(Debug, Clone)]
pub struct SimBus {
    boards: Vec<SimBoard>,
    faults: Faults,
    auto_take: Option<Duration>,
    scheduled: Vec<Scheduled>,
}

impl SimBus {
    /// `count` boards (1–10), every lock latched with a cart present, listening at `baud`.
    pub fn new(count: u8, baud: Baud, auto_take: Option<Duration>) -> Result<Self, SimError> {
        let boards = (0..count)
            .map(|a| BoardAddress::new(a).map(|address| SimBoard::new(address, baud)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| SimError::NoBoard(count.saturating_sub(1)))?;
        if boards.is_empty() {
            return Err(SimError::NoBoard(0));
        }
        Ok(Self {
            boards,
            faults: Faults::default(),
            auto_take,
            scheduled: Vec::new(),
        })
    }

    /// The boards as they are at `now`.
    pub fn boards(&mut self, now: Duration) -> &[SimBoard] {
        self.advance(now);
        &self.boards
    }

    /// Mutable access to one board (tests set up exact sensor states with it).
    pub fn board_mut(&mut self, now: Duration, board: u8) -> Result<&mut SimBoard, SimError> {
        self.advance(now);
        self.boards
            .get_mut(usize::from(board))
            .ok_or(SimError::NoBoard(board))
    }

    /// Feeds received bytes through `decoder` and answers every request found in them.
    /// `line` is the speed the line runs at (PTY), or `None` where it has none (TCP).
    pub fn receive(
        &mut self,
        now: Duration,
        decoder: &mut Decoder,
        bytes: &[u8],
        line: Option<Baud>,
    ) -> Vec<Transmit> {
        decoder.feed(bytes);
        let mut out = Vec::new();
        while let Some(frame) = decoder.next_frame() {
            // Replies from other boards travel the same wire; boards ignore them.
            if let Frame::Request(request) = frame {
                out.extend(self.handle(now, request, line));
            }
        }
        out
    }

    /// Answers one request exactly as a CU16 bus would.
    pub fn handle(&mut self, now: Duration, request: Request, line: Option<Baud>) -> Vec<Transmit> {
        self.advance(now);
        let mut out = Vec::new();
        if self.faults.echo {
            out.push(Transmit {
                delay: Duration::ZERO,
                bytes: request.encode().as_bytes().to_vec(),
            });
        }
        let hearing: Vec<usize> = (0..self.boards.len())
            .filter(|&i| self.addressed(i, &request))
            .filter(|&i| line.is_none_or(|baud| baud == self.boards[i].baud))
            .collect();
        for index in hearing {
            if let Some(reply) = self.apply(now, index, request) {
                out.extend(self.transmit(index, reply));
            }
        }
        out
    }

    fn addressed(&self, index: usize, request: &Request) -> bool {
        let address = self.boards[index].address;
        match *request {
            Request::Status { board }
            | Request::Unlock { board, .. }
            | Request::UnlockAll { board } => board == address,
            Request::StatusAll => true,
            Request::QueryPulse { target }
            | Request::SetPulse { target, .. }
            | Request::SetUnlockDelay { target, .. }
            | Request::SetBaud { target, .. }
            | Request::Version { target } => match target {
                Target::Board(board) => board == address,
                Target::AllBoards => true,
            },
        }
    }

    /// Applies a request to one board; returns its reply, if the protocol has one.
    fn apply(&mut self, now: Duration, index: usize, request: Request) -> Option<Reply> {
        let board = &mut self.boards[index];
        let (address, hooks, present) = (board.address, board.hooks_wire(), board.present);
        let status = |source| Reply::Status {
            board: address,
            source,
            hooks,
            present,
        };
        match request {
            Request::Status { .. } => Some(status(StatusSource::Board)),
            Request::StatusAll => Some(status(StatusSource::Bus)),
            Request::Unlock { lock, .. } => {
                let at = now + Duration::from_secs(u64::from(board.delay.secs()));
                self.schedule(Scheduled {
                    at,
                    board: address,
                    lock,
                    effect: Effect::Open,
                });
                self.advance(now);
                None
            }
            Request::UnlockAll { .. } => {
                let reply = status(StatusSource::Board);
                let step = board.pulse.duration();
                for (i, lock) in (0u32..).zip(Lock::all()) {
                    let at = now + step * i;
                    self.schedule(Scheduled {
                        at,
                        board: address,
                        lock,
                        effect: Effect::Open,
                    });
                }
                self.advance(now);
                Some(reply)
            }
            Request::QueryPulse { .. } => Some(Reply::Pulse {
                board: address,
                hooks,
                pulse_units: board.pulse.units(),
            }),
            Request::SetPulse { pulse, .. } => {
                board.pulse = pulse;
                Some(Reply::Pulse {
                    board: address,
                    hooks,
                    pulse_units: pulse.units(),
                })
            }
            Request::SetUnlockDelay { delay, .. } => {
                board.delay = delay;
                Some(Reply::UnlockDelay {
                    board: address,
                    hooks,
                    data3: 0,
                    delay_s: delay.secs(),
                })
            }
            Request::SetBaud { baud, .. } => {
                // The reply still goes out at the old speed; the line check ran before this.
                board.baud = baud;
                Some(Reply::Baud {
                    board: address,
                    hooks,
                    data3: 0,
                    flag: baud.flag(),
                })
            }
            Request::Version { .. } => Some(Reply::Version {
                board: address,
                software: 1,
                hardware: 1,
            }),
        }
    }

    /// Encodes a reply with the board's faults applied.
    fn transmit(&self, index: usize, reply: Reply) -> Option<Transmit> {
        if self.faults.drop_reply[index] {
            return None;
        }
        let mut frame: ReplyFrame = reply.encode();
        if self.faults.corrupt_sum[index]
            && let Some(sum) = frame.as_bytes_mut().last_mut()
        {
            *sum = sum.wrapping_add(1);
        }
        let delay = self.faults.slow[index].unwrap_or_default();
        Some(Transmit {
            delay,
            bytes: frame.as_bytes().to_vec(),
        })
    }

    fn schedule(&mut self, item: Scheduled) {
        if self.scheduled.len() < SCHEDULE_MAX {
            self.scheduled.push(item);
        } else {
            tracing::warn!("simulator schedule full; dropping a timed effect");
        }
    }

    /// Applies every scheduled effect due at `now`, in time order.
    pub fn advance(&mut self, now: Duration) {
        while let Some(next) = self.next_due(now) {
            let item = self.scheduled.swap_remove(next);
            self.apply_effect(item);
        }
    }

    fn next_due(&self, now: Duration) -> Option<usize> {
        let due = self
            .scheduled
            .iter()
            .enumerate()
            .filter(|(_, s)| s.at <= now);
        due.min_by_key(|(_, s)| s.at).map(|(i, _)| i)
    }

    fn apply_effect(&mut self, item: Scheduled) {
        let index = usize::from(item.board.get());
        let jammed = self.faults.jammed[index].contains(item.lock);
        let auto_take = self.auto_take;
        let Some(board) = self.boards.get_mut(index) else {
            return;
        };
        match item.effect {
            Effect::Open if jammed => {}
            Effect::Open => {
                board.latched = board.latched.with(item.lock, false);
                if let Some(after) = auto_take.filter(|_| board.present.contains(item.lock)) {
                    let take = Scheduled {
                        at: item.at + after,
                        effect: Effect::TakeCart,
                        ..item
                    };
                    self.schedule(take);
                }
            }
            Effect::TakeCart if !board.latched.contains(item.lock) => {
                board.present = board.present.with(item.lock, false);
            }
            Effect::TakeCart => {}
        }
    }

    /// A shopper takes the cart out of an open post.
    pub fn take(&mut self, now: Duration, board: u8, lock: Lock) -> Result<(), SimError> {
        let sim = self.board_mut(now, board)?;
        let (board, lock_no) = (sim.address.get(), lock.get());
        if sim.latched.contains(lock) {
            return Err(SimError::Latched {
                board,
                lock: lock_no,
            });
        }
        if !sim.present.contains(lock) {
            return Err(SimError::NoCart {
                board,
                lock: lock_no,
            });
        }
        sim.present = sim.present.with(lock, false);
        Ok(())
    }

    /// A shopper docks a cart: the sensor sees it and the hook latches.
    pub fn dock(&mut self, now: Duration, board: u8, lock: Lock) -> Result<(), SimError> {
        let sim = self.board_mut(now, board)?;
        if sim.present.contains(lock) {
            return Err(SimError::Occupied {
                board: sim.address.get(),
                lock: lock.get(),
            });
        }
        sim.present = sim.present.with(lock, true);
        sim.latched = sim.latched.with(lock, true);
        Ok(())
    }

    /// Injects a fault; it stays until `clear_faults`.
    pub fn inject(&mut self, fault: Fault) -> Result<(), SimError> {
        let indices = |board: Option<BoardAddress>| -> Result<Vec<usize>, SimError> {
            match board {
                None => Ok((0..self.boards.len()).collect()),
                Some(b) if usize::from(b.get()) < self.boards.len() => {
                    Ok(vec![usize::from(b.get())])
                }
                Some(b) => Err(SimError::NoBoard(b.get())),
            }
        };
        match fault {
            Fault::DropReply { board } => indices(board)?
                .into_iter()
                .for_each(|i| self.faults.drop_reply[i] = true),
            Fault::CorruptSum { board } => indices(board)?
                .into_iter()
                .for_each(|i| self.faults.corrupt_sum[i] = true),
            Fault::Slow { board, delay } => indices(board)?
                .into_iter()
                .for_each(|i| self.faults.slow[i] = Some(delay)),
            Fault::Jam { board, lock } => {
                for i in indices(Some(board))? {
                    self.faults.jammed[i] = self.faults.jammed[i].with(lock, true);
                }
            }
            Fault::Echo => self.faults.echo = true,
        }
        Ok(())
    }

    /// Removes every fault.
    pub fn clear_faults(&mut self) {
        self.faults = Faults::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(n: u8) -> BoardAddress {
        BoardAddress::new(n).unwrap()
    }

    fn lock(n: u8) -> Lock {
        Lock::new(n).unwrap()
    }

    #[test]
    fn unlock_opens_and_auto_take_removes_the_cart_later() {
        let mut bus = SimBus::new(1, Baud::B19200, Some(Duration::from_secs(2))).unwrap();
        let out = bus.handle(
            Duration::ZERO,
            Request::Unlock {
                board: board(0),
                lock: lock(3),
            },
            None,
        );
        assert!(out.is_empty(), "0x31 has no reply");
        let state = bus.boards(Duration::from_millis(1))[0].clone();
        assert!(!state.latched.contains(lock(3)) && state.present.contains(lock(3)));
        let state = bus.boards(Duration::from_secs(3))[0].clone();
        assert!(!state.present.contains(lock(3)));
    }

    #[test]
    fn jam_keeps_the_hook_latched_and_wrong_baud_gets_silence() {
        let mut bus = SimBus::new(2, Baud::B19200, None).unwrap();
        bus.inject(Fault::Jam {
            board: board(1),
            lock: lock(1),
        })
        .unwrap();
        bus.handle(
            Duration::ZERO,
            Request::Unlock {
                board: board(1),
                lock: lock(1),
            },
            None,
        );
        assert!(
            bus.boards(Duration::from_secs(1))[1]
                .latched
                .contains(lock(1))
        );
        let silent = bus.handle(Duration::ZERO, Request::StatusAll, Some(Baud::B9600));
        assert!(silent.is_empty());
        assert_eq!(
            bus.handle(Duration::ZERO, Request::StatusAll, Some(Baud::B19200))
                .len(),
            2
        );
    }

    #[test]
    fn delayed_unlock_and_unlock_all_open_over_time() {
        let mut bus = SimBus::new(1, Baud::B19200, None).unwrap();
        let delay = UnlockDelay::from_secs(2).unwrap();
        let target = Target::Board(board(0));
        bus.handle(
            Duration::ZERO,
            Request::SetUnlockDelay { target, delay },
            None,
        );
        bus.handle(
            Duration::ZERO,
            Request::Unlock {
                board: board(0),
                lock: lock(1),
            },
            None,
        );
        assert!(
            bus.boards(Duration::from_secs(1))[0]
                .latched
                .contains(lock(1))
        );
        assert!(
            !bus.boards(Duration::from_secs(2))[0]
                .latched
                .contains(lock(1))
        );

        let out = bus.handle(
            Duration::from_secs(3),
            Request::UnlockAll { board: board(0) },
            None,
        );
        assert_eq!(out.len(), 1);
        let latched = bus.boards(Duration::from_millis(3000 + 550 * 5 + 1))[0].latched;
        assert_eq!(
            latched.0.count_ones(),
            10,
            "locks 1–6 opened so far: {latched:?}"
        );
        assert_eq!(bus.boards(Duration::from_secs(20))[0].latched, LockBits(0));
    }

    #[test]
    fn take_and_dock_follow_the_physical_rules() {
        let mut bus = SimBus::new(1, Baud::B19200, None).unwrap();
        let now = Duration::ZERO;
        assert_eq!(
            bus.take(now, 0, lock(1)),
            Err(SimError::Latched { board: 0, lock: 1 })
        );
        assert_eq!(
            bus.dock(now, 0, lock(1)),
            Err(SimError::Occupied { board: 0, lock: 1 })
        );
        bus.handle(
            now,
            Request::Unlock {
                board: board(0),
                lock: lock(1),
            },
            None,
        );
        bus.take(now, 0, lock(1)).unwrap();
        assert_eq!(
            bus.take(now, 0, lock(1)),
            Err(SimError::NoCart { board: 0, lock: 1 })
        );
        bus.dock(now, 0, lock(1)).unwrap();
        assert_eq!(bus.boards(now)[0].latched, LockBits::ALL);
        assert_eq!(bus.take(now, 3, lock(1)), Err(SimError::NoBoard(3)));
    }
}
