//! One formatter: a compiled component, its options and limits, and the live instance that
//! formats events.
//!
//! Guarantees: each `Formatter` owns its store, so its memory, faults and slowness are its own.
//! A call that traps, runs past its deadline or hits the memory cap fails that event only; the
//! instance is dropped and a fresh one is built (and configured) for the next event. A batch call
//! that fails is charged to none of its events, which are formatted again one at a time (see the
//! `batch` module).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use smallvec::SmallVec;
use wasmtime::component::Component;
use wasmtime::Store;

use super::batch::BatchSizer;
use super::batch_bindings::{BatchFormatter as BatchFormatterBindings, BatchFormatterPre};
use super::bindings::atkafka::formatter::types as wit;
use super::bindings::{Formatter as FormatterBindings, FormatterPre};
use super::packed_bindings::{PackedFormatter as PackedFormatterBindings, PackedFormatterPre};
use super::builtin::FormatterSource;
use super::convert::{from_wit, to_wit};
use super::engine::{deadline_ticks, FormatterEngine, GuestState};
use super::limits::GuestLimiter;
use crate::firehose::event::Event;
use crate::ratelimit::LogLimiter;

/// Limits applied to every call of one formatter.
#[derive(Clone, Copy, Debug)]
pub struct FormatterLimits {
    /// CPU time a single call may take before it is interrupted.
    pub timeout: Duration,
    /// Linear memory the instance may grow to, in bytes.
    pub max_memory_bytes: usize,
    /// Bytes of stdout and of stderr kept per call for the log.
    pub output_cap_bytes: usize,
    /// Messages one call may return.
    pub max_messages_per_event: usize,
    /// Bytes one message value may have.
    pub max_message_bytes: usize,
    /// Replace the instance after it formatted this many events (a batch call counts each of its
    /// events); 0 never does.
    pub recycle_after_calls: u64,
    /// Replace the instance after a call that left its memory above this share of
    /// `max_memory_bytes`, in percent, so that a guest that leaks is renewed before it fails.
    pub recycle_memory_percent: u8,
}

impl Default for FormatterLimits {
    fn default() -> Self {
        FormatterLimits {
            timeout: Duration::from_millis(100),
            max_memory_bytes: 128 << 20,
            output_cap_bytes: 4096,
            max_messages_per_event: 100,
            max_message_bytes: 1 << 20,
            recycle_after_calls: 0,
            recycle_memory_percent: 75,
        }
    }
}

/// A message returned by a formatter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The value. Messages of one batch call share the call's reply buffer instead of each
    /// copying its value out of it.
    pub value: Bytes,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub topic: Option<String>,
}

/// The messages a formatter returned for one event. Most formatters return one message an event,
/// which this keeps without an allocation of its own.
pub type Messages = SmallVec<[Message; 1]>;

/// The reason a formatter produced nothing for an event.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("formatter returned an error: {0}")]
    Guest(String),
    #[error("formatter trapped: {0}")]
    Trap(String),
    #[error("formatter ran past its deadline of {0:?}")]
    Deadline(Duration),
    #[error("formatter exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),
    #[error("formatter output exceeds its limit: {0}")]
    OutputLimit(String),
}

impl FormatError {
    /// Returns the kind as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            FormatError::Guest(_) => "error",
            FormatError::Trap(_) => "trap",
            FormatError::Deadline(_) => "deadline",
            FormatError::MemoryLimit(_) => "memory",
            FormatError::OutputLimit(_) => "output",
        }
    }

    pub const KINDS: [&'static str; 5] = ["error", "trap", "deadline", "memory", "output"];
}

/// The linked component, by the world it exports.
enum Pre {
    Single(FormatterPre<GuestState>),
    Batch(BatchFormatterPre<GuestState>),
    Packed(PackedFormatterPre<GuestState>),
}

/// The exports of a live instance.
pub(super) enum Bindings {
    Single(FormatterBindings),
    Batch(BatchFormatterBindings),
    Packed(PackedFormatterBindings),
}

pub(super) struct Live {
    pub store: Store<GuestState>,
    pub bindings: Bindings,
    /// Events this instance formatted.
    events: u64,
}

pub struct Formatter {
    name: String,
    engine: FormatterEngine,
    pre: Pre,
    options: Vec<(String, String)>,
    pub(super) limits: FormatterLimits,
    pub(super) live: Option<Live>,
    output_log: LogLimiter,
    pub(super) failure_log: LogLimiter,
    /// The number of events per batch call, or `None` when the component has neither
    /// `format-batch` nor `format-packed`.
    pub(super) batch_sizer: Option<BatchSizer>,
    /// The buffer `format-packed` calls encode their events into, kept between calls.
    pub(super) packed_events: Vec<u8>,
    peak_memory_bytes: usize,
    recycles: u64,
    deadline_retries: u64,
    pub(super) batch_fallbacks: u64,
}

impl Formatter {
    /// Compiles and links the component, then builds and configures a first instance, so that a
    /// component that cannot load or rejects its options fails here, at start-up.
    pub fn new(
        engine: &FormatterEngine,
        source: &FormatterSource,
        options: Vec<(String, String)>,
        limits: FormatterLimits,
    ) -> anyhow::Result<Self> {
        let name = source.name();
        let bytes = source.load().map_err(anyhow::Error::msg)?;
        let component: Component =
            engine.compile(&bytes).with_context(|| format!("formatter `{name}` is not a valid component"))?;
        let instance_pre = engine
            .linker()
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("formatter `{name}` imports something the host does not provide"))?;
        let pre = link_exports(&name, &component, instance_pre)?;
        let batch_sizer = match pre {
            Pre::Batch(_) | Pre::Packed(_) => Some(BatchSizer::new(limits.timeout)),
            Pre::Single(_) => None,
        };

        let mut formatter = Formatter {
            name,
            engine: engine.clone(),
            pre,
            options,
            limits,
            live: None,
            output_log: LogLimiter::default(),
            failure_log: LogLimiter::default(),
            batch_sizer,
            packed_events: Vec::new(),
            peak_memory_bytes: 0,
            recycles: 0,
            deadline_retries: 0,
            batch_fallbacks: 0,
        };
        formatter.instantiate().map_err(|error| anyhow::anyhow!("formatter `{}`: {error}", formatter.name))?;
        Ok(formatter)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the name of the export that formats events in batches (`format-packed` or
    /// `format-batch`), or `format` for a component that formats one event a call.
    pub fn batch_export(&self) -> &'static str {
        match self.pre {
            Pre::Single(_) => "format",
            Pre::Batch(_) => "format-batch",
            Pre::Packed(_) => "format-packed",
        }
    }

    /// Builds a fresh instance and calls its `configure`.
    fn instantiate(&mut self) -> Result<(), FormatError> {
        let ticks = deadline_ticks(self.limits.timeout);
        let limiter = GuestLimiter::new(self.limits.max_memory_bytes);
        let mut store = self.engine.new_store(limiter, self.limits.output_cap_bytes, ticks);
        let instantiated = match &self.pre {
            Pre::Single(pre) => pre.instantiate(&mut store).map(Bindings::Single),
            Pre::Batch(pre) => pre.instantiate(&mut store).map(Bindings::Batch),
            Pre::Packed(pre) => pre.instantiate(&mut store).map(Bindings::Packed),
        };
        let bindings = match instantiated {
            Ok(bindings) => bindings,
            Err(error) => return Err(self.classify(&mut store, error)),
        };
        store.set_epoch_deadline(ticks);
        let options: Vec<(&str, &str)> = self.options.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
        let configured = match &bindings {
            Bindings::Single(bindings) => bindings.call_configure(&mut store, &options),
            Bindings::Batch(bindings) => bindings.call_configure(&mut store, &options),
            Bindings::Packed(bindings) => bindings.call_configure(&mut store, &options),
        };
        log_guest_output(&mut self.output_log, &self.name, store.data());
        match configured {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(FormatError::Guest(format!("invalid options: {message}"))),
            Err(error) => return Err(self.classify(&mut store, error)),
        }
        self.live = Some(Live { store, bindings, events: 0 });
        Ok(())
    }

    /// Formats one event. On any failure the instance is dropped and rebuilt on the next call. A
    /// call that runs past its deadline is tried once more on a fresh instance, so that a pause
    /// of the guest's own (a garbage collection, say) is distinguished from a runaway guest.
    pub fn format(&mut self, event: &Event, event_id: u64, received_at_us: u64) -> Result<Messages, FormatError> {
        let wit_event = to_wit(event);
        let context = wit::Context { event_id, received_at_us };
        match self.call_once(wit_event.clone(), context) {
            Err(FormatError::Deadline(_)) => {
                self.deadline_retries += 1;
                self.call_once(wit_event, context)
            }
            result => result,
        }
    }

    fn call_once(&mut self, event: wit::Event<'_>, context: wit::Context) -> Result<Messages, FormatError> {
        // Single calls are timed only to let a reduced batch size grow again.
        let started = self.batch_sizer.as_ref().filter(|sizer| sizer.is_reduced()).map(|_| Instant::now());
        let live = self.prepare_call()?;
        let result = match &live.bindings {
            Bindings::Single(bindings) => bindings.call_format(&mut live.store, event, context),
            Bindings::Batch(bindings) => bindings.call_format(&mut live.store, event, context),
            Bindings::Packed(bindings) => bindings.call_format(&mut live.store, event, context),
        };
        let result = self.finish_call(result, 1)?;
        if let (Some(sizer), Some(started)) = (&mut self.batch_sizer, started) {
            sizer.record_success(1, started.elapsed());
        }
        let messages = result.map_err(FormatError::Guest)?;
        check_output(messages.len(), messages.iter().map(|message| message.value.len()), &self.limits)?;
        Ok(messages.into_iter().map(from_wit).collect())
    }

    /// Builds an instance when there is none and arms its deadline and memory record for one call.
    pub(super) fn prepare_call(&mut self) -> Result<&mut Live, FormatError> {
        if self.live.is_none() {
            self.instantiate()?;
        }
        let live = self.live.as_mut().expect("an instance was just built");
        live.store.set_epoch_deadline(deadline_ticks(self.limits.timeout));
        live.store.data_mut().limiter.memory_limit_hit = false;
        Ok(live)
    }

    /// Ends a call that formatted `events` events: logs the guest's output and records its
    /// memory. A call that failed drops the instance and returns the limit it hit or its trap. A
    /// call that returned replaces the instance when its memory or event count is due.
    pub(super) fn finish_call<T>(&mut self, result: wasmtime::Result<T>, events: u64) -> Result<T, FormatError> {
        let live = self.live.as_mut().expect("a call runs on a live instance");
        log_guest_output(&mut self.output_log, &self.name, live.store.data());
        let peak = live.store.data().limiter.peak_memory_bytes;
        self.peak_memory_bytes = self.peak_memory_bytes.max(peak);
        let returned = match result {
            Ok(returned) => returned,
            Err(error) => {
                let mut live = self.live.take().expect("the instance is still there");
                return Err(self.classify(&mut live.store, error));
            }
        };

        live.events += events;
        let memory_high = peak * 100 > self.limits.max_memory_bytes * usize::from(self.limits.recycle_memory_percent);
        let events_done = self.limits.recycle_after_calls > 0 && live.events >= self.limits.recycle_after_calls;
        if memory_high || events_done {
            // Between calls nothing is in flight, so a fresh instance neither loses nor repeats
            // an event.
            self.live = None;
            self.recycles += 1;
        }
        Ok(returned)
    }

    /// Names the limit a failed call hit, or the trap it raised.
    fn classify(&self, store: &mut Store<GuestState>, error: wasmtime::Error) -> FormatError {
        if store.data().limiter.memory_limit_hit {
            return FormatError::MemoryLimit(store.data().limiter.max_memory_bytes());
        }
        if let Some(wasmtime::Trap::Interrupt) = error.downcast_ref::<wasmtime::Trap>() {
            return FormatError::Deadline(self.limits.timeout);
        }
        // The root cause names the trap (for example "wasm `unreachable` instruction executed");
        // the guest's own panic message, if any, went to its stderr and the log.
        FormatError::Trap(error.root_cause().to_string().replace('\n', " "))
    }

    /// Returns the highest linear memory any instance reached, in bytes.
    pub fn peak_memory_bytes(&self) -> usize {
        self.peak_memory_bytes
    }

    /// Instances replaced because of their call count or memory.
    pub fn recycles(&self) -> u64 {
        self.recycles
    }

    /// Calls tried again on a fresh instance after running past their deadline.
    pub fn deadline_retries(&self) -> u64 {
        self.deadline_retries
    }

    /// Batch calls that failed as a whole, whose events were then formatted one at a time.
    pub fn batch_fallbacks(&self) -> u64 {
        self.batch_fallbacks
    }
}

/// Links the component's exports: the `packed-formatter` world when the component exports the
/// packed interface, else the `batch-formatter` world when it exports the batch interface, else
/// the `formatter` world.
fn link_exports(
    name: &str,
    component: &Component,
    instance_pre: wasmtime::component::InstancePre<GuestState>,
) -> anyhow::Result<Pre> {
    let packed_interface = "atkafka:formatter/packed@0.1.0";
    if component.get_export_index(None, packed_interface).is_some() {
        let pre = PackedFormatterPre::new(instance_pre).map_err(anyhow::Error::from).with_context(|| {
            format!("formatter `{name}` exports {packed_interface} but does not match the atkafka:formatter packed-formatter world")
        })?;
        return Ok(Pre::Packed(pre));
    }
    let batch_interface = "atkafka:formatter/batch@0.1.0";
    if component.get_export_index(None, batch_interface).is_none() {
        let pre = FormatterPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("formatter `{name}` does not export the atkafka:formatter world"))?;
        return Ok(Pre::Single(pre));
    }
    let pre = BatchFormatterPre::new(instance_pre).map_err(anyhow::Error::from).with_context(|| {
        format!("formatter `{name}` exports {batch_interface} but does not match the atkafka:formatter batch-formatter world")
    })?;
    Ok(Pre::Batch(pre))
}

/// Logs what the guest wrote to stdout and stderr during the last call, rate-limited.
fn log_guest_output(limiter: &mut LogLimiter, formatter: &str, state: &GuestState) {
    for (stream, output) in [("stdout", &state.stdout), ("stderr", &state.stderr)] {
        let Some((text, dropped)) = output.take() else { continue };
        if let Some(suppressed) = limiter.allow() {
            tracing::info!(formatter, stream, dropped_bytes = dropped, suppressed, "guest output: {text}");
        }
    }
}

/// Checks the messages of one event, given as their number and the lengths of their values,
/// against the output limits.
pub(super) fn check_output(
    count: usize,
    mut value_lengths: impl Iterator<Item = usize>,
    limits: &FormatterLimits,
) -> Result<(), FormatError> {
    check_message_count(count, limits)?;
    value_lengths.try_for_each(|length| check_message_bytes(length, limits))
}

/// Checks the number of messages of one event against the output limits.
pub(super) fn check_message_count(count: usize, limits: &FormatterLimits) -> Result<(), FormatError> {
    if count > limits.max_messages_per_event {
        return Err(FormatError::OutputLimit(format!(
            "{count} messages for one event, the limit is {}",
            limits.max_messages_per_event
        )));
    }
    Ok(())
}

/// Checks the length of one message's value against the output limits.
pub(super) fn check_message_bytes(length: usize, limits: &FormatterLimits) -> Result<(), FormatError> {
    if length > limits.max_message_bytes {
        return Err(FormatError::OutputLimit(format!(
            "a message of {length} bytes, the limit is {}",
            limits.max_message_bytes
        )));
    }
    Ok(())
}
