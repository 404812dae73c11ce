//! The decode-and-format stage: takes raw frames from the relay queue, decodes them, runs every
//! event through the formatter, and hands the messages to Kafka in firehose order.
//!
//! It runs on its own thread because decoding and guest calls are CPU work that must not stall
//! the async reader. Guarantees: frames are processed strictly in the order received, so the
//! messages of one DID reach librdkafka in firehose order; every skipped frame, operation or event
//! is counted under one reason; nothing here panics on any input.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::event_id::EventIds;
use crate::fatal::{Fatal, FatalSender};
use crate::firehose::decode::{decode, DecodedFrame};
use crate::firehose::event::Event;
use crate::formatter::Formatter;
use crate::kafka::delivery::FrameDeliveries;
use crate::kafka::producer::Producer;
use crate::metrics::Metrics;
use crate::ratelimit::LogLimiter;
use crate::relay::RawFrame;
use crate::skip::SkipReason;

pub struct Pipeline {
    pub formatters: Vec<Formatter>,
    pub producer: Arc<Producer>,
    pub output_topic: String,
    pub metrics: Arc<Metrics>,
    pub event_ids: EventIds,
    pub deliveries: mpsc::Sender<FrameDeliveries>,
    /// The last seq decoded, shared with the relay reader to resume after a reconnect. It starts
    /// at the cursor the host resumed from (negative for none).
    pub last_seq: Arc<AtomicI64>,
    pub fatal: FatalSender,
    /// The seq of the previous frame, for counting gaps and regressions.
    pub previous_seq: Option<i64>,
    /// Set after a fatal error: no further frame is handed to the delivery checker.
    pub halted: bool,
}

#[derive(Default)]
struct Logs {
    skips: LogLimiter,
    error_frames: LogLimiter,
    formatter_errors: LogLimiter,
    seq_changes: LogLimiter,
}

impl Pipeline {
    /// Processes frames until the relay side of the queue closes and the queue is empty.
    pub fn run(mut self, mut frames: mpsc::Receiver<RawFrame>) {
        let mut logs = Logs::default();
        while let Some(raw) = frames.blocking_recv() {
            self.metrics.frame_queue_depth.set(frames.len() as i64);
            let decoded = decode(&raw.bytes);
            self.record_frame(&decoded, &mut logs);
            let mut deliveries = FrameDeliveries { seq: decoded.seq, did: decoded.did.clone(), deliveries: Vec::new() };
            for event in &decoded.events {
                self.handle_event(event, raw.received_at_us, &mut deliveries, &mut logs);
                if self.halted {
                    return;
                }
            }
            if self.deliveries.blocking_send(deliveries).is_err() {
                tracing::error!("the delivery checker stopped; no further frames are processed");
                return;
            }
        }
    }

    fn record_frame(&mut self, decoded: &DecodedFrame, logs: &mut Logs) {
        self.metrics.frames.with_label_values(&[decoded.label]).inc();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0);
        self.metrics.last_frame_time.set(now as i64);
        if let Some(seq) = decoded.seq {
            self.check_seq(seq, decoded.label, logs);
            self.metrics.last_seq.set(seq);
            self.last_seq.store(seq, Ordering::Release);
        }
        if let Some((reason, detail)) = &decoded.skipped_frame {
            self.metrics.skipped.with_label_values(&[reason.label()]).inc();
            if let Some(suppressed) = logs.skips.allow() {
                tracing::warn!(reason = reason.label(), %detail, suppressed, "skipped a frame");
            }
        }
        for op in &decoded.skipped_ops {
            self.metrics.skipped.with_label_values(&[op.reason.label()]).inc();
            if let Some(suppressed) = logs.skips.allow() {
                tracing::warn!(
                    reason = op.reason.label(),
                    did = decoded.did.as_deref().unwrap_or(""),
                    seq = ?decoded.seq,
                    path = %op.path,
                    detail = %op.detail,
                    suppressed,
                    "skipped a record operation"
                );
            }
        }
        if let Some(error) = &decoded.error {
            self.metrics.count_error_frame(&error.error);
            if error.error == "FutureCursor" {
                let cursor = Some(self.last_seq.load(Ordering::Acquire)).filter(|seq| *seq >= 0);
                let message = error.message.clone().unwrap_or_default();
                let _ = self.fatal.send(Fatal::FutureCursor { cursor, message });
            } else if let Some(suppressed) = logs.error_frames.allow() {
                // ConsumerTooSlow and others: the relay closes the connection and the reader
                // resumes from the last seq decoded.
                tracing::warn!(error = %error.error, message = ?error.message, suppressed, "the relay sent an error frame");
            }
        }
        for event in &decoded.events {
            if let Event::Info(info) = event {
                if info.name == "OutdatedCursor" {
                    tracing::warn!(
                        message = ?info.message,
                        "the relay reports an outdated cursor: events between the cursor and the \
                         oldest the relay keeps may be lost"
                    );
                }
            }
        }
    }

    /// Counts gaps and regressions in the relay's seqs. Neither is fatal: replays legitimately
    /// have gaps where a PDS deleted an account's older events.
    fn check_seq(&mut self, seq: i64, label: &str, logs: &mut Logs) {
        if let Some(previous) = self.previous_seq {
            if seq <= previous {
                self.metrics.seq_regressions.inc();
                if let Some(suppressed) = logs.seq_changes.allow() {
                    tracing::warn!(seq, previous, frame = label, suppressed, "seq did not increase");
                }
                return;
            }
            if seq > previous + 1 {
                self.metrics.seq_gaps.inc_by((seq - previous - 1) as u64);
            }
        }
        self.previous_seq = Some(seq);
    }

    fn handle_event(&mut self, event: &Event, received_at_us: u64, deliveries: &mut FrameDeliveries, logs: &mut Logs) {
        self.metrics.count_handled(event.action_name(), event.collection());
        let event_id = self.event_ids.next_id();
        for formatter in &mut self.formatters {
            let messages = match formatter.format(event, event_id, received_at_us) {
                Ok(messages) => messages,
                Err(error) => {
                    self.metrics.formatter_errors.with_label_values(&[formatter.name(), error.kind()]).inc();
                    self.metrics.skipped.with_label_values(&[SkipReason::FormatterFailed.label()]).inc();
                    if let Some(suppressed) = logs.formatter_errors.allow() {
                        tracing::warn!(
                            formatter = formatter.name(),
                            did = event.did().unwrap_or(""),
                            seq = ?event.seq(),
                            %error,
                            suppressed,
                            "formatter failed; event skipped"
                        );
                    }
                    continue;
                }
            };
            self.metrics
                .formatter_memory_bytes
                .with_label_values(&[formatter.name()])
                .set(formatter.peak_memory_bytes() as i64);
            for message in messages {
                let topic = message.topic.as_deref().unwrap_or(&self.output_topic);
                let key = message.key.as_deref().unwrap_or(event.default_key().as_bytes());
                match self.producer.send(topic, key, &message.value, &message.headers) {
                    Ok(delivery) => deliveries.deliveries.push((topic.to_owned(), delivery)),
                    Err(error) => {
                        self.metrics.produced_events.with_label_values(&["failed"]).inc();
                        // The frame must not count as delivered: the checker never sees it
                        // complete, because the host stops on this error.
                        let _ = self.fatal.send(Fatal::MessageRefused {
                            topic: topic.to_owned(),
                            did: event.did().unwrap_or_default().to_owned(),
                            seq: event.seq(),
                            bytes: message.value.len(),
                            error: error.to_string(),
                        });
                        self.halted = true;
                        return;
                    }
                }
            }
        }
    }
}
