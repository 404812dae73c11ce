//! Decoding of one `com.atproto.sync.subscribeRepos` frame: a DAG-CBOR header `{op, t}` followed
//! by a DAG-CBOR body, into a typed [`Frame`] that borrows its strings and the commit's CAR from
//! the frame's bytes.
//!
//! This is a pure step: bytes in, a frame or a [`FrameError`] out. It never panics on any input.
//! Fields a frame type does not use (a commit's `blobs`, `prevData`, `since`, ...) are checked to
//! be well-formed and skipped. A missing required field or a field of the wrong type makes the
//! frame undecodable. Record blocks inside a commit's CAR are decoded in `commit`, not here.

use smallvec::SmallVec;

use super::cbor::{CborError, Cursor};
use super::cid_ref::CidRef;

/// Nesting limit for frame headers and bodies. A well-formed body nests four levels deep; records
/// inside a commit are decoded separately, with their own limit.
const FRAME_RECURSION_LIMIT: usize = 32;

/// One decoded frame.
#[derive(Debug)]
pub enum Frame<'a> {
    Commit(CommitFrame<'a>),
    Identity(IdentityFrame<'a>),
    Account(AccountFrame<'a>),
    Sync(SyncFrame<'a>),
    Info(InfoFrame<'a>),
    /// An error frame (`op` = -1): the relay reports a problem and closes the stream.
    Error(ErrorFrame),
    /// A message type this host does not handle, such as the legacy `#handle` or `#tombstone`.
    Unknown { message_type: String },
}

impl Frame<'_> {
    /// The frame type as a metric label: `commit`, `identity`, `account`, `sync`, `info`, `error`
    /// or `unknown`.
    pub fn label(&self) -> &'static str {
        match self {
            Frame::Commit(_) => "commit",
            Frame::Identity(_) => "identity",
            Frame::Account(_) => "account",
            Frame::Sync(_) => "sync",
            Frame::Info(_) => "info",
            Frame::Error(_) => "error",
            Frame::Unknown { .. } => "unknown",
        }
    }

    /// The frame's firehose sequence number, where it has one.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Frame::Commit(frame) => Some(frame.seq),
            Frame::Identity(frame) => Some(frame.seq),
            Frame::Account(frame) => Some(frame.seq),
            Frame::Sync(frame) => Some(frame.seq),
            Frame::Info(_) | Frame::Error(_) | Frame::Unknown { .. } => None,
        }
    }
}

/// All frame labels, so that every label exists as a metric from start-up.
pub const FRAME_LABELS: [&str; 8] =
    ["commit", "identity", "account", "sync", "info", "error", "unknown", "undecodable"];

/// Why a frame could not be decoded. The frame is counted and skipped.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("invalid frame header: {0}")]
    Header(String),
    #[error("invalid body of a `{message_type}` frame: {reason}")]
    Body { message_type: String, reason: String },
    #[error("unknown frame op {0}")]
    UnknownOp(i64),
    #[error("{0} bytes follow the frame body")]
    TrailingBytes(usize),
}

/// An error reading a body, naming the field when one is known.
#[derive(Debug)]
struct BodyError(String);

impl From<CborError> for BodyError {
    fn from(error: CborError) -> Self {
        BodyError(error.to_string())
    }
}

/// Adds the name of the field being read to an error.
fn in_field<T>(field: &str, result: Result<T, CborError>) -> Result<T, BodyError> {
    result.map_err(|error| BodyError(format!("field `{field}`: {error}")))
}

fn required<T>(field: &str, value: Option<T>) -> Result<T, BodyError> {
    value.ok_or_else(|| BodyError(format!("missing field `{field}`")))
}

/// Reads a map's entries and calls `field` with each key. `field` reads the values of the keys
/// it handles and returns `false` for the others, which are skipped. A repeated key is an error.
fn read_map<'a>(
    cursor: &mut Cursor<'a>,
    mut field: impl FnMut(&str, &mut Cursor<'a>) -> Result<bool, BodyError>,
) -> Result<(), BodyError> {
    let entries = cursor.map()?;
    cursor.announced(entries, 2)?;
    // A frame's maps have about a dozen keys, so the keys seen usually stay on the stack.
    let mut seen: SmallVec<[&str; 16]> = SmallVec::with_capacity(entries);
    // DAG-CBOR sorts map keys by length, then byte by byte, so while each key sorts after the one
    // before, no key can repeat. Once a key breaks that order, it and every later key are looked
    // up among the keys seen.
    let mut in_order = true;
    for _ in 0..entries {
        let key = cursor.text()?;
        in_order = in_order && seen.last().is_none_or(|previous| sorts_before(previous, key));
        if !in_order && seen.contains(&key) {
            return Err(BodyError(format!("field `{key}` appears twice")));
        }
        seen.push(key);
        if !field(key, cursor)? {
            in_field(key, cursor.skip(FRAME_RECURSION_LIMIT))?;
        }
    }
    Ok(())
}

/// Returns whether `first` sorts strictly before `second` in DAG-CBOR's order of map keys.
fn sorts_before(first: &str, second: &str) -> bool {
    // A byte loop, not a slice comparison: keys of equal length are a few bytes long, and the
    // call to `memcmp` that a slice comparison makes took about 3 % of decoding time.
    match first.len().cmp(&second.len()) {
        std::cmp::Ordering::Equal => first.bytes().lt(second.bytes()),
        order => order.is_lt(),
    }
}

/// Reads an optional text field: absent or `null` is `None`.
fn optional_text<'a>(field: &str, cursor: &mut Cursor<'a>) -> Result<Option<&'a str>, BodyError> {
    if cursor.null() {
        return Ok(None);
    }
    in_field(field, cursor.text()).map(Some)
}

#[derive(Debug)]
pub struct CommitFrame<'a> {
    pub seq: i64,
    pub repo: &'a str,
    pub rev: &'a str,
    pub time: &'a str,
    /// Set when the commit was too big to send whole; `blocks` may then be empty.
    pub too_big: bool,
    pub ops: Vec<RepoOp<'a>>,
    /// A CAR file holding the commit block and the blocks of created and updated records.
    pub blocks: &'a [u8],
}

#[derive(Debug)]
pub struct RepoOp<'a> {
    /// `create`, `update` or `delete`.
    pub action: &'a str,
    /// `collection/rkey`.
    pub path: &'a str,
    /// The new record's CID; null for deletes.
    pub cid: Option<CidRef<'a>>,
}

#[derive(Debug)]
pub struct IdentityFrame<'a> {
    pub seq: i64,
    pub did: &'a str,
    pub time: &'a str,
    pub handle: Option<&'a str>,
}

#[derive(Debug)]
pub struct AccountFrame<'a> {
    pub seq: i64,
    pub did: &'a str,
    pub time: &'a str,
    pub active: bool,
    pub status: Option<&'a str>,
}

#[derive(Debug)]
pub struct SyncFrame<'a> {
    pub seq: i64,
    pub did: &'a str,
    pub time: &'a str,
    pub rev: &'a str,
}

#[derive(Debug)]
pub struct InfoFrame<'a> {
    pub name: &'a str,
    pub message: Option<&'a str>,
}

#[derive(Debug)]
pub struct ErrorFrame {
    pub error: String,
    pub message: Option<String>,
}

/// Decodes one frame as the relay sent it.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    fn body<'a>(message_type: &str, result: Result<Frame<'a>, BodyError>) -> Result<Frame<'a>, FrameError> {
        result.map_err(|BodyError(reason)| FrameError::Body { message_type: message_type.to_owned(), reason })
    }

    let mut cursor = Cursor::new(bytes);
    let (op, message_type) = read_header(&mut cursor).map_err(|BodyError(reason)| FrameError::Header(reason))?;

    let frame = match (op, message_type) {
        (1, Some("#commit")) => body("#commit", read_commit(&mut cursor).map(Frame::Commit))?,
        (1, Some("#identity")) => body("#identity", read_identity(&mut cursor).map(Frame::Identity))?,
        (1, Some("#account")) => body("#account", read_account(&mut cursor).map(Frame::Account))?,
        (1, Some("#sync")) => body("#sync", read_sync(&mut cursor).map(Frame::Sync))?,
        (1, Some("#info")) => body("#info", read_info(&mut cursor).map(Frame::Info))?,
        (1, Some(other)) => return Ok(Frame::Unknown { message_type: other.to_owned() }),
        (1, None) => return Err(FrameError::Header("a message frame without a type `t`".to_owned())),
        (-1, _) => body("error", read_error(&mut cursor).map(Frame::Error))?,
        (op, _) => return Err(FrameError::UnknownOp(op)),
    };
    if cursor.remaining() > 0 {
        return Err(FrameError::TrailingBytes(cursor.remaining()));
    }
    Ok(frame)
}

fn read_header<'a>(cursor: &mut Cursor<'a>) -> Result<(i64, Option<&'a str>), BodyError> {
    let (mut op, mut message_type) = (None, None);
    read_map(cursor, |key, cursor| {
        match key {
            "op" => op = Some(in_field(key, cursor.integer())?),
            "t" => message_type = optional_text(key, cursor)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok((required("op", op)?, message_type))
}

fn read_commit<'a>(cursor: &mut Cursor<'a>) -> Result<CommitFrame<'a>, BodyError> {
    let (mut seq, mut repo, mut rev, mut time, mut ops) = (None, None, None, None, None);
    let (mut too_big, mut blocks) = (false, &[][..]);
    read_map(cursor, |key, cursor| {
        match key {
            "seq" => seq = Some(in_field(key, cursor.integer())?),
            "repo" => repo = Some(in_field(key, cursor.text())?),
            "rev" => rev = Some(in_field(key, cursor.text())?),
            "time" => time = Some(in_field(key, cursor.text())?),
            "tooBig" => too_big = in_field(key, cursor.boolean())?,
            "blocks" => blocks = in_field(key, cursor.bytes())?,
            "ops" => ops = Some(read_ops(cursor)?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(CommitFrame {
        seq: required("seq", seq)?,
        repo: required("repo", repo)?,
        rev: required("rev", rev)?,
        time: required("time", time)?,
        too_big,
        ops: required("ops", ops)?,
        blocks,
    })
}

fn read_ops<'a>(cursor: &mut Cursor<'a>) -> Result<Vec<RepoOp<'a>>, BodyError> {
    let count = in_field("ops", cursor.array())?;
    in_field("ops", cursor.announced(count, 1))?;
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let (mut action, mut path, mut cid) = (None, None, None);
        read_map(cursor, |key, cursor| {
            match key {
                "action" => action = Some(in_field("ops.action", cursor.text())?),
                "path" => path = Some(in_field("ops.path", cursor.text())?),
                "cid" if cursor.null() => cid = None,
                "cid" => cid = Some(in_field("ops.cid", cursor.cid_link())?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        ops.push(RepoOp { action: required("ops.action", action)?, path: required("ops.path", path)?, cid });
    }
    Ok(ops)
}

fn read_identity<'a>(cursor: &mut Cursor<'a>) -> Result<IdentityFrame<'a>, BodyError> {
    let (mut seq, mut did, mut time, mut handle) = (None, None, None, None);
    read_map(cursor, |key, cursor| {
        match key {
            "seq" => seq = Some(in_field(key, cursor.integer())?),
            "did" => did = Some(in_field(key, cursor.text())?),
            "time" => time = Some(in_field(key, cursor.text())?),
            "handle" => handle = optional_text(key, cursor)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(IdentityFrame { seq: required("seq", seq)?, did: required("did", did)?, time: required("time", time)?, handle })
}

fn read_account<'a>(cursor: &mut Cursor<'a>) -> Result<AccountFrame<'a>, BodyError> {
    let (mut seq, mut did, mut time, mut active, mut status) = (None, None, None, None, None);
    read_map(cursor, |key, cursor| {
        match key {
            "seq" => seq = Some(in_field(key, cursor.integer())?),
            "did" => did = Some(in_field(key, cursor.text())?),
            "time" => time = Some(in_field(key, cursor.text())?),
            "active" => active = Some(in_field(key, cursor.boolean())?),
            "status" => status = optional_text(key, cursor)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(AccountFrame {
        seq: required("seq", seq)?,
        did: required("did", did)?,
        time: required("time", time)?,
        active: required("active", active)?,
        status,
    })
}

fn read_sync<'a>(cursor: &mut Cursor<'a>) -> Result<SyncFrame<'a>, BodyError> {
    let (mut seq, mut did, mut time, mut rev) = (None, None, None, None);
    read_map(cursor, |key, cursor| {
        match key {
            "seq" => seq = Some(in_field(key, cursor.integer())?),
            "did" => did = Some(in_field(key, cursor.text())?),
            "time" => time = Some(in_field(key, cursor.text())?),
            "rev" => rev = Some(in_field(key, cursor.text())?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(SyncFrame {
        seq: required("seq", seq)?,
        did: required("did", did)?,
        time: required("time", time)?,
        rev: required("rev", rev)?,
    })
}

fn read_info<'a>(cursor: &mut Cursor<'a>) -> Result<InfoFrame<'a>, BodyError> {
    let (mut name, mut message) = (None, None);
    read_map(cursor, |key, cursor| {
        match key {
            "name" => name = Some(in_field(key, cursor.text())?),
            "message" => message = optional_text(key, cursor)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(InfoFrame { name: required("name", name)?, message })
}

fn read_error(cursor: &mut Cursor<'_>) -> Result<ErrorFrame, BodyError> {
    let (mut error, mut message) = (None, None);
    read_map(cursor, |key, cursor| {
        match key {
            "error" => error = Some(in_field(key, cursor.text())?.to_owned()),
            "message" => message = optional_text(key, cursor)?.map(str::to_owned),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(ErrorFrame { error: required("error", error)?, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(values: &[ciborium::Value]) -> Vec<u8> {
        let mut out = Vec::new();
        for value in values {
            ciborium::ser::into_writer(value, &mut out).unwrap();
        }
        out
    }

    fn map(entries: Vec<(&str, ciborium::Value)>) -> ciborium::Value {
        ciborium::Value::Map(entries.into_iter().map(|(key, value)| (key.into(), value)).collect())
    }

    #[test]
    fn identity_frame_decodes_with_and_without_handle() {
        let header = map(vec![("op", 1.into()), ("t", "#identity".into())]);
        let body = map(vec![("seq", 5.into()), ("did", "did:plc:a".into()), ("time", "t".into())]);
        let bytes = encode(&[header.clone(), body]);
        let Frame::Identity(identity) = decode_frame(&bytes).unwrap() else {
            panic!("expected an identity frame");
        };
        assert_eq!(identity.handle, None);

        let body = map(vec![
            ("seq", 5.into()),
            ("did", "did:plc:a".into()),
            ("time", "t".into()),
            ("handle", "a.test".into()),
        ]);
        let bytes = encode(&[header, body]);
        let Frame::Identity(identity) = decode_frame(&bytes).unwrap() else {
            panic!("expected an identity frame");
        };
        assert_eq!(identity.handle.as_deref(), Some("a.test"));
    }

    #[test]
    fn error_frame_carries_error_name() {
        let header = map(vec![("op", (-1).into())]);
        let body = map(vec![("error", "FutureCursor".into()), ("message", "cursor in the future".into())]);
        let bytes = encode(&[header, body]);
        let Frame::Error(error) = decode_frame(&bytes).unwrap() else {
            panic!("expected an error frame");
        };
        assert_eq!(error.error, "FutureCursor");
    }

    #[test]
    fn unknown_message_type_is_reported_not_failed() {
        let header = map(vec![("op", 1.into()), ("t", "#tombstone".into())]);
        let bytes = encode(&[header, map(vec![])]);
        let frame = decode_frame(&bytes).unwrap();
        assert!(matches!(frame, Frame::Unknown { message_type } if message_type == "#tombstone"));
    }

    #[test]
    fn garbage_and_truncated_frames_are_errors() {
        assert!(decode_frame(b"\xff\x00garbage").is_err());
        assert!(decode_frame(&[]).is_err());
        let header = map(vec![("op", 1.into()), ("t", "#identity".into())]);
        let body = map(vec![("seq", 5.into()), ("did", "did:plc:a".into()), ("time", "t".into())]);
        let bytes = encode(&[header, body]);
        for cut in 1..bytes.len() {
            assert!(decode_frame(&bytes[..cut]).is_err(), "a frame cut at {cut} bytes decoded");
        }
    }

    #[test]
    fn repeated_keys_are_rejected_in_any_order() {
        let header = map(vec![("op", 1.into()), ("t", "#identity".into())]);
        let bodies = [
            // In DAG-CBOR order, the repeat right after the first.
            vec![("did", "did:plc:a".into()), ("seq", 5.into()), ("seq", 6.into()), ("time", "t".into())],
            // Out of order, the repeat far from the first.
            vec![("time", "t".into()), ("did", "did:plc:a".into()), ("seq", 5.into()), ("time", "u".into())],
            // In order until the repeat, which sorts before the key it follows.
            vec![("did", "did:plc:a".into()), ("seq", 5.into()), ("time", "t".into()), ("did", "did:plc:b".into())],
        ];
        for body in bodies {
            let bytes = encode(&[header.clone(), map(body.clone())]);
            let error = decode_frame(&bytes).expect_err("a repeated key decoded");
            assert!(error.to_string().contains("appears twice"), "{error} for {body:?}");
        }
    }

    #[test]
    fn keys_out_of_dag_cbor_order_are_accepted() {
        let header = map(vec![("op", 1.into()), ("t", "#identity".into())]);
        let body = map(vec![("time", "t".into()), ("seq", 5.into()), ("did", "did:plc:a".into())]);
        let bytes = encode(&[header, body]);
        let Frame::Identity(identity) = decode_frame(&bytes).unwrap() else {
            panic!("expected an identity frame");
        };
        assert_eq!((identity.seq, identity.did, identity.time), (5, "did:plc:a", "t"));
    }

    #[test]
    fn trailing_bytes_after_body_are_rejected() {
        let header = map(vec![("op", 1.into()), ("t", "#info".into())]);
        let body = map(vec![("name", "OutdatedCursor".into())]);
        let mut bytes = encode(&[header, body]);
        bytes.push(0);
        assert!(matches!(decode_frame(&bytes), Err(FrameError::TrailingBytes(1))));
    }
}
