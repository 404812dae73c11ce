//! The built-in `osprey` formatter: the standard event wrapped in the action envelope that Osprey
//! consumes,
//! `{"data":{"action_name","action_id","data","timestamp","secret_data":{},"encoding":"UTF8"},"send_time"}`.
//!
//! `action_id` is the host's snowflake event id, so it is unique and decodes to the time the event
//! was received. `timestamp` is the event's own time (the receive time for info events) and
//! `send_time` is the wall-clock time of formatting, in RFC 3339 UTC to the second.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atkafka_shape::guest::{self, Context, Event, Guest, Message, PackedGuest};
use atkafka_shape::EventView;

struct Osprey;

impl Guest for Osprey {
    fn configure(options: Vec<(String, String)>) -> Result<(), String> {
        guest::reject_options("osprey", &options)
    }

    fn format(event: Event, context: Context) -> Result<Vec<Message>, String> {
        let mut value = Vec::with_capacity(768);
        write_envelope(&mut value, &guest::view(&event), context.event_id, context.received_at_us);
        Ok(vec![Message { value, key: None, headers: Vec::new(), topic: None }])
    }
}

impl PackedGuest for Osprey {
    fn format_packed(events: Vec<u8>) -> Vec<u8> {
        // SAFETY: `events` is the host's argument to `format-packed`.
        unsafe {
            guest::format_packed_one_each(&events, |value, event| {
                write_envelope(value, &event.event, event.event_id, event.received_at_us)
            })
        }
    }
}

/// Appends the Osprey envelope of `view` to `value`.
fn write_envelope(value: &mut Vec<u8>, view: &EventView<'_>, event_id: u64, received_at_us: u64) {
    let received_at = UNIX_EPOCH + Duration::from_micros(received_at_us);
    let timestamp = match view.time() {
        Some(time) => time.to_owned(),
        None => humantime::format_rfc3339_millis(received_at).to_string(),
    };
    let send_time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();

    value.extend_from_slice(b"{\"data\":{\"action_name\":\"");
    value.extend_from_slice(view.action_name().as_bytes());
    let _ = write!(value, "\",\"action_id\":{event_id},\"data\":");
    atkafka_shape::write_standard(value, view);
    value.extend_from_slice(b",\"timestamp\":");
    atkafka_shape::write_json_string(value, &timestamp);
    value.extend_from_slice(b",\"secret_data\":{},\"encoding\":\"UTF8\"},\"send_time\":");
    atkafka_shape::write_json_string(value, &send_time);
    value.push(b'}');
}

/// Every allocation of this formatter ends with its call, which is what the arena relies on.
#[global_allocator]
static ALLOCATOR: atkafka_shape::arena::CallArena = atkafka_shape::arena::CallArena::new();

atkafka_shape::guest::export!(Osprey with_types_in atkafka_shape::guest);
