//! Rate limiting of repeated log lines, so that a flood of identical errors costs a few lines a
//! second and a count of what was left out.

use std::time::{Duration, Instant};

/// Allows at most `max_per_window` lines per window and counts the rest.
pub struct LogLimiter {
    window: Duration,
    max_per_window: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(max_per_window: u32, window: Duration) -> Self {
        LogLimiter { window, max_per_window, window_start: None, in_window: 0, suppressed: 0 }
    }

    /// Returns `Some(n)` when a line may be logged now, where `n` lines were left out since the
    /// last one logged; `None` when this line should be left out.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < self.window => {}
            _ => {
                self.window_start = Some(now);
                self.in_window = 0;
            }
        }
        if self.in_window >= self.max_per_window {
            self.suppressed += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl Default for LogLimiter {
    /// Five lines a second.
    fn default() -> Self {
        LogLimiter::new(5, Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_lines_past_the_limit() {
        let mut limiter = LogLimiter::new(2, Duration::from_secs(3600));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        limiter.window_start = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(limiter.allow(), Some(2));
    }
}
