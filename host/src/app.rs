//! The running host.
//!
//! Start-up order: the formatter is compiled and configured, the metrics port is bound and the
//! output topic created, and only then is the relay contacted, so every configuration mistake
//! fails before any event is read. Shutdown on SIGTERM or SIGINT stops reading, drains the frames
//! already queued, and waits for their delivery reports.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use anyhow::Context as _;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::cli::Settings;
use crate::cursor;
use crate::fatal::Fatal;
use crate::event_id::EventIds;
use crate::formatter::{Formatter, FormatterEngine};
use crate::kafka::delivery::check_deliveries;
use crate::kafka::producer::{client_config, Producer};
use crate::metrics::{self, Metrics};
use crate::pipeline::Pipeline;
use crate::tenant::policy::ErrorPolicy;
use crate::tenant::worker::TenantWorker;
use crate::tenant::TenantSpec;
use crate::raw_frames::{BufferPool, FRAME_QUEUE_CAPACITY};
use crate::spent_frames::SpentFrames;
use crate::relay::{InFlight, RelayOptions};
use crate::{kafka, relay};

/// Batches of decoded frames waiting for one tenant's thread. The queue is short for the same
/// reason as `FRAME_QUEUE_CAPACITY`.
const TENANT_QUEUE_CAPACITY: usize = 2;
/// Batches of one tenant's frames whose messages are with librdkafka and whose delivery reports
/// are still awaited.
const DELIVERY_QUEUE_CAPACITY: usize = 512;

/// Compiles and configures one formatter per tenant, on a thread outside the async runtime, where
/// the synchronous WASI implementation may block.
fn build_formatters(engine: &FormatterEngine, tenants: &[TenantSpec]) -> anyhow::Result<Vec<Formatter>> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut formatters = Vec::new();
                for tenant in tenants {
                    let started = std::time::Instant::now();
                    let formatter =
                        Formatter::new(engine, &tenant.formatter, tenant.options.clone(), tenant.limits)
                            .with_context(|| format!("tenant `{}`", tenant.name))?;
                    tracing::info!(
                        tenant = %tenant.name,
                        formatter = formatter.name(),
                        topic = %tenant.topic,
                        load_ms = started.elapsed().as_millis() as u64,
                        "formatter ready"
                    );
                    formatters.push(formatter);
                }
                Ok(formatters)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the formatter start-up thread panicked"))?
    })
}

/// Lists every topic the tenants write to by default: their output topics and dead-letter topics.
fn tenant_topics(tenants: &[TenantSpec]) -> Vec<String> {
    let mut topics: Vec<String> = Vec::new();
    for tenant in tenants {
        let dead_letter = match &tenant.on_error {
            ErrorPolicy::DeadLetter { topic } => Some(topic.clone()),
            _ => None,
        };
        for topic in std::iter::once(tenant.topic.clone()).chain(dead_letter) {
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
    }
    topics
}

/// Returns the seq to resume after: `--cursor`, else the cursor file, else none (the live position).
fn starting_cursor(settings: &Settings) -> anyhow::Result<Option<i64>> {
    if let Some(seq) = settings.cursor {
        tracing::info!(cursor = seq, "starting after the seq given by --cursor");
        return Ok(Some(seq));
    }
    let Some(path) = &settings.cursor_file else {
        tracing::info!("no --cursor-file: starting at the relay's live position");
        return Ok(None);
    };
    let cursor = cursor::load(path)?;
    match cursor {
        Some(seq) => tracing::info!(cursor = seq, path = %path.display(), "resuming after the stored cursor"),
        None => tracing::info!(path = %path.display(), "no stored cursor yet: starting at the relay's live position"),
    }
    Ok(cursor)
}

/// Runs the host until SIGTERM, SIGINT or a fatal failure, then drains and returns. A fatal
/// failure is returned as the error after the drain.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let start_cursor = starting_cursor(&settings)?;
    let engine = FormatterEngine::new(settings.compile_cache_dir.clone())?;
    let formatters = build_formatters(&engine, &settings.tenants)?;
    let names: Vec<String> = settings.tenants.iter().map(|tenant| tenant.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&names)?);
    if let Some(seq) = start_cursor {
        metrics.cursor_seq.set(seq);
    }

    let listener = metrics::bind(settings.metrics_listen_address).await?;
    tokio::spawn(metrics::serve(listener, metrics.clone()));

    let mut signals = ShutdownSignals::new()?;
    let producer = tokio::select! {
        producer = connect_kafka(&settings) => producer?,
        signal = signals.recv() => {
            tracing::info!(signal, "shutting down before Kafka was ready");
            return Ok(());
        }
    };

    let (fatal_sender, mut fatal_receiver) = mpsc::unbounded_channel::<Fatal>();
    let (acknowledged_sender, acknowledged) = watch::channel(start_cursor);
    let (frame_sender, frame_receiver) = mpsc::channel(FRAME_QUEUE_CAPACITY);
    let mut tenant_senders = Vec::new();
    let mut delivery_receivers = Vec::new();
    let mut workers = Vec::new();
    let spent = SpentFrames::default();
    for (spec, formatter) in settings.tenants.iter().zip(formatters) {
        let (batch_sender, batch_receiver) = mpsc::channel(TENANT_QUEUE_CAPACITY);
        let (delivery_sender, delivery_receiver) = mpsc::channel(DELIVERY_QUEUE_CAPACITY);
        let worker = TenantWorker::new(spec, formatter, producer.clone(), metrics.clone(), fatal_sender.clone());
        let spent = spent.clone();
        let handle = std::thread::Builder::new()
            .name(format!("tenant-{}", spec.name))
            .spawn(move || worker.run(batch_receiver, delivery_sender, spent))
            .with_context(|| format!("failed to start the thread of tenant `{}`", spec.name))?;
        tenant_senders.push(batch_sender);
        delivery_receivers.push(delivery_receiver);
        workers.push(handle);
    }
    let checker = tokio::spawn(check_deliveries(
        delivery_receivers,
        producer.reported(),
        metrics.clone(),
        acknowledged_sender,
        fatal_sender.clone(),
    ));

    let cancel = CancellationToken::new();
    let cursor_writer = settings.cursor_file.clone().map(|path| {
        tokio::spawn(cursor::write_periodically(
            path,
            acknowledged.clone(),
            settings.cursor_flush_interval,
            fatal_sender.clone(),
            cancel.clone(),
        ))
    });

    let last_seq = Arc::new(AtomicI64::new(start_cursor.unwrap_or(-1)));
    let in_flight = InFlight::default();
    let buffers = BufferPool::default();
    let pipeline = Pipeline {
        spent: spent.clone(),
        tenants: tenant_senders,
        in_flight: in_flight.clone(),
        buffers: buffers.clone(),
        metrics: metrics.clone(),
        event_ids: EventIds::new(settings.instance_id),
        last_seq: last_seq.clone(),
        fatal: fatal_sender.clone(),
        previous_seq: start_cursor,
    };
    let processing = std::thread::Builder::new()
        .name("pipeline".to_owned())
        .spawn(move || pipeline.run(frame_receiver))
        .context("failed to start the pipeline thread")?;

    let relay_options = RelayOptions {
        url: settings.relay_url.clone(),
        idle_timeout: settings.relay_idle_timeout,
        max_frame_bytes: settings.max_frame_bytes,
        tls: settings.relay_tls.clone(),
    };
    let reader = tokio::spawn(relay::read_relay(
        relay_options,
        frame_sender,
        buffers,
        in_flight,
        last_seq,
        metrics.clone(),
        cancel.clone(),
    ));

    let failure = tokio::select! {
        signal = signals.recv() => {
            tracing::info!(signal, "shutting down: no further frames are read");
            None
        }
        fatal = fatal_receiver.recv() => fatal,
    };
    if let Some(fatal) = &failure {
        tracing::error!(error = %fatal, "stopping: the cursor stays at the last fully delivered event");
    }
    cancel.cancel();
    let _ = reader.await;
    tokio::task::spawn_blocking(move || {
        let decoder = processing.join();
        let tenants: Vec<_> = workers.into_iter().map(|worker| worker.join()).collect();
        (decoder, tenants)
    })
    .await
    .map(|(decoder, tenants)| {
        if decoder.is_err() || tenants.iter().any(Result::is_err) {
            Err(anyhow::anyhow!("a pipeline thread panicked"))
        } else {
            Ok(())
        }
    })
    .context("failed to wait for the pipeline threads")??;

    let totals = match tokio::time::timeout(settings.shutdown_timeout, checker).await {
        Ok(totals) => Some(totals.context("the delivery checker failed")?),
        Err(_) => {
            tracing::warn!(
                timeout = ?settings.shutdown_timeout,
                "messages still unacknowledged at the shutdown timeout; they are produced again after a restart"
            );
            None
        }
    };
    if let Some(writer) = cursor_writer {
        let _ = writer.await;
    }
    let cursor = *acknowledged.borrow();
    if let (Some(path), Some(seq)) = (&settings.cursor_file, cursor) {
        cursor::store(path, seq)?;
    }
    if let Err(error) = producer.flush(Duration::from_secs(1)) {
        tracing::debug!(%error, "messages left in the producer at exit");
    }
    tracing::info!(
        acknowledged = totals.map(|totals| totals.acknowledged),
        failed = totals.map(|totals| totals.failed),
        cursor = ?cursor,
        "stopped"
    );
    match failure {
        Some(fatal) => Err(fatal.into()),
        None => Ok(()),
    }
}

/// How often the host logs that it is still waiting for the Kafka brokers at start.
const KAFKA_WAIT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Creates the tenants' topics when missing and the producer, and fetches the topics' metadata.
/// Logs a warning every `KAFKA_WAIT_LOG_INTERVAL` while the brokers do not reply.
async fn connect_kafka(settings: &Settings) -> anyhow::Result<Arc<Producer>> {
    let servers = settings.bootstrap_servers.as_str();
    tracing::info!(bootstrap_servers = servers, "connecting to Kafka");
    let config = client_config(servers, &settings.kafka_properties);
    let topics = tenant_topics(&settings.tenants);
    for topic in &topics {
        let create = kafka::topic::ensure_topic(&config, topic, settings.topic_partitions, settings.topic_replication_factor);
        tokio::pin!(create);
        let started = tokio::time::Instant::now();
        loop {
            tokio::select! {
                created = &mut create => {
                    created.with_context(|| format!("Kafka at --bootstrap-servers `{servers}`"))?;
                    break;
                }
                _ = tokio::time::sleep(KAFKA_WAIT_LOG_INTERVAL) => {
                    let waited_secs = started.elapsed().as_secs();
                    tracing::warn!(bootstrap_servers = servers, %topic, waited_secs, "still waiting for the Kafka brokers");
                }
            }
        }
    }
    let producer = Arc::new(Producer::new(&config, &topics)?);
    let warm = producer.clone();
    tokio::task::spawn_blocking(move || {
        for topic in topics {
            if let Err(error) = warm.warm_up(&topic, Duration::from_secs(10)) {
                tracing::warn!(%topic, %error, "could not fetch the topic's metadata ahead of the first message");
            }
        }
    })
    .await
    .context("failed to wait for the producer's metadata")?;
    Ok(producer)
}

/// SIGTERM and SIGINT, listened for from the start, so that neither is missed between stages.
struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn new() -> anyhow::Result<ShutdownSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            terminate: signal(SignalKind::terminate()).context("failed to listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("failed to listen for SIGINT")?,
        })
    }

    /// Waits for SIGTERM or SIGINT and returns its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
