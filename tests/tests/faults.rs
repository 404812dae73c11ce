//! Nothing lost: the real host binary against a loopback replay relay and a Tansu broker, with
//! faults injected mid-stream. Each test checks that the topic ends up holding every expected
//! event at least once, and reports the events expected, delivered and duplicated. The last test
//! starts the host with no broker at all.
//!
//! The stream is the 150-frame relay capture followed by generated commits, each with a distinct
//! rkey, so that every event on the topic can be matched to exactly one expected event.

use std::time::{Duration, Instant};

use atkafka_integration_tests::host::{metric_value, HostProcess};
use atkafka_integration_tests::replay::ReplayOptions;
use atkafka_integration_tests::scenario::{capture_stream, summaries, tally, Bench};
use atkafka_integration_tests::synthetic::{error_frame, info_frame};

const TOPIC: &str = "firehose";
const GENERATED_FRAMES: i64 = 2000;
/// The host flags of the single tenant these tests run.
const TENANT_ARGS: [&str; 4] = ["--output-topic", TOPIC, "--topic-partitions", "3"];

fn frames_interval(frames: Vec<Vec<u8>>, interval: Duration) -> ReplayOptions {
    ReplayOptions { frames, frame_interval: Some(interval), ..ReplayOptions::default() }
}

/// Waits up to 30 s until the host has acknowledged every event up to `seq`.
fn wait_for_acknowledged(bench: &Bench, host: &HostProcess, seq: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_value(&bench.metrics(), "atkafka_cursor_seq").is_none_or(|cursor| cursor < seq as f64) {
        assert!(Instant::now() < deadline, "seq {seq} not acknowledged; log:\n{}", host.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to the broker the bench started (SIGSTOP pauses it, SIGCONT resumes it).
fn signal_broker(bench: &Bench, signal: i32) {
    // SAFETY: `kill` has no memory-safety preconditions; the PID is the broker this test started.
    unsafe { libc::kill(bench.broker.pid() as i32, signal) };
}

#[test]
fn relay_dropping_the_connection_is_resumed_with_cursor() {
    let Some(stream) = capture_stream(GENERATED_FRAMES) else { return };
    let options = ReplayOptions { frames: stream.frames.clone(), close_after: Some(300), ..ReplayOptions::default() };
    let bench = Bench::new(options, &TENANT_ARGS);
    let mut host = bench.start_host();
    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(90));

    let requests = bench.relay.requests();
    assert!(requests.len() >= 7, "expected a reconnect every 300 frames, saw {requests:?}");
    assert!(!requests[0].contains("cursor="), "the first connection of a fresh host asks for the live stream");
    let mut previous = 0;
    for request in &requests[1..] {
        let cursor: i64 = request.split("cursor=").nth(1).expect("reconnects carry ?cursor=").parse().unwrap();
        assert!(cursor > previous, "cursor {cursor} after {previous}");
        previous = cursor;
    }
    let reconnects = metric_value(&bench.metrics(), "atkafka_relay_reconnects{cause=\"closed\"}");
    assert!(reconnects.is_some_and(|count| count >= 7.0), "reconnects by cause: {reconnects:?}");

    let records = bench.consume(TOPIC, &stream.expected);
    let tally = tally("relay drops every 300 frames", &stream.expected, &records);
    assert_eq!(tally.duplicated, 0, "resuming from the last seq decoded repeats nothing");
    assert!(host.terminate(Duration::from_secs(30)).success());
}

#[test]
fn host_killed_mid_stream_resumes_from_its_cursor_file() {
    let Some(stream) = capture_stream(GENERATED_FRAMES) else { return };
    let bench = Bench::new(frames_interval(stream.frames.clone(), Duration::from_millis(1)), &TENANT_ARGS);
    let host = bench.start_host();
    // Wait until part of the stream is acknowledged, then kill without warning.
    let deadline = Instant::now() + Duration::from_secs(30);
    while bench.stored_cursor().is_none_or(|seq| seq < stream.first_seq + 300) {
        assert!(Instant::now() < deadline, "no cursor stored; log:\n{}", host.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Not right after a cursor write: let some acknowledged events run ahead of the stored cursor.
    std::thread::sleep(Duration::from_millis(60));
    host.signal(libc::SIGKILL);
    drop(host);
    let stored = bench.stored_cursor().expect("a cursor was stored before the kill");
    assert!(stored < stream.last_seq, "the kill came after the stream ended (cursor {stored})");

    let mut host = bench.start_host();
    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(90));
    let requests = bench.relay.requests();
    assert!(
        requests.iter().any(|request| request.ends_with(&format!("cursor={stored}"))),
        "no request resumed from the stored cursor {stored}: {requests:?}"
    );
    let records = bench.consume(TOPIC, &stream.expected);
    tally("SIGKILL mid-stream, restart", &stream.expected, &records);
    assert!(host.terminate(Duration::from_secs(30)).success());
}

#[test]
fn broker_paused_for_thirty_seconds_costs_no_events() {
    let Some(stream) = capture_stream(GENERATED_FRAMES) else { return };
    let bench = Bench::new(frames_interval(stream.frames.clone(), Duration::from_millis(2)), &TENANT_ARGS);
    let mut host = bench.start_host();
    wait_for_acknowledged(&bench, &host, stream.first_seq + 200);
    signal_broker(&bench, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(30));
    let paused_cursor = metric_value(&bench.metrics(), "atkafka_cursor_seq").unwrap();
    signal_broker(&bench, libc::SIGCONT);
    assert!(paused_cursor < stream.last_seq as f64, "the stream ended before the pause mattered");

    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(120));
    let records = bench.consume(TOPIC, &stream.expected);
    tally("broker paused 30 s", &stream.expected, &records);
    let failed = metric_value(&bench.metrics(), "atkafka_produced_events{status=\"failed\"}");
    assert_eq!(failed, Some(0.0), "no delivery failed");
    assert!(host.terminate(Duration::from_secs(30)).success());
}

#[test]
fn failed_delivery_stops_the_host() {
    let Some(stream) = capture_stream(GENERATED_FRAMES) else { return };
    let mut args = TENANT_ARGS.to_vec();
    args.extend(["--kafka-property", "message.timeout.ms=2000"]);
    let bench = Bench::new(frames_interval(stream.frames.clone(), Duration::from_millis(2)), &args);
    let mut host = bench.start_host();
    wait_for_acknowledged(&bench, &host, stream.first_seq + 200);
    // Messages wait for the paused broker past their 2 s timeout, so their deliveries fail.
    signal_broker(&bench, libc::SIGSTOP);
    let status = host.wait_for_exit(Duration::from_secs(90));
    signal_broker(&bench, libc::SIGCONT);
    let status = status.unwrap_or_else(|| panic!("the host went on after failed deliveries; log:\n{}", host.log()));
    assert!(!status.success(), "a failed delivery must stop the host with an error; log:\n{}", host.log());
    assert!(host.log().contains("delivery to topic `firehose` failed"), "log:\n{}", host.log());
    let stored = bench.stored_cursor().expect("the cursor is written at shutdown");
    assert!(stored < stream.last_seq, "the stream ended before the deliveries failed");
    drop(host);

    // The restart produces everything after the stored cursor, the failed events included.
    let mut host = bench.start_host();
    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(120));
    let records = bench.consume(TOPIC, &stream.expected);
    tally("deliveries failed, restart", &stream.expected, &records);
    assert!(host.terminate(Duration::from_secs(30)).success());
}

#[test]
fn sigterm_mid_stream_drains_and_restart_completes() {
    let Some(stream) = capture_stream(GENERATED_FRAMES) else { return };
    let bench = Bench::new(frames_interval(stream.frames.clone(), Duration::from_millis(1)), &TENANT_ARGS);
    let mut host = bench.start_host();
    wait_for_acknowledged(&bench, &host, stream.first_seq + 300);
    let status = host.terminate(Duration::from_secs(40));
    assert!(status.success(), "SIGTERM exit status {status}; log:\n{}", host.log());
    let stored = bench.stored_cursor().expect("the cursor is written at shutdown");
    assert!(stored < stream.last_seq, "the stream ended before SIGTERM");
    drop(host);

    let mut host = bench.start_host();
    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(90));
    let records = bench.consume(TOPIC, &stream.expected);
    let tally = tally("SIGTERM mid-stream, restart", &stream.expected, &records);
    assert_eq!(tally.duplicated, 0, "a clean shutdown stores the cursor of everything it delivered");
    assert!(host.terminate(Duration::from_secs(30)).success());
}

#[test]
fn bad_frames_between_good_ones_are_skipped_and_counted() {
    let Some(stream) = capture_stream(0) else { return };
    let mut frames = Vec::new();
    for (index, frame) in stream.frames.iter().enumerate() {
        frames.push(frame.clone());
        match index {
            30 => frames.push(error_frame("ConsumerTooSlow", "stream consumer too slow")),
            60 => frames.push(info_frame("OutdatedCursor", "requested cursor exceeded limit")),
            90 => frames.push((0..2 * 1024 * 1024).map(|i: usize| (i * 31 % 251) as u8).collect()),
            100 => frames.push(b"\xa2\x62op\x01garbage that is not CBOR".to_vec()),
            110 => frames.push(frame[..frame.len() / 2].to_vec()),
            _ => {}
        }
    }
    let options = ReplayOptions { frames, close_after_error_frames: true, ..ReplayOptions::default() };
    let bench = Bench::new(options, &[&TENANT_ARGS[..], &["--max-frame-bytes", "1048576"]].concat());
    let mut host = bench.start_host();
    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(60));

    let records = bench.consume(TOPIC, &stream.expected);
    tally("bad frames between good ones", &stream.expected, &records);
    let (_, infos) = summaries(&records);
    assert_eq!(infos.len(), 1, "one info message: {infos:?}");
    assert_eq!(infos[0]["info"]["name"], "OutdatedCursor");

    let metrics = bench.metrics();
    let value = |sample: &str| metric_value(&metrics, sample).unwrap_or_else(|| panic!("{sample} missing"));
    assert_eq!(value("atkafka_skipped{reason=\"frame_too_large\"}"), 1.0);
    assert_eq!(value("atkafka_skipped{reason=\"frame_undecodable\"}"), 2.0);
    assert_eq!(value("atkafka_error_frames{error=\"ConsumerTooSlow\"}"), 1.0);
    assert!(value("atkafka_relay_reconnects{cause=\"closed\"}") >= 1.0);
    assert_eq!(bench.relay.requests().len(), 2, "one reconnect after ConsumerTooSlow");
    assert!(host.terminate(Duration::from_secs(30)).success());
}

#[test]
fn future_cursor_stops_the_host_with_a_clear_error() {
    let Some(stream) = capture_stream(0) else { return };
    let options = ReplayOptions { frames: stream.frames.clone(), head_seq: Some(stream.last_seq), ..ReplayOptions::default() };
    let cursor = (stream.last_seq + 1000).to_string();
    let bench = Bench::new(options, &[&TENANT_ARGS[..], &["--cursor", cursor.as_str()]].concat());
    let mut host = bench.start_host();
    let status = host.wait_for_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("still running; log:\n{}", host.log()));
    assert!(!status.success(), "a cursor ahead of the relay must not look like success");
    let log = host.log();
    assert!(log.contains("FutureCursor"), "the log names the error frame:\n{log}");
    assert!(bench.relay.requests().len() <= 2, "no reconnect loop: {:?}", bench.relay.requests());
}

#[test]
fn unreachable_broker_wait_ends_on_sigterm() {
    // A port nothing listens on: bound, then released.
    let closed_port = atkafka_integration_tests::broker::free_port();
    let args: Vec<String> = ["--relay-host", "ws://127.0.0.1:1", "--bootstrap-servers", &format!("127.0.0.1:{closed_port}")]
        .into_iter()
        .chain(["--output-topic", TOPIC, "--metrics-listen-address", "127.0.0.1:0"])
        .map(str::to_owned)
        .collect();
    let mut host = HostProcess::start(&args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !host.log().contains("still waiting for the Kafka brokers") {
        assert!(Instant::now() < deadline, "no warning about the brokers; log:\n{}", host.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    host.signal(libc::SIGTERM);
    let status = host.wait_for_exit(Duration::from_secs(10));
    let log = host.log();
    assert_eq!(status.and_then(|status| status.code()), Some(0), "exit after SIGTERM; log:\n{log}");
    assert!(log.contains("shutting down before Kafka was ready"), "log:\n{log}");
}

#[test]
fn outdated_cursor_jump_is_no_gap() {
    let Some(stream) = capture_stream(0) else { return };
    let options = ReplayOptions { frames: stream.frames.clone(), report_outdated_cursor: true, ..ReplayOptions::default() };
    let bench = Bench::new(options, &[&TENANT_ARGS[..], &["--cursor", "1000"]].concat());
    let mut host = bench.start_host();
    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(60));
    let log = host.log();
    assert!(log.contains("the relay reports an outdated cursor"), "log:\n{log}");
    let gaps = metric_value(&bench.metrics(), "atkafka_seq_gaps");
    assert_eq!(gaps, Some(0.0), "the relay's jump from cursor 1000 to its oldest event is no gap; log:\n{log}");
    assert!(host.terminate(Duration::from_secs(30)).success());
}
