//! The rdkafka producer and the send step.
//!
//! Guarantees: the producer is idempotent (no duplicates or reordering from librdkafka's own
//! retries), and a full local queue makes the sender wait rather than fail, so events of one DID
//! are handed to librdkafka in order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use tokio::sync::Notify;

use super::topic_handle::TopicHandle;

/// How long the sender sleeps when librdkafka's local queue is full before trying again. At full
/// speed the 2 MiB queue is about 12 ms of messages (an estimate), and a 5 ms sleep let it run
/// low. In alternating end-to-end runs, 1 ms instead of 5 ms raised the rate from 278 000 to
/// 292 000 frames/s (medians of 5 runs each).
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);

/// Builds the client configuration: the bootstrap servers, idempotence, no local message timeout,
/// and then the user's librdkafka properties, which may override anything but
/// `bootstrap.servers`.
///
/// `message.timeout.ms=0` makes librdkafka retry a message until the broker takes it, however
/// long the broker is away, keeping the order of each partition. The full local queue then makes
/// the host wait. A user who sets a finite timeout turns a long outage into a delivery failure,
/// which stops the host (see `delivery`). The local queue is capped at 2 MiB
/// (`queue.buffering.max.kbytes`; librdkafka's own default is 1 GiB), which bounds the host's
/// memory while the broker is slow. In the benchmark, RSS grew from 100 000 to 1 000 000 events
/// as the broker slowed and the queue filled: 13-28 % with 16 MiB, 5-18 % with 4 MiB and 2-6 %
/// with 2 MiB. Throughput was the same with 2 MiB as with 4 MiB, and lower with 1 MiB.
///
/// A message counts against that cap from when it is sent until its delivery report was handled,
/// so the cap divided by that time bounds the rate. With `linger.ms=20` instead of librdkafka's
/// 5 ms, the benchmark's end-to-end rate fell from about 330 000 to 140 000 frames/s. With
/// `linger.ms=1`, the host took more CPU a frame and the rate fell too.
pub fn client_config(bootstrap_servers: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("client.id", "atkafka-host")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "0")
        .set("queue.buffering.max.kbytes", "2048");
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

/// The delivery reports of one frame's messages. librdkafka's thread fills it in, and the
/// delivery checker reads it once every report has arrived.
#[derive(Default)]
pub struct FrameAck {
    /// Messages sent and not yet reported.
    pending: AtomicUsize,
    /// Messages sent in all.
    sent: AtomicUsize,
    failed: AtomicUsize,
    /// The topic and error of the first failed delivery.
    first_failure: Mutex<Option<(String, String)>>,
}

impl FrameAck {
    /// Returns whether every message sent so far has its delivery report.
    pub fn is_reported(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// Returns the number of messages sent and the number whose delivery failed.
    pub fn counts(&self) -> (usize, usize) {
        (self.sent.load(Ordering::Acquire), self.failed.load(Ordering::Acquire))
    }

    /// Returns the topic and error of the first failed delivery.
    pub fn first_failure(&self) -> Option<(String, String)> {
        self.first_failure.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records one delivery report, failed when `failure` is the topic and error. Wakes `reported`
    /// when it was the frame's last pending report.
    fn record_report(&self, failure: Option<(&str, String)>, reported: &Notify) {
        if let Some((topic, error)) = failure {
            self.failed.fetch_add(1, Ordering::AcqRel);
            let mut first = self.first_failure.lock().unwrap_or_else(PoisonError::into_inner);
            first.get_or_insert_with(|| (topic.to_owned(), error));
        }
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            reported.notify_one();
        }
    }
}

/// Delivery reports without librdkafka, for tests of what consumes them.
#[cfg(test)]
impl FrameAck {
    /// Returns the reports of a frame with `count` messages sent and none reported yet.
    pub(crate) fn with_pending(count: usize) -> Arc<Self> {
        let ack = FrameAck::default();
        ack.pending.store(count, Ordering::Release);
        ack.sent.store(count, Ordering::Release);
        Arc::new(ack)
    }

    /// Reports one message delivered, as librdkafka's thread does.
    pub(crate) fn report_delivered(&self, reported: &Notify) {
        self.record_report(None, reported);
    }
}

/// Receives librdkafka's delivery reports, on its polling thread.
struct DeliveryContext {
    /// Woken each time a frame's last pending report arrives.
    reported: Arc<Notify>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<FrameAck>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Arc<FrameAck>) {
        let failure = result.as_ref().err().map(|(error, message)| (message.topic(), error.to_string()));
        ack.record_report(failure, &self.reported);
    }
}

/// The producer. Each message carries its frame's [`FrameAck`], so a delivery report costs no
/// allocation and no future. rdkafka's `FutureProducer` allocates a channel for every message,
/// which the checker then awaits. With it, the host spent about 1 µs more CPU a frame in the
/// end-to-end benchmark (11.8 against 10.5 µs, medians of 3 runs each).
pub struct Producer {
    /// Handles of the topics named at creation, for messages without headers. Declared before
    /// `inner` so that they are dropped before the client.
    topics: Vec<(String, TopicHandle)>,
    inner: ThreadedProducer<DeliveryContext>,
    reported: Arc<Notify>,
}

impl Producer {
    /// Creates the producer, with topic handles for `topics`, the topics most messages go to.
    pub fn new(config: &ClientConfig, topics: &[String]) -> anyhow::Result<Self> {
        let reported = Arc::new(Notify::new());
        let context = DeliveryContext { reported: reported.clone() };
        let inner: ThreadedProducer<DeliveryContext> =
            config.create_with_context(context).context("failed to create the Kafka producer")?;
        let client = inner.client().native_ptr();
        let mut handles = Vec::with_capacity(topics.len());
        for topic in topics {
            // SAFETY: `client` is the live client of `inner`, which the struct drops after the handles.
            match unsafe { TopicHandle::new(client, topic) } {
                Some(handle) => handles.push((topic.clone(), handle)),
                None => tracing::warn!(%topic, "failed to create a librdkafka topic handle; messages to the topic go through rdkafka's send instead"),
            }
        }
        Ok(Producer { topics: handles, inner, reported })
    }

    /// Returns what wakes the delivery checker when a frame's last delivery report arrives.
    pub fn reported(&self) -> Arc<Notify> {
        self.reported.clone()
    }

    /// Hands one message to librdkafka, waiting while its local queue is full. Its delivery
    /// report goes to `ack`. Returns the error that made librdkafka refuse the message outright
    /// (an oversized message, an unknown topic...).
    pub fn send(
        &self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        headers: &[(String, Vec<u8>)],
        ack: &Arc<FrameAck>,
    ) -> Result<(), KafkaError> {
        let headers = if headers.is_empty() {
            None
        } else {
            let mut owned = OwnedHeaders::new_with_capacity(headers.len());
            for (key, value) in headers {
                owned = owned.insert(Header { key, value: Some(value) });
            }
            Some(owned)
        };
        // Messages with headers, or to a topic without a handle, go through rdkafka's own send.
        let handle = match headers {
            None => self.topics.iter().find(|(name, _)| name == topic).map(|(_, handle)| handle),
            Some(_) => None,
        };
        ack.pending.fetch_add(1, Ordering::AcqRel);
        loop {
            let sent = match handle {
                Some(handle) => {
                    // SAFETY: `Arc<FrameAck>` is the delivery opaque of this producer's context.
                    unsafe { handle.produce(key, value, ack.clone()) }.map_err(KafkaError::MessageProduction)
                }
                None => {
                    let mut record = BaseRecord::with_opaque_to(topic, ack.clone()).key(key).payload(value);
                    if let Some(headers) = headers.clone() {
                        record = record.headers(headers);
                    }
                    self.inner.send(record).map_err(|(error, _)| error)
                }
            };
            match sent {
                Ok(()) => {
                    ack.sent.fetch_add(1, Ordering::AcqRel);
                    return Ok(());
                }
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    std::thread::sleep(QUEUE_FULL_BACKOFF);
                }
                Err(error) => {
                    ack.pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(error);
                }
            }
        }
    }

    /// Fetches the metadata of `topic` (its partitions and their leaders), so that the first
    /// message to it need not wait for a metadata round trip. Blocks up to `timeout`.
    ///
    /// The metadata is fetched twice. librdkafka's idempotent producer requests its producer id
    /// when a metadata answer arrives while a broker connection is up, and otherwise only after
    /// 500 ms, which every first message then waits for. After one fetch, 4 of 6 start-ups
    /// measured against Tansu still waited those 500 ms; after a second fetch none did.
    pub fn warm_up(&self, topic: &str, timeout: Duration) -> Result<(), KafkaError> {
        let client = self.inner.client();
        client.fetch_metadata(Some(topic), timeout)?;
        client.fetch_metadata(Some(topic), timeout).map(|_| ())
    }

    /// Waits up to `timeout` for every queued message to be delivered or to fail.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Managed Kafka services want TLS with SASL, and zstd is the usual compression: librdkafka
    /// accepts those settings only when built with them.
    #[test]
    fn tls_sasl_and_zstd_settings_are_available() {
        let properties: Vec<(String, String)> = [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "user"),
            ("sasl.password", "secret"),
            ("compression.type", "zstd"),
        ]
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
        let config = client_config("127.0.0.1:1", &properties);
        if let Err(error) = config.create_native_config() {
            panic!("librdkafka rejected the settings: {error}");
        }
        let producer: Result<ThreadedProducer<DeliveryContext>, _> = config.create_with_context(DeliveryContext { reported: Arc::default() });
        assert!(producer.is_ok(), "a SCRAM producer over TLS could not be created: {:?}", producer.err());
    }
}
