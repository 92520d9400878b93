//! What the worker tells its operators: this isolate's metrics registry (served by
//! `GET /metrics`) and one structured JSON log line per request.
//!
//! Each isolate counts only what it served: Workers run many isolates, so a scraper sums the
//! series it gets (told apart by `edgerag_isolate_start_time_seconds{isolate}`); fleet-wide
//! numbers belong in Workers Analytics Engine.
use std::cell::RefCell;

use serde_json::{json, Value};
use worker::{console_error, console_log, console_warn, js_sys, Date};

use super::heap::{heap_use, wasm_memory_bytes};
use super::origins::Origins;
use crate::metrics::{self, Registry};
use crate::store::Store;

thread_local! {
    static REGISTRY: RefCell<Option<Registry>> = const { RefCell::new(None) };
}

/// Families reported from the first scrape on, before their first event.
const DECLARED: &[&metrics::Desc] = &[
    &metrics::REQUESTS,
    &metrics::REQUEST_DURATION,
    &metrics::SEARCH_DURATION,
    &metrics::EMBEDDING_DURATION,
    &metrics::ORIGIN_DURATION,
    &metrics::RESPONSE_CACHE,
    &metrics::ORIGIN_RETRIES,
];

/// Updates this isolate's registry (made at the first use, with the isolate's id and start).
pub fn record(update: impl FnOnce(&mut Registry)) {
    REGISTRY.with(|cell| {
        let mut registry = cell.borrow_mut();
        let registry = registry.get_or_insert_with(|| {
            let mut registry = Registry::new(DECLARED);
            let isolate = format!("{:08x}", (js_sys::Math::random() * u32::MAX as f64) as u32);
            registry.set(
                &metrics::ISOLATE_START,
                &[("isolate", &isolate)],
                Date::now().as_millis() as f64 / 1000.0,
            );
            registry
        });
        update(registry);
    });
}

/// Seconds, from the milliseconds the worker measures in.
pub fn seconds(ms: f64) -> f64 {
    ms / 1000.0
}

/// The exposition: the running counters plus the store's and the balancer's state right now.
pub fn render(store: &Store, origins: Option<&Origins>) -> String {
    let mut text = String::new();
    record(|registry| {
        let held = store.held();
        registry.set(&metrics::SHARD_CACHE_BYTES, &[], held.shard_bytes as f64);
        registry.set(&metrics::SHARD_CACHE_SHARDS, &[], held.shards as f64);
        registry.set(
            &metrics::SHARD_LOADING_BYTES,
            &[],
            held.reserved_bytes as f64,
        );
        registry.set(&metrics::WASM_MEMORY_BYTES, &[], wasm_memory_bytes() as f64);
        registry.set(&metrics::HEAP_LIVE_BYTES, &[], heap_use().live_bytes as f64);
        let reads = store.shard_reads();
        registry.set(&metrics::SHARD_CACHE_HITS, &[], reads.hits as f64);
        registry.set(&metrics::SHARD_CACHE_MISSES, &[], reads.misses as f64);
        for health in origins.map(Origins::health).unwrap_or_default() {
            let labels = [("origin", health.name.as_str())];
            registry.set(
                &metrics::ORIGIN_HEALTHY,
                &labels,
                if health.ejected { 0.0 } else { 1.0 },
            );
            registry.set(&metrics::ORIGIN_EJECTIONS, &labels, health.ejections as f64);
        }
        text = registry.render();
    });
    text
}

/// One request as its log line and metrics see it.
pub struct Finished<'a> {
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub method: &'a str,
    pub route: &'static str,
    pub status: u16,
    pub duration_ms: f64,
    pub index: Option<&'a str>,
    pub cache_status: Option<&'a str>,
    /// The problem type and detail of a failed request.
    pub error: Option<(&'a str, &'a str)>,
}

/// Counts the request and writes its log line: JSON, so a client's input in it (an index name,
/// a detail quoting the body) cannot forge lines or fields.
pub fn finish(request: &Finished) {
    let status = request.status.to_string();
    record(|registry| {
        registry.add(
            &metrics::REQUESTS,
            &[("route", request.route), ("status", &status)],
            1.0,
        );
        registry.observe(
            &metrics::REQUEST_DURATION,
            &[("route", request.route)],
            seconds(request.duration_ms),
        );
    });
    let level = match request.status {
        500.. => "error",
        400.. => "warn",
        _ => "info",
    };
    let mut line = json!({
        "ts": String::from(js_sys::Date::new_0().to_iso_string()),
        "level": level,
        "request_id": request.request_id,
        "trace_id": request.trace_id,
        "method": request.method,
        "route": request.route,
        "status": request.status,
        "duration_ms": (request.duration_ms * 1000.0).round() / 1000.0,
        "index": request.index,
        "cache": request.cache_status,
    });
    if let (Some((kind, detail)), Value::Object(fields)) = (request.error, &mut line) {
        fields.insert("error".into(), kind.into());
        fields.insert("detail".into(), detail.into());
    }
    match level {
        "error" => console_error!("{line}"),
        "warn" => console_warn!("{line}"),
        _ => console_log!("{line}"),
    }
}
