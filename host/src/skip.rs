//! The closed set of reasons for which bad external input is skipped.
//!
//! A frame or a record operation that cannot be turned into an event is counted under exactly one
//! of these reasons and skipped; the stream goes on. Every reason is registered as a metric label
//! at start-up, so a dashboard sees a zero rather than a missing series. Failures of our own state
//! (delivery, configuration) are not skips: they are errors that stop the host.

/// Why a frame or a record operation was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The frame's header or body is not valid DAG-CBOR of a known shape.
    FrameUndecodable,
    /// The frame is larger than `--max-frame-bytes`.
    FrameTooLarge,
    /// The frame's message type is not one this host handles (for example the legacy `#handle`).
    FrameUnknownType,
    /// The commit's `blocks` field is not a readable CAR file.
    CarUnreadable,
    /// A create or update names a CID that has no block in the commit's CAR.
    BlockMissing,
    /// A create or update whose block is absent because the relay marked the commit `tooBig`.
    CommitTooBig,
    /// The block found under an operation's CID does not hash to that CID.
    CidMismatch,
    /// The operation's CID uses a hash function other than SHA-256.
    UnsupportedHash,
    /// A create or update without a CID.
    CidMissing,
    /// The record block is not valid CBOR.
    RecordUndecodable,
    /// The record is valid CBOR but outside the atproto data model (floats, bad keys, ...).
    RecordInvalid,
    /// The operation's path is not `collection/rkey`.
    PathInvalid,
    /// The operation's action is not `create`, `update` or `delete`.
    ActionInvalid,
    /// A formatter failed on the event (error, trap, deadline or memory limit).
    FormatterFailed,
}

impl SkipReason {
    pub const ALL: [SkipReason; 14] = [
        SkipReason::FrameUndecodable,
        SkipReason::FrameTooLarge,
        SkipReason::FrameUnknownType,
        SkipReason::CarUnreadable,
        SkipReason::BlockMissing,
        SkipReason::CommitTooBig,
        SkipReason::CidMismatch,
        SkipReason::UnsupportedHash,
        SkipReason::CidMissing,
        SkipReason::RecordUndecodable,
        SkipReason::RecordInvalid,
        SkipReason::PathInvalid,
        SkipReason::ActionInvalid,
        SkipReason::FormatterFailed,
    ];

    /// The metric label of this reason.
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::FrameUndecodable => "frame_undecodable",
            SkipReason::FrameTooLarge => "frame_too_large",
            SkipReason::FrameUnknownType => "frame_unknown_type",
            SkipReason::CarUnreadable => "car_unreadable",
            SkipReason::BlockMissing => "block_missing",
            SkipReason::CommitTooBig => "commit_too_big",
            SkipReason::CidMismatch => "cid_mismatch",
            SkipReason::UnsupportedHash => "unsupported_hash",
            SkipReason::CidMissing => "cid_missing",
            SkipReason::RecordUndecodable => "record_undecodable",
            SkipReason::RecordInvalid => "record_invalid",
            SkipReason::PathInvalid => "path_invalid",
            SkipReason::ActionInvalid => "action_invalid",
            SkipReason::FormatterFailed => "formatter_failed",
        }
    }
}
