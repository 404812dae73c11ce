//! The reference PDS as a firehose source: `tests/pds/run-pds.mjs` starts a PLC directory and the
//! PDS on loopback with Node 22, and `tests/pds/session.mjs` plays a scripted session against them
//! and writes the events the firehose must carry. `scripts/install-deps.sh pds` installs both.
//!
//! Without `tests/pds/node_modules` the tests print a line starting with `SKIPPED:` and pass; with
//! `ATKAFKA_REQUIRE_FIXTURES=1` the absence fails them instead. A PDS that is installed but does
//! not start always fails the test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Value};

use crate::host::{unique, wait_for_child};
use crate::workspace_dir;

/// How long the PLC directory and the PDS may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the session script may take. It takes about 6 s on a two-core machine, 3 s of which
/// is a deliberate wait.
const SESSION_TIMEOUT: Duration = Duration::from_secs(180);

/// Returns the Node project with the PDS and its scripts: `tests/pds`.
pub fn pds_dir() -> PathBuf {
    workspace_dir().join("tests").join("pds")
}

/// Returns the Node 22 binary: `$ATKAFKA_PDS_NODE`, or the one `scripts/install-deps.sh pds`
/// installs in `target/pds-node`.
pub fn node_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ATKAFKA_PDS_NODE") {
        return PathBuf::from(path);
    }
    workspace_dir().join("target").join("pds-node").join("bin").join("node")
}

/// Returns whether the PDS is installed, after reporting the skip when it is not. Panics instead
/// when `ATKAFKA_REQUIRE_FIXTURES=1`.
pub fn installed() -> bool {
    let modules = pds_dir().join("node_modules");
    if modules.exists() {
        return true;
    }
    let required = std::env::var("ATKAFKA_REQUIRE_FIXTURES").is_ok_and(|value| value == "1");
    assert!(
        !required,
        "{} is missing and ATKAFKA_REQUIRE_FIXTURES=1; install it with `scripts/install-deps.sh pds`",
        modules.display()
    );
    eprintln!("SKIPPED: {} not found; install the PDS with `scripts/install-deps.sh pds`", modules.display());
    false
}

/// Returns early from a test, reporting the skip, when the PDS is not installed.
#[macro_export]
macro_rules! pds_or_skip {
    () => {
        if !$crate::pds::installed() {
            return;
        }
    };
}

/// A running `run-pds.mjs`: the PLC directory and the PDS, stopped by PID when dropped.
pub struct Pds {
    child: Child,
    log_path: PathBuf,
    /// `http://127.0.0.1:PORT` of the PLC directory.
    pub plc_url: String,
    /// `http://127.0.0.1:PORT` of the PDS.
    pub pds_url: String,
    /// `ws://127.0.0.1:PORT`, for `--relay-host`.
    pub firehose_url: String,
    pub admin_password: String,
}

impl Pds {
    /// Starts the PLC directory and the PDS and waits for the line announcing them. Panics with the
    /// servers' output when they exit or do not announce themselves within 90 s.
    pub fn start() -> Pds {
        let node = node_binary();
        assert!(
            node.exists(),
            "the Node 22 binary {} is missing; install it with `scripts/install-deps.sh pds`",
            node.display()
        );
        let log_path = std::env::temp_dir().join(format!("atkafka-pds-{}-{}.log", std::process::id(), unique()));
        let log = std::fs::File::create(&log_path).expect("create the PDS log");
        let mut child = Command::new(&node)
            .arg("run-pds.mjs")
            .current_dir(pds_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {} run-pds.mjs: {error}", node.display()));

        // Lines are read on a thread so that a silent server cannot block the deadline, and so
        // that the pipe keeps draining when the servers log to stdout.
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });

        let deadline = Instant::now() + START_TIMEOUT;
        let mut output = String::new();
        let ready = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match received.recv_timeout(remaining) {
                Ok(line) => match serde_json::from_str::<Value>(&line) {
                    Ok(ready) if ready.get("pdsUrl").is_some() => break ready,
                    _ => output.push_str(&format!("{line}\n")),
                },
                Err(error) => {
                    let reason = match error {
                        mpsc::RecvTimeoutError::Timeout => format!("did not announce itself within {START_TIMEOUT:?}"),
                        mpsc::RecvTimeoutError::Disconnected => "exited before announcing itself".to_owned(),
                    };
                    let _ = child.kill();
                    let status = child.wait().map(|status| status.to_string()).unwrap_or_default();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    panic!("run-pds.mjs {reason} ({status}); stdout:\n{output}stderr:\n{log}");
                }
            }
        };
        let field = |name: &str| {
            ready[name].as_str().unwrap_or_else(|| panic!("`{name}` missing in the ready line {ready}")).to_owned()
        };
        Pds {
            plc_url: field("plcUrl"),
            pds_url: field("pdsUrl"),
            firehose_url: field("firehoseUrl"),
            admin_password: field("adminPassword"),
            child,
            log_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns the servers' standard error.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status; `None` if it is still running.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // SAFETY: `kill` has no memory-safety preconditions; the PID is our own child's.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        wait_for_child(&mut self.child, timeout)
    }
}

impl Drop for Pds {
    fn drop(&mut self) {
        // SIGTERM first, so that the script removes its temporary folder.
        if self.stop(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}


/// One account of the session, with its handle at the end of the session.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub did: String,
    pub handle: String,
}

/// What `session.mjs` wrote: the accounts, and the events the firehose must carry in the order the
/// PDS sequenced them, each in the shape [`normalize_standard`] returns.
pub struct Session {
    pub accounts: Vec<Account>,
    pub events: Vec<Value>,
    /// The same events with object keys in the order getRecord served them.
    pub ordered_events: Vec<OrderedJson>,
}

impl Session {
    pub fn account(&self, name: &str) -> &Account {
        self.accounts.iter().find(|account| account.name == name).unwrap_or_else(|| panic!("no account {name}"))
    }
}

/// Runs `session.mjs` against `pds` and reads the events it expects. Panics with the script's
/// output when it fails or takes longer than 180 s.
pub fn play_session(pds: &Pds) -> Session {
    let id = format!("{}-{}", std::process::id(), unique());
    let out_path = std::env::temp_dir().join(format!("atkafka-pds-session-{id}.json"));
    let log_path = std::env::temp_dir().join(format!("atkafka-pds-session-{id}.log"));
    let log = std::fs::File::create(&log_path).expect("create the session log");
    let mut child = Command::new(node_binary())
        .arg("session.mjs")
        .args(["--pds", &pds.pds_url, "--admin-password", &pds.admin_password])
        .arg("--out")
        .arg(&out_path)
        .current_dir(pds_dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log handle"))
        .stderr(log)
        .spawn()
        .expect("start session.mjs");
    let deadline = Instant::now() + SESSION_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for session.mjs") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("session.mjs ran longer than {SESSION_TIMEOUT:?}; output:\n{}", read_and_remove(&log_path));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = read_and_remove(&log_path);
    assert!(status.success(), "session.mjs exited with {status}; output:\n{output}\nPDS log:\n{}", pds.log());

    let text = read_and_remove(&out_path);
    let written: Value = serde_json::from_str(&text).expect("the session output is JSON");
    let ordered: OrderedJson = serde_json::from_str(&text).expect("the session output is JSON");
    let accounts = written["accounts"]
        .as_array()
        .expect("`accounts` is an array")
        .iter()
        .map(|account| Account {
            name: account["name"].as_str().expect("account name").to_owned(),
            did: account["did"].as_str().expect("account DID").to_owned(),
            handle: account["handle"].as_str().expect("account handle").to_owned(),
        })
        .collect();
    let events = written["events"].as_array().expect("`events` is an array").clone();
    let ordered_events = match ordered.get("events") {
        Some(OrderedJson::Array(events)) => events.clone(),
        _ => panic!("`events` is not an array"),
    };
    Session { accounts, events, ordered_events }
}

fn read_and_remove(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let _ = std::fs::remove_file(path);
    text
}

/// One standard-shape message reduced to the session's event shape, with the fields the session
/// cannot predict kept beside it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// `{"kind":"operation"|"identity"|"account"|"sync","did",…}` as in the session's output.
    pub event: Value,
    /// The firehose seq, for identity, account and sync events.
    pub seq: Option<i64>,
    pub timestamp: String,
}

fn text_at(value: &Value, pointer: &str) -> Result<String, String> {
    value.pointer(pointer).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| format!("`{pointer}` missing in {value}"))
}

fn seq_at(value: &Value, pointer: &str) -> Result<i64, String> {
    value.pointer(pointer).and_then(Value::as_i64).ok_or_else(|| format!("`{pointer}` missing in {value}"))
}

/// Reduces one standard-shape message to the session's event shape, checking the fields that must
/// agree with each other (URI and path against DID, collection and rkey) and the documented
/// presence of optional fields.
pub fn normalize_standard(message: &Value) -> Result<Observed, String> {
    let did = text_at(message, "/did")?;
    let timestamp = text_at(message, "/timestamp")?;
    if let Some(operation) = message.get("operation") {
        let collection = text_at(operation, "/collection")?;
        let rkey = text_at(operation, "/rkey")?;
        let uri = text_at(operation, "/uri")?;
        if uri != format!("at://{did}/{collection}/{rkey}") {
            return Err(format!("uri {uri} does not match the DID, collection and rkey in {message}"));
        }
        let path = text_at(operation, "/path")?;
        if path != format!("{collection}/{rkey}") {
            return Err(format!("path {path} does not match the collection and rkey in {message}"));
        }
        for field in ["cid", "record"] {
            if operation.get(field).is_none() {
                return Err(format!("operation without `{field}` (null expected on deletes): {message}"));
            }
        }
        let event = json!({
            "kind": "operation",
            "did": did,
            "action": text_at(operation, "/action")?,
            "collection": collection,
            "rkey": rkey,
            "uri": uri,
            "cid": operation["cid"],
            "record": operation["record"],
        });
        return Ok(Observed { event, seq: None, timestamp });
    }
    if let Some(identity) = message.get("identity") {
        let Some(handle) = identity.get("handle") else {
            return Err(format!("identity without `handle` (null expected when absent): {message}"));
        };
        let event = json!({"kind": "identity", "did": did, "handle": handle});
        return Ok(Observed { event, seq: Some(seq_at(identity, "/seq")?), timestamp });
    }
    if let Some(account) = message.get("account") {
        let status = match account.get("status") {
            None => Value::Null,
            Some(Value::Null) => return Err(format!("account with `status` null (left out expected): {message}")),
            Some(status) => status.clone(),
        };
        let active = account.get("active").and_then(Value::as_bool).ok_or_else(|| format!("`active` missing in {message}"))?;
        let event = json!({"kind": "account", "did": did, "active": active, "status": status});
        return Ok(Observed { event, seq: Some(seq_at(account, "/seq")?), timestamp });
    }
    if let Some(sync) = message.get("sync") {
        let event = json!({"kind": "sync", "did": did, "rev": text_at(sync, "/rev")?});
        return Ok(Observed { event, seq: Some(seq_at(sync, "/seq")?), timestamp });
    }
    Err(format!("message is neither an operation nor an identity, account or sync event: {message}"))
}

/// A JSON value that keeps the order of object keys, to check the order the standard shape
/// promises (the order of the DAG-CBOR block), which `serde_json::Value` does not keep.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderedJson {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<OrderedJson>),
    Object(Vec<(String, OrderedJson)>),
}

impl OrderedJson {
    /// Returns the value of `key` in an object.
    pub fn get(&self, key: &str) -> Option<&OrderedJson> {
        match self {
            OrderedJson::Object(entries) => entries.iter().find(|(name, _)| name == key).map(|(_, value)| value),
            _ => None,
        }
    }

    /// Lists the keys of every object inside, each as a JSON pointer, in document order.
    pub fn key_paths(&self) -> Vec<String> {
        let mut paths = Vec::new();
        self.collect_key_paths("", &mut paths);
        paths
    }

    fn collect_key_paths(&self, prefix: &str, paths: &mut Vec<String>) {
        match self {
            OrderedJson::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    item.collect_key_paths(&format!("{prefix}/{index}"), paths);
                }
            }
            OrderedJson::Object(entries) => {
                for (key, value) in entries {
                    let path = format!("{prefix}/{}", key.replace('~', "~0").replace('/', "~1"));
                    paths.push(path.clone());
                    value.collect_key_paths(&path, paths);
                }
            }
            _ => {}
        }
    }
}

impl<'de> Deserialize<'de> for OrderedJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<OrderedJson, D::Error> {
        deserializer.deserialize_any(OrderedJsonVisitor)
    }
}

struct OrderedJsonVisitor;

impl<'de> Visitor<'de> for OrderedJsonVisitor {
    type Value = OrderedJson;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Number(value.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<OrderedJson, E> {
        serde_json::Number::from_f64(value).map(OrderedJson::Number).ok_or_else(|| E::custom("a non-finite number"))
    }

    fn visit_str<E>(self, value: &str) -> Result<OrderedJson, E> {
        Ok(OrderedJson::String(value.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<OrderedJson, A::Error> {
        let mut values = Vec::new();
        while let Some(item) = items.next_element()? {
            values.push(item);
        }
        Ok(OrderedJson::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<OrderedJson, A::Error> {
        let mut values = Vec::new();
        while let Some((key, value)) = entries.next_entry::<String, OrderedJson>()? {
            values.push((key, value));
        }
        Ok(OrderedJson::Object(values))
    }
}
