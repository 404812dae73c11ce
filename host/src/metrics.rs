//! The Prometheus metrics of the host and the HTTP endpoint that serves them.
//!
//! Every label value of a closed set (frame types, skip reasons, delivery statuses, formatter
//! error kinds) is registered at start-up with a zero, so dashboards and alerts see every series
//! from the first scrape.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::firehose::frame::FRAME_LABELS;
use crate::formatter::FormatError;
use crate::skip::SkipReason;

/// Distinct collection labels kept on `atkafka_handled_events`; further collections are counted
/// under `other`, because NSIDs come from the network and would otherwise grow without bound.
const MAX_COLLECTION_LABELS: usize = 1000;

/// Error names of error frames kept as labels; others are counted under `other`.
const KNOWN_ERROR_FRAMES: [&str; 3] = ["FutureCursor", "ConsumerTooSlow", "other"];

pub struct Metrics {
    registry: Registry,
    /// Events handed to the formatters, by action name and collection.
    pub handled_events: IntCounterVec,
    /// Kafka messages by delivery status: `ok` (acknowledged) or `failed`.
    pub produced_events: IntCounterVec,
    /// Frames received, by type.
    pub frames: IntCounterVec,
    /// Frames and record operations skipped, by reason.
    pub skipped: IntCounterVec,
    /// Error frames received, by error name.
    pub error_frames: IntCounterVec,
    /// Formatter failures, by tenant and kind.
    pub formatter_errors: IntCounterVec,
    /// Highest linear memory any instance of the tenant's formatter reached, in bytes.
    pub formatter_memory_bytes: IntGaugeVec,
    /// Formatter time per event, by tenant, in seconds: the duration of the event's `format` call,
    /// or the duration of its batch call divided by the call's events.
    pub formatter_call_seconds: HistogramVec,
    /// Formatter instances replaced for their call count or memory, by tenant.
    pub formatter_recycles: IntGaugeVec,
    /// Calls retried on a fresh instance after a deadline, by tenant.
    pub formatter_deadline_retries: IntGaugeVec,
    /// Batch calls that failed as a whole, whose events were formatted again one at a time, by
    /// tenant.
    pub formatter_batch_fallbacks: IntGaugeVec,
    /// Events that passed the tenant's filter, by tenant.
    pub tenant_events: IntCounterVec,
    /// Events the tenant's filter left out, by tenant.
    pub tenant_filtered: IntCounterVec,
    /// Messages the tenant's formatter returned, by tenant.
    pub tenant_messages: IntCounterVec,
    /// Events sent to the tenant's dead-letter topic, by tenant.
    pub tenant_dead_lettered: IntCounterVec,
    /// 1 while the tenant is quarantined, by tenant.
    pub tenant_quarantined: IntGaugeVec,
    /// Frames waiting for the tenant's thread, by tenant.
    pub tenant_queue_depth: IntGaugeVec,
    /// The seq of the last frame received.
    pub last_seq: IntGauge,
    /// When the last frame was received, in seconds since the Unix epoch.
    pub last_frame_time: IntGauge,
    /// Relay connections opened, by result (`connected`, `failed`).
    pub relay_connections: IntCounterVec,
    /// Frames received but not yet decoded.
    pub frame_queue_depth: IntGauge,
    /// Frames whose messages await their delivery reports.
    pub delivery_queue_depth: IntGauge,
    /// Relay reconnects, by cause.
    pub relay_reconnects: IntCounterVec,
    /// Seqs missing between consecutive frames.
    pub seq_gaps: IntCounter,
    /// Frames whose seq was not above the previous one.
    pub seq_regressions: IntCounter,
    /// The acknowledged seq the cursor holds.
    pub cursor_seq: IntGauge,
    /// From a frame's receipt to the acknowledgement of its last message, for frames with messages.
    pub delivery_latency_seconds: prometheus::Histogram,
    collections: Mutex<HashSet<String>>,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> anyhow::Result<IntCounterVec> {
    let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str) -> anyhow::Result<IntGaugeVec> {
    let gauge = IntGaugeVec::new(Opts::new(name, help), &["tenant"])?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> anyhow::Result<IntGauge> {
    let gauge = IntGauge::new(name, help)?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

impl Metrics {
    /// Registers every metric, with every closed-set label at zero, for the named tenants.
    pub fn new(tenants: &[String]) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let metrics = Metrics {
            handled_events: counter(
                &registry,
                "atkafka_handled_events",
                "Events received on the firehose and handed to the formatters",
                &["action_name", "collection"],
            )?,
            produced_events: counter(
                &registry,
                "atkafka_produced_events",
                "Kafka messages by delivery status (ok: acknowledged by the broker; failed)",
                &["status"],
            )?,
            frames: counter(&registry, "atkafka_frames", "Firehose frames received, by type", &["type"])?,
            skipped: counter(&registry, "atkafka_skipped", "Frames and record operations skipped, by reason", &["reason"])?,
            error_frames: counter(&registry, "atkafka_error_frames", "Error frames received from the relay", &["error"])?,
            formatter_errors: counter(
                &registry,
                "atkafka_formatter_errors",
                "Events a tenant's formatter did not format, by kind (error, trap, deadline, memory, output, quarantined)",
                &["tenant", "kind"],
            )?,
            formatter_memory_bytes: gauge_vec(
                &registry,
                "atkafka_formatter_memory_bytes",
                "Highest linear memory any instance of the tenant's formatter reached, in bytes",
            )?,
            formatter_call_seconds: {
                let buckets = vec![1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0];
                let histogram = HistogramVec::new(
                    HistogramOpts::new(
                        "atkafka_formatter_call_seconds",
                        "Formatter time per event, in seconds; an event of a batch call counts the call's duration divided by its events",
                    )
                        .buckets(buckets),
                    &["tenant"],
                )?;
                registry.register(Box::new(histogram.clone()))?;
                histogram
            },
            formatter_recycles: gauge_vec(
                &registry,
                "atkafka_formatter_recycles",
                "Formatter instances replaced for their call count or memory",
            )?,
            formatter_deadline_retries: gauge_vec(
                &registry,
                "atkafka_formatter_deadline_retries",
                "Formatter calls tried again on a fresh instance after running past their deadline",
            )?,
            formatter_batch_fallbacks: gauge_vec(
                &registry,
                "atkafka_formatter_batch_fallbacks",
                "Formatter batch calls that failed as a whole, whose events were formatted again one at a time",
            )?,
            tenant_events: counter(&registry, "atkafka_tenant_events", "Events that passed the tenant's filter", &["tenant"])?,
            tenant_filtered: counter(&registry, "atkafka_tenant_filtered", "Events the tenant's filter left out", &["tenant"])?,
            tenant_messages: counter(&registry, "atkafka_tenant_messages", "Messages the tenant's formatter returned", &["tenant"])?,
            tenant_dead_lettered: counter(
                &registry,
                "atkafka_tenant_dead_lettered",
                "Events sent to the tenant's dead-letter topic",
                &["tenant"],
            )?,
            tenant_quarantined: gauge_vec(&registry, "atkafka_tenant_quarantined", "1 while the tenant is quarantined")?,
            tenant_queue_depth: gauge_vec(&registry, "atkafka_tenant_queue_depth", "Frames waiting for the tenant's thread")?,
            last_seq: gauge(&registry, "atkafka_last_seq", "Seq of the last frame received")?,
            last_frame_time: gauge(
                &registry,
                "atkafka_last_frame_time_seconds",
                "When the last frame was received, in seconds since the Unix epoch",
            )?,
            relay_connections: counter(
                &registry,
                "atkafka_relay_connections",
                "Relay connection attempts, by result",
                &["result"],
            )?,
            frame_queue_depth: gauge(&registry, "atkafka_frame_queue_depth", "Frames received but not yet decoded")?,
            delivery_queue_depth: gauge(
                &registry,
                "atkafka_delivery_queue_depth",
                "Frames whose messages await their delivery reports",
            )?,
            relay_reconnects: counter(&registry, "atkafka_relay_reconnects", "Relay reconnects, by cause", &["cause"])?,
            seq_gaps: {
                let counter = IntCounter::new("atkafka_seq_gaps", "Seqs missing between consecutive frames")?;
                registry.register(Box::new(counter.clone()))?;
                counter
            },
            seq_regressions: {
                let counter =
                    IntCounter::new("atkafka_seq_regressions", "Frames whose seq was not above the previous frame's")?;
                registry.register(Box::new(counter.clone()))?;
                counter
            },
            delivery_latency_seconds: {
                let buckets = vec![
                    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0,
                    2.0, 5.0, 10.0,
                ];
                let histogram = prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "atkafka_delivery_latency_seconds",
                        "From a frame's receipt to the broker's acknowledgement of its last message, in seconds",
                    )
                    .buckets(buckets),
                )?;
                registry.register(Box::new(histogram.clone()))?;
                histogram
            },
            cursor_seq: gauge(
                &registry,
                "atkafka_cursor_seq",
                "Highest seq up to which every event was acknowledged by Kafka",
            )?,
            registry,
            collections: Mutex::new(HashSet::new()),
        };

        for status in ["ok", "failed"] {
            metrics.produced_events.with_label_values(&[status]);
        }
        for label in FRAME_LABELS {
            metrics.frames.with_label_values(&[label]);
        }
        for reason in SkipReason::ALL {
            metrics.skipped.with_label_values(&[reason.label()]);
        }
        for error in KNOWN_ERROR_FRAMES {
            metrics.error_frames.with_label_values(&[error]);
        }
        for cause in crate::relay::RECONNECT_CAUSES {
            metrics.relay_reconnects.with_label_values(&[cause]);
        }
        for result in ["connected", "failed"] {
            metrics.relay_connections.with_label_values(&[result]);
        }
        for tenant in tenants {
            let tenant = [tenant.as_str()];
            for kind in FormatError::KINDS.iter().chain(&["quarantined"]) {
                metrics.formatter_errors.with_label_values(&[tenant[0], kind]);
            }
            for gauge in [
                &metrics.formatter_memory_bytes,
                &metrics.formatter_recycles,
                &metrics.formatter_deadline_retries,
                &metrics.formatter_batch_fallbacks,
                &metrics.tenant_quarantined,
                &metrics.tenant_queue_depth,
            ] {
                gauge.with_label_values(&tenant);
            }
            for counter in [&metrics.tenant_events, &metrics.tenant_filtered, &metrics.tenant_messages, &metrics.tenant_dead_lettered] {
                counter.with_label_values(&tenant);
            }
            metrics.formatter_call_seconds.with_label_values(&tenant);
        }
        Ok(metrics)
    }

    /// Returns the metrics of one tenant, each resolved once, so that the tenant's thread updates
    /// them without a label lookup per event.
    pub fn tenant(&self, tenant: &str) -> TenantMetrics {
        TenantMetrics {
            events: self.tenant_events.with_label_values(&[tenant]).local(),
            filtered: self.tenant_filtered.with_label_values(&[tenant]).local(),
            messages: self.tenant_messages.with_label_values(&[tenant]).local(),
            quarantined: self.tenant_quarantined.with_label_values(&[tenant]),
            queue_depth: self.tenant_queue_depth.with_label_values(&[tenant]),
            call_seconds: self.formatter_call_seconds.with_label_values(&[tenant]).local(),
            memory_bytes: self.formatter_memory_bytes.with_label_values(&[tenant]),
            recycles: self.formatter_recycles.with_label_values(&[tenant]),
            deadline_retries: self.formatter_deadline_retries.with_label_values(&[tenant]),
            batch_fallbacks: self.formatter_batch_fallbacks.with_label_values(&[tenant]),
        }
    }

    /// Counts `count` handled events of one action and collection, capping the number of
    /// distinct collection labels.
    pub fn count_handled(&self, action_name: &str, collection: &str, count: u64) {
        let mut collections = self.collections.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let collection = if collections.contains(collection) {
            collection
        } else if collections.len() < MAX_COLLECTION_LABELS {
            collections.insert(collection.to_owned());
            collection
        } else {
            "other"
        };
        self.handled_events.with_label_values(&[action_name, collection]).inc_by(count);
    }

    /// Counts one error frame by its error name.
    pub fn count_error_frame(&self, error: &str) {
        let label = if KNOWN_ERROR_FRAMES.contains(&error) { error } else { "other" };
        self.error_frames.with_label_values(&[label]).inc();
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on an invalid metric, which registration has ruled out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// One tenant's series of the per-tenant metrics above.
/// One tenant's series. The counters and the histogram count on the tenant's thread alone and
/// reach the shared series at [`TenantMetrics::flush`], once per handoff, so that counting an event
/// writes no cache line that other threads read.
pub struct TenantMetrics {
    pub events: LocalIntCounter,
    pub filtered: LocalIntCounter,
    pub messages: LocalIntCounter,
    pub quarantined: IntGauge,
    pub queue_depth: IntGauge,
    pub call_seconds: LocalHistogram,
    pub memory_bytes: IntGauge,
    pub recycles: IntGauge,
    pub deadline_retries: IntGauge,
    pub batch_fallbacks: IntGauge,
}

impl TenantMetrics {
    /// Adds what the tenant's thread counted since the last flush to the shared series.
    pub fn flush(&self) {
        self.events.flush();
        self.filtered.flush();
        self.messages.flush();
        self.call_seconds.flush();
    }
}

/// Binds the metrics address, so that a taken port fails at start-up.
pub async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for metrics on {address} (--metrics-listen-address)"))
}

/// Serves `/metrics` (and `/healthz`) on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<Metrics>) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving metrics on /metrics");
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, "failed to accept a metrics connection");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&request, &metrics)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(error) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

fn respond(request: &Request<hyper::body::Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", metrics.render()),
        "/healthz" => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        _ => (StatusCode::NOT_FOUND, "text/plain", b"not found; metrics are at /metrics\n".to_vec()),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response with a static status and header is valid")
}
