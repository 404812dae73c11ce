//! The standard JSON shape rendered natively in the host, with the same code the built-in
//! `standard` guest runs. The host uses it for dead-letter messages, and tests and benchmarks
//! use it as the native baseline of the guest. Its view of an event is also what the host
//! encodes into `format-packed` calls.

use atkafka_shape::EventView;

use crate::firehose::event::Event;

/// Borrows a host event as the shape crate's view.
pub fn view(event: &Event) -> EventView<'_> {
    match event {
        Event::Operation(op) => EventView::Operation {
            did: &op.did,
            seq: op.seq,
            rev: &op.rev,
            time: &op.time,
            action: op.action,
            collection: &op.collection,
            rkey: &op.rkey,
            cid: op.cid.as_deref(),
            record: op.record.as_deref(),
        },
        Event::Account(account) => EventView::Account {
            did: &account.did,
            seq: account.seq,
            time: &account.time,
            active: account.active,
            status: account.status.as_deref(),
        },
        Event::Identity(identity) => EventView::Identity {
            did: &identity.did,
            seq: identity.seq,
            time: &identity.time,
            handle: identity.handle.as_deref(),
        },
        Event::Sync(sync) => EventView::Sync { did: &sync.did, seq: sync.seq, time: &sync.time, rev: &sync.rev },
        Event::Info(info) => EventView::Info { name: &info.name, message: info.message.as_deref() },
    }
}

/// Appends the standard message of `event` to `out`.
pub fn write_standard(out: &mut Vec<u8>, event: &Event) {
    atkafka_shape::write_standard(out, &view(event));
}
