//! Scenarios shared by the end-to-end tests: a stream of real and generated frames with the
//! events it must produce, and a bench of broker, relay and host around it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::broker::{free_port, Broker};
use crate::consume::{consume_until, Record};
use crate::expected::{compare, from_jetstream, from_standard, Summary};
use crate::fixtures::{fixture, read_capture, read_jsonl};
use crate::host::{http_get, metric_value, HostProcess};
use crate::replay::{ReplayOptions, ReplayRelay};
use crate::synthetic::post_commit;

/// The frames a relay replays and the events they must produce.
pub struct Stream {
    pub frames: Vec<Vec<u8>>,
    pub expected: Vec<Summary>,
    pub first_seq: i64,
    pub last_seq: i64,
}

/// The capture followed by `generated` generated commits with the seqs after it. `None` when the
/// fixtures are missing.
pub fn capture_stream(generated: i64) -> Option<Stream> {
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
pub struct Bench {
    pub broker: Broker,
    pub relay: ReplayRelay,
    pub cursor_file: PathBuf,
    pub metrics_address: String,
    extra_args: Vec<String>,
}

impl Bench {
    /// Starts a broker and a relay; `extra_args` are the host flags beyond the relay, broker,
    /// metrics address and cursor file (for example `--output-topic` or `--config`).
    pub fn new(relay: ReplayOptions, extra_args: &[&str]) -> Bench {
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

    pub fn start_host(&self) -> HostProcess {
        let mut args: Vec<String> = [
            "--relay-host",
            &self.relay.url(),
            "--bootstrap-servers",
            &self.broker.address,
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

    pub fn metrics(&self) -> String {
        http_get(&self.metrics_address, "/metrics").unwrap_or_default()
    }

    /// Waits until the host's cursor reaches `seq`, that is until every event up to it was
    /// acknowledged.
    pub fn wait_for_cursor(&self, host: &HostProcess, seq: i64, timeout: Duration) {
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

    pub fn stored_cursor(&self) -> Option<i64> {
        std::fs::read_to_string(&self.cursor_file).ok().and_then(|text| text.trim().parse().ok())
    }

    /// Reads the whole of `topic` once every expected event is there (or the timeout passed).
    pub fn consume(&self, topic: &str, expected: &[Summary]) -> Vec<Record> {
        let wanted = expected.len();
        consume_until(&self.broker.address, topic, Duration::from_secs(60), Duration::from_secs(2), |records| {
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
pub fn summaries(records: &[Record]) -> (Vec<Summary>, Vec<Value>) {
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

pub fn distinct_events(records: &[Record]) -> usize {
    let (events, _) = summaries(records);
    events.iter().map(|event| format!("{event:?}")).collect::<std::collections::HashSet<_>>().len()
}

/// Counts of one fault run.
pub struct Tally {
    pub expected: usize,
    pub delivered: usize,
    pub duplicated: usize,
}

/// Checks that every expected event is on the topic exactly as expected, allowing duplicates,
/// and reports the counts.
pub fn tally(fault: &str, expected: &[Summary], records: &[Record]) -> Tally {
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
