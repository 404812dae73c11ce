//! Checking delivery reports, in the order the messages were sent, and advancing the cursor.
//!
//! Guarantees: a message counts as produced only when the broker acknowledged it (the inner result
//! of the delivery report, not only the outer future). The acknowledged seq advances over a frame
//! only when every message of that frame and of every frame before it was acknowledged, and it
//! never moves backwards. A failed delivery is reported as [`Fatal`] and the seq stops there.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::producer::PendingDelivery;
use crate::fatal::{Fatal, FatalSender};
use crate::metrics::Metrics;

/// The messages of one frame, sent to librdkafka and awaiting their delivery reports. A frame
/// with no messages (skipped, or dropped by the formatter) completes at once.
pub struct FrameDeliveries {
    pub seq: Option<i64>,
    pub did: Option<String>,
    /// When the frame was read from the relay, in microseconds since the Unix epoch.
    pub received_at_us: u64,
    pub deliveries: Vec<(String, PendingDelivery)>,
}

/// Totals of what the checker saw, returned when its queue closes.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeliveryTotals {
    pub acknowledged: u64,
    pub failed: u64,
}

/// One tenant's queue of reports, which arrive in batches.
struct TenantReports {
    queue: mpsc::Receiver<Vec<FrameDeliveries>>,
    buffered: std::collections::VecDeque<FrameDeliveries>,
}

impl TenantReports {
    async fn next(&mut self) -> Option<FrameDeliveries> {
        while self.buffered.is_empty() {
            self.buffered.extend(self.queue.recv().await?);
        }
        self.buffered.pop_front()
    }
}

/// Receives the next frame's reports from every tenant; `None` once any tenant's queue is closed
/// and drained, because from then on no frame can be complete.
async fn next_frame(tenants: &mut [TenantReports]) -> Option<Vec<FrameDeliveries>> {
    let mut reports = Vec::with_capacity(tenants.len());
    for tenant in tenants.iter_mut() {
        reports.push(tenant.next().await?);
    }
    Some(reports)
}

/// Awaits every delivery report, frame by frame across all tenants (each tenant reports every
/// frame, in order), until a tenant's queue closes. Publishes the acknowledged seq on
/// `acknowledged`, which starts at the cursor the host resumed from.
pub async fn check_deliveries(
    tenants: Vec<mpsc::Receiver<Vec<FrameDeliveries>>>,
    metrics: Arc<Metrics>,
    acknowledged: watch::Sender<Option<i64>>,
    fatal: FatalSender,
) -> DeliveryTotals {
    let mut tenants: Vec<TenantReports> =
        tenants.into_iter().map(|queue| TenantReports { queue, buffered: Default::default() }).collect();
    let mut totals = DeliveryTotals::default();
    let mut stalled = false;
    let produced_ok = metrics.produced_events.with_label_values(&["ok"]);
    let produced_failed = metrics.produced_events.with_label_values(&["failed"]);
    while let Some(reports) = next_frame(&mut tenants).await {
        let depth = tenants.iter().map(|tenant| tenant.buffered.len() + tenant.queue.len()).max().unwrap_or(0);
        metrics.delivery_queue_depth.set(depth as i64);
        let seq = reports.first().and_then(|report| report.seq);
        let did = reports.first().and_then(|report| report.did.clone());
        let received_at_us = reports.first().map(|report| report.received_at_us).unwrap_or(0);
        let had_messages = reports.iter().any(|report| !report.deliveries.is_empty());
        let deliveries = reports.into_iter().flat_map(|report| report.deliveries);
        for (topic, delivery) in deliveries {
            let failure = match delivery.await {
                Ok(Ok(_)) => None,
                Ok(Err((error, _message))) => Some(error.to_string()),
                Err(_canceled) => Some("the producer dropped the message before its delivery report".to_owned()),
            };
            match failure {
                None => {
                    totals.acknowledged += 1;
                    produced_ok.inc();
                }
                Some(error) => {
                    totals.failed += 1;
                    produced_failed.inc();
                    if !stalled {
                        stalled = true;
                        let did = did.clone().unwrap_or_default();
                        let _ = fatal.send(Fatal::DeliveryFailed { topic, did, seq, error });
                    }
                }
            }
        }
        if stalled {
            continue;
        }
        if had_messages {
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_micros() as u64)
                .unwrap_or(0);
            metrics.delivery_latency_seconds.observe(now_us.saturating_sub(received_at_us) as f64 / 1e6);
        }
        if let Some(seq) = seq {
            let advanced = acknowledged.send_if_modified(|current| {
                if current.is_some_and(|current| current >= seq) {
                    return false;
                }
                *current = Some(seq);
                true
            });
            if advanced {
                metrics.cursor_seq.set(seq);
            }
        }
    }
    totals
}
