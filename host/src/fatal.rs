//! Failures that put our own guarantees at risk. Unlike bad input, which is counted and skipped,
//! each of these stops the host with a non-zero exit, leaving the cursor at the last event that
//! was fully delivered, so a restart produces everything after it again.

/// A failure that stops the host.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Fatal {
    #[error("delivery to topic `{topic}` failed for seq {seq:?} (DID {did}): {error}")]
    DeliveryFailed { topic: String, did: String, seq: Option<i64>, error: String },
    #[error("Kafka refused a message of {bytes} bytes for topic `{topic}`, seq {seq:?} (DID {did}): {error}")]
    MessageRefused { topic: String, did: String, seq: Option<i64>, bytes: usize, error: String },
    #[error(
        "the relay reports that cursor {cursor:?} is ahead of its stream (FutureCursor: {message}); \
         check --relay-host, then fix or delete the cursor file, or pass --cursor"
    )]
    FutureCursor { cursor: Option<i64>, message: String },
    #[error("tenant `{tenant}` failed on seq {seq:?} (DID {did}) and its policy is halt: {error}")]
    TenantHalted { tenant: String, did: String, seq: Option<i64>, error: String },
    #[error("{0}")]
    Cursor(String),
}

/// Where fatal failures are reported; the first one starts the shutdown.
pub type FatalSender = tokio::sync::mpsc::UnboundedSender<Fatal>;
