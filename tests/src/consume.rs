//! Reading a topic from the beginning by assigning its partitions directly (a consumer-group join
//! is slow on Tansu and not what these tests are about).

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// One consumed message.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Reads `topic` from the beginning until `expected` messages arrived or `timeout` passed, then
/// keeps reading for `settle` to catch messages beyond the expected count.
pub fn consume(bootstrap: &str, topic: &str, expected: usize, timeout: Duration, settle: Duration) -> Vec<Record> {
    consume_until(bootstrap, topic, timeout, settle, |records| records.len() >= expected)
}

/// Reads `topic` from the beginning until `done` holds for the messages read or `timeout` passed,
/// then keeps reading for `settle`.
pub fn consume_until(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    settle: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "atkafka-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("create a consumer");
    let deadline = Instant::now() + timeout;
    // The topic may not exist yet: the process under test creates it.
    let mut assignment = TopicPartitionList::new();
    while assignment.count() == 0 {
        assert!(Instant::now() < deadline, "topic {topic} did not appear within {timeout:?}");
        if let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            for found in metadata.topics().iter().filter(|found| found.error().is_none()) {
                for partition in found.partitions() {
                    assignment.add_partition_offset(topic, partition.id(), Offset::Beginning).expect("add a partition");
                }
            }
        }
        if assignment.count() == 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    consumer.assign(&assignment).expect("assign partitions");

    let mut records = Vec::new();
    let mut settle_deadline = None;
    loop {
        let now = Instant::now();
        if settle_deadline.is_some_and(|until| now >= until) || (settle_deadline.is_none() && now >= deadline) {
            break;
        }
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            // `done` may be costly, so it runs when the consumer has caught up, not per message.
            if settle_deadline.is_none() && done(&records) {
                settle_deadline = Some(Instant::now() + settle);
            }
            continue;
        };
        let message = match result {
            Ok(message) => message,
            Err(error) => {
                // Transport errors are retried by librdkafka; the count check reports real loss.
                eprintln!("consuming {topic}: {error}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let headers = message
            .headers()
            .map(|headers| {
                headers.iter().map(|header| (header.key.to_owned(), header.value.unwrap_or_default().to_vec())).collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    records
}
