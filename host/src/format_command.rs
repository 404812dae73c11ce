//! `atkafka-host format`: runs a formatter on sample events and prints its messages, so that a
//! formatter author can iterate without a relay or Kafka.
//!
//! Input is either JSON lines in the standard shape (what the `standard` formatter produces, one
//! event per line; an optional top-level `seq` sets the event's seq) or a capture of firehose
//! frames (`[u32 little-endian length][frame]` records, zstd-compressed or not). Each message is
//! printed as one JSON line; a summary with the time per event goes to stderr.
//!
//! A formatter with `format-batch` is called in batches, as a tenant calls it, and each event of
//! a batch call is charged the call's duration divided by its events.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

use crate::cli::{CacheArgs, FormatterArgs};
use crate::event_id::EventIds;
use crate::firehose::decode::decode;
use crate::firehose::event::{Account, Action, Event, Identity, Info, Operation, Sync};
use crate::formatter::{BatchEvent, Formatter, FormatterEngine, Message};

#[derive(Debug, clap::Args)]
pub struct FormatArgs {
    #[command(flatten)]
    pub formatter: FormatterArgs,

    #[command(flatten)]
    pub cache: CacheArgs,

    /// JSON-lines file of events in the standard shape; `-` or nothing reads stdin.
    #[arg(long, conflicts_with = "capture")]
    pub input: Option<PathBuf>,

    /// A capture of firehose frames (`[u32 little-endian length][frame]` records, optionally
    /// zstd-compressed) to decode and format instead of JSON events.
    #[arg(long)]
    pub capture: Option<PathBuf>,

    /// Format the events this many times, for steadier latency figures.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,

    /// Print only the summary, not the messages.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs the subcommand; returns an error when any event failed.
pub fn run(args: FormatArgs) -> anyhow::Result<()> {
    let events = match &args.capture {
        Some(path) => events_from_capture(path)?,
        None => events_from_json(args.input.as_ref())?,
    };
    let source = args.formatter.source().map_err(anyhow::Error::msg)?;
    let engine = FormatterEngine::new(args.cache.cache_dir())?;
    let started = Instant::now();
    let mut formatter =
        Formatter::new(&engine, &source, args.formatter.formatter_options.clone(), args.formatter.limits())?;
    let load_time = started.elapsed();

    let mut ids = EventIds::new(0);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut latencies = Vec::with_capacity(events.len() * args.repeat as usize);
    let (mut messages_total, mut failures) = (0usize, 0usize);
    for round in 0..args.repeat {
        let mut start = 0;
        while start < events.len() {
            let end = events.len().min(start + formatter.batch_limit());
            let received_at_us = now_us();
            let batch: Vec<BatchEvent<'_>> = events[start..end]
                .iter()
                .map(|event| BatchEvent { event, event_id: ids.next_id(), received_at_us })
                .collect();
            let call = Instant::now();
            let results = formatter.format_batch(&batch);
            let per_event = call.elapsed() / batch.len() as u32;
            latencies.extend(std::iter::repeat_n(per_event, batch.len()));
            for (index, (event, result)) in (start..end).zip(batch.iter().zip(results)) {
                match result {
                    Ok(messages) => {
                        messages_total += messages.len();
                        if round == 0 && !args.quiet {
                            for message in &messages {
                                writeln!(out, "{}", render(index, event.event, message))?;
                            }
                        }
                    }
                    Err(error) => {
                        failures += 1;
                        if round == 0 {
                            eprintln!("event {index}: {error}");
                        }
                    }
                }
            }
            start = end;
        }
    }
    out.flush()?;

    latencies.sort();
    let percentile = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied();
    eprintln!(
        "formatter {}: loaded in {} ms; {} events x {} rounds -> {} messages, {} failed; {}; time per event median {}, p99 {}; peak memory {} KiB; instances recycled: {}",
        formatter.name(),
        load_time.as_millis(),
        events.len(),
        args.repeat,
        messages_total,
        failures,
        format!("called with {}", formatter.batch_export()),
        micros(percentile(0.5)),
        micros(percentile(0.99)),
        formatter.peak_memory_bytes() / 1024,
        formatter.recycles()
    );
    anyhow::ensure!(failures == 0, "the formatter failed on {failures} events");
    Ok(())
}

fn micros(duration: Option<Duration>) -> String {
    duration.map(|duration| format!("{:.1} µs", duration.as_secs_f64() * 1e6)).unwrap_or_else(|| "-".to_owned())
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.as_micros() as u64).unwrap_or(0)
}

/// One message as a JSON line.
#[derive(serde::Serialize)]
struct Line<'a> {
    event: usize,
    topic: Option<&'a str>,
    key: String,
    headers: serde_json::Map<String, Value>,
    value: LineValue<'a>,
}

/// A message value: its exact bytes when they are JSON, else a string.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum LineValue<'a> {
    Json(&'a serde_json::value::RawValue),
    Text(String),
}

/// Renders one message as a JSON line: the event index, topic, key, headers and value. A JSON
/// value is written byte for byte as the formatter returned it, so that it can be compared with
/// what reaches Kafka. Any other value is written as a string.
fn render(index: usize, event: &Event, message: &Message) -> String {
    let value = match serde_json::from_slice::<&serde_json::value::RawValue>(&message.value) {
        Ok(raw) => LineValue::Json(raw),
        Err(_) => LineValue::Text(String::from_utf8_lossy(&message.value).into_owned()),
    };
    let key = match &message.key {
        Some(key) => String::from_utf8_lossy(key).into_owned(),
        None => event.default_key().to_owned(),
    };
    let headers: serde_json::Map<String, Value> = message
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), Value::String(String::from_utf8_lossy(value).into_owned())))
        .collect();
    let line = Line { event: index, topic: message.topic.as_deref(), key, headers, value };
    serde_json::to_string(&line).expect("a line of strings, numbers and JSON serializes")
}

fn events_from_capture(path: &PathBuf) -> anyhow::Result<Vec<Event>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let mut decompressed = Vec::new();
        zstd::stream::read::Decoder::new(raw.as_slice())?.read_to_end(&mut decompressed)?;
        decompressed
    } else {
        raw
    };
    let mut events = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        anyhow::ensure!(rest.len() >= 4, "{}: the capture ends inside a length prefix", path.display());
        let (length, tail) = rest.split_at(4);
        let length = u32::from_le_bytes(length.try_into().expect("four bytes")) as usize;
        anyhow::ensure!(tail.len() >= length, "{}: the capture ends inside a frame", path.display());
        let (frame, tail) = tail.split_at(length);
        events.extend(decode(frame).events);
        rest = tail;
    }
    Ok(events)
}

fn events_from_json(path: Option<&PathBuf>) -> anyhow::Result<Vec<Event>> {
    let reader: Box<dyn BufRead> = match path {
        Some(path) if path.as_os_str() != "-" => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        _ => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let mut events = Vec::new();
    for (number, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line).with_context(|| format!("line {}: not JSON", number + 1))?;
        events.push(event_from_standard(&value).with_context(|| format!("line {}", number + 1))?);
    }
    Ok(events)
}

fn text(value: &Value, key: &str) -> anyhow::Result<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned).with_context(|| format!("`{key}` missing or not a string"))
}

fn optional_text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Reads an event back from its standard-shape JSON.
pub fn event_from_standard(value: &Value) -> anyhow::Result<Event> {
    let seq = value.get("seq").and_then(Value::as_i64).unwrap_or(0);
    if let Some(info) = value.get("info") {
        return Ok(Event::Info(Info { name: text(info, "name")?, message: optional_text(info, "message") }));
    }
    let did = text(value, "did")?;
    let time = text(value, "timestamp")?;
    if let Some(operation) = value.get("operation") {
        let action = text(operation, "action")?;
        let action = Action::parse(&action).with_context(|| format!("unknown action `{action}`"))?;
        let record = match operation.get("record") {
            None | Some(Value::Null) => None,
            Some(record) => Some(serde_json::to_string(record)?),
        };
        return Ok(Event::Operation(Operation {
            did: Arc::from(did.as_str()),
            seq,
            rev: Arc::from(value.get("rev").and_then(Value::as_str).unwrap_or("")),
            time: Arc::from(time.as_str()),
            action,
            collection: text(operation, "collection")?,
            rkey: text(operation, "rkey")?,
            cid: optional_text(operation, "cid"),
            record,
        }));
    }
    if let Some(account) = value.get("account") {
        return Ok(Event::Account(Account {
            did,
            seq: account.get("seq").and_then(Value::as_i64).unwrap_or(seq),
            time,
            active: account.get("active").and_then(Value::as_bool).context("`active` missing")?,
            status: optional_text(account, "status"),
        }));
    }
    if let Some(identity) = value.get("identity") {
        return Ok(Event::Identity(Identity {
            did,
            seq: identity.get("seq").and_then(Value::as_i64).unwrap_or(seq),
            time,
            handle: optional_text(identity, "handle"),
        }));
    }
    if let Some(sync) = value.get("sync") {
        return Ok(Event::Sync(Sync {
            did,
            seq: sync.get("seq").and_then(Value::as_i64).unwrap_or(seq),
            time,
            rev: text(sync, "rev")?,
        }));
    }
    anyhow::bail!("not an event in the standard shape (no operation, account, identity, sync or info)")
}
