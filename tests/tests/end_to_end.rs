//! The main job end to end: the real atkafka-host binary reads the 150-frame relay capture from a
//! loopback replay relay and produces into a real Kafka-protocol broker (Tansu); the topic must
//! then hold exactly the events Jetstream rendered for the same frames.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atkafka_integration_tests::broker::{free_port, Broker};
use atkafka_integration_tests::consume::{consume, Record};
use atkafka_integration_tests::expected::{compare, from_jetstream, from_standard, Summary};
use atkafka_integration_tests::fixture_or_skip;
use atkafka_integration_tests::fixtures::{read_capture, read_jsonl};
use atkafka_integration_tests::host::{http_get, metric_value, HostProcess};
use atkafka_integration_tests::replay::ReplayRelay;
use serde_json::Value;

const EXPECTED_MESSAGES: usize = 152;
const PARTITIONS: usize = 3;

/// What one run of the host against the capture left on the topic.
struct Run {
    records: Vec<Record>,
    metrics: String,
    started_at: SystemTime,
    finished_at: SystemTime,
}

/// Runs the host with `formatter_args` against the capture and returns the consumed topic.
/// Returns `None` when the fixtures are missing.
fn run_capture(formatter_args: &[&str]) -> Option<(Run, Vec<Summary>)> {
    let frames = atkafka_integration_tests::fixtures::fixture("relay-capture/frames.bin.zst")?;
    let expected = atkafka_integration_tests::fixtures::fixture("relay-capture/expected_v1.jsonl")?;
    let frames = read_capture(&frames).unwrap();
    let expected: Vec<Summary> = read_jsonl(&expected).unwrap().iter().map(|line| from_jetstream(line).unwrap()).collect();

    let broker = Broker::start();
    let relay = ReplayRelay::start(frames);
    let topic = "firehose";
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<String> = [
        "--relay-host",
        &relay.url(),
        "--bootstrap-servers",
        &broker.address,
        "--output-topic",
        topic,
        "--topic-partitions",
        &PARTITIONS.to_string(),
        "--metrics-listen-address",
        &metrics_address,
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    args.extend(formatter_args.iter().map(|arg| arg.to_string()));

    let started_at = SystemTime::now();
    let mut host = HostProcess::start(&args);
    let records = consume(&broker.address, topic, EXPECTED_MESSAGES, Duration::from_secs(60), Duration::from_secs(2));
    let finished_at = SystemTime::now();
    let metrics = http_get(&metrics_address, "/metrics").unwrap_or_default();

    let status = host.terminate(Duration::from_secs(30));
    let log = host.log();
    assert!(status.success(), "the host exited with {status} after SIGTERM; log:\n{log}");
    assert_eq!(records.len(), EXPECTED_MESSAGES, "messages on the topic; host log:\n{log}");
    assert_eq!(relay.requests().len(), 1, "the host connected more than once: {:?}", relay.requests());
    Some((Run { records, metrics, started_at, finished_at }, expected))
}

fn parse(record: &Record) -> Value {
    serde_json::from_slice(&record.value)
        .unwrap_or_else(|error| panic!("message is not JSON ({error}): {}", String::from_utf8_lossy(&record.value)))
}

/// Checks that every message is keyed by its DID and that one DID's messages stay on one partition.
fn check_keys_and_order(run: &Run, standard_events: &[Value]) {
    let mut partitions_of_did: HashMap<String, HashSet<i32>> = HashMap::new();
    for (record, event) in run.records.iter().zip(standard_events) {
        let did = event["did"].as_str().unwrap();
        assert_eq!(record.key.as_deref(), Some(did.as_bytes()), "message key is not the DID");
        partitions_of_did.entry(did.to_owned()).or_default().insert(record.partition);
    }
    for (did, partitions) in &partitions_of_did {
        assert_eq!(partitions.len(), 1, "{did} is spread over partitions {partitions:?}");
    }
    let used: HashSet<i32> = run.records.iter().map(|record| record.partition).collect();
    assert!(used.len() > 1, "all messages went to one partition of {PARTITIONS}");
}

fn check_metrics(run: &Run) {
    let ok = metric_value(&run.metrics, "atkafka_produced_events{status=\"ok\"}");
    assert_eq!(ok, Some(EXPECTED_MESSAGES as f64), "produced ok; metrics:\n{}", run.metrics);
    let failed = metric_value(&run.metrics, "atkafka_produced_events{status=\"failed\"}");
    assert_eq!(failed, Some(0.0), "produced failed");
    let commits = metric_value(&run.metrics, "atkafka_frames{type=\"commit\"}");
    assert_eq!(commits, Some(148.0), "commit frames");
    let last_seq = metric_value(&run.metrics, "atkafka_last_seq");
    assert_eq!(last_seq, Some(31527015471.0), "last seq");
    let skipped = metric_value(&run.metrics, "atkafka_skipped{reason=\"cid_mismatch\"}");
    assert_eq!(skipped, Some(0.0), "skip reasons are registered at start-up");
    let handled: f64 = run
        .metrics
        .lines()
        .filter(|line| line.starts_with("atkafka_handled_events{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(handled, EXPECTED_MESSAGES as f64, "handled events");
}

#[test]
fn standard_formatter_delivers_every_capture_event() {
    let Some((run, expected)) = run_capture(&[]) else { return };
    let events: Vec<Value> = run.records.iter().map(parse).collect();
    let actual: Vec<Summary> = events.iter().map(|event| from_standard(event).unwrap()).collect();
    if let Err(report) = compare(&expected, &actual) {
        panic!("{report}");
    }
    check_keys_and_order(&run, &events);
    check_metrics(&run);
}

#[test]
fn osprey_formatter_wraps_every_capture_event() {
    let _ = fixture_or_skip!("relay-capture/frames.bin.zst");
    let Some((run, expected)) = run_capture(&["--osprey-compatible"]) else { return };
    let envelopes: Vec<Value> = run.records.iter().map(parse).collect();

    let mut action_ids = HashSet::new();
    let mut inner = Vec::new();
    let earliest = run.started_at - Duration::from_secs(60);
    let latest = run.finished_at + Duration::from_secs(60);
    for envelope in &envelopes {
        let data = &envelope["data"];
        let event = &data["data"];
        let action_name = data["action_name"].as_str().expect("action_name");
        let expected_name = match (event.get("operation"), event.get("identity"), event.get("account")) {
            (Some(operation), _, _) => format!("operation#{}", operation["action"].as_str().unwrap()),
            (_, Some(_), _) => "identity".to_owned(),
            (_, _, Some(_)) => "account".to_owned(),
            _ => panic!("unexpected inner event {event}"),
        };
        assert_eq!(action_name, expected_name);

        let action_id = data["action_id"].as_u64().expect("action_id is an unsigned integer");
        assert!(action_ids.insert(action_id), "action_id {action_id} repeats");
        let id_time = UNIX_EPOCH + Duration::from_millis((action_id >> 22) + 1_420_070_400_000);
        assert!(id_time >= earliest, "action_id {action_id} decodes to {id_time:?}, before the run");
        assert!(id_time <= latest, "action_id {action_id} decodes to {id_time:?}, after the run");

        assert_eq!(data["timestamp"], event["timestamp"], "envelope timestamp is the event's");
        assert_eq!(data["secret_data"], serde_json::json!({}));
        assert_eq!(data["encoding"], "UTF8");
        let send_time = envelope["send_time"].as_str().expect("send_time");
        let send_time = humantime::parse_rfc3339(send_time).unwrap_or_else(|error| panic!("send_time {send_time}: {error}"));
        assert!(send_time >= earliest, "send_time {send_time:?} is before the run");
        assert!(send_time <= latest, "send_time {send_time:?} is after the run");
        inner.push(event.clone());
    }
    let actual: Vec<Summary> = inner.iter().map(|event| from_standard(event).unwrap()).collect();
    if let Err(report) = compare(&expected, &actual) {
        panic!("{report}");
    }
    check_keys_and_order(&run, &inner);
    check_metrics(&run);
}

/// `atkafka-host format` prints each message's value as the bytes the host would produce, so that
/// its output can be compared with what reaches Kafka.
#[test]
fn format_command_prints_values_byte_for_byte() {
    let capture = fixture_or_skip!("relay-capture/frames.bin.zst");
    let events: Vec<atkafka_host::firehose::event::Event> = read_capture(&capture)
        .expect("the capture reads")
        .iter()
        .flat_map(|frame| atkafka_host::firehose::decode::decode(frame).events)
        .collect();
    let output = std::process::Command::new(atkafka_integration_tests::host::binary())
        .args(["format", "--capture"])
        .arg(&capture)
        .output()
        .expect("run atkafka-host format");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary = String::from_utf8_lossy(&output.stderr);
    assert!(summary.contains("called with format-packed"), "{summary}");

    #[derive(serde::Deserialize)]
    struct Line<'a> {
        event: usize,
        #[serde(borrow)]
        value: &'a serde_json::value::RawValue,
    }
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let lines: Vec<Line> = stdout.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
    assert_eq!(lines.len(), events.len());
    for line in lines {
        let mut expected = Vec::new();
        atkafka_host::standard_shape::write_standard(&mut expected, &events[line.event]);
        assert_eq!(line.value.get(), String::from_utf8(expected).unwrap(), "event {}", line.event);
    }
}
