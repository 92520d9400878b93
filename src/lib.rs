//! edgerag: retrieval at the edge.
//!
//! Layering (imports flow downwards only):
//! - [`clock`]: the one clock trait, a monotonic reading and a timer, that every layer which
//!   waits is given, so deadlines and backoff run natively in virtual time (pure).
//! - [`shard`]: the versioned zero-copy shard format and the search over it (pure Rust, wasm-safe).
//! - [`lexical`]: the one tokenizer, BM25 scoring and reciprocal rank fusion (pure, wasm-safe);
//!   the postings themselves are part of the shard format.
//! - [`manifest`]: the index manifest that names versions, shards, centroids, regions and checksums.
//! - [`api`]: HTTP request parsing/validation and RFC 9457 problem documents (pure).
//! - [`ratelimit`]: the per-key token bucket, clock passed in (pure).
//! - [`auth`]: API keys (hashed, constant-time lookup), tenants' indexes, admin routes (pure).
//! - [`pages`]: the free list of whole wasm pages that large blocks (shard buffers) take, apart
//!   from the general heap (pure bookkeeping; `edge::heap` is the allocator over it).
//! - [`store`]: region choice, version pinning, and the byte-budgeted single-flight shard cache (pure).
//! - [`write`]: live writes: the writer's log decisions and wire types, and the isolate's view
//!   of the writes not yet compacted into shards (segments scanned exactly, excluded ids) (pure).
//! - [`retrieve`]: the one retrieval engine — plan, bounded gather within a deadline, exact merge,
//!   resolve — over shards held in memory, loaded through the store, or asked of shard hosts (pure).
//! - [`index`]: an index held whole in memory, searched through [`retrieve`] (`shardc`, tests, the wasm probe).
//! - [`timing`]: the `Server-Timing` breakdown of a request (pure).
//! - [`balancer`]: inference-origin pools: routing strategies, health, retry budget, affinity (pure, clock passed in),
//!   and `balancer::dispatch`, the async retry/lease loop over a transport trait and a clock trait.
//! - [`rag`]: OpenAI wire types, prompt building within a token budget, SSE parsing and formatting (pure).
//! - [`rerank`]: the `rerank` option, the reranker pool's wire shapes (TEI, Cohere/Jina) and
//!   the reordering of a search's matches by its scores (pure).
//! - [`publish`]: what a version needs in which region before it may go live, blob checks as
//!   they stream in, lifecycle decisions (pure); its `client` is `shardc publish` (native only).
//! - [`cache_key`]: the Cache API keys of search results and query embeddings, by index version (pure).
//! - [`metrics`]: labelled counters, gauges and histograms in the Prometheus text format (pure).
//! - [`trace`]: W3C `traceparent` parsing and propagation (pure).
//! - [`playground`]: the browser page `GET /` serves, its files and their headers (pure).
//! - `build` (native only): turns a corpus into shards and a manifest (used by `shardc`); its
//!   `ingest` first makes the corpus from a folder of documents (walk, extract, chunk, embed
//!   with a cache, built-in or remote embedder), and `sync` keeps a live index in step with such
//!   a folder through the write routes.
//! - `embed` (native only): all-MiniLM-L6-v2 sentence embeddings on CPU (used by `devorigin`
//!   and by `build`'s built-in embedder).
//! - `edge` (wasm32 only): the Cloudflare Workers glue; thin handlers over the pure modules (for
//!   the origins: the `fetch` transport, the timers and the config from env).

pub mod api;
pub mod auth;
pub mod balancer;
pub mod cache_key;
pub mod clock;
pub mod index;
pub mod lexical;
pub mod manifest;
pub mod metrics;
pub mod pages;
pub mod playground;
pub mod publish;
pub mod rag;
pub mod ratelimit;
pub mod rerank;
pub mod retrieve;
pub mod shard;
pub mod store;
pub mod timing;
pub mod trace;
pub mod write;

#[cfg(test)]
mod testing;

#[cfg(not(target_arch = "wasm32"))]
pub mod build;

#[cfg(not(target_arch = "wasm32"))]
pub mod embed;

#[cfg(all(target_arch = "wasm32", feature = "edge"))]
mod edge;
