//! Cloudflare Workers glue, bindings only: the fetch entry point and the one place where
//! results and errors become HTTP responses (problem JSON, `x-request-id`, `Server-Timing`,
//! `Cache-Status`), are counted in the metrics and logged. Everything a request decides is
//! plain Rust below `edge`; the files here adapt the runtime to it:
//! `config` (vars, once per isolate), `http` (request plumbing), `routes` (which handler),
//! `clock` (timers), `heap` (the global allocator: shard buffers in page runs of their own),
//! `r2` (buckets as a blob `Source`), `host` (ShardHost objects), `writer` (the IndexWriter
//! object holding an index's write log), `origins` (inference subrequests), `access` (keys and
//! the RateLimiter object), `cache` (the Cache API), `observe` (metrics and log lines),
//! `search`, `writes`, `publish` and `inference` (the handlers).
mod access;
mod cache;
mod clock;
mod config;
mod heap;
mod host;
mod http;
mod inference;
mod observe;
mod origins;
mod playground;
mod publish;
mod r2;
mod routes;
mod search;
mod writer;
mod writes;

use std::rc::Rc;

use worker::*;

use crate::api::{url_path, ApiError, Route, UNMATCHED_ROUTE};
use crate::store::StoreError;
use crate::timing::Timing;
use crate::trace::TraceContext;
use config::store;
use http::{location, random_u64, request_id};
use routes::route_to;
// The names every handler file imports from `super`.
pub(crate) use clock::now_ms;
pub(crate) use config::{parsed, var, Config, Mode};
pub(crate) use http::{json, race, read_body, to_json, Incoming};
pub(crate) use routes::Ctx;

#[event(start)]
fn start() {
    // A panic aborts the isolate; at least say why in the log.
    std::panic::set_hook(Box::new(|info| console_error!("panic: {info}")));
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::UnknownIndex(name) => ApiError::UnknownIndex(name),
            StoreError::Unavailable(why) => ApiError::Unavailable(why),
        }
    }
}

/// What handling a request tells `fetch` for the response headers, metrics and log line.
struct Report {
    route: &'static str,
    timing: Timing,
    cache_status: Vec<String>,
    rerank_status: Option<String>,
    index: Option<String>,
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
        rerank_status: None,
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
    if let Some(rerank_status) = &report.rerank_status {
        headers.set("x-rerank", rerank_status)?;
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
    let request = Rc::new(context);
    let grant = access::admit(&req, &env, &config, &route).await?;
    let min_seq = match req.header("x-min-seq") {
        None => None,
        Some(text) => Some(text.trim().parse::<u64>().map_err(|_| {
            ApiError::Invalid(format!(
                "the x-min-seq header must be a seq (an integer), got {text:?}"
            ))
        })?),
    };
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
        cache: cache::ResponseCache::new(config.result_cache_ttl_s, request.clone()),
        request,
        config,
        env,
        timing: Timing::default(),
        outbound,
        cache_status: Vec::new(),
        rerank_status: None,
        index: None,
        grant,
        min_seq,
    };
    let response = route_to(route, &req, &mut ctx).await;
    // After the handler, whether it failed or not: an error's log line and headers need these too.
    report.timing = ctx.timing;
    report.cache_status = ctx.cache_status;
    report.rerank_status = ctx.rerank_status;
    report.index = ctx.index;
    response
}
