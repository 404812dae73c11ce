//! The standard JSON shape of an atkafka-host event, written straight into a byte buffer.
//!
//! Both built-in formatters render events through this crate, so the Osprey envelope always wraps
//! exactly the standard message. The record JSON comes from the host, which produced it from a
//! verified DAG-CBOR block, so it is spliced in as is rather than parsed again. Every other string
//! is escaped by `serde_json`.

use std::io::Write;
use std::ops::Range;

pub mod arena;
#[cfg(feature = "guest")]
pub mod guest;
pub mod packed;

/// The action of a record operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    /// Parses an operation's action as the firehose spells it.
    pub fn parse(action: &str) -> Option<Action> {
        match action {
            "create" => Some(Action::Create),
            "update" => Some(Action::Update),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// A borrowed view of one event, independent of any generated bindings.
#[derive(Clone, Copy, Debug)]
pub enum EventView<'a> {
    Operation {
        did: &'a str,
        seq: i64,
        rev: &'a str,
        time: &'a str,
        action: Action,
        collection: &'a str,
        rkey: &'a str,
        cid: Option<&'a str>,
        /// The record as atproto JSON text.
        record: Option<&'a str>,
    },
    Account {
        did: &'a str,
        seq: i64,
        time: &'a str,
        active: bool,
        status: Option<&'a str>,
    },
    Identity {
        did: &'a str,
        seq: i64,
        time: &'a str,
        handle: Option<&'a str>,
    },
    Sync {
        did: &'a str,
        seq: i64,
        time: &'a str,
        rev: &'a str,
    },
    Info {
        name: &'a str,
        message: Option<&'a str>,
    },
}

impl EventView<'_> {
    /// Returns the event's time as the relay sent it; info events have none.
    pub fn time(&self) -> Option<&str> {
        match self {
            EventView::Operation { time, .. }
            | EventView::Account { time, .. }
            | EventView::Identity { time, .. }
            | EventView::Sync { time, .. } => Some(time),
            EventView::Info { .. } => None,
        }
    }

    /// Returns the Osprey action name: `operation#create`, `operation#update`, `operation#delete`,
    /// `account`, `identity`, `sync` or `info`.
    pub fn action_name(&self) -> &'static str {
        match self {
            EventView::Operation { action: Action::Create, .. } => "operation#create",
            EventView::Operation { action: Action::Update, .. } => "operation#update",
            EventView::Operation { action: Action::Delete, .. } => "operation#delete",
            EventView::Account { .. } => "account",
            EventView::Identity { .. } => "identity",
            EventView::Sync { .. } => "sync",
            EventView::Info { .. } => "info",
        }
    }
}

/// Appends `value` as a JSON string literal, escaped exactly as serde_json escapes it.
pub fn write_json_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    write_json_string_contents(out, value);
    out.push(b'"');
}

/// Returns whether `bytes` contains a byte that a JSON string escapes: `"`, `\` or a control
/// character below U+0020. The scan has no early exit, so that the compiler vectorizes it.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |found, &byte| found | (byte < 0x20) | (byte == b'"') | (byte == b'\\'))
}

/// Appends `bytes` to `out` when no byte of it needs escaping, and returns whether it did.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn append_if_plain(out: &mut Vec<u8>, bytes: &[u8]) -> bool {
    if needs_escape(bytes) {
        return false;
    }
    out.extend_from_slice(bytes);
    true
}

/// Appends `bytes` to `out` when no byte of it needs escaping, and returns whether it did. Copies
/// and checks in one pass of 16-byte WebAssembly SIMD blocks, the last overlapping the one before.
///
/// Most strings are short: DIDs, CIDs, timestamps, rkeys. A scan followed by a copy cost the guest
/// a byte-by-byte loop under 16 bytes, and a call into the host for each `memory.copy`. So a string
/// under 16 bytes is copied and checked as two overlapping pieces.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn append_if_plain(out: &mut Vec<u8>, bytes: &[u8]) -> bool {
    use std::arch::wasm32::{u32x4, u64x2, u8x16_eq, u8x16_lt, u8x16_splat, v128, v128_any_true, v128_load, v128_or, v128_store};
    use std::ptr::{read_unaligned, write_unaligned};

    let escaped_in = |block: v128| -> v128 {
        let control = u8x16_lt(block, u8x16_splat(0x20));
        v128_or(control, v128_or(u8x16_eq(block, u8x16_splat(b'"')), u8x16_eq(block, u8x16_splat(b'\\'))))
    };
    let length = bytes.len();
    out.reserve(length);
    let start = out.len();
    // SAFETY: `out` has room for `length` more bytes, so every write below stays inside its
    // spare capacity, and every read stays inside `bytes`: each piece or block starts at an
    // offset from 0 to `length` minus its size. `v128_load` and `v128_store` take unaligned
    // addresses. The length is set only after all `length` bytes were written.
    unsafe {
        let (source, target) = (bytes.as_ptr(), out.as_mut_ptr().add(start));
        let found = if length >= 16 {
            let mut found = u8x16_splat(0);
            let mut at = 0;
            while at + 16 < length {
                let block = v128_load(source.add(at).cast::<v128>());
                // A plain store here lets the compiler turn the loop's copy back into one
                // `memory.copy`.
                std::ptr::write_volatile(target.add(at).cast::<v128>(), block);
                found = v128_or(found, escaped_in(block));
                at += 16;
            }
            let last = v128_load(source.add(length - 16).cast::<v128>());
            v128_store(target.add(length - 16).cast::<v128>(), last);
            v128_or(found, escaped_in(last))
        } else if length >= 8 {
            let (first, last) = (read_unaligned(source.cast::<u64>()), read_unaligned(source.add(length - 8).cast::<u64>()));
            write_unaligned(target.cast::<u64>(), first);
            write_unaligned(target.add(length - 8).cast::<u64>(), last);
            escaped_in(u64x2(first, last))
        } else if length >= 4 {
            let (first, last) = (read_unaligned(source.cast::<u32>()), read_unaligned(source.add(length - 4).cast::<u32>()));
            write_unaligned(target.cast::<u32>(), first);
            write_unaligned(target.add(length - 4).cast::<u32>(), last);
            escaped_in(u32x4(first, last, first, last))
        } else if length > 0 {
            let (first, middle, last) = (*source, *source.add(length / 2), *source.add(length - 1));
            *target = first;
            *target.add(length / 2) = middle;
            *target.add(length - 1) = last;
            let pieces = u32::from_le_bytes([first, middle, last, first]);
            escaped_in(u32x4(pieces, pieces, pieces, pieces))
        } else {
            return true;
        };
        if v128_any_true(found) {
            return false;
        }
        out.set_len(start + length);
    }
    true
}

/// Appends `value` escaped for the inside of a JSON string literal. Escaping works character by
/// character, so the contents of a concatenation are the concatenated contents of its parts.
pub fn write_json_string_contents(out: &mut Vec<u8>, value: &str) {
    // serde_json escapes only `"`, `\` and control characters below U+0020. Most strings contain
    // none of them and are copied whole.
    if !append_if_plain(out, value.as_bytes()) {
        write_escaped(out, value);
    }
}

/// Appends `value` escaped by serde_json. Kept out of line, because inlined it made the guest run
/// about 8 % more instructions in [`write_json_string_contents`] (callgrind).
#[cold]
#[inline(never)]
fn write_escaped(out: &mut Vec<u8>, value: &str) {
    // `serde_json::to_string` fails only when a `Serialize` impl fails or a map has non-string
    // keys, and a `str` has neither.
    let literal = serde_json::to_string(value).expect("a str serializes to JSON");
    out.extend_from_slice(&literal.as_bytes()[1..literal.len() - 1]);
}

fn write_optional_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => write_json_string(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `value` as a JSON string literal and returns where its escaped contents are in `out`.
/// A value that appears again inside another string is then copied from there, not escaped again.
fn write_json_string_kept(out: &mut Vec<u8>, value: &str) -> Range<usize> {
    out.push(b'"');
    let start = out.len();
    write_json_string_contents(out, value);
    let contents = start..out.len();
    out.push(b'"');
    contents
}

/// Appends the opening `{"did":…,"timestamp":…` of a message and returns where the DID's escaped
/// contents are in `out`.
fn write_did_and_timestamp(out: &mut Vec<u8>, did: &str, time: &str) -> Range<usize> {
    out.extend_from_slice(b"{\"did\":");
    let did = write_json_string_kept(out, did);
    out.extend_from_slice(b",\"timestamp\":");
    write_json_string(out, time);
    did
}

/// Appends the standard JSON message of `event`:
///
/// - operation: `{"did","timestamp","operation":{"action","collection","rkey","uri","cid","path","record"}}`,
///   with `cid` and `record` null on deletes;
/// - account: `{"did","timestamp","account":{"active","seq","status"}}`, `status` left out when
///   the frame has none;
/// - identity: `{"did","timestamp","identity":{"seq","handle"}}`, `handle` null when absent;
/// - sync: `{"did","timestamp","sync":{"seq","rev"}}`;
/// - info: `{"info":{"name","message"}}`, `message` left out when absent.
pub fn write_standard(out: &mut Vec<u8>, event: &EventView<'_>) {
    match *event {
        EventView::Operation { did, time, action, collection, rkey, cid, record, .. } => {
            // The uri and the path repeat the DID, the collection and the rkey. Escaping works
            // character by character, so their escaped contents are copied from where they were
            // first written.
            let did = write_did_and_timestamp(out, did, time);
            out.extend_from_slice(b",\"operation\":{\"action\":\"");
            out.extend_from_slice(action.as_str().as_bytes());
            out.extend_from_slice(b"\",\"collection\":");
            let collection = write_json_string_kept(out, collection);
            out.extend_from_slice(b",\"rkey\":");
            let rkey = write_json_string_kept(out, rkey);
            out.extend_from_slice(b",\"uri\":\"at://");
            out.extend_from_within(did);
            out.push(b'/');
            let path_start = out.len();
            out.extend_from_within(collection);
            out.push(b'/');
            out.extend_from_within(rkey);
            let path = path_start..out.len();
            out.extend_from_slice(b"\",\"cid\":");
            write_optional_string(out, cid);
            out.extend_from_slice(b",\"path\":\"");
            out.extend_from_within(path);
            out.push(b'"');
            out.extend_from_slice(b",\"record\":");
            match record {
                Some(record) => out.extend_from_slice(record.as_bytes()),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b"}}");
        }
        EventView::Account { did, seq, time, active, status } => {
            write_did_and_timestamp(out, did, time);
            let _ = write!(out, ",\"account\":{{\"active\":{active},\"seq\":{seq}");
            if let Some(status) = status {
                out.extend_from_slice(b",\"status\":");
                write_json_string(out, status);
            }
            out.extend_from_slice(b"}}");
        }
        EventView::Identity { did, seq, time, handle } => {
            write_did_and_timestamp(out, did, time);
            let _ = write!(out, ",\"identity\":{{\"seq\":{seq},\"handle\":");
            write_optional_string(out, handle);
            out.extend_from_slice(b"}}");
        }
        EventView::Sync { did, seq, time, rev } => {
            write_did_and_timestamp(out, did, time);
            let _ = write!(out, ",\"sync\":{{\"seq\":{seq},\"rev\":");
            write_json_string(out, rev);
            out.extend_from_slice(b"}}");
        }
        EventView::Info { name, message } => {
            out.extend_from_slice(b"{\"info\":{\"name\":");
            write_json_string(out, name);
            if let Some(message) = message {
                out.extend_from_slice(b",\"message\":");
                write_json_string(out, message);
            }
            out.extend_from_slice(b"}}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(event: EventView<'_>) -> serde_json::Value {
        let mut out = Vec::new();
        write_standard(&mut out, &event);
        serde_json::from_slice(&out).expect("standard output is valid JSON")
    }

    #[test]
    fn create_renders_uri_path_and_record() {
        let value = render(EventView::Operation {
            did: "did:plc:abc",
            seq: 7,
            rev: "3l",
            time: "2026-07-04T14:38:07.877Z",
            action: Action::Create,
            collection: "app.bsky.feed.post",
            rkey: "3k",
            cid: Some("bafyrei"),
            record: Some(r#"{"text":"a \"quote\""}"#),
        });
        assert_eq!(value["did"], "did:plc:abc");
        assert_eq!(value["timestamp"], "2026-07-04T14:38:07.877Z");
        assert_eq!(value["operation"]["action"], "create");
        assert_eq!(value["operation"]["uri"], "at://did:plc:abc/app.bsky.feed.post/3k");
        assert_eq!(value["operation"]["path"], "app.bsky.feed.post/3k");
        assert_eq!(value["operation"]["cid"], "bafyrei");
        assert_eq!(value["operation"]["record"]["text"], "a \"quote\"");
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = (0u32..0x250).filter_map(char::from_u32).map(|c| format!("a{c}b")).collect();
        cases.extend(["", "plain text", "\u{2028}\u{7f}", "quote \" and \\ backslash", "tab\tnew\nline", "é🦋"].map(String::from));
        cases.push("x".repeat(100) + "\u{1}");
        for case in cases {
            let mut out = Vec::new();
            write_json_string(&mut out, &case);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&case).unwrap(), "for {case:?}");
        }
    }

    #[test]
    fn uri_and_path_escape_every_part() {
        let (did, collection, rkey) = ("did:web:a\"b", "app.\u{1}post", "k\\ey");
        let mut out = Vec::new();
        write_standard(
            &mut out,
            &EventView::Operation {
                did,
                seq: 7,
                rev: "3l",
                time: "t",
                action: Action::Delete,
                collection,
                rkey,
                cid: None,
                record: None,
            },
        );
        let out = String::from_utf8(out).unwrap();
        let uri = serde_json::to_string(&format!("at://{did}/{collection}/{rkey}")).unwrap();
        let path = serde_json::to_string(&format!("{collection}/{rkey}")).unwrap();
        assert!(out.contains(&format!("\"uri\":{uri},")), "{out}");
        assert!(out.contains(&format!("\"path\":{path},")), "{out}");
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["operation"]["rkey"], rkey);
    }

    #[test]
    fn delete_has_null_cid_and_record() {
        let value = render(EventView::Operation {
            did: "did:plc:abc",
            seq: 7,
            rev: "3l",
            time: "t",
            action: Action::Delete,
            collection: "app.bsky.feed.like",
            rkey: "3k",
            cid: None,
            record: None,
        });
        assert!(value["operation"]["record"].is_null());
        assert!(value["operation"]["cid"].is_null());
    }

    #[test]
    fn account_without_status_leaves_it_out() {
        let value = render(EventView::Account { did: "d", seq: 7, time: "t", active: true, status: None });
        assert_eq!(value["account"], serde_json::json!({"active": true, "seq": 7}));
    }

    #[test]
    fn identity_without_handle_has_null_handle() {
        let value = render(EventView::Identity { did: "d", seq: 7, time: "t", handle: None });
        assert_eq!(value["identity"], serde_json::json!({"seq": 7, "handle": null}));
    }

    #[test]
    fn info_has_only_name_and_message() {
        let value = render(EventView::Info { name: "OutdatedCursor", message: Some("m") });
        assert_eq!(value, serde_json::json!({"info": {"name": "OutdatedCursor", "message": "m"}}));
    }
}
