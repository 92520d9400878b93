"""Boundary replication under `wrangler dev`: an index whose every passage is stored in two shards
(`shardc build --replicate-margin`) answers with distinct passages equal to `shardc query`'s,
visits only the shards its plan picks (`shards_searched`), counts each passage once, and a write
to a replicated passage replaces or deletes both copies."""
import json
import os
import shutil
import tempfile

import pytest

from conftest import DIMS, build_binary, corpus, query_row, serving, shardc, stop, SHARDC

SHARDS = 4
ROWS = range(6)


@pytest.fixture(scope="module")
def routed():
    build_binary(SHARDC, "shardc")
    tmp = tempfile.mkdtemp(prefix="edgerag-e2e-routed-")
    passages, vectors, queries = corpus(tmp)
    index = os.path.join(tmp, "routed")
    # A margin of 2 (the widest cosine distance) copies every passage into a second shard.
    shardc("build", "--passages", passages, "--vectors", vectors, "--dims", str(DIMS), "--shards", str(SHARDS),
           "--regions", "weur,enam", "--name", "routed", "--out", index,
           "--replicate-margin", "2", "--probe-margin", "0.05")
    with open(os.path.join(index, "manifest.json")) as f:
        manifest = json.load(f)
    worker = serving(tmp, index, "local", "replicated index")
    yield dict(worker=worker, index=index, queries=queries, manifest=manifest)
    stop(worker)
    shutil.rmtree(tmp, ignore_errors=True)


def test_every_passage_stored_twice_is_counted_once(routed):
    manifest = routed["manifest"]
    assert manifest["routing"]["replicas"] == manifest["count"]
    assert sum(s["count"] for s in manifest["shards"]) == 2 * manifest["count"]
    status, _, summary = routed["worker"].call("GET", "/v1/indexes/routed")
    assert status == 200, summary
    assert summary["vectors"] == manifest["count"]


def test_answers_have_distinct_passages_equal_to_shardc_query_from_the_planned_shards(routed):
    for row in ROWS:
        status, _, found = routed["worker"].search(index="routed", vector=query_row(routed["queries"], row),
                                                   k=10, ef=64)
        assert status == 200, found
        ids = [m["id"] for m in found["matches"]]
        assert len(ids) == 10 and len(set(ids)) == 10, ids
        want = json.loads(shardc("query", "--index", routed["index"], "--vector-file", routed["queries"],
                                 "--row", str(row), "--k", "10", "--ef", "64", "--json"))["matches"]
        assert ids == [m["id"] for m in want], row
        assert 1 <= found["shards_searched"] <= SHARDS, found["shards_searched"]
        assert len({m["shard"] for m in found["matches"]}) <= found["shards_searched"]
        # An explicit probe still caps the plan.
        status, _, capped = routed["worker"].search(index="routed", vector=query_row(routed["queries"], row),
                                                    k=10, ef=64, probe=1)
        assert status == 200 and capped["shards_searched"] == 1, capped


def test_a_write_to_a_replicated_passage_replaces_or_deletes_both_copies(routed):
    worker = routed["worker"]
    vector = query_row(routed["queries"], 0)
    status, _, found = worker.search(index="routed", vector=vector, k=10, ef=64)
    assert status == 200, found
    first, second = found["matches"][0]["id"], found["matches"][1]["id"]
    status, _, body = worker.call("POST", "/v1/indexes/routed/upsert",
                                  dict(vectors=[dict(id=first, values=vector, text="replaced")]))
    assert status == 200, body
    status, _, body = worker.call("POST", "/v1/indexes/routed/delete", dict(ids=[second]))
    assert status == 200, body
    status, _, after = worker.search(index="routed", vector=vector, k=10, ef=64, min_seq=body["seq"])
    assert status == 200, after
    ids = [m["id"] for m in after["matches"]]
    assert ids.count(first) == 1 and second not in ids and len(set(ids)) == len(ids) == 10, ids
    assert after["matches"][0]["id"] == first and after["matches"][0]["text"] == "replaced", after["matches"][0]
