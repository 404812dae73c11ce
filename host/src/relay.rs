//! The relay connection: a WebSocket subscription to `com.atproto.sync.subscribeRepos` whose
//! binary messages are queued, undecoded, with the time they arrived.
//!
//! Guarantees: reading never waits on decoding or Kafka except through the bounded frame queue,
//! so a slow broker slows the reader instead of growing memory. A dropped, closed or silent
//! connection is opened again with exponential backoff and jitter; before reconnecting the reader
//! waits until every queued frame was decoded, then asks for the frames after the last seq
//! decoded, so a reconnect neither loses nor repeats a frame. A frame above the size limit is
//! counted and skipped without closing the connection.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::ratelimit::LogLimiter;
use crate::raw_frames::{BufferPool, RawBatch};
use crate::relay_connection::{self, RelayStream, CLOSE_NORMAL};
use crate::skip::SkipReason;
use crate::websocket::{FrameParser, Found};

const SUBSCRIBE_PATH: &str = "/xrpc/com.atproto.sync.subscribeRepos";
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The largest `--max-frame-bytes` accepted: a frame is held whole in memory until decoded.
pub const WEBSOCKET_MESSAGE_LIMIT: usize = 256 << 20;
/// The spare room, in bytes, made in the batch buffer before each read of the socket.
const READ_BYTES: usize = 64 * 1024;
/// A batch buffer holding this many bytes is handed to the decoder without waiting for more.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How long the reader tries to send its close frame when a connection ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// TLS settings for a wss:// relay.
    pub tls: Arc<rustls::ClientConfig>,
}

/// Frames handed to the decoder at once, at most. The reader sends what the socket has ready, up
/// to this many, so that a busy stream costs one queue handoff per batch rather than per frame.
const MAX_BATCH_FRAMES: usize = 128;

/// Builds the subscription URL from a `--relay-host` value: `wss://host`, `ws://host:port`,
/// `https://host` (as wss), `http://host` (as ws) or a bare host (as wss).
pub fn subscribe_url(relay_host: &str) -> Result<String, String> {
    let relay_host = relay_host.trim();
    let (scheme, rest) = match relay_host.split_once("://") {
        Some(("wss" | "https", rest)) => ("wss", rest),
        Some(("ws" | "http", rest)) => ("ws", rest),
        Some((scheme, _)) => return Err(format!("unsupported scheme `{scheme}` in `{relay_host}` (use wss:// or ws://)")),
        None => ("wss", relay_host),
    };
    let authority = rest.trim_end_matches('/');
    check_authority(authority).map_err(|problem| format!("`{relay_host}` is not a host name with an optional port: {problem}"))?;
    Ok(format!("{scheme}://{authority}{SUBSCRIBE_PATH}"))
}

/// Checks that `authority` is a host name, an IPv4 address or a bracketed IPv6 address, with an
/// optional port from 1 to 65535, and returns what is wrong otherwise.
fn check_authority(authority: &str) -> Result<(), String> {
    let port = if let Some(bracketed) = authority.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']').ok_or("the IPv6 address has no closing `]`")?;
        address.parse::<std::net::Ipv6Addr>().map_err(|_| format!("`{address}` is not an IPv6 address"))?;
        if after.is_empty() {
            return Ok(());
        }
        after.strip_prefix(':').ok_or_else(|| format!("unexpected `{after}` after the address"))?
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
        if host.is_empty() || !host.chars().all(valid) {
            return Err(format!("invalid host `{host}`"));
        }
        match port {
            Some(port) => port,
            None => return Ok(()),
        }
    };
    match port.parse::<u16>() {
        Ok(1..) => Ok(()),
        _ => Err(format!("invalid port `{port}` (use 1 to 65535)")),
    }
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
/// subtracts it once every frame of it is decoded, so zero means the last seq decoded is the last
/// seq received.
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
/// frames after it. Frames are read into buffers from `buffers`.
pub async fn read_relay(
    options: RelayOptions,
    frames: mpsc::Sender<RawBatch>,
    buffers: BufferPool,
    in_flight: InFlight,
    resume_seq: Arc<AtomicI64>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut reader = Reader { options, frames, buffers, in_flight, metrics, cancel, backoff: INITIAL_BACKOFF, oversized_log: LogLimiter::default() };
    loop {
        let seq = resume_seq.load(Ordering::Acquire);
        let request_url = if seq >= 0 { format!("{}?cursor={seq}", reader.options.url) } else { reader.options.url.clone() };
        let connection = tokio::select! {
            _ = reader.cancel.cancelled() => return,
            connection = relay_connection::connect(&request_url, &reader.options.tls) => connection,
        };
        let (cause, reason) = match connection {
            Ok((stream, already_read)) => {
                reader.metrics.relay_connections.with_label_values(&["connected"]).inc();
                tracing::info!(url = %request_url, "connected to the relay");
                match reader.read_connection(stream, already_read).await {
                    Some(ended) => ended,
                    // The host is stopping.
                    None => return,
                }
            }
            Err(error) => {
                reader.metrics.relay_connections.with_label_values(&["failed"]).inc();
                ("connect_failed", format!("failed to connect to {request_url}: {error}"))
            }
        };
        reader.metrics.relay_reconnects.with_label_values(&[cause]).inc();
        let delay = with_jitter(reader.backoff);
        tracing::warn!(cause, %reason, retry_in = ?delay, "reconnecting to the relay");
        tokio::select! {
            _ = reader.cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        reader.backoff = (reader.backoff * 2).min(MAX_BACKOFF);
        wait_for_drain(&reader.in_flight, &reader.frames, &reader.cancel).await;
    }
}

/// The relay reader's state across connections.
struct Reader {
    options: RelayOptions,
    frames: mpsc::Sender<RawBatch>,
    buffers: BufferPool,
    in_flight: InFlight,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    backoff: Duration,
    oversized_log: LogLimiter,
}

impl Reader {
    /// Reads frames from one connection into batches for the decoder until the connection ends,
    /// and returns the cause and a description. Returns `None` when the host is stopping.
    async fn read_connection(&mut self, mut stream: RelayStream, already_read: Vec<u8>) -> Option<(&'static str, String)> {
        let mut parser = FrameParser::new(self.options.max_frame_bytes);
        let mut batch = RawBatch::new(self.buffers.take());
        batch.buffer_mut().extend_from_slice(&already_read);
        let mut received_at_us = now_us();
        let mut received_any = false;
        let ended = 'connection: loop {
            // Take every frame the buffer holds.
            loop {
                match parser.next(batch.buffer_mut()) {
                    Ok(Some(Found::Binary(range))) => {
                        if !received_any {
                            received_any = true;
                            self.backoff = INITIAL_BACKOFF;
                        }
                        batch.push_range(range, received_at_us);
                    }
                    Ok(Some(Found::Oversized(bytes))) => self.count_oversized(bytes),
                    Ok(Some(Found::Ping(payload))) => {
                        if let Err(error) = relay_connection::send_pong(&mut stream, &payload).await {
                            break 'connection ("read_error", format!("failed to answer a ping: {error}"));
                        }
                    }
                    Ok(Some(Found::Close(code, reason))) => {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, relay_connection::send_close(&mut stream, CLOSE_NORMAL)).await;
                        let code = code.map_or_else(|| "none".to_owned(), |code| code.to_string());
                        break 'connection ("closed", format!("the relay closed the connection: code {code}, reason `{reason}`"));
                    }
                    Ok(None) => break,
                    Err(error) => break 'connection ("read_error", format!("invalid WebSocket framing: {error}")),
                }
            }
            parser.reclaim(batch.buffer_mut());

            // Wait for the first frame of a batch, then take only what is ready.
            let needed = parser.needed(batch.buffer_mut());
            // The bytes read, or `None` when nothing was ready.
            let read: Option<std::io::Result<usize>> = if batch.is_empty() {
                let read = tokio::time::timeout(self.options.idle_timeout, read_more(&mut stream, batch.buffer_mut(), needed));
                tokio::select! {
                    _ = self.cancel.cancelled() => {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, relay_connection::send_close(&mut stream, CLOSE_NORMAL)).await;
                        return None;
                    }
                    read = read => match read {
                        Ok(read) => Some(read),
                        Err(_) => break ("idle_timeout", format!("no frame for {:?}", self.options.idle_timeout)),
                    },
                }
            } else if batch.len() < MAX_BATCH_FRAMES && batch.buffer_mut().len() < MAX_BATCH_BYTES {
                read_more(&mut stream, batch.buffer_mut(), needed).now_or_never()
            } else {
                None
            };
            match read {
                Some(Ok(0)) => break ("ended", "the connection ended".to_owned()),
                Some(Ok(_)) => received_at_us = now_us(),
                Some(Err(error)) => break ("read_error", format!("read failed: {error}")),
                None => {
                    // Nothing more is ready: hand the batch over, and go on in a fresh buffer with
                    // the bytes of a frame not yet complete.
                    let mut next = RawBatch::new(self.buffers.take());
                    parser.carry_over(batch.buffer_mut(), next.buffer_mut());
                    let full = std::mem::replace(&mut batch, next);
                    if !self.send(full).await {
                        return None;
                    }
                }
            }
        };
        // Frames read before the connection ended still go to the decoder.
        if !batch.is_empty() && !self.send(batch).await {
            return None;
        }
        Some(ended)
    }

    /// Queues a batch for the decoder. Returns false when the decoder has stopped, which means
    /// the host is shutting down.
    async fn send(&self, batch: RawBatch) -> bool {
        if batch.is_empty() {
            self.buffers.give(batch.into_buffer());
            return true;
        }
        self.in_flight.add(batch.len());
        self.metrics.frame_queue_depth.set(self.in_flight.count() as i64);
        self.frames.send(batch).await.is_ok()
    }

    fn count_oversized(&mut self, bytes: u64) {
        self.metrics.skipped.with_label_values(&[SkipReason::FrameTooLarge.label()]).inc();
        if let Some(suppressed) = self.oversized_log.allow() {
            tracing::warn!(bytes, limit = self.options.max_frame_bytes, suppressed, "skipped a frame larger than --max-frame-bytes");
        }
    }
}

/// Reads what the socket has into the spare room of `buffer`, after making room for at least
/// `needed` bytes (the rest of a frame whose header was read) or `READ_BYTES`.
fn read_more<'a>(stream: &'a mut RelayStream, buffer: &'a mut Vec<u8>, needed: usize) -> impl Future<Output = std::io::Result<usize>> + 'a {
    buffer.reserve(needed.max(READ_BYTES));
    stream.read_buf(buffer)
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

    #[test]
    fn relay_host_ports_and_addresses_are_checked() {
        for valid in ["ws://127.0.0.1:9000", "relay.example:443", "wss://[::1]:8443", "ws://[::1]", "wss://my_relay.local"] {
            assert!(subscribe_url(valid).is_ok(), "{valid} is valid");
        }
        for (invalid, problem) in [
            ("ws://127.0.0.1:99999", "invalid port `99999`"),
            ("ws://127.0.0.1:abc", "invalid port `abc`"),
            ("ws://127.0.0.1:0", "invalid port `0`"),
            ("relay.example:", "invalid port ``"),
            ("ws://", "invalid host"),
            ("ws://:9000", "invalid host ``"),
            ("wss://[::1", "no closing"),
            ("wss://[zz]:1", "not an IPv6 address"),
            ("wss://bad host", "invalid host"),
        ] {
            let error = subscribe_url(invalid).expect_err(invalid);
            assert!(error.contains(problem), "{invalid}: {error}");
        }
    }
}
