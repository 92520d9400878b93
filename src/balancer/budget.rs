//! Retry budget: a token bucket that caps retries at a fraction of requests plus a small
//! per-second floor, so that retries cannot multiply load during an outage (retry storms).

use std::time::Duration;

#[derive(Debug, Clone)]
pub(super) struct RetryBudget {
    tokens: f64,
    at: Duration,
    ratio: f64,
    floor_per_sec: f64,
    burst: f64,
}

impl RetryBudget {
    /// Starts full, so the first failures after a cold start can be retried.
    pub fn new(ratio: f64, floor_per_sec: f64, burst: f64) -> RetryBudget {
        RetryBudget {
            tokens: burst,
            at: Duration::ZERO,
            ratio,
            floor_per_sec,
            burst,
        }
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.floor_per_sec).min(self.burst);
        self.at = self.at.max(now);
    }

    /// Each client request earns `ratio` of a retry.
    pub fn deposit(&mut self, now: Duration) {
        self.refill(now);
        self.tokens = (self.tokens + self.ratio).min(self.burst);
    }

    /// Spends one retry if the budget allows it.
    pub fn try_withdraw(&mut self, now: Duration) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_bounded_by_ratio_floor_and_burst() {
        let mut b = RetryBudget::new(0.2, 1.0, 5.0);
        let mut granted = 0;
        // 1000 requests in 10 s, every one of them wanting a retry.
        for i in 0..1000u64 {
            let now = Duration::from_millis(i * 10);
            b.deposit(now);
            if b.try_withdraw(now) {
                granted += 1;
            }
        }
        assert!(
            granted as f64 <= 0.2 * 1000.0 + 1.0 * 10.0 + 5.0,
            "{granted}"
        );
        assert!(granted >= 200, "{granted}");
    }
}
