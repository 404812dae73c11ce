//! Every known kind of bad input from the network, each with a small input: the bad frame or
//! operation is skipped under its reason, the rest of the frame still comes out, and nothing
//! panics. (That the stream goes on past a skipped frame, and that the skips are counted in the
//! metrics, is checked end to end in `faults.rs`.)

use atkafka_host::firehose::decode::{decode, DecodedFrame};
use atkafka_host::firehose::event::Event;
use atkafka_host::firehose::record::record_to_json;
use atkafka_host::skip::SkipReason;
use atkafka_integration_tests::dagjson::{encode, message_frame, to_cbor};
use atkafka_integration_tests::expected::render_standard;
use atkafka_integration_tests::synthetic::{car, cid_of, commit_frame, error_frame, info_frame, record_block, Op};
use serde_json::{json, Value};

const DID: &str = "did:plc:badinput";

fn post(text: &str) -> Value {
    json!({"$type": "app.bsky.feed.post", "createdAt": "2026-07-04T14:40:00.000Z", "text": text})
}

fn skipped_reasons(decoded: &DecodedFrame) -> Vec<SkipReason> {
    decoded.skipped_ops.iter().map(|op| op.reason).collect()
}

fn operation_paths(decoded: &DecodedFrame) -> Vec<String> {
    decoded
        .events
        .iter()
        .map(|event| match event {
            Event::Operation(op) => format!("{}/{}", op.collection, op.rkey),
            other => panic!("not an operation: {other:?}"),
        })
        .collect()
}

/// Returns a raw record block (any bytes) with its real CID.
fn raw_record(bytes: Vec<u8>) -> (cid::Cid, Vec<u8>) {
    (cid_of(&bytes), bytes)
}

/// Decodes a commit of one create whose block is `block` and returns the decoded frame.
fn commit_with_block(cid: cid::Cid, block: Vec<u8>) -> DecodedFrame {
    let ops = [Op { action: "create", path: "app.bsky.feed.post/a", cid: Some(cid) }];
    decode(&commit_frame(1, DID, &ops, Some(car(cid, &[(cid, block)])), false))
}

#[test]
fn create_without_its_block_is_skipped_and_the_other_ops_go_out() {
    let (missing, _) = record_block(&post("missing"));
    let (present, block) = record_block(&post("present"));
    let ops = [
        Op { action: "create", path: "app.bsky.feed.post/missing", cid: Some(missing) },
        Op { action: "create", path: "app.bsky.feed.post/present", cid: Some(present) },
        Op { action: "delete", path: "app.bsky.feed.like/gone", cid: None },
    ];
    let decoded = decode(&commit_frame(1, DID, &ops, Some(car(present, &[(present, block)])), false));
    assert_eq!(skipped_reasons(&decoded), vec![SkipReason::BlockMissing]);
    assert_eq!(operation_paths(&decoded), vec!["app.bsky.feed.post/present", "app.bsky.feed.like/gone"]);
}

#[test]
fn car_with_only_a_header_skips_every_create() {
    let (first, _) = record_block(&post("one"));
    let (second, _) = record_block(&post("two"));
    let ops = [
        Op { action: "create", path: "app.bsky.feed.post/one", cid: Some(first) },
        Op { action: "update", path: "app.bsky.feed.post/two", cid: Some(second) },
    ];
    let decoded = decode(&commit_frame(1, DID, &ops, Some(car(first, &[])), false));
    assert_eq!(skipped_reasons(&decoded), vec![SkipReason::BlockMissing, SkipReason::BlockMissing]);
    assert!(decoded.events.is_empty());
}

#[test]
fn too_big_commit_with_empty_or_absent_blocks_is_counted_as_too_big() {
    let (cid, _) = record_block(&post("big"));
    let ops = [
        Op { action: "create", path: "app.bsky.feed.post/big", cid: Some(cid) },
        Op { action: "delete", path: "app.bsky.feed.post/old", cid: None },
    ];
    for blocks in [Some(Vec::new()), None] {
        let decoded = decode(&commit_frame(1, DID, &ops, blocks.clone(), true));
        assert_eq!(skipped_reasons(&decoded), vec![SkipReason::CommitTooBig], "blocks {blocks:?}");
        assert_eq!(operation_paths(&decoded), vec!["app.bsky.feed.post/old"], "deletes need no block");
    }
}

#[test]
fn create_with_null_cid_is_skipped() {
    let ops = [Op { action: "create", path: "app.bsky.feed.post/a", cid: None }];
    let decoded = decode(&commit_frame(1, DID, &ops, Some(car(cid_of(b"x"), &[])), false));
    assert_eq!(skipped_reasons(&decoded), vec![SkipReason::CidMissing]);
}

#[test]
fn block_that_does_not_hash_to_its_cid_is_skipped() {
    let (claimed, _) = record_block(&post("claimed"));
    let (_, other_block) = record_block(&post("something else"));
    let decoded = commit_with_block(claimed, other_block);
    assert_eq!(skipped_reasons(&decoded), vec![SkipReason::CidMismatch]);
    assert!(decoded.events.is_empty());
}

#[test]
fn identity_without_handle_or_with_null_handle_has_null_handle() {
    for body in [
        json!({"seq": 5, "did": DID, "time": "2026-07-04T14:40:00.000Z"}),
        json!({"seq": 5, "did": DID, "time": "2026-07-04T14:40:00.000Z", "handle": null}),
    ] {
        let decoded = decode(&message_frame("#identity", &to_cbor(&body).unwrap()));
        assert!(decoded.skipped_frame.is_none(), "{:?}", decoded.skipped_frame);
        let message = render_standard(&decoded.events[0]);
        assert_eq!(message["identity"], json!({"seq": 5, "handle": null}), "{body}");
    }
}

#[test]
fn unknown_and_legacy_frame_types_are_skipped_as_unknown() {
    for message_type in ["#handle", "#tombstone", "#migrate", "#somethingNew"] {
        let body = json!({"seq": 9, "did": DID, "time": "2026-07-04T14:40:00.000Z"});
        let decoded = decode(&message_frame(message_type, &to_cbor(&body).unwrap()));
        let (reason, _) = decoded.skipped_frame.as_ref().expect("skipped");
        assert_eq!(*reason, SkipReason::FrameUnknownType, "{message_type}");
        assert!(decoded.events.is_empty());
    }
}

#[test]
fn error_frames_and_outdated_cursor_info_are_recognised() {
    for name in ["FutureCursor", "ConsumerTooSlow"] {
        let decoded = decode(&error_frame(name, "message"));
        assert_eq!(decoded.error.as_ref().map(|error| error.error.as_str()), Some(name));
        assert!(decoded.events.is_empty(), "{name}: no events");
        assert!(decoded.skipped_frame.is_none(), "{name}: not skipped");
    }
    let decoded = decode(&info_frame("OutdatedCursor", "requested cursor exceeded limit"));
    let message = render_standard(&decoded.events[0]);
    assert_eq!(message, json!({"info": {"name": "OutdatedCursor", "message": "requested cursor exceeded limit"}}));
}

#[test]
fn garbage_and_truncated_frames_are_skipped_as_undecodable() {
    let (cid, block) = record_block(&post("whole"));
    let ops = [Op { action: "create", path: "app.bsky.feed.post/a", cid: Some(cid) }];
    let whole = commit_frame(1, DID, &ops, Some(car(cid, &[(cid, block)])), false);
    let mut inputs: Vec<Vec<u8>> = vec![Vec::new(), b"\xff".to_vec(), b"not cbor at all".to_vec()];
    inputs.extend((1..whole.len()).step_by(7).map(|cut| whole[..cut].to_vec()));
    for input in inputs {
        let decoded = decode(&input);
        assert_eq!(
            decoded.skipped_frame.as_ref().map(|(reason, _)| *reason),
            Some(SkipReason::FrameUndecodable),
            "{} bytes",
            input.len()
        );
        assert!(decoded.events.is_empty());
    }
}

#[test]
fn integers_not_in_shortest_form_are_accepted_and_hashed_as_sent() {
    // The header's `op` as a 9-byte integer: accepted, because the value is unambiguous.
    let mut frame = vec![0xa2, 0x61, b't', 0x65];
    frame.extend(b"#info");
    frame.extend([0x62, b'o', b'p', 0x1b, 0, 0, 0, 0, 0, 0, 0, 1]);
    frame.extend(encode(&to_cbor(&json!({"name": "OutdatedCursor"})).unwrap()));
    let decoded = decode(&frame);
    assert!(decoded.skipped_frame.is_none(), "{:?}", decoded.skipped_frame);
    assert_eq!(decoded.events.len(), 1);

    // A record whose integer takes 9 bytes: the CID is checked against the bytes as sent, never
    // against a re-encoding, and the JSON carries the value.
    let mut record = vec![0xa2, 0x61, b'n', 0x1b, 0, 0, 0, 0, 0, 0, 0, 7];
    record.extend([0x65]);
    record.extend(b"$type");
    record.extend([0x63]);
    record.extend(b"a.b");
    let (cid, block) = raw_record(record);
    let decoded = commit_with_block(cid, block);
    assert!(decoded.skipped_ops.is_empty(), "{:?}", decoded.skipped_ops);
    let Event::Operation(op) = &decoded.events[0] else { panic!("an operation") };
    assert_eq!(op.cid, Some(cid.to_string()));
    assert_eq!(serde_json::from_str::<Value>(op.record.as_deref().unwrap()).unwrap(), json!({"n": 7, "$type": "a.b"}));
}

#[test]
fn floats_undefined_and_out_of_range_integers_make_a_record_invalid() {
    let cases: [(&str, &[u8]); 10] = [
        ("64-bit float", &[0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]),
        ("32-bit float", &[0xfa, 0x3f, 0xc0, 0, 0]),
        ("16-bit float", &[0xf9, 0x3e, 0x00]),
        ("NaN", &[0xf9, 0x7e, 0x00]),
        ("infinity", &[0xfa, 0x7f, 0x80, 0, 0]),
        ("negative infinity", &[0xfb, 0xff, 0xf0, 0, 0, 0, 0, 0, 0]),
        ("undefined", &[0xf7]),
        ("integer above the signed 64-bit range", &[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ("integer below the signed 64-bit range", &[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ("bignum", &[0xc2, 0x49, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
    ];
    for (name, value) in cases {
        let mut record = vec![0xa1, 0x61, b'v'];
        record.extend_from_slice(value);
        assert!(record_to_json(&record).is_err(), "{name} was accepted");
        let (cid, block) = raw_record(record);
        let decoded = commit_with_block(cid, block);
        assert_eq!(skipped_reasons(&decoded), vec![SkipReason::RecordInvalid], "{name}");
    }
}

#[test]
fn nesting_a_hundred_thousand_levels_deep_is_rejected_without_a_crash() {
    let mut record = vec![0xa1, 0x61, b'v'];
    record.extend(std::iter::repeat_n(0x81, 100_000));
    record.push(0x01);
    let (cid, block) = raw_record(record);
    let decoded = commit_with_block(cid, block);
    assert_eq!(skipped_reasons(&decoded), vec![SkipReason::RecordInvalid]);

    // The same depth in a frame body.
    let mut frame = encode(&to_cbor(&json!({"op": 1, "t": "#info"})).unwrap());
    frame.extend([0xa1, 0x64]);
    frame.extend(b"name");
    frame.extend(std::iter::repeat_n(0x81, 100_000));
    frame.push(0x01);
    let decoded = decode(&frame);
    assert_eq!(decoded.skipped_frame.map(|(reason, _)| reason), Some(SkipReason::FrameUndecodable));
}

#[test]
fn records_of_unknown_collections_and_types_pass_through_untouched() {
    let record = json!({
        "$type": "com.example.unheardOf#variant",
        "nested": {"$type": "org.example.other", "list": [1, -2, null, true, "x"]},
        "blob": {"$type": "blob", "ref": {"$link": cid_of(b"blob").to_string()}, "mimeType": "image/png", "size": 10},
        "bytes": {"$bytes": "AQID"},
    });
    let (cid, block) = record_block(&record);
    let ops = [Op { action: "create", path: "com.example.unheardOf/k", cid: Some(cid) }];
    let decoded = decode(&commit_frame(1, DID, &ops, Some(car(cid, &[(cid, block)])), false));
    let Event::Operation(op) = &decoded.events[0] else { panic!("an operation") };
    assert_eq!(op.collection, "com.example.unheardOf");
    assert_eq!(serde_json::from_str::<Value>(op.record.as_deref().unwrap()).unwrap(), record);
}

#[test]
fn container_announcing_more_items_than_bytes_is_undecodable() {
    // Found by fuzzing: a map announcing 2^63 entries made the item count overflow.
    for header in [&[0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0][..], &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]] {
        let mut record = vec![0xa1, 0x61, b'v'];
        record.extend_from_slice(header);
        let (cid, block) = raw_record(record);
        let decoded = commit_with_block(cid, block);
        assert_eq!(skipped_reasons(&decoded), vec![SkipReason::RecordUndecodable], "{header:x?}");
    }
}
