//! Conversion between host events and messages and the guest-facing types of the `formatter`
//! world, and of messages out of a `format-packed` reply.

use atkafka_shape::packed::PackedMessage;
use bytes::Bytes;

use super::bindings::atkafka::formatter::types as wit;
use super::instance::Message;
use crate::firehose::event::{Action, Event};

/// Borrows `event` as the guest-facing type. No string is copied here, because wasmtime copies
/// each one into the guest's memory when the call lowers its arguments.
pub fn to_wit(event: &Event) -> wit::Event<'_> {
    match event {
        Event::Operation(op) => wit::Event::CommitOp(wit::CommitOp {
            did: &op.did,
            seq: op.seq,
            rev: &op.rev,
            time: &op.time,
            action: match op.action {
                Action::Create => wit::Action::Create,
                Action::Update => wit::Action::Update,
                Action::Delete => wit::Action::Delete,
            },
            collection: &op.collection,
            rkey: &op.rkey,
            cid: op.cid.as_deref(),
            record: op.record.as_deref(),
        }),
        Event::Account(account) => wit::Event::Account(wit::AccountEvent {
            did: &account.did,
            seq: account.seq,
            time: &account.time,
            active: account.active,
            status: account.status.as_deref(),
        }),
        Event::Identity(identity) => wit::Event::Identity(wit::IdentityEvent {
            did: &identity.did,
            seq: identity.seq,
            time: &identity.time,
            handle: identity.handle.as_deref(),
        }),
        Event::Sync(sync) => {
            wit::Event::Sync(wit::SyncEvent { did: &sync.did, seq: sync.seq, time: &sync.time, rev: &sync.rev })
        }
        Event::Info(info) => wit::Event::Info(wit::InfoEvent { name: &info.name, message: info.message.as_deref() }),
    }
}

/// Takes a message out of `reply`, a `format-packed` reply: the value stays in the reply's buffer
/// and the rest is copied.
pub fn from_packed(message: PackedMessage<'_>, reply: &Bytes) -> Message {
    Message {
        value: reply.slice_ref(message.value),
        key: message.key.map(<[u8]>::to_vec),
        headers: message.headers.into_iter().map(|(key, value)| (key.to_owned(), value.to_vec())).collect(),
        topic: message.topic.map(str::to_owned),
    }
}

pub fn from_wit(message: wit::Message) -> Message {
    Message {
        value: message.value.into(),
        key: message.key,
        headers: message.headers.into_iter().map(|header| (header.key, header.value)).collect(),
        topic: message.topic,
    }
}
