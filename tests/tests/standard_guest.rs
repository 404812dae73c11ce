//! The built-in standard formatter, run as a WebAssembly guest, writes exactly what the host's
//! native code writes for the same events. The guest copies and checks each string in one pass:
//! 16-byte SIMD blocks, or two overlapping pieces of 8 or 4 bytes, or three single bytes. The
//! native code scans with a plain loop and then copies. So these events put each byte that JSON
//! escapes at every offset of strings of up to 48 bytes, three blocks. Each escaped field of an
//! operation gets every such string in turn.

use std::sync::Arc;

use atkafka_host::firehose::event::{Action, Event, Operation};
use atkafka_host::formatter::{BatchEvent, Formatter, FormatterEngine, FormatterLimits, FormatterSource, MAX_BATCH_EVENTS};

/// The bytes a JSON string escapes, at both ends of the control range, and a two-byte character
/// that it does not.
const SPECIAL: [&str; 6] = ["\"", "\\", "\n", "\u{1}", "\u{1f}", "é"];

/// Returns strings of 0 to 48 bytes: plain ones, and each special character at each offset.
fn strings() -> Vec<String> {
    let mut strings = Vec::new();
    for length in 0..=48 {
        strings.push("a".repeat(length));
        for special in SPECIAL {
            for offset in 0..length {
                strings.push(format!("{}{special}{}", "a".repeat(offset), "a".repeat(length - offset - 1)));
            }
        }
    }
    strings
}

/// Returns operations with `value` in each escaped field in turn and plain values elsewhere.
fn operations_with(value: &str) -> Vec<Event> {
    let base = Operation {
        did: Arc::from("did:plc:ewvi7nxzyoun6zhxrhs64oiz"),
        seq: 42,
        rev: Arc::from("3lrevabcdefgh"),
        time: Arc::from("2026-07-04T14:38:07.877Z"),
        action: Action::Create,
        collection: "app.bsky.feed.post".to_owned(),
        rkey: "3kabcdefghijk".to_owned(),
        cid: Some("bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy".to_owned()),
        record: Some(r#"{"text":"hi"}"#.to_owned()),
    };
    vec![
        Event::Operation(Operation { did: Arc::from(value), ..base.clone() }),
        Event::Operation(Operation { time: Arc::from(value), ..base.clone() }),
        Event::Operation(Operation { collection: value.to_owned(), ..base.clone() }),
        Event::Operation(Operation { rkey: value.to_owned(), ..base.clone() }),
        Event::Operation(Operation { cid: Some(value.to_owned()), ..base }),
    ]
}

#[test]
fn guest_escaping_matches_native_code() {
    let events: Vec<Event> = strings().iter().flat_map(|value| operations_with(value)).collect();
    let batch: Vec<BatchEvent<'_>> =
        events.iter().enumerate().map(|(index, event)| BatchEvent { event, event_id: index as u64, received_at_us: 0 }).collect();
    let engine = FormatterEngine::new(None).unwrap();
    let mut formatter =
        Formatter::new(&engine, &FormatterSource::Builtin("standard"), Vec::new(), FormatterLimits::default()).unwrap();

    for chunk in batch.chunks(MAX_BATCH_EVENTS) {
        let results = formatter.try_format_batch(chunk).expect("the standard formatter has a batch export");
        assert_eq!(results.len(), chunk.len());
        for (event, result) in chunk.iter().zip(results) {
            let messages = result.expect("the standard formatter formats every event");
            assert_eq!(messages.len(), 1);
            let mut expected = Vec::new();
            atkafka_host::standard_shape::write_standard(&mut expected, event.event);
            assert_eq!(
                String::from_utf8_lossy(&messages[0].value),
                String::from_utf8_lossy(&expected),
                "event {}",
                event.event_id
            );
        }
    }
}
