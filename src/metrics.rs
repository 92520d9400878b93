//! Prometheus metrics without I/O: a small registry of labelled counters, gauges and fixed-bucket
//! histograms, rendered in the Prometheus text exposition format (version 0.0.4). The worker
//! keeps one registry per isolate (`edge::observe`); every family it reports is declared here.
use std::collections::BTreeMap;
use std::fmt::Write;

/// The content type of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Upper bounds of the buckets, ascending; `+Inf` is implied.
    Histogram(&'static [f64]),
}

/// A metric family's fixed description.
#[derive(Debug, PartialEq)]
pub struct Desc {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

/// Seconds, from a cached answer (a millisecond) to a slow origin's whole deadline.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const fn counter(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        kind: Kind::Counter,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        kind: Kind::Gauge,
    }
}

const fn latency(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        kind: Kind::Histogram(LATENCY_BUCKETS),
    }
}

pub const REQUESTS: Desc = counter(
    "edgerag_requests_total",
    "Requests answered by this isolate, by route and HTTP status.",
);
pub const REQUEST_DURATION: Desc = latency(
    "edgerag_request_duration_seconds",
    "Time to the response head, by route (streamed answers: to the first token).",
);
pub const SEARCH_DURATION: Desc = latency(
    "edgerag_search_duration_seconds",
    "Shard fan-out, search and merge of one query (response-cache misses only).",
);
pub const EMBEDDING_DURATION: Desc = latency(
    "edgerag_embedding_duration_seconds",
    "Embedding a text query through the embeddings pool, retries included.",
);
pub const ORIGIN_DURATION: Desc = latency(
    "edgerag_origin_duration_seconds",
    "One attempt at an inference origin, to its first byte, by origin.",
);
pub const SHARD_CACHE_BYTES: Desc = gauge(
    "edgerag_shard_cache_bytes",
    "Shard bytes this isolate holds in its LRU.",
);
pub const SHARD_CACHE_SHARDS: Desc = gauge(
    "edgerag_shard_cache_shards",
    "Shards this isolate holds in its LRU.",
);
pub const SHARD_LOADING_BYTES: Desc = gauge(
    "edgerag_shard_loading_bytes",
    "Bytes reserved in the shard budget by loads in flight.",
);
pub const WASM_MEMORY_BYTES: Desc = gauge(
    "edgerag_wasm_memory_bytes",
    "Size of this isolate's wasm linear memory (it never shrinks).",
);
pub const HEAP_LIVE_BYTES: Desc = gauge(
    "edgerag_heap_live_bytes",
    "Bytes this isolate has allocated and not freed (shard buffers in whole pages).",
);
pub const SHARD_CACHE_HITS: Desc = counter(
    "edgerag_shard_cache_hits_total",
    "Shard reads served by a shard this isolate already held.",
);
pub const SHARD_CACHE_MISSES: Desc = counter(
    "edgerag_shard_cache_misses_total",
    "Shard reads that waited for a load from R2 (their own or a concurrent request's).",
);
pub const RESPONSE_CACHE: Desc = counter(
    "edgerag_response_cache_total",
    "Cache API lookups, by cache (search results, query embeddings) and result.",
);
pub const ORIGIN_HEALTHY: Desc = gauge(
    "edgerag_origin_healthy",
    "1 while the balancer routes to the origin, 0 while it is ejected.",
);
pub const ORIGIN_EJECTIONS: Desc = counter(
    "edgerag_origin_ejections_total",
    "Times the balancer ejected the origin after failures.",
);
pub const ORIGIN_RETRIES: Desc = counter(
    "edgerag_origin_retries_total",
    "Origin attempts retried after a failure.",
);
pub const ISOLATE_START: Desc = gauge(
    "edgerag_isolate_start_time_seconds",
    "When this isolate started (Unix seconds), labelled with its random id: every metric here is this isolate's alone.",
);

/// A series' label set: (name, value) pairs in a fixed order per family.
type LabelSet = Vec<(&'static str, String)>;

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Number(f64),
    /// Per-bucket (not cumulative) counts; the last slot is `+Inf`.
    Histogram {
        counts: Vec<u64>,
        sum: f64,
    },
}

#[derive(Debug)]
struct Family {
    desc: &'static Desc,
    series: BTreeMap<LabelSet, Value>,
}

/// Metric families by name, each with its series by label set.
#[derive(Debug, Default)]
pub struct Registry {
    families: BTreeMap<&'static str, Family>,
}

fn label_set(labels: &[(&'static str, &str)]) -> LabelSet {
    labels
        .iter()
        .map(|(name, value)| (*name, value.to_string()))
        .collect()
}

impl Registry {
    /// A registry that reports `descs` from the start; unlabelled counters start at 0, so a
    /// scraper sees them before their first event.
    pub fn new(descs: &[&'static Desc]) -> Registry {
        let mut registry = Registry::default();
        for desc in descs {
            registry.family(desc);
            if desc.kind == Kind::Counter {
                registry.add(desc, &[], 0.0);
            }
        }
        registry
    }

    fn family(&mut self, desc: &'static Desc) -> &mut BTreeMap<LabelSet, Value> {
        &mut self
            .families
            .entry(desc.name)
            .or_insert_with(|| Family {
                desc,
                series: BTreeMap::new(),
            })
            .series
    }

    /// Adds `by` to a counter or gauge.
    pub fn add(&mut self, desc: &'static Desc, labels: &[(&'static str, &str)], by: f64) {
        if let Value::Number(n) = self
            .family(desc)
            .entry(label_set(labels))
            .or_insert(Value::Number(0.0))
        {
            *n += by;
        }
    }

    /// Sets a gauge, or a counter whose running total is kept elsewhere (e.g. by the store).
    pub fn set(&mut self, desc: &'static Desc, labels: &[(&'static str, &str)], value: f64) {
        self.family(desc)
            .insert(label_set(labels), Value::Number(value));
    }

    /// Records one observation in a histogram.
    pub fn observe(&mut self, desc: &'static Desc, labels: &[(&'static str, &str)], value: f64) {
        let Kind::Histogram(bounds) = desc.kind else {
            return;
        };
        let slot = bounds
            .iter()
            .position(|&le| value <= le)
            .unwrap_or(bounds.len());
        let fresh = || Value::Histogram {
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        };
        if let Value::Histogram { counts, sum } = self
            .family(desc)
            .entry(label_set(labels))
            .or_insert_with(fresh)
        {
            counts[slot] += 1;
            *sum += value;
        }
    }

    /// The text exposition of every family, in name order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for family in self.families.values() {
            let desc = family.desc;
            let kind = match desc.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# HELP {} {}", desc.name, escape(desc.help, false));
            let _ = writeln!(out, "# TYPE {} {kind}", desc.name);
            for (labels, value) in &family.series {
                match (value, desc.kind) {
                    (Value::Number(n), _) => sample(&mut out, desc.name, "", labels, None, *n),
                    (Value::Histogram { counts, sum }, Kind::Histogram(bounds)) => {
                        let mut cumulative = 0;
                        for (i, count) in counts.iter().enumerate() {
                            cumulative += count;
                            let le = bounds
                                .get(i)
                                .map_or_else(|| "+Inf".to_string(), |b| number(*b));
                            sample(
                                &mut out,
                                desc.name,
                                "_bucket",
                                labels,
                                Some(&le),
                                cumulative as f64,
                            );
                        }
                        sample(&mut out, desc.name, "_sum", labels, None, *sum);
                        sample(
                            &mut out,
                            desc.name,
                            "_count",
                            labels,
                            None,
                            cumulative as f64,
                        );
                    }
                    (Value::Histogram { .. }, _) => {}
                }
            }
        }
        out
    }
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &LabelSet,
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    let pairs = labels
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .chain(le.map(|le| ("le", le)));
    for (i, (label, value)) in pairs.enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        let _ = write!(out, "{label}=\"{}\"", escape(value, true));
    }
    if !labels.is_empty() || le.is_some() {
        out.push('}');
    }
    let _ = writeln!(out, " {}", number(value));
}

/// Backslash and newline are escaped in help text; label values also escape the double quote.
fn escape(text: &str, quote: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// Go's `ParseFloat` syntax, as Prometheus reads it: integers without a fraction, `+Inf`, `NaN`.
fn number(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_escaped_labels() {
        let mut r = Registry::new(&[&ORIGIN_RETRIES, &REQUESTS]);
        r.add(&REQUESTS, &[("route", "search"), ("status", "200")], 1.0);
        r.add(&REQUESTS, &[("route", "search"), ("status", "200")], 2.0);
        r.set(&SHARD_CACHE_BYTES, &[], 1.5e9);
        r.set(&ORIGIN_HEALTHY, &[("origin", "a\"b\\c\nd")], 1.0);
        let text = r.render();
        assert!(
            text.contains("# HELP edgerag_requests_total Requests answered"),
            "{text}"
        );
        assert!(text.contains("# TYPE edgerag_requests_total counter\n"));
        assert!(
            text.contains("edgerag_requests_total{route=\"search\",status=\"200\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("edgerag_origin_retries_total 0\n"),
            "declared counters start at 0: {text}"
        );
        assert!(
            text.contains("edgerag_shard_cache_bytes 1500000000\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"edgerag_origin_healthy{origin="a\"b\\c\nd"} 1"#),
            "{text}"
        );
        // Families come out in name order, each HELP before its TYPE before its samples.
        let order: Vec<usize> = [
            "edgerag_origin_healthy",
            "edgerag_origin_retries_total",
            "edgerag_requests_total",
            "edgerag_shard_cache_bytes",
        ]
        .iter()
        .map(|name| text.find(&format!("# HELP {name} ")).expect(name))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let mut r = Registry::default();
        // Binary fractions, so that the sum is exact.
        for seconds in [0.0009765625, 0.00390625, 0.00390625, 128.0] {
            r.observe(&SEARCH_DURATION, &[], seconds);
        }
        r.observe(&ORIGIN_DURATION, &[("origin", "o1")], 0.2);
        let text = r.render();
        assert!(text.contains("# TYPE edgerag_search_duration_seconds histogram\n"));
        for line in [
            "edgerag_search_duration_seconds_bucket{le=\"0.001\"} 1\n",
            "edgerag_search_duration_seconds_bucket{le=\"0.0025\"} 1\n",
            "edgerag_search_duration_seconds_bucket{le=\"0.005\"} 3\n",
            "edgerag_search_duration_seconds_bucket{le=\"30\"} 3\n",
            "edgerag_search_duration_seconds_bucket{le=\"+Inf\"} 4\n",
            "edgerag_search_duration_seconds_sum 128.0087890625\n",
            "edgerag_search_duration_seconds_count 4\n",
            "edgerag_origin_duration_seconds_bucket{origin=\"o1\",le=\"0.25\"} 1\n",
            "edgerag_origin_duration_seconds_count{origin=\"o1\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn numbers_use_prometheus_spelling() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
