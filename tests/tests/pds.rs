//! The reference PDS as the firehose source: the real atkafka-host binary subscribes to
//! `com.atproto.sync.subscribeRepos` on a loopback PDS (`tests/pds/run-pds.mjs`) and produces into
//! a Tansu broker while `tests/pds/session.mjs` plays a session of several accounts against the
//! PDS. The topic must then hold every write with the record exactly as getRecord served it, every
//! delete, and the identity, account and sync events the session caused.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use atkafka_integration_tests::broker::{free_port, Broker};
use atkafka_integration_tests::consume::{consume, Record};
use atkafka_integration_tests::host::{http_get, metric_value, HostProcess};
use atkafka_integration_tests::pds::{normalize_standard, play_session, Observed, OrderedJson, Pds, Session};
use atkafka_integration_tests::pds_or_skip;
use serde_json::Value;

const TOPIC: &str = "pds-firehose";

/// Each test runs its own PDS, broker and host. Running one at a time keeps each close to the
/// timing of a lone run on a two-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn host_args(pds: &Pds, broker: &Broker, metrics_address: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--relay-host",
        &pds.firehose_url,
        "--bootstrap-servers",
        &broker.address,
        "--output-topic",
        TOPIC,
        "--metrics-listen-address",
        metrics_address,
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args
}

/// Waits until the host reports a connection to the relay in its metrics.
fn wait_until_connected(host: &mut HostProcess, metrics_address: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = host.wait_for_exit(Duration::ZERO) {
            panic!("the host exited with {status} before connecting; log:\n{}", host.log());
        }
        let metrics = http_get(metrics_address, "/metrics").unwrap_or_default();
        if metric_value(&metrics, "atkafka_relay_connections{result=\"connected\"}").is_some_and(|count| count >= 1.0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the host did not connect to the PDS within 30 s; log:\n{}", host.log());
}

fn parse(record: &Record) -> Value {
    serde_json::from_slice(&record.value)
        .unwrap_or_else(|error| panic!("message is not JSON ({error}): {}", String::from_utf8_lossy(&record.value)))
}

fn observe(records: &[Record]) -> Vec<Observed> {
    records
        .iter()
        .map(|record| normalize_standard(&parse(record)).unwrap_or_else(|problem| panic!("{problem}")))
        .collect()
}

/// Lists the fields in which `actual` differs from `expected`, as JSON pointers with both values.
fn differences(expected: &Value, actual: &Value, pointer: &str, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(expected_map), Value::Object(actual_map)) => {
            for (key, expected_value) in expected_map {
                let path = format!("{pointer}/{key}");
                match actual_map.get(key) {
                    Some(actual_value) => differences(expected_value, actual_value, &path, out),
                    None => out.push(format!("{path}: expected {expected_value}, actual field missing")),
                }
            }
            for (key, actual_value) in actual_map {
                if !expected_map.contains_key(key) {
                    out.push(format!("{pointer}/{key}: not expected, actual {actual_value}"));
                }
            }
        }
        (Value::Array(expected_items), Value::Array(actual_items)) if expected_items.len() == actual_items.len() => {
            for (index, (expected_item, actual_item)) in expected_items.iter().zip(actual_items).enumerate() {
                differences(expected_item, actual_item, &format!("{pointer}/{index}"), out);
            }
        }
        _ if expected != actual => out.push(format!("{pointer}: expected {expected}, actual {actual}")),
        _ => {}
    }
}

/// Returns what identifies an event when pairing an expected event with a differing actual one.
fn pairing_key(event: &Value) -> String {
    match event["kind"].as_str() {
        Some("operation") => format!("{} {} {}", event["did"], event["action"], event["uri"]),
        _ => format!("{} {}", event["did"], event["kind"]),
    }
}

/// Matches the expected events one to one with the observed ones and describes every missing,
/// differing and unexpected event.
fn compare_events(expected: &[Value], observed: &[Observed]) -> Result<(), String> {
    let mut unused: Vec<Option<&Value>> = observed.iter().map(|observed| Some(&observed.event)).collect();
    let mut unmatched = Vec::new();
    for event in expected {
        match unused.iter().position(|candidate| *candidate == Some(event)) {
            Some(index) => unused[index] = None,
            None => unmatched.push(event),
        }
    }
    let mut problems = Vec::new();
    for event in unmatched {
        let key = pairing_key(event);
        let paired = unused.iter().position(|candidate| candidate.is_some_and(|candidate| pairing_key(candidate) == key));
        match paired {
            Some(index) => {
                let actual = unused[index].take().expect("paired with an unused event");
                let mut fields = Vec::new();
                differences(event, actual, "", &mut fields);
                problems.push(format!("differs: {key}\n    {}", fields.join("\n    ")));
            }
            None => problems.push(format!("missing: {event}")),
        }
    }
    for actual in unused.into_iter().flatten() {
        problems.push(format!("unexpected: {actual}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{} of {} expected events do not match:\n{}", problems.len(), expected.len(), problems.join("\n")))
    }
}

/// Checks that each DID's events reach the topic in the order the PDS sequenced them.
fn check_order_per_did(expected: &[Value], observed: &[Observed]) {
    let mut expected_by_did: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for event in expected {
        expected_by_did.entry(event["did"].as_str().unwrap()).or_default().push(event);
    }
    let mut observed_by_did: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for observed in observed {
        observed_by_did.entry(observed.event["did"].as_str().unwrap()).or_default().push(&observed.event);
    }
    for (did, events) in &expected_by_did {
        let actual = observed_by_did.get(did).cloned().unwrap_or_default();
        if let Some(index) = events.iter().zip(&actual).position(|(expected, actual)| expected != actual) {
            panic!("{did}: event {index} is out of order\n  expected {}\n  actual   {}", events[index], actual[index]);
        }
        assert_eq!(actual.len(), events.len(), "{did}: number of events");
    }
}

/// Checks that every message is keyed by its DID.
fn check_keys(records: &[Record], observed: &[Observed]) {
    for (record, observed) in records.iter().zip(observed) {
        let did = observed.event["did"].as_str().unwrap();
        assert_eq!(record.key.as_deref(), Some(did.as_bytes()), "key of {}", observed.event);
    }
}

/// Checks that records keep the key order of the DAG-CBOR block, which is the order getRecord
/// serves.
fn check_record_key_order(records: &[Record], session: &Session) {
    let mut served: HashMap<(String, String), Vec<String>> = HashMap::new();
    for event in &session.ordered_events {
        let (Some(OrderedJson::String(uri)), Some(OrderedJson::String(cid)), Some(record)) =
            (event.get("uri"), event.get("cid"), event.get("record"))
        else {
            continue;
        };
        served.insert((uri.clone(), cid.clone()), record.key_paths());
    }
    for record in records {
        let message: OrderedJson = serde_json::from_slice(&record.value).expect("message is JSON");
        let Some(operation) = message.get("operation") else { continue };
        let (Some(OrderedJson::String(uri)), Some(OrderedJson::String(cid)), Some(value)) =
            (operation.get("uri"), operation.get("cid"), operation.get("record"))
        else {
            continue;
        };
        if *value == OrderedJson::Null {
            continue;
        }
        let expected = served.get(&(uri.clone(), cid.clone())).unwrap_or_else(|| panic!("{uri} {cid} was not served by getRecord"));
        assert_eq!(&value.key_paths(), expected, "key order of the record {uri}");
    }
}

/// Checks that the seqs of identity, account and sync events rise along the topic (one partition,
/// one connection), and that every timestamp is RFC 3339 and lies within the run.
fn check_seqs_and_timestamps(observed: &[Observed], started_at: SystemTime, finished_at: SystemTime) {
    let mut previous: Option<i64> = None;
    for observed in observed {
        if let Some(seq) = observed.seq {
            assert!(seq > 0, "seq {seq} of {}", observed.event);
            assert!(previous.is_none_or(|previous| seq > previous), "seq {seq} after {previous:?}: {}", observed.event);
            previous = Some(seq);
        }
        let time = humantime::parse_rfc3339(&observed.timestamp)
            .unwrap_or_else(|error| panic!("timestamp {} of {}: {error}", observed.timestamp, observed.event));
        let earliest = started_at - Duration::from_secs(60);
        let latest = finished_at + Duration::from_secs(60);
        assert!(time >= earliest, "timestamp {} is before the run", observed.timestamp);
        assert!(time <= latest, "timestamp {} is after the run", observed.timestamp);
    }
}

fn sum_of(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn count_kind(events: &[Value], kind: &str) -> f64 {
    events.iter().filter(|event| event["kind"] == kind).count() as f64
}

fn check_metrics(metrics: &str, expected: &[Value], seq_gaps: f64) {
    let sample = |name: &str| metric_value(metrics, name);
    assert_eq!(sample("atkafka_produced_events{status=\"ok\"}"), Some(expected.len() as f64), "produced ok; metrics:\n{metrics}");
    assert_eq!(sample("atkafka_produced_events{status=\"failed\"}"), Some(0.0), "produced failed");
    assert_eq!(sum_of(metrics, "atkafka_handled_events{"), expected.len() as f64, "handled events");
    assert_eq!(sum_of(metrics, "atkafka_skipped{"), 0.0, "skipped frames and operations; metrics:\n{metrics}");
    assert_eq!(sum_of(metrics, "atkafka_error_frames{"), 0.0, "error frames");
    for kind in ["identity", "account", "sync"] {
        let frames = sample(&format!("atkafka_frames{{type=\"{kind}\"}}"));
        assert_eq!(frames, Some(count_kind(expected, kind)), "{kind} frames");
    }
    for kind in ["undecodable", "unknown", "error", "info"] {
        assert_eq!(sample(&format!("atkafka_frames{{type=\"{kind}\"}}")), Some(0.0), "{kind} frames");
    }
    assert_eq!(sample("atkafka_seq_gaps"), Some(seq_gaps), "seq gaps");
    assert_eq!(sample("atkafka_seq_regressions"), Some(0.0), "seq regressions");
}

/// Everything one host run against the PDS left behind.
struct Run {
    records: Vec<Record>,
    metrics: String,
    started_at: SystemTime,
    finished_at: SystemTime,
}

/// Consumes `expected` messages, reads the metrics, then stops the host, which must exit 0.
fn finish_run(mut host: HostProcess, broker: &Broker, metrics_address: &str, expected: usize, started_at: SystemTime) -> Run {
    let records = consume(&broker.address, TOPIC, expected, Duration::from_secs(60), Duration::from_secs(3));
    let finished_at = SystemTime::now();
    let metrics = http_get(metrics_address, "/metrics").unwrap_or_default();
    let status = host.terminate(Duration::from_secs(30));
    let log = host.log();
    assert!(status.success(), "the host exited with {status} after SIGTERM; log:\n{log}");
    assert_eq!(records.len(), expected, "messages on the topic; host log:\n{log}");
    Run { records, metrics, started_at, finished_at }
}

fn stop_pds(mut pds: Pds) {
    let status = pds.stop(Duration::from_secs(30));
    let log = pds.log();
    assert!(status.is_some_and(|status| status.success()), "run-pds.mjs exited with {status:?} after SIGTERM; log:\n{log}");
}

#[test]
fn pds_session_reaches_kafka_as_served() {
    pds_or_skip!();
    let _serial = serial();
    let broker = Broker::start();
    let pds = Pds::start();
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let started_at = SystemTime::now();
    let mut host = HostProcess::start(&host_args(&pds, &broker, &metrics_address, &[]));
    wait_until_connected(&mut host, &metrics_address);
    // Without a cursor the PDS streams only what it sequences after the subscription starts,
    // which happens just after the handshake the metrics report.
    std::thread::sleep(Duration::from_secs(1));

    let session = play_session(&pds);
    let run = finish_run(host, &broker, &metrics_address, session.events.len(), started_at);
    stop_pds(pds);

    let observed = observe(&run.records);
    if let Err(report) = compare_events(&session.events, &observed) {
        panic!("{report}");
    }
    check_order_per_did(&session.events, &observed);
    check_keys(&run.records, &observed);
    check_record_key_order(&run.records, &session);
    check_seqs_and_timestamps(&observed, run.started_at, run.finished_at);
    check_metrics(&run.metrics, &session.events, 0.0);
}

#[test]
fn pds_replay_from_zero_skips_the_deleted_account() {
    pds_or_skip!();
    let _serial = serial();
    let broker = Broker::start();
    let pds = Pds::start();
    let session = play_session(&pds);

    // Deleting an account removes its events from the PDS, all but the deletion itself, so a
    // replay from the start has a gap for each of them: dave's expected events and the commit
    // without operations of his account creation.
    let dave = session.account("dave");
    let is_deletion = |event: &Value| event["kind"] == "account" && event["status"] == "deleted";
    let expected: Vec<Value> =
        session.events.iter().filter(|event| event["did"] != dave.did.as_str() || is_deletion(event)).cloned().collect();
    let removed = session.events.iter().filter(|event| event["did"] == dave.did.as_str() && !is_deletion(event)).count();
    let seq_gaps = (removed + 1) as f64;

    let metrics_address = format!("127.0.0.1:{}", free_port());
    let started_at = SystemTime::now();
    let host = HostProcess::start(&host_args(&pds, &broker, &metrics_address, &["--cursor", "0"]));
    let run = finish_run(host, &broker, &metrics_address, expected.len(), started_at);
    stop_pds(pds);

    let observed = observe(&run.records);
    if let Err(report) = compare_events(&expected, &observed) {
        panic!("{report}");
    }
    check_order_per_did(&expected, &observed);
    check_keys(&run.records, &observed);
    check_record_key_order(&run.records, &session);
    check_metrics(&run.metrics, &expected, seq_gaps);
}

#[test]
fn pds_future_cursor_stops_the_host() {
    pds_or_skip!();
    let _serial = serial();
    let broker = Broker::start();
    let pds = Pds::start();
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let cursor = "1000000";
    let mut host = HostProcess::start(&host_args(&pds, &broker, &metrics_address, &["--cursor", cursor]));

    let status = host.wait_for_exit(Duration::from_secs(30));
    let log = host.log();
    assert!(status.is_some(), "the host kept running after FutureCursor; log:\n{log}");
    assert_eq!(status.and_then(|status| status.code()), Some(1), "exit status; log:\n{log}");
    assert!(log.contains("FutureCursor"), "the log names the error frame:\n{log}");
    assert!(log.contains(cursor), "the log names the cursor {cursor}:\n{log}");
    stop_pds(pds);
}
