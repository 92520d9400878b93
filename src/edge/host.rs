//! SERVING_MODE=durable: the `ShardHost` Durable Object that holds one shard replica (one object
//! per index/version/shard/region, placed with the region's location hint), and the entry
//! worker's call to it.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use worker::*;

use super::search::search_loaded;
use super::{r2::R2, store, Config, Timing};
use crate::api::{ApiError, Match};
use crate::shard::{Filter, SearchParams};

pub const BINDING: &str = "SHARD_HOST";

/// What the entry worker asks a host: the version is pinned by the entry worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostQuery {
    pub index: String,
    pub version: String,
    pub shard: usize,
    pub region: String,
    pub vector: Vec<f32>,
    pub k: usize,
    pub ef: usize,
    pub filter: Option<Map<String, Value>>,
}

#[derive(Serialize, Deserialize)]
pub struct HostMatch {
    pub ord: u32,
    pub distance: f32,
    pub found: Match,
}

#[derive(Serialize, Deserialize)]
pub struct HostAnswer {
    pub matches: Vec<HostMatch>,
    pub timing: Timing,
}

/// The object name makes one host per shard replica; the hint places it near its bucket.
pub async fn ask(
    ns: &ObjectNamespace,
    query: &HostQuery,
) -> std::result::Result<HostAnswer, String> {
    let name = format!(
        "{}/{}/{}/{}",
        query.index, query.version, query.shard, query.region
    );
    let call = async {
        let stub = ns
            .id_from_name(&name)?
            .get_stub_with_location_hint(&query.region)?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_body(Some(serde_json::to_string(query)?.into()));
        let mut response = stub
            .fetch_with_request(Request::new_with_init("https://shard-host/search", &init)?)
            .await?;
        if response.status_code() != 200 {
            return Err(Error::RustError(format!(
                "status {}: {}",
                response.status_code(),
                response.text().await?
            )));
        }
        response.json::<HostAnswer>().await
    };
    call.await.map_err(|e| format!("shard host {name}: {e}"))
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
        match self.answer(&mut req).await {
            Ok(answer) => Response::from_json(&answer),
            Err(error) => Response::error(error.to_string(), error.status()),
        }
    }
}

impl ShardHost {
    async fn answer(&self, req: &mut Request) -> std::result::Result<HostAnswer, ApiError> {
        let query: HostQuery = req
            .json()
            .await
            .map_err(|e| ApiError::Invalid(format!("host query: {e}")))?;
        let config = Config::for_isolate(&self.env)?;
        let store = store(&self.env)?;
        let source = R2::new(self.env.clone(), config.mentioned_regions());
        let pinned = store
            .pin_version(&source, &query.index, &query.version, &query.region)
            .await?;
        let got = store
            .shard(&source, &pinned, query.shard, &query.region)
            .await?;
        let params = SearchParams {
            k: query.k,
            ef: query.ef,
            filter: query.filter.map(|equals| Filter { equals }),
        };
        let (hits, timing) =
            search_loaded(&got, &query.vector, &params).map_err(ApiError::Unavailable)?;
        let shard_name = got.value.shard.meta().shard_name;
        let matches = hits
            .into_iter()
            .map(|hit| {
                let passage = got
                    .value
                    .shard
                    .passage(hit.ord)
                    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
                let score = pinned.manifest.metric.score(hit.distance);
                Ok(HostMatch {
                    ord: hit.ord,
                    distance: hit.distance,
                    found: Match::new(passage, score, &shard_name),
                })
            })
            .collect::<std::result::Result<_, ApiError>>()?;
        Ok(HostAnswer { matches, timing })
    }
}
