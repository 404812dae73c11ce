//! The bindings of the `packed-formatter` world, generated once for every guest built on this
//! crate. Also the conversion of their events into [`EventView`]s, and the reading and writing
//! of packed batches.

use crate::packed::{self, PackedEvent, ResultWriter};
use crate::{Action, EventView};

wit_bindgen::generate!({
    world: "packed-formatter",
    path: "../../wit",
    default_bindings_module: "atkafka_shape::guest",
    pub_export_macro: true,
});

use atkafka::formatter::types;

/// The trait of the `format-packed` export.
pub use exports::atkafka::formatter::packed::Guest as PackedGuest;

/// Reads the events of a `format-packed` call. A buffer that does not follow the layout traps,
/// which the host handles like any failed batch call.
///
/// # Safety
///
/// `events` must be the argument the host passed to `format-packed`, whose strings the host
/// guarantees to be UTF-8 (see [`packed::read_host_events`]).
pub unsafe fn read_packed(events: &[u8]) -> Vec<PackedEvent<'_>> {
    // SAFETY: the caller passes the host's argument.
    unsafe { packed::read_host_events(events) }.unwrap_or_else(|error| panic!("format-packed: {error}"))
}

/// Returns a result writer with room for the results of `events`: about their own size plus a
/// few hundred bytes each, which fits formatters that render each event once.
pub fn result_writer(events: &[u8], count: usize) -> ResultWriter {
    ResultWriter::new(count, events.len() + count * 256)
}

/// Formats each event of a `format-packed` call into one message, keyed by the host's default,
/// whose value `write` appends to the buffer it is given.
///
/// # Safety
///
/// As for [`read_packed`]: `events` must be the host's argument to `format-packed`.
pub unsafe fn format_packed_one_each(events: &[u8], write: impl Fn(&mut Vec<u8>, &PackedEvent<'_>)) -> Vec<u8> {
    // SAFETY: the caller passes the host's argument.
    let packed = unsafe { read_packed(events) };
    let mut results = result_writer(events, packed.len());
    for event in &packed {
        results.messages(1);
        results.message(|value| write(value, event), None, &[], None);
    }
    results.finish()
}

/// Formats each event of a packed batch with `G::format`, in order, for guests that work on the
/// typed events: `format-packed` with the same results as `format`.
///
/// # Safety
///
/// As for [`read_packed`]: `events` must be the host's argument to `format-packed`.
pub unsafe fn format_each<G: Guest>(events: &[u8]) -> Vec<Result<Vec<Message>, String>> {
    // SAFETY: the caller passes the host's argument.
    unsafe { read_packed(events) }
        .iter()
        .map(|packed| {
            let context = Context { event_id: packed.event_id, received_at_us: packed.received_at_us };
            G::format(owned(&packed.event), context)
        })
        .collect()
}

/// Packs typed results as `format-packed` returns them.
pub fn write_results(events: &[u8], results: &[Result<Vec<Message>, String>]) -> Vec<u8> {
    let mut writer = result_writer(events, results.len());
    for result in results {
        match result {
            Err(error) => writer.error(error),
            Ok(messages) => {
                writer.messages(messages.len());
                for message in messages {
                    let headers: Vec<(&str, &[u8])> =
                        message.headers.iter().map(|header| (header.key.as_str(), header.value.as_slice())).collect();
                    writer.message(
                        |out| out.extend_from_slice(&message.value),
                        message.key.as_deref(),
                        &headers,
                        message.topic.as_deref(),
                    );
                }
            }
        }
    }
    writer.finish()
}

/// Copies a view into the typed event that `format` takes.
pub fn owned(view: &EventView<'_>) -> Event {
    match *view {
        EventView::Operation { did, seq, rev, time, action, collection, rkey, cid, record } => {
            Event::CommitOp(types::CommitOp {
                did: did.to_owned(),
                seq,
                rev: rev.to_owned(),
                time: time.to_owned(),
                action: match action {
                    Action::Create => types::Action::Create,
                    Action::Update => types::Action::Update,
                    Action::Delete => types::Action::Delete,
                },
                collection: collection.to_owned(),
                rkey: rkey.to_owned(),
                cid: cid.map(str::to_owned),
                record: record.map(str::to_owned),
            })
        }
        EventView::Account { did, seq, time, active, status } => Event::Account(types::AccountEvent {
            did: did.to_owned(),
            seq,
            time: time.to_owned(),
            active,
            status: status.map(str::to_owned),
        }),
        EventView::Identity { did, seq, time, handle } => Event::Identity(types::IdentityEvent {
            did: did.to_owned(),
            seq,
            time: time.to_owned(),
            handle: handle.map(str::to_owned),
        }),
        EventView::Sync { did, seq, time, rev } => {
            Event::Sync(types::SyncEvent { did: did.to_owned(), seq, time: time.to_owned(), rev: rev.to_owned() })
        }
        EventView::Info { name, message } => {
            Event::Info(types::InfoEvent { name: name.to_owned(), message: message.map(str::to_owned) })
        }
    }
}

/// Borrows `event` as a view that the shape writers take.
pub fn view(event: &Event) -> EventView<'_> {
    match event {
        Event::CommitOp(op) => EventView::Operation {
            did: &op.did,
            seq: op.seq,
            rev: &op.rev,
            time: &op.time,
            action: match op.action {
                types::Action::Create => Action::Create,
                types::Action::Update => Action::Update,
                types::Action::Delete => Action::Delete,
            },
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

/// Rejects every option: the built-in formatters take none.
pub fn reject_options(formatter: &str, options: &[(String, String)]) -> Result<(), String> {
    match options.first() {
        None => Ok(()),
        Some((key, _)) => Err(format!("unknown option `{key}`: the {formatter} formatter takes no options")),
    }
}
