//! The rdkafka producer and the send step.
//!
//! Guarantees: the producer is idempotent (no duplicates or reordering from librdkafka's own
//! retries), and a full local queue makes the sender wait rather than fail, so events of one DID
//! are handed to librdkafka in order.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

/// How long the sender sleeps when librdkafka's local queue is full before trying again.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Builds the client configuration: the bootstrap servers, idempotence, no local message timeout,
/// and then the user's librdkafka properties, which may override anything but
/// `bootstrap.servers`.
///
/// `message.timeout.ms=0` makes librdkafka retry a message until the broker takes it, however
/// long the broker is away, keeping the order of each partition. The full local queue then makes
/// the host wait. A user who sets a finite timeout turns a long outage into a delivery failure,
/// which stops the host (see `delivery`). The local queue is capped at 16 MiB
/// (`queue.buffering.max.kbytes`; librdkafka's own default is 1 GiB), which bounds the host's
/// memory while the broker is slow.
pub fn client_config(bootstrap_servers: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("client.id", "atkafka-host")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "0")
        .set("queue.buffering.max.kbytes", "16384");
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

pub struct Producer {
    inner: FutureProducer,
}

/// A message sent to librdkafka whose delivery report is still to come.
pub type PendingDelivery = DeliveryFuture;

impl Producer {
    pub fn new(config: &ClientConfig) -> anyhow::Result<Self> {
        let inner: FutureProducer = config.create().context("failed to create the Kafka producer")?;
        Ok(Producer { inner })
    }

    /// Hands one message to librdkafka, waiting while its local queue is full. Returns the
    /// pending delivery, or the error that made librdkafka refuse the message outright (an
    /// oversized message, an unknown topic...).
    pub fn send(
        &self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        headers: &[(String, Vec<u8>)],
    ) -> Result<PendingDelivery, KafkaError> {
        let headers = if headers.is_empty() {
            None
        } else {
            let mut owned = OwnedHeaders::new_with_capacity(headers.len());
            for (key, value) in headers {
                owned = owned.insert(Header { key, value: Some(value) });
            }
            Some(owned)
        };
        loop {
            let mut record = FutureRecord::to(topic).key(key).payload(value);
            if let Some(headers) = headers.clone() {
                record = record.headers(headers);
            }
            match self.inner.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(QUEUE_FULL_BACKOFF);
                }
                Err((error, _)) => return Err(error),
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
