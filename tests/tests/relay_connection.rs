//! The relay connection itself: the real host binary against loopback servers that are not a
//! working relay, and a Tansu broker.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use atkafka_integration_tests::broker::{free_port, Broker};
use atkafka_integration_tests::host::{http_get, metric_value, HostProcess};

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

    let metrics_address = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "--relay-host",
        &format!("wss://{relay_address}"),
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
    let mut host = HostProcess::start(&args);

    let deadline = Instant::now() + Duration::from_secs(30);
    let failed_attempts = loop {
        let metrics = http_get(&metrics_address, "/metrics").unwrap_or_default();
        let failed = metric_value(&metrics, "atkafka_relay_reconnects{cause=\"connect_failed\"}").unwrap_or(0.0);
        if failed >= 2.0 || Instant::now() > deadline {
            break failed;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = host.log();
    assert!(failed_attempts >= 2.0, "expected two failed TLS connections, saw {failed_attempts}; log:\n{log}");
    assert!(host.wait_for_exit(Duration::ZERO).is_none(), "the host exited; log:\n{log}");
    assert!(!log.contains("panicked"), "the host panicked; log:\n{log}");
    assert!(log.contains("failed to connect to wss://"), "no connection failure was logged; log:\n{log}");
    host.terminate(Duration::from_secs(30));
}
