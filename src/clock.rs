//! Time as the layers that wait see it — the retrieval engine's deadlines, the store's loads and
//! polls, the origins' backoff and health — passed in as one [`Clock`], so that all of them run
//! natively in virtual time. The worker's clock is `performance.now()` with the calling
//! request's own timers (`edge::clock`); the tests' is a virtual clock whose timers fire only
//! when the test driver advances time.
use std::time::Duration;

/// A monotonic reading and a timer. Readings count from an origin of the clock's own, so only
/// differences between them mean anything; wall time (what an HTTP date is compared with) is not
/// the clock's business.
// Single-threaded wasm: the futures never cross threads, so no Send bound is wanted.
#[allow(async_fn_in_trait)]
pub trait Clock: Clone + 'static {
    /// The time since the clock's origin.
    fn now(&self) -> Duration;

    /// Resolves `wait` from now (on the calling request's own timer, in the worker).
    async fn sleep(&self, wait: Duration);

    /// [`now`](Clock::now) in milliseconds, for the layers that count time in them as
    /// `Server-Timing` and the request's `deadline_ms` do (retrieval and the store).
    fn now_ms(&self) -> f64 {
        let now = self.now();
        now.as_secs() as f64 * 1000.0 + f64::from(now.subsec_nanos()) / 1e6
    }

    /// [`sleep`](Clock::sleep) for `ms` milliseconds (see [`from_ms`]).
    async fn sleep_ms(&self, ms: f64) {
        self.sleep(from_ms(ms)).await
    }
}

/// `ms` milliseconds as a [`Duration`], to the nanosecond: a negative or NaN count is none, and
/// a count past what `u64` nanoseconds hold (some 584 years) is the most they hold.
pub fn from_ms(ms: f64) -> Duration {
    // A float-to-int `as` saturates, and NaN becomes 0.
    Duration::from_nanos((ms * 1e6) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_convert_exactly_and_nonsense_waits_are_none() {
        assert_eq!(from_ms(0.5), Duration::from_micros(500));
        assert_eq!(from_ms(12.0), Duration::from_millis(12));
        assert_eq!(from_ms(-3.0), Duration::ZERO);
        assert_eq!(from_ms(f64::NAN), Duration::ZERO);
        assert_eq!(from_ms(f64::INFINITY), Duration::from_nanos(u64::MAX));
    }
}
