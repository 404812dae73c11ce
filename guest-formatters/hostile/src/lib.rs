//! A formatter that misbehaves on purpose, chosen by its `behavior` option, for testing that the
//! host contains it. A behaviour that would be a sandbox escape (reading a file, listing the
//! environment, opening a socket) returns a message starting with `LEAKED` if it ever succeeds,
//! so a test can assert that no such message is produced.
//!
//! Behaviours: `loop` (never returns), `memory` (allocates until it fails), `trap` (panics),
//! `oversized` (returns a 2 MiB message), `many` (returns 10 000 messages), `read-file`,
//! `environment`, `socket`. Three more fail on some events only and format every other event like
//! the `standard` formatter. `trap-on-delete` panics on delete operations, `error-on-delete`
//! returns an error for them. With `short-batch` the `format-packed` call returns one result fewer
//! than it was given events, and with `garbled-batch` its reply lacks the last byte.
//!
//! `format-packed` formats each event as `format` does, so a misbehaving event makes the whole
//! batch call fail, which tests the host's fallback to one event a call.

use std::sync::Mutex;

use atkafka_shape::guest::{self, Context, Event, Guest, Message, PackedGuest};
use atkafka_shape::{Action, EventView};

static BEHAVIOR: Mutex<String> = Mutex::new(String::new());
static HOARD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

const BEHAVIORS: [&str; 12] = [
    "loop",
    "memory",
    "trap",
    "oversized",
    "many",
    "read-file",
    "environment",
    "socket",
    "trap-on-delete",
    "error-on-delete",
    "short-batch",
    "garbled-batch",
];

struct Hostile;

fn message(value: Vec<u8>) -> Message {
    Message { value, key: None, headers: Vec::new(), topic: None }
}

fn leaked(what: String) -> Result<Vec<Message>, String> {
    Ok(vec![message(format!("LEAKED {what}").into_bytes())])
}

fn is_delete(event: &Event) -> bool {
    matches!(guest::view(event), EventView::Operation { action: Action::Delete, .. })
}

/// Formats the event as the `standard` formatter does.
fn standard(event: &Event) -> Result<Vec<Message>, String> {
    let mut value = Vec::with_capacity(512);
    atkafka_shape::write_standard(&mut value, &guest::view(event));
    Ok(vec![message(value)])
}

impl Guest for Hostile {
    fn configure(options: Vec<(String, String)>) -> Result<(), String> {
        for (key, value) in options {
            match key.as_str() {
                "behavior" if BEHAVIORS.contains(&value.as_str()) => *BEHAVIOR.lock().unwrap() = value,
                "behavior" => return Err(format!("unknown behavior `{value}`: use one of {}", BEHAVIORS.join(", "))),
                other => return Err(format!("unknown option `{other}`")),
            }
        }
        Ok(())
    }

    fn format(event: Event, _context: Context) -> Result<Vec<Message>, String> {
        let behavior = BEHAVIOR.lock().unwrap().clone();
        match behavior.as_str() {
            "loop" => {
                let mut counter: u64 = 0;
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard = HOARD.lock().unwrap();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                }
            }
            "trap" => panic!("this formatter traps on every call"),
            "oversized" => Ok(vec![message(vec![b'x'; 2 << 20])]),
            "many" => Ok((0..10_000).map(|_| message(b"{}".to_vec())).collect()),
            "read-file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(text) => leaked(format!("file: {} bytes", text.len())),
                Err(error) => Err(format!("reading /etc/passwd failed: {error}")),
            },
            "environment" => {
                let variables: Vec<String> = std::env::vars().map(|(key, _)| key).collect();
                let arguments: Vec<String> = std::env::args().collect();
                if variables.is_empty() && arguments.is_empty() {
                    Err("no environment variables or arguments are visible".to_owned())
                } else {
                    leaked(format!("environment: {variables:?} {arguments:?}"))
                }
            }
            "socket" => match std::net::TcpStream::connect("127.0.0.1:9") {
                Ok(_) => leaked("socket: connected".to_owned()),
                Err(error) => Err(format!("connecting failed: {error}")),
            },
            "trap-on-delete" if is_delete(&event) => panic!("this formatter traps on delete operations"),
            "error-on-delete" if is_delete(&event) => Err("this formatter rejects delete operations".to_owned()),
            "trap-on-delete" | "error-on-delete" | "short-batch" | "garbled-batch" => standard(&event),
            other => Err(format!("no behavior configured (`{other}`)")),
        }
    }
}

impl PackedGuest for Hostile {
    fn format_packed(events: Vec<u8>) -> Vec<u8> {
        // SAFETY: `events` is the host's argument to `format-packed`.
        let mut results = unsafe { guest::format_each::<Hostile>(&events) };
        let behavior = BEHAVIOR.lock().unwrap().clone();
        if behavior == "short-batch" {
            results.pop();
        }
        let mut packed = guest::write_results(&events, &results);
        if behavior == "garbled-batch" {
            packed.pop();
        }
        packed
    }
}

atkafka_shape::guest::export!(Hostile with_types_in atkafka_shape::guest);
