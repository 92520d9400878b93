//! Chooses an inference origin for each attempt of a request and decides whether a failed attempt
//! may be retried. Pure state machine: no I/O, no Workers types; the clock (`now`, time since any
//! fixed epoch) and randomness (a seeded PRNG) come in from the caller, so tests run in virtual time.
//!
//! [`dispatch`] carries its decisions out per client request: plain async Rust over a transport
//! (one attempt at one origin) and a clock passed in, natively tested in virtual time too. Its loop:
//! ```text
//! let mut plan = balancer.begin(now);
//! loop {
//!     let Some(id) = balancer.pick(&target, &plan, now) else { /* 503: no origin */ };
//!     balancer.on_start(id, &mut plan, now);
//!     // send to balancer.origin(id).url with timeout plan.try_timeout(now)
//!     // FailureKind::from_status(status, retry_after) is None: balancer.on_first_byte(id, elapsed, &mut plan, now),
//!     //   stream it, then balancer.on_success(id, now) or on_failure(id, Interrupted, now)
//!     // otherwise: balancer.on_failure(id, kind, now) and
//!     //   match balancer.should_retry(&plan, kind, now) { Retry { after } => sleep, continue; GiveUp(_) => fail }
//! }
//! ```

mod budget;
mod config;
pub mod dispatch;
mod origin;
mod rng;
#[cfg(test)]
mod sim;

use std::time::Duration;

use budget::RetryBudget;
pub use config::{parse_affinity, parse_origins, Kind, OriginConfig, Routing};
use origin::{Availability, OriginState};
pub use rng::Rng;

/// The one error type of this layer: an invalid configuration (naming the field), or a request
/// that no origin answered ([`dispatch`]).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BalancerError {
    #[error("{field}: {reason}")]
    Config { field: String, reason: String },
    /// No configured origin serves the model, whatever their health.
    #[error("no inference origin serves the model {0:?}")]
    UnknownModel(String),
    /// No attempt answered: why the dispatcher stopped, and the last failure.
    #[error("{0}")]
    Unavailable(String),
    /// The origin refused the request itself (a 4xx other than 429): passed on, not retried.
    #[error("origin {origin} answered {status}")]
    Refused {
        origin: String,
        status: u16,
        body: Vec<u8>,
    },
}

/// Index of an origin in the configured list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OriginId(pub usize);

/// Why an attempt failed, as observed by the glue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Could not connect (DNS, refused, TLS).
    Connect,
    /// No first byte within the per-try timeout.
    Timeout,
    /// A 5xx response.
    ServerError { status: u16 },
    /// A 429 response; `retry_after` from its header when present.
    RateLimited { retry_after: Option<Duration> },
    /// The response broke off after its first byte; never retried (the client has bytes already).
    Interrupted,
}

impl FailureKind {
    /// Classifies an origin's response status: `None` when the response is to be relayed (2xx,
    /// and 4xx other than 429, which are the request's fault, not the origin's). `retry_after` is
    /// the raw Retry-After header; only the delta-seconds form is understood (an HTTP date falls
    /// back to the policy's default wait).
    pub fn from_status(status: u16, retry_after: Option<&str>) -> Option<FailureKind> {
        match status {
            429 => Some(FailureKind::RateLimited {
                retry_after: retry_after
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs),
            }),
            500..=599 => Some(FailureKind::ServerError { status }),
            _ => None,
        }
    }
}

/// What to route: the caller's kind, model, region and optional context-affinity key.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub kind: Kind,
    pub model: &'a str,
    /// The caller's region (e.g. mapped from the colo); same-region origins are preferred.
    pub region: Option<&'a str>,
    /// From [`affinity_key`] over the retrieved passage ids; used only for pools listed in `AFFINITY`.
    pub affinity_key: Option<u64>,
}

/// Timeouts, retry, health and latency-tracking knobs. Defaults suit LLM origins, whose time to
/// first token is sub-second when healthy but grows to seconds under load.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Limit on each attempt's time to first byte.
    pub per_try_timeout: Duration,
    /// Limit on the whole request, retries and backoff included, until its first byte.
    pub deadline: Duration,
    pub max_attempts: u32,
    /// Retries allowed per client request (token-bucket deposit).
    pub retry_ratio: f64,
    /// Retries per second allowed regardless of traffic, so low-traffic isolates can still retry.
    pub retry_floor_per_sec: f64,
    /// Token-bucket capacity: how many retries may be saved up for a burst of failures (e.g. all
    /// requests hanging on an origin that died time out within the same second).
    pub retry_burst: f64,
    /// Retry backoff: full jitter, uniform in [0, min(cap, base × 2^(attempt-1))].
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Consecutive failures (connect, timeout, 5xx, interrupted) that eject an origin.
    pub eject_after: u32,
    /// First ejection; doubles with each failed probe up to `eject_max`.
    pub eject_base: Duration,
    pub eject_max: Duration,
    /// Peak-EWMA decay constant.
    pub ewma_decay: Duration,
    /// Latency assumed for an origin before its first response.
    pub default_rtt: Duration,
    /// 429 without a usable Retry-After header.
    pub default_retry_after: Duration,
    pub max_retry_after: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            per_try_timeout: Duration::from_secs(15),
            deadline: Duration::from_secs(45),
            max_attempts: 3,
            retry_ratio: 0.2,
            retry_floor_per_sec: 2.0,
            retry_burst: 100.0,
            backoff_base: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(250),
            eject_after: 5,
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(60),
            ewma_decay: Duration::from_secs(2),
            default_rtt: Duration::from_millis(300),
            default_retry_after: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// Per-client-request bookkeeping: deadline, attempts made, origins tried, first byte seen.
#[derive(Debug, Clone)]
pub struct Plan {
    deadline: Duration,
    per_try_timeout: Duration,
    tried: Vec<OriginId>,
    first_byte: bool,
}

impl Plan {
    /// The timeout for the attempt about to start: the per-try limit, cut short by the deadline.
    /// `None` once the deadline has passed.
    pub fn try_timeout(&self, now: Duration) -> Option<Duration> {
        let left = self.deadline.checked_sub(now).filter(|d| !d.is_zero())?;
        Some(left.min(self.per_try_timeout))
    }

    pub fn attempts(&self) -> u32 {
        self.tried.len() as u32
    }

    pub fn tried_origin(&self, id: OriginId) -> bool {
        self.tried.contains(&id)
    }
}

/// Outcome of [`Balancer::should_retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait `after` (jittered backoff), then `pick` again.
    Retry {
        after: Duration,
    },
    GiveUp(GiveUpReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// Bytes already reached the client, or the failure is not one a retry can fix.
    NotRetryable,
    AttemptsExhausted,
    DeadlineExceeded,
    BudgetExhausted,
}

/// The origin pools of one isolate and their live state.
#[derive(Debug, Clone)]
pub struct Balancer {
    configs: Vec<OriginConfig>,
    states: Vec<OriginState>,
    routing: Routing,
    /// Model → load factor `c` for pools routed by bounded-load rendezvous hashing.
    affinity: Vec<(String, f64)>,
    policy: Policy,
    budget: RetryBudget,
    rng: Rng,
    round_robin: usize,
}

impl Balancer {
    pub fn new(
        configs: Vec<OriginConfig>,
        routing: Routing,
        affinity: Vec<(String, f64)>,
        policy: Policy,
        seed: u64,
    ) -> Balancer {
        let states = configs.iter().map(|_| OriginState::new(&policy)).collect();
        let budget = RetryBudget::new(
            policy.retry_ratio,
            policy.retry_floor_per_sec,
            policy.retry_burst,
        );
        Balancer {
            configs,
            states,
            routing,
            affinity,
            policy,
            budget,
            rng: Rng::new(seed),
            round_robin: 0,
        }
    }

    /// Builds from the Worker's variables `ORIGINS`, `ROUTING` and `AFFINITY` with default policy.
    pub fn from_vars(
        origins: &str,
        routing: Option<&str>,
        affinity: Option<&str>,
        seed: u64,
    ) -> Result<Balancer, BalancerError> {
        Ok(Balancer::new(
            parse_origins(origins)?,
            Routing::parse(routing)?,
            parse_affinity(affinity)?,
            Policy::default(),
            seed,
        ))
    }

    pub fn origin(&self, id: OriginId) -> &OriginConfig {
        &self.configs[id.0]
    }

    pub fn origins(&self) -> &[OriginConfig] {
        &self.configs
    }

    pub fn inflight(&self, id: OriginId) -> u32 {
        self.states[id.0].inflight
    }

    pub fn is_ejected(&self, id: OriginId) -> bool {
        self.states[id.0].is_ejected()
    }

    /// How many times `id` has been ejected since this balancer was made.
    pub fn ejections_total(&self, id: OriginId) -> u64 {
        self.states[id.0].ejections_total()
    }

    /// Starts a client request: sets its deadline and earns the retry budget its share.
    pub fn begin(&mut self, now: Duration) -> Plan {
        self.budget.deposit(now);
        Plan {
            deadline: now + self.policy.deadline,
            per_try_timeout: self.policy.per_try_timeout,
            tried: Vec::new(),
            first_byte: false,
        }
    }

    /// Chooses the origin for the next attempt, or `None` when no origin serving the target is
    /// available (all ejected, rate limited or at `max_inflight`).
    pub fn pick(&mut self, target: &Target, plan: &Plan, now: Duration) -> Option<OriginId> {
        let mut candidates: Vec<usize> = (0..self.configs.len())
            .filter(|&i| self.configs[i].serves(target.kind, target.model))
            .filter(|&i| self.states[i].inflight < self.configs[i].max_inflight)
            .filter(|&i| self.states[i].availability(now) != Availability::Unavailable)
            .collect();
        // A retry goes elsewhere when it can; the same origin is better than none.
        if candidates.iter().any(|&i| !plan.tried_origin(OriginId(i))) {
            candidates.retain(|&i| !plan.tried_origin(OriginId(i)));
        }
        if let Some(region) = target.region {
            if candidates
                .iter()
                .any(|&i| self.configs[i].region.as_deref() == Some(region))
            {
                candidates.retain(|&i| self.configs[i].region.as_deref() == Some(region));
            }
        }
        if candidates.is_empty() {
            return None;
        }
        // A half-open origin gets the request: one probe per backoff period is cheap, and without
        // real traffic it would never be readmitted.
        if let Some(&probe) = candidates
            .iter()
            .find(|&&i| self.states[i].availability(now) == Availability::Probe)
        {
            return Some(OriginId(probe));
        }
        if let Some(key) = target.affinity_key {
            if let Some(&(_, c)) = self
                .affinity
                .iter()
                .find(|(model, _)| model == target.model)
            {
                if let Some(i) = self.rendezvous(&candidates, key, c) {
                    return Some(OriginId(i));
                }
            }
        }
        Some(OriginId(self.by_strategy(&candidates, now)))
    }

    fn by_strategy(&mut self, candidates: &[usize], now: Duration) -> usize {
        let n = candidates.len();
        match self.routing {
            Routing::P2cEwma => {
                if n == 1 {
                    return candidates[0];
                }
                let a = self.rng.below(n);
                let mut b = self.rng.below(n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (candidates[a], candidates[b]);
                if self.states[b].cost(now, &self.policy) < self.states[a].cost(now, &self.policy) {
                    b
                } else {
                    a
                }
            }
            Routing::LeastInflight => {
                // Start the scan at a random offset so ties do not all land on the first origin.
                let offset = self.rng.below(n);
                (0..n)
                    .map(|k| candidates[(offset + k) % n])
                    .min_by_key(|&i| self.states[i].inflight)
                    .unwrap_or(candidates[0])
            }
            Routing::RoundRobin => {
                self.round_robin = self.round_robin.wrapping_add(1);
                candidates[self.round_robin % n]
            }
            Routing::Weighted => {
                let total: f64 = candidates.iter().map(|&i| self.configs[i].weight).sum();
                let mut x = self.rng.next_f64() * total;
                for &i in candidates {
                    x -= self.configs[i].weight;
                    if x < 0.0 {
                        return i;
                    }
                }
                candidates[n - 1]
            }
        }
    }

    /// Weighted rendezvous hashing with bounded load ("consistent hashing with bounded loads"):
    /// origins in descending score order, the first whose in-flight stays within
    /// `c × average`. The same key keeps landing on the same origin (warm prefix cache) unless
    /// that origin is overloaded relative to its peers.
    fn rendezvous(&self, candidates: &[usize], key: u64, c: f64) -> Option<usize> {
        let total: u32 = candidates.iter().map(|&i| self.states[i].inflight).sum();
        let bound = (c * f64::from(total + 1) / candidates.len() as f64).ceil();
        let mut scored: Vec<(f64, usize)> = candidates
            .iter()
            .map(|&i| {
                let h = xxhash_rust::xxh3::xxh3_64_with_seed(self.configs[i].name.as_bytes(), key);
                // Map to (0, 1) and use -w / ln(u): the highest score wins with probability ∝ weight.
                let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                (-self.configs[i].weight / u.ln(), i)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored
            .into_iter()
            .map(|(_, i)| i)
            .find(|&i| f64::from(self.states[i].inflight + 1) <= bound)
    }

    /// An attempt is being sent to `id`.
    pub fn on_start(&mut self, id: OriginId, plan: &mut Plan, now: Duration) {
        self.states[id.0].on_start(now);
        plan.tried.push(id);
    }

    /// The response head arrived after `latency`; from now on the request is not retried.
    pub fn on_first_byte(
        &mut self,
        id: OriginId,
        latency: Duration,
        plan: &mut Plan,
        now: Duration,
    ) {
        self.states[id.0].on_first_byte(latency, now, &self.policy);
        plan.first_byte = true;
    }

    /// The response completed. Also for non-429 4xx: the origin is healthy, the request was not.
    pub fn on_success(&mut self, id: OriginId, _now: Duration) {
        self.states[id.0].on_success();
    }

    /// The client left before the answer ended (a streamed answer it stopped reading).
    pub fn on_cancelled(&mut self, id: OriginId, _now: Duration) {
        self.states[id.0].on_cancelled();
    }

    pub fn on_failure(&mut self, id: OriginId, kind: FailureKind, now: Duration) {
        self.states[id.0].on_failure(kind, now, &self.policy);
    }

    /// Whether to retry after `kind`. Spends retry budget when it says yes.
    pub fn should_retry(&mut self, plan: &Plan, kind: FailureKind, now: Duration) -> RetryDecision {
        let retryable = match kind {
            FailureKind::Connect | FailureKind::Timeout | FailureKind::RateLimited { .. } => true,
            // 501 and 505 say the origin will never handle this request.
            FailureKind::ServerError { status } => !matches!(status, 501 | 505),
            FailureKind::Interrupted => false,
        };
        if plan.first_byte || !retryable {
            return RetryDecision::GiveUp(GiveUpReason::NotRetryable);
        }
        if plan.attempts() >= self.policy.max_attempts {
            return RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted);
        }
        let exponent = plan.attempts().saturating_sub(1).min(16);
        let ceiling = self
            .policy
            .backoff_base
            .saturating_mul(1 << exponent)
            .min(self.policy.backoff_cap);
        let after = ceiling.mul_f64(self.rng.next_f64());
        if now + after >= plan.deadline {
            return RetryDecision::GiveUp(GiveUpReason::DeadlineExceeded);
        }
        if !self.budget.try_withdraw(now) {
            return RetryDecision::GiveUp(GiveUpReason::BudgetExhausted);
        }
        RetryDecision::Retry { after }
    }
}

/// Context-affinity key: a hash of the retrieved passage ids in prompt order (the order matters
/// to an origin's prefix cache, so it is not normalised).
pub fn affinity_key<I, T>(passage_ids: I) -> u64
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for id in passage_ids {
        let id = id.as_ref();
        // Length-prefixed so that ["ab","c"] and ["a","bc"] differ.
        hasher.update(&(id.len() as u64).to_le_bytes());
        hasher.update(id);
    }
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, routing: Routing) -> Balancer {
        let configs = (0..n)
            .map(|i| OriginConfig {
                name: format!("o{i}"),
                url: format!("http://127.0.0.1:{}", 9000 + i),
                models: vec!["m".into()],
                region: Some(if i % 2 == 0 { "eu" } else { "us" }.into()),
                weight: 1.0,
                max_inflight: 4,
                kind: Kind::Chat,
                api_key_secret: None,
            })
            .collect();
        Balancer::new(
            configs,
            routing,
            vec![("m".into(), 1.25)],
            Policy::default(),
            1,
        )
    }

    fn start(b: &mut Balancer, id: usize, now: Duration) {
        let mut plan = b.begin(now);
        b.on_start(OriginId(id), &mut plan, now);
    }

    const T: Target = Target {
        kind: Kind::Chat,
        model: "m",
        region: None,
        affinity_key: None,
    };
    const ZERO: Duration = Duration::ZERO;

    #[test]
    fn filters_by_kind_model_region_and_capacity() {
        let mut b = pool(4, Routing::RoundRobin);
        let plan = b.begin(ZERO);
        assert_eq!(
            b.pick(
                &Target {
                    model: "other",
                    ..T
                },
                &plan,
                ZERO
            ),
            None
        );
        assert_eq!(
            b.pick(
                &Target {
                    kind: Kind::Embeddings,
                    ..T
                },
                &plan,
                ZERO
            ),
            None
        );
        for _ in 0..8 {
            let id = b
                .pick(
                    &Target {
                        region: Some("us"),
                        ..T
                    },
                    &plan,
                    ZERO,
                )
                .expect("an origin");
            assert_eq!(b.origin(id).region.as_deref(), Some("us"));
        }
        // Fill o1 and o3 (the "us" origins) to max_inflight: "us" callers spill to "eu".
        for id in [1, 3] {
            for _ in 0..4 {
                start(&mut b, id, ZERO);
            }
        }
        let id = b
            .pick(
                &Target {
                    region: Some("us"),
                    ..T
                },
                &plan,
                ZERO,
            )
            .expect("spill");
        assert_eq!(b.origin(id).region.as_deref(), Some("eu"));
    }

    #[test]
    fn p2c_prefers_the_faster_and_less_loaded_origin() {
        let mut b = pool(2, Routing::P2cEwma);
        let mut plan = b.begin(ZERO);
        let now = Duration::from_secs(1);
        b.on_start(OriginId(0), &mut plan, now);
        b.on_first_byte(OriginId(0), Duration::from_millis(900), &mut plan, now);
        b.on_success(OriginId(0), now);
        b.on_start(OriginId(1), &mut plan, now);
        b.on_first_byte(OriginId(1), Duration::from_millis(100), &mut plan, now);
        b.on_success(OriginId(1), now);
        let fresh = b.begin(now);
        assert!((0..20).all(|_| b.pick(&T, &fresh, now) == Some(OriginId(1))));
    }

    #[test]
    fn strategies_spread_load() {
        for routing in [
            Routing::RoundRobin,
            Routing::LeastInflight,
            Routing::Weighted,
            Routing::P2cEwma,
        ] {
            let mut b = pool(4, routing);
            let mut seen = [0; 4];
            for _ in 0..400 {
                let plan = b.begin(ZERO);
                let id = b.pick(&T, &plan, ZERO).expect("an origin");
                seen[id.0] += 1;
            }
            assert!(seen.iter().all(|&c| c > 40), "{routing:?}: {seen:?}");
        }
    }

    #[test]
    fn retry_goes_elsewhere_and_stops_after_first_byte() {
        let mut b = pool(2, Routing::RoundRobin);
        let now = Duration::from_secs(1);
        let mut plan = b.begin(now);
        let first = b.pick(&T, &plan, now).expect("an origin");
        b.on_start(first, &mut plan, now);
        let kind = FailureKind::ServerError { status: 503 };
        b.on_failure(first, kind, now);
        assert!(
            matches!(b.should_retry(&plan, kind, now), RetryDecision::Retry { after } if after <= b.policy.backoff_cap)
        );
        let second = b.pick(&T, &plan, now).expect("another origin");
        assert_ne!(first, second);
        b.on_start(second, &mut plan, now);
        b.on_first_byte(second, Duration::from_millis(5), &mut plan, now);
        b.on_failure(second, FailureKind::Interrupted, now);
        assert_eq!(
            b.should_retry(&plan, FailureKind::Interrupted, now),
            RetryDecision::GiveUp(GiveUpReason::NotRetryable)
        );
        assert_eq!(
            b.should_retry(&plan, FailureKind::ServerError { status: 501 }, now),
            RetryDecision::GiveUp(GiveUpReason::NotRetryable)
        );
    }

    #[test]
    fn retries_stop_at_attempts_deadline_and_budget() {
        let mut b = pool(4, Routing::RoundRobin);
        let now = Duration::from_secs(1);
        let mut plan = b.begin(now);
        for _ in 0..b.policy.max_attempts {
            let id = b.pick(&T, &plan, now).expect("an origin");
            b.on_start(id, &mut plan, now);
            b.on_failure(id, FailureKind::Connect, now);
        }
        assert_eq!(
            b.should_retry(&plan, FailureKind::Connect, now),
            RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted)
        );

        let late = now + b.policy.deadline;
        let plan = b.begin(now);
        assert_eq!(plan.try_timeout(late), None);
        assert_eq!(
            b.should_retry(&plan, FailureKind::Timeout, late),
            RetryDecision::GiveUp(GiveUpReason::DeadlineExceeded)
        );

        // Drain the bucket within one instant: at most `burst` (plus this instant's deposits).
        let plan = b.begin(now);
        let granted = (0..200)
            .filter(|_| {
                matches!(
                    b.should_retry(&plan, FailureKind::Connect, now),
                    RetryDecision::Retry { .. }
                )
            })
            .count();
        assert!(granted as f64 <= b.policy.retry_burst, "{granted}");
        assert_eq!(
            b.should_retry(&plan, FailureKind::Connect, now),
            RetryDecision::GiveUp(GiveUpReason::BudgetExhausted)
        );
    }

    #[test]
    fn rate_limited_origin_is_skipped_until_retry_after() {
        let mut b = pool(2, Routing::RoundRobin);
        let now = Duration::from_secs(1);
        let mut plan = b.begin(now);
        b.on_start(OriginId(0), &mut plan, now);
        b.on_failure(
            OriginId(0),
            FailureKind::RateLimited {
                retry_after: Some(Duration::from_secs(3)),
            },
            now,
        );
        let fresh = b.begin(now);
        assert!((0..10)
            .all(|_| b.pick(&T, &fresh, now + Duration::from_millis(2900)) == Some(OriginId(1))));
        assert!(
            (0..10).any(|_| b.pick(&T, &fresh, now + Duration::from_secs(3)) == Some(OriginId(0)))
        );
    }

    #[test]
    fn affinity_is_sticky_until_the_origin_is_overloaded() {
        let mut b = pool(4, Routing::RoundRobin);
        let key = affinity_key(["p17", "p3", "p101"]);
        assert_ne!(key, affinity_key(["p3", "p17", "p101"]));
        let t = Target {
            affinity_key: Some(key),
            ..T
        };
        let plan = b.begin(ZERO);
        let home = b.pick(&t, &plan, ZERO).expect("an origin");
        assert!((0..20).all(|_| b.pick(&t, &plan, ZERO) == Some(home)));
        // Different keys spread over the pool.
        let homes: std::collections::HashSet<_> = (0..64)
            .filter_map(|k: u32| {
                b.pick(
                    &Target {
                        affinity_key: Some(affinity_key([k.to_le_bytes()])),
                        ..T
                    },
                    &plan,
                    ZERO,
                )
            })
            .collect();
        assert_eq!(homes.len(), 4);
        // Load the home origin beyond c × average: the key moves.
        start(&mut b, home.0, ZERO);
        start(&mut b, home.0, ZERO);
        let moved = b.pick(&t, &plan, ZERO).expect("an origin");
        assert_ne!(moved, home);
    }

    #[test]
    fn classifies_statuses() {
        assert_eq!(FailureKind::from_status(200, None), None);
        assert_eq!(FailureKind::from_status(400, None), None);
        assert_eq!(
            FailureKind::from_status(503, None),
            Some(FailureKind::ServerError { status: 503 })
        );
        assert_eq!(
            FailureKind::from_status(429, Some(" 7")),
            Some(FailureKind::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            })
        );
        assert_eq!(
            FailureKind::from_status(429, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(FailureKind::RateLimited { retry_after: None })
        );
    }

    #[test]
    fn dead_origin_is_ejected_then_probed() {
        let mut b = pool(2, Routing::RoundRobin);
        let mut now = Duration::from_secs(1);
        for _ in 0..b.policy.eject_after {
            let mut plan = b.begin(now);
            b.on_start(OriginId(0), &mut plan, now);
            b.on_failure(OriginId(0), FailureKind::Connect, now);
        }
        assert!(b.is_ejected(OriginId(0)));
        assert_eq!(
            (
                b.ejections_total(OriginId(0)),
                b.ejections_total(OriginId(1))
            ),
            (1, 0)
        );
        let plan = b.begin(now);
        assert!((0..10).all(|_| b.pick(&T, &plan, now) == Some(OriginId(1))));
        now += b.policy.eject_base;
        assert_eq!(b.pick(&T, &plan, now), Some(OriginId(0)), "half-open probe");
        let mut probe = b.begin(now);
        b.on_start(OriginId(0), &mut probe, now);
        assert!(
            (0..10).all(|_| b.pick(&T, &plan, now) == Some(OriginId(1))),
            "one probe at a time"
        );
        b.on_first_byte(OriginId(0), Duration::from_millis(50), &mut probe, now);
        b.on_success(OriginId(0), now);
        assert!(!b.is_ejected(OriginId(0)));
        assert_eq!(
            b.ejections_total(OriginId(0)),
            1,
            "a total, not reset by recovery"
        );
    }
}
