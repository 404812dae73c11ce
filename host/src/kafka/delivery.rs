//! Checking delivery reports, in the order the messages were sent, and advancing the cursor.
//!
//! Guarantees: a message counts as produced only when its delivery report from librdkafka carries
//! no error, that is when the broker acknowledged it. The acknowledged seq advances over a frame
//! only when every message of that frame and of every frame before it was acknowledged, and it
//! never moves backwards. A failed delivery is reported as [`Fatal`] and the seq stops there.

use std::sync::Arc;

use prometheus::local::{LocalHistogram, LocalIntCounter};
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

/// Receives the next frame's reports from every tenant into `reports`. Returns `false` once any
/// tenant's queue is closed and drained, because from then on no frame can be complete.
async fn next_frame(tenants: &mut [TenantReports], reports: &mut Vec<FrameDeliveries>) -> bool {
    reports.clear();
    for tenant in tenants.iter_mut() {
        match tenant.next().await {
            Some(report) => reports.push(report),
            None => return false,
        }
    }
    true
}

/// Returns whether every tenant's report of the next frame has arrived, so that reading it does
/// not wait.
fn next_frame_ready(tenants: &[TenantReports]) -> bool {
    tenants.iter().all(|tenant| !tenant.buffered.is_empty())
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
    let mut reports = Vec::with_capacity(tenants.len());
    let mut progress = Progress::new(acknowledged, metrics);
    loop {
        if !next_frame_ready(&tenants) {
            progress.publish();
        }
        if !next_frame(&mut tenants, &mut reports).await {
            break;
        }
        progress.queue_depth = tenants.iter().map(|tenant| tenant.buffered.len() + tenant.queue.len()).max().unwrap_or(0);
        let seq = reports.first().and_then(|report| report.seq);
        let received_at_us = reports.first().map(|report| report.received_at_us).unwrap_or(0);
        let mut had_messages = false;
        for ack in reports.iter().filter_map(|report| report.ack.as_deref()) {
            if !ack.is_reported() {
                progress.publish();
                all_reported(ack, &reported).await;
            }
            let (sent, failed) = ack.counts();
            had_messages |= sent > 0;
            totals.acknowledged += (sent - failed) as u64;
            totals.failed += failed as u64;
            progress.produced_ok.inc_by((sent - failed) as u64);
            progress.produced_failed.inc_by(failed as u64);
            if failed > 0 && !stalled {
                stalled = true;
                progress.publish();
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
            progress.latency.observe(now_us.saturating_sub(received_at_us) as f64 / 1e6);
        }
        if let Some(seq) = seq {
            progress.complete(seq);
        }
    }
    progress.publish();
    totals
}

/// The checker's output: the acknowledged seq on a watch channel, and its metrics. Publishing
/// wakes the cursor writer and touches shared counters, so the checker publishes once before each
/// wait rather than for every frame. A seq stays unpublished only while the checker runs through
/// frames whose reports have all arrived, never while it waits.
struct Progress {
    sender: watch::Sender<Option<i64>>,
    metrics: Arc<Metrics>,
    /// The seq of the last complete frame, when it was not published yet.
    unpublished: Option<i64>,
    /// Frames whose messages await reports, as of the last frame read.
    queue_depth: usize,
    produced_ok: LocalIntCounter,
    produced_failed: LocalIntCounter,
    latency: LocalHistogram,
}

impl Progress {
    fn new(sender: watch::Sender<Option<i64>>, metrics: Arc<Metrics>) -> Self {
        Progress {
            sender,
            unpublished: None,
            queue_depth: 0,
            produced_ok: metrics.produced_events.with_label_values(&["ok"]).local(),
            produced_failed: metrics.produced_events.with_label_values(&["failed"]).local(),
            latency: metrics.delivery_latency_seconds.local(),
            metrics,
        }
    }

    /// Records that every message up to and including frame `seq` was acknowledged.
    fn complete(&mut self, seq: i64) {
        self.unpublished = Some(seq);
    }

    /// Publishes what was counted since the last call, and the last complete seq unless an equal
    /// or later seq was published already.
    fn publish(&mut self) {
        self.produced_ok.flush();
        self.produced_failed.flush();
        self.latency.flush();
        self.metrics.delivery_queue_depth.set(self.queue_depth as i64);
        let Some(seq) = self.unpublished.take() else {
            return;
        };
        let advanced = self.sender.send_if_modified(|current| {
            if current.is_some_and(|current| current >= seq) {
                return false;
            }
            *current = Some(seq);
            true
        });
        if advanced {
            self.metrics.cursor_seq.set(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frame(seq: i64, ack: Option<Arc<FrameAck>>) -> FrameDeliveries {
        FrameDeliveries { seq: Some(seq), did: Some("did:plc:test".to_owned()), received_at_us: 0, ack }
    }

    /// Waits up to 5 s for `acknowledged` to reach `seq`.
    async fn wait_for_seq(acknowledged: &mut watch::Receiver<Option<i64>>, seq: i64) {
        let reached = acknowledged.wait_for(|current| *current >= Some(seq));
        let reached = tokio::time::timeout(Duration::from_secs(5), reached).await.is_ok_and(|result| result.is_ok());
        assert!(reached, "seq {seq} not published, last {:?}", *acknowledged.borrow());
    }

    #[tokio::test]
    async fn complete_frames_published_before_waiting() {
        let (tenant, queue) = mpsc::channel(4);
        let reported = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::new(&["default".to_owned()]).unwrap());
        let (acknowledged_sender, mut acknowledged) = watch::channel(None);
        let (fatal, _fatal_receiver) = mpsc::unbounded_channel();
        let checker = tokio::spawn(check_deliveries(
            vec![queue],
            reported.clone(),
            metrics.clone(),
            acknowledged_sender,
            fatal,
        ));

        let delivered = FrameAck::with_pending(1);
        delivered.report_delivered(&reported);
        let waiting = FrameAck::with_pending(2);
        let batch = vec![frame(10, Some(delivered)), frame(11, None), frame(12, Some(waiting.clone()))];
        tenant.send(batch).await.unwrap();
        wait_for_seq(&mut acknowledged, 11).await;
        assert_eq!(*acknowledged.borrow(), Some(11), "seq 12 still has a pending report");
        let produced_ok = metrics.produced_events.with_label_values(&["ok"]);
        assert_eq!(produced_ok.get(), 1, "the acknowledged message of seq 10 is counted");

        waiting.report_delivered(&reported);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*acknowledged.borrow(), Some(11), "seq 12 still has one pending report");
        waiting.report_delivered(&reported);
        wait_for_seq(&mut acknowledged, 12).await;
        assert_eq!(metrics.cursor_seq.get(), 12);
        assert_eq!(produced_ok.get(), 3);
        assert_eq!(metrics.delivery_latency_seconds.get_sample_count(), 2, "frames 10 and 12 had messages");

        drop(tenant);
        let totals = checker.await.unwrap();
        assert_eq!(totals.acknowledged, 3);
        assert_eq!(totals.failed, 0);
    }

    #[tokio::test]
    async fn seq_never_moves_backwards() {
        let (tenant, queue) = mpsc::channel(4);
        let reported = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::new(&["default".to_owned()]).unwrap());
        let (acknowledged_sender, mut acknowledged) = watch::channel(Some(20));
        let (fatal, _fatal_receiver) = mpsc::unbounded_channel();
        let checker = tokio::spawn(check_deliveries(vec![queue], reported, metrics, acknowledged_sender, fatal));

        tenant.send(vec![frame(5, None), frame(21, None)]).await.unwrap();
        wait_for_seq(&mut acknowledged, 21).await;
        tenant.send(vec![frame(7, None)]).await.unwrap();
        drop(tenant);
        checker.await.unwrap();
        assert_eq!(*acknowledged.borrow(), Some(21));
    }
}
