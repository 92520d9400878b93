//! Cloudflare Workers glue (wasm32 only); provided by the edge worktree.
