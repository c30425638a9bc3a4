//! The simulator driven over TCP by raw bytes returns exactly the spec's replies (every
//! vector in `fixtures/data/cu16/vectors.txt`), stays silent on a bad checksum or an unknown
//! address, and its control API shows and changes the posts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

mod support;

use std::net::SocketAddr;

use cartwise_edge_node::cu16::LockBits;
use cartwise_edge_node::sim_board::{BoundBus, SimOptions};
use support::{Sim, TEST_WAIT_MAX, Vector, control, hex, http, start_sim, vectors};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STATUS_BOARD0: &str = "02 00 30 03 35";

async fn sim_with(boards: u8, control_api: bool) -> Sim {
    let control = control_api.then(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    start_sim(SimOptions {
        boards,
        control,
        ..SimOptions::default()
    })
    .await
}

async fn connect(sim: &Sim) -> TcpStream {
    let BoundBus::Tcp(addr) = sim.handle.bus else {
        panic!("not a TCP simulator")
    };
    TcpStream::connect(addr).await.unwrap()
}

async fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    tokio::time::timeout(TEST_WAIT_MAX, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

/// Sends a status request for board 0 and checks the very next bytes are its reply: proof
/// that nothing else (an unwanted reply) was sent before it.
async fn assert_next_is_status_of_board0(stream: &mut TcpStream, context: &str) {
    stream.write_all(&hex(STATUS_BOARD0)).await.unwrap();
    let reply = read_exactly(stream, 9).await;
    assert_eq!(
        &reply[..3],
        &hex("02 00 35")[..],
        "{context}: got {reply:02X?}"
    );
    let sum = reply[..8].iter().fold(0u8, |s, b| s.wrapping_add(*b));
    assert_eq!(reply[8], sum, "{context}: {reply:02X?}");
}

async fn check_vector(vector: &Vector) {
    let sim = sim_with(vector.boards, false).await;
    sim.handle.sim().with_bus(|bus, now| {
        for &(board, latched, present) in &vector.state {
            let board = bus.board_mut(now, board).unwrap();
            board.latched = LockBits(latched);
            board.present = LockBits(present);
        }
    });
    let mut stream = connect(&sim).await;
    stream.write_all(&vector.request).await.unwrap();
    let expected: Vec<u8> = vector.replies.concat();
    if !expected.is_empty() {
        let got = read_exactly(&mut stream, expected.len()).await;
        assert_eq!(got, expected, "{}: got {got:02X?}", vector.name);
    }
    assert_next_is_status_of_board0(&mut stream, &vector.name).await;
}

#[tokio::test]
async fn every_spec_vector_gets_exactly_the_spec_reply() {
    for vector in vectors() {
        check_vector(&vector).await;
    }
}

#[tokio::test]
async fn request_bytes_split_across_writes_are_still_answered() {
    let sim = sim_with(1, false).await;
    let mut stream = connect(&sim).await;
    for byte in hex("FF 02 00 37 00") {
        stream.write_all(&[byte]).await.unwrap();
        stream.flush().await.unwrap();
    }
    stream.write_all(&hex("64 03 A0")).await.unwrap();
    assert_eq!(
        read_exactly(&mut stream, 9).await,
        hex("02 00 38 FF FF 00 64 03 9F")
    );
}

#[tokio::test]
async fn control_api_shows_and_moves_carts_and_faults_change_the_bytes() {
    let sim = sim_with(2, true).await;
    let addr = sim.handle.control.unwrap();
    let (status, state) = http(addr, "GET", "/state", "").await;
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["boards"].as_array().unwrap().len(), 2);
    assert_eq!(state["boards"][1]["address"], 1);
    assert_eq!(state["boards"][0]["hooks"].as_array().unwrap().len(), 16);
    assert!(
        state["boards"][0]["present"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p == true)
    );

    let (status, body) = http(addr, "POST", "/take", r#"{"board":0,"lock":1}"#).await;
    assert_eq!(status, 409, "a latched post keeps its cart: {body}");
    assert!(body.contains("detail"), "{body}");
    let (status, _) = http(addr, "POST", "/dock", r#"{"board":0,"lock":17}"#).await;
    assert_eq!(status, 400);

    let mut stream = connect(&sim).await;
    stream.write_all(&hex("02 00 31 03 36")).await.unwrap();
    assert_next_is_status_of_board0(&mut stream, "after unlock").await;
    control(&sim, "/take", r#"{"board":0,"lock":1}"#).await;
    stream.write_all(&hex(STATUS_BOARD0)).await.unwrap();
    assert_eq!(
        read_exactly(&mut stream, 9).await,
        hex("02 00 35 FE FF FE FF 03 34")
    );

    control(&sim, "/fault", r#"{"kind":"corrupt_sum","board":0}"#).await;
    stream.write_all(&hex(STATUS_BOARD0)).await.unwrap();
    assert_eq!(
        read_exactly(&mut stream, 9).await,
        hex("02 00 35 FE FF FE FF 03 35")
    );

    control(&sim, "/fault", r#"{"kind":"clear"}"#).await;
    control(&sim, "/fault", r#"{"kind":"echo"}"#).await;
    stream.write_all(&hex(STATUS_BOARD0)).await.unwrap();
    let echoed = read_exactly(&mut stream, 14).await;
    assert_eq!(echoed, hex("02 00 30 03 35 02 00 35 FE FF FE FF 03 34"));

    control(&sim, "/fault", r#"{"kind":"clear"}"#).await;
    control(&sim, "/dock", r#"{"board":0,"lock":1}"#).await;
    assert_next_is_status_of_board0(&mut stream, "after dock").await;
    let (_, state) = http(addr, "GET", "/state", "").await;
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["boards"][0]["hooks"][0], true);
    assert_eq!(state["boards"][0]["present"][0], true);
}
