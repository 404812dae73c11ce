//! Batch calls (`format-packed` for the built-in and hostile guests, `format-batch` for the Rust
//! example) against calls of one event (`format`) on the real capture. The messages are
//! identical, and a component without a batch export is called one event at a time. An event
//! that fails inside a batch fails alone, and the other events of the batch are formatted.

use std::time::Duration;

use atkafka_host::firehose::decode::decode;
use atkafka_host::firehose::event::{Action, Event};
use atkafka_host::formatter::{
    default_cache_dir, BatchEvent, FormatError, Formatter, FormatterEngine, FormatterLimits, FormatterSource, Messages,
    MAX_BATCH_EVENTS,
};
use atkafka_integration_tests::fixture_or_skip;
use atkafka_integration_tests::fixtures::{built_example, built_guest, read_capture};
use serde_json::Value;

/// The receive time given to every event, in microseconds since the Unix epoch.
const RECEIVED_AT_US: u64 = 1_783_175_888_000_000;

/// Parses a message value into the JSON that a comparison should see.
type Normalize = fn(&[u8]) -> Value;

fn capture_events(path: &std::path::Path) -> Vec<Event> {
    read_capture(path).unwrap().iter().flat_map(|frame| decode(frame).events).collect()
}

fn batch_events(events: &[Event]) -> Vec<BatchEvent<'_>> {
    events
        .iter()
        .enumerate()
        .map(|(index, event)| BatchEvent { event, event_id: index as u64, received_at_us: RECEIVED_AT_US })
        .collect()
}

fn formatter(source: FormatterSource, options: &[(&str, &str)], limits: FormatterLimits) -> Formatter {
    // The host's default cache of compiled components, which spares compiling the 12 MB
    // JavaScript example on every run.
    let engine = FormatterEngine::new(default_cache_dir()).unwrap();
    let options = options.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
    Formatter::new(&engine, &source, options, limits).unwrap()
}

fn hostile(behavior: &str, limits: FormatterLimits) -> Formatter {
    formatter(FormatterSource::File(built_guest("atkafka_formatter_hostile")), &[("behavior", behavior)], limits)
}

/// Formats every event with `format`, one call each.
fn format_singly(formatter: &mut Formatter, events: &[BatchEvent<'_>]) -> Vec<Result<Messages, FormatError>> {
    events.iter().map(|event| formatter.format(event.event, event.event_id, event.received_at_us)).collect()
}

/// Formats the events in batches of at most [`MAX_BATCH_EVENTS`], as a tenant does with a full
/// handoff.
fn format_in_batches(formatter: &mut Formatter, events: &[BatchEvent<'_>]) -> Vec<Result<Messages, FormatError>> {
    events.chunks(MAX_BATCH_EVENTS).flat_map(|chunk| formatter.format_batch(chunk)).collect()
}

/// Returns the message values, with the value of a failed event replaced by its error kind.
fn outcomes(results: &[Result<Messages, FormatError>], normalize: Normalize) -> Vec<Result<Vec<Value>, &'static str>> {
    results
        .iter()
        .map(|result| match result {
            Ok(messages) => {
                for message in messages {
                    assert!(message.key.is_none(), "no key");
                    assert!(message.headers.is_empty(), "no headers");
                    assert!(message.topic.is_none(), "no topic");
                }
                Ok(messages.iter().map(|message| normalize(&message.value)).collect())
            }
            Err(error) => Err(error.kind()),
        })
        .collect()
}

fn as_json(value: &[u8]) -> Value {
    serde_json::from_slice(value).unwrap()
}

/// Drops Osprey's `send_time`, the wall-clock time of formatting, which differs between runs.
fn without_send_time(value: &[u8]) -> Value {
    let mut value = as_json(value);
    value.as_object_mut().unwrap().remove("send_time").expect("an Osprey envelope has a send_time");
    value
}

fn is_delete(event: &Event) -> bool {
    matches!(event, Event::Operation(op) if op.action == Action::Delete)
}

#[test]
fn batch_and_single_calls_give_identical_messages() {
    let events = capture_events(&fixture_or_skip!("relay-capture/frames.bin.zst"));
    let batch = batch_events(&events);
    assert!(batch.len() > MAX_BATCH_EVENTS, "the capture fills more than one batch call");
    let cases: [(&str, FormatterSource, Normalize); 3] = [
        ("standard", FormatterSource::Builtin("standard"), as_json),
        ("osprey", FormatterSource::Builtin("osprey"), without_send_time),
        ("rust example", FormatterSource::File(built_example("posts-rust")), as_json),
    ];
    for (name, source, normalize) in cases {
        let mut formatter = formatter(source, &[], FormatterLimits::default());
        assert_eq!(formatter.batch_limit(), MAX_BATCH_EVENTS, "{name}: format-batch is detected");

        let single = outcomes(&format_singly(&mut formatter, &batch), normalize);
        let batched = outcomes(&format_in_batches(&mut formatter, &batch), normalize);
        assert_eq!(batched.len(), batch.len(), "{name}: one result per event");
        assert!(single.iter().all(Result::is_ok), "{name}: every event formats");
        assert!(single.iter().flatten().any(|messages| !messages.is_empty()), "{name}: some event gives a message");
        assert_eq!(batched, single, "{name}: batch and single calls differ");
        assert_eq!(formatter.batch_fallbacks(), 0, "{name}: no batch call failed");
    }
}

#[test]
fn component_without_format_batch_is_called_per_event() {
    let events = capture_events(&fixture_or_skip!("relay-capture/frames.bin.zst"));
    let batch = batch_events(&events);
    let mut formatter = formatter(FormatterSource::File(built_example("posts-js")), &[], FormatterLimits::default());
    assert_eq!(formatter.batch_limit(), 1, "the JavaScript example exports only the formatter world");
    assert!(formatter.try_format_batch(&batch[..2]).is_none(), "no batch call without format-batch");

    let single = outcomes(&format_singly(&mut formatter, &batch), as_json);
    let batched = outcomes(&format_in_batches(&mut formatter, &batch), as_json);
    assert!(single.iter().flatten().any(|messages| !messages.is_empty()), "the capture has posts");
    assert_eq!(batched, single);
    assert_eq!(formatter.batch_fallbacks(), 0);
}

#[test]
fn batch_trap_fails_only_its_event() {
    let events = capture_events(&fixture_or_skip!("relay-capture/frames.bin.zst"));
    let batch = batch_events(&events);
    let deletes = events.iter().filter(|event| is_delete(event)).count();
    assert!(deletes > 0, "the capture has deletes");
    let mut standard = formatter(FormatterSource::Builtin("standard"), &[], FormatterLimits::default());
    let expected = outcomes(&format_singly(&mut standard, &batch), as_json);

    let mut formatter = hostile("trap-on-delete", FormatterLimits::default());
    let results = outcomes(&format_in_batches(&mut formatter, &batch), as_json);
    assert_eq!(results.len(), events.len(), "one result per event");
    for (index, event) in events.iter().enumerate() {
        if is_delete(event) {
            assert_eq!(results[index], Err("trap"), "event {index}, a delete, traps");
        } else {
            assert_eq!(results[index], expected[index], "event {index} is formatted");
        }
    }
    assert!(formatter.batch_fallbacks() >= 1, "a batch call trapped and was formatted one event at a time");
}

#[test]
fn batch_error_fails_only_its_event() {
    let events = capture_events(&fixture_or_skip!("relay-capture/frames.bin.zst"));
    let batch = batch_events(&events);
    let mut standard = formatter(FormatterSource::Builtin("standard"), &[], FormatterLimits::default());
    let expected = outcomes(&format_singly(&mut standard, &batch), as_json);

    let mut formatter = hostile("error-on-delete", FormatterLimits::default());
    let results = format_in_batches(&mut formatter, &batch);
    assert_eq!(results.len(), events.len(), "one result per event");
    for (index, event) in events.iter().enumerate() {
        if is_delete(event) {
            let error = results[index].as_ref().expect_err("a delete fails");
            assert!(matches!(error, FormatError::Guest(message) if message.contains("rejects delete")), "event {index}: {error}");
        } else {
            assert_eq!(outcomes(&results[index..=index], as_json)[0], expected[index], "event {index} is formatted");
        }
    }
    assert_eq!(formatter.batch_fallbacks(), 0, "an error the guest returns needs no fallback");
}

#[test]
fn faulty_batch_reply_falls_back() {
    let events = capture_events(&fixture_or_skip!("relay-capture/frames.bin.zst"));
    let batch = batch_events(&events);
    let mut standard = formatter(FormatterSource::Builtin("standard"), &[], FormatterLimits::default());
    let expected = outcomes(&format_singly(&mut standard, &batch), as_json);

    // `short-batch` returns one result too few, and `garbled-batch` a reply one byte short.
    // A deadline far above any call's time keeps the batch size from shrinking because a slow
    // (debug) build took long, so the number of batch calls depends only on the fallbacks.
    let limits = FormatterLimits { timeout: Duration::from_secs(60), ..FormatterLimits::default() };
    for behavior in ["short-batch", "garbled-batch"] {
        let mut formatter = hostile(behavior, limits);
        let results = outcomes(&format_in_batches(&mut formatter, &batch), as_json);
        assert_eq!(results, expected, "{behavior}: results equal single calls");
        let calls = batch.len().div_ceil(MAX_BATCH_EVENTS) as u64;
        assert_eq!(formatter.batch_fallbacks(), calls, "{behavior}: every batch call fell back");
    }
}

#[test]
fn batch_past_deadline_halves_and_falls_back() {
    let events = capture_events(&fixture_or_skip!("relay-capture/frames.bin.zst"));
    let batch = batch_events(&events[..10]);
    let limits = FormatterLimits { timeout: Duration::from_millis(20), ..FormatterLimits::default() };
    let mut formatter = hostile("loop", limits);

    let results = formatter.format_batch(&batch);
    assert_eq!(results.len(), batch.len(), "one result per event");
    for (index, result) in results.iter().enumerate() {
        assert!(matches!(result, Err(FormatError::Deadline(_))), "event {index}: {result:?}");
    }
    assert_eq!(formatter.batch_fallbacks(), 1, "the batch call ran past its deadline");
    assert_eq!(formatter.deadline_retries(), batch.len() as u64, "each event got its own deadline retry");
    assert_eq!(formatter.batch_limit(), batch.len() / 2, "the next batch call takes half the events");
}
