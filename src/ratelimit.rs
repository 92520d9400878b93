//! Per-key rate limits: a token bucket with the clock passed in. The `RateLimiter` Durable
//! Object (`edge`) keeps one bucket per API key; this module decides.
use serde::{Deserialize, Serialize};

/// `requests` per `per_s` seconds, with bursts of up to `requests`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub requests: u32,
    pub per_s: u32,
}

impl Rate {
    pub fn validate(&self) -> Result<(), String> {
        if self.requests == 0 || self.per_s == 0 {
            return Err(format!(
                "requests ({}) and per_s ({}) must both be at least 1",
                self.requests, self.per_s
            ));
        }
        Ok(())
    }

    fn tokens_per_ms(&self) -> f64 {
        f64::from(self.requests) / (f64::from(self.per_s) * 1000.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Allowed,
    /// Whole seconds until one token is back (at least 1, as `Retry-After` wants).
    Limited {
        retry_after_s: u64,
    },
}

/// Tokens left and when they were counted. Refused requests take nothing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenBucket {
    tokens: f64,
    at_ms: f64,
}

impl TokenBucket {
    pub fn full(rate: Rate, now_ms: f64) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(rate.requests),
            at_ms: now_ms,
        }
    }

    /// Refills for the time since the last call (a clock that steps back refills nothing), then
    /// takes one token if there is one. The capacity is the rate's current `requests`, so a
    /// lowered rate applies at once.
    pub fn take(&mut self, rate: Rate, now_ms: f64) -> Decision {
        let elapsed = (now_ms - self.at_ms).max(0.0);
        self.tokens = (self.tokens + elapsed * rate.tokens_per_ms()).min(f64::from(rate.requests));
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Decision::Allowed;
        }
        let wait_ms = (1.0 - self.tokens) / rate.tokens_per_ms();
        Decision::Limited {
            retry_after_s: ((wait_ms / 1000.0).ceil() as u64).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE_PER_MINUTE: Rate = Rate {
        requests: 3,
        per_s: 60,
    };

    #[test]
    fn a_burst_of_the_capacity_then_one_per_interval() {
        let mut bucket = TokenBucket::full(THREE_PER_MINUTE, 0.0);
        for _ in 0..3 {
            assert_eq!(bucket.take(THREE_PER_MINUTE, 0.0), Decision::Allowed);
        }
        assert_eq!(
            bucket.take(THREE_PER_MINUTE, 0.0),
            Decision::Limited { retry_after_s: 20 }
        );
        // Refused requests take nothing: 15 s later the wait is 5 s, and at 20 s one passes.
        assert_eq!(
            bucket.take(THREE_PER_MINUTE, 15_000.0),
            Decision::Limited { retry_after_s: 5 }
        );
        assert_eq!(bucket.take(THREE_PER_MINUTE, 20_000.0), Decision::Allowed);
        assert_eq!(
            bucket.take(THREE_PER_MINUTE, 20_001.0),
            Decision::Limited { retry_after_s: 20 }
        );
    }

    #[test]
    fn refill_stops_at_the_capacity_and_waits_are_at_least_a_second() {
        let fast = Rate {
            requests: 100,
            per_s: 1,
        };
        let mut bucket = TokenBucket::full(fast, 0.0);
        for _ in 0..100 {
            assert_eq!(bucket.take(fast, 0.0), Decision::Allowed);
        }
        assert_eq!(
            bucket.take(fast, 0.0),
            Decision::Limited { retry_after_s: 1 }
        );
        let mut idle = TokenBucket::full(THREE_PER_MINUTE, 0.0);
        let allowed = (0..10)
            .filter(|_| idle.take(THREE_PER_MINUTE, 3_600_000.0) == Decision::Allowed)
            .count();
        assert_eq!(allowed, 3, "an hour idle refills to the capacity, no more");
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing_and_a_lower_rate_applies_at_once() {
        let mut bucket = TokenBucket::full(THREE_PER_MINUTE, 60_000.0);
        for _ in 0..3 {
            bucket.take(THREE_PER_MINUTE, 60_000.0);
        }
        assert!(matches!(
            bucket.take(THREE_PER_MINUTE, 0.0),
            Decision::Limited { .. }
        ));
        assert!(matches!(
            bucket.take(THREE_PER_MINUTE, 60_000.0),
            Decision::Limited { .. }
        ));
        let mut big = TokenBucket::full(
            Rate {
                requests: 50,
                per_s: 60,
            },
            0.0,
        );
        let one = Rate {
            requests: 1,
            per_s: 60,
        };
        assert_eq!(big.take(one, 0.0), Decision::Allowed);
        assert_eq!(big.take(one, 0.0), Decision::Limited { retry_after_s: 60 });
    }

    #[test]
    fn zero_rates_are_refused() {
        assert!(Rate {
            requests: 0,
            per_s: 1
        }
        .validate()
        .is_err());
        assert!(Rate {
            requests: 1,
            per_s: 0
        }
        .validate()
        .is_err());
        assert!(THREE_PER_MINUTE.validate().is_ok());
    }
}
