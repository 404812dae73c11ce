//! The built-in `standard` formatter: one message per event, the event in the standard JSON shape
//! (see `atkafka_shape::write_standard`), keyed by the host's default (the DID).

use atkafka_shape::guest::{self, Context, Event, Guest, Message, PackedGuest};

struct Standard;

impl Guest for Standard {
    fn configure(options: Vec<(String, String)>) -> Result<(), String> {
        guest::reject_options("standard", &options)
    }

    fn format(event: Event, _context: Context) -> Result<Vec<Message>, String> {
        let mut value = Vec::with_capacity(512);
        atkafka_shape::write_standard(&mut value, &guest::view(&event));
        Ok(vec![Message { value, key: None, headers: Vec::new(), topic: None }])
    }
}

impl PackedGuest for Standard {
    fn format_packed(events: Vec<u8>) -> Vec<u8> {
        // SAFETY: `events` is the host's argument to `format-packed`.
        unsafe { guest::format_packed_one_each(&events, |value, event| atkafka_shape::write_standard(value, &event.event)) }
    }
}

/// Every allocation of this formatter ends with its call, which is what the arena relies on.
#[global_allocator]
static ALLOCATOR: atkafka_shape::arena::CallArena = atkafka_shape::arena::CallArena::new();

atkafka_shape::guest::export!(Standard with_types_in atkafka_shape::guest);
