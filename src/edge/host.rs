//! SERVING_MODE=durable bindings: the `ShardHost` Durable Object that holds one shard replica (one
//! object per index/version/shard/region, placed with the region's location hint) and answers
//! with the retrieval engine over its own store ([`HostQuery::answer`]), and the entry worker's
//! [`ShardHosts`] transport to those objects.
use worker::*;

use super::clock::WorkerClock;
use super::{r2::R2, store, Config};
use crate::api::ApiError;
use crate::retrieve::{HostAnswer, HostQuery, Loaded, ShardHosts};

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
}

impl ShardHosts for DurableHosts {
    /// The object name makes one host per shard replica; the hint places it near its bucket.
    async fn ask(&self, query: HostQuery) -> std::result::Result<HostAnswer, String> {
        let name = format!(
            "{}/{}/{}/{}",
            query.index, query.version, query.shard, query.region
        );
        let call = async {
            let stub = self
                .ns
                .id_from_name(&name)?
                .get_stub_with_location_hint(&query.region)?;
            let mut init = RequestInit::new();
            init.with_method(Method::Post)
                .with_body(Some(serde_json::to_string(&query)?.into()));
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
