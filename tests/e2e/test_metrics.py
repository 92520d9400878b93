"""End-to-end: `GET /metrics` of the real worker under `wrangler dev`, read by the Prometheus
client's own text-format parser, before and after requests. `wrangler dev` runs one isolate, so
the counters move by exactly the requests made (in production each isolate reports its own)."""
import struct

from prometheus_client.parser import text_string_to_metric_families

from conftest import DIMS


def query_vector(observed, row):
    with open(observed["queries"], "rb") as f:
        f.seek(row * DIMS * 4)
        return list(struct.unpack(f"{DIMS}f", f.read(DIMS * 4)))


def value(metrics, name, **labels):
    return metrics.get((name, frozenset(labels.items())), 0.0)


def grew(before, after, name, **labels):
    return value(after, name, **labels) - value(before, name, **labels)


def test_families_have_help_and_type(observed):
    status, _, text = observed["worker"].call("GET", "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # The parser names a counter family without its `_total` suffix.
    want = {
        "edgerag_requests": "counter",
        "edgerag_request_duration_seconds": "histogram",
        "edgerag_search_duration_seconds": "histogram",
        "edgerag_embedding_duration_seconds": "histogram",
        "edgerag_origin_duration_seconds": "histogram",
        "edgerag_response_cache": "counter",
        "edgerag_shard_cache_bytes": "gauge",
        "edgerag_shard_cache_shards": "gauge",
        "edgerag_shard_cache_hits": "counter",
        "edgerag_shard_cache_misses": "counter",
        "edgerag_origin_healthy": "gauge",
        "edgerag_origin_ejections": "counter",
        "edgerag_origin_retries": "counter",
        "edgerag_isolate_start_time_seconds": "gauge",
    }
    for name, kind in want.items():
        assert name in families, (name, sorted(families))
        assert families[name].type == kind and families[name].documentation, families[name]
    (isolate,) = families["edgerag_isolate_start_time_seconds"].samples
    assert isolate.labels["isolate"] and isolate.value > 1.7e9


def test_counters_move_with_the_requests_made(observed):
    worker, n = observed["worker"], 5
    vector = query_vector(observed, 7)
    before = worker.metrics()
    for k in range(1, n + 1):  # five different queries: five response-cache misses
        assert worker.search(index="docs", vector=vector, k=k)[0] == 200
    assert worker.search(index="docs", vector=vector, k=1)[0] == 200  # a hit
    assert worker.search(index="docs", vector=[1.0, 2.0])[0] == 422
    assert worker.call("POST", "/v1/search", raw=b'{"index":')[0] == 400
    assert worker.call("GET", "/nowhere")[0] == 404
    after = worker.metrics()

    assert grew(before, after, "edgerag_requests_total", route="search", status="200") == n + 1
    assert grew(before, after, "edgerag_requests_total", route="search", status="422") == 1
    assert grew(before, after, "edgerag_requests_total", route="search", status="400") == 1
    assert grew(before, after, "edgerag_requests_total", route="unmatched", status="404") == 1
    assert grew(before, after, "edgerag_requests_total", route="metrics", status="200") == 1, "the first scrape"
    assert grew(before, after, "edgerag_request_duration_seconds_count", route="search") == n + 3
    assert grew(before, after, "edgerag_search_duration_seconds_count") == n, "searched only on misses"
    assert grew(before, after, "edgerag_response_cache_total", cache="search", result="miss") == n
    assert grew(before, after, "edgerag_response_cache_total", cache="search", result="hit") == 1
    # Each miss read every shard of the index: each shard loaded at most once, then found held.
    shards = worker.call("GET", "/v1/indexes/docs")[2]["shards"]
    hits, misses = (grew(before, after, f"edgerag_shard_cache_{what}_total") for what in ("hits", "misses"))
    assert hits + misses == n * shards and misses <= shards, (hits, misses, shards)
    assert value(after, "edgerag_shard_cache_bytes") > 0 and value(after, "edgerag_shard_cache_shards") >= 1
    count = value(after, "edgerag_request_duration_seconds_count", route="search")
    assert value(after, "edgerag_request_duration_seconds_bucket", route="search", le="+Inf") == count
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in after.items()
                     if name == "edgerag_request_duration_seconds_bucket" and dict(labels)["route"] == "search")
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), "buckets are cumulative"


def test_origin_metrics_count_embeddings_and_report_health(observed):
    worker = observed["worker"]
    before = worker.metrics()
    status, _, body = worker.search(index="docs", text="What does the metrics test ask?", k=3)
    assert status == 200, body
    after = worker.metrics()
    assert grew(before, after, "edgerag_embedding_duration_seconds_count") == 1
    assert grew(before, after, "edgerag_origin_duration_seconds_count", origin="o0-embed") == 1
    assert grew(before, after, "edgerag_response_cache_total", cache="embedding", result="miss") == 1
    assert value(after, "edgerag_origin_healthy", origin="o0") == 1
    assert value(after, "edgerag_origin_healthy", origin="o0-embed") == 1
    assert value(after, "edgerag_origin_ejections_total", origin="o0-embed") == 0
    assert grew(before, after, "edgerag_origin_retries_total") == 0
