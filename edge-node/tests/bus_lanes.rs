//! The bus task's lanes and pacing, against a scripted board model: an unlock queued behind
//! reads goes on the wire before them (but never cuts into the request already there), an
//! unlock with its read first is one turn, readings are remembered and forgotten by an unlock,
//! and no frame follows another sooner than its transport's gap (serial after every frame; a
//! TCP bridge after an unanswered one). The gaps are lower bounds, so load cannot break them;
//! that a bridge adds none after an answered frame is a unit test of the actor.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

mod support;

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cartwise_edge_node::cu16::codec::StatusSource;
use cartwise_edge_node::cu16::{
    Baud, BoardAddress, Bus, BusConfig, Lock, LockBits, Pacing, PreRead, Reply, RequestFrame,
    Transport, UnlockOutcome,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;

const STATUS: u8 = 0x30;
const UNLOCK: u8 = 0x31;
const STATUS_ALL: u8 = 0x32;

fn board(n: u8) -> BoardAddress {
    BoardAddress::new(n).unwrap()
}

fn lock(n: u8) -> Lock {
    Lock::new(n).unwrap()
}

/// What the scripted boards hold and what went over the wire.
#[derive(Default)]
struct Wire {
    /// Latched hooks per board (latched-high polarity); every post holds a cart.
    latched: [u16; 2],
    /// (when written, address byte, command byte) of every frame.
    frames: Vec<(Instant, u8, u8)>,
}

impl Wire {
    fn commands(&self) -> Vec<(u8, u8)> {
        self.frames.iter().map(|f| (f.1, f.2)).collect()
    }
}

/// Two boards that answer at once; replies to the first request are held until `release`
/// gets a permit, so the test can queue work while that request is on the wire.
struct Scripted {
    wire: Arc<Mutex<Wire>>,
    pending: VecDeque<u8>,
    release: Arc<Semaphore>,
    hold_first: bool,
    pacing: Pacing,
}

impl Scripted {
    fn new(pacing: Pacing, hold_first: bool) -> (Self, Arc<Mutex<Wire>>, Arc<Semaphore>) {
        let wire = Arc::new(Mutex::new(Wire {
            latched: [0xFFFF; 2],
            frames: Vec::new(),
        }));
        let release = Arc::new(Semaphore::new(0));
        let transport = Self {
            wire: Arc::clone(&wire),
            pending: VecDeque::new(),
            release: Arc::clone(&release),
            hold_first,
            pacing,
        };
        (transport, wire, release)
    }
}

fn status_reply(wire: &Wire, b: u8, source: StatusSource) -> Vec<u8> {
    Reply::Status {
        board: board(b),
        source,
        hooks: LockBits(wire.latched[usize::from(b)]),
        present: LockBits::ALL,
    }
    .encode()
    .as_bytes()
    .to_vec()
}

impl Transport for Scripted {
    async fn send(&mut self, frame: &RequestFrame) -> io::Result<()> {
        let bytes = frame.as_bytes().to_vec();
        let mut wire = self.wire.lock().unwrap();
        let (address, command) = (bytes[1], bytes[2]);
        wire.frames.push((Instant::now(), address, command));
        let b = address >> 4;
        match command {
            STATUS => {
                let reply = status_reply(&wire, b, StatusSource::Board);
                self.pending.extend(reply);
            }
            STATUS_ALL => {
                for b in 0..2 {
                    let reply = status_reply(&wire, b, StatusSource::Bus);
                    self.pending.extend(reply);
                }
            }
            UNLOCK => wire.latched[usize::from(b)] &= !(1 << (address & 0x0F)),
            other => panic!("the scripted boards do not know command {other:#04x}"),
        }
        Ok(())
    }

    async fn receive(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            std::future::pending::<()>().await;
        }
        if self.hold_first {
            self.release.acquire().await.unwrap().forget();
            self.hold_first = false;
        }
        let n = buf.len().min(self.pending.len());
        for (slot, byte) in buf.iter_mut().zip(self.pending.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }

    async fn discard_input(&mut self) -> io::Result<()> {
        self.pending.clear();
        Ok(())
    }

    fn set_baud(&mut self, _baud: Baud) -> io::Result<()> {
        Ok(())
    }

    fn baud(&self) -> Option<Baud> {
        None
    }

    fn describe(&self) -> String {
        "scripted boards".into()
    }

    fn pacing(&self) -> Pacing {
        self.pacing
    }
}

fn config() -> BusConfig {
    BusConfig {
        boards: vec![board(0), board(1)],
        // Longer than anything the test holds a reply for: no retry muddles the order.
        reply_timeout: Duration::from_secs(30),
        ..support::fast_config()
    }
}

/// Polls until `done` holds (at most `TEST_WAIT_MAX`).
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + support::TEST_WAIT_MAX;
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until the first frame is on the wire and `n` requests wait behind it.
async fn until_queued(bus: &Bus, wire: &Mutex<Wire>, n: usize) {
    until(
        &format!("{n} requests queued behind one on the wire"),
        || !wire.lock().unwrap().frames.is_empty() && bus.queued() == n,
    )
    .await;
}

#[tokio::test]
async fn an_unlock_queued_behind_reads_goes_on_the_wire_first() {
    let (transport, wire, release) = Scripted::new(Pacing::Bridge, true);
    let bus = Bus::spawn(transport, config());

    // The poller's bus-wide read is on the wire; its replies are held.
    let on_wire = tokio::spawn({
        let bus = bus.clone();
        async move { bus.status_all().await }
    });
    until_queued(&bus, &wire, 0).await;
    assert_eq!(wire.lock().unwrap().commands(), vec![(0xF0, STATUS_ALL)]);
    // Three ordinary reads queue behind it, then a lend's unlock of board 1, lock 3.
    let reads: Vec<_> = [0u8, 1, 0]
        .into_iter()
        .map(|b| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.status(board(b)).await })
        })
        .collect();
    until_queued(&bus, &wire, 3).await;
    let unlock = tokio::spawn({
        let bus = bus.clone();
        async move { bus.unlock_with(board(1), lock(3), PreRead::Skip).await }
    });
    until_queued(&bus, &wire, 4).await;

    release.add_permits(1);
    assert_eq!(unlock.await.unwrap().unwrap(), UnlockOutcome::Opened);
    assert_eq!(
        on_wire.await.unwrap().unwrap().len(),
        2,
        "the read on the wire completed"
    );
    for read in reads {
        read.await.unwrap().unwrap();
    }
    let commands = wire.lock().unwrap().commands();
    assert_eq!(
        commands[..5],
        [
            (0xF0, STATUS_ALL),
            (0x12, UNLOCK),
            (0x00, STATUS),
            (0x10, STATUS),
            (0x00, STATUS),
        ],
        "the unlock went right after the request on the wire: {commands:x?}"
    );
    // Then the reads that confirm the hook opened.
    assert_eq!(commands[5..], [(0x10, STATUS)], "{commands:x?}");
}

#[tokio::test]
async fn an_unlock_that_reads_first_keeps_the_read_and_the_pulse_together() {
    let (transport, wire, release) = Scripted::new(Pacing::Bridge, true);
    let bus = Bus::spawn(transport, config());
    let on_wire = tokio::spawn({
        let bus = bus.clone();
        async move { bus.status(board(0)).await }
    });
    until_queued(&bus, &wire, 0).await;
    let read = tokio::spawn({
        let bus = bus.clone();
        async move { bus.status_all().await }
    });
    until_queued(&bus, &wire, 1).await;
    let unlock = tokio::spawn({
        let bus = bus.clone();
        async move { bus.unlock_with(board(0), lock(1), PreRead::Read).await }
    });
    until_queued(&bus, &wire, 2).await;

    release.add_permits(1);
    assert_eq!(unlock.await.unwrap().unwrap(), UnlockOutcome::Opened);
    on_wire.await.unwrap().unwrap();
    read.await.unwrap().unwrap();
    let commands = wire.lock().unwrap().commands();
    assert_eq!(
        commands,
        [
            (0x00, STATUS),
            (0x00, STATUS),
            (0x00, UNLOCK),
            (0xF0, STATUS_ALL),
            (0x00, STATUS),
        ],
        "read and unlock back to back, ahead of the queued poll: {commands:x?}"
    );

    // Unlocking the now-open lock again reads it and pulses nothing.
    let again = bus.unlock_with(board(0), lock(1), PreRead::Read).await;
    assert_eq!(again.unwrap(), UnlockOutcome::AlreadyOpen);
    let after = wire.lock().unwrap().commands();
    assert_eq!(after[commands.len()..], [(0x00, STATUS)]);
}

#[tokio::test]
async fn readings_are_kept_per_board_and_forgotten_by_an_unlock() {
    let (transport, _wire, _release) = Scripted::new(Pacing::Bridge, false);
    let bus = Bus::spawn(transport, config());
    assert!(bus.sensed(board(0)).is_none());
    let asked = Instant::now();
    bus.status_all().await.unwrap();
    let sensed = bus.sensed(board(1)).expect("board 1 was read");
    assert!(sensed.asked_at >= asked);
    assert!(sensed.status.is_latched(lock(3)));

    bus.unlock_with(board(1), lock(3), PreRead::Skip)
        .await
        .unwrap();
    // The confirming read came after the unlock, so it is kept; it shows the hook open.
    let after = bus.sensed(board(1)).expect("the confirming read is kept");
    assert!(after.asked_at > sensed.asked_at);
    assert!(!after.status.is_latched(lock(3)));
    assert!(bus.sensed(board(0)).is_some(), "other boards keep theirs");
}

#[tokio::test]
async fn no_frame_follows_sooner_than_the_transports_gap() {
    let frame_gap = Duration::from_millis(20);
    let bridge_frame_gap = Duration::from_millis(10);
    for pacing in [Pacing::Serial, Pacing::Bridge] {
        let (transport, wire, _release) = Scripted::new(pacing, false);
        let config = BusConfig {
            frame_gap,
            bridge_frame_gap,
            ..config()
        };
        let bus = Bus::spawn(transport, config);
        // A read, a read-first unlock, and a poll queued while the unlock is on its way.
        bus.status(board(0)).await.unwrap();
        let unlock = tokio::spawn({
            let bus = bus.clone();
            async move { bus.unlock_with(board(0), lock(2), PreRead::Read).await }
        });
        until("the unlock is written", || {
            wire.lock().unwrap().commands().contains(&(0x01, UNLOCK))
        })
        .await;
        bus.status_all().await.unwrap();
        assert_eq!(unlock.await.unwrap().unwrap(), UnlockOutcome::Opened);

        let frames = wire.lock().unwrap().frames.clone();
        let commands: Vec<u8> = frames.iter().map(|f| f.2).collect();
        assert_eq!(
            commands,
            [STATUS, STATUS, UNLOCK, STATUS_ALL, STATUS],
            "{pacing:?}"
        );
        for pair in frames.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            let gap = after.0 - before.0;
            let least = match (pacing, before.2) {
                (Pacing::Serial, _) => frame_gap,
                (Pacing::Bridge, UNLOCK) => bridge_frame_gap,
                (Pacing::Bridge, _) => Duration::ZERO,
            };
            assert!(
                gap >= least,
                "{pacing:?}: {:#04x} followed {:#04x} after {gap:?}, less than {least:?}",
                after.2,
                before.2
            );
        }
    }
}
