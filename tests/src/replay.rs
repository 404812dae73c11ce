//! A loopback relay that replays recorded frames over `com.atproto.sync.subscribeRepos`.
//!
//! It honours `?cursor=S` by starting after the first frame whose seq is above S, records every
//! request it receives, and can drop each connection after a number of frames to exercise
//! reconnects. It listens on 127.0.0.1 only and stops when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// What the relay sends.
#[derive(Clone, Default)]
pub struct ReplayOptions {
    pub frames: Vec<Vec<u8>>,
    /// Close each connection after sending this many frames.
    pub close_after: Option<usize>,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Pause between frames, to keep a stream going while a test injects a fault.
    pub frame_interval: Option<std::time::Duration>,
    /// Close the connection right after sending an error frame (`op` = -1), as a relay does.
    pub close_after_error_frames: bool,
    /// Reply to a request whose cursor is above this seq with a `FutureCursor` error frame and
    /// close, as a relay does when asked for a seq it has not reached.
    pub head_seq: Option<i64>,
    /// Send an `OutdatedCursor` info frame first when the request's cursor is more than one below
    /// the first frame's seq, as a relay does when it no longer keeps the events after the cursor.
    pub report_outdated_cursor: bool,
}

/// Reports whether a frame is an error frame (header `op` = -1).
fn is_error_frame(frame: &[u8]) -> bool {
    let mut rest = frame;
    let header: Result<ciborium::Value, _> = ciborium::de::from_reader(&mut rest);
    let Ok(ciborium::Value::Map(entries)) = header else { return false };
    entries.iter().any(|(key, value)| {
        key.as_text() == Some("op") && value.as_integer().is_some_and(|op| i128::from(op) == -1)
    })
}

pub struct ReplayRelay {
    pub address: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Returns the seq of a frame, read with the host's own decoder; `None` for frames without one.
fn frame_seq(frame: &[u8]) -> Option<i64> {
    atkafka_host::firehose::frame::decode_frame(frame).ok().and_then(|frame| frame.seq())
}

/// Returns the index of the first frame to send for a request with `cursor`.
fn start_index(seqs: &[Option<i64>], cursor: Option<i64>) -> usize {
    match cursor {
        None => 0,
        Some(cursor) => seqs.iter().position(|seq| seq.is_some_and(|seq| seq > cursor)).unwrap_or(seqs.len()),
    }
}

fn cursor_of(uri: &str) -> Option<i64> {
    let query = uri.split_once('?')?.1;
    query.split('&').find_map(|pair| pair.strip_prefix("cursor=")).and_then(|value| value.parse().ok())
}

impl ReplayRelay {
    pub fn start(frames: Vec<Vec<u8>>) -> ReplayRelay {
        ReplayRelay::start_with(ReplayOptions { frames, ..ReplayOptions::default() })
    }

    pub fn start_with(options: ReplayOptions) -> ReplayRelay {
        ReplayRelay::try_start(options).expect("start the replay relay")
    }

    pub fn try_start(options: ReplayOptions) -> std::io::Result<ReplayRelay> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = runtime.block_on(TcpListener::bind(("127.0.0.1", options.port)))?;
        let address = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seqs: Arc<Vec<Option<i64>>> = Arc::new(options.frames.iter().map(|frame| frame_seq(frame)).collect());
        let options = Arc::new(options);

        let logged = requests.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let options = options.clone();
                let seqs = seqs.clone();
                let logged = logged.clone();
                tokio::spawn(async move {
                    let mut uri = String::new();
                    let callback = |request: &Request, response: Response| {
                        uri = request.uri().to_string();
                        Ok(response)
                    };
                    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
                    logged.lock().unwrap().push(uri.clone());
                    let cursor = cursor_of(&uri);
                    if let (Some(cursor), Some(head)) = (cursor, options.head_seq) {
                        if cursor > head {
                            let frame = crate::synthetic::error_frame("FutureCursor", "cursor is ahead of the stream");
                            let _ = socket.send(Message::binary(frame)).await;
                            let _ = socket.close(None).await;
                            return;
                        }
                    }
                    let start = start_index(&seqs, cursor);
                    let first_seq = seqs.iter().flatten().next().copied();
                    if options.report_outdated_cursor && cursor.zip(first_seq).is_some_and(|(cursor, first)| cursor + 1 < first) {
                        let frame = crate::synthetic::info_frame("OutdatedCursor", "requested cursor exceeded limit");
                        if socket.send(Message::binary(frame)).await.is_err() {
                            return;
                        }
                    }
                    let mut sent = 0;
                    for frame in &options.frames[start..] {
                        if options.close_after.is_some_and(|limit| sent >= limit) {
                            let _ = socket.close(None).await;
                            return;
                        }
                        if socket.send(Message::binary(frame.clone())).await.is_err() {
                            return;
                        }
                        sent += 1;
                        if options.close_after_error_frames && is_error_frame(frame) {
                            let _ = socket.close(None).await;
                            return;
                        }
                        if let Some(interval) = options.frame_interval {
                            tokio::time::sleep(interval).await;
                        }
                    }
                    // Like a live relay with nothing new to send: keep the connection open until
                    // the client leaves.
                    while let Some(Ok(_)) = socket.next().await {}
                });
            }
        });
        Ok(ReplayRelay { address, requests, runtime: Some(runtime) })
    }

    /// Returns the value for `--relay-host`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.address)
    }

    /// Returns the request URIs received so far, such as `/xrpc/com.atproto.sync.subscribeRepos?cursor=5`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ReplayRelay {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_starts_after_the_named_seq() {
        let seqs = [Some(10), None, Some(11), Some(12)];
        assert_eq!(start_index(&seqs, None), 0);
        assert_eq!(start_index(&seqs, Some(10)), 2);
        assert_eq!(start_index(&seqs, Some(12)), 4);
        assert_eq!(start_index(&seqs, Some(5)), 0);
    }

    #[test]
    fn cursor_is_read_from_the_query() {
        assert_eq!(cursor_of("/xrpc/com.atproto.sync.subscribeRepos?cursor=42"), Some(42));
        assert_eq!(cursor_of("/xrpc/com.atproto.sync.subscribeRepos"), None);
    }
}
