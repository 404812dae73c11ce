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
    /// The last seq decoded, shared with the relay reader to resume after a reconnect.
    pub last_seq: Arc<AtomicI64>,
}

#[derive(Default)]
struct Logs {
    skips: LogLimiter,
    error_frames: LogLimiter,
    formatter_errors: LogLimiter,
    send_errors: LogLimiter,
}

impl Pipeline {
    /// Processes frames until the relay side of the queue closes and the queue is empty.
    pub fn run(mut self, mut frames: mpsc::Receiver<RawFrame>) {
        let mut logs = Logs::default();
        while let Some(raw) = frames.blocking_recv() {
            self.metrics.frame_queue_depth.set(frames.len() as i64);
            let decoded = decode(&raw.bytes);
            self.record_frame(&decoded, &mut logs);
            let mut deliveries = FrameDeliveries { seq: decoded.seq, deliveries: Vec::new() };
            for event in &decoded.events {
                self.handle_event(event, raw.received_at_us, &mut deliveries, &mut logs);
            }
            if self.deliveries.blocking_send(deliveries).is_err() {
                tracing::error!("the delivery checker stopped; no further frames are processed");
                return;
            }
        }
    }

    fn record_frame(&self, decoded: &DecodedFrame, logs: &mut Logs) {
        self.metrics.frames.with_label_values(&[decoded.label]).inc();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0);
        self.metrics.last_frame_time.set(now as i64);
        if let Some(seq) = decoded.seq {
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
            if let Some(suppressed) = logs.error_frames.allow() {
                tracing::warn!(error = %error.error, message = ?error.message, suppressed, "the relay sent an error frame");
            }
        }
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
                        if let Some(suppressed) = logs.send_errors.allow() {
                            tracing::error!(
                                %topic,
                                did = event.did().unwrap_or(""),
                                seq = ?event.seq(),
                                bytes = message.value.len(),
                                %error,
                                suppressed,
                                "Kafka refused a message"
                            );
                        }
                    }
                }
            }
        }
    }
}
