//! The decode path on real network data: the atproto data-model vectors, real `#commit` bodies,
//! a real repository CAR, and the 150-frame relay capture against Jetstream's rendering.

use atkafka_host::firehose::car::{check_block, read_blocks, BlockCheck};
use atkafka_host::firehose::cid_ref::CidRef;
use atkafka_host::firehose::decode::decode;
use atkafka_host::firehose::event::Event;
use atkafka_host::firehose::frame::{decode_frame, Frame};
use atkafka_host::firehose::record::record_to_json;
use atkafka_integration_tests::dagjson::{encode, integer_of, message_frame, to_cbor};
use atkafka_integration_tests::expected::{compare, from_jetstream, from_standard, render_standard};
use atkafka_integration_tests::fixture_or_skip;
use atkafka_integration_tests::fixtures::{read_capture, read_jsonl};
use base64::Engine as _;
use serde_json::Value;

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn data_model_vectors_convert_to_their_json() {
    let path = fixture_or_skip!("interop/data-model-fixtures.json");
    let vectors = read_json(&path);
    let vectors = vectors.as_array().expect("a list of vectors");
    assert!(!vectors.is_empty());
    for vector in vectors {
        let cbor = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(vector["cbor_base64"].as_str().unwrap().trim_end_matches('='))
            .unwrap();
        let json = record_to_json(&cbor).unwrap_or_else(|error| panic!("vector {}: {error}", vector["cid"]));
        let json: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json, vector["json"], "vector {}", vector["cid"]);

        let cid_bytes = cid::Cid::try_from(vector["cid"].as_str().unwrap()).unwrap().to_bytes();
        let cid = CidRef::from_bytes(&cid_bytes).unwrap();
        assert_eq!(cid.to_string(), vector["cid"].as_str().unwrap());
        assert_eq!(check_block(&cid, &cbor), BlockCheck::Matches, "vector {} does not hash to its CID", vector["cid"]);
    }
}

/// Rewrites integer-like floats (`123.0`) as integers, as the data model reads them.
fn integers_as_integers(value: &Value) -> Value {
    match value {
        Value::Number(number) => Value::from(integer_of(number).unwrap()),
        Value::Array(items) => Value::Array(items.iter().map(integers_as_integers).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(key, item)| (key.clone(), integers_as_integers(item))).collect()),
        other => other.clone(),
    }
}

#[test]
fn valid_data_model_records_round_trip() {
    let path = fixture_or_skip!("interop/data-model-valid.json");
    let records = read_json(&path);
    for entry in records.as_array().expect("a list of records") {
        let json = &entry["json"];
        let cbor = encode(&to_cbor(json).unwrap());
        let back: Value = serde_json::from_str(&record_to_json(&cbor).unwrap()).unwrap();
        assert_eq!(back, integers_as_integers(json), "{}", entry["note"]);
    }
}

#[test]
fn real_commits_decode_to_records_their_cids_name() {
    for seq in ["4621317030", "4621317332", "4623075231"] {
        let path = fixture_or_skip!(&format!("indigo/firehose_commit_{seq}.json"));
        let body = read_json(&path);
        let frame = message_frame("#commit", &to_cbor(&body).unwrap());
        let decoded = decode(&frame);
        assert!(decoded.skipped_frame.is_none(), "commit {seq}: {:?}", decoded.skipped_frame);
        assert!(decoded.skipped_ops.is_empty(), "commit {seq}: {:?}", decoded.skipped_ops);

        let ops = body["ops"].as_array().unwrap();
        assert_eq!(decoded.events.len(), ops.len(), "commit {seq}: one event per op");
        for (event, op) in decoded.events.iter().zip(ops) {
            let Event::Operation(event) = event else { panic!("commit {seq}: not an operation") };
            assert_eq!(format!("{}/{}", event.collection, event.rkey), op["path"].as_str().unwrap());
            assert_eq!(event.cid.as_deref(), op.pointer("/cid/$link").and_then(Value::as_str));
            if event.cid.is_some() {
                let record: Value = serde_json::from_str(event.record.as_deref().unwrap()).unwrap();
                assert!(record.get("$type").is_some(), "commit {seq}: record without $type: {record}");
            }
        }
    }
}

#[test]
fn repository_car_blocks_hash_to_their_cids() {
    let car = fixture_or_skip!("relay-capture/repo.car");
    let expected = fixture_or_skip!("relay-capture/car_expected_records.tsv");
    let car = std::fs::read(car).unwrap();
    let blocks = read_blocks(&car).unwrap();
    for (cid, block) in &blocks {
        assert_eq!(check_block(cid, block), BlockCheck::Matches, "block {cid}");
    }
    let cids: std::collections::HashSet<String> = blocks.iter().map(|(cid, _)| cid.to_string()).collect();
    let records = std::fs::read_to_string(expected).unwrap();
    let mut checked = 0;
    for line in records.lines().filter(|line| !line.is_empty()) {
        let (path, cid) = line.split_once('\t').expect("path<TAB>cid");
        assert!(cids.contains(cid), "record {path} ({cid}) has no block in the CAR");
        let (_, block) = blocks.iter().find(|(block_cid, _)| block_cid.to_string() == cid).unwrap();
        record_to_json(block).unwrap_or_else(|error| panic!("record {path}: {error}"));
        checked += 1;
    }
    assert!(checked > 0, "no records listed");
}

/// Reads a CAR with iroh-car, an independent reader.
fn iroh_car_blocks(car: &[u8]) -> Vec<(cid::Cid, Vec<u8>)> {
    let read = async {
        let mut reader = iroh_car::CarReader::new(car).await.unwrap();
        let mut blocks = Vec::new();
        while let Some(block) = reader.next_block().await.unwrap() {
            blocks.push(block);
        }
        blocks
    };
    futures::FutureExt::now_or_never(read).expect("an in-memory read completes at once")
}

#[test]
fn car_reader_matches_iroh_car() {
    let car = fixture_or_skip!("relay-capture/repo.car");
    let frames = fixture_or_skip!("relay-capture/frames.bin.zst");
    let mut cars = vec![std::fs::read(car).unwrap()];
    for frame in read_capture(&frames).unwrap() {
        if let Ok(Frame::Commit(commit)) = decode_frame(&frame) {
            if !commit.blocks.is_empty() {
                cars.push(commit.blocks.to_vec());
            }
        }
    }
    assert!(cars.len() > 100, "only {} CARs", cars.len());
    let mut compared = 0;
    for car in &cars {
        let ours: Vec<(String, Vec<u8>)> =
            read_blocks(car).unwrap().into_iter().map(|(cid, block)| (cid.to_string(), block.to_vec())).collect();
        let theirs: Vec<(String, Vec<u8>)> =
            iroh_car_blocks(car).into_iter().map(|(cid, block)| (cid.to_string(), block)).collect();
        assert_eq!(ours, theirs);
        compared += ours.len();
    }
    println!("{} CARs, {compared} blocks read alike", cars.len());
}

#[test]
fn relay_capture_decodes_like_jetstream() {
    let frames = fixture_or_skip!("relay-capture/frames.bin.zst");
    let expected = fixture_or_skip!("relay-capture/expected_v1.jsonl");
    let frames = read_capture(&frames).unwrap();
    assert_eq!(frames.len(), 150);

    let mut actual = Vec::new();
    let mut last_seq = None;
    for frame in &frames {
        let decoded = decode(frame);
        assert!(decoded.skipped_frame.is_none(), "{:?}", decoded.skipped_frame);
        assert!(decoded.skipped_ops.is_empty(), "{:?}", decoded.skipped_ops);
        assert!(decoded.seq > last_seq, "seq {:?} after {last_seq:?}", decoded.seq);
        last_seq = decoded.seq;
        for event in &decoded.events {
            actual.push(from_standard(&render_standard(event)).unwrap());
        }
    }
    let expected: Vec<_> = read_jsonl(&expected).unwrap().iter().map(|event| from_jetstream(event).unwrap()).collect();
    assert_eq!(expected.len(), 152);
    assert_eq!(actual.len(), 152);
    if let Err(report) = compare(&expected, &actual) {
        panic!("{report}");
    }
}

#[test]
fn generated_commits_decode_to_their_records() {
    use atkafka_integration_tests::synthetic::{post_commit, with_seq};

    for seq in [1, 2, 1000] {
        let generated = post_commit(seq, 10);
        let decoded = decode(&generated.frame);
        assert!(decoded.skipped_ops.is_empty(), "{:?}", decoded.skipped_ops);
        assert_eq!(decoded.seq, Some(seq));
        let actual: Vec<_> = decoded.events.iter().map(|event| from_standard(&render_standard(event)).unwrap()).collect();
        assert_eq!(actual, vec![generated.summary]);

        let moved = decode(&with_seq(&generated.frame, seq + 7));
        assert_eq!(moved.seq, Some(seq + 7));
        assert_eq!(moved.events.len(), 1);
    }
}
