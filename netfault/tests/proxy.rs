//! The fault proxy over real loopback sockets: forwarding both ways, black hole and heal, lossy
//! mode's loss and duplication, and the HTTP control API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use cartwise_netfault::{Mode, NetFault, NetFaultHandle, control};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// An upstream that answers every datagram with `echo:` + the datagram.
async fn echo_upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let (len, from) = socket.recv_from(&mut buf).await.unwrap();
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..len]);
            socket.send_to(&reply, from).await.unwrap();
        }
    });
    addr
}

async fn proxy() -> NetFaultHandle {
    let upstream = echo_upstream().await;
    NetFault::start("127.0.0.1:0".parse().unwrap(), upstream, 7)
        .await
        .unwrap()
}

async fn client(proxy: &NetFaultHandle) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(proxy.local_addr()).await.unwrap();
    socket
}

/// Receives one datagram, or `None` if nothing comes within `wait`.
async fn recv(socket: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
        Ok(Ok(len)) => Some(buf[..len].to_vec()),
        _ => None,
    }
}

const ANSWER: Duration = Duration::from_secs(5);
const SILENCE: Duration = Duration::from_millis(300);

#[tokio::test]
async fn pass_forwards_both_ways_per_client() {
    let proxy = proxy().await;
    let a = client(&proxy).await;
    let b = client(&proxy).await;
    a.send(b"from-a").await.unwrap();
    b.send(b"from-b").await.unwrap();
    assert_eq!(recv(&a, ANSWER).await.unwrap(), b"echo:from-a");
    assert_eq!(recv(&b, ANSWER).await.unwrap(), b"echo:from-b");
    let stats = proxy.stats();
    assert_eq!(stats.mode, Mode::Pass);
    assert_eq!(stats.to_upstream.passed, 2);
    assert_eq!(stats.to_client.passed, 2);
    assert_eq!(stats.flows, 2, "one upstream socket per client");
}

#[tokio::test]
async fn blackhole_drops_both_ways_and_heal_resumes_the_same_flow() {
    let proxy = proxy().await;
    let a = client(&proxy).await;
    a.send(b"one").await.unwrap();
    assert_eq!(recv(&a, ANSWER).await.unwrap(), b"echo:one");

    proxy.block();
    for _ in 0..5 {
        a.send(b"lost").await.unwrap();
    }
    assert_eq!(
        recv(&a, SILENCE).await,
        None,
        "nothing crosses a black hole"
    );
    let stats = proxy.stats();
    assert_eq!(stats.mode, Mode::Blackhole);
    assert_eq!(stats.to_upstream.dropped, 5);
    assert_eq!(stats.to_upstream.passed, 1);

    proxy.heal();
    a.send(b"two").await.unwrap();
    assert_eq!(recv(&a, ANSWER).await.unwrap(), b"echo:two");
    assert_eq!(proxy.stats().flows, 1, "the flow survived the outage");
}

#[tokio::test]
async fn lossy_mode_loses_and_duplicates_as_told() {
    let proxy = proxy().await;
    let a = client(&proxy).await;
    proxy
        .set_mode(Mode::Lossy {
            loss: 1.0,
            duplicate: 0.0,
            delay_ms: 0,
            jitter_ms: 0,
        })
        .unwrap();
    a.send(b"x").await.unwrap();
    assert_eq!(recv(&a, SILENCE).await, None);
    assert_eq!(proxy.stats().to_upstream.dropped, 1);

    // Every datagram twice each way: one request, four answers.
    proxy
        .set_mode(Mode::Lossy {
            loss: 0.0,
            duplicate: 1.0,
            delay_ms: 20,
            jitter_ms: 10,
        })
        .unwrap();
    a.send(b"y").await.unwrap();
    for _ in 0..4 {
        assert_eq!(recv(&a, ANSWER).await.unwrap(), b"echo:y");
    }
    assert_eq!(recv(&a, SILENCE).await, None);
    let stats = proxy.stats();
    assert_eq!(stats.to_upstream.duplicated, 1);
    assert_eq!(stats.to_client.duplicated, 2);

    let refused = proxy.set_mode(Mode::Lossy {
        loss: 1.5,
        duplicate: 0.0,
        delay_ms: 0,
        jitter_ms: 0,
    });
    assert!(refused.unwrap_err().to_string().contains("between 0 and 1"));
}

#[tokio::test]
async fn lossy_mode_is_repeatable_for_a_seed() {
    async fn dropped_pattern(seed: u64) -> Vec<bool> {
        let upstream = echo_upstream().await;
        let proxy = NetFault::start("127.0.0.1:0".parse().unwrap(), upstream, seed)
            .await
            .unwrap();
        proxy
            .set_mode(Mode::Lossy {
                loss: 0.5,
                duplicate: 0.0,
                delay_ms: 0,
                jitter_ms: 0,
            })
            .unwrap();
        let a = client(&proxy).await;
        let mut pattern = Vec::new();
        for i in 0..20u8 {
            let before = proxy.stats().to_upstream.dropped;
            a.send(&[i]).await.unwrap();
            // Wait until the proxy has decided on this datagram.
            let decided = async {
                loop {
                    let stats = proxy.stats().to_upstream;
                    if stats.dropped + stats.passed > u64::from(i) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            };
            tokio::time::timeout(ANSWER, decided).await.unwrap();
            pattern.push(proxy.stats().to_upstream.dropped > before);
        }
        pattern
    }
    let first = dropped_pattern(42).await;
    assert_eq!(first, dropped_pattern(42).await);
    assert!(first.contains(&true) && first.contains(&false), "{first:?}");
}

async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test]
async fn control_api_blocks_heals_sets_mode_and_reports_state() {
    let proxy = proxy().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_addr = listener.local_addr().unwrap();
    tokio::spawn(control::serve(listener, proxy.clone()));
    let a = client(&proxy).await;

    let (status, body) = http(control_addr, "POST", "/block", "").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""mode":"blackhole""#), "{body}");
    a.send(b"lost").await.unwrap();
    assert_eq!(recv(&a, SILENCE).await, None);

    let (status, _) = http(control_addr, "POST", "/heal", "").await;
    assert_eq!(status, 200);
    a.send(b"back").await.unwrap();
    assert_eq!(recv(&a, ANSWER).await.unwrap(), b"echo:back");

    let (status, body) = http(
        control_addr,
        "POST",
        "/mode",
        r#"{"mode":"lossy","loss":0.25,"delay_ms":5}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        proxy.stats().mode,
        Mode::Lossy {
            loss: 0.25,
            duplicate: 0.0,
            delay_ms: 5,
            jitter_ms: 0
        }
    );
    let (status, _) = http(
        control_addr,
        "POST",
        "/mode",
        r#"{"mode":"lossy","loss":2}"#,
    )
    .await;
    assert_eq!(status, 422);
    let (status, _) = http(control_addr, "POST", "/mode", r#"{"mode":"sideways"}"#).await;
    assert_eq!(status, 422);

    let (status, body) = http(control_addr, "GET", "/state", "").await;
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["mode"]["mode"], "lossy");
    assert_eq!(state["to_upstream"]["dropped"], 1);
    assert_eq!(state["to_upstream"]["passed"], 1);
    assert_eq!(state["to_client"]["passed"], 1);
    assert_eq!(state["flows"], 1);
}
