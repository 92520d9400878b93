//! The inference origins of this isolate, and the async loop that carries out the balancer's
//! decisions: pick → fetch → first byte → success or failure, retrying (after the balancer's
//! jittered backoff, within its retry budget) only while the client has received nothing.
//!
//! The balancer lives per isolate so that the latency, health and Retry-After state one request
//! learns steers the next. Its clock is `Date.now()`: wall time, which also dates `Retry-After`.
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures::StreamExt;
use worker::js_sys;
use worker::js_sys::futures::JsFuture;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{
    web_sys, AbortController, AbortSignal, ByteStream, Date, Delay, Env, Headers, Method, Request,
    RequestInit, Response,
};

use super::{now_ms, observe, parsed, race, var};
use crate::api::{judge_origin, refusal, ApiError, Verdict};
use crate::balancer::{
    parse_affinity, parse_origins, Balancer, BalancerError, FailureKind, GiveUpReason, Kind,
    OriginId, Policy, RetryDecision, Routing, Target,
};
use crate::metrics::{ORIGIN_DURATION, ORIGIN_RETRIES};
use crate::rag::EmbeddingsRequest;

pub const CHAT_PATH: &str = "/v1/chat/completions";
pub const EMBEDDINGS_PATH: &str = "/v1/embeddings";

thread_local! {
    static ORIGINS: RefCell<Option<Rc<Origins>>> = const { RefCell::new(None) };
}

impl From<BalancerError> for ApiError {
    fn from(e: BalancerError) -> ApiError {
        ApiError::Misconfigured(e.to_string())
    }
}

pub struct Origins {
    /// Borrowed only between awaits, never across one: requests interleave on the isolate.
    balancer: RefCell<Balancer>,
    /// API keys by origin index, from the secrets the configuration names.
    keys: Vec<Option<String>>,
}

/// A var that may be given as a JSON string or, in wrangler.toml, as a TOML table/array.
fn json_var(env: &Env, name: &str) -> Option<String> {
    var(env, name).or_else(|| {
        env.object_var::<serde_json::Value>(name)
            .ok()
            .map(|v| v.to_string())
    })
}

/// This isolate's origins, built at its first request; `None` when `ORIGINS` is not set (a
/// search-only deployment). An invalid configuration is not cached: every request fails with
/// the var and field named until the deployment is fixed.
pub fn for_isolate(env: &Env) -> Result<Option<Rc<Origins>>, ApiError> {
    if let Some(origins) = ORIGINS.with(|cell| cell.borrow().clone()) {
        return Ok(Some(origins));
    }
    let Some(json) = json_var(env, "ORIGINS") else {
        return Ok(None);
    };
    let defaults = Policy::default();
    let policy = Policy {
        per_try_timeout: Duration::from_millis(parsed(
            env,
            "ORIGIN_TRY_TIMEOUT_MS",
            defaults.per_try_timeout.as_millis() as u64,
        )?),
        deadline: Duration::from_millis(parsed(
            env,
            "ORIGIN_DEADLINE_MS",
            defaults.deadline.as_millis() as u64,
        )?),
        ..defaults
    };
    let configs = parse_origins(&json)?;
    let routing = Routing::parse(var(env, "ROUTING").as_deref())?;
    let affinity = parse_affinity(json_var(env, "AFFINITY").as_deref())?;
    let keys = configs
        .iter()
        .enumerate()
        .map(|(i, origin)| match &origin.api_key_secret {
            None => Ok(None),
            Some(name) => env.secret(name).map(|s| Some(s.to_string())).map_err(|_| {
                ApiError::Misconfigured(format!(
                    "ORIGINS[{i}].api_key_secret: no secret named {name:?} is bound"
                ))
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Isolates seed differently so that their random choices do not move in lockstep.
    let seed = (js_sys::Math::random() * (1u64 << 53) as f64) as u64;
    let origins = Rc::new(Origins {
        balancer: RefCell::new(Balancer::new(configs, routing, affinity, policy, seed)),
        keys,
    });
    ORIGINS.with(|cell| *cell.borrow_mut() = Some(origins.clone()));
    Ok(Some(origins))
}

/// The balancer's clock.
fn now() -> Duration {
    Duration::from_millis(Date::now().as_millis())
}

/// What the client's request passes on to origins: its id (already sanitised) and the trace
/// context with this worker's span. Nothing else of the client's request reaches an origin.
pub struct Outbound {
    pub request_id: String,
    pub traceparent: String,
}

/// An origin's health as `/metrics` reports it.
pub struct Health {
    pub name: String,
    pub ejected: bool,
    pub ejections: u64,
}

/// One request for a pool.
pub struct Call<'a> {
    pub kind: Kind,
    pub model: &'a str,
    pub path: &'static str,
    /// The JSON body, sent as is to every attempt.
    pub body: String,
    /// The caller's region label; same-region origins are preferred.
    pub region: Option<&'a str>,
    pub affinity_key: Option<u64>,
    pub outbound: &'a Outbound,
}

/// Why one attempt did not produce an answer.
enum Attempt {
    /// The origin's trouble (connect, timeout, 5xx, 429): the balancer decides on a retry.
    Failed(FailureKind, String),
    /// The origin refused the request itself (4xx): not retried, passed on to the client.
    Refused { status: u16, body: Vec<u8> },
}

/// How much of an answer an attempt reads before it counts as the first byte: the point after
/// which nothing is retried, because the client may already have bytes.
trait Read {
    type Out;
    /// The `accept` header of the request.
    const ACCEPT: &'static str;
    async fn read(response: web_sys::Response, within: Duration) -> Result<Self::Out, Attempt>;
}

/// A non-streamed answer is read whole: until it is, the client has nothing, so a failure while
/// reading it is still safe to retry.
struct Whole;

impl Read for Whole {
    type Out = Vec<u8>;
    const ACCEPT: &'static str = "application/json";
    async fn read(response: web_sys::Response, within: Duration) -> Result<Vec<u8>, Attempt> {
        let failed = |e: JsValue| {
            Attempt::Failed(FailureKind::Connect, format!("reading the answer: {e:?}"))
        };
        // `arrayBuffer()`: the runtime collects the body in one call, rather than a JS round trip
        // per chunk and a lock release through a stream reader.
        let whole = JsFuture::from(response.array_buffer().map_err(failed)?);
        match race(whole, within).await {
            None => Err(Attempt::Failed(
                FailureKind::Timeout,
                "no complete answer within the try timeout".into(),
            )),
            Some(Err(e)) => Err(failed(e)),
            Some(Ok(buffer)) => Ok(js_sys::Uint8Array::new(&buffer).to_vec()),
        }
    }
}

/// A streamed answer is committed at its first body chunk (the first token's event), not at the
/// response head, which an origin may send before it has generated anything.
struct FirstChunk;

/// The first chunk of a streamed answer and the rest of it, still arriving.
pub struct Streamed {
    pub first: Vec<u8>,
    pub rest: ByteStream,
}

impl Read for FirstChunk {
    type Out = Streamed;
    const ACCEPT: &'static str = "text/event-stream";
    async fn read(response: web_sys::Response, within: Duration) -> Result<Streamed, Attempt> {
        let mut response = Response::from(response);
        let mut rest = response
            .stream()
            .map_err(|e| Attempt::Failed(FailureKind::Connect, format!("no body: {e}")))?;
        match race(rest.next(), within).await {
            None => Err(Attempt::Failed(
                FailureKind::Timeout,
                "no first token within the try timeout".into(),
            )),
            Some(None) => Err(Attempt::Failed(
                FailureKind::Connect,
                "the stream ended before its first byte".into(),
            )),
            Some(Some(Err(e))) => Err(Attempt::Failed(
                FailureKind::Connect,
                format!("reading the stream: {e}"),
            )),
            Some(Some(Ok(first))) => Ok(Streamed { first, rest }),
        }
    }
}

/// An attempt's hold on an origin's in-flight slot; settling it tells the balancer how the
/// answer ended. Dropped unsettled (the client left mid-stream, so the runtime dropped the
/// stream that owned it) it is a cancellation: the slot is freed without judging the origin,
/// and the origin's request is aborted so that it stops generating an answer nobody reads
/// (workerd also cancels a subrequest whose body is dropped; the abort does not rely on it).
pub struct Lease {
    origins: Rc<Origins>,
    id: OriginId,
    /// Aborts the origin's request; taken by the first abort.
    controller: Option<AbortController>,
    settled: bool,
}

impl Lease {
    pub fn succeed(mut self) {
        self.settle(Outcome::Succeeded);
    }

    pub fn fail(mut self, kind: FailureKind) {
        self.settle(Outcome::Failed(kind));
    }

    /// Stops the origin's work on an answer nobody will read.
    fn abort(&mut self) {
        if let Some(controller) = self.controller.take() {
            controller.abort();
        }
    }

    fn settle(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        // A borrow is only ever held inside synchronous code, so this cannot collide; if it
        // somehow did, losing one in-flight count beats a panic.
        let Ok(mut balancer) = self.origins.balancer.try_borrow_mut() else {
            worker::console_error!("origin lease settled while the balancer was borrowed");
            return;
        };
        match outcome {
            Outcome::Succeeded => balancer.on_success(self.id, now()),
            Outcome::Failed(kind) => balancer.on_failure(self.id, kind, now()),
            Outcome::Cancelled => {
                balancer.on_cancelled(self.id, now());
                drop(balancer);
                self.abort();
            }
        }
    }
}

/// How the answer behind a lease ended.
enum Outcome {
    Succeeded,
    Failed(FailureKind),
    Cancelled,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.settle(Outcome::Cancelled);
    }
}

/// An answer and the time spent getting it (all attempts and backoff), for `Server-Timing`.
pub struct Reply<T> {
    pub answer: T,
    pub origin_ms: f64,
}

impl Origins {
    /// 404 when no configured origin serves `model` for `kind`, whatever their health.
    pub fn check_model(&self, kind: Kind, model: &str) -> Result<(), ApiError> {
        if self
            .balancer
            .borrow()
            .origins()
            .iter()
            .any(|o| o.serves(kind, model))
        {
            Ok(())
        } else {
            Err(ApiError::UnknownModel(model.to_string()))
        }
    }

    /// Sends a non-streamed request and returns the whole answer.
    pub async fn whole(self: &Rc<Self>, call: &Call<'_>) -> Result<Reply<Vec<u8>>, ApiError> {
        let (reply, lease) = self.send::<Whole>(call).await?;
        lease.succeed();
        Ok(reply)
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

    /// Embeds through the embeddings pool (for `/v1/embeddings` and for text queries).
    pub async fn embeddings(
        self: &Rc<Self>,
        request: &EmbeddingsRequest,
        region: &str,
        outbound: &Outbound,
    ) -> Result<Reply<Vec<u8>>, ApiError> {
        let call = Call {
            kind: Kind::Embeddings,
            model: &request.model,
            path: EMBEDDINGS_PATH,
            body: super::to_json(request)?,
            region: Some(region),
            affinity_key: None,
            outbound,
        };
        self.whole(&call).await
    }

    /// Sends a streamed request and returns once its first chunk is in; the lease must be
    /// settled when the stream ends.
    pub async fn stream(
        self: &Rc<Self>,
        call: &Call<'_>,
    ) -> Result<(Reply<Streamed>, Lease), ApiError> {
        self.send::<FirstChunk>(call).await
    }

    async fn send<R: Read>(
        self: &Rc<Self>,
        call: &Call<'_>,
    ) -> Result<(Reply<R::Out>, Lease), ApiError> {
        self.check_model(call.kind, call.model)?;
        let target = Target {
            kind: call.kind,
            model: call.model,
            region: call.region,
            affinity_key: call.affinity_key,
        };
        let began = now_ms();
        let mut plan = self.balancer.borrow_mut().begin(now());
        let mut last_failure = String::new();
        loop {
            let started = now();
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
                return Err(self.unavailable(
                    call,
                    &plan_summary(plan.attempts(), why),
                    &last_failure,
                ));
            };
            let controller = AbortController::default();
            let signal = controller.signal();
            let mut lease = Lease {
                origins: self.clone(),
                id,
                controller: Some(controller),
                settled: false,
            };
            let url = format!("{}{}", origin.url.trim_end_matches('/'), call.path);
            let headers = origin_headers::<R>(self.keys[id.0].as_deref(), call.outbound);
            let outcome =
                attempt::<R>(&origin.name, &url, headers, &call.body, timeout, &signal).await;
            let ended = now();
            match outcome {
                Ok(answer) => {
                    self.balancer.borrow_mut().on_first_byte(
                        id,
                        ended.saturating_sub(started),
                        &mut plan,
                        ended,
                    );
                    return Ok((
                        Reply {
                            answer,
                            origin_ms: now_ms() - began,
                        },
                        lease,
                    ));
                }
                Err(Attempt::Refused { status, body }) => {
                    lease.succeed();
                    return Err(refusal(&origin.name, status, &body));
                }
                Err(Attempt::Failed(kind, why)) => {
                    if kind == FailureKind::Timeout {
                        lease.abort();
                    }
                    lease.fail(kind);
                    last_failure = format!("{}: {why}", origin.name);
                    let decision = self.balancer.borrow_mut().should_retry(&plan, kind, ended);
                    match decision {
                        RetryDecision::Retry { after } => {
                            observe::record(|m| m.add(&ORIGIN_RETRIES, &[], 1.0));
                            Delay::from(after).await
                        }
                        RetryDecision::GiveUp(reason) => {
                            return Err(self.unavailable(
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

    fn unavailable(&self, call: &Call, summary: &str, last_failure: &str) -> ApiError {
        let kind = match call.kind {
            Kind::Chat => "chat",
            Kind::Embeddings => "embeddings",
        };
        let last = if last_failure.is_empty() {
            String::new()
        } else {
            format!("; last failure: {last_failure}")
        };
        ApiError::OriginsUnavailable(format!(
            "no {kind} origin for {:?} answered: {summary}{last}",
            call.model
        ))
    }
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

/// Every header an origin gets: a fixed allow-list built here, never copied from the client's
/// request. The values are ours (the request id is sanitised, the traceparent is rebuilt from
/// parsed ids), except the origin's own API key, a configured secret.
fn origin_headers<R: Read>(key: Option<&str>, outbound: &Outbound) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("accept", R::ACCEPT.to_string()),
        ("traceparent", outbound.traceparent.clone()),
        ("x-request-id", outbound.request_id.clone()),
    ];
    if let Some(key) = key {
        headers.push(("authorization", format!("Bearer {key}")));
    }
    headers
}

/// One attempt: the response head, then `R`'s part of the body, all within `timeout`. The time
/// to the response head is recorded as `origin`'s latency.
async fn attempt<R: Read>(
    origin: &str,
    url: &str,
    header_list: Vec<(&'static str, String)>,
    body: &str,
    timeout: Duration,
    signal: &AbortSignal,
) -> Result<R::Out, Attempt> {
    let connect = |e: worker::Error| Attempt::Failed(FailureKind::Connect, e.to_string());
    let headers = Headers::new();
    for (name, value) in &header_list {
        headers.set(name, value).map_err(connect)?;
    }
    let started = now_ms();
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(JsValue::from_str(body)));
    let request = Request::new_with_init(url, &init).map_err(connect)?;
    let until = now_ms() + timeout.as_secs_f64() * 1000.0;
    // The runtime's Response as is: making a `worker::Response` reads properties (`cf`,
    // `webSocket`) that an origin's answer never has, each a JS call.
    let init = web_sys::RequestInit::new();
    init.set_signal(Some(&**signal));
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let sent = JsFuture::from(global.fetch_with_request_and_init(request.inner(), &init));
    let response: web_sys::Response = match race(sent, timeout).await {
        None => {
            return Err(Attempt::Failed(
                FailureKind::Timeout,
                "no response within the try timeout".into(),
            ))
        }
        Some(response) => response
            .and_then(|r| r.dyn_into())
            .map_err(|e| connect(e.into()))?,
    };
    let latency = observe::seconds(now_ms() - started);
    observe::record(|m| m.observe(&ORIGIN_DURATION, &[("origin", origin)], latency));
    let status = response.status();
    let retry_after = response.headers().get("retry-after").ok().flatten();
    let left = Duration::from_secs_f64(((until - now_ms()) / 1000.0).max(0.0));
    match judge_origin(status, retry_after.as_deref(), now()) {
        Verdict::Answered => R::read(response, left).await,
        Verdict::Failed(kind) => Err(Attempt::Failed(kind, format!("answered {status}"))),
        Verdict::Refused => {
            let body = Whole::read(response, left).await.unwrap_or_default();
            Err(Attempt::Refused { status, body })
        }
    }
}
