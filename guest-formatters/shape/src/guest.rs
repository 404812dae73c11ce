//! The bindings of the `batch-formatter` world, generated once for every guest built on this
//! crate, and the conversion of their events into [`EventView`]s.

use crate::{Action, EventView};

wit_bindgen::generate!({
    world: "batch-formatter",
    path: "../../wit",
    default_bindings_module: "atkafka_shape::guest",
    pub_export_macro: true,
});

use atkafka::formatter::types;

/// The trait of the `format-batch` export.
pub use exports::atkafka::formatter::batch::Guest as BatchGuest;

/// Formats each event with `G::format`, in order: a `format-batch` for guests that share nothing
/// between the events of a batch.
pub fn format_each<G: Guest>(events: Vec<(Event, Context)>) -> Vec<Result<Vec<Message>, String>> {
    events.into_iter().map(|(event, context)| G::format(event, context)).collect()
}

/// Borrows `event` as a view that the shape writers take.
pub fn view(event: &Event) -> EventView<'_> {
    match event {
        Event::CommitOp(op) => EventView::Operation {
            did: &op.did,
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
