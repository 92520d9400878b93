//! Cloudflare Workers glue: the fetch entry point, configuration from vars, and the one place
//! where results and errors become HTTP responses (problem JSON, `x-request-id`, `Server-Timing`,
//! `Cache-Status`), are counted in the metrics and logged.
mod access;
mod cache;
mod host;
mod inference;
mod observe;
mod origins;
mod publish;
mod r2;
mod search;

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use futures::future::{select, Either};
use futures::StreamExt;
use serde::Serialize;
use worker::wasm_bindgen::JsCast;
use worker::*;

use crate::api::{collect_body, url_path, ApiError, IndexSummary, Route, UNMATCHED_ROUTE};
use crate::auth::Grant;
use crate::rag::DEFAULT_SYSTEM;
use crate::store::{Location, RegionMap, Store, StoreError};
use crate::trace::TraceContext;

/// Default shard cache budget per isolate (`CACHE_BYTES` overrides): leaves headroom in the
/// 128 MB isolate for the wasm heap's other users and the request in flight.
const CACHE_BYTES_DEFAULT: usize = 96 << 20;
const DEADLINE_MS_DEFAULT: u64 = 5000;
const CURRENT_TTL_MS_DEFAULT: f64 = 1000.0;
/// The model the embeddings pool serves for text queries; the shipped indexes use its vectors.
const EMBEDDING_MODEL_DEFAULT: &str = "all-MiniLM-L6-v2";
/// Prompt budget for system text plus passages (approximate tokens): five 90-word passages with
/// room to spare, well inside small models' context windows.
const RAG_CONTEXT_TOKENS_DEFAULT: usize = 2000;
/// How long search results and query embeddings stay in the response cache (`0` turns it off):
/// an index version's answers never change, so this only bounds the cache's memory of old
/// queries (and, for embeddings, of a model an origin might swap under the same name).
const RESULT_CACHE_TTL_S_DEFAULT: u32 = 300;
/// A body still arriving after this long is refused (408): a client trickling bytes must not
/// hold a request open for the platform's whole wall-time limit.
const BODY_TIMEOUT_MS_DEFAULT: u64 = 10_000;

thread_local! {
    // One store per isolate: shards fetched by one request serve the following ones.
    static STORE: OnceCell<Rc<Store>> = const { OnceCell::new() };
    static CONFIG: RefCell<Option<Rc<Config>>> = const { RefCell::new(None) };
}

#[event(start)]
fn start() {
    // A panic aborts the isolate; at least say why in the log.
    std::panic::set_hook(Box::new(|info| console_error!("panic: {info}")));
}

/// Milliseconds with sub-millisecond resolution where the runtime offers it.
pub(crate) fn now_ms() -> f64 {
    js_sys::global()
        .dyn_into::<web_sys::WorkerGlobalScope>()
        .ok()
        .and_then(|scope| scope.performance())
        .map(|p| p.now())
        .unwrap_or_else(|| Date::now().as_millis() as f64)
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    Local,
    Durable,
}

/// Everything read from vars, once per isolate (see `Config::for_isolate`).
pub(crate) struct Config {
    pub dev: bool,
    pub regions: RegionMap,
    pub mode: Mode,
    pub deadline_ms: u64,
    pub embedding_model: String,
    /// Instruction placed before the numbered passages (`RAG_SYSTEM`).
    pub rag_system: String,
    pub context_tokens: usize,
    pub result_cache_ttl_s: u32,
    pub body_timeout_ms: u64,
}

fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}

fn parsed<T: std::str::FromStr>(env: &Env, name: &str, default: T) -> Result<T, ApiError> {
    match var(env, name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| ApiError::Misconfigured(format!("{name} = {v:?}"))),
    }
}

impl Config {
    /// Read at the isolate's first request: vars do not change under a running isolate, and
    /// reading them (a dozen JS calls and a JSON parse) is not free. An invalid configuration is
    /// not kept, so every request fails naming the var until the deployment is fixed.
    pub fn for_isolate(env: &Env) -> Result<Rc<Config>, ApiError> {
        if let Some(config) = CONFIG.with(|cell| cell.borrow().clone()) {
            return Ok(config);
        }
        let config = Rc::new(Config::from_env(env)?);
        CONFIG.with(|cell| *cell.borrow_mut() = Some(config.clone()));
        Ok(config)
    }

    fn from_env(env: &Env) -> Result<Config, ApiError> {
        let regions = RegionMap::from_json(
            &var(env, "REGION_MAP").unwrap_or_else(|| r#"{"default":"weur"}"#.into()),
        )
        .map_err(ApiError::Misconfigured)?;
        let mode = match var(env, "SERVING_MODE").as_deref() {
            None | Some("local") => Mode::Local,
            Some("durable") => Mode::Durable,
            Some(other) => {
                return Err(ApiError::Misconfigured(format!("SERVING_MODE = {other:?}")))
            }
        };
        Ok(Config {
            dev: var(env, "ENVIRONMENT").as_deref() == Some("dev"),
            regions,
            mode,
            deadline_ms: parsed(env, "FANOUT_DEADLINE_MS", DEADLINE_MS_DEFAULT)?,
            embedding_model: var(env, "EMBEDDING_MODEL")
                .unwrap_or_else(|| EMBEDDING_MODEL_DEFAULT.into()),
            rag_system: var(env, "RAG_SYSTEM").unwrap_or_else(|| DEFAULT_SYSTEM.into()),
            context_tokens: parsed(env, "RAG_CONTEXT_TOKENS", RAG_CONTEXT_TOKENS_DEFAULT)?,
            result_cache_ttl_s: parsed(env, "RESULT_CACHE_TTL_S", RESULT_CACHE_TTL_S_DEFAULT)?,
            body_timeout_ms: parsed(env, "BODY_TIMEOUT_MS", BODY_TIMEOUT_MS_DEFAULT)?,
        })
    }

    /// Every region the table can answer with: the candidates for bucket bindings.
    fn mentioned_regions(&self) -> Vec<String> {
        let mut all = vec![self.regions.default.clone()];
        let tables = [
            &self.regions.colo,
            &self.regions.region,
            &self.regions.continent,
        ];
        for region in tables.into_iter().flat_map(|t| t.values()) {
            if !all.contains(region) {
                all.push(region.clone());
            }
        }
        all
    }
}

/// This isolate's store; its vars are read when it is made.
pub(crate) fn store(env: &Env) -> Result<Rc<Store>, ApiError> {
    if let Some(store) = STORE.with(|cell| cell.get().cloned()) {
        return Ok(store);
    }
    let cache_bytes = parsed(env, "CACHE_BYTES", CACHE_BYTES_DEFAULT)?;
    let ttl = parsed(env, "CURRENT_TTL_MS", CURRENT_TTL_MS_DEFAULT)?;
    Ok(STORE.with(|cell| {
        cell.get_or_init(|| Rc::new(Store::new(cache_bytes, ttl)))
            .clone()
    }))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::UnknownIndex(name) => ApiError::UnknownIndex(name),
            StoreError::Unavailable(why) => ApiError::Unavailable(why),
        }
    }
}

/// Durations for `Server-Timing`, in milliseconds. `embed` and `origin` are the time spent
/// waiting for the embeddings and chat pools (to the first chunk, for streamed answers), so that
/// the worker's own share of a request is the total minus those.
#[derive(Default, Debug, Clone, Copy, Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Timing {
    pub fetch: f64,
    pub validate: f64,
    pub search: f64,
    pub merge: f64,
    pub embed: f64,
    pub origin: f64,
}

impl Timing {
    fn header(&self) -> String {
        format!(
            "fetch;dur={:.3}, validate;dur={:.3}, search;dur={:.3}, merge;dur={:.3}, embed;dur={:.3}, origin;dur={:.3}",
            self.fetch, self.validate, self.search, self.merge, self.embed, self.origin
        )
    }

    /// Shards load and are searched concurrently: the slowest load is what the request waited
    /// for, while validation and search run on the one thread and add up.
    pub fn absorb(&mut self, other: &Timing) {
        self.fetch = self.fetch.max(other.fetch);
        self.validate += other.validate;
        self.search += other.search;
    }
}

/// Per-request facts the handlers need.
pub(crate) struct Ctx {
    pub env: Env,
    pub config: Rc<Config>,
    pub store: Rc<Store>,
    pub source: r2::R2,
    pub location: Location,
    pub forced_region: Option<String>,
    pub timing: Timing,
    /// What origins are told of this request (request id, trace context).
    pub outbound: origins::Outbound,
    pub cache: cache::ResponseCache,
    /// `Cache-Status` members, nearest the origin first (RFC 9211).
    pub cache_status: Vec<String>,
    /// The index the request searched, for the log line.
    pub index: Option<String>,
    /// What the caller's API key allows.
    pub grant: Grant,
    origins: Option<Rc<origins::Origins>>,
}

impl Ctx {
    /// The inference origins, which the route being served needs.
    pub fn origins(&self) -> Result<Rc<origins::Origins>, ApiError> {
        self.origins.clone().ok_or_else(|| {
            ApiError::Misconfigured(
                "ORIGINS is not set: this deployment has no inference origins".into(),
            )
        })
    }

    /// The live version of an index the caller may read. Every route that reads an index comes
    /// through here, and the grant is checked before the store is asked, so that an unknown
    /// index and another tenant's give the same 403.
    pub async fn pin(&self, index: &str) -> Result<crate::store::Pinned, ApiError> {
        self.grant.check_index(index)?;
        Ok(self.store.pin(&self.source, index, &self.home(&[])).await?)
    }

    /// The region serving this request, among `available` (a manifest's regions).
    pub fn home(&self, available: &[String]) -> String {
        self.config
            .regions
            .home(&self.location, self.forced_region.as_deref(), available)
    }
}

/// What handling a request tells `fetch` for the response headers, metrics and log line.
struct Report {
    route: &'static str,
    timing: Timing,
    cache_status: Vec<String>,
    index: Option<String>,
}

/// The client's request as the runtime hands it over. Not `worker::Request`: making one reads
/// `request.cf` (in a CPU profile the costliest JS call of a request: workerd makes the object
/// from JSON on each read), which `location` then reads again for the three fields it needs.
pub(crate) struct Incoming {
    raw: web_sys::Request,
    headers: web_sys::Headers,
    pub method: String,
}

impl Incoming {
    fn new(raw: web_sys::Request) -> Incoming {
        Incoming {
            headers: raw.headers(),
            method: raw.method(),
            raw,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).ok().flatten()
    }
}

#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, context: Context) -> Result<Response> {
    let started = now_ms();
    let req = Incoming::new(req);
    let request_id = request_id(&req);
    let trace =
        TraceContext::continue_or_start(req.header("traceparent").as_deref(), &mut random_u64);
    let method = req.method.clone();
    let outbound = origins::Outbound {
        request_id: request_id.clone(),
        traceparent: trace.traceparent(),
    };
    let mut report = Report {
        route: UNMATCHED_ROUTE,
        timing: Timing::default(),
        cache_status: Vec::new(),
        index: None,
    };
    let outcome = handle(req, env, context, outbound, &mut report).await;
    let (mut response, error) = match outcome {
        Ok(response) => (response, None),
        Err(error) => {
            let problem = error.problem(&request_id);
            let mut response = Response::from_json(&problem)?.with_status(error.status());
            response
                .headers_mut()
                .set("content-type", "application/problem+json")?;
            for (name, value) in error.headers() {
                response.headers_mut().set(name, &value)?;
            }
            (response, Some(problem))
        }
    };
    let cache_status = (!report.cache_status.is_empty()).then(|| report.cache_status.join(", "));
    let headers = response.headers_mut();
    headers.set("x-request-id", &request_id)?;
    headers.set("server-timing", &report.timing.header())?;
    if let Some(cache_status) = &cache_status {
        headers.set("cache-status", cache_status)?;
    }
    observe::finish(&observe::Finished {
        request_id: &request_id,
        trace_id: &trace.trace_id(),
        method: &method,
        route: report.route,
        status: response.status_code(),
        duration_ms: now_ms() - started,
        index: report.index.as_deref(),
        cache_status: cache_status.as_deref(),
        error: error.as_ref().map(|p| (p.kind.as_str(), p.detail.as_str())),
    });
    Ok(response)
}

/// 64 random bits (trace and span ids; not secrets).
fn random_u64() -> u64 {
    let part = || (js_sys::Math::random() * u32::MAX as f64) as u64;
    (part() << 32) | part()
}

async fn handle(
    req: Incoming,
    env: Env,
    context: Context,
    outbound: origins::Outbound,
    report: &mut Report,
) -> Result<Response, ApiError> {
    let route = Route::parse(&req.method, url_path(&req.raw.url()))?;
    report.route = route.label();
    let config = Config::for_isolate(&env)?;
    let grant = access::admit(&req, &env, &config, &route).await?;
    let mut ctx = Ctx {
        source: r2::R2::new(env.clone(), config.mentioned_regions()),
        store: store(&env)?,
        location: location(&req),
        forced_region: if config.dev {
            req.header("x-edge-region")
        } else {
            None
        },
        // Parsed at the first request (and kept per isolate), so a bad ORIGINS fails loudly at once.
        origins: origins::for_isolate(&env)?,
        cache: cache::ResponseCache::new(config.result_cache_ttl_s, context),
        config,
        env,
        timing: Timing::default(),
        outbound,
        cache_status: Vec::new(),
        index: None,
        grant,
    };
    let response = route_to(route, &req, &mut ctx).await;
    // After the handler, whether it failed or not: an error's log line and headers need these too.
    report.timing = ctx.timing;
    report.cache_status = ctx.cache_status;
    report.index = ctx.index;
    response
}

async fn route_to(route: Route, req: &Incoming, ctx: &mut Ctx) -> Result<Response, ApiError> {
    match route {
        Route::Health => json(&serde_json::json!({
            "status": "ok",
            "serving_mode": if ctx.config.mode == Mode::Local { "local" } else { "durable" },
            "cached_shards": ctx.store.shard_count(),
            "cached_bytes": ctx.store.shard_bytes(),
        })),
        Route::Indexes => {
            let home = ctx.home(&[]);
            let names = ctx.store.indexes(&ctx.source, &home).await?;
            json(&serde_json::json!({ "indexes": ctx.grant.visible(names) }))
        }
        Route::Index(name) => {
            ctx.index = Some(name.clone());
            json(&index_summary(ctx, &name).await?)
        }
        Route::Search => json(&search::handle(req, ctx).await?),
        Route::Embeddings => inference::embeddings(req, ctx).await,
        Route::Rag => inference::rag(req, ctx).await,
        Route::ChatCompletions => inference::chat(req, ctx).await,
        Route::Metrics => metrics(ctx),
        Route::Admin(admin) => publish::handle(admin, req, ctx).await,
    }
}

/// `GET /metrics`: this isolate's counters in the Prometheus text format.
fn metrics(ctx: &Ctx) -> Result<Response, ApiError> {
    let text = observe::render(&ctx.store, ctx.origins.as_deref());
    let mut response = Response::ok(text)
        .map_err(|e| ApiError::Misconfigured(format!("building /metrics: {e}")))?;
    response
        .headers_mut()
        .set("content-type", crate::metrics::CONTENT_TYPE)
        .map_err(|e| ApiError::Misconfigured(format!("building /metrics: {e}")))?;
    Ok(response)
}

async fn index_summary(ctx: &Ctx, name: &str) -> Result<IndexSummary, ApiError> {
    let pinned = ctx.pin(name).await?;
    let m = &pinned.manifest;
    Ok(IndexSummary {
        name: m.name.clone(),
        version: pinned.version.clone(),
        dims: m.dims,
        metric: m.metric.as_str().to_string(),
        shards: m.shards.len(),
        vectors: m.count,
        bytes: m.shards.iter().map(|s| s.bytes).sum(),
        regions: m.regions.clone(),
    })
}

fn json<T: Serialize>(value: &T) -> Result<Response, ApiError> {
    Response::from_json(value)
        .map_err(|e| ApiError::Misconfigured(format!("serialising a response: {e}")))
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<String, ApiError> {
    serde_json::to_string(value)
        .map_err(|e| ApiError::Misconfigured(format!("serialising a request: {e}")))
}

/// The body and its content type. An announced oversized body is refused before reading, an
/// unannounced one as soon as it passes the limit (so it is never held whole), and a body that
/// has not arrived within `BODY_TIMEOUT_MS` with 408.
/// `future`, unless `limit` passes first.
pub(crate) async fn race<F: std::future::Future>(future: F, limit: Duration) -> Option<F::Output> {
    match select(std::pin::pin!(future), Delay::from(limit)).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}

pub(crate) async fn read_body(
    req: &Incoming,
    ctx: &Ctx,
    limit: usize,
) -> Result<(Option<String>, Vec<u8>), ApiError> {
    let announced = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = announced.filter(|&size| size > limit) {
        return Err(ApiError::TooLarge { size, limit });
    }
    let content_type = req.header("content-type");
    // No body at all is an empty one (which then fails as JSON).
    let Some(raw) = req.raw.body() else {
        return Ok((content_type, Vec::new()));
    };
    let mut body_stream = wasm_streams::ReadableStream::from_raw(raw);
    let mut reader = body_stream.get_reader().into_stream();
    let mut chunks = (&mut reader).map(|chunk| {
        chunk
            .map(|bytes| js_sys::Uint8Array::new(&bytes).to_vec())
            .map_err(|e| format!("{e:?}"))
    });
    let ms = ctx.config.body_timeout_ms;
    let outcome = collect_body(
        &mut chunks,
        limit,
        Delay::from(Duration::from_millis(ms)),
        ms,
    )
    .await;
    let stop_reading = match outcome {
        Err(ApiError::BodyTimeout { .. }) => true,
        // The rest of an oversized body is read and dropped (in JS, never copied into wasm memory)
        // within another deadline, so that the client gets the 413 after its upload rather than
        // a connection reset in the middle of it.
        Err(ApiError::TooLarge { .. }) => {
            let drain = async { while let Some(Ok(_)) = reader.next().await {} };
            race(drain, Duration::from_millis(ms)).await.is_none()
        }
        _ => false,
    };
    if stop_reading {
        // A read is still pending: cancel the body, so the runtime stops waiting for it.
        let _ = reader.cancel().await;
    }
    Ok((content_type, outcome?))
}

/// The caller's id when it is a sane token (so traces join up), else a fresh random one.
fn request_id(req: &Incoming) -> String {
    let given = req.header("x-request-id").unwrap_or_default();
    let sane = !given.is_empty()
        && given.len() <= 64
        && given
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if sane {
        given
    } else {
        let part = || (js_sys::Math::random() * u32::MAX as f64) as u32;
        format!("{:08x}{:08x}", part(), part())
    }
}

/// Read through Reflect instead of `worker::Cf`, whose getters unwrap and would panic on the
/// partial `cf` object a local runtime supplies.
fn location(req: &Incoming) -> Location {
    let cf = js_sys::Reflect::get(&req.raw, &"cf".into()).unwrap_or_default();
    let field = |name: &str| {
        if cf.is_object() {
            js_sys::Reflect::get(&cf, &name.into())
                .ok()
                .and_then(|v| v.as_string())
        } else {
            None
        }
    };
    Location {
        colo: field("colo"),
        region: field("regionCode"),
        continent: field("continent"),
    }
}
