//! Generated firehose frames: valid `#commit` frames with real CIDs and a CAR of their blocks,
//! for tests and benchmarks that need more events than the recorded capture holds.
//!
//! Every generated record has a distinct rkey, so each event can be identified on the topic.

use base64::Engine as _;
use cid::Cid;
use futures::FutureExt;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::dagjson::{encode, message_frame, to_cbor};
use crate::expected::Summary;

const DAG_CBOR: u64 = 0x71;
const SHA2_256: u64 = 0x12;

/// Computes the CID (v1, DAG-CBOR, SHA-256) of a block.
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

/// Builds a `#commit` frame creating one `app.bsky.feed.post` record, with a DID picked from `dids`
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

/// Builds an `#info` frame.
pub fn info_frame(name: &str, message: &str) -> Vec<u8> {
    message_frame("#info", &to_cbor(&json!({"name": name, "message": message})).expect("DAG-JSON"))
}

/// Builds an error frame (`op` = -1).
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

/// Builds a `#commit` frame with the given operations and CAR bytes (`None` leaves `blocks` out).
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

/// Encodes a record block from DAG-JSON and returns it with its CID.
pub fn record_block(record: &serde_json::Value) -> (Cid, Vec<u8>) {
    let block = encode(&to_cbor(record).expect("the record is DAG-JSON"));
    (cid_of(&block), block)
}

/// A deterministic pseudo-random sequence (SplitMix64), so generated streams are reproducible.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

fn tid(random: &mut SplitMix) -> String {
    const ALPHABET: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";
    (0..13).map(|_| ALPHABET[random.below(32) as usize] as char).collect()
}

/// Builds a commit of one realistic record, with filler blocks standing for the MST nodes a real commit
/// carries: likes, posts with facets, embeds and replies, follows, reposts, profile updates and
/// deletes, from `dids` accounts, about 5 KB a frame on average as on the live relay. The seq is a
/// 9-byte integer whenever it is at least 2^32, so its 8 bytes at [`seq_offset`] can be
/// rewritten in place.
pub fn realistic_commit(seq: i64, dids: u64, random: &mut SplitMix) -> Vec<u8> {
    let did = format!("did:plc:{:024x}", random.below(dids));
    let subject_did = format!("did:plc:{:024x}", random.below(dids));
    let time = "2026-07-04T14:40:00.000Z";
    let subject = json!({"uri": format!("at://{subject_did}/app.bsky.feed.post/{}", tid(random)), "cid": cid_of(&random.next_u64().to_le_bytes()).to_string()});
    let kind = random.below(100);
    let (collection, record) = match kind {
        0..=44 => ("app.bsky.feed.like", Some(json!({"$type": "app.bsky.feed.like", "createdAt": time, "subject": subject}))),
        45..=69 => {
            let text: String = (0..(20 + random.below(250))).map(|i| if i % 6 == 5 { ' ' } else { 'a' }).collect();
            let mut post = json!({
                "$type": "app.bsky.feed.post",
                "createdAt": time,
                "langs": ["en"],
                "text": text,
                "facets": [{"index": {"byteStart": 0, "byteEnd": 5}, "features": [{"$type": "app.bsky.richtext.facet#link", "uri": "https://example.com/a"}]}],
            });
            if random.below(3) == 0 {
                post["embed"] = json!({"$type": "app.bsky.embed.images", "images": [{"alt": "", "image": {"$type": "blob", "ref": {"$link": cid_of(&random.next_u64().to_le_bytes()).to_string()}, "mimeType": "image/jpeg", "size": 123_456}}]});
            }
            if random.below(3) == 0 {
                post["reply"] = json!({"root": subject, "parent": subject});
            }
            ("app.bsky.feed.post", Some(post))
        }
        70..=79 => ("app.bsky.graph.follow", Some(json!({"$type": "app.bsky.graph.follow", "createdAt": time, "subject": subject_did}))),
        80..=91 => ("app.bsky.feed.repost", Some(json!({"$type": "app.bsky.feed.repost", "createdAt": time, "subject": subject}))),
        92..=94 => ("app.bsky.actor.profile", Some(json!({"$type": "app.bsky.actor.profile", "displayName": "Someone", "description": "A profile description of moderate length."}))),
        _ => ("app.bsky.feed.like", None),
    };
    let rkey = if collection == "app.bsky.actor.profile" { "self".to_owned() } else { tid(random) };
    let mut blocks = Vec::new();
    let op = match &record {
        Some(record) => {
            let (cid, block) = record_block(record);
            blocks.push((cid, block));
            json!({"action": "create", "path": format!("{collection}/{rkey}"), "cid": {"$link": cid.to_string()}})
        }
        None => json!({"action": "delete", "path": format!("{collection}/{rkey}"), "cid": null}),
    };
    // MST nodes and the commit block: opaque here, but real blocks with real CIDs.
    let filler_total = 2_000 + random.below(5_000) as usize;
    for chunk in 0..(filler_total / 700) {
        let bytes = encode(&ciborium::Value::Bytes((0..700).map(|i| (i as u64 ^ seq as u64 ^ chunk as u64) as u8).collect()));
        blocks.push((cid_of(&bytes), bytes));
    }
    let root = blocks.first().map(|(cid, _)| *cid).unwrap_or_else(|| cid_of(b"root"));
    let body = json!({
        "seq": seq,
        "rebase": false,
        "tooBig": false,
        "repo": did,
        "commit": {"$link": root.to_string()},
        "rev": tid(random),
        "since": null,
        "blocks": {"$bytes": base64::engine::general_purpose::STANDARD.encode(car(root, &blocks))},
        "ops": [op],
        "blobs": [],
        "time": time,
    });
    message_frame("#commit", &to_cbor(&body).expect("the body is DAG-JSON"))
}

/// Finds the offset of the 8 seq bytes in a frame whose seq is a 9-byte integer.
pub fn seq_offset(frame: &[u8]) -> Option<usize> {
    frame.windows(5).position(|window| window == b"\x63seq\x1b").map(|position| position + 5)
}
