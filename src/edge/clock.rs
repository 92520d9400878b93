//! The worker's time: `performance.now()` (sub-millisecond where the runtime offers it) and
//! timers on the calling request's own `setTimeout`, as the [`Clock`] of retrieval, the store
//! and the origins' dispatcher; and wall time since the Unix epoch, for HTTP dates.
use std::time::Duration;

use worker::wasm_bindgen::JsCast;
use worker::{js_sys, web_sys, Date, Delay};

use crate::clock::{self, Clock};

/// Milliseconds with sub-millisecond resolution where the runtime offers it.
pub(crate) fn now_ms() -> f64 {
    js_sys::global()
        .dyn_into::<web_sys::WorkerGlobalScope>()
        .ok()
        .and_then(|scope| scope.performance())
        .map(|p| p.now())
        .unwrap_or_else(|| Date::now().as_millis() as f64)
}

/// Wall time (`Date.now()`), what an HTTP date such as `Retry-After`'s is compared with; a
/// [`Clock`] reading need not count from the epoch.
pub(crate) fn unix_time() -> Duration {
    Duration::from_millis(Date::now().as_millis())
}

#[derive(Clone, Copy, Default)]
pub(crate) struct WorkerClock;

impl Clock for WorkerClock {
    fn now(&self) -> Duration {
        clock::from_ms(now_ms())
    }

    async fn sleep(&self, wait: Duration) {
        // setTimeout fires at once for delays past 2^31 - 1 ms: clamp, never overflow.
        Delay::from(wait.min(Duration::from_millis(i32::MAX as u64))).await
    }
}
