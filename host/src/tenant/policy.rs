//! What a tenant does with an event its formatter failed on, and when a failing tenant is
//! quarantined.

use std::time::{Duration, Instant};

/// The handling of an event the tenant's formatter failed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Count the failure and go on.
    Skip,
    /// Produce the event (in the standard shape) and the error to this topic, with headers naming
    /// the tenant, the error, the DID and the seq.
    DeadLetter { topic: String },
    /// Stop the whole host; the cursor does not pass the event.
    Halt,
}

/// Quarantine: after `after_failures` consecutive failures the tenant's formatter is not called
/// for `duration`; its events meanwhile go through the error policy as failures of kind
/// `quarantined`. Then the formatter gets another chance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuarantinePolicy {
    pub after_failures: u32,
    pub duration: Duration,
}

/// The consecutive-failure count and quarantine state of one tenant.
#[derive(Debug)]
pub struct Quarantine {
    policy: Option<QuarantinePolicy>,
    consecutive_failures: u32,
    until: Option<Instant>,
}

impl Quarantine {
    pub fn new(policy: Option<QuarantinePolicy>) -> Self {
        Quarantine { policy, consecutive_failures: 0, until: None }
    }

    /// Reports whether the formatter may be called now, ending an expired quarantine.
    pub fn allows_call(&mut self, now: Instant) -> bool {
        match self.until {
            Some(until) if now < until => false,
            Some(_) => {
                self.until = None;
                self.consecutive_failures = 0;
                true
            }
            None => true,
        }
    }

    pub fn is_quarantined(&self) -> bool {
        self.until.is_some()
    }

    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
    }

    /// Counts a failure; returns true when it starts a quarantine.
    pub fn record_failure(&mut self, now: Instant) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.policy {
            Some(policy) if self.until.is_none() && self.consecutive_failures >= policy.after_failures => {
                self.until = Some(now + policy.duration);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_starts_after_consecutive_failures_and_ends() {
        let policy = QuarantinePolicy { after_failures: 3, duration: Duration::from_secs(10) };
        let mut quarantine = Quarantine::new(Some(policy));
        let start = Instant::now();
        assert!(!quarantine.record_failure(start));
        quarantine.record_success();
        assert!(!quarantine.record_failure(start));
        assert!(!quarantine.record_failure(start));
        assert!(quarantine.record_failure(start));
        assert!(!quarantine.allows_call(start + Duration::from_secs(5)));
        assert!(quarantine.allows_call(start + Duration::from_secs(11)));
        assert!(!quarantine.is_quarantined());
    }

    #[test]
    fn no_policy_never_quarantines() {
        let mut quarantine = Quarantine::new(None);
        for _ in 0..1000 {
            assert!(!quarantine.record_failure(Instant::now()));
        }
        assert!(quarantine.allows_call(Instant::now()));
    }
}
