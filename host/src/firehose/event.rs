//! The events the host hands to formatters: one per record operation of a commit, and one per
//! identity, account, sync or info frame.

use std::sync::Arc;

/// The action of a record operation, the same type the standard shape renders.
pub use atkafka_shape::Action;

/// One record operation of a commit. Operations of one commit share the DID, rev and time.
#[derive(Clone, Debug)]
pub struct Operation {
    pub did: Arc<str>,
    pub seq: i64,
    pub rev: Arc<str>,
    pub time: Arc<str>,
    pub action: Action,
    pub collection: String,
    pub rkey: String,
    /// The record's CID as a string; `None` for deletes.
    pub cid: Option<String>,
    /// The record as atproto JSON; `None` for deletes.
    pub record: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Account {
    pub did: String,
    pub seq: i64,
    pub time: String,
    pub active: bool,
    pub status: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Identity {
    pub did: String,
    pub seq: i64,
    pub time: String,
    pub handle: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Sync {
    pub did: String,
    pub seq: i64,
    pub time: String,
    pub rev: String,
}

#[derive(Clone, Debug)]
pub struct Info {
    pub name: String,
    pub message: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Event {
    Operation(Operation),
    Account(Account),
    Identity(Identity),
    Sync(Sync),
    Info(Info),
}

/// The message key for info events, which belong to no account.
pub const INFO_KEY: &str = "info";

impl Event {
    /// Returns the DID the event belongs to; info events have none.
    pub fn did(&self) -> Option<&str> {
        match self {
            Event::Operation(event) => Some(&event.did),
            Event::Account(event) => Some(&event.did),
            Event::Identity(event) => Some(&event.did),
            Event::Sync(event) => Some(&event.did),
            Event::Info(_) => None,
        }
    }

    /// Returns the default Kafka message key: the DID, or [`INFO_KEY`] for info events.
    pub fn default_key(&self) -> &str {
        self.did().unwrap_or(INFO_KEY)
    }

    /// Returns the firehose sequence number; info events have none.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Event::Operation(event) => Some(event.seq),
            Event::Account(event) => Some(event.seq),
            Event::Identity(event) => Some(event.seq),
            Event::Sync(event) => Some(event.seq),
            Event::Info(_) => None,
        }
    }

    /// Returns the action name used in metrics and by Osprey: `operation#create`, `operation#update`,
    /// `operation#delete`, `account`, `identity`, `sync` or `info`.
    pub fn action_name(&self) -> &'static str {
        match self {
            Event::Operation(Operation { action: Action::Create, .. }) => "operation#create",
            Event::Operation(Operation { action: Action::Update, .. }) => "operation#update",
            Event::Operation(Operation { action: Action::Delete, .. }) => "operation#delete",
            Event::Account(_) => "account",
            Event::Identity(_) => "identity",
            Event::Sync(_) => "sync",
            Event::Info(_) => "info",
        }
    }

    /// Returns the collection NSID of an operation; empty for other events.
    pub fn collection(&self) -> &str {
        match self {
            Event::Operation(event) => &event.collection,
            _ => "",
        }
    }
}
