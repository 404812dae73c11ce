//! Capture of a guest's stdout and stderr, capped per call so that a chatty guest cannot flood
//! the host's log or memory. Writes past the cap are accepted and dropped (a guest never sees a
//! write error, which would make `println!` panic), and the number of dropped bytes is reported.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

/// One captured stream. Clones share the same buffer.
#[derive(Clone)]
pub struct CapturedOutput {
    cap: usize,
    captured: Arc<Mutex<Captured>>,
}

impl CapturedOutput {
    pub fn new(cap: usize) -> Self {
        CapturedOutput { cap, captured: Arc::new(Mutex::new(Captured::default())) }
    }

    fn append(&self, data: &[u8]) {
        let mut captured = self.captured.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let room = self.cap.saturating_sub(captured.bytes.len());
        let kept = data.len().min(room);
        captured.bytes.extend_from_slice(&data[..kept]);
        captured.dropped += data.len() - kept;
    }

    /// Takes what was written since the last call, as text, and the number of bytes dropped.
    pub fn take(&self) -> Option<(String, usize)> {
        let mut captured = self.captured.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if captured.bytes.is_empty() && captured.dropped == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&captured.bytes).trim_end().to_owned();
        let dropped = captured.dropped;
        captured.bytes.clear();
        captured.dropped = 0;
        Some((text, dropped))
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        self.append(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
