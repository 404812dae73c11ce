//! Creation of the output topic when it does not exist.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

/// Creates `topic` with `partitions` partitions and `replication_factor` replicas (-1: the
/// broker's default) unless it exists already.
pub async fn ensure_topic(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
    replication_factor: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        config.create().context("failed to create the Kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication_factor));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .with_context(|| format!("failed to create topic `{topic}`"))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions, replication_factor, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::info!(topic = %name, "topic exists"),
            Err((name, code)) => anyhow::bail!("failed to create topic `{name}`: {code}"),
        }
    }
    Ok(())
}
