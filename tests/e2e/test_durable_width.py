"""Durable mode at width under `wrangler dev`: an index of 32 shards, each shard replica held by
its own ShardHost object; the entry worker asks only the planned hosts (at most six at a time)
and its answers equal `shardc query` with the same plan; every host reports its memory."""
import json
import shutil
import tempfile

import pytest

from conftest import build_binary, build_index, corpus, log, query_row, serving, shardc, stop, SHARDC

SHARDS = 32
ROWS = range(6)


@pytest.fixture(scope="module")
def wide():
    build_binary(SHARDC, "shardc")
    tmp = tempfile.mkdtemp(prefix="edgerag-e2e-wide-")
    passages, vectors, queries = corpus(tmp)
    index = build_index(tmp, "wide", SHARDS, passages, vectors)
    worker = serving(tmp, index, "durable", f"{SHARDS} shards")
    yield dict(worker=worker, index=index, queries=queries)
    stop(worker)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("probe", [3, 8, None])
def test_a_32_shard_durable_index_answers_equal_shardc_query_with_the_same_probe(wide, probe):
    for row in ROWS:
        body = dict(index="wide", vector=query_row(wide["queries"], row), k=10, ef=64)
        args = ["--probe", str(probe)] if probe else []
        if probe:
            body["probe"] = probe
        status, _, found = wide["worker"].search(**body)
        assert status == 200, found
        assert found["partial"] is False and found["failed_shards"] == [], found
        want = json.loads(shardc("query", "--index", wide["index"], "--vector-file", wide["queries"],
                                 "--row", str(row), "--k", "10", "--ef", "64", "--json", *args))["matches"]
        assert [m["id"] for m in found["matches"]] == [m["id"] for m in want], (probe, row)
        for got, expected in zip(found["matches"], want):
            assert abs(got["score"] - expected["score"]) <= 1e-5
            assert got["shard"] == expected["shard"]
        if probe:
            assert len({m["shard"] for m in found["matches"]}) <= probe


def test_every_shard_host_reports_its_memory_within_its_budget(wide):
    worker = wide["worker"]
    # Every shard visited, so that every host holds its shard.
    for row in ROWS:
        assert worker.search(index="wide", vector=query_row(wide["queries"], row), k=10)[0] == 200
    status, _, report = worker.call("GET", "/v1/admin/indexes/wide/hosts")
    assert status == 200, report
    hosts = report["hosts"]
    assert [h["shard"] for h in hosts] == list(range(SHARDS)), report
    # Hosts that share an isolate (under `wrangler dev`, all of them; on Cloudflare, as the runtime
    # places them) share its store: each reports its isolate's memory, within the one budget.
    for host in hosts:
        memory = host["memory"]
        assert 1 <= memory["cached_shards"] <= SHARDS, host
        assert 0 < memory["cached_bytes"] <= memory["cache_budget_bytes"], host
        assert memory["wasm_memory_bytes"] >= memory["cached_bytes"], host
    log(f"{SHARDS} hosts hold {sum(h['memory']['cached_bytes'] for h in hosts)} shard bytes; "
        f"largest wasm memory {max(h['memory']['wasm_memory_bytes'] for h in hosts)}")


def test_the_hosts_report_is_a_conflict_in_local_mode(env):
    status, _, problem = env["local"].call("GET", "/v1/admin/indexes/docs/hosts")
    assert status == 409 and "durable" in problem["detail"], problem
