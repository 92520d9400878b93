//! The response cache: JSON values (search results, query embeddings) kept in the data
//! centre's Cache API under the synthetic keys of `cache_key`, for `RESULT_CACHE_TTL_S` seconds.
//! A cache that fails is a miss, never a failed request. (On `*.workers.dev` hostnames the Cache
//! API stores nothing, so every lookup misses there; it works on a zone route and under
//! `wrangler dev`.)
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::{console_warn, js_sys, Cache, Context, Response};

use super::observe;
use crate::metrics::RESPONSE_CACHE;

/// Which cache a lookup is for, as metrics and `Cache-Status` name it.
#[derive(Clone, Copy)]
pub enum Which {
    Search,
    Embedding,
}

impl Which {
    fn label(self) -> &'static str {
        match self {
            Which::Search => "search",
            Which::Embedding => "embedding",
        }
    }

    /// The cache's name in `Cache-Status` (RFC 9211).
    fn status_name(self) -> &'static str {
        match self {
            Which::Search => "edgerag-search",
            Which::Embedding => "edgerag-embed",
        }
    }
}

pub struct ResponseCache {
    /// `None`: disabled (`RESULT_CACHE_TTL_S = 0`) or no Cache API in this runtime.
    ttl_s: Option<u32>,
    /// The request's context, which writes outlive: the answer does not wait for them.
    request: Rc<Context>,
}

/// How a value was found or made, for `Cache-Status` (RFC 9211).
pub enum Outcome {
    Hit,
    /// The cache is off.
    Bypass,
    /// Looked up, not found, computed; `detail` says why it was not stored when that was by
    /// rule (a partial answer).
    Miss {
        stored: bool,
        detail: Option<&'static str>,
    },
}

impl Outcome {
    pub fn member(&self, which: Which) -> String {
        let name = which.status_name();
        match self {
            Outcome::Hit => format!("{name}; hit"),
            Outcome::Bypass => format!("{name}; fwd=bypass"),
            Outcome::Miss { stored, detail } => {
                let stored = if *stored { "; stored" } else { "" };
                let detail = detail.map(|d| format!("; detail={d}")).unwrap_or_default();
                format!("{name}; fwd=uri-miss{stored}{detail}")
            }
        }
    }
}

impl ResponseCache {
    pub fn new(ttl_s: u32, request: Rc<Context>) -> ResponseCache {
        // `Cache::default()` unwraps the global `caches`; check that it is there first.
        let available = js_sys::Reflect::has(&js_sys::global(), &"caches".into()).unwrap_or(false);
        ResponseCache {
            ttl_s: (ttl_s > 0 && available).then_some(ttl_s),
            request,
        }
    }

    /// The value cached under `key`, if any (always `None` while disabled).
    pub async fn get<T: DeserializeOwned>(&self, which: Which, key: &str) -> Option<T> {
        self.ttl_s?;
        let found = async {
            let Some(mut response) = Cache::default()
                .get(key, false)
                .await
                .map_err(|e| e.to_string())?
            else {
                return Ok(None);
            };
            let bytes = response.bytes().await.map_err(|e| e.to_string())?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| e.to_string())
        };
        let value = found.await.unwrap_or_else(|why: String| {
            console_warn!("response cache {key}: {why}");
            None
        });
        let result = if value.is_some() { "hit" } else { "miss" };
        observe::record(|m| {
            m.add(
                &RESPONSE_CACHE,
                &[("cache", which.label()), ("result", result)],
                1.0,
            )
        });
        value
    }

    /// A value computed after a miss that is by rule not stored (`why`: a partial answer).
    pub fn skip(&self, why: &'static str) -> Outcome {
        match self.ttl_s {
            Some(_) => Outcome::Miss {
                stored: false,
                detail: Some(why),
            },
            None => Outcome::Bypass,
        }
    }

    /// What became of a value computed after a miss: stored under `key` (`Miss`), or `Bypass`
    /// while the cache is off.
    pub fn store<T: Serialize>(&self, key: &str, value: &T) -> Outcome {
        match self.ttl_s {
            Some(ttl_s) => Outcome::Miss {
                stored: self.put(ttl_s, key, value),
                detail: None,
            },
            None => Outcome::Bypass,
        }
    }

    /// Starts storing `value` under `key` and says whether it did. The write finishes after the
    /// response is sent (`waitUntil`): a miss costs the client the lookup only, not the write.
    fn put<T: Serialize>(&self, ttl_s: u32, key: &str, value: &T) -> bool {
        let response = Response::from_json(value).and_then(|mut response| {
            response
                .headers_mut()
                .set("cache-control", &format!("max-age={ttl_s}"))
                .map(|()| response)
        });
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                console_warn!("response cache {key}: storing failed: {e}");
                return false;
            }
        };
        let key = key.to_string();
        self.request.wait_until(async move {
            if let Err(e) = Cache::default().put(key.as_str(), response).await {
                console_warn!("response cache {key}: storing failed: {e}");
            }
        });
        true
    }
}
