//! The worker's clock: `performance.now()` (sub-millisecond where the runtime offers it) and
//! timers on the calling request's own `setTimeout`, as the retrieval engine's [`Clock`].
use std::time::Duration;

use worker::wasm_bindgen::JsCast;
use worker::{js_sys, web_sys, Date, Delay};

use crate::retrieve::Clock;

/// Milliseconds with sub-millisecond resolution where the runtime offers it.
pub(crate) fn now_ms() -> f64 {
    js_sys::global()
        .dyn_into::<web_sys::WorkerGlobalScope>()
        .ok()
        .and_then(|scope| scope.performance())
        .map(|p| p.now())
        .unwrap_or_else(|| Date::now().as_millis() as f64)
}

#[derive(Clone, Copy, Default)]
pub(crate) struct WorkerClock;

impl Clock for WorkerClock {
    fn now_ms(&self) -> f64 {
        now_ms()
    }

    async fn sleep(&self, ms: f64) {
        // setTimeout fires at once for delays past 2^31 - 1 ms: clamp, never overflow.
        let ms = if ms.is_nan() {
            0.0
        } else {
            ms.clamp(0.0, i32::MAX as f64)
        };
        Delay::from(Duration::from_micros((ms * 1000.0) as u64)).await
    }
}
