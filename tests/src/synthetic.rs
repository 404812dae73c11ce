//! Generated firehose frames: valid `#commit` frames with real CIDs and a CAR of their blocks,
//! for tests and benchmarks that need more events than the recorded capture holds.
//!
//! Every generated record has a distinct rkey, so each event can be told apart on the topic.

use base64::Engine as _;
use cid::Cid;
use futures::FutureExt;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::dagjson::{encode, message_frame, to_cbor};
use crate::expected::Summary;

const DAG_CBOR: u64 = 0x71;
const SHA2_256: u64 = 0x12;

/// The CID (v1, DAG-CBOR, SHA-256) of a block.
pub fn cid_of(block: &[u8]) -> Cid {
    let digest = Sha256::digest(block);
    let hash = cid::multihash::Multihash::<64>::wrap(SHA2_256, &digest).expect("a 32-byte digest fits");
    Cid::new_v1(DAG_CBOR, hash)
}

/// Writes a CAR file with `root` as its root and `blocks` in order.
pub fn car(root: Cid, blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
    let write = async {
        let mut writer = iroh_car::CarWriter::new(iroh_car::CarHeader::new_v1(vec![root]), Vec::new());
        for (cid, block) in blocks {
            writer.write(*cid, block).await?;
        }
        writer.finish().await
    };
    write.now_or_never().expect("writing into a Vec completes at once").expect("write the CAR")
}

/// One generated post event: its frame and the summary the host should put on the topic.
pub struct GeneratedCommit {
    pub frame: Vec<u8>,
    pub summary: Summary,
}

/// A `#commit` frame creating one `app.bsky.feed.post` record, with a DID picked from `dids`
/// accounts and an rkey unique to `seq`.
pub fn post_commit(seq: i64, dids: usize) -> GeneratedCommit {
    let did = format!("did:plc:synthetic{:04}", seq.rem_euclid(dids.max(1) as i64));
    let rkey = format!("gen{seq}");
    let time = "2026-07-04T14:40:00.000Z";
    let record = json!({
        "$type": "app.bsky.feed.post",
        "createdAt": time,
        "langs": ["en"],
        "text": format!("generated post {seq} with some text to give it a realistic size"),
    });
    let record_block = encode(&to_cbor(&record).expect("the record is DAG-JSON"));
    let record_cid = cid_of(&record_block);
    let commit = json!({
        "did": did,
        "version": 3,
        "data": {"$link": record_cid.to_string()},
        "rev": format!("rev{seq}"),
        "prev": null,
        "sig": {"$bytes": "c2lnbmF0dXJl"},
    });
    let commit_block = encode(&to_cbor(&commit).expect("the commit is DAG-JSON"));
    let commit_cid = cid_of(&commit_block);
    let blocks = car(commit_cid, &[(commit_cid, commit_block), (record_cid, record_block)]);

    let body = json!({
        "seq": seq,
        "rebase": false,
        "tooBig": false,
        "repo": did,
        "commit": {"$link": commit_cid.to_string()},
        "rev": format!("rev{seq}"),
        "since": null,
        "blocks": {"$bytes": base64::engine::general_purpose::STANDARD.encode(&blocks)},
        "ops": [{"action": "create", "path": format!("app.bsky.feed.post/{rkey}"), "cid": {"$link": record_cid.to_string()}}],
        "blobs": [],
        "time": time,
    });
    let frame = message_frame("#commit", &to_cbor(&body).expect("the body is DAG-JSON"));
    let summary = Summary {
        did,
        kind: "create".to_owned(),
        collection: "app.bsky.feed.post".to_owned(),
        rkey,
        cid: Some(record_cid.to_string()),
        record: Some(record),
        seq: None,
        handle: None,
        active: None,
        status: None,
        rev: None,
    };
    GeneratedCommit { frame, summary }
}

/// Rewrites the `seq` of a recorded frame, keeping everything else.
pub fn with_seq(frame: &[u8], seq: i64) -> Vec<u8> {
    let mut rest = frame;
    let header: ciborium::Value = ciborium::de::from_reader(&mut rest).expect("a frame header");
    let mut body: ciborium::Value = ciborium::de::from_reader(&mut rest).expect("a frame body");
    if let ciborium::Value::Map(entries) = &mut body {
        for (key, value) in entries.iter_mut() {
            if key.as_text() == Some("seq") {
                *value = ciborium::Value::Integer(seq.into());
            }
        }
    }
    let mut out = encode(&header);
    out.extend(encode(&body));
    out
}

/// An `#info` frame.
pub fn info_frame(name: &str, message: &str) -> Vec<u8> {
    message_frame("#info", &to_cbor(&json!({"name": name, "message": message})).expect("DAG-JSON"))
}

/// An error frame (`op` = -1).
pub fn error_frame(error: &str, message: &str) -> Vec<u8> {
    let header = to_cbor(&json!({"op": -1})).expect("DAG-JSON");
    let mut frame = encode(&header);
    frame.extend(encode(&to_cbor(&json!({"error": error, "message": message})).expect("DAG-JSON")));
    frame
}


/// One operation of a hand-built commit.
pub struct Op<'a> {
    pub action: &'a str,
    pub path: &'a str,
    pub cid: Option<Cid>,
}

/// A `#commit` frame with the given operations and CAR bytes (`None` leaves `blocks` out).
pub fn commit_frame(seq: i64, did: &str, ops: &[Op<'_>], blocks: Option<Vec<u8>>, too_big: bool) -> Vec<u8> {
    let ops: Vec<serde_json::Value> = ops
        .iter()
        .map(|op| {
            let cid = op.cid.map(|cid| json!({"$link": cid.to_string()})).unwrap_or(serde_json::Value::Null);
            json!({"action": op.action, "path": op.path, "cid": cid})
        })
        .collect();
    let mut body = json!({
        "seq": seq,
        "rebase": false,
        "tooBig": too_big,
        "repo": did,
        "commit": {"$link": cid_of(b"commit").to_string()},
        "rev": format!("rev{seq}"),
        "since": null,
        "ops": ops,
        "blobs": [],
        "time": "2026-07-04T14:40:00.000Z",
    });
    if let Some(blocks) = blocks {
        body["blocks"] = json!({"$bytes": base64::engine::general_purpose::STANDARD.encode(blocks)});
    }
    message_frame("#commit", &to_cbor(&body).expect("the body is DAG-JSON"))
}

/// A record block from DAG-JSON, with its CID.
pub fn record_block(record: &serde_json::Value) -> (Cid, Vec<u8>) {
    let block = encode(&to_cbor(record).expect("the record is DAG-JSON"));
    (cid_of(&block), block)
}
