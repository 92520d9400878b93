//! edgerag: retrieval at the edge.
//!
//! Layering (imports flow downwards only):
//! - [`shard`]: the versioned zero-copy shard format and the search over it (pure Rust, wasm-safe).
//! - [`manifest`]: the index manifest that names versions, shards, centroids, regions and checksums.
//! - `build` (native only): turns a corpus into shards and a manifest (used by `shardc`).
//! - `edge` (wasm32 only): the Cloudflare Workers glue; thin handlers over the pure modules.

pub mod manifest;
pub mod shard;

#[cfg(not(target_arch = "wasm32"))]
pub mod build;

#[cfg(target_arch = "wasm32")]
mod edge;
