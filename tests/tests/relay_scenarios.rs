//! The reference relay's test scenarios (identity, account, sync and commit frames, legacy frames
//! and seq regressions, each with the reference relay's verdict), encoded to wire frames, replayed
//! through the host into Kafka, and checked event by event.
//!
//! The host is a consumer, not a relay: it passes on every well-formed frame the relay sends,
//! including those a relay itself would drop (a commit from a deactivated account, a seq that
//! does not increase), and leaves account-state and signature policy to the relay upstream.

use std::time::Duration;

use atkafka_host::firehose::car::read_blocks;
use atkafka_host::firehose::record::record_to_json;
use atkafka_integration_tests::consume::consume;
use atkafka_integration_tests::dagjson::{message_frame, to_cbor};
use atkafka_integration_tests::expected::{compare, from_standard, Summary};
use atkafka_integration_tests::fixtures::fixture;
use atkafka_integration_tests::host::metric_value;
use atkafka_integration_tests::replay::ReplayOptions;
use atkafka_integration_tests::scenario::Bench;
use base64::Engine as _;
use serde_json::Value;

const SCENARIOS: [&str; 5] = ["account_lifecycle", "deactivation", "legacy", "post_lifecycle", "seq_ordering"];

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// The events one scenario frame must produce, read from the frame's own DAG-JSON.
fn expected_events(message_type: &str, body: &Value) -> Vec<Summary> {
    let did = text(body, "did").or_else(|| text(body, "repo")).expect("a DID");
    let empty = Summary::empty(did);
    let seq = body["seq"].as_i64();
    match message_type {
        "#identity" => vec![Summary { kind: "identity".to_owned(), seq, handle: text(body, "handle"), ..empty }],
        "#account" => vec![Summary {
            kind: "account".to_owned(),
            seq,
            active: body["active"].as_bool(),
            status: text(body, "status"),
            ..empty
        }],
        "#sync" => vec![Summary { kind: "sync".to_owned(), seq, rev: text(body, "rev"), ..empty }],
        "#commit" => {
            let car = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(body["blocks"]["$bytes"].as_str().unwrap().trim_end_matches('='))
                .unwrap();
            let blocks = read_blocks(&car).unwrap();
            body["ops"]
                .as_array()
                .unwrap()
                .iter()
                .map(|op| {
                    let (collection, rkey) = op["path"].as_str().unwrap().split_once('/').unwrap();
                    let cid = op.pointer("/cid/$link").and_then(Value::as_str).map(str::to_owned);
                    let record = cid.as_ref().map(|cid| {
                        let (_, block) = blocks.iter().find(|(block_cid, _)| &block_cid.to_string() == cid).unwrap();
                        serde_json::from_str(&record_to_json(block).unwrap()).unwrap()
                    });
                    Summary {
                        kind: op["action"].as_str().unwrap().to_owned(),
                        collection: collection.to_owned(),
                        rkey: rkey.to_owned(),
                        cid,
                        record,
                        ..empty.clone()
                    }
                })
                .collect()
        }
        other => panic!("unexpected message type {other}"),
    }
}

#[test]
fn relay_scenarios_reach_kafka_event_by_event() {
    let mut frames = Vec::new();
    let mut expected = Vec::new();
    let mut verdicts = (0, 0);
    for scenario in SCENARIOS {
        let Some(path) = fixture(&format!("indigo/relay-scenario-{scenario}.json")) else { return };
        let scenario: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for message in scenario["messages"].as_array().unwrap() {
            let message_type = message["frame"]["header"]["t"].as_str().unwrap();
            let body = &message["frame"]["body"];
            frames.push(message_frame(message_type, &to_cbor(body).unwrap()));
            expected.extend(expected_events(message_type, body));
            if message["drop"].as_bool() == Some(true) || message["invalid"].as_bool() == Some(true) {
                verdicts.0 += 1;
            } else {
                verdicts.1 += 1;
            }
        }
    }
    println!("{} frames ({} a relay would drop), {} events expected", frames.len(), verdicts.0, expected.len());

    let bench = Bench::new(
        ReplayOptions { frames: frames.clone(), ..ReplayOptions::default() },
        &["--output-topic", "scenarios"],
    );
    let mut host = bench.start_host();
    let records = consume(&bench.broker.address, "scenarios", expected.len(), Duration::from_secs(60), Duration::from_secs(2));
    let actual: Vec<Summary> = records
        .iter()
        .map(|record| from_standard(&serde_json::from_slice(&record.value).unwrap()).unwrap())
        .collect();
    if let Err(report) = compare(&expected, &actual) {
        panic!("{report}\nhost log:\n{}", host.log());
    }

    let metrics = bench.metrics();
    let skipped: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("atkafka_skipped{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(skipped, 0.0, "no scenario frame is malformed");
    let regressions = metric_value(&metrics, "atkafka_seq_regressions").unwrap();
    assert!(regressions >= 1.0, "the seq-ordering scenario repeats a seq");
    assert!(host.terminate(Duration::from_secs(30)).success());
}
