//! Live state of one origin as this balancer sees it: in-flight count, peak-EWMA latency and
//! health (consecutive-failure ejection with exponential backoff, half-open probe, Retry-After).

use std::time::Duration;

use super::{FailureKind, Policy};

/// Whether an origin may receive the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Availability {
    Available,
    /// Ejection has expired: exactly one probe request may go through to test it.
    Probe,
    Unavailable,
}

/// Peak-sensitive EWMA of time to first byte (Finagle/Linkerd style): a slower sample replaces
/// the estimate at once, faster samples pull it down gradually, and an idle estimate decays
/// towards zero so that an origin that was slow gets re-tried once it has had time to recover.
#[derive(Debug, Clone)]
struct PeakEwma {
    estimate_ms: f64,
    at: Duration,
}

impl PeakEwma {
    fn decay(&self, now: Duration, tau: Duration) -> f64 {
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        (-elapsed / tau.as_secs_f64().max(1e-9)).exp()
    }

    fn estimate(&self, now: Duration, tau: Duration) -> f64 {
        self.estimate_ms * self.decay(now, tau)
    }

    fn observe(&mut self, sample_ms: f64, now: Duration, tau: Duration) {
        let decay = self.decay(now, tau);
        self.estimate_ms = if sample_ms > self.estimate_ms {
            sample_ms
        } else {
            self.estimate_ms * decay + sample_ms * (1.0 - decay)
        };
        self.at = now;
    }
}

#[derive(Debug, Clone)]
pub(super) struct OriginState {
    pub inflight: u32,
    ewma: PeakEwma,
    /// When the origin last went from idle to busy, and when it last answered (or failed): while
    /// busy, the silence since then bounds its latency from below. Without this an origin that
    /// hangs looks ever cheaper as its estimate decays, and p2c would pour requests into it until
    /// the per-try timeouts fire.
    busy_since: Duration,
    last_heard: Duration,
    /// EWMA over attempts of the success rate: a failing origin costs 1/success attempts per
    /// answer, so p2c weighs it by that instead of shunning it outright.
    success: f64,
    consecutive_failures: u32,
    /// Ejections in a row without a success in between; the backoff exponent.
    ejections: u32,
    ejected_until: Option<Duration>,
    /// Every ejection since the isolate started, for metrics.
    ejections_total: u64,
    probe_in_flight: bool,
    /// Set by a 429: the origin is skipped until then.
    rate_limited_until: Duration,
}

impl OriginState {
    pub fn new(policy: &Policy) -> OriginState {
        OriginState {
            inflight: 0,
            // Unknown origins start at a typical latency rather than zero, so that a burst does not
            // pile onto a new origin before its first response arrives.
            ewma: PeakEwma {
                estimate_ms: ms(policy.default_rtt),
                at: Duration::ZERO,
            },
            busy_since: Duration::ZERO,
            last_heard: Duration::ZERO,
            success: 1.0,
            consecutive_failures: 0,
            ejections: 0,
            ejected_until: None,
            ejections_total: 0,
            probe_in_flight: false,
            rate_limited_until: Duration::ZERO,
        }
    }

    pub fn availability(&self, now: Duration) -> Availability {
        if now < self.rate_limited_until {
            return Availability::Unavailable;
        }
        match self.ejected_until {
            None => Availability::Available,
            Some(until) if now < until || self.probe_in_flight => Availability::Unavailable,
            Some(_) => Availability::Probe,
        }
    }

    /// Peak-EWMA cost used by p2c: latency × (1 + in-flight).
    pub fn cost(&self, now: Duration, policy: &Policy) -> f64 {
        let silence = if self.inflight > 0 {
            ms(now.saturating_sub(self.busy_since.max(self.last_heard)))
        } else {
            0.0
        };
        let latency = self.ewma.estimate(now, policy.ewma_decay).max(silence);
        latency * f64::from(self.inflight + 1) / self.success.max(MIN_SUCCESS)
    }

    pub fn on_start(&mut self, now: Duration) {
        if self.availability(now) == Availability::Probe {
            self.probe_in_flight = true;
        }
        if self.inflight == 0 {
            self.busy_since = now;
        }
        self.inflight += 1;
    }

    /// The origin answered: its latency counts, and it is alive.
    pub fn on_first_byte(&mut self, latency: Duration, now: Duration, policy: &Policy) {
        self.ewma.observe(ms(latency), now, policy.ewma_decay);
        self.last_heard = now;
        self.success += SUCCESS_ALPHA * (1.0 - self.success);
        self.mark_alive();
    }

    pub fn on_success(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
        self.mark_alive();
    }

    /// The client went away while the origin was answering: the slot is free again, and the
    /// answer tells nothing about the origin, so health and latency stay as they were.
    pub fn on_cancelled(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
    }

    pub fn on_failure(&mut self, kind: FailureKind, now: Duration, policy: &Policy) {
        self.inflight = self.inflight.saturating_sub(1);
        self.last_heard = now;
        if let FailureKind::RateLimited { retry_after } = kind {
            // Overload is not ill health: honour the origin's own estimate of when to come back,
            // bounded so that a bogus header cannot take an origin out for hours.
            let wait = retry_after
                .unwrap_or(policy.default_retry_after)
                .min(policy.max_retry_after);
            self.rate_limited_until = self.rate_limited_until.max(now + wait);
            self.probe_in_flight = false;
            return;
        }
        self.success *= 1.0 - SUCCESS_ALPHA;
        if kind == FailureKind::Timeout {
            // No answer within the timeout is a latency sample of at least that much.
            self.ewma
                .observe(ms(policy.per_try_timeout), now, policy.ewma_decay);
        }
        self.consecutive_failures += 1;
        match self.ejected_until {
            // The half-open probe failed: back off for longer.
            Some(_) if self.probe_in_flight => self.eject(now, policy),
            // Stragglers sent before the ejection tell nothing new.
            Some(_) => {}
            None if self.consecutive_failures >= policy.eject_after => self.eject(now, policy),
            None => {}
        }
    }

    fn eject(&mut self, now: Duration, policy: &Policy) {
        self.ejections = self.ejections.saturating_add(1);
        self.ejections_total += 1;
        let exponent = (self.ejections - 1).min(16);
        let backoff = policy
            .eject_base
            .saturating_mul(1 << exponent)
            .min(policy.eject_max);
        self.ejected_until = Some(now + backoff);
        self.probe_in_flight = false;
    }

    fn mark_alive(&mut self) {
        self.consecutive_failures = 0;
        self.ejections = 0;
        self.ejected_until = None;
        self.probe_in_flight = false;
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    pub fn ejections_total(&self) -> u64 {
        self.ejections_total
    }
}

/// Weight of one attempt in the success-rate EWMA: about the last 20 attempts count.
const SUCCESS_ALPHA: f64 = 0.05;
/// Floor so that an origin with a run of failures still has a finite cost (ejection handles it).
const MIN_SUCCESS: f64 = 0.05;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn ejects_after_consecutive_failures_then_probes_with_growing_backoff() {
        let p = Policy::default();
        let mut o = OriginState::new(&p);
        for _ in 0..p.eject_after - 1 {
            o.on_start(s(0.0));
            o.on_failure(FailureKind::ServerError { status: 503 }, s(0.0), &p);
        }
        assert_eq!(o.availability(s(0.0)), Availability::Available);
        o.on_start(s(0.0));
        o.on_failure(FailureKind::Timeout, s(0.0), &p);
        assert_eq!(o.availability(s(0.0)), Availability::Unavailable);
        let first = p.eject_base.as_secs_f64();
        assert_eq!(o.availability(s(first - 0.001)), Availability::Unavailable);
        assert_eq!(o.availability(s(first)), Availability::Probe);
        // One probe at a time.
        o.on_start(s(first));
        assert_eq!(o.availability(s(first)), Availability::Unavailable);
        o.on_failure(FailureKind::Connect, s(first), &p);
        // Second ejection lasts twice as long.
        assert_eq!(
            o.availability(s(first + 2.0 * first - 0.001)),
            Availability::Unavailable
        );
        assert_eq!(o.availability(s(first + 2.0 * first)), Availability::Probe);
        o.on_start(s(3.0 * first));
        o.on_success();
        assert_eq!(o.availability(s(3.0 * first)), Availability::Available);
        assert!(!o.is_ejected());
        assert_eq!(o.inflight, 0);
    }

    #[test]
    fn retry_after_skips_the_origin_without_ejecting_it() {
        let p = Policy::default();
        let mut o = OriginState::new(&p);
        o.on_start(s(1.0));
        o.on_failure(
            FailureKind::RateLimited {
                retry_after: Some(s(2.0)),
            },
            s(1.0),
            &p,
        );
        assert_eq!(o.availability(s(2.9)), Availability::Unavailable);
        assert_eq!(o.availability(s(3.0)), Availability::Available);
        assert!(!o.is_ejected());
    }

    #[test]
    fn a_cancelled_answer_frees_the_slot_and_leaves_health_alone() {
        let p = Policy::default();
        let mut o = OriginState::new(&p);
        for _ in 0..p.eject_after - 1 {
            o.on_start(s(0.0));
            o.on_failure(FailureKind::ServerError { status: 503 }, s(0.0), &p);
        }
        let cost = o.cost(s(0.1), &p);
        o.on_start(s(0.1));
        o.on_cancelled();
        assert_eq!(o.inflight, 0);
        assert_eq!(o.cost(s(0.1), &p), cost);
        // Not a success: one more failure completes the run that ejects the origin.
        o.on_start(s(0.2));
        o.on_failure(FailureKind::Connect, s(0.2), &p);
        assert!(o.is_ejected());
    }

    #[test]
    fn peak_ewma_jumps_up_decays_down() {
        let tau = s(1.0);
        let mut e = PeakEwma {
            estimate_ms: 100.0,
            at: s(0.0),
        };
        e.observe(500.0, s(0.1), tau);
        assert_eq!(e.estimate_ms, 500.0);
        e.observe(100.0, s(0.2), tau);
        assert!(
            e.estimate_ms < 500.0 && e.estimate_ms > 400.0,
            "{}",
            e.estimate_ms
        );
        // Idle for ten decay constants: the estimate has all but vanished.
        assert!(e.estimate(s(10.2), tau) < 1.0);
    }
}
