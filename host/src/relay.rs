//! The relay connection: a WebSocket subscription to `com.atproto.sync.subscribeRepos` whose
//! binary messages are queued, undecoded, with the time they arrived.
//!
//! Guarantees: reading never waits on decoding or Kafka except through the bounded frame queue,
//! so a slow broker slows the reader instead of growing memory. A dropped, closed or silent
//! connection is opened again with exponential backoff and jitter; before reconnecting the reader
//! waits until every queued frame was decoded, then asks for the frames after the last seq
//! decoded, so a reconnect neither loses nor repeats a frame. A frame above the size limit is
//! counted and skipped without closing the connection.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::ratelimit::LogLimiter;
use crate::raw_frames::{BufferPool, RawBatch};
use crate::skip::SkipReason;

const SUBSCRIBE_PATH: &str = "/xrpc/com.atproto.sync.subscribeRepos";
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The WebSocket layer's own message limit. A frame above `--max-frame-bytes` but below this is
/// read and skipped; one above this fails the connection (and would fail again on reconnect), so
/// it is far above any frame a relay sends.
pub const WEBSOCKET_MESSAGE_LIMIT: usize = 256 << 20;

/// Causes of a reconnect, as metric labels.
pub const RECONNECT_CAUSES: [&str; 5] = ["closed", "read_error", "idle_timeout", "ended", "connect_failed"];

/// The reader's connection settings.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    pub url: String,
    /// No frame for this long means the connection is dead.
    pub idle_timeout: Duration,
    /// Frames above this size are counted and skipped.
    pub max_frame_bytes: usize,
}

/// Frames handed to the decoder at once, at most. The reader sends what the socket has ready, up
/// to this many, so that a busy stream costs one queue handoff per batch rather than per frame.
const MAX_BATCH_FRAMES: usize = 128;

/// Builds the subscription URL from a `--relay-host` value: `wss://host`, `ws://host:port`,
/// `https://host` (as wss), `http://host` (as ws) or a bare host (as wss).
pub fn subscribe_url(relay_host: &str) -> Result<String, String> {
    let relay_host = relay_host.trim().trim_end_matches('/');
    let (scheme, rest) = match relay_host.split_once("://") {
        Some(("wss" | "https", rest)) => ("wss", rest),
        Some(("ws" | "http", rest)) => ("ws", rest),
        Some((scheme, _)) => return Err(format!("unsupported scheme `{scheme}` in `{relay_host}` (use wss:// or ws://)")),
        None => ("wss", relay_host),
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(format!("`{relay_host}` is not a host name with an optional port"));
    }
    Ok(format!("{scheme}://{rest}{SUBSCRIBE_PATH}"))
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_micros() as u64).unwrap_or(0)
}

/// Adds up to a quarter of `backoff` at random, so that many hosts do not reconnect in step.
fn with_jitter(backoff: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.subsec_nanos()).unwrap_or(0);
    backoff + backoff.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// The frames read and not yet decoded. The reader adds a batch before sending it and the decoder
/// subtracts each frame once decoded, so zero means the last seq decoded is the last seq received.
#[derive(Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn add(&self, frames: usize) {
        self.0.fetch_add(frames, Ordering::AcqRel);
    }

    pub fn done(&self, frames: usize) {
        self.0.fetch_sub(frames, Ordering::AcqRel);
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Waits until the decoder has decoded every frame read, so that the last seq decoded is the last
/// seq received.
async fn wait_for_drain(in_flight: &InFlight, frames: &mpsc::Sender<RawBatch>, cancel: &CancellationToken) {
    while in_flight.count() > 0 && !frames.is_closed() && !cancel.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads the relay until `cancel` fires, reconnecting after every failure. `resume_seq` contains the
/// last seq decoded (negative for none): the first connection and every reconnect ask for the
/// frames after it. Batches are copied into buffers from `buffers`.
pub async fn read_relay(
    options: RelayOptions,
    frames: mpsc::Sender<RawBatch>,
    buffers: BufferPool,
    in_flight: InFlight,
    resume_seq: Arc<AtomicI64>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut backoff = INITIAL_BACKOFF;
    let mut oversized_log = LogLimiter::default();
    let config = WebSocketConfig::default()
        .max_message_size(Some(WEBSOCKET_MESSAGE_LIMIT))
        .max_frame_size(Some(WEBSOCKET_MESSAGE_LIMIT));
    loop {
        let seq = resume_seq.load(Ordering::Acquire);
        let request_url = if seq >= 0 { format!("{}?cursor={seq}", options.url) } else { options.url.clone() };
        let connection = tokio::select! {
            _ = cancel.cancelled() => return,
            connection = tokio_tungstenite::connect_async_with_config(request_url.as_str(), Some(config), false) => connection,
        };
        let (cause, reason) = match connection {
            Ok((mut socket, _response)) => {
                metrics.relay_connections.with_label_values(&["connected"]).inc();
                tracing::info!(url = %request_url, "connected to the relay");
                let mut received_any = false;
                let mut batch = RawBatch::new(buffers.take());
                let ended = loop {
                    // Wait for the first message of a batch, then take whatever else is ready.
                    let message = if batch.is_empty() {
                        tokio::select! {
                            _ = cancel.cancelled() => {
                                let _ = socket.close(None).await;
                                return;
                            }
                            message = tokio::time::timeout(options.idle_timeout, socket.next()) => match message {
                                Ok(message) => Some(message),
                                Err(_) => break ("idle_timeout", format!("no frame for {:?}", options.idle_timeout)),
                            },
                        }
                    } else if batch.len() < MAX_BATCH_FRAMES {
                        socket.next().now_or_never()
                    } else {
                        None
                    };
                    let Some(message) = message else {
                        // Nothing more is ready: hand the batch over.
                        in_flight.add(batch.len());
                        metrics.frame_queue_depth.set(in_flight.count() as i64);
                        let full = std::mem::replace(&mut batch, RawBatch::new(buffers.take()));
                        if frames.send(full).await.is_err() {
                            // The decoder has stopped; the host is shutting down.
                            return;
                        }
                        continue;
                    };
                    match message {
                        Some(Ok(Message::Binary(bytes))) => {
                            if !received_any {
                                received_any = true;
                                backoff = INITIAL_BACKOFF;
                            }
                            if bytes.len() > options.max_frame_bytes {
                                metrics.skipped.with_label_values(&[SkipReason::FrameTooLarge.label()]).inc();
                                if let Some(suppressed) = oversized_log.allow() {
                                    tracing::warn!(
                                        bytes = bytes.len(),
                                        limit = options.max_frame_bytes,
                                        suppressed,
                                        "skipped a frame larger than --max-frame-bytes"
                                    );
                                }
                                continue;
                            }
                            batch.push(&bytes, now_us());
                        }
                        Some(Ok(Message::Close(close))) => {
                            break ("closed", format!("the relay closed the connection: {close:?}"))
                        }
                        Some(Ok(_)) => {}
                        Some(Err(error)) => break ("read_error", format!("read failed: {error}")),
                        None => break ("ended", "the connection ended".to_owned()),
                    }
                };
                // Frames read before the connection ended still go to the decoder.
                if !batch.is_empty() {
                    in_flight.add(batch.len());
                    if frames.send(batch).await.is_err() {
                        return;
                    }
                }
                ended
            }
            Err(error) => {
                metrics.relay_connections.with_label_values(&["failed"]).inc();
                ("connect_failed", format!("failed to connect to {request_url}: {error}"))
            }
        };
        metrics.relay_reconnects.with_label_values(&[cause]).inc();
        let delay = with_jitter(backoff);
        tracing::warn!(cause, %reason, retry_in = ?delay, "reconnecting to the relay");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        wait_for_drain(&in_flight, &frames, &cancel).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_host_forms_become_subscribe_urls() {
        let cases = [
            ("wss://bsky.network", "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos"),
            ("ws://127.0.0.1:9000/", "ws://127.0.0.1:9000/xrpc/com.atproto.sync.subscribeRepos"),
            ("https://relay.example", "wss://relay.example/xrpc/com.atproto.sync.subscribeRepos"),
            ("bsky.network", "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos"),
        ];
        for (host, url) in cases {
            assert_eq!(subscribe_url(host).as_deref(), Ok(url), "for {host}");
        }
    }

    #[test]
    fn relay_host_with_path_or_bad_scheme_is_rejected() {
        assert!(subscribe_url("ftp://x").is_err());
        assert!(subscribe_url("wss://x/xrpc").is_err());
        assert!(subscribe_url("").is_err());
    }
}
