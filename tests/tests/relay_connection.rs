//! The relay connection itself: the real host binary against loopback servers that are not the
//! replay relay, and a Tansu broker.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use atkafka_integration_tests::broker::{free_port, Broker};
use atkafka_integration_tests::host::{http_get, metric_value, HostProcess};
use atkafka_integration_tests::synthetic::post_commit;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Starts the host against `relay_url` with one tenant, and returns it with its metrics address.
fn start_host(broker: &Broker, relay_url: &str) -> (HostProcess, String) {
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "--relay-host",
        relay_url,
        "--bootstrap-servers",
        &broker.address,
        "--output-topic",
        "firehose",
        "--metrics-listen-address",
        &metrics_address,
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    (HostProcess::start(&args), metrics_address)
}

/// Waits up to 30 s until the host's metric `sample` reaches `target`, and returns its last value.
fn wait_for_metric(metrics_address: &str, sample: &str, target: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = http_get(metrics_address, "/metrics").unwrap_or_default();
        let value = metric_value(&metrics, sample).unwrap_or(0.0);
        if value >= target || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A wss:// relay that replies to the TLS handshake with plain HTTP. The host must set up TLS (which
/// needs a crypto provider), fail the handshake, log it and try again, rather than crash.
#[test]
fn wss_relay_without_tls_is_retried() {
    let broker = Broker::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(20) {
            let Ok(mut stream) = stream else { continue };
            let mut hello = [0u8; 512];
            let _ = stream.read(&mut hello);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });

    let (mut host, metrics_address) = start_host(&broker, &format!("wss://{relay_address}"));
    let failed_attempts = wait_for_metric(&metrics_address, "atkafka_relay_reconnects{cause=\"connect_failed\"}", 2.0);
    let log = host.log();
    assert!(failed_attempts >= 2.0, "expected two failed TLS connections, saw {failed_attempts}; log:\n{log}");
    assert!(host.wait_for_exit(Duration::ZERO).is_none(), "the host exited; log:\n{log}");
    assert!(!log.contains("panicked"), "the host panicked; log:\n{log}");
    assert!(log.contains("failed to connect to wss://"), "no connection failure was logged; log:\n{log}");
    host.terminate(Duration::from_secs(30));
}

/// A relay that pings the host and sends each frame in three fragments, as RFC 6455 allows.
#[test]
fn pings_are_answered_and_fragments_joined() {
    const FRAMES: i64 = 3;
    let broker = Broker::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let relay_address = listener.local_addr().unwrap();
    let (pong_sender, pongs) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        socket.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
        for seq in 1..=FRAMES {
            let frame = post_commit(seq, 3).frame;
            let third = frame.len() / 3;
            let pieces = [&frame[..third], &frame[third..2 * third], &frame[2 * third..]];
            for (index, piece) in pieces.into_iter().enumerate() {
                let opcode = OpCode::Data(if index == 0 { Data::Binary } else { Data::Continue });
                socket.send(Message::Frame(Frame::message(piece.to_vec(), opcode, index == 2))).await.unwrap();
            }
        }
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Pong(payload) = message {
                let _ = pong_sender.send(payload.to_vec());
            }
        }
    });

    let (mut host, metrics_address) = start_host(&broker, &format!("ws://{relay_address}"));
    let commits = wait_for_metric(&metrics_address, "atkafka_frames{type=\"commit\"}", FRAMES as f64);
    let log = host.log();
    assert_eq!(commits, FRAMES as f64, "commit frames decoded; log:\n{log}");
    let metrics = http_get(&metrics_address, "/metrics").unwrap_or_default();
    let undecodable = metric_value(&metrics, "atkafka_skipped{reason=\"frame_undecodable\"}").unwrap_or(0.0);
    assert_eq!(undecodable, 0.0, "a joined frame did not decode; log:\n{log}");
    let pong = pongs.recv_timeout(Duration::from_secs(10)).expect("a pong");
    assert_eq!(pong, b"are you there");
    host.terminate(Duration::from_secs(30));
}
