//! Configuration from vars, read once per isolate: serving mode, regions, deadlines, limits,
//! the isolate's shard store (whose budget is `CACHE_BYTES`) and its views of live writes
//! (`WRITES_CACHE_BYTES`).
use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use worker::Env;

use crate::api::write::WRITE_BATCH_DEFAULT;
use crate::api::ApiError;
use crate::rag::DEFAULT_SYSTEM;
use crate::store::{Budget, RegionMap, Store};
use crate::write::Views;

/// Default shard budget per isolate (`CACHE_BYTES` overrides): open shards, shards in use and
/// loads in flight together. With the live writes' views (`WRITES_CACHE_BYTES`) it leaves
/// headroom in the 128 MB isolate for the wasm heap's other users, the JS side of the transfer
/// in flight and the request itself.
const CACHE_BYTES_DEFAULT: usize = 72 << 20;
/// Default bound on the isolate's views of live writes not yet compacted (`WRITES_CACHE_BYTES`).
const WRITES_CACHE_BYTES_DEFAULT: usize = 24 << 20;
/// Default bound on an index's uncompacted writes (`WRITE_BACKLOG_MAX`): 10,000 passages of
/// 384 dimensions take about 15 MB of f32 vectors in each isolate, plus their texts.
const WRITE_BACKLOG_MAX_DEFAULT: u64 = 10_000;
/// Default wait for a read's `min_seq` (`MIN_SEQ_WAIT_MS`).
const MIN_SEQ_WAIT_MS_DEFAULT: u64 = 2000;
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
    // One set of live-write views per isolate, like the store.
    static VIEWS: OnceCell<Rc<Views>> = const { OnceCell::new() };
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
    /// `WRITE_BATCH_MAX`: vectors or ids per write request.
    pub write_batch_max: usize,
    /// `WRITE_BACKLOG_MAX`: uncompacted writes an index may hold.
    pub write_backlog_max: u64,
    /// `MIN_SEQ_WAIT_MS`: how long a read waits for its `min_seq`.
    pub min_seq_wait_ms: u64,
    /// `CURRENT_TTL_MS`: how long a view of an index (its current version, its writes) is trusted.
    pub current_ttl_ms: f64,
}

pub(crate) fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}

pub(crate) fn parsed<T: std::str::FromStr>(
    env: &Env,
    name: &str,
    default: T,
) -> Result<T, ApiError> {
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
            write_batch_max: parsed(env, "WRITE_BATCH_MAX", WRITE_BATCH_DEFAULT)?,
            write_backlog_max: parsed(env, "WRITE_BACKLOG_MAX", WRITE_BACKLOG_MAX_DEFAULT)?,
            min_seq_wait_ms: parsed(env, "MIN_SEQ_WAIT_MS", MIN_SEQ_WAIT_MS_DEFAULT)?,
            current_ttl_ms: parsed(env, "CURRENT_TTL_MS", CURRENT_TTL_MS_DEFAULT)?,
        })
    }

    /// Every region the table can answer with: the candidates for bucket bindings.
    pub fn mentioned_regions(&self) -> Vec<String> {
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
    let budget = Budget {
        cache_bytes: parsed(env, "CACHE_BYTES", CACHE_BYTES_DEFAULT)?,
        current_ttl_ms: parsed(env, "CURRENT_TTL_MS", CURRENT_TTL_MS_DEFAULT)?,
        // A load that cannot find room within the fan-out deadline would be reported as missing
        // it anyway.
        room_wait_ms: parsed(env, "FANOUT_DEADLINE_MS", DEADLINE_MS_DEFAULT)? as f64,
    };
    Ok(STORE.with(|cell| cell.get_or_init(|| Rc::new(Store::new(budget))).clone()))
}

/// This isolate's views of live writes; `WRITES_CACHE_BYTES` is read when they are made.
pub(crate) fn views(env: &Env) -> Result<Rc<Views>, ApiError> {
    if let Some(views) = VIEWS.with(|cell| cell.get().cloned()) {
        return Ok(views);
    }
    let capacity = parsed(env, "WRITES_CACHE_BYTES", WRITES_CACHE_BYTES_DEFAULT)?;
    Ok(VIEWS.with(|cell| cell.get_or_init(|| Rc::new(Views::new(capacity))).clone()))
}
