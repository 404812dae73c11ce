//! Splitting a `#commit` frame into one [`Operation`] per record operation.
//!
//! For each create or update, the record block is looked up by the operation's CID in the
//! commit's CAR, checked to hash to that CID, and converted to atproto JSON. An operation that
//! fails any step is reported with its [`SkipReason`]; the commit's other operations still come
//! out, in the commit's order.

use std::sync::Arc;

use super::car::{self, BlockCheck};
use super::cid_ref::CidRef;
use super::event::{Action, Operation};
use super::frame::CommitFrame;
use super::record::{self, RecordError};
use crate::skip::SkipReason;

/// An operation that could not become an event.
#[derive(Debug)]
pub struct SkippedOp {
    pub path: String,
    pub reason: SkipReason,
    pub detail: String,
}

/// The result of splitting one commit.
#[derive(Debug, Default)]
pub struct SplitCommit {
    pub operations: Vec<Operation>,
    pub skipped: Vec<SkippedOp>,
}

/// Splits `commit` into its record operations.
pub fn split_commit(commit: &CommitFrame) -> SplitCommit {
    let mut split = SplitCommit { operations: Vec::with_capacity(commit.ops.len()), skipped: Vec::new() };
    let did: Arc<str> = commit.repo.into();
    let rev: Arc<str> = commit.rev.into();
    let time: Arc<str> = commit.time.into();

    // The CAR is read only when some operation needs a block: a commit of deletes alone, or a
    // `tooBig` commit, may carry no blocks at all.
    let needs_blocks = commit.ops.iter().any(|op| op.action != "delete");
    let blocks = if needs_blocks && !commit.blocks.is_empty() {
        match car::read_blocks(commit.blocks) {
            Ok(blocks) => Some(blocks),
            Err(error) => {
                for op in commit.ops.iter().filter(|op| op.action != "delete") {
                    split.skipped.push(SkippedOp {
                        path: op.path.to_owned(),
                        reason: SkipReason::CarUnreadable,
                        detail: error.to_string(),
                    });
                }
                None
            }
        }
    } else {
        Some(Vec::new())
    };

    for op in &commit.ops {
        let skip = |reason: SkipReason, detail: String| SkippedOp { path: op.path.to_owned(), reason, detail };
        let Some(action) = Action::parse(op.action) else {
            split.skipped.push(skip(SkipReason::ActionInvalid, format!("unknown action `{}`", op.action)));
            continue;
        };
        let Some((collection, rkey)) = op.path.split_once('/').filter(|(c, r)| !c.is_empty() && !r.is_empty())
        else {
            split.skipped.push(skip(SkipReason::PathInvalid, "path is not `collection/rkey`".to_owned()));
            continue;
        };

        let (cid, record) = if action == Action::Delete {
            (None, None)
        } else {
            let Some(blocks) = blocks.as_deref() else {
                // Already reported as `car_unreadable` above.
                continue;
            };
            let Some(cid) = op.cid else {
                split.skipped.push(skip(SkipReason::CidMissing, format!("{} without a CID", op.action)));
                continue;
            };
            match record_json(&cid, blocks) {
                Ok(json) => (Some(cid.to_cid_string()), Some(json)),
                Err((reason, detail)) => {
                    let reason = if reason == SkipReason::BlockMissing && commit.too_big {
                        SkipReason::CommitTooBig
                    } else {
                        reason
                    };
                    split.skipped.push(skip(reason, detail));
                    continue;
                }
            }
        };

        split.operations.push(Operation {
            did: did.clone(),
            seq: commit.seq,
            rev: rev.clone(),
            time: time.clone(),
            action,
            collection: collection.to_owned(),
            rkey: rkey.to_owned(),
            cid,
            record,
        });
    }
    split
}

fn record_json(cid: &CidRef<'_>, blocks: &[(CidRef<'_>, &[u8])]) -> Result<String, (SkipReason, String)> {
    let Some((_, block)) = blocks.iter().find(|(block_cid, _)| block_cid == cid) else {
        return Err((SkipReason::BlockMissing, format!("no block for CID {cid} in the commit's CAR")));
    };
    match car::check_block(cid, block) {
        BlockCheck::Matches => {}
        BlockCheck::Mismatch => {
            return Err((SkipReason::CidMismatch, format!("the block does not hash to CID {cid}")));
        }
        BlockCheck::UnsupportedHash(code) => {
            return Err((SkipReason::UnsupportedHash, format!("CID {cid} uses multihash code {code:#x}")));
        }
    }
    record::record_to_json(block).map_err(|error| match error {
        RecordError::Undecodable(_) => (SkipReason::RecordUndecodable, error.to_string()),
        RecordError::NotDataModel(_) => (SkipReason::RecordInvalid, error.to_string()),
    })
}
