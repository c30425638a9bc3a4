//! The bus poller: reads every board on an interval and emits hook and presence transitions.
//!
//! A return is a hook latching while a cart is present (`PollEvent::Latched { cart_present:
//! true }`). The first reading of each board is sent as `PollEvent::Baseline`, so the daemon
//! can reconcile what it recorded with what the posts really hold after a restart.
//!
//! Starting a poller tells the bus its interval, so a reading can be judged fresh by how many
//! intervals old it is (`Bus::sensed`, `Bus::poll_interval`). Its reads go in the bus's
//! ordinary lane: an unlock never waits behind a queued poll, only behind one on the wire.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::driver::Bus;
use super::{BoardAddress, BoardStatus, Lock};

/// How often and how much the poller reads. `Default`: every 500 ms, 256 queued events.
#[derive(Debug, Clone)]
pub struct PollerConfig {
    /// Time between bus-wide reads.
    pub interval: Duration,
    /// Events that may wait for the consumer before the poller pauses.
    pub event_queue_max: usize,
}

impl Default for PollerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            event_queue_max: 256,
        }
    }
}

/// Something that changed at a post (or a board).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollEvent {
    /// First reading of a board since the poller started (or since it went silent).
    Baseline { status: BoardStatus },
    /// The hook latched. With `cart_present`, this is a cart being docked: a return.
    Latched {
        board: BoardAddress,
        lock: Lock,
        cart_present: bool,
    },
    /// The hook opened.
    Opened { board: BoardAddress, lock: Lock },
    /// The sensor now sees a cart.
    CartArrived { board: BoardAddress, lock: Lock },
    /// The sensor no longer sees a cart.
    CartRemoved { board: BoardAddress, lock: Lock },
    /// A board that answered before did not answer this round.
    BoardSilent { board: BoardAddress },
    /// Reading the bus failed altogether (the error is in the message).
    BusFailed { message: String },
}

impl PollEvent {
    /// Whether this event is a cart returned into a post.
    pub fn is_return(&self) -> bool {
        matches!(
            self,
            PollEvent::Latched {
                cart_present: true,
                ..
            }
        )
    }
}

/// The running poller. Drop `events` (or the handle) to stop it.
#[derive(Debug)]
pub struct PollerHandle {
    /// Transitions, in the order they were seen.
    pub events: mpsc::Receiver<PollEvent>,
    /// The polling task.
    pub task: JoinHandle<()>,
}

/// Starts polling `bus`; it stops when the event receiver is dropped.
pub fn spawn_poller(bus: Bus, config: PollerConfig) -> PollerHandle {
    let (sender, events) = mpsc::channel(config.event_queue_max.max(1));
    bus.note_poll_interval(config.interval);
    let task = tokio::spawn(run(bus, config.interval, sender));
    PollerHandle { events, task }
}

async fn run(bus: Bus, interval: Duration, events: mpsc::Sender<PollEvent>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut known: BTreeMap<BoardAddress, BoardStatus> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = events.closed() => return,
        }
        let round = match bus.status_all().await {
            Ok(statuses) => diff_round(&mut known, &statuses),
            Err(error) => vec![PollEvent::BusFailed {
                message: error.to_string(),
            }],
        };
        for event in round {
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// Compares one round of readings with the last; updates `known`; returns the transitions.
pub fn diff_round(
    known: &mut BTreeMap<BoardAddress, BoardStatus>,
    statuses: &[BoardStatus],
) -> Vec<PollEvent> {
    let mut events = Vec::new();
    let silent: Vec<BoardAddress> = known
        .keys()
        .filter(|b| !statuses.iter().any(|s| s.board == **b))
        .copied()
        .collect();
    for board in silent {
        known.remove(&board);
        events.push(PollEvent::BoardSilent { board });
    }
    for status in statuses {
        match known.insert(status.board, *status) {
            None => events.push(PollEvent::Baseline { status: *status }),
            Some(before) => events.extend(diff_board(&before, status)),
        }
    }
    events
}

/// The transitions between two readings of one board: presence first, then the hook.
pub fn diff_board(before: &BoardStatus, after: &BoardStatus) -> Vec<PollEvent> {
    let board = after.board;
    let mut events = Vec::new();
    for lock in Lock::all() {
        match (before.has_cart(lock), after.has_cart(lock)) {
            (false, true) => events.push(PollEvent::CartArrived { board, lock }),
            (true, false) => events.push(PollEvent::CartRemoved { board, lock }),
            _ => {}
        }
        match (before.is_latched(lock), after.is_latched(lock)) {
            (false, true) => {
                let cart_present = after.has_cart(lock);
                events.push(PollEvent::Latched {
                    board,
                    lock,
                    cart_present,
                });
            }
            (true, false) => events.push(PollEvent::Opened { board, lock }),
            _ => {}
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cu16::LockBits;

    fn status(board: u8, latched: u16, present: u16) -> BoardStatus {
        BoardStatus {
            board: BoardAddress::new(board).unwrap(),
            latched: LockBits(latched),
            present: LockBits(present),
        }
    }

    #[test]
    fn first_round_is_a_baseline_then_transitions_follow() {
        let mut known = BTreeMap::new();
        let first = diff_round(&mut known, &[status(0, 0xFFFF, 0xFFFF)]);
        assert_eq!(
            first,
            vec![PollEvent::Baseline {
                status: status(0, 0xFFFF, 0xFFFF)
            }]
        );

        let board = BoardAddress::new(0).unwrap();
        let lock = Lock::new(2).unwrap();
        let opened = diff_round(&mut known, &[status(0, 0xFFFD, 0xFFFF)]);
        assert_eq!(opened, vec![PollEvent::Opened { board, lock }]);
        let taken = diff_round(&mut known, &[status(0, 0xFFFD, 0xFFFD)]);
        assert_eq!(taken, vec![PollEvent::CartRemoved { board, lock }]);
        let docked = diff_round(&mut known, &[status(0, 0xFFFF, 0xFFFF)]);
        assert_eq!(
            docked,
            vec![
                PollEvent::CartArrived { board, lock },
                PollEvent::Latched {
                    board,
                    lock,
                    cart_present: true
                },
            ]
        );
        assert!(docked[1].is_return());
        let silent = diff_round(&mut known, &[]);
        assert_eq!(silent, vec![PollEvent::BoardSilent { board }]);
    }
}
