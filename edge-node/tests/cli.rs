//! The binaries: `cartwise-edge sim-board` as a process (prints its addresses, answers raw
//! bytes) and `cartwise-edge bus …` against a simulator (tables, confirmation, exit codes).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly by design

mod support;

use std::net::SocketAddr;
use std::process::{Output, Stdio};

use cartwise_edge_node::sim_board::{Listen, SimOptions};
use support::{Sim, TEST_WAIT_MAX, control, hex, start_sim};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

const EDGE: &str = env!("CARGO_BIN_EXE_cartwise-edge");

async fn run_bus(bus: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(EDGE)
        .args(["bus", "--bus", bus, "--timeout-ms", "300"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(TEST_WAIT_MAX, child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

fn text(output: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (stdout, stderr)
}

async fn tcp_sim(boards: u8) -> (Sim, String) {
    let control = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let sim = start_sim(SimOptions {
        boards,
        control,
        ..SimOptions::default()
    })
    .await;
    let uri = sim.handle.bus_uri().to_string();
    (sim, uri)
}

#[tokio::test]
async fn sim_board_process_prints_its_addresses_and_answers_raw_bytes() {
    let mut child = Command::new(EDGE)
        .args(["sim-board", "--boards", "2", "--listen", "tcp:127.0.0.1:0"])
        .args(["--control", "127.0.0.1:0", "--auto-take-ms", "100"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(TEST_WAIT_MAX, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    let bus_line = next_line().await;
    let control_line = next_line().await;
    let bus_addr = bus_line.strip_prefix("bus tcp:").expect(&bus_line);
    assert!(
        control_line.starts_with("control 127.0.0.1:"),
        "{control_line}"
    );

    let mut stream = TcpStream::connect(bus_addr).await.unwrap();
    stream.write_all(&hex("02 F0 32 03 27")).await.unwrap();
    let mut replies = [0u8; 18];
    tokio::time::timeout(TEST_WAIT_MAX, stream.read_exact(&mut replies))
        .await
        .unwrap()
        .unwrap();
    let expected = hex("02 00 36 FF FF FF FF 03 37 02 10 36 FF FF FF FF 03 47");
    assert_eq!(replies.to_vec(), expected);
    child.start_kill().unwrap();
}

#[tokio::test]
async fn bus_cli_reads_unlocks_and_sets_the_pulse() {
    let (sim, uri) = tcp_sim(2).await;
    let scan = run_bus(&uri, &["scan"], "").await;
    let (out, err) = text(&scan);
    assert!(scan.status.success(), "{err}");
    assert!(
        out.contains("2 board(s) found") && out.contains("line: tcp 127.0.0.1:"),
        "{out}"
    );

    let unlock = run_bus(
        &uri,
        &["unlock", "--board", "1", "--lock", "2", "--yes"],
        "",
    )
    .await;
    assert!(unlock.status.success(), "{:?}", text(&unlock));
    assert!(text(&unlock).0.contains("board 1 lock 2: opened"));

    let status = run_bus(&uri, &["status", "--board", "1"], "").await;
    let (out, _) = text(&status);
    assert!(out.starts_with("BOARD  LOCK  HOOK     CART"), "{out}");
    assert!(out.contains("1      2     open     present"), "{out}");
    assert!(out.contains("1      3     latched  present"), "{out}");
    assert_eq!(out.lines().count(), 17);

    let set = run_bus(&uri, &["pulse", "set", "800"], "").await;
    assert!(set.status.success(), "{:?}", text(&set));
    let get = run_bus(&uri, &["pulse", "get", "--board", "1"], "").await;
    assert_eq!(text(&get).0.trim(), "board 1: unlock pulse 800 ms");
    drop(sim);
}

#[tokio::test]
async fn bus_cli_refuses_without_confirmation_and_fails_clearly() {
    let (sim, uri) = tcp_sim(1).await;
    let refused = run_bus(&uri, &["unlock", "--board", "0", "--lock", "1"], "no\n").await;
    assert!(!refused.status.success());
    assert!(
        text(&refused).1.contains("not confirmed; nothing was sent"),
        "{:?}",
        text(&refused)
    );
    let closed = run_bus(&uri, &["unlock", "--board", "0", "--lock", "1"], "").await;
    assert!(
        text(&closed).1.contains("pass --yes"),
        "{:?}",
        text(&closed)
    );

    control(&sim, "/fault", r#"{"kind":"jam","board":0,"lock":1}"#).await;
    let jammed = run_bus(&uri, &["unlock", "--board", "0", "--lock", "1"], "yes\n").await;
    assert!(!jammed.status.success());
    assert!(
        text(&jammed).1.contains("did not open"),
        "{:?}",
        text(&jammed)
    );

    let missing = run_bus(&uri, &["status", "--board", "4"], "").await;
    assert!(!missing.status.success());
    let (_, err) = text(&missing);
    assert!(
        err.contains("error: board 4 did not answer status after 3 tries on tcp"),
        "{err}"
    );

    let nowhere = run_bus("tcp:127.0.0.1:1", &["scan"], "").await;
    assert!(!nowhere.status.success());
    assert!(
        text(&nowhere).1.contains("cannot open bus tcp:127.0.0.1:1"),
        "{:?}",
        text(&nowhere)
    );
}

#[tokio::test]
async fn bus_cli_scans_a_pty_bus_and_reports_the_baud() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("cu16");
    let options = SimOptions {
        boards: 3,
        listen: Listen::Pty(link.clone()),
        ..SimOptions::default()
    };
    let _sim = start_sim(options).await;
    let scan = run_bus(&format!("pty:{}", link.display()), &["scan"], "").await;
    let (out, err) = text(&scan);
    assert!(scan.status.success(), "{err}");
    assert!(
        out.contains("at 19200 baud") && out.contains("3 board(s) found"),
        "{out}"
    );
}
