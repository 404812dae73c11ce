//! One frame's bytes to the events it carries, with every skipped part named.

use super::commit::{split_commit, SkippedOp};
use super::event::{Account, Event, Identity, Info, Sync};
use super::frame::{decode_frame, ErrorFrame, Frame};
use crate::skip::SkipReason;

/// What one frame turned into.
#[derive(Debug)]
pub struct DecodedFrame {
    /// The frame type as a metric label (see [`super::frame::FRAME_LABELS`]).
    pub label: &'static str,
    /// The firehose sequence number, for frames that have one.
    pub seq: Option<i64>,
    /// The frame's DID, for frames of one account.
    pub did: Option<String>,
    pub events: Vec<Event>,
    /// Operations of a commit that could not become events.
    pub skipped_ops: Vec<SkippedOp>,
    /// Set when the whole frame was skipped, with the reason and a description.
    pub skipped_frame: Option<(SkipReason, String)>,
    /// Set for an error frame (`op` = -1).
    pub error: Option<ErrorFrame>,
}

impl DecodedFrame {
    fn new(label: &'static str) -> Self {
        DecodedFrame {
            label,
            seq: None,
            did: None,
            events: Vec::new(),
            skipped_ops: Vec::new(),
            skipped_frame: None,
            error: None,
        }
    }
}

/// Decodes one frame into its events. Never fails: a bad frame comes back with `skipped_frame`
/// set, a bad operation in `skipped_ops`.
pub fn decode(bytes: &[u8]) -> DecodedFrame {
    let frame = match decode_frame(bytes) {
        Ok(frame) => frame,
        Err(error) => {
            let mut decoded = DecodedFrame::new("undecodable");
            decoded.skipped_frame = Some((SkipReason::FrameUndecodable, error.to_string()));
            return decoded;
        }
    };

    let mut decoded = DecodedFrame::new(frame.label());
    decoded.seq = frame.seq();
    match frame {
        Frame::Commit(commit) => {
            let split = split_commit(&commit);
            decoded.did = Some(commit.repo.to_owned());
            decoded.events = split.operations.into_iter().map(Event::Operation).collect();
            decoded.skipped_ops = split.skipped;
        }
        Frame::Identity(identity) => {
            decoded.did = Some(identity.did.to_owned());
            decoded.events.push(Event::Identity(Identity {
                did: identity.did.to_owned(),
                seq: identity.seq,
                time: identity.time.to_owned(),
                handle: identity.handle.map(str::to_owned),
            }));
        }
        Frame::Account(account) => {
            decoded.did = Some(account.did.to_owned());
            decoded.events.push(Event::Account(Account {
                did: account.did.to_owned(),
                seq: account.seq,
                time: account.time.to_owned(),
                active: account.active,
                status: account.status.map(str::to_owned),
            }));
        }
        Frame::Sync(sync) => {
            decoded.did = Some(sync.did.to_owned());
            decoded.events.push(Event::Sync(Sync {
                did: sync.did.to_owned(),
                seq: sync.seq,
                time: sync.time.to_owned(),
                rev: sync.rev.to_owned(),
            }));
        }
        Frame::Info(info) => {
            decoded.events.push(Event::Info(Info {
                name: info.name.to_owned(),
                message: info.message.map(str::to_owned),
            }));
        }
        Frame::Error(error) => decoded.error = Some(error),
        Frame::Unknown { message_type } => {
            decoded.skipped_frame =
                Some((SkipReason::FrameUnknownType, format!("unhandled message type `{message_type}`")));
        }
    }
    decoded
}
