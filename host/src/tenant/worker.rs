//! One tenant's thread: filters the events of each frame, formats them in the tenant's own
//! formatter instance, applies the tenant's error policy, and hands the messages to Kafka.
//!
//! Guarantees: frames are handled strictly in order, so one DID's messages reach librdkafka in
//! firehose order; every frame, even one whose events were all filtered or failed, is reported to
//! the delivery checker, so the cursor can pass it; a `halt` failure or a refused message stops
//! the tenant before it reports the frame, so the cursor never passes that event.
//!
//! The events of one handoff that pass the filter are formatted in batch calls when the formatter
//! has `format-batch`. A batch call runs when the first of its events is handled and the tenant is
//! not quarantined. Its results are then used in event order, so the error policy, the quarantine
//! count and the metrics see each event as if it had been formatted alone. When the quarantine
//! starts within a batch, the remaining results of that batch are discarded.

use std::sync::Arc;
use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::mpsc;

use super::config::TenantSpec;
use super::filter::Filter;
use super::policy::{ErrorPolicy, Quarantine};
use crate::fatal::{Fatal, FatalSender};
use crate::firehose::event::Event;
use crate::formatter::{BatchEvent, FormatError, Formatter, Message, Messages};
use crate::kafka::delivery::FrameDeliveries;
use crate::kafka::producer::Producer;
use crate::metrics::{Metrics, TenantMetrics};
use crate::ratelimit::LogLimiter;
use crate::skip::SkipReason;
use crate::spent_frames::SpentFrames;

/// The events of one frame, shared by every tenant.
#[derive(Debug)]
pub struct FrameBatch {
    pub seq: Option<i64>,
    pub did: Option<String>,
    /// Each event with its event id.
    pub events: Vec<(Event, u64)>,
    pub received_at_us: u64,
}

pub struct TenantWorker {
    name: String,
    topic: String,
    filter: Filter,
    on_error: ErrorPolicy,
    formatter: Formatter,
    quarantine: Quarantine,
    producer: Arc<Producer>,
    metrics: Arc<Metrics>,
    /// This tenant's series of `metrics`.
    tenant_metrics: TenantMetrics,
    fatal: FatalSender,
    failure_log: LogLimiter,
}

/// Whether the worker goes on after an event.
enum Flow {
    Continue,
    Stop,
}

/// The formatter results of the events of a handoff that pass the filter, one batch call ahead.
/// Positions index those events in handoff order.
enum Lookahead {
    /// The results of a batch call for the events at `start..start + results.len()`, each taken
    /// once.
    Batch {
        start: usize,
        results: Vec<Option<Result<Messages, FormatError>>>,
        /// The call's duration divided by its events, in seconds.
        seconds_per_event: f64,
    },
    /// The events before `end` are formatted one at a time: they are the events of a batch call
    /// that failed as a whole, or there was no batch to call.
    Single { end: usize },
}

impl Lookahead {
    fn covers(&self, position: usize) -> bool {
        match self {
            Lookahead::Batch { start, results, .. } => (*start..start + results.len()).contains(&position),
            Lookahead::Single { end } => position < *end,
        }
    }
}

/// The reason a message did not reach librdkafka.
enum SendError {
    /// Larger than the producer's `message.max.bytes`: the event's fault, handled by the tenant's
    /// error policy.
    TooLarge(String),
    /// Anything else stops the host.
    Fatal,
}

impl TenantWorker {
    pub fn new(
        spec: &TenantSpec,
        formatter: Formatter,
        producer: Arc<Producer>,
        metrics: Arc<Metrics>,
        fatal: FatalSender,
    ) -> Self {
        TenantWorker {
            name: spec.name.clone(),
            topic: spec.topic.clone(),
            filter: spec.filter.clone(),
            on_error: spec.on_error.clone(),
            formatter,
            quarantine: Quarantine::new(spec.quarantine),
            producer,
            tenant_metrics: metrics.tenant(&spec.name),
            metrics,
            fatal,
            failure_log: LogLimiter::default(),
        }
    }

    /// Handles frames until the decoder closes the queue or the tenant must stop. Frames arrive and
    /// leave in batches, one queue handoff per batch.
    pub fn run(
        mut self,
        mut batches: mpsc::Receiver<Vec<Arc<FrameBatch>>>,
        deliveries: mpsc::Sender<Vec<FrameDeliveries>>,
        spent: SpentFrames,
    ) {
        while let Some(frames) = batches.blocking_recv() {
            self.tenant_metrics.queue_depth.set(batches.len() as i64);
            let handled = self.handle_handoff(frames, &deliveries, &spent);
            self.flush_metrics();
            if let Flow::Stop = handled {
                return;
            }
        }
    }

    /// Handles the frames of one handoff, gives them back to be freed, and sends their reports to
    /// the delivery checker. Returns `Flow::Stop` when the tenant must stop or the checker is gone.
    fn handle_handoff(
        &mut self,
        frames: Vec<Arc<FrameBatch>>,
        deliveries: &mpsc::Sender<Vec<FrameDeliveries>>,
        spent: &SpentFrames,
    ) -> Flow {
        let (passes, selected) = self.select(&frames);
        let mut lookahead = Lookahead::Single { end: 0 };
        let mut index = 0;
        let mut position = 0;
        let mut reports = Vec::with_capacity(frames.len());
        for batch in &frames {
            let mut frame = FrameDeliveries {
                seq: batch.seq,
                did: batch.did.clone(),
                received_at_us: batch.received_at_us,
                ack: None,
            };
            for _ in &batch.events {
                let flow = if passes[index] {
                    position += 1;
                    self.handle(&selected, position - 1, &mut lookahead, &mut frame)
                } else {
                    self.tenant_metrics.filtered.inc();
                    Flow::Continue
                };
                index += 1;
                if let Flow::Stop = flow {
                    // The frames before this one are complete and may still be reported.
                    let _ = deliveries.blocking_send(reports);
                    return Flow::Stop;
                }
            }
            reports.push(frame);
        }
        spent.give_back(frames);
        match deliveries.blocking_send(reports) {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }

    /// Publishes what this tenant counted during a handoff, and its formatter's state.
    fn flush_metrics(&self) {
        let metrics = &self.tenant_metrics;
        metrics.flush();
        metrics.quarantined.set(i64::from(self.quarantine.is_quarantined()));
        metrics.memory_bytes.set(self.formatter.peak_memory_bytes() as i64);
        metrics.recycles.set(self.formatter.recycles() as i64);
        metrics.deadline_retries.set(self.formatter.deadline_retries() as i64);
        metrics.batch_fallbacks.set(self.formatter.batch_fallbacks() as i64);
    }

    /// Applies the filter to every event of a handoff. Returns whether each event passes, in
    /// handoff order, and the events that pass.
    fn select<'a>(&self, frames: &'a [Arc<FrameBatch>]) -> (Vec<bool>, Vec<BatchEvent<'a>>) {
        let events = frames.iter().map(|batch| batch.events.len()).sum();
        let mut passes = Vec::with_capacity(events);
        let mut selected = Vec::with_capacity(events);
        for batch in frames {
            for (event, event_id) in &batch.events {
                let matches = self.filter.matches(event);
                passes.push(matches);
                if matches {
                    selected.push(BatchEvent { event, event_id: *event_id, received_at_us: batch.received_at_us });
                }
            }
        }
        (passes, selected)
    }

    /// Formats the event at `position` of `selected`, an event that passed the filter, and
    /// hands its messages to Kafka or applies the error policy.
    fn handle(
        &mut self,
        selected: &[BatchEvent<'_>],
        position: usize,
        lookahead: &mut Lookahead,
        frame: &mut FrameDeliveries,
    ) -> Flow {
        let event = selected[position].event;
        self.tenant_metrics.events.inc();

        // The clock is read only during a quarantine: a read for every event took about 2 % of
        // the tenant thread's CPU in an end-to-end profile.
        if self.quarantine.is_quarantined() && !self.quarantine.allows_call(Instant::now()) {
            return self.fail(event, frame, "quarantined", "the tenant is quarantined after repeated failures");
        }
        let (result, seconds) = self.format_at(selected, position, lookahead);
        self.tenant_metrics.call_seconds.observe(seconds);

        match result {
            Ok(messages) => {
                self.quarantine.record_success();
                let count = messages.len();
                for message in messages {
                    match self.send(event, &message, frame) {
                        Ok(()) => {}
                        Err(SendError::TooLarge(error)) => return self.fail(event, frame, "output", &error),
                        Err(SendError::Fatal) => return Flow::Stop,
                    }
                }
                self.tenant_metrics.messages.inc_by(count as u64);
                Flow::Continue
            }
            Err(error) => self.fail(event, frame, error.kind(), &error.to_string()),
        }
    }

    /// Returns the formatter's result for the event at `position` and the formatter time charged
    /// to it, in seconds. The result comes from the lookahead's batch call when that covers the
    /// event. Otherwise a new batch call starts at this event, or a `format` call formats it.
    fn format_at(
        &mut self,
        selected: &[BatchEvent<'_>],
        position: usize,
        lookahead: &mut Lookahead,
    ) -> (Result<Messages, FormatError>, f64) {
        if !lookahead.covers(position) {
            *lookahead = self.format_ahead(selected, position);
        }
        match lookahead {
            Lookahead::Batch { start, results, seconds_per_event } => {
                let result = results[position - *start].take().expect("each result of a batch is used once");
                (result, *seconds_per_event)
            }
            Lookahead::Single { .. } => {
                let event = &selected[position];
                let started = Instant::now();
                let result = self.formatter.format(event.event, event.event_id, event.received_at_us);
                (result, started.elapsed().as_secs_f64())
            }
        }
    }

    /// Formats the events from `position` on in one batch call of at most the formatter's batch
    /// limit.
    fn format_ahead(&mut self, selected: &[BatchEvent<'_>], position: usize) -> Lookahead {
        let end = selected.len().min(position + self.formatter.batch_limit());
        let started = Instant::now();
        match self.formatter.try_format_batch(&selected[position..end]) {
            Some(results) => Lookahead::Batch {
                start: position,
                seconds_per_event: started.elapsed().as_secs_f64() / results.len() as f64,
                results: results.into_iter().map(Some).collect(),
            },
            None => Lookahead::Single { end },
        }
    }

    fn send(&self, event: &Event, message: &Message, frame: &mut FrameDeliveries) -> Result<(), SendError> {
        let topic = message.topic.as_deref().unwrap_or(&self.topic);
        let key = message.key.as_deref().unwrap_or(event.default_key().as_bytes());
        match self.producer.send(topic, key, &message.value, &message.headers, frame.ack()) {
            Ok(()) => Ok(()),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => Err(SendError::TooLarge(format!(
                "a message of {} bytes for topic `{topic}` is larger than the producer's message.max.bytes",
                message.value.len() + key.len()
            ))),
            Err(error) => {
                self.metrics.produced_events.with_label_values(&["failed"]).inc();
                let _ = self.fatal.send(Fatal::MessageRefused {
                    topic: topic.to_string(),
                    did: event.did().unwrap_or_default().to_owned(),
                    seq: event.seq(),
                    bytes: message.value.len(),
                    error: error.to_string(),
                });
                Err(SendError::Fatal)
            }
        }
    }

    /// Applies the error policy to an event the formatter did not format.
    fn fail(&mut self, event: &Event, frame: &mut FrameDeliveries, kind: &str, error: &str) -> Flow {
        let tenant = self.name.clone();
        self.metrics.formatter_errors.with_label_values(&[&tenant, kind]).inc();
        if kind != "quarantined" && self.quarantine.record_failure(Instant::now()) {
            tracing::error!(tenant, %error, "tenant quarantined after repeated formatter failures");
        }
        if let Some(suppressed) = self.failure_log.allow() {
            tracing::warn!(
                tenant,
                kind,
                did = event.did().unwrap_or(""),
                seq = ?event.seq(),
                %error,
                suppressed,
                "formatter failed on an event"
            );
        }

        match &self.on_error {
            ErrorPolicy::Skip => {
                self.metrics.skipped.with_label_values(&[SkipReason::FormatterFailed.label()]).inc();
                Flow::Continue
            }
            ErrorPolicy::DeadLetter { topic } => {
                let message = dead_letter(&tenant, event, kind, error);
                let message = Message { topic: Some(topic.clone()), ..message };
                self.metrics.tenant_dead_lettered.with_label_values(&[&tenant]).inc();
                match self.send(event, &message, frame) {
                    Ok(()) => Flow::Continue,
                    Err(SendError::TooLarge(error)) => {
                        // The dead letter itself cannot be produced: losing it silently is not an
                        // option, so the host stops with the cursor before this event.
                        let _ = self.fatal.send(Fatal::TenantHalted {
                            tenant,
                            did: event.did().unwrap_or_default().to_owned(),
                            seq: event.seq(),
                            error: format!("the dead letter could not be produced: {error}"),
                        });
                        Flow::Stop
                    }
                    Err(SendError::Fatal) => Flow::Stop,
                }
            }
            ErrorPolicy::Halt => {
                let _ = self.fatal.send(Fatal::TenantHalted {
                    tenant,
                    did: event.did().unwrap_or_default().to_owned(),
                    seq: event.seq(),
                    error: error.to_owned(),
                });
                Flow::Stop
            }
        }
    }
}

/// Builds the dead-letter message of an event: the event in the standard shape, with headers naming the
/// tenant, the error kind and message, the DID and the seq.
fn dead_letter(tenant: &str, event: &Event, kind: &str, error: &str) -> Message {
    let mut value = Vec::with_capacity(512);
    crate::standard_shape::write_standard(&mut value, event);
    let seq = event.seq().map(|seq| seq.to_string()).unwrap_or_default();
    Message {
        value: value.into(),
        key: None,
        headers: vec![
            ("atkafka-tenant".to_owned(), tenant.as_bytes().to_vec()),
            ("atkafka-error-kind".to_owned(), kind.as_bytes().to_vec()),
            ("atkafka-error".to_owned(), error.as_bytes().to_vec()),
            ("atkafka-did".to_owned(), event.did().unwrap_or_default().as_bytes().to_vec()),
            ("atkafka-seq".to_owned(), seq.into_bytes()),
        ],
        topic: None,
    }
}
