//! Carries one client request to an origin: the async loop that acts on the balancer's decisions
//! (pick → start → one attempt → first byte, refusal or failure → retry after the jittered
//! backoff, within the retry budget and the deadline, only while the client has received
//! nothing), and the [`Lease`] that holds the answering origin's in-flight slot until the answer
//! ends.
//!
//! Plain Rust over two small traits, so that it runs natively in virtual time as it does in the
//! worker: a [`Transport`] makes one attempt at one origin (the worker's is `fetch`), and a
//! [`Clock`] tells the time and sleeps (the worker's is `performance.now()` and the request's own
//! timer; the balancer only compares its readings with one another, and a `Retry-After` date
//! reaches it as a wait, which the transport worked out against wall time). Single-threaded
//! like the isolate it serves: nothing here is `Send`, and the balancer is borrowed only between
//! awaits, never across one, because requests interleave on the one thread.
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use super::{Balancer, BalancerError, FailureKind, GiveUpReason, Kind, OriginId, RetryDecision};
use super::{OriginConfig, Target};
use crate::clock::Clock;

/// Stops the origin's work on one attempt's request (the worker's is an `AbortController`).
pub trait Abort {
    fn abort(&self);
}

/// One attempt at one origin: send `request`, then read the answer as far as the point after
/// which nothing may be retried (a whole JSON answer, or a stream's first chunk), all within
/// `request.timeout`.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// The answer as far as it was read.
    type Answer;
    /// What aborts the request of one attempt.
    type Abort: Abort;
    /// The `accept` header of every attempt.
    const ACCEPT: &'static str;
    /// A fresh abort handle for the next attempt, held by its lease.
    fn abort_handle(&self) -> Self::Abort;
    async fn attempt(
        &self,
        request: &OriginRequest<'_>,
        abort: &Self::Abort,
    ) -> Attempted<Self::Answer>;
}

/// What one attempt sends.
#[derive(Debug)]
pub struct OriginRequest<'a> {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body, the same for every attempt.
    pub body: &'a str,
    /// For the response head and the answer's part that [`Transport::Answer`] reads.
    pub timeout: Duration,
}

/// How one attempt went.
pub struct Attempted<A> {
    /// How long the response head took, when one arrived (whatever its status): the origin's
    /// latency for [`Hooks::head`].
    pub head_after: Option<Duration>,
    pub result: Result<A, Failure>,
}

/// Why one attempt did not produce an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The origin's trouble (connect, timeout, 5xx, 429), with what happened: the balancer
    /// decides on a retry.
    Failed(FailureKind, String),
    /// The origin refused the request itself (4xx): not retried, passed on to the client.
    Refused { status: u16, body: Vec<u8> },
}

/// What the dispatcher reports as it goes, for metrics it does not own.
pub trait Hooks {
    /// A failed attempt is about to be retried (after the backoff).
    fn retried(&self);
    /// `origin`'s response head arrived `after` its request was sent.
    fn head(&self, origin: &str, after: Duration);
}

/// What the client's request passes on to origins: its id (already sanitised) and the trace
/// context with this worker's span. Nothing else of the client's request reaches an origin.
pub struct Outbound {
    pub request_id: String,
    pub traceparent: String,
}

/// One request for a pool.
pub struct Call<'a> {
    pub kind: Kind,
    pub model: &'a str,
    /// Appended to the origin's base URL.
    pub path: &'static str,
    /// The JSON body, sent as is to every attempt.
    pub body: String,
    /// The caller's region label; same-region origins are preferred.
    pub region: Option<&'a str>,
    pub affinity_key: Option<u64>,
    pub outbound: &'a Outbound,
}

/// An answer and the time spent getting it (all attempts and backoff), for `Server-Timing`.
pub struct Reply<T> {
    pub answer: T,
    pub origin_ms: f64,
}

/// An origin's health as `/metrics` reports it.
pub struct Health {
    pub name: String,
    pub ejected: bool,
    pub ejections: u64,
}

/// The origins of one isolate: the balancer whose latency, health and Retry-After state one
/// request learns and the next one uses, the origins' API keys, and the clock.
pub struct Dispatcher<C> {
    /// Borrowed only between awaits, never across one: requests interleave on the isolate.
    balancer: RefCell<Balancer>,
    /// API keys by origin index (`None`: the origin needs none).
    keys: Vec<Option<String>>,
    clock: C,
}

impl<C: Clock> Dispatcher<C> {
    /// `keys[i]` is the API key of the balancer's origin `i`.
    pub fn new(balancer: Balancer, keys: Vec<Option<String>>, clock: C) -> Dispatcher<C> {
        Dispatcher {
            balancer: RefCell::new(balancer),
            keys,
            clock,
        }
    }

    /// Refused when no configured origin serves `model` for `kind`, whatever their health.
    pub fn check_model(&self, kind: Kind, model: &str) -> Result<(), BalancerError> {
        if self
            .balancer
            .borrow()
            .origins()
            .iter()
            .any(|o| o.serves(kind, model))
        {
            Ok(())
        } else {
            Err(BalancerError::UnknownModel(model.to_string()))
        }
    }

    /// Each origin's name and health, in configuration order.
    pub fn health(&self) -> Vec<Health> {
        let balancer = self.balancer.borrow();
        (0..balancer.origins().len())
            .map(OriginId)
            .map(|id| Health {
                name: balancer.origin(id).name.clone(),
                ejected: balancer.is_ejected(id),
                ejections: balancer.ejections_total(id),
            })
            .collect()
    }

    /// Sends `call` through `transport` until an attempt answers, the origin refuses it, or the
    /// balancer gives up. The answer comes with the lease on its origin's slot, which the caller
    /// settles when the answer ends (dropping it unsettled cancels).
    pub async fn send<T: Transport>(
        self: &Rc<Self>,
        transport: &T,
        call: &Call<'_>,
        hooks: &impl Hooks,
    ) -> Result<(Reply<T::Answer>, Lease<C, T::Abort>), BalancerError> {
        self.check_model(call.kind, call.model)?;
        let target = Target {
            kind: call.kind,
            model: call.model,
            region: call.region,
            affinity_key: call.affinity_key,
        };
        let began = self.clock.now();
        let mut plan = self.balancer.borrow_mut().begin(began);
        let mut last_failure = String::new();
        loop {
            let started = self.clock.now();
            let picked = {
                let mut balancer = self.balancer.borrow_mut();
                let timeout = plan.try_timeout(started);
                let id = timeout.and_then(|_| balancer.pick(&target, &plan, started));
                if let Some(id) = id {
                    balancer.on_start(id, &mut plan, started);
                }
                id.zip(timeout)
                    .map(|(id, timeout)| (id, timeout, balancer.origin(id).clone()))
            };
            let Some((id, timeout, origin)) = picked else {
                let why = if plan.try_timeout(started).is_none() {
                    "the deadline passed"
                } else {
                    "none is available"
                };
                return Err(unavailable(
                    call,
                    &plan_summary(plan.attempts(), why),
                    &last_failure,
                ));
            };
            // Made before the attempt: if the client leaves during it, the dropped lease frees
            // the slot and aborts the request.
            let mut lease = Lease {
                dispatcher: self.clone(),
                id,
                abort: transport.abort_handle(),
                aborted: false,
                settled: false,
            };
            let request = self.request::<T>(id, &origin, call, timeout);
            let attempted = transport.attempt(&request, &lease.abort).await;
            if let Some(after) = attempted.head_after {
                hooks.head(&origin.name, after);
            }
            let ended = self.clock.now();
            match attempted.result {
                Ok(answer) => {
                    self.balancer.borrow_mut().on_first_byte(
                        id,
                        ended.saturating_sub(started),
                        &mut plan,
                        ended,
                    );
                    let origin_ms = ended.saturating_sub(began).as_secs_f64() * 1000.0;
                    return Ok((Reply { answer, origin_ms }, lease));
                }
                Err(Failure::Refused { status, body }) => {
                    lease.succeed();
                    return Err(BalancerError::Refused {
                        origin: origin.name,
                        status,
                        body,
                    });
                }
                Err(Failure::Failed(kind, why)) => {
                    if kind == FailureKind::Timeout {
                        lease.abort();
                    }
                    lease.fail(kind);
                    last_failure = format!("{}: {why}", origin.name);
                    let decision = self.balancer.borrow_mut().should_retry(&plan, kind, ended);
                    match decision {
                        RetryDecision::Retry { after } => {
                            hooks.retried();
                            self.clock.sleep(after).await;
                        }
                        RetryDecision::GiveUp(reason) => {
                            return Err(unavailable(
                                call,
                                &plan_summary(plan.attempts(), give_up(reason)),
                                &last_failure,
                            ));
                        }
                    }
                }
            }
        }
    }

    /// The attempt at origin `id`: its URL and the headers it gets.
    fn request<'a, T: Transport>(
        &self,
        id: OriginId,
        origin: &OriginConfig,
        call: &'a Call<'_>,
        timeout: Duration,
    ) -> OriginRequest<'a> {
        let key = self.keys.get(id.0).and_then(Option::as_deref);
        OriginRequest {
            url: format!("{}{}", origin.url.trim_end_matches('/'), call.path),
            headers: origin_headers(T::ACCEPT, key, call.outbound),
            body: &call.body,
            timeout,
        }
    }
}

/// Every header an origin gets: a fixed allow-list built here, never copied from the client's
/// request. The values are ours (the request id is sanitised, the traceparent is rebuilt from
/// parsed ids), except the origin's own API key, a configured secret.
fn origin_headers(
    accept: &str,
    key: Option<&str>,
    outbound: &Outbound,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("accept", accept.to_string()),
        ("traceparent", outbound.traceparent.clone()),
        ("x-request-id", outbound.request_id.clone()),
    ];
    if let Some(key) = key {
        headers.push(("authorization", format!("Bearer {key}")));
    }
    headers
}

fn unavailable(call: &Call, summary: &str, last_failure: &str) -> BalancerError {
    let kind = call.kind.name();
    let last = if last_failure.is_empty() {
        String::new()
    } else {
        format!("; last failure: {last_failure}")
    };
    BalancerError::Unavailable(format!(
        "no {kind} origin for {:?} answered: {summary}{last}",
        call.model
    ))
}

fn plan_summary(attempts: u32, why: &str) -> String {
    format!("{why} after {attempts} attempt(s)")
}

fn give_up(reason: GiveUpReason) -> &'static str {
    match reason {
        GiveUpReason::NotRetryable => "the failure is not retryable",
        GiveUpReason::AttemptsExhausted => "attempts are exhausted",
        GiveUpReason::DeadlineExceeded => "the deadline leaves no time to retry",
        GiveUpReason::BudgetExhausted => "the retry budget is spent",
    }
}

/// An attempt's hold on an origin's in-flight slot; settling it tells the balancer how the
/// answer ended. Dropped unsettled (the client left mid-stream, so the runtime dropped the
/// stream that owned it) it is a cancellation: the slot is freed without judging the origin,
/// and the origin's request is aborted so that it stops generating an answer nobody reads
/// (workerd also cancels a subrequest whose body is dropped; the abort does not rely on it).
pub struct Lease<C: Clock, A: Abort> {
    dispatcher: Rc<Dispatcher<C>>,
    id: OriginId,
    /// Aborts the origin's request.
    abort: A,
    aborted: bool,
    settled: bool,
}

/// How the answer behind a lease ended.
enum Settle {
    Succeeded,
    Failed(FailureKind),
    Cancelled,
}

impl<C: Clock, A: Abort> Lease<C, A> {
    pub fn succeed(mut self) {
        self.settle(Settle::Succeeded);
    }

    pub fn fail(mut self, kind: FailureKind) {
        self.settle(Settle::Failed(kind));
    }

    /// Stops the origin's work on an answer nobody will read.
    fn abort(&mut self) {
        if !std::mem::replace(&mut self.aborted, true) {
            self.abort.abort();
        }
    }

    fn settle(&mut self, outcome: Settle) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let now = self.dispatcher.clock.now();
        // A borrow is only ever held inside synchronous code, so this cannot collide; if it
        // somehow did, losing one in-flight count beats a panic.
        if let Ok(mut balancer) = self.dispatcher.balancer.try_borrow_mut() {
            match outcome {
                Settle::Succeeded => balancer.on_success(self.id, now),
                Settle::Failed(kind) => balancer.on_failure(self.id, kind, now),
                Settle::Cancelled => balancer.on_cancelled(self.id, now),
            }
        }
        if matches!(outcome, Settle::Cancelled) {
            self.abort();
        }
    }
}

impl<C: Clock, A: Abort> Drop for Lease<C, A> {
    fn drop(&mut self) {
        self.settle(Settle::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::VecDeque;

    use super::*;
    use crate::balancer::{Policy, Routing};
    use crate::testing::VirtualClock;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// What the next attempt meets, whichever origin it goes to.
    enum Step {
        /// The answer (its first byte) after this long.
        Answer(Duration),
        /// A response head after this long that fails or refuses.
        Head(Duration, Failure),
        /// Nothing within the try timeout.
        Hang,
    }

    fn status(code: u16) -> Step {
        Step::Head(
            ms(5),
            Failure::Failed(
                FailureKind::ServerError { status: code },
                format!("answered {code}"),
            ),
        )
    }

    /// An attempt as the transport saw it.
    struct Sent {
        url: String,
        headers: Vec<(&'static str, String)>,
        timeout: Duration,
        at: Duration,
    }

    impl Sent {
        /// `http://o1.test/v1/...` → `o1`.
        fn origin(&self) -> String {
            self.url["http://".len()..]
                .split('.')
                .next()
                .unwrap_or_default()
                .to_string()
        }
    }

    /// A transport scripted attempt by attempt, on the virtual clock: each attempt moves time on
    /// by its latency at once, so the clock's only sleeps are the dispatcher's backoffs.
    struct Script {
        clock: VirtualClock,
        steps: RefCell<VecDeque<Step>>,
        sent: RefCell<Vec<Sent>>,
        /// The attempts (by index) whose request was aborted.
        aborted: Rc<RefCell<Vec<usize>>>,
    }

    impl Script {
        fn new(clock: &VirtualClock, steps: Vec<Step>) -> Script {
            Script {
                clock: clock.clone(),
                steps: RefCell::new(steps.into()),
                sent: RefCell::new(Vec::new()),
                aborted: Rc::default(),
            }
        }

        fn push(&self, step: Step) {
            self.steps.borrow_mut().push_back(step);
        }

        fn aborted(&self) -> Vec<usize> {
            self.aborted.borrow().clone()
        }
    }

    struct FakeAbort {
        attempt: usize,
        aborted: Rc<RefCell<Vec<usize>>>,
    }

    impl Abort for FakeAbort {
        fn abort(&self) {
            self.aborted.borrow_mut().push(self.attempt);
        }
    }

    impl Transport for Script {
        type Answer = String;
        type Abort = FakeAbort;
        const ACCEPT: &'static str = "text/event-stream";

        fn abort_handle(&self) -> FakeAbort {
            FakeAbort {
                attempt: self.sent.borrow().len(),
                aborted: self.aborted.clone(),
            }
        }

        async fn attempt(&self, request: &OriginRequest<'_>, _: &FakeAbort) -> Attempted<String> {
            self.sent.borrow_mut().push(Sent {
                url: request.url.clone(),
                headers: request.headers.clone(),
                timeout: request.timeout,
                at: self.clock.now(),
            });
            let step = self.steps.borrow_mut().pop_front();
            match step.expect("the script has a step for every attempt") {
                Step::Answer(after) => {
                    self.clock.set(self.clock.now() + after);
                    Attempted {
                        head_after: Some(after),
                        result: Ok(format!("answer from {}", request.url)),
                    }
                }
                Step::Head(after, failure) => {
                    self.clock.set(self.clock.now() + after);
                    Attempted {
                        head_after: Some(after),
                        result: Err(failure),
                    }
                }
                Step::Hang => {
                    self.clock.set(self.clock.now() + request.timeout);
                    Attempted {
                        head_after: None,
                        result: Err(Failure::Failed(
                            FailureKind::Timeout,
                            "no response within the try timeout".into(),
                        )),
                    }
                }
            }
        }
    }

    #[derive(Default)]
    struct Recorder {
        retries: Cell<u32>,
        heads: RefCell<Vec<(String, Duration)>>,
    }

    impl Hooks for Recorder {
        fn retried(&self) {
            self.retries.set(self.retries.get() + 1);
        }

        fn head(&self, origin: &str, after: Duration) {
            self.heads.borrow_mut().push((origin.to_string(), after));
        }
    }

    /// `n` chat origins `o0`… serving model `m`, round robin; `o0` has an API key.
    fn dispatcher(n: usize, policy: Policy, clock: &VirtualClock) -> Rc<Dispatcher<VirtualClock>> {
        dispatcher_with(n, 4, policy, clock)
    }

    fn dispatcher_with(
        n: usize,
        max_inflight: u32,
        policy: Policy,
        clock: &VirtualClock,
    ) -> Rc<Dispatcher<VirtualClock>> {
        let configs = (0..n)
            .map(|i| OriginConfig {
                name: format!("o{i}"),
                url: format!("http://o{i}.test/"),
                models: vec!["m".into()],
                region: None,
                weight: 1.0,
                max_inflight,
                kind: Kind::Chat,
                api_key_secret: None,
            })
            .collect();
        let keys = (0..n)
            .map(|i| (i == 0).then(|| "sk-0".to_string()))
            .collect();
        let balancer = Balancer::new(configs, Routing::RoundRobin, Vec::new(), policy, 7);
        Rc::new(Dispatcher::new(balancer, keys, clock.clone()))
    }

    const OUTBOUND: Outbound = Outbound {
        request_id: String::new(),
        traceparent: String::new(),
    };

    fn call<'a>(model: &'a str, outbound: &'a Outbound) -> Call<'a> {
        Call {
            kind: Kind::Chat,
            model,
            path: "/v1/chat/completions",
            body: r#"{"model":"m"}"#.into(),
            region: None,
            affinity_key: None,
            outbound,
        }
    }

    type Sending = Result<(Reply<String>, Lease<VirtualClock, FakeAbort>), BalancerError>;

    fn send(d: &Rc<Dispatcher<VirtualClock>>, script: &Script, hooks: &Recorder) -> Sending {
        script
            .clock
            .block_on(d.send(script, &call("m", &OUTBOUND), hooks))
    }

    fn inflight(d: &Dispatcher<VirtualClock>) -> Vec<u32> {
        let balancer = d.balancer.borrow();
        (0..balancer.origins().len())
            .map(|i| balancer.inflight(OriginId(i)))
            .collect()
    }

    fn unavailable_text(e: BalancerError) -> String {
        match e {
            BalancerError::Unavailable(text) => text,
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn a_503_is_retried_on_another_origin_after_the_backoff() {
        let clock = VirtualClock::default();
        let d = dispatcher(2, Policy::default(), &clock);
        let script = Script::new(&clock, vec![status(503), Step::Answer(ms(7))]);
        let hooks = Recorder::default();
        let began = clock.now();
        let (reply, lease) = send(&d, &script, &hooks).expect("the retry answers");
        let sent = script.sent.borrow();
        assert_eq!(sent.len(), 2);
        assert_ne!(sent[0].origin(), sent[1].origin());
        assert_eq!(reply.answer, format!("answer from {}", sent[1].url));
        // One backoff, within the first retry's ceiling, between the 503 and the retry.
        let sleeps = clock.sleeps();
        assert_eq!(sleeps.len(), 1);
        assert!(sleeps[0] <= Policy::default().backoff_base, "{sleeps:?}");
        assert_eq!(sent[1].at, sent[0].at + ms(5) + sleeps[0]);
        let spent = (ms(5) + sleeps[0] + ms(7)).as_secs_f64() * 1000.0;
        assert!(
            (reply.origin_ms - spent).abs() < 1e-9,
            "{}",
            reply.origin_ms
        );
        assert_eq!(clock.now() - began, ms(12) + sleeps[0]);
        assert_eq!(hooks.retries.get(), 1);
        assert_eq!(
            *hooks.heads.borrow(),
            [(sent[0].origin(), ms(5)), (sent[1].origin(), ms(7))]
        );
        // A 5xx is an answer: nothing to abort. The answering origin holds its slot until the
        // lease settles.
        assert!(script.aborted().is_empty());
        assert_eq!(inflight(&d).iter().sum::<u32>(), 1);
        lease.succeed();
        assert_eq!(inflight(&d), [0, 0]);
        assert!(script.aborted().is_empty());
    }

    #[test]
    fn a_timeout_aborts_its_attempt_and_the_retry_answers() {
        let clock = VirtualClock::default();
        let policy = Policy {
            per_try_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
            ..Policy::default()
        };
        let d = dispatcher(2, policy, &clock);
        let script = Script::new(&clock, vec![Step::Hang, Step::Answer(ms(5))]);
        let hooks = Recorder::default();
        let (reply, lease) = send(&d, &script, &hooks).expect("the retry answers");
        let sent = script.sent.borrow();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].timeout, Duration::from_secs(2));
        assert_eq!(
            script.aborted(),
            [0],
            "the hung attempt's request is aborted"
        );
        assert_eq!(
            sent[1].at,
            sent[0].at + Duration::from_secs(2) + clock.sleeps()[0]
        );
        assert_ne!(sent[0].origin(), sent[1].origin());
        assert_eq!(reply.answer, format!("answer from {}", sent[1].url));
        assert_eq!(hooks.retries.get(), 1);
        assert_eq!(*hooks.heads.borrow(), [(sent[1].origin(), ms(5))]);
        lease.succeed();
        assert_eq!(
            script.aborted(),
            [0],
            "the answer that ended is not aborted"
        );
    }

    #[test]
    fn a_refusal_is_passed_on_and_not_retried() {
        let clock = VirtualClock::default();
        let d = dispatcher(2, Policy::default(), &clock);
        let body = br#"{"error":{"message":"bad temperature"}}"#.to_vec();
        let refused = Failure::Refused {
            status: 400,
            body: body.clone(),
        };
        let script = Script::new(&clock, vec![Step::Head(ms(3), refused)]);
        let hooks = Recorder::default();
        let err = send(&d, &script, &hooks).err().expect("refused");
        let sent = script.sent.borrow();
        assert_eq!(
            err,
            BalancerError::Refused {
                origin: sent[0].origin(),
                status: 400,
                body,
            }
        );
        assert_eq!(sent.len(), 1, "not retried");
        assert!(clock.sleeps().is_empty());
        assert_eq!(hooks.retries.get(), 0);
        // The origin is healthy (it was the request that was bad), and its slot is free.
        assert_eq!(inflight(&d), [0, 0]);
        assert!(d.health().iter().all(|h| !h.ejected));
    }

    #[test]
    fn a_spent_retry_budget_stops_after_the_first_failure() {
        let clock = VirtualClock::default();
        let policy = Policy {
            retry_ratio: 0.0,
            retry_floor_per_sec: 0.0,
            retry_burst: 0.0,
            ..Policy::default()
        };
        let d = dispatcher(2, policy, &clock);
        let script = Script::new(&clock, vec![status(503)]);
        let err = send(&d, &script, &Recorder::default())
            .err()
            .expect("gives up");
        let origin = script.sent.borrow()[0].origin();
        assert_eq!(
            unavailable_text(err),
            format!(
                "no chat origin for \"m\" answered: the retry budget is spent after 1 attempt(s); \
                 last failure: {origin}: answered 503"
            )
        );
        assert_eq!(script.sent.borrow().len(), 1);
    }

    #[test]
    fn the_attempt_cap_stops_the_loop() {
        let clock = VirtualClock::default();
        let policy = Policy {
            max_attempts: 2,
            ..Policy::default()
        };
        let d = dispatcher(3, policy, &clock);
        let refused = Failure::Failed(FailureKind::Connect, "connection refused".into());
        let script = Script::new(&clock, vec![status(503), Step::Head(ms(1), refused)]);
        let hooks = Recorder::default();
        let err = send(&d, &script, &hooks).err().expect("gives up");
        let sent = script.sent.borrow();
        assert_eq!(sent.len(), 2);
        assert_eq!(
            unavailable_text(err),
            format!(
                "no chat origin for \"m\" answered: attempts are exhausted after 2 attempt(s); \
                 last failure: {}: connection refused",
                sent[1].origin()
            )
        );
        assert_eq!(hooks.retries.get(), 1);
        assert_eq!(inflight(&d), [0, 0, 0]);
    }

    #[test]
    fn the_deadline_cuts_the_last_try_short_and_then_stops_the_loop() {
        let clock = VirtualClock::default();
        let policy = Policy {
            per_try_timeout: ms(600),
            deadline: ms(1_000),
            ..Policy::default()
        };
        let d = dispatcher(2, policy, &clock);
        let script = Script::new(&clock, vec![Step::Hang, Step::Hang]);
        let began = clock.now();
        let err = send(&d, &script, &Recorder::default())
            .err()
            .expect("gives up");
        let sent = script.sent.borrow();
        let backoff = clock.sleeps()[0];
        assert_eq!(sent[0].timeout, ms(600));
        assert_eq!(
            sent[1].timeout,
            ms(400) - backoff,
            "what the deadline leaves"
        );
        assert_eq!(clock.now() - began, ms(1_000), "ends at the deadline");
        assert_eq!(script.aborted(), [0, 1]);
        assert_eq!(
            unavailable_text(err),
            format!(
                "no chat origin for \"m\" answered: the deadline leaves no time to retry after 2 \
                 attempt(s); last failure: {}: no response within the try timeout",
                sent[1].origin()
            )
        );
    }

    #[test]
    fn a_dropped_lease_frees_the_slot_without_judging_the_origin_and_aborts() {
        let clock = VirtualClock::default();
        // One failure would eject the origin: a cancellation must not count as one.
        let policy = Policy {
            eject_after: 1,
            ..Policy::default()
        };
        let d = dispatcher_with(1, 1, policy, &clock);
        let script = Script::new(&clock, vec![Step::Answer(ms(5))]);
        let hooks = Recorder::default();
        let (_, lease) = send(&d, &script, &hooks).expect("answers");
        assert_eq!(inflight(&d), [1]);
        let full = send(&d, &script, &hooks).err().expect("the slot is taken");
        assert_eq!(
            unavailable_text(full),
            "no chat origin for \"m\" answered: none is available after 0 attempt(s)"
        );
        drop(lease);
        assert_eq!(inflight(&d), [0]);
        assert_eq!(script.aborted(), [0], "the origin's request is aborted");
        assert!(!d.health()[0].ejected);
        script.push(Step::Answer(ms(5)));
        let (_, lease) = send(&d, &script, &hooks).expect("the freed slot serves");
        lease.succeed();
        assert_eq!(script.aborted(), [0]);
    }

    #[test]
    fn retry_after_keeps_the_origin_out_until_then() {
        let clock = VirtualClock::default();
        let d = dispatcher(1, Policy::default(), &clock);
        let limited = Failure::Failed(
            FailureKind::RateLimited {
                retry_after: Some(Duration::from_secs(2)),
            },
            "answered 429".into(),
        );
        let script = Script::new(&clock, vec![Step::Head(ms(5), limited)]);
        let hooks = Recorder::default();
        let err = send(&d, &script, &hooks).err().expect("no other origin");
        assert_eq!(
            unavailable_text(err),
            "no chat origin for \"m\" answered: none is available after 1 attempt(s); \
             last failure: o0: answered 429"
        );
        let until = script.sent.borrow()[0].at + ms(5) + Duration::from_secs(2);
        clock.set(until - ms(1));
        let err = send(&d, &script, &hooks).err().expect("still out");
        assert_eq!(
            unavailable_text(err),
            "no chat origin for \"m\" answered: none is available after 0 attempt(s)"
        );
        assert_eq!(
            script.sent.borrow().len(),
            1,
            "nothing sent while it is out"
        );
        clock.set(until);
        script.push(Step::Answer(ms(5)));
        let (reply, lease) = send(&d, &script, &hooks).expect("back in");
        assert_eq!(
            reply.answer,
            "answer from http://o0.test/v1/chat/completions"
        );
        lease.succeed();
    }

    #[test]
    fn the_first_byte_commits_the_attempt() {
        let clock = VirtualClock::default();
        let policy = Policy {
            eject_after: 1,
            ..Policy::default()
        };
        let d = dispatcher(2, policy, &clock);
        let script = Script::new(&clock, vec![Step::Answer(ms(5))]);
        let hooks = Recorder::default();
        let (reply, lease) = send(&d, &script, &hooks).expect("answers");
        let origin = script.sent.borrow()[0].origin();
        assert_eq!(
            reply.answer,
            format!("answer from http://{origin}.test/v1/chat/completions")
        );
        // The stream breaks after its first byte: the origin is judged for it (one failure
        // ejects it here), but the request is not retried: the client already has bytes.
        lease.fail(FailureKind::Interrupted);
        assert_eq!(script.sent.borrow().len(), 1);
        assert!(clock.sleeps().is_empty());
        assert_eq!(hooks.retries.get(), 0);
        assert_eq!(inflight(&d), [0, 0]);
        let ejected: Vec<String> = d
            .health()
            .into_iter()
            .filter(|h| h.ejected)
            .map(|h| h.name)
            .collect();
        assert_eq!(ejected, [origin]);
        assert!(script.aborted().is_empty());
    }

    #[test]
    fn attempts_send_only_the_allow_listed_headers_and_the_origins_own_key() {
        let clock = VirtualClock::default();
        let d = dispatcher(1, Policy::default(), &clock);
        let script = Script::new(&clock, vec![Step::Answer(ms(5))]);
        let outbound = Outbound {
            request_id: "req-1".into(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        };
        let (_, lease) = clock
            .block_on(d.send(&script, &call("m", &outbound), &Recorder::default()))
            .expect("answers");
        lease.succeed();
        let sent = script.sent.borrow();
        assert_eq!(sent[0].url, "http://o0.test/v1/chat/completions");
        let headers: Vec<(&str, &str)> = sent[0]
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        assert_eq!(
            headers,
            [
                ("content-type", "application/json"),
                ("accept", "text/event-stream"),
                ("traceparent", outbound.traceparent.as_str()),
                ("x-request-id", "req-1"),
                ("authorization", "Bearer sk-0"),
            ]
        );
    }

    #[test]
    fn an_unserved_model_is_refused_before_any_attempt() {
        let clock = VirtualClock::default();
        let d = dispatcher(2, Policy::default(), &clock);
        let script = Script::new(&clock, Vec::new());
        let err = clock
            .block_on(d.send(&script, &call("other", &OUTBOUND), &Recorder::default()))
            .err()
            .expect("refused");
        assert_eq!(err, BalancerError::UnknownModel("other".into()));
        assert!(script.sent.borrow().is_empty());
    }
}
