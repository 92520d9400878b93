//! The bindings of the inference origins for this isolate: their configuration from env, the
//! `fetch`-based transport that makes one attempt (`AbortController`, the `Whole` and
//! `FirstChunk` readers) and the metrics hooks. The retry/lease loop itself is plain Rust,
//! `balancer::dispatch`, on the worker's clock (`edge::clock`).
//!
//! The dispatcher lives per isolate so that the latency, health and Retry-After state one request
//! learns steers the next. A `Retry-After` date is turned into a wait here, against wall time.
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

use futures::StreamExt;
use worker::js_sys;
use worker::js_sys::futures::JsFuture;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{web_sys, ByteStream, Env, Headers, Method, Request, RequestInit, Response};

use super::clock::{unix_time, WorkerClock};
use super::{now_ms, observe, parsed, race, var};
use crate::api::{judge_origin, ApiError, Verdict};
use crate::balancer::dispatch::{
    self, Abort, Attempted, Dispatcher, Failure, Hooks, OriginRequest, Transport,
};
pub use crate::balancer::dispatch::{Call, Health, Outbound, Reply};
use crate::balancer::{
    parse_affinity, parse_origins, Balancer, FailureKind, Kind, Policy, Routing,
};
use crate::metrics::{ORIGIN_DURATION, ORIGIN_RETRIES};
use crate::rag::EmbeddingsRequest;
use crate::rerank::RERANK_PATH;

pub const CHAT_PATH: &str = "/v1/chat/completions";
pub const EMBEDDINGS_PATH: &str = "/v1/embeddings";

thread_local! {
    static ORIGINS: RefCell<Option<Rc<Origins>>> = const { RefCell::new(None) };
}

/// This isolate's origins: the dispatcher on the worker's clock.
pub struct Origins(Rc<Dispatcher<WorkerClock>>);

/// A streamed answer's hold on its origin's slot (see `dispatch::Lease`).
pub type Lease = dispatch::Lease<WorkerClock, FetchAbort>;

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
    let balancer = Balancer::new(configs, routing, affinity, policy, seed);
    let origins = Rc::new(Origins(Rc::new(Dispatcher::new(
        balancer,
        keys,
        WorkerClock,
    ))));
    ORIGINS.with(|cell| *cell.borrow_mut() = Some(origins.clone()));
    Ok(Some(origins))
}

/// Aborts one attempt's `fetch`. `None` if the runtime could not make a controller: the attempt
/// then cannot be aborted (workerd still cancels a subrequest whose body is dropped).
pub struct FetchAbort(Option<web_sys::AbortController>);

impl Abort for FetchAbort {
    fn abort(&self) {
        if let Some(controller) = &self.0 {
            controller.abort();
        }
    }
}

/// The worker's metrics: retries, and each origin's time to its response head.
struct Metrics;

impl Hooks for Metrics {
    fn retried(&self) {
        observe::record(|m| m.add(&ORIGIN_RETRIES, &[], 1.0));
    }

    fn head(&self, origin: &str, after: Duration) {
        observe::record(|m| {
            m.observe(&ORIGIN_DURATION, &[("origin", origin)], after.as_secs_f64())
        });
    }
}

impl Origins {
    /// 404 when no configured origin serves `model` for `kind`, whatever their health.
    pub fn check_model(&self, kind: Kind, model: &str) -> Result<(), ApiError> {
        Ok(self.0.check_model(kind, model)?)
    }

    /// Sends a non-streamed request and returns the whole answer.
    pub async fn whole(&self, call: &Call<'_>) -> Result<Reply<Vec<u8>>, ApiError> {
        let (reply, lease) = self
            .0
            .send(&Fetch::<Whole>(PhantomData), call, &Metrics)
            .await?;
        lease.succeed();
        Ok(reply)
    }

    /// Each origin's name and health, in configuration order.
    pub fn health(&self) -> Vec<Health> {
        self.0.health()
    }

    /// Embeds through the embeddings pool (for `/v1/embeddings` and for text queries).
    pub async fn embeddings(
        &self,
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

    /// Scores a search's candidates through the reranker pool (`body`: a
    /// [`crate::rerank::RerankRequest`]).
    pub async fn rerank(
        &self,
        model: &str,
        body: String,
        region: &str,
        outbound: &Outbound,
    ) -> Result<Reply<Vec<u8>>, ApiError> {
        let call = Call {
            kind: Kind::Rerank,
            model,
            path: RERANK_PATH,
            body,
            region: Some(region),
            affinity_key: None,
            outbound,
        };
        self.whole(&call).await
    }

    /// Sends a streamed request and returns once its first chunk is in; the lease must be
    /// settled when the stream ends.
    pub async fn stream(&self, call: &Call<'_>) -> Result<(Reply<Streamed>, Lease), ApiError> {
        Ok(self
            .0
            .send(&Fetch::<FirstChunk>(PhantomData), call, &Metrics)
            .await?)
    }
}

/// How much of an answer an attempt reads before it counts as the first byte: the point after
/// which nothing is retried, because the client may already have bytes.
trait Read {
    type Out;
    /// The `accept` header of the request.
    const ACCEPT: &'static str;
    async fn read(response: web_sys::Response, within: Duration) -> Result<Self::Out, Failure>;
}

/// A non-streamed answer is read whole: until it is, the client has nothing, so a failure while
/// reading it is still safe to retry.
struct Whole;

impl Read for Whole {
    type Out = Vec<u8>;
    const ACCEPT: &'static str = "application/json";
    async fn read(response: web_sys::Response, within: Duration) -> Result<Vec<u8>, Failure> {
        let failed = |e: JsValue| {
            Failure::Failed(FailureKind::Connect, format!("reading the answer: {e:?}"))
        };
        // `arrayBuffer()`: the runtime collects the body in one call, rather than a JS round trip
        // per chunk and a lock release through a stream reader.
        let whole = JsFuture::from(response.array_buffer().map_err(failed)?);
        match race(whole, within).await {
            None => Err(Failure::Failed(
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
    async fn read(response: web_sys::Response, within: Duration) -> Result<Streamed, Failure> {
        let mut response = Response::from(response);
        let mut rest = response
            .stream()
            .map_err(|e| Failure::Failed(FailureKind::Connect, format!("no body: {e}")))?;
        match race(rest.next(), within).await {
            None => Err(Failure::Failed(
                FailureKind::Timeout,
                "no first token within the try timeout".into(),
            )),
            Some(None) => Err(Failure::Failed(
                FailureKind::Connect,
                "the stream ended before its first byte".into(),
            )),
            Some(Some(Err(e))) => Err(Failure::Failed(
                FailureKind::Connect,
                format!("reading the stream: {e}"),
            )),
            Some(Some(Ok(first))) => Ok(Streamed { first, rest }),
        }
    }
}

/// One attempt by `fetch`: the response head, then `R`'s part of the body, all within the
/// request's timeout.
struct Fetch<R>(PhantomData<R>);

impl<R: Read> Transport for Fetch<R> {
    type Answer = R::Out;
    type Abort = FetchAbort;
    const ACCEPT: &'static str = R::ACCEPT;

    fn abort_handle(&self) -> FetchAbort {
        FetchAbort(web_sys::AbortController::new().ok())
    }

    async fn attempt(&self, request: &OriginRequest<'_>, abort: &FetchAbort) -> Attempted<R::Out> {
        let started = now_ms();
        let until = started + request.timeout.as_secs_f64() * 1000.0;
        let response = match response_head(request, abort).await {
            Ok(response) => response,
            Err(failure) => {
                return Attempted {
                    head_after: None,
                    result: Err(failure),
                }
            }
        };
        let head_after = Duration::from_secs_f64(((now_ms() - started) / 1000.0).max(0.0));
        let status = response.status();
        let retry_after = response.headers().get("retry-after").ok().flatten();
        let left = Duration::from_secs_f64(((until - now_ms()) / 1000.0).max(0.0));
        let result = match judge_origin(status, retry_after.as_deref(), unix_time()) {
            Verdict::Answered => R::read(response, left).await,
            Verdict::Failed(kind) => Err(Failure::Failed(kind, format!("answered {status}"))),
            Verdict::Refused => {
                let body = Whole::read(response, left).await.unwrap_or_default();
                Err(Failure::Refused { status, body })
            }
        };
        Attempted {
            head_after: Some(head_after),
            result,
        }
    }
}

/// Sends `request` and waits, within its timeout, for the response head.
async fn response_head(
    request: &OriginRequest<'_>,
    abort: &FetchAbort,
) -> Result<web_sys::Response, Failure> {
    let connect = |e: worker::Error| Failure::Failed(FailureKind::Connect, e.to_string());
    let headers = Headers::new();
    for (name, value) in &request.headers {
        headers.set(name, value).map_err(connect)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(JsValue::from_str(request.body)));
    let outgoing = Request::new_with_init(&request.url, &init).map_err(connect)?;
    // The runtime's Response as is: making a `worker::Response` reads properties (`cf`,
    // `webSocket`) that an origin's answer never has, each a JS call.
    let init = web_sys::RequestInit::new();
    if let Some(controller) = &abort.0 {
        init.set_signal(Some(&controller.signal()));
    }
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let sent = JsFuture::from(global.fetch_with_request_and_init(outgoing.inner(), &init));
    match race(sent, request.timeout).await {
        None => Err(Failure::Failed(
            FailureKind::Timeout,
            "no response within the try timeout".into(),
        )),
        Some(response) => response
            .and_then(|r| r.dyn_into())
            .map_err(|e| connect(e.into())),
    }
}
