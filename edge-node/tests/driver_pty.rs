//! The real serial driver over a PTY against the simulator: unlock, take, dock (a return
//! event from the poller), jam, dropped and slow replies (bounded retries, clear errors),
//! echo, baud probing; and the same driver over TCP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

mod support;

use std::net::SocketAddr;

use cartwise_edge_node::cu16::{
    Baud, BoardAddress, Bus, BusConfig, BusError, Lock, PollEvent, PollerConfig, PulseTime, Target,
    UnlockOutcome, spawn_poller,
};
use cartwise_edge_node::sim_board::{Listen, SimOptions};
use std::future::Future;
use std::time::Duration;
use support::{Sim, TEST_WAIT_MAX, control, fast_config, start_sim};
use tokio::sync::mpsc::Receiver;

fn board(n: u8) -> BoardAddress {
    BoardAddress::new(n).unwrap()
}

fn lock(n: u8) -> Lock {
    Lock::new(n).unwrap()
}

async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_WAIT_MAX, future)
        .await
        .expect("waited too long: a hang")
}

/// A two-board simulator on a PTY, and the serial driver opened on its symlink.
async fn pty_bus(dir: &tempfile::TempDir, baud: Baud, config: BusConfig) -> (Sim, Bus) {
    let options = SimOptions {
        boards: 2,
        listen: Listen::Pty(dir.path().join("cu16")),
        control: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        baud,
        ..SimOptions::default()
    };
    let sim = start_sim(options).await;
    let bus = Bus::open(&sim.handle.bus_uri(), config).await.unwrap();
    (sim, bus)
}

fn two_boards() -> BusConfig {
    BusConfig {
        boards: vec![board(0), board(1)],
        ..fast_config()
    }
}

async fn next_event(
    events: &mut Receiver<PollEvent>,
    wanted: impl Fn(&PollEvent) -> bool,
) -> PollEvent {
    bounded(async {
        loop {
            let event = events.recv().await.expect("poller stopped");
            if wanted(&event) {
                return event;
            }
        }
    })
    .await
}

#[tokio::test]
async fn unlock_take_and_dock_are_seen_through_the_serial_driver() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, bus) = pty_bus(&dir, Baud::B19200, two_boards()).await;
    let poll = PollerConfig {
        interval: Duration::from_millis(40),
        ..PollerConfig::default()
    };
    let mut poller = spawn_poller(bus.clone(), poll);
    next_event(
        &mut poller.events,
        |e| matches!(e, PollEvent::Baseline { status } if status.board == board(1)),
    )
    .await;

    let (b, l) = (board(0), lock(3));
    assert_eq!(
        bounded(bus.unlock(b, l)).await.unwrap(),
        UnlockOutcome::Opened
    );
    next_event(&mut poller.events, |e| {
        *e == PollEvent::Opened { board: b, lock: l }
    })
    .await;
    let status = bounded(bus.status(b)).await.unwrap();
    assert!(!status.is_latched(l) && status.has_cart(l));
    assert_eq!(
        bounded(bus.unlock(b, l)).await.unwrap(),
        UnlockOutcome::AlreadyOpen
    );

    control(&sim, "/take", r#"{"board":0,"lock":3}"#).await;
    next_event(&mut poller.events, |e| {
        *e == PollEvent::CartRemoved { board: b, lock: l }
    })
    .await;
    assert!(!bounded(bus.status(b)).await.unwrap().has_cart(l));

    control(&sim, "/dock", r#"{"board":0,"lock":3}"#).await;
    let docked = next_event(&mut poller.events, |e| {
        matches!(e, PollEvent::Latched { .. })
    })
    .await;
    assert_eq!(
        docked,
        PollEvent::Latched {
            board: b,
            lock: l,
            cart_present: true
        }
    );
    assert!(docked.is_return());
}

#[tokio::test]
async fn a_jammed_lock_reports_did_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, bus) = pty_bus(&dir, Baud::B19200, two_boards()).await;
    control(&sim, "/fault", r#"{"kind":"jam","board":1,"lock":2}"#).await;
    assert_eq!(
        bounded(bus.unlock(board(1), lock(2))).await.unwrap(),
        UnlockOutcome::DidNotOpen
    );
    assert!(
        bounded(bus.status(board(1)))
            .await
            .unwrap()
            .is_latched(lock(2))
    );
    assert_eq!(
        bounded(bus.unlock(board(1), lock(3))).await.unwrap(),
        UnlockOutcome::Opened
    );
}

#[tokio::test]
async fn dropped_replies_give_bounded_retries_then_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, bus) = pty_bus(&dir, Baud::B19200, two_boards()).await;
    bounded(bus.status(board(0))).await.unwrap();
    control(&sim, "/fault", r#"{"kind":"drop_reply","board":1}"#).await;

    let error = bounded(bus.status(board(1))).await.unwrap_err();
    assert!(
        matches!(error, BusError::NoReply { attempts: 3, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("board 1 did not answer status after 3 tries"),
        "{message}"
    );
    assert!(
        message.contains("at 19200 baud") && message.contains("DIP address"),
        "{message}"
    );

    let unlock = bounded(bus.unlock(board(1), lock(1))).await.unwrap_err();
    assert!(
        matches!(unlock, BusError::NoReply { .. }),
        "no pulse into the void: {unlock:?}"
    );
    let all = bounded(bus.status_all()).await.unwrap();
    assert_eq!(
        all.iter().map(|s| s.board).collect::<Vec<_>>(),
        vec![board(0)]
    );
}

#[tokio::test]
async fn slow_replies_time_out_cleanly_and_the_bus_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, bus) = pty_bus(&dir, Baud::B19200, two_boards()).await;
    bounded(bus.status(board(0))).await.unwrap();
    control(&sim, "/fault", r#"{"kind":"slow","board":0,"ms":1500}"#).await;
    let error = bounded(bus.pulse(board(0))).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("did not answer pulse query after 3 tries"),
        "{error}"
    );

    control(&sim, "/fault", r#"{"kind":"clear"}"#).await;
    let pulse = bounded(bus.pulse(board(0))).await.unwrap();
    assert_eq!(pulse, PulseTime::DEFAULT);
}

#[tokio::test]
async fn an_echoing_adapter_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, bus) = pty_bus(&dir, Baud::B19200, two_boards()).await;
    control(&sim, "/fault", r#"{"kind":"echo"}"#).await;
    assert_eq!(bounded(bus.status_all()).await.unwrap().len(), 2);
    assert_eq!(
        bounded(bus.unlock(board(0), lock(1))).await.unwrap(),
        UnlockOutcome::Opened
    );
    let pulse = PulseTime::from_millis(800).unwrap();
    let set = bounded(bus.set_pulse(Target::AllBoards, pulse))
        .await
        .unwrap();
    assert_eq!(set, vec![(board(0), pulse), (board(1), pulse)]);
    assert_eq!(bounded(bus.pulse(board(1))).await.unwrap(), pulse);
}

#[tokio::test]
async fn the_driver_probes_the_baud_when_boards_are_silent() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, bus) = pty_bus(&dir, Baud::B115200, two_boards()).await;
    let boards = bounded(bus.status_all()).await.unwrap();
    assert_eq!(boards.len(), 2);
    assert!(bus.line().ends_with("at 115200 baud"), "{}", bus.line());
}

#[tokio::test]
async fn the_same_driver_works_over_tcp() {
    let sim = start_sim(SimOptions {
        boards: 3,
        ..SimOptions::default()
    })
    .await;
    let bus = Bus::open(&sim.handle.bus_uri(), fast_config())
        .await
        .unwrap();
    let boards = bounded(bus.status_all()).await.unwrap();
    assert_eq!(
        boards.iter().map(|s| s.board.get()).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(
        bounded(bus.unlock(board(2), lock(16))).await.unwrap(),
        UnlockOutcome::Opened
    );
    let before = bounded(bus.unlock_all(board(1))).await.unwrap();
    assert_eq!(
        before.latched.0, 0xFFFF,
        "unlock-all answers with the state before"
    );
    let versions = bounded(bus.version(Target::Board(board(0)))).await.unwrap();
    assert_eq!((versions[0].software, versions[0].hardware), (1, 1));
}
