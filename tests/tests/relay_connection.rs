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

/// A certificate authority and a certificate it signed for 127.0.0.1, as PEM and DER.
struct TestCertificates {
    ca_pem: String,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn test_certificates() -> TestCertificates {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    server_params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    TestCertificates {
        ca_pem: ca.pem(),
        server_chain: vec![server.der().clone()],
        server_key: rustls::pki_types::PrivatePkcs8KeyDer::from(server_key.serialize_der()).into(),
    }
}

/// Starts a wss:// relay on 127.0.0.1 that sends `frames` to each connection over TLS with the
/// given certificate. Returns the runtime that runs it and its address.
fn start_tls_relay(certificates: &TestCertificates, frames: Vec<Vec<u8>>) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    // ring, like the host's client.
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificates.server_chain.clone(), certificates.server_key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, frames) = (acceptor.clone(), frames.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let Ok(mut socket) = tokio_tungstenite::accept_async(tls).await else { return };
                for frame in frames {
                    if socket.send(Message::Binary(frame.into())).await.is_err() {
                        return;
                    }
                }
                while let Some(Ok(_)) = socket.next().await {}
            });
        }
    });
    (runtime, address)
}

/// The default relay is wss://, so TLS is tested end to end. With the relay's certificate
/// authority trusted through --relay-ca-file, frames arrive. Without it, the certificate is
/// rejected.
#[test]
fn wss_relay_needs_a_trusted_certificate() {
    const FRAMES: i64 = 5;
    let broker = Broker::start();
    let certificates = test_certificates();
    let frames: Vec<Vec<u8>> = (1..=FRAMES).map(|seq| post_commit(seq, 3).frame).collect();
    let (_relay, relay_address) = start_tls_relay(&certificates, frames);
    let relay_url = format!("wss://{relay_address}");

    let (mut untrusting, metrics_address) = start_host(&broker, &relay_url);
    let failed = wait_for_metric(&metrics_address, "atkafka_relay_reconnects{cause=\"connect_failed\"}", 1.0);
    let log = untrusting.log();
    assert!(failed >= 1.0, "the untrusted certificate was accepted; log:\n{log}");
    assert!(log.contains("certificate"), "the failure does not name the certificate; log:\n{log}");
    untrusting.terminate(Duration::from_secs(30));

    let directory = std::env::temp_dir().join(format!("atkafka-tls-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&directory).unwrap();
    let ca_file = directory.join("ca.pem");
    std::fs::write(&ca_file, &certificates.ca_pem).unwrap();
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = ["--relay-host", &relay_url, "--bootstrap-servers", &broker.address, "--output-topic", "firehose"]
        .iter()
        .map(|arg| arg.to_string())
        .chain(["--metrics-listen-address".to_owned(), metrics_address.clone()])
        .chain(["--relay-ca-file".to_owned(), ca_file.display().to_string()])
        .collect();
    let mut trusting = HostProcess::start(&args);
    let commits = wait_for_metric(&metrics_address, "atkafka_frames{type=\"commit\"}", FRAMES as f64);
    let log = trusting.log();
    assert_eq!(commits, FRAMES as f64, "commit frames decoded over TLS; log:\n{log}");
    trusting.terminate(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(directory);
}

/// --relay-ca-file is checked at start: it needs a wss:// relay and a readable PEM certificate.
#[test]
fn relay_ca_file_is_checked_at_start() {
    let directory = std::env::temp_dir().join(format!("atkafka-ca-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&directory).unwrap();
    let empty = directory.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let missing = directory.join("missing.pem");
    let cases = [
        ("ws://127.0.0.1:1", empty.clone(), "--relay-host"),
        ("wss://127.0.0.1:1", missing.clone(), "missing.pem"),
        ("wss://127.0.0.1:1", empty.clone(), "no PEM certificate"),
    ];
    for (relay_host, ca_file, expected) in cases {
        let output = std::process::Command::new(atkafka_integration_tests::host::binary())
            .args(["--relay-host", relay_host, "--bootstrap-servers", "127.0.0.1:1", "--output-topic", "t", "--relay-ca-file"])
            .arg(&ca_file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{relay_host} {}: {stderr}", ca_file.display());
        assert!(stderr.contains("--relay-ca-file"), "the error names the flag: {stderr}");
        assert!(stderr.contains(expected), "the error names `{expected}`: {stderr}");
    }
    let _ = std::fs::remove_dir_all(directory);
}
