//! Decoding of one `com.atproto.sync.subscribeRepos` frame: a DAG-CBOR header `{op, t}` followed
//! by a DAG-CBOR body, into a typed [`Frame`].
//!
//! This is a pure step: bytes in, a frame or a [`FrameError`] out. It never panics on any input.
//! Record blocks inside a commit's CAR are not touched here; see `commit`.

use cid::Cid;
use serde::Deserialize;

/// Nesting limit for frame headers and bodies. A well-formed body nests four levels deep; records
/// inside a commit are decoded separately, with their own limit.
const FRAME_RECURSION_LIMIT: usize = 32;

/// One decoded frame.
#[derive(Debug)]
pub enum Frame {
    Commit(CommitFrame),
    Identity(IdentityFrame),
    Account(AccountFrame),
    Sync(SyncFrame),
    Info(InfoFrame),
    /// An error frame (`op` = -1): the relay reports a problem and closes the stream.
    Error(ErrorFrame),
    /// A message type this host does not handle, such as the legacy `#handle` or `#tombstone`.
    Unknown { message_type: String },
}

impl Frame {
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

#[derive(Deserialize)]
struct Header {
    op: i64,
    t: Option<String>,
}

/// A CID link: CBOR tag 42 around the CID's bytes, prefixed by the multibase identity byte 0x00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidLink(pub Cid);

impl<'de> Deserialize<'de> for CidLink {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let ciborium::tag::Required::<serde_bytes::ByteBuf, 42>(bytes) = Deserialize::deserialize(deserializer)?;
        parse_cid_link(&bytes).map(CidLink).map_err(serde::de::Error::custom)
    }
}

/// Parses the bytes inside a tag-42 CID link.
pub fn parse_cid_link(bytes: &[u8]) -> Result<Cid, String> {
    match bytes.split_first() {
        Some((0, cid)) => Cid::try_from(cid).map_err(|error| format!("invalid CID link: {error}")),
        Some((prefix, _)) => Err(format!("CID link starts with {prefix:#04x}, not the multibase identity prefix 0x00")),
        None => Err("empty CID link".to_owned()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitFrame {
    pub seq: i64,
    pub repo: String,
    pub rev: String,
    pub time: String,
    /// Set when the commit was too big to send whole; `blocks` may then be empty.
    #[serde(default)]
    pub too_big: bool,
    pub ops: Vec<RepoOp>,
    /// A CAR file holding the commit block and the blocks of created and updated records.
    #[serde(default, with = "serde_bytes")]
    pub blocks: Vec<u8>,
}

#[derive(Debug, Deserialize)]
pub struct RepoOp {
    /// `create`, `update` or `delete`.
    pub action: String,
    /// `collection/rkey`.
    pub path: String,
    /// The new record's CID; null for deletes.
    pub cid: Option<CidLink>,
}

#[derive(Debug, Deserialize)]
pub struct IdentityFrame {
    pub seq: i64,
    pub did: String,
    pub time: String,
    pub handle: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct AccountFrame {
    pub seq: i64,
    pub did: String,
    pub time: String,
    pub active: bool,
    pub status: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SyncFrame {
    pub seq: i64,
    pub did: String,
    pub time: String,
    pub rev: String,
}

#[derive(Debug, Deserialize)]
pub struct InfoFrame {
    pub name: String,
    pub message: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorFrame {
    pub error: String,
    pub message: Option<String>,
}

/// Decodes one frame as the relay sent it.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, FrameError> {
    let mut rest = bytes;
    let header: Header = ciborium::de::from_reader_with_recursion_limit(&mut rest, FRAME_RECURSION_LIMIT)
        .map_err(|error| FrameError::Header(error.to_string()))?;

    let frame = match (header.op, header.t.as_deref()) {
        (1, Some("#commit")) => Frame::Commit(decode_body(&mut rest, "#commit")?),
        (1, Some("#identity")) => Frame::Identity(decode_body(&mut rest, "#identity")?),
        (1, Some("#account")) => Frame::Account(decode_body(&mut rest, "#account")?),
        (1, Some("#sync")) => Frame::Sync(decode_body(&mut rest, "#sync")?),
        (1, Some("#info")) => Frame::Info(decode_body(&mut rest, "#info")?),
        (1, Some(other)) => return Ok(Frame::Unknown { message_type: other.to_owned() }),
        (1, None) => return Err(FrameError::Header("a message frame without a type `t`".to_owned())),
        (-1, _) => Frame::Error(decode_body(&mut rest, "error")?),
        (op, _) => return Err(FrameError::UnknownOp(op)),
    };
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(frame)
}

fn decode_body<T: serde::de::DeserializeOwned>(rest: &mut &[u8], message_type: &str) -> Result<T, FrameError> {
    ciborium::de::from_reader_with_recursion_limit(&mut *rest, FRAME_RECURSION_LIMIT).map_err(|error| {
        FrameError::Body { message_type: message_type.to_owned(), reason: error.to_string() }
    })
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
        let Frame::Identity(identity) = decode_frame(&encode(&[header.clone(), body])).unwrap() else {
            panic!("expected an identity frame");
        };
        assert_eq!(identity.handle, None);

        let body = map(vec![
            ("seq", 5.into()),
            ("did", "did:plc:a".into()),
            ("time", "t".into()),
            ("handle", "a.test".into()),
        ]);
        let Frame::Identity(identity) = decode_frame(&encode(&[header, body])).unwrap() else {
            panic!("expected an identity frame");
        };
        assert_eq!(identity.handle.as_deref(), Some("a.test"));
    }

    #[test]
    fn error_frame_carries_error_name() {
        let header = map(vec![("op", (-1).into())]);
        let body = map(vec![("error", "FutureCursor".into()), ("message", "cursor in the future".into())]);
        let Frame::Error(error) = decode_frame(&encode(&[header, body])).unwrap() else {
            panic!("expected an error frame");
        };
        assert_eq!(error.error, "FutureCursor");
    }

    #[test]
    fn unknown_message_type_is_reported_not_failed() {
        let header = map(vec![("op", 1.into()), ("t", "#tombstone".into())]);
        let frame = decode_frame(&encode(&[header, map(vec![])])).unwrap();
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
    fn trailing_bytes_after_body_are_rejected() {
        let header = map(vec![("op", 1.into()), ("t", "#info".into())]);
        let body = map(vec![("name", "OutdatedCursor".into())]);
        let mut bytes = encode(&[header, body]);
        bytes.push(0);
        assert!(matches!(decode_frame(&bytes), Err(FrameError::TrailingBytes(1))));
    }
}
