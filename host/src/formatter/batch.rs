//! Formatting several events in one guest call, through the `format-packed` export of the
//! `packed-formatter` world or the `format-batch` export of the `batch-formatter` world.
//!
//! Guarantees: a batch call returns one result per event, in order, and an event's result is
//! what a `format` call would return for it: a guest error or an output limit fails that event
//! only. A batch call can also fail as a whole, because it trapped, ran past its deadline, hit
//! the memory cap or returned a wrong number of results. Such a failure is charged to no event.
//! The instance is dropped and the events are formatted again one at a time through `format`,
//! with its deadline retry, so that only an event that fails on its own fails.
//!
//! A batch call that fails as a whole halves the batch size, so that a formatter that keeps
//! failing soon gets single calls only and stops paying for failed batch calls. Each call that
//! returns grows the size by one event again, up to what fits a quarter of the deadline.
//!
//! NOTE: the messages of every event of a batch call are in the guest's memory at once. A
//! formatter whose messages for a full batch exceed its memory cap fails batch calls until the
//! batch size is small enough, and again each time the size has grown back too far.

use std::time::{Duration, Instant};

use atkafka_shape::packed::{self, LayoutError, ResultReader};
use bytes::Bytes;

use super::bindings::atkafka::formatter::types as wit;
use super::convert::{from_packed, from_wit, to_wit};
use super::instance::{check_message_bytes, check_message_count, check_output, Bindings, FormatError, Formatter, FormatterLimits, Messages};
use crate::firehose::event::Event;
use crate::standard_shape::view;

/// The maximum number of events in one `format-batch` call, as the WIT contract promises guests.
pub const MAX_BATCH_EVENTS: usize = 128;

/// The divisor of the call deadline that gives the time a batch call is sized to take, so that a
/// batch of events that each take their usual time stays well under the deadline.
const BATCH_DEADLINE_DIVISOR: u32 = 4;

/// The largest `format-packed` event buffer a formatter keeps for its next call, in bytes.
const MAX_KEPT_PACKED_BYTES: usize = 4 << 20;

/// The reply of a batch call, by the export it went through.
enum Reply {
    Packed(wasmtime::Result<Vec<u8>>),
    Typed(wasmtime::Result<Vec<Result<Vec<wit::Message>, String>>>),
}

/// One event of a batch, with the facts the host computed for it.
#[derive(Clone, Copy, Debug)]
pub struct BatchEvent<'a> {
    pub event: &'a Event,
    pub event_id: u64,
    pub received_at_us: u64,
}

/// The number of events per batch call. It halves after a batch call that failed as a whole and
/// grows by one event after each call that returned. It never exceeds what fits the budget at the
/// time events took, so a slow formatter gets smaller batches, not batch calls past the deadline.
#[derive(Debug)]
pub(super) struct BatchSizer {
    /// The time one batch call is sized to take.
    budget: Duration,
    /// The number of events the next batch call may receive, from 1 to [`MAX_BATCH_EVENTS`].
    limit: usize,
}

impl BatchSizer {
    pub(super) fn new(timeout: Duration) -> Self {
        BatchSizer { budget: timeout / BATCH_DEADLINE_DIVISOR, limit: MAX_BATCH_EVENTS }
    }

    /// Sizes the next batches after a call that formatted `events` events in `elapsed`: one event
    /// more than before, but no more than fit in the budget at that time per event.
    pub(super) fn record_success(&mut self, events: usize, elapsed: Duration) {
        let per_event = elapsed.as_nanos() / events.max(1) as u128;
        let fitting = self.budget.as_nanos() / per_event.max(1);
        let grown = self.limit as u128 + 1;
        self.limit = fitting.min(grown).clamp(1, MAX_BATCH_EVENTS as u128) as usize;
    }

    /// Reports whether batches are smaller than [`MAX_BATCH_EVENTS`].
    pub(super) fn is_reduced(&self) -> bool {
        self.limit < MAX_BATCH_EVENTS
    }

    /// Halves the batch size after a batch call of `events` events failed as a whole.
    pub(super) fn record_failure(&mut self, events: usize) {
        self.limit = (events / 2).max(1);
    }
}

impl Formatter {
    /// Returns the number of events the next batch call may receive: 1 when the component has no
    /// `format-batch`, else at most [`MAX_BATCH_EVENTS`], fewer after slow events or failed
    /// batch calls.
    pub fn batch_limit(&self) -> usize {
        self.batch_sizer.as_ref().map_or(1, |sizer| sizer.limit)
    }

    /// Formats events in batch calls of at most [`Formatter::batch_limit`] events, and returns
    /// one result per event, in order. The events of a batch call that failed as a whole, and
    /// every event of a component without `format-batch`, are formatted one at a time.
    pub fn format_batch(&mut self, events: &[BatchEvent<'_>]) -> Vec<Result<Messages, FormatError>> {
        let mut results = Vec::with_capacity(events.len());
        let mut rest = events;
        while !rest.is_empty() {
            let (call, tail) = rest.split_at(self.batch_limit().min(rest.len()));
            match self.try_format_batch(call) {
                Some(batch_results) => results.extend(batch_results),
                None => {
                    for event in call {
                        results.push(self.format(event.event, event.event_id, event.received_at_us));
                    }
                }
            }
            rest = tail;
        }
        results
    }

    /// Formats `events` in one batch call (`format-packed` when the component has it, else
    /// `format-batch`) and returns one result per event, in order.
    ///
    /// Returns `None` when the caller must format the events one at a time with
    /// [`Formatter::format`]. That happens without a guest call when the component has no batch
    /// export or there are fewer than two events. It also happens after a call that trapped, ran
    /// past its deadline, hit the memory cap, returned a wrong number of results or returned a
    /// packed reply that does not follow the layout. Then the instance is dropped.
    ///
    /// # Panics
    ///
    /// When `events` has more than [`MAX_BATCH_EVENTS`] events.
    pub fn try_format_batch(&mut self, events: &[BatchEvent<'_>]) -> Option<Vec<Result<Messages, FormatError>>> {
        assert!(events.len() <= MAX_BATCH_EVENTS, "a batch call takes at most {MAX_BATCH_EVENTS} events");
        if self.batch_sizer.is_none() || events.len() < 2 {
            return None;
        }
        let started = Instant::now();
        let results = match self.call_batch(events) {
            Ok(results) => results,
            Err(error) => return self.fall_back(events.len(), &error),
        };
        if let Some(sizer) = &mut self.batch_sizer {
            sizer.record_success(events.len(), started.elapsed());
        }
        Some(results)
    }

    /// Makes one batch call through the component's batch export and checks each event's
    /// messages against the output limits. An error means the call failed as a whole, and the
    /// instance was dropped.
    fn call_batch(&mut self, events: &[BatchEvent<'_>]) -> Result<Vec<Result<Messages, FormatError>>, FormatError> {
        let limits = self.limits;
        let mut packed_events = std::mem::take(&mut self.packed_events);
        let live = self.prepare_call()?;
        let reply = match &live.bindings {
            Bindings::Packed(bindings) => {
                packed::begin_events(&mut packed_events, events.len());
                for event in events {
                    packed::put_event(&mut packed_events, &view(event.event), event.event_id, event.received_at_us);
                }
                Reply::Packed(bindings.atkafka_formatter_packed().call_format_packed(&mut live.store, &packed_events))
            }
            Bindings::Batch(bindings) => {
                let arguments: Vec<(wit::Event<'_>, wit::Context)> = events
                    .iter()
                    .map(|event| {
                        let context = wit::Context { event_id: event.event_id, received_at_us: event.received_at_us };
                        (to_wit(event.event), context)
                    })
                    .collect();
                Reply::Typed(bindings.atkafka_formatter_batch().call_format_batch(&mut live.store, &arguments))
            }
            Bindings::Single(_) => unreachable!("a component with a batch sizer is linked as a batch formatter"),
        };
        // A buffer grown by one batch of huge records is not kept for the life of the formatter.
        if packed_events.capacity() <= MAX_KEPT_PACKED_BYTES {
            self.packed_events = packed_events;
        }

        let results: Vec<Result<Messages, FormatError>> = match reply {
            Reply::Packed(reply) => {
                let reply = Bytes::from(self.finish_call(reply, events.len() as u64)?);
                read_packed_results(&reply, &limits).map_err(|error| {
                    self.live = None;
                    FormatError::Trap(format!("format-packed returned a {error}"))
                })?
            }
            Reply::Typed(reply) => {
                let results = self.finish_call(reply, events.len() as u64)?;
                results
                    .into_iter()
                    .map(|result| {
                        let messages = result.map_err(FormatError::Guest)?;
                        check_output(messages.len(), messages.iter().map(|message| message.value.len()), &limits)?;
                        Ok(messages.into_iter().map(from_wit).collect())
                    })
                    .collect()
            }
        };
        if results.len() != events.len() {
            self.live = None;
            return Err(FormatError::Trap(format!("the batch call returned {} results for {} events", results.len(), events.len())));
        }
        Ok(results)
    }

    /// Counts and logs a batch call that failed as a whole, and halves the batch size. Returns
    /// `None`, so that the caller formats its events one at a time.
    fn fall_back(&mut self, events: usize, error: &FormatError) -> Option<Vec<Result<Messages, FormatError>>> {
        self.batch_fallbacks += 1;
        if let Some(sizer) = &mut self.batch_sizer {
            sizer.record_failure(events);
        }
        if let Some(suppressed) = self.failure_log.allow() {
            tracing::warn!(
                formatter = self.name(),
                events,
                %error,
                suppressed,
                "a batch call failed; formatting its events one at a time"
            );
        }
        None
    }
}

/// Reads a `format-packed` reply into one result per event, checking each event's messages
/// against the output limits as it goes. Each message's value stays in the reply's buffer.
fn read_packed_results(reply: &Bytes, limits: &FormatterLimits) -> Result<Vec<Result<Messages, FormatError>>, LayoutError> {
    let mut reader = ResultReader::new(reply)?;
    let mut results = Vec::with_capacity(reader.len());
    while let Some(result) = reader.next_result()? {
        let count = match result {
            Ok(count) => count,
            Err(error) => {
                results.push(Err(FormatError::Guest(error.to_owned())));
                continue;
            }
        };
        // The result is filled in place. Built aside and then pushed, it was copied through the
        // stack, the hot spot of this function in a profile.
        results.push(check_message_count(count, limits).map(|()| Messages::with_capacity(count)));
        let entry = results.last_mut().expect("a result was just pushed");
        // Messages past a limit are still read, so that the reader stays on the layout.
        for _ in 0..count {
            let message = reader.next_message()?;
            if let Ok(messages) = entry {
                match check_message_bytes(message.value.len(), limits) {
                    Ok(()) => messages.push(from_packed(message, reply)),
                    Err(error) => *entry = Err(error),
                }
            }
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_past_limits_fails_only_its_events() {
        let mut writer = packed::ResultWriter::new(4, 0);
        writer.messages(3);
        for _ in 0..3 {
            writer.message(|out| out.extend_from_slice(b"{}"), None, &[], None);
        }
        writer.messages(2);
        writer.message(|out| out.extend_from_slice(b"0123456789"), None, &[], None);
        writer.message(|out| out.extend_from_slice(b"{}"), None, &[], None);
        writer.error("rejected");
        writer.messages(1);
        writer.message(|out| out.extend_from_slice(b"fits"), Some(b"key"), &[("h", b"v")], Some("other"));
        let reply = Bytes::from(writer.finish());
        let limits = FormatterLimits { max_messages_per_event: 2, max_message_bytes: 5, ..FormatterLimits::default() };

        let results = read_packed_results(&reply, &limits).expect("the reply follows the layout");
        assert_eq!(results.len(), 4);
        let Err(FormatError::OutputLimit(too_many)) = &results[0] else { panic!("expected an output limit: {:?}", results[0]) };
        assert!(too_many.contains("3 messages"), "{too_many}");
        let Err(FormatError::OutputLimit(too_long)) = &results[1] else { panic!("expected an output limit: {:?}", results[1]) };
        assert!(too_long.contains("10 bytes"), "{too_long}");
        let Err(FormatError::Guest(error)) = &results[2] else { panic!("expected the guest's error: {:?}", results[2]) };
        assert_eq!(error, "rejected");

        let messages = results[3].as_ref().expect("the last event's message fits the limits");
        assert_eq!(messages.len(), 1);
        assert_eq!(&messages[0].value[..], b"fits");
        assert_eq!(messages[0].key.as_deref(), Some(&b"key"[..]));
        assert_eq!(messages[0].headers, vec![("h".to_owned(), b"v".to_vec())]);
        assert_eq!(messages[0].topic.as_deref(), Some("other"));
    }

    #[test]
    fn sizer_targets_a_quarter_of_the_deadline() {
        let mut sizer = BatchSizer::new(Duration::from_millis(100));
        sizer.record_success(10, Duration::from_millis(10));
        assert_eq!(sizer.limit, 25);
    }

    #[test]
    fn sizer_caps_fast_batches() {
        let mut sizer = BatchSizer::new(Duration::from_millis(100));
        sizer.record_success(128, Duration::from_micros(300));
        assert_eq!(sizer.limit, MAX_BATCH_EVENTS);
    }

    #[test]
    fn sizer_halves_after_a_failed_call() {
        let mut sizer = BatchSizer::new(Duration::from_millis(100));
        sizer.record_failure(64);
        assert_eq!(sizer.limit, 32);
        sizer.record_failure(1);
        assert_eq!(sizer.limit, 1);
    }

    #[test]
    fn sizer_grows_one_event_a_call() {
        let mut sizer = BatchSizer::new(Duration::from_millis(100));
        sizer.record_failure(64);
        sizer.record_success(32, Duration::from_micros(100));
        assert_eq!(sizer.limit, 33);
        sizer.record_success(1, Duration::from_micros(3));
        assert_eq!(sizer.limit, 34);
    }

    #[test]
    fn sizer_allows_one_slow_event() {
        let mut sizer = BatchSizer::new(Duration::from_millis(100));
        sizer.record_success(1, Duration::from_millis(80));
        assert_eq!(sizer.limit, 1);
    }
}
