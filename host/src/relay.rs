//! The relay connection: a WebSocket subscription to `com.atproto.sync.subscribeRepos` whose
//! binary messages are queued, undecoded, with the time they arrived.
//!
//! Guarantees: reading never waits on decoding or Kafka except through the bounded frame queue,
//! so a slow broker slows the reader instead of growing memory. A dropped connection is opened
//! again with exponential backoff, resuming after the last seq decoded.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

const SUBSCRIBE_PATH: &str = "/xrpc/com.atproto.sync.subscribeRepos";
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One binary WebSocket message as the relay sent it.
pub struct RawFrame {
    pub bytes: Vec<u8>,
    /// When the frame was read, in microseconds since the Unix epoch.
    pub received_at_us: u64,
}

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

/// Reads the relay until `cancel` fires, reconnecting after every failure. `resume_seq` is the
/// last seq decoded (or a negative value for none); a new connection asks for the frames after it.
pub async fn read_relay(
    url: String,
    frames: mpsc::Sender<RawFrame>,
    resume_seq: Arc<AtomicI64>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let seq = resume_seq.load(Ordering::Acquire);
        let request_url = if seq >= 0 { format!("{url}?cursor={seq}") } else { url.clone() };
        let connection = tokio::select! {
            _ = cancel.cancelled() => return,
            connection = tokio_tungstenite::connect_async(request_url.as_str()) => connection,
        };
        let mut socket = match connection {
            Ok((socket, _response)) => {
                metrics.relay_connections.with_label_values(&["connected"]).inc();
                tracing::info!(url = %request_url, "connected to the relay");
                backoff = INITIAL_BACKOFF;
                socket
            }
            Err(error) => {
                metrics.relay_connections.with_label_values(&["failed"]).inc();
                tracing::warn!(url = %request_url, %error, retry_in = ?backoff, "failed to connect to the relay");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };

        let reason = loop {
            let message = tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = socket.close(None).await;
                    return;
                }
                message = socket.next() => message,
            };
            match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let frame = RawFrame { bytes: bytes.to_vec(), received_at_us: now_us() };
                    if frames.send(frame).await.is_err() {
                        // The decoder has stopped; the host is shutting down.
                        return;
                    }
                    metrics.frame_queue_depth.set((frames.max_capacity() - frames.capacity()) as i64);
                }
                Some(Ok(Message::Close(close))) => break format!("the relay closed the connection: {close:?}"),
                Some(Ok(_)) => {}
                Some(Err(error)) => break format!("read failed: {error}"),
                None => break "the connection ended".to_owned(),
            }
        };
        tracing::warn!(%reason, retry_in = ?backoff, "lost the relay connection");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
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
