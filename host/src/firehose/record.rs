//! Conversion of one DAG-CBOR record block into atproto JSON text.
//!
//! The atproto data model maps CID links (CBOR tag 42) to `{"$link": "<cid>"}` and byte strings to
//! `{"$bytes": "<base64 without padding>"}`; blobs are ordinary maps whose `ref` is a link, so they
//! come out as `{"$type":"blob","ref":{"$link":…},"mimeType":…,"size":…}`. Map keys keep their
//! order in the block. Anything outside the data model (floats, `undefined`, indefinite lengths,
//! non-string map keys, tags other than 42, integers outside the signed 64-bit range, nesting
//! deeper than [`RECORD_RECURSION_LIMIT`]) makes the record invalid; nothing is silently changed.

use std::io::Write;

use base64::Engine as _;
use ciborium::Value;

use super::frame::parse_cid_link;

/// Nesting limit for records. Real records nest about ten levels deep; a deeper block is rejected
/// instead of exhausting the stack.
pub const RECORD_RECURSION_LIMIT: usize = 128;

/// The reason a record block could not be turned into JSON.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record block is not valid CBOR: {0}")]
    Undecodable(String),
    #[error("record is outside the atproto data model: {0}")]
    NotDataModel(String),
}

/// Checks the structure of a record block item by item, without building it: definite lengths
/// only, no floats, no simple values but `false`, `true` and `null` (so no `undefined`), and
/// nesting no deeper than [`RECORD_RECURSION_LIMIT`]. ciborium's value decoder alone would turn
/// `undefined` into `null` and report deep nesting as malformed input.
fn check_structure(block: &[u8]) -> Result<(), RecordError> {
    use ciborium_io::Read as _;
    use ciborium_ll::{Decoder, Header};

    let malformed = |error: String| RecordError::Undecodable(error);
    let mut decoder = Decoder::from(block);
    // Items still to read at each open level; the bottom entry is the record itself.
    let mut remaining: Vec<u64> = vec![1];
    let mut scratch = Vec::new();
    while let Some(top) = remaining.last_mut() {
        if *top == 0 {
            remaining.pop();
            continue;
        }
        *top -= 1;
        let header = decoder.pull().map_err(|error| malformed(format!("{error:?}")))?;
        let children = match header {
            Header::Positive(_) | Header::Negative(_) => 0,
            Header::Float(float) => {
                return Err(RecordError::NotDataModel(format!("float {float} (floats are not allowed)")));
            }
            Header::Simple(20..=22) => 0,
            Header::Simple(23) => return Err(RecordError::NotDataModel("`undefined` is not allowed".to_owned())),
            Header::Simple(other) => return Err(RecordError::NotDataModel(format!("simple value {other} is not allowed"))),
            Header::Tag(_) => 1,
            Header::Bytes(Some(length)) | Header::Text(Some(length)) => {
                scratch.resize(length.min(block.len()), 0);
                if length > block.len() {
                    return Err(malformed(format!("a string of {length} bytes in a block of {}", block.len())));
                }
                decoder.read_exact(&mut scratch).map_err(|error| malformed(format!("{error:?}")))?;
                0
            }
            // Every item takes at least one byte, so a count above the block's size is malformed
            // (and doubling it for a map's keys and values could overflow).
            Header::Array(Some(length)) | Header::Map(Some(length)) if length > block.len() => {
                return Err(malformed(format!("{length} items announced in a block of {} bytes", block.len())));
            }
            Header::Array(Some(length)) => length as u64,
            Header::Map(Some(length)) => 2 * length as u64,
            Header::Bytes(None) | Header::Text(None) | Header::Array(None) | Header::Map(None) => {
                return Err(RecordError::NotDataModel("indefinite-length items are not allowed".to_owned()));
            }
            Header::Break => return Err(malformed("unexpected break".to_owned())),
        };
        if children > 0 {
            if remaining.len() > RECORD_RECURSION_LIMIT {
                return Err(RecordError::NotDataModel(format!("nesting deeper than {RECORD_RECURSION_LIMIT} levels")));
            }
            remaining.push(children);
        }
    }
    Ok(())
}

/// Converts a DAG-CBOR record block to atproto JSON text.
pub fn record_to_json(block: &[u8]) -> Result<String, RecordError> {
    check_structure(block)?;
    let mut rest = block;
    // The structure check has bounded the nesting; the margin covers ciborium's own counting.
    let value: Value = ciborium::de::from_reader_with_recursion_limit(&mut rest, 2 * RECORD_RECURSION_LIMIT + 8)
        .map_err(|error| RecordError::Undecodable(error.to_string()))?;
    if !rest.is_empty() {
        return Err(RecordError::Undecodable(format!("{} bytes follow the record", rest.len())));
    }
    if !matches!(value, Value::Map(_)) {
        return Err(RecordError::NotDataModel("a record must be a map".to_owned()));
    }
    let mut out = Vec::with_capacity(block.len() * 2);
    write_value(&mut out, &value)?;
    // Every string written came from a CBOR text string, which ciborium has checked is UTF-8, and
    // serde_json escapes it; the rest is ASCII.
    String::from_utf8(out).map_err(|error| RecordError::Undecodable(error.to_string()))
}

fn write_string(out: &mut Vec<u8>, value: &str) {
    // Writing a `str` into a `Vec` cannot fail.
    serde_json::to_writer(&mut *out, value).expect("a str serializes to JSON");
}

fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<(), RecordError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Integer(integer) => {
            let integer = i128::from(*integer);
            if i64::try_from(integer).is_err() {
                return Err(RecordError::NotDataModel(format!("integer {integer} is outside the signed 64-bit range")));
            }
            let _ = write!(out, "{integer}");
        }
        Value::Float(float) => {
            return Err(RecordError::NotDataModel(format!("float {float} (floats are not allowed)")));
        }
        Value::Text(text) => write_string(out, text),
        Value::Bytes(bytes) => {
            out.extend_from_slice(b"{\"$bytes\":\"");
            out.extend_from_slice(base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes).as_bytes());
            out.extend_from_slice(b"\"}");
        }
        Value::Tag(42, inner) => {
            let Value::Bytes(bytes) = inner.as_ref() else {
                return Err(RecordError::NotDataModel("tag 42 does not wrap a byte string".to_owned()));
            };
            let cid = parse_cid_link(bytes).map_err(RecordError::NotDataModel)?;
            out.extend_from_slice(b"{\"$link\":\"");
            out.extend_from_slice(cid.to_string().as_bytes());
            out.extend_from_slice(b"\"}");
        }
        Value::Tag(tag, _) => return Err(RecordError::NotDataModel(format!("CBOR tag {tag} (only tag 42 is allowed)"))),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        Value::Map(entries) => {
            out.push(b'{');
            for (index, (key, item)) in entries.iter().enumerate() {
                let Value::Text(key) = key else {
                    return Err(RecordError::NotDataModel("a map key is not a string".to_owned()));
                };
                if index > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_value(out, item)?;
            }
            out.push(b'}');
        }
        other => return Err(RecordError::NotDataModel(format!("unsupported CBOR value {other:?}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(value, &mut out).unwrap();
        out
    }

    fn record(entries: Vec<(&str, Value)>) -> Vec<u8> {
        cbor(&Value::Map(entries.into_iter().map(|(key, value)| (key.into(), value)).collect()))
    }

    #[test]
    fn bytes_become_unpadded_base64() {
        let json = record_to_json(&record(vec![("b", Value::Bytes(vec![1, 2, 3, 4]))])).unwrap();
        assert_eq!(json, r#"{"b":{"$bytes":"AQIDBA"}}"#);
    }

    #[test]
    fn map_keys_keep_block_order() {
        let json = record_to_json(&record(vec![("z", 1.into()), ("a", 2.into())])).unwrap();
        assert_eq!(json, r#"{"z":1,"a":2}"#);
    }

    #[test]
    fn floats_are_rejected() {
        let error = record_to_json(&record(vec![("f", Value::Float(1.5))])).unwrap_err();
        assert!(matches!(error, RecordError::NotDataModel(_)), "{error}");
    }

    #[test]
    fn non_map_record_is_rejected() {
        assert!(record_to_json(&cbor(&Value::Array(vec![]))).is_err());
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflow() {
        let mut bytes = vec![0xa1, 0x61, b'a'];
        for _ in 0..100_000 {
            bytes.push(0x81);
        }
        bytes.push(0x01);
        assert!(record_to_json(&bytes).is_err());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = record(vec![("a", 1.into())]);
        bytes.push(0x01);
        assert!(record_to_json(&bytes).is_err());
    }
}
