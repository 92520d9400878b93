//! Routing: the per-request context the handlers share, and which handler answers each route
//! (the small ones — health, index listing and summary, metrics — answered here).
use std::rc::Rc;

use worker::{Context, Env, Response};

use super::clock::WorkerClock;
use super::config::{Config, Mode};
use super::http::{json, Incoming};
use super::writer::Writers;
use super::{cache, heap, inference, observe, origins, playground, publish, r2, search, writes};
use crate::api::{ApiError, IndexSummary, Route};
use crate::auth::Grant;
use crate::store::{Location, Store};
use crate::timing::Timing;

/// Per-request facts the handlers need.
pub(crate) struct Ctx {
    pub env: Env,
    /// The request's context, for work that outlives the answer (`waitUntil`).
    pub request: Rc<Context>,
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
    /// The `x-rerank` header: whether a requested rerank reordered the matches, or why not.
    pub rerank_status: Option<String>,
    /// The index the request searched, for the log line.
    pub index: Option<String>,
    /// What the caller's API key allows.
    pub grant: Grant,
    /// The `x-min-seq` header: reads must include every write up to this seq.
    pub min_seq: Option<u64>,
    pub origins: Option<Rc<origins::Origins>>,
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
        let home = self.home(&[]);
        Ok(self
            .store
            .pin(&self.source, &WorkerClock, index, &home)
            .await?)
    }

    /// A named version of an index the caller may read (the one its live writes apply on top of).
    pub async fn pin_version(
        &self,
        index: &str,
        version: &str,
    ) -> Result<crate::store::Pinned, ApiError> {
        self.grant.check_index(index)?;
        let home = self.home(&[]);
        Ok(self
            .store
            .pin_version(&self.source, &WorkerClock, index, version, &home)
            .await?)
    }

    /// The region serving this request, among `available` (a manifest's regions).
    pub fn home(&self, available: &[String]) -> String {
        self.config
            .regions
            .home(&self.location, self.forced_region.as_deref(), available)
    }
}

pub(crate) async fn route_to(
    route: Route,
    req: &Incoming,
    ctx: &mut Ctx,
) -> Result<Response, ApiError> {
    match route {
        Route::Health => json(&health(ctx)),
        Route::Indexes => {
            let home = ctx.home(&[]);
            let names = ctx.store.indexes(&ctx.source, &home).await?;
            json(&serde_json::json!({ "indexes": ctx.grant.visible(names) }))
        }
        Route::CreateIndex => json(&writes::create(req, ctx).await?),
        Route::Index(name) => {
            ctx.index = Some(name.clone());
            json(&index_summary(ctx, &name).await?)
        }
        Route::Upsert(name) => json(&writes::upsert(&name, req, ctx).await?),
        Route::Delete(name) => json(&writes::delete(&name, req, ctx).await?),
        Route::Search => json(&search::handle(req, ctx).await?),
        Route::Embeddings => inference::embeddings(req, ctx).await,
        Route::Rag => inference::rag(req, ctx).await,
        Route::ChatCompletions => inference::chat(req, ctx).await,
        Route::Metrics => metrics(ctx),
        Route::Playground(asset) => playground::respond(asset),
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
        filter_fields: m.filter_fields.clone(),
        embedding_model: super::search::text_model(ctx, m),
        writes: Writers::new(&ctx.env)?.of(name).state().await?,
    })
}

/// `GET /healthz`: what this isolate holds against its budget, beside the wasm linear memory it
/// has grown to (which never shrinks: its peak is what the isolate costs for its lifetime).
fn health(ctx: &Ctx) -> serde_json::Value {
    let held = ctx.store.held();
    let used = heap::heap_use();
    let views = super::config::views(&ctx.env).ok();
    serde_json::json!({
        "status": "ok",
        "serving_mode": if ctx.config.mode == Mode::Local { "local" } else { "durable" },
        "cached_shards": held.shards,
        "cached_bytes": held.shard_bytes,
        "loading_bytes": held.reserved_bytes,
        "cache_budget_bytes": held.budget_bytes,
        "wasm_memory_bytes": heap::wasm_memory_bytes(),
        "heap_live_bytes": used.live_bytes,
        "heap_small_bytes": used.small_bytes,
        "heap_page_run_bytes": used.page_run_bytes,
        "writes_bytes": views.as_ref().map_or(0, |v| v.bytes()),
        "writes_budget_bytes": views.as_ref().map_or(0, |v| v.capacity()),
        "segment_reads": views.map(|v| v.segment_reads()),
    })
}
