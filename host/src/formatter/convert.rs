//! Conversion of host events into the guest-facing types of the `formatter` world.

use super::bindings::atkafka::formatter::types as wit;
use crate::firehose::event::{Action, Event};

// TODO: the strings of every event are copied here and again when lowered into the guest; the
// decode path could build the guest-facing types directly and save one copy per field.
pub fn to_wit(event: &Event) -> wit::Event {
    match event {
        Event::Operation(op) => wit::Event::CommitOp(wit::CommitOp {
            did: op.did.to_string(),
            seq: op.seq,
            rev: op.rev.to_string(),
            time: op.time.to_string(),
            action: match op.action {
                Action::Create => wit::Action::Create,
                Action::Update => wit::Action::Update,
                Action::Delete => wit::Action::Delete,
            },
            collection: op.collection.clone(),
            rkey: op.rkey.clone(),
            cid: op.cid.clone(),
            record: op.record.clone(),
        }),
        Event::Account(account) => wit::Event::Account(wit::AccountEvent {
            did: account.did.clone(),
            seq: account.seq,
            time: account.time.clone(),
            active: account.active,
            status: account.status.clone(),
        }),
        Event::Identity(identity) => wit::Event::Identity(wit::IdentityEvent {
            did: identity.did.clone(),
            seq: identity.seq,
            time: identity.time.clone(),
            handle: identity.handle.clone(),
        }),
        Event::Sync(sync) => wit::Event::Sync(wit::SyncEvent {
            did: sync.did.clone(),
            seq: sync.seq,
            time: sync.time.clone(),
            rev: sync.rev.clone(),
        }),
        Event::Info(info) => wit::Event::Info(wit::InfoEvent { name: info.name.clone(), message: info.message.clone() }),
    }
}
