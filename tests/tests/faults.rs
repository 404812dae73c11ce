//! Nothing lost: the real host binary against a loopback replay relay and a Tansu broker, with
//! faults injected mid-stream. Each test checks that the topic ends up holding every expected
//! event at least once, and reports the events expected, delivered and duplicated.
//!
//! The stream is the 150-frame relay capture followed by generated commits, each with a distinct
//! rkey, so that every event on the topic can be matched to exactly one expected event.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use atkafka_integration_tests::broker::{free_port, Broker};
use atkafka_integration_tests::consume::{consume_until, Record};
use atkafka_integration_tests::expected::{compare, from_jetstream, from_standard, Summary};
use atkafka_integration_tests::fixtures::{fixture, read_capture, read_jsonl};
use atkafka_integration_tests::host::{http_get, metric_value, HostProcess};
use atkafka_integration_tests::replay::{ReplayOptions, ReplayRelay};
use atkafka_integration_tests::synthetic::{error_frame, info_frame, post_commit};
use serde_json::Value;

const TOPIC: &str = "firehose";
const GENERATED_FRAMES: i64 = 2000;

/// The frames a relay replays and the events they must produce.
struct Stream {
    frames: Vec<Vec<u8>>,
    expected: Vec<Summary>,
    first_seq: i64,
    last_seq: i64,
}

/// The capture followed by `generated` generated commits with the seqs after it. `None` when the
/// fixtures are missing.
fn capture_stream(generated: i64) -> Option<Stream> {
    let frames = read_capture(&fixture("relay-capture/frames.bin.zst")?).unwrap();
    let jetstream = read_jsonl(&fixture("relay-capture/expected_v1.jsonl")?).unwrap();
    let mut expected: Vec<Summary> = jetstream.iter().map(|line| from_jetstream(line).unwrap()).collect();
    let first_seq = atkafka_host::firehose::frame::decode_frame(&frames[0]).unwrap().seq().unwrap();
    let capture_last = atkafka_host::firehose::frame::decode_frame(frames.last().unwrap()).unwrap().seq().unwrap();
    let mut stream = Stream { frames, expected: Vec::new(), first_seq, last_seq: capture_last };
    for seq in capture_last + 1..=capture_last + generated {
        let commit = post_commit(seq, 50);
        stream.frames.push(commit.frame);
        expected.push(commit.summary);
        stream.last_seq = seq;
    }
    stream.expected = expected;
    Some(stream)
}

/// A broker, a relay and the host's settings, shared by the fault tests.
struct Bench {
    broker: Broker,
    relay: ReplayRelay,
    cursor_file: PathBuf,
    metrics_address: String,
    extra_args: Vec<String>,
}

impl Bench {
    fn new(relay: ReplayOptions, extra_args: &[&str]) -> Bench {
        let broker = Broker::start();
        let relay = ReplayRelay::start_with(relay);
        let directory = std::env::temp_dir().join(format!("atkafka-faults-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&directory).unwrap();
        Bench {
            broker,
            relay,
            cursor_file: directory.join("cursor"),
            metrics_address: format!("127.0.0.1:{}", free_port()),
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
        }
    }

    fn start_host(&self) -> HostProcess {
        let mut args: Vec<String> = [
            "--relay-host",
            &self.relay.url(),
            "--bootstrap-servers",
            &self.broker.address,
            "--output-topic",
            TOPIC,
            "--topic-partitions",
            "3",
            "--metrics-listen-address",
            &self.metrics_address,
            "--cursor-file",
            self.cursor_file.to_str().unwrap(),
            "--cursor-flush-interval-ms",
            "100",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        args.extend(self.extra_args.iter().cloned());
        HostProcess::start(&args)
    }

    fn metrics(&self) -> String {
        http_get(&self.metrics_address, "/metrics").unwrap_or_default()
    }

    /// Waits until the host's cursor reaches `seq`, that is until every event up to it was
    /// acknowledged.
    fn wait_for_cursor(&self, host: &HostProcess, seq: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let cursor = metric_value(&self.metrics(), "atkafka_cursor_seq");
            if cursor == Some(seq as f64) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cursor is at {cursor:?}, not {seq}, after {timeout:?}; host log:\n{}",
                host.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stored_cursor(&self) -> Option<i64> {
        std::fs::read_to_string(&self.cursor_file).ok().and_then(|text| text.trim().parse().ok())
    }

    /// Reads the whole topic once every expected event is there (or the timeout passed).
    fn consume(&self, expected: &[Summary]) -> Vec<Record> {
        let wanted = expected.len();
        consume_until(&self.broker.address, TOPIC, Duration::from_secs(60), Duration::from_secs(2), |records| {
            distinct_events(records) >= wanted
        })
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(directory) = self.cursor_file.parent() {
            let _ = std::fs::remove_dir_all(directory);
        }
    }
}

/// Splits consumed messages into event summaries and info messages.
fn summaries(records: &[Record]) -> (Vec<Summary>, Vec<Value>) {
    let mut events = Vec::new();
    let mut infos = Vec::new();
    for record in records {
        let value: Value = serde_json::from_slice(&record.value).expect("messages are JSON");
        if value.get("info").is_some() {
            infos.push(value);
        } else {
            events.push(from_standard(&value).unwrap());
        }
    }
    (events, infos)
}

fn distinct_events(records: &[Record]) -> usize {
    let (events, _) = summaries(records);
    events.iter().map(|event| format!("{event:?}")).collect::<std::collections::HashSet<_>>().len()
}

/// Counts of one fault run.
struct Tally {
    expected: usize,
    delivered: usize,
    duplicated: usize,
}

/// Checks that every expected event is on the topic exactly as expected, allowing duplicates,
/// and reports the counts.
fn tally(fault: &str, expected: &[Summary], records: &[Record]) -> Tally {
    let (events, _) = summaries(records);
    let mut seen: HashMap<String, (usize, Summary)> = HashMap::new();
    for event in events {
        seen.entry(format!("{event:?}")).or_insert((0, event)).0 += 1;
    }
    let distinct: Vec<Summary> = seen.values().map(|(_, event)| event.clone()).collect();
    let duplicated: usize = seen.values().map(|(count, _)| count - 1).sum();
    let tally = Tally { expected: expected.len(), delivered: distinct.len(), duplicated };
    println!(
        "{fault}: events expected {}, delivered {}, duplicated {}",
        tally.expected, tally.delivered, tally.duplicated
    );
    if let Err(report) = compare(expected, &distinct) {
        panic!("{fault}: {report}");
    }
    tally
}

fn frames_interval(frames: Vec<Vec<u8>>, interval: Duration) -> ReplayOptions {
    ReplayOptions { frames, frame_interval: Some(interval), ..ReplayOptions::default() }
}

#[test]
fn relay_dropping_the_connection_is_resumed_with_cursor() {
    let Some(stream) = capture_stream(GENERATED_FRAMES) else { return };
    let options = ReplayOptions { frames: stream.frames.clone(), close_after: Some(300), ..ReplayOptions::default() };
    let bench = Bench::new(options, &[]);
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

    let records = bench.consume(&stream.expected);
    let tally = tally("relay drops every 300 frames", &stream.expected, &records);
    assert_eq!(tally.duplicated, 0, "resuming from the last seq decoded repeats nothing");
    assert!(host.terminate(Duration::from_secs(30)).success());
}

#[test]
fn host_killed_mid_stream_resumes_from_its_cursor_file() {
    let Some(stream) = capture_stream(GENERATED_FRAMES) else { return };
    let bench = Bench::new(frames_interval(stream.frames.clone(), Duration::from_millis(1)), &[]);
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
    let records = bench.consume(&stream.expected);
    tally("SIGKILL mid-stream, restart", &stream.expected, &records);
    assert!(host.terminate(Duration::from_secs(30)).success());
}

#[test]
fn broker_paused_for_thirty_seconds_costs_no_events() {
    let Some(stream) = capture_stream(GENERATED_FRAMES) else { return };
    let bench = Bench::new(frames_interval(stream.frames.clone(), Duration::from_millis(2)), &[]);
    let mut host = bench.start_host();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_value(&bench.metrics(), "atkafka_cursor_seq").is_none_or(|seq| seq < (stream.first_seq + 200) as f64) {
        assert!(Instant::now() < deadline, "nothing acknowledged; log:\n{}", host.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: `kill` has no memory-safety preconditions; the PID is the broker this test started.
    unsafe { libc::kill(bench.broker.pid() as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(30));
    let paused_cursor = metric_value(&bench.metrics(), "atkafka_cursor_seq").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(bench.broker.pid() as i32, libc::SIGCONT) };
    assert!(paused_cursor < stream.last_seq as f64, "the stream ended before the pause mattered");

    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(120));
    let records = bench.consume(&stream.expected);
    tally("broker paused 30 s", &stream.expected, &records);
    let failed = metric_value(&bench.metrics(), "atkafka_produced_events{status=\"failed\"}");
    assert_eq!(failed, Some(0.0), "no delivery failed");
    assert!(host.terminate(Duration::from_secs(30)).success());
}

#[test]
fn sigterm_mid_stream_drains_and_restart_completes() {
    let Some(stream) = capture_stream(GENERATED_FRAMES) else { return };
    let bench = Bench::new(frames_interval(stream.frames.clone(), Duration::from_millis(1)), &[]);
    let mut host = bench.start_host();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_value(&bench.metrics(), "atkafka_cursor_seq").is_none_or(|seq| seq < (stream.first_seq + 300) as f64) {
        assert!(Instant::now() < deadline, "nothing acknowledged; log:\n{}", host.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = host.terminate(Duration::from_secs(40));
    assert!(status.success(), "SIGTERM exit status {status}; log:\n{}", host.log());
    let stored = bench.stored_cursor().expect("the cursor is written at shutdown");
    assert!(stored < stream.last_seq, "the stream ended before SIGTERM");
    drop(host);

    let mut host = bench.start_host();
    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(90));
    let records = bench.consume(&stream.expected);
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
    let bench = Bench::new(options, &["--max-frame-bytes", "1048576"]);
    let mut host = bench.start_host();
    bench.wait_for_cursor(&host, stream.last_seq, Duration::from_secs(60));

    let records = bench.consume(&stream.expected);
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
    let bench = Bench::new(options, &["--cursor", &(stream.last_seq + 1000).to_string()]);
    let mut host = bench.start_host();
    let status = host.wait_for_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("still running; log:\n{}", host.log()));
    assert!(!status.success(), "a cursor ahead of the relay must not look like success");
    let log = host.log();
    assert!(log.contains("FutureCursor"), "the log names the error frame:\n{log}");
    assert!(bench.relay.requests().len() <= 2, "no reconnect loop: {:?}", bench.relay.requests());
}
