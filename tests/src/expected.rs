//! Comparison of the host's standard-shape messages with Jetstream's rendering of the same events,
//! an independent implementation recorded at the same moment as the relay capture.
//!
//! Both sides are reduced to the fields they share (DID, action, collection, rkey, CID, record,
//! and the identity and account fields), keyed so that each event is matched exactly once.

use std::collections::BTreeMap;

use serde_json::Value;

/// The fields both renderings carry for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub did: String,
    /// `create`, `update`, `delete`, `identity` or `account`.
    pub kind: String,
    pub collection: String,
    pub rkey: String,
    pub cid: Option<String>,
    pub record: Option<Value>,
    pub seq: Option<i64>,
    pub handle: Option<String>,
    pub active: Option<bool>,
    pub status: Option<String>,
    /// The repository revision of a sync event.
    pub rev: Option<String>,
}

impl Summary {
    /// A summary of `did` with every other field empty, to fill in with `..`.
    pub fn empty(did: String) -> Summary {
        Summary {
            did,
            kind: String::new(),
            collection: String::new(),
            rkey: String::new(),
            cid: None,
            record: None,
            seq: None,
            handle: None,
            active: None,
            status: None,
            rev: None,
        }
    }

    fn key(&self) -> String {
        format!("{} {} {}/{} {:?} {:?}", self.did, self.kind, self.collection, self.rkey, self.cid, self.seq)
    }
}

fn text(value: &Value, pointer: &str) -> Option<String> {
    value.pointer(pointer).and_then(Value::as_str).map(str::to_owned)
}

fn required(value: &Value, pointer: &str) -> Result<String, String> {
    text(value, pointer).ok_or_else(|| format!("`{pointer}` missing in {value}"))
}

fn non_null(value: &Value, pointer: &str) -> Option<Value> {
    value.pointer(pointer).filter(|value| !value.is_null()).cloned()
}

/// Reduces one line of Jetstream's output.
pub fn from_jetstream(event: &Value) -> Result<Summary, String> {
    let did = required(event, "/did")?;
    let empty = Summary::empty(did);
    match event.get("kind").and_then(Value::as_str) {
        Some("commit") => Ok(Summary {
            kind: required(event, "/commit/operation")?,
            collection: required(event, "/commit/collection")?,
            rkey: required(event, "/commit/rkey")?,
            cid: text(event, "/commit/cid"),
            record: non_null(event, "/commit/record"),
            ..empty
        }),
        Some("identity") => Ok(Summary {
            kind: "identity".to_owned(),
            seq: event.pointer("/identity/seq").and_then(Value::as_i64),
            handle: text(event, "/identity/handle"),
            ..empty
        }),
        Some("account") => Ok(Summary {
            kind: "account".to_owned(),
            seq: event.pointer("/account/seq").and_then(Value::as_i64),
            active: event.pointer("/account/active").and_then(Value::as_bool),
            status: text(event, "/account/status"),
            ..empty
        }),
        other => Err(format!("unknown Jetstream kind {other:?}")),
    }
}

/// Reduces one standard-shape message of the host.
pub fn from_standard(message: &Value) -> Result<Summary, String> {
    let did = required(message, "/did")?;
    if message.get("timestamp").and_then(Value::as_str).is_none() {
        return Err(format!("`timestamp` missing in {message}"));
    }
    let empty = Summary::empty(did.clone());
    if let Some(operation) = message.get("operation") {
        let collection = required(operation, "/collection")?;
        let rkey = required(operation, "/rkey")?;
        let uri = required(operation, "/uri")?;
        if uri != format!("at://{did}/{collection}/{rkey}") {
            return Err(format!("uri {uri} does not match DID, collection and rkey"));
        }
        let path = required(operation, "/path")?;
        if path != format!("{collection}/{rkey}") {
            return Err(format!("path {path} does not match collection and rkey"));
        }
        return Ok(Summary {
            kind: required(operation, "/action")?,
            collection,
            rkey,
            cid: text(operation, "/cid"),
            record: non_null(operation, "/record"),
            ..empty
        });
    }
    if let Some(identity) = message.get("identity") {
        if identity.get("handle").is_none() {
            return Err(format!("identity without a `handle` field (null expected when absent): {message}"));
        }
        return Ok(Summary {
            kind: "identity".to_owned(),
            seq: identity.get("seq").and_then(Value::as_i64),
            handle: text(identity, "/handle"),
            ..empty
        });
    }
    if let Some(account) = message.get("account") {
        return Ok(Summary {
            kind: "account".to_owned(),
            seq: account.get("seq").and_then(Value::as_i64),
            active: account.get("active").and_then(Value::as_bool),
            status: text(account, "/status"),
            ..empty
        });
    }
    if let Some(sync) = message.get("sync") {
        return Ok(Summary {
            kind: "sync".to_owned(),
            seq: sync.get("seq").and_then(Value::as_i64),
            rev: text(sync, "/rev"),
            ..empty
        });
    }
    Err(format!("message is neither an operation nor an identity, account or sync event: {message}"))
}

/// Compares the two sets event by event and describes every difference.
pub fn compare(expected: &[Summary], actual: &[Summary]) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut by_key: BTreeMap<String, Vec<&Summary>> = BTreeMap::new();
    for summary in actual {
        by_key.entry(summary.key()).or_default().push(summary);
    }
    for summary in expected {
        match by_key.get_mut(&summary.key()).and_then(Vec::pop) {
            None => problems.push(format!("missing: {}", summary.key())),
            Some(found) if found != summary => {
                problems.push(format!("differs: {}\n  expected {summary:?}\n  actual   {found:?}", summary.key()))
            }
            Some(_) => {}
        }
    }
    for (key, rest) in by_key {
        for _ in rest {
            problems.push(format!("unexpected: {key}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{} differences:\n{}", problems.len(), problems.join("\n")))
    }
}

/// Renders a host event in the standard shape in-process, with the same code the built-in guest
/// runs, for tests of the decode path that need no WebAssembly or Kafka.
pub fn render_standard(event: &atkafka_host::firehose::event::Event) -> Value {
    let mut out = Vec::new();
    atkafka_host::standard_shape::write_standard(&mut out, event);
    serde_json::from_slice(&out).expect("the standard shape is valid JSON")
}
