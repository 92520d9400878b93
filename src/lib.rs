//! edgerag: retrieval at the edge.
//!
//! Layering (imports flow downwards only):
//! - [`shard`]: the versioned zero-copy shard format and the search over it (pure Rust, wasm-safe).
//! - [`manifest`]: the index manifest that names versions, shards, centroids, regions and checksums.
//! - [`api`]: HTTP request parsing/validation and RFC 9457 problem documents (pure).
//! - [`ratelimit`]: the per-key token bucket, clock passed in (pure).
//! - [`auth`]: API keys (hashed, constant-time lookup), tenants' indexes, admin routes (pure).
//! - [`store`]: region choice, version pinning, and the byte-bounded single-flight shard cache (pure).
//! - [`fanout`]: which shards a query visits, and the exact merge of their answers (pure).
//! - [`index`]: an index held whole in memory, searched shard by shard (`shardc`, tests, the wasm probe).
//! - [`balancer`]: inference-origin pools: routing strategies, health, retry budget, affinity (pure, clock passed in).
//! - [`rag`]: OpenAI wire types, prompt building within a token budget, SSE parsing and formatting (pure).
//! - [`publish`]: what a version needs in which region before it may go live, blob checks as
//!   they stream in, lifecycle decisions (pure); its `client` is `shardc publish` (native only).
//! - [`cache_key`]: the Cache API keys of search results and query embeddings, by index version (pure).
//! - [`metrics`]: labelled counters, gauges and histograms in the Prometheus text format (pure).
//! - [`trace`]: W3C `traceparent` parsing and propagation (pure).
//! - `build` (native only): turns a corpus into shards and a manifest (used by `shardc`).
//! - `embed` (native only): all-MiniLM-L6-v2 sentence embeddings on CPU (used by `devorigin`).
//! - `edge` (wasm32 only): the Cloudflare Workers glue; thin handlers over the pure modules.

pub mod api;
pub mod auth;
pub mod balancer;
pub mod cache_key;
pub mod fanout;
pub mod index;
pub mod manifest;
pub mod metrics;
pub mod publish;
pub mod rag;
pub mod ratelimit;
pub mod shard;
pub mod store;
pub mod trace;

#[cfg(not(target_arch = "wasm32"))]
pub mod build;

#[cfg(not(target_arch = "wasm32"))]
pub mod embed;

#[cfg(all(target_arch = "wasm32", feature = "edge"))]
mod edge;
