//! Example formatter: turns every created or updated Bluesky post into one message
//! `{"did":…,"rkey":…,"text":…,"langs":[…]}` and drops every other event.
//!
//! The JavaScript and Python examples beside this crate implement the same behaviour with the same
//! error messages, so that the three components are interchangeable. This one exports the
//! `batch-formatter` world, so besides `format` it has `format-batch`, which the host calls with
//! many events at once. The other two export the `formatter` world, and the host calls their
//! `format` once per event.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

wit_bindgen::generate!({
    world: "batch-formatter",
    path: "../../../wit",
});

use atkafka::formatter::types::Action;

const POST_COLLECTION: &str = "app.bsky.feed.post";
const MIN_TEXT_LENGTH: &str = "min-text-length";

/// Posts whose text has fewer Unicode scalar values than this are dropped. `configure` sets it
/// once per instance, before any `format` call.
static MIN_TEXT_CHARS: AtomicU64 = AtomicU64::new(0);

struct Posts;

impl Guest for Posts {
    fn configure(options: Vec<(String, String)>) -> Result<(), String> {
        let mut min_text_chars = 0;
        for (key, value) in &options {
            if key != MIN_TEXT_LENGTH {
                return Err(format!(
                    "unknown option `{key}`: the posts formatter takes only `{MIN_TEXT_LENGTH}`"
                ));
            }
            min_text_chars = parse_non_negative(value).ok_or_else(|| {
                format!("invalid value `{value}` for option `{MIN_TEXT_LENGTH}`: expected a non-negative integer")
            })?;
        }
        MIN_TEXT_CHARS.store(min_text_chars, Ordering::Relaxed);
        Ok(())
    }

    fn format(event: Event, _context: Context) -> Result<Vec<Message>, String> {
        let Event::CommitOp(op) = event else {
            return Ok(Vec::new());
        };
        if op.collection != POST_COLLECTION || !matches!(op.action, Action::Create | Action::Update)
        {
            return Ok(Vec::new());
        }

        let uri = format!("at://{}/{}/{}", op.did, op.collection, op.rkey);
        let record = op
            .record
            .as_deref()
            .ok_or_else(|| format!("the record of {uri} is missing"))?;
        let post = read_post(record).map_err(|problem| format!("the record of {uri} {problem}"))?;

        let text_chars = u64::try_from(post.text.chars().count()).unwrap_or(u64::MAX);
        if text_chars < MIN_TEXT_CHARS.load(Ordering::Relaxed) {
            return Ok(Vec::new());
        }

        Ok(vec![Message {
            value: write_message(&op.did, &op.rkey, &post),
            key: None,
            headers: Vec::new(),
            topic: None,
        }])
    }
}

impl exports::atkafka::formatter::batch::Guest for Posts {
    /// Formats each event as `format` does. A formatter that shares work between the events of a
    /// batch (a parsed configuration, a reused buffer) would do it here.
    fn format_batch(events: Vec<(Event, Context)>) -> Vec<Result<Vec<Message>, String>> {
        events
            .into_iter()
            .map(|(event, context)| Posts::format(event, context))
            .collect()
    }
}

/// Writes the message value as compact JSON with the keys in a fixed order: did, rkey, text, langs.
fn write_message(did: &str, rkey: &str, post: &Post) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + did.len() + rkey.len() + post.text.len());
    out.extend_from_slice(b"{\"did\":");
    write_json_string(&mut out, did);
    out.extend_from_slice(b",\"rkey\":");
    write_json_string(&mut out, rkey);
    out.extend_from_slice(b",\"text\":");
    write_json_string(&mut out, &post.text);
    out.extend_from_slice(b",\"langs\":[");
    for (index, lang) in post.langs.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_json_string(&mut out, lang);
    }
    out.extend_from_slice(b"]}");
    out
}

fn write_json_string(out: &mut Vec<u8>, value: &str) {
    // Writing a `str` into a `Vec` cannot fail.
    serde_json::to_writer(&mut *out, value).expect("a str serializes to JSON");
}

/// The fields of a post record that the message carries.
struct Post {
    text: String,
    langs: Vec<String>,
}

/// Reads `text` and `langs` from a post record in atproto JSON. The error completes the sentence
/// "the record of <uri> …".
fn read_post(record: &str) -> Result<Post, String> {
    let record: Value =
        serde_json::from_str(record).map_err(|error| format!("is not valid JSON: {error}"))?;
    let Value::Object(mut fields) = record else {
        return Err("is not a JSON object".to_owned());
    };

    let text = match fields.remove("text") {
        Some(Value::String(text)) => text,
        _ => return Err("has no string `text`".to_owned()),
    };

    let langs = match fields.remove("langs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(lang) => Ok(lang),
                _ => Err(()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|()| "has a `langs` that is not a list of strings".to_owned())?,
        Some(_) => return Err("has a `langs` that is not a list of strings".to_owned()),
    };

    Ok(Post { text, langs })
}

/// Parses a decimal number made of ASCII digits only (no sign, no spaces). A number beyond
/// `u64::MAX` saturates, which changes nothing because no text is that long.
fn parse_non_negative(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some(value.parse().unwrap_or(u64::MAX))
}

export!(Posts);
