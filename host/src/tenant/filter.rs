//! The pre-filter of a tenant: which events reach its formatter at all. Applied in the host, so a
//! filtered event costs no guest call.

use crate::firehose::event::Event;

/// Event kinds a filter can select.
pub const EVENT_KINDS: [&str; 5] = ["operation", "account", "identity", "sync", "info"];

/// A collection pattern: an exact NSID, a prefix ending in `.*` (`app.bsky.*` matches
/// `app.bsky.feed.post`), or `*` for every collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CollectionPattern {
    Any,
    Exact(String),
    Prefix(String),
}

impl CollectionPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(CollectionPattern::Any);
        }
        if let Some(prefix) = pattern.strip_suffix(".*") {
            if prefix.is_empty() || prefix.contains('*') {
                return Err(format!("invalid collection pattern `{pattern}`"));
            }
            return Ok(CollectionPattern::Prefix(format!("{prefix}.")));
        }
        if pattern.is_empty() || pattern.contains('*') {
            return Err(format!(
                "invalid collection pattern `{pattern}`: use an NSID, a prefix ending in `.*`, or `*`"
            ));
        }
        Ok(CollectionPattern::Exact(pattern.to_owned()))
    }

    fn matches(&self, collection: &str) -> bool {
        match self {
            CollectionPattern::Any => true,
            CollectionPattern::Exact(nsid) => nsid == collection,
            CollectionPattern::Prefix(prefix) => collection.starts_with(prefix.as_str()),
        }
    }
}

/// The selection of events a tenant receives. An empty list selects everything for that dimension, except
/// that a collection list without a kind list selects record operations only.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Collections of record operations. Other kinds of events pass only when `kinds` names them.
    pub collections: Vec<CollectionPattern>,
    /// DIDs; info events, which have none, pass only when this is empty.
    pub dids: Vec<String>,
    /// Event kinds from [`EVENT_KINDS`].
    pub kinds: Vec<String>,
}

fn kind_of(event: &Event) -> &'static str {
    match event {
        Event::Operation(_) => "operation",
        Event::Account(_) => "account",
        Event::Identity(_) => "identity",
        Event::Sync(_) => "sync",
        Event::Info(_) => "info",
    }
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.collections.is_empty() && self.dids.is_empty() && self.kinds.is_empty()
    }

    pub fn matches(&self, event: &Event) -> bool {
        let kind = kind_of(event);
        if self.kinds.is_empty() {
            if !self.collections.is_empty() && kind != "operation" {
                return false;
            }
        } else if !self.kinds.iter().any(|wanted| wanted == kind) {
            return false;
        }
        if !self.dids.is_empty() && !event.did().is_some_and(|did| self.dids.iter().any(|wanted| wanted == did)) {
            return false;
        }
        if let Event::Operation(operation) = event {
            if !self.collections.is_empty()
                && !self.collections.iter().any(|pattern| pattern.matches(&operation.collection))
            {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::firehose::event::{Action, Identity, Operation};

    fn post(did: &str, collection: &str) -> Event {
        Event::Operation(Operation {
            did: Arc::from(did),
            seq: 1,
            rev: Arc::from("rev"),
            time: Arc::from("time"),
            action: Action::Create,
            collection: collection.to_owned(),
            rkey: "rkey".to_owned(),
            cid: None,
            record: None,
        })
    }

    #[test]
    fn nsid_wildcard_matches_by_prefix() {
        let filter = Filter { collections: vec![CollectionPattern::parse("app.bsky.*").unwrap()], ..Filter::default() };
        assert!(filter.matches(&post("did:plc:a", "app.bsky.feed.post")));
        assert!(!filter.matches(&post("did:plc:a", "app.bskyx.feed.post")));
        assert!(!filter.matches(&post("did:plc:a", "com.example.thing")));
    }

    #[test]
    fn collection_filter_selects_operations_unless_kinds_name_more() {
        let collections = vec![CollectionPattern::parse("app.bsky.feed.post").unwrap()];
        let identity =
            Event::Identity(Identity { did: "did:plc:a".into(), seq: 1, time: "t".into(), handle: None });
        let posts_only = Filter { collections: collections.clone(), ..Filter::default() };
        assert!(!posts_only.matches(&identity));
        let posts_and_identity =
            Filter { collections, kinds: vec!["operation".to_owned(), "identity".to_owned()], ..Filter::default() };
        assert!(posts_and_identity.matches(&identity));
        assert!(posts_and_identity.matches(&post("did:plc:a", "app.bsky.feed.post")));
        assert!(!posts_and_identity.matches(&post("did:plc:a", "app.bsky.feed.like")));
    }

    #[test]
    fn did_and_kind_filters_combine() {
        let filter = Filter {
            dids: vec!["did:plc:a".to_owned()],
            kinds: vec!["operation".to_owned()],
            ..Filter::default()
        };
        assert!(filter.matches(&post("did:plc:a", "app.bsky.feed.like")));
        assert!(!filter.matches(&post("did:plc:b", "app.bsky.feed.like")));
        let identity =
            Event::Identity(Identity { did: "did:plc:a".into(), seq: 1, time: "t".into(), handle: None });
        assert!(!filter.matches(&identity));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for pattern in ["", "app.*.post", ".*", "app.bsky*"] {
            assert!(CollectionPattern::parse(pattern).is_err(), "{pattern}");
        }
    }
}
