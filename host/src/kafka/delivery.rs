//! Checking delivery reports, in the order the messages were sent, and advancing the cursor.
//!
//! Guarantees: a message counts as produced only when its delivery report from librdkafka carries
//! no error, that is when the broker acknowledged it. The acknowledged seq advances over a frame
//! only when every message of that frame and of every frame before it was acknowledged, and it
//! never moves backwards. A failed delivery is reported as [`Fatal`] and the seq stops there.

use std::sync::Arc;

use tokio::sync::{mpsc, watch, Notify};

use super::producer::FrameAck;
use crate::fatal::{Fatal, FatalSender};
use crate::metrics::Metrics;

/// The messages of one frame, sent to librdkafka and awaiting their delivery reports. A frame
/// with no messages (skipped, or dropped by the formatter) completes at once.
pub struct FrameDeliveries {
    pub seq: Option<i64>,
    pub did: Option<String>,
    /// When the frame was read from the relay, in microseconds since the Unix epoch.
    pub received_at_us: u64,
    /// The delivery reports of the frame's messages, or `None` before the first message is sent.
    pub ack: Option<Arc<FrameAck>>,
}

impl FrameDeliveries {
    /// Returns the reports of the frame's messages, to send a message with.
    pub fn ack(&mut self) -> &Arc<FrameAck> {
        self.ack.get_or_insert_with(Default::default)
    }
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

/// Waits until every message sent with `ack` has its delivery report. `reported` is woken each
/// time any frame's last report arrives.
async fn all_reported(ack: &FrameAck, reported: &Notify) {
    while !ack.is_reported() {
        // A report that arrives between the check and this wait leaves a permit, so none is missed.
        reported.notified().await;
    }
}

/// Awaits every delivery report, frame by frame across all tenants (each tenant reports every
/// frame, in order), until a tenant's queue closes. Publishes the acknowledged seq on
/// `acknowledged`, which starts at the cursor the host resumed from.
pub async fn check_deliveries(
    tenants: Vec<mpsc::Receiver<Vec<FrameDeliveries>>>,
    reported: Arc<Notify>,
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
        let received_at_us = reports.first().map(|report| report.received_at_us).unwrap_or(0);
        let mut had_messages = false;
        for ack in reports.iter().filter_map(|report| report.ack.as_deref()) {
            all_reported(ack, &reported).await;
            let (sent, failed) = ack.counts();
            had_messages |= sent > 0;
            totals.acknowledged += (sent - failed) as u64;
            totals.failed += failed as u64;
            produced_ok.inc_by((sent - failed) as u64);
            produced_failed.inc_by(failed as u64);
            if failed > 0 && !stalled {
                stalled = true;
                let (topic, error) = ack.first_failure().unwrap_or_default();
                let did = reports.first().and_then(|report| report.did.clone()).unwrap_or_default();
                let _ = fatal.send(Fatal::DeliveryFailed { topic, did, seq, error });
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
