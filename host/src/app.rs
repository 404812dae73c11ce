//! The running host.
//!
//! Start-up order: the formatter is compiled and configured, the metrics port is bound and the
//! output topic created, and only then is the relay contacted, so every configuration mistake
//! fails before any event is read. Shutdown on SIGTERM or SIGINT stops reading, drains the frames
//! already queued, and waits for their delivery reports.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::Settings;
use crate::event_id::EventIds;
use crate::formatter::{Formatter, FormatterEngine};
use crate::kafka::delivery::check_deliveries;
use crate::kafka::producer::{client_config, Producer};
use crate::metrics::{self, Metrics};
use crate::pipeline::Pipeline;
use crate::{kafka, relay};

/// Frames read from the relay and not yet decoded. A full queue stops the reader.
const FRAME_QUEUE_CAPACITY: usize = 1024;
/// Frames whose messages are with librdkafka and whose delivery reports are still awaited.
const DELIVERY_QUEUE_CAPACITY: usize = 16 * 1024;

/// Compiles and configures the formatters on a thread outside the async runtime, where the
/// synchronous WASI implementation may block.
fn build_formatters(engine: &FormatterEngine, settings: &Settings) -> anyhow::Result<Vec<Formatter>> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let formatter = Formatter::new(
                    engine,
                    &settings.formatter,
                    settings.formatter_options.clone(),
                    settings.formatter_limits,
                )?;
                tracing::info!(formatter = formatter.name(), "formatter ready");
                Ok(vec![formatter])
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the formatter start-up thread panicked"))?
    })
}

/// Runs the host until SIGTERM or SIGINT, then drains and returns.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let engine = FormatterEngine::new()?;
    let formatters = build_formatters(&engine, &settings)?;
    let names: Vec<String> = formatters.iter().map(|formatter| formatter.name().to_owned()).collect();
    let metrics = Arc::new(Metrics::new(&names)?);

    let listener = metrics::bind(settings.metrics_listen_address).await?;
    tokio::spawn(metrics::serve(listener, metrics.clone()));

    let config = client_config(&settings.bootstrap_servers, &settings.kafka_properties);
    kafka::topic::ensure_topic(
        &config,
        &settings.output_topic,
        settings.topic_partitions,
        settings.topic_replication_factor,
    )
    .await?;
    let producer = Arc::new(Producer::new(&config)?);

    let (frame_sender, frame_receiver) = mpsc::channel(FRAME_QUEUE_CAPACITY);
    let (delivery_sender, delivery_receiver) = mpsc::channel(DELIVERY_QUEUE_CAPACITY);
    let checker = tokio::spawn(check_deliveries(delivery_receiver, metrics.clone()));

    let last_seq = Arc::new(AtomicI64::new(-1));
    let pipeline = Pipeline {
        formatters,
        producer: producer.clone(),
        output_topic: settings.output_topic.clone(),
        metrics: metrics.clone(),
        event_ids: EventIds::new(settings.instance_id),
        deliveries: delivery_sender,
        last_seq: last_seq.clone(),
    };
    let processing = std::thread::Builder::new()
        .name("pipeline".to_owned())
        .spawn(move || pipeline.run(frame_receiver))
        .context("failed to start the pipeline thread")?;

    let cancel = CancellationToken::new();
    let reader = tokio::spawn(relay::read_relay(
        settings.relay_url.clone(),
        frame_sender,
        last_seq,
        metrics.clone(),
        cancel.clone(),
    ));

    let signal = wait_for_shutdown_signal().await?;
    tracing::info!(signal, "shutting down: no further frames are read");
    cancel.cancel();
    let _ = reader.await;
    tokio::task::spawn_blocking(move || processing.join())
        .await
        .context("failed to wait for the pipeline thread")?
        .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))?;

    let totals = match tokio::time::timeout(settings.shutdown_timeout, checker).await {
        Ok(totals) => totals.context("the delivery checker failed")?,
        Err(_) => anyhow::bail!(
            "messages were still unacknowledged after {:?} (--shutdown-timeout-secs)",
            settings.shutdown_timeout
        ),
    };
    producer.flush(settings.shutdown_timeout).context("failed to flush the Kafka producer")?;
    tracing::info!(
        acknowledged = totals.acknowledged,
        failed = totals.failed,
        acknowledged_seq = ?totals.acknowledged_seq,
        "stopped"
    );
    Ok(())
}

/// Waits for SIGTERM or SIGINT and returns its name.
async fn wait_for_shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("failed to listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to listen for SIGINT")?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}
