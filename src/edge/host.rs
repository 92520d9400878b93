//! SERVING_MODE=durable bindings: the `ShardHost` Durable Object that holds one shard replica (one
//! object per index/version/shard/region, placed with the region's location hint) and answers
//! with the retrieval engine over its own store ([`HostQuery::answer`]), and the entry worker's
//! [`ShardHosts`] transport to those objects; and [`report`], what each host of a version holds
//! in memory (`GET /v1/admin/indexes/{name}/hosts`).
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use worker::*;

use super::clock::WorkerClock;
use super::config::Mode;
use super::{heap, r2::R2, store, Config, Ctx};
use crate::api::ApiError;
use crate::retrieve::{HostAnswer, HostQuery, Loaded, ShardHosts, MAX_IN_FLIGHT};

pub const BINDING: &str = "SHARD_HOST";

/// The entry worker's way to its shard hosts: the `SHARD_HOST` namespace.
#[derive(Clone)]
pub struct DurableHosts {
    ns: ObjectNamespace,
}

impl DurableHosts {
    pub fn new(env: &Env) -> std::result::Result<DurableHosts, ApiError> {
        let ns = env
            .durable_object(BINDING)
            .map_err(|e| ApiError::Misconfigured(e.to_string()))?;
        Ok(DurableHosts { ns })
    }

    /// One call to the host `name`; the hint places a new host near its region's bucket.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        region: &str,
        path: &str,
        method: Method,
        body: Option<String>,
    ) -> std::result::Result<T, String> {
        let call = async {
            let stub = self
                .ns
                .id_from_name(name)?
                .get_stub_with_location_hint(region)?;
            let mut init = RequestInit::new();
            init.with_method(method).with_body(body.map(Into::into));
            let url = format!("https://shard-host{path}");
            let mut response = stub
                .fetch_with_request(Request::new_with_init(&url, &init)?)
                .await?;
            if response.status_code() != 200 {
                return Err(Error::RustError(format!(
                    "status {}: {}",
                    response.status_code(),
                    response.text().await?
                )));
            }
            response.json::<T>().await
        };
        call.await.map_err(|e| format!("shard host {name}: {e}"))
    }
}

impl ShardHosts for DurableHosts {
    async fn ask(&self, query: HostQuery) -> std::result::Result<HostAnswer, String> {
        let name = host_name(&query.index, &query.version, query.shard, &query.region);
        let body = serde_json::to_string(&query).map_err(|e| e.to_string())?;
        self.call(&name, &query.region, "/search", Method::Post, Some(body))
            .await
    }
}

/// The object name makes one host per shard replica.
fn host_name(index: &str, version: &str, shard: usize, region: &str) -> String {
    format!("{index}/{version}/{shard}/{region}")
}

/// What a shard host holds: its isolate's wasm memory and its store's shards against the budget.
#[derive(Debug, Serialize, Deserialize)]
pub struct HostMemory {
    pub wasm_memory_bytes: usize,
    pub cached_shards: usize,
    pub cached_bytes: usize,
    pub loading_bytes: usize,
    pub cache_budget_bytes: usize,
}

/// `GET /v1/admin/indexes/{name}/hosts`: the memory of the host of every shard of the live
/// version in the caller's region, asked at most [`MAX_IN_FLIGHT`] at a time.
pub async fn report(ctx: &Ctx, index: &str) -> std::result::Result<serde_json::Value, ApiError> {
    if ctx.config.mode != Mode::Durable {
        return Err(ApiError::Conflict(
            "shard hosts serve only with SERVING_MODE = \"durable\"".into(),
        ));
    }
    let pinned = ctx.pin(index).await?;
    let region = ctx.home(&pinned.manifest.regions);
    let hosts = DurableHosts::new(&ctx.env)?;
    let asked = futures::stream::iter(0..pinned.manifest.shards.len())
        .map(|shard| {
            let (hosts, name) = (
                hosts.clone(),
                host_name(index, &pinned.version, shard, &region),
            );
            let region = region.clone();
            async move {
                let memory: std::result::Result<HostMemory, String> = hosts
                    .call(&name, &region, "/memory", Method::Get, None)
                    .await;
                (shard, memory)
            }
        })
        .buffered(MAX_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let hosts: Vec<serde_json::Value> = asked
        .into_iter()
        .map(|(shard, memory)| match memory {
            Ok(memory) => serde_json::json!({"shard": shard, "memory": memory}),
            Err(error) => serde_json::json!({"shard": shard, "error": error}),
        })
        .collect();
    Ok(serde_json::json!({
        "index": index,
        "version": pinned.version,
        "region": region,
        "hosts": hosts,
    }))
}

#[durable_object]
pub struct ShardHost {
    env: Env,
}

impl DurableObject for ShardHost {
    fn new(_state: State, env: Env) -> Self {
        ShardHost { env }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        if req.path() == "/memory" {
            return match self.memory() {
                Ok(memory) => Response::from_json(&memory),
                Err(error) => Response::error(error.to_string(), error.status()),
            };
        }
        match self.answer(&mut req).await {
            Ok(answer) => Response::from_json(&answer),
            Err(error) => Response::error(error.to_string(), error.status()),
        }
    }
}

impl ShardHost {
    /// What this host's isolate holds (hosts placed in one isolate share its store).
    fn memory(&self) -> std::result::Result<HostMemory, ApiError> {
        let held = store(&self.env)?.held();
        Ok(HostMemory {
            wasm_memory_bytes: heap::wasm_memory_bytes(),
            cached_shards: held.shards,
            cached_bytes: held.shard_bytes,
            loading_bytes: held.reserved_bytes,
            cache_budget_bytes: held.budget_bytes,
        })
    }

    async fn answer(&self, req: &mut Request) -> std::result::Result<HostAnswer, ApiError> {
        let query: HostQuery = req
            .json()
            .await
            .map_err(|e| ApiError::Invalid(format!("host query: {e}")))?;
        let config = Config::for_isolate(&self.env)?;
        let store = store(&self.env)?;
        let source = R2::new(self.env.clone(), config.mentioned_regions());
        let pinned = store
            .pin_version(
                &source,
                &WorkerClock,
                &query.index,
                &query.version,
                &query.region,
            )
            .await?;
        let shards = Loaded {
            store,
            source,
            clock: WorkerClock,
            pinned: std::rc::Rc::new(pinned),
            home: query.region.clone(),
        };
        query.answer(&shards).await.map_err(ApiError::Unavailable)
    }
}
