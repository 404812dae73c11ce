//! The decode stage: takes raw frames from the relay queue, decodes them, gives every event its
//! id, and hands each frame's events to every tenant's thread.
//!
//! It runs on its own thread because decoding is CPU work that must not stall the async reader.
//! Guarantees: frames go to every tenant strictly in the order received, each exactly once (so the
//! delivery checker can match the tenants' reports frame by frame); every skipped frame or
//! operation is counted under one reason; nothing here panics on any input.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};


use tokio::sync::mpsc;

use crate::event_id::EventIds;
use crate::fatal::{Fatal, FatalSender};
use crate::firehose::decode::{decode, DecodedFrame};
use crate::firehose::event::Event;
use crate::metrics::Metrics;
use crate::prefetch::for_each_ahead;
use crate::ratelimit::LogLimiter;
use crate::raw_frames::{BufferPool, RawBatch};
use crate::relay::InFlight;
use crate::spent_frames::SpentFrames;
use crate::tenant::worker::FrameBatch;

/// Maximum bytes of the next frame requested into the caches while a frame is decoded. The
/// reader wrote each frame shortly before, often on the other core. Decoding reads a frame's CAR
/// sections one after another, and without the request each section's first byte waited for
/// memory: 95 % of the time spent splitting sections, in a profile of the end-to-end benchmark.
/// With it, the host took about 9 % less CPU a frame.
pub const FRAME_PREFETCH_BYTES: usize = 16 * 1024;

pub struct Pipeline {
    /// One queue per tenant, in tenant order.
    pub tenants: Vec<mpsc::Sender<Vec<Arc<FrameBatch>>>>,
    /// Frames read and not yet decoded, shared with the relay reader.
    pub in_flight: InFlight,
    /// The pool through which decoded batches return their buffers to the relay reader.
    pub buffers: BufferPool,
    /// The frames the tenants have handled, to be freed on this thread.
    pub spent: SpentFrames,
    pub metrics: Arc<Metrics>,
    pub event_ids: EventIds,
    /// The last seq decoded, shared with the relay reader to resume after a reconnect. It starts
    /// at the cursor the host resumed from (negative for none).
    pub last_seq: Arc<AtomicI64>,
    pub fatal: FatalSender,
    /// The seq of the previous frame, for counting gaps and regressions.
    pub previous_seq: Option<i64>,
}

#[derive(Default)]
struct Logs {
    skips: LogLimiter,
    error_frames: LogLimiter,
    seq_changes: LogLimiter,
}

impl Pipeline {
    /// Processes frames until the relay side of the queue closes and the queue is empty, or a
    /// tenant stops.
    pub fn run(mut self, mut frames: mpsc::Receiver<RawBatch>) {
        let mut logs = Logs::default();
        while let Some(raw_frames) = frames.blocking_recv() {
            self.spent.free();
            let mut batches = Vec::with_capacity(raw_frames.len());
            let mut labels = Vec::with_capacity(raw_frames.len());
            for_each_ahead(raw_frames.frames(), FRAME_PREFETCH_BYTES, |bytes, received_at_us| {
                let (batch, label) = self.decode_frame(bytes, received_at_us, &mut logs);
                batches.push(Arc::new(batch));
                labels.push(label);
            });
            self.in_flight.done(raw_frames.len());
            self.buffers.give(raw_frames.into_buffer());
            self.count_batch(&batches, &labels);
            // Every tenant but the last gets a copy of the handoff, and the last gets the
            // original: each copy costs an atomic increment per frame, and dropping the original
            // a decrement.
            let Some((last, others)) = self.tenants.split_last() else { continue };
            let sent = others.iter().all(|tenant| tenant.blocking_send(batches.clone()).is_ok());
            if !sent || last.blocking_send(batches).is_err() {
                tracing::info!("a tenant stopped; no further frames are decoded");
                return;
            }
        }
    }

    /// Decodes one frame, read at `received_at_us`, and returns its events with their ids, and
    /// the frame's type label.
    fn decode_frame(&mut self, bytes: &[u8], received_at_us: u64, logs: &mut Logs) -> (FrameBatch, &'static str) {
        // TODO: every frame is decoded on this one thread, so the host decodes no faster than one
        // core, however many the machine has. In `make bench` that is about 480 000 frames/s on a
        // 2-core Intel Xeon, and 730 000 to 810 000 on a 2-core AMD EPYC. Decoding on several
        // threads, keeping each DID's frames in order, would lift that limit on larger machines.
        // On two cores shared with the relay and the broker, the end-to-end rate is bound by
        // their total CPU instead.
        let decoded = decode(bytes);
        self.record_frame(&decoded, logs);
        let mut events = Vec::with_capacity(decoded.events.len());
        for event in decoded.events {
            events.push((event, self.event_ids.next_id()));
        }
        let batch = FrameBatch { seq: decoded.seq, did: decoded.did, events, received_at_us };
        (batch, decoded.label)
    }

    /// Counts a batch's frames by type and its events by action and collection, one metric
    /// update per distinct label rather than per frame.
    fn count_batch(&self, batches: &[Arc<FrameBatch>], labels: &[&'static str]) {
        let mut frames: HashMap<&str, u64> = HashMap::new();
        for label in labels {
            *frames.entry(label).or_default() += 1;
        }
        for (label, count) in frames {
            self.metrics.frames.with_label_values(&[label]).inc_by(count);
        }
        let mut handled: HashMap<(&str, &str), u64> = HashMap::new();
        for (event, _) in batches.iter().flat_map(|batch| &batch.events) {
            *handled.entry((event.action_name(), event.collection())).or_default() += 1;
        }
        for ((action_name, collection), count) in handled {
            self.metrics.count_handled(action_name, collection, count);
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0);
        self.metrics.last_frame_time.set(now as i64);
        self.metrics.frame_queue_depth.set(self.in_flight.count() as i64);
    }

    fn record_frame(&mut self, decoded: &DecodedFrame, logs: &mut Logs) {
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
                    // The relay starts from the oldest event it holds: the seqs between the cursor
                    // and that event are reported here as possible loss, not counted as a gap.
                    self.previous_seq = None;
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
                let missing = seq - previous - 1;
                self.metrics.seq_gaps.inc_by(missing as u64);
                if let Some(suppressed) = logs.seq_changes.allow() {
                    tracing::info!(seq, previous, missing, suppressed, "seq gap: the relay skipped seqs");
                }
            }
        }
        self.previous_seq = Some(seq);
    }
}
