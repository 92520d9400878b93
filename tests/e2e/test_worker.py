"""End-to-end: the real worker under `wrangler dev` against local R2 (see conftest.py)."""
import json
import os
import struct
import subprocess
import threading

import pytest

from conftest import DIMS, ROOT, build_index, publish, shardc

ROWS = range(8)


def query_vector(env, row):
    with open(env["queries"], "rb") as f:
        f.seek(row * DIMS * 4)
        return list(struct.unpack(f"{DIMS}f", f.read(DIMS * 4)))


def expected(env, index_dir, row, k=10, ef=64):
    out = shardc("query", "--index", index_dir, "--vector-file", env["queries"], "--row", str(row),
                 "--k", str(k), "--ef", str(ef), "--json")
    return json.loads(out)["matches"]


def assert_same(got, want):
    assert [m["id"] for m in got] == [m["id"] for m in want]
    for g, w in zip(got, want):
        assert abs(g["score"] - w["score"]) <= 1e-5
        assert (g["text"], g["shard"], g["metadata"]) == (w["text"], w["shard"], w["metadata"])


@pytest.mark.parametrize("ef", [16, 64])
def test_matches_equal_shardc_query(env, ef):
    for row in ROWS:
        status, headers, body = env["local"].search(index="docs", vector=query_vector(env, row), k=10, ef=ef)
        assert status == 200, body
        assert body["partial"] is False and body["failed_shards"] == []
        assert_same(body["matches"], expected(env, env["docs"], row, 10, ef))
        assert "x-request-id" in headers
        assert all(f"{name};dur=" in headers["server-timing"] for name in ("fetch", "validate", "search", "merge"))


def test_durable_mode_matches_local_mode(env):
    for row in ROWS:
        body = dict(index="docs", vector=query_vector(env, row), k=20, ef=48)
        local, durable = env["local"].search(**body), env["durable"].search(**body)
        assert local[0] == durable[0] == 200, (local, durable)
        assert_same(durable[2]["matches"], local[2]["matches"])


def test_probe_limits_shards_and_region_override(env):
    status, _, body = env["local"].call("POST", "/v1/search", dict(index="docs", vector=query_vector(env, 0), k=5, probe=1),
                                        headers={"x-edge-region": "enam"})
    assert status == 200 and len({m["shard"] for m in body["matches"]}) == 1


def test_index_listing_and_description(env):
    assert env["local"].call("GET", "/v1/indexes")[2]["indexes"] == ["docs", "other"]
    status, _, info = env["local"].call("GET", "/v1/indexes/docs")
    with open(os.path.join(env["docs"], "manifest.json")) as f:
        manifest = json.load(f)
    assert status == 200
    assert (info["version"], info["dims"], info["metric"], info["shards"], info["vectors"]) == (
        manifest["version"], DIMS, "cosine", 4, manifest["count"])
    assert info["bytes"] == sum(s["bytes"] for s in manifest["shards"]) and info["regions"] == ["weur", "enam"]


def bad_cases(v):
    ok = dict(index="docs", vector=v)
    return [
        ("malformed json", dict(raw=b'{"index": "docs", "vector": [1,'), 400, "malformed-json"),
        ("NaN literal", dict(raw=b'{"index":"docs","vector":[NaN]}'), 400, "malformed-json"),
        ("wrong dims", dict(body=dict(index="docs", vector=v[:10])), 422, "invalid-request"),
        ("f32 overflow", dict(body=dict(index="docs", vector=[1e39] + v[1:])), 422, "invalid-request"),
        ("k zero", dict(body=dict(ok, k=0)), 422, "invalid-request"),
        ("k too big", dict(body=dict(ok, k=101)), 422, "invalid-request"),
        ("unknown field", dict(body=dict(ok, colour="red")), 422, "invalid-request"),
        ("zero vector", dict(body=dict(index="docs", vector=[0.0] * DIMS)), 422, "invalid-request"),
        ("unknown index", dict(body=dict(ok, index="nope")), 404, "unknown-index"),
        ("too large", dict(raw=b'{"index":"docs","vector":[' + b"0.1," * 60000 + b"0.1]}"), 413, "body-too-large"),
        ("content type", dict(body=ok, headers={"content-type": "text/plain"}), 415, "unsupported-media-type"),
    ]


def test_bad_input_gets_problem_json(env):
    for name, case, status, kind in bad_cases(query_vector(env, 0)):
        got, headers, problem = env["local"].call("POST", "/v1/search", case.get("body"), case.get("headers"), case.get("raw"))
        assert got == status, (name, problem)
        assert headers["Content-Type"].startswith("application/problem+json"), name
        assert problem["status"] == status and problem["type"].endswith("/" + kind), (name, problem)
        assert problem["title"] and problem["detail"], name
    assert env["local"].call("GET", "/v1/search")[0] == 405
    # A method the route does not offer is refused as sent, whatever its spelling.
    got, _, problem = env["local"].call("PROPFIND", "/healthz")
    assert got == 405 and "PROPFIND" in problem["detail"], problem
    assert env["local"].call("GET", "/nowhere")[0] == 404


def test_publishing_while_querying_gives_one_version_per_answer(env):
    worker, v = env["local"], query_vector(env, 1)
    old = expected(env, env["other"], 1)
    new_dir = build_index(env["tmp"], "other", 2, env["passages"], env["vectors"], extra_dir="-v2")
    new = expected(env, new_dir, 1)
    with open(os.path.join(env["other"], "manifest.json")) as f:
        old_version = json.load(f)["version"]
    answers, stop = [], threading.Event()

    def query_loop():
        while not stop.is_set():
            answers.append(worker.search(index="other", vector=v, k=10, ef=64))

    threads = [threading.Thread(target=query_loop) for _ in range(3)]
    for t in threads:
        t.start()
    new_version = publish(worker, new_dir)["version"]
    for _ in range(5):  # answers after the flip
        answers.append(worker.search(index="other", vector=v, k=10, ef=64))
    stop.set()
    for t in threads:
        t.join()
    versions = {old_version: old, new_version: new}
    for status, _, body in answers:
        assert status == 200, body
        assert_same(body["matches"], versions[body["version"]])
    assert answers[-1][2]["version"] == new_version


def test_corrupt_blob_gives_partial_answer_naming_it(env):
    worker = env["local"]
    fragile = build_index(env["tmp"], "fragile", 2, env["passages"], env["vectors"])
    info = publish(worker, fragile)
    with open(os.path.join(fragile, "manifest.json")) as f:
        bad = json.load(f)["shards"][1]
    junk = os.path.join(env["tmp"], "junk.shard")
    with open(os.path.join(fragile, bad["file"]), "rb") as f:
        blob = bytearray(f.read())
    blob[len(blob) // 2] ^= 0xFF
    with open(junk, "wb") as f:
        f.write(blob)
    for bucket in ("edgerag-shards-weur", "edgerag-shards-enam"):
        subprocess.run(["npx", "--no-install", "wrangler", "r2", "object", "put",
                        f"{bucket}/fragile/{info['version']}/{bad['file']}", "--file", junk, "--local",
                        "--persist-to", worker.persist], cwd=ROOT, check=True, capture_output=True)
    status, _, body = worker.search(index="fragile", vector=query_vector(env, 2), k=10)
    assert status == 200, body
    assert body["partial"] is True and body["failed_shards"] == [bad["name"]]
    assert body["matches"] and all(m["shard"] != bad["name"] for m in body["matches"])
    status, _, body = worker.search(index="fragile", vector=query_vector(env, 2), k=10, probe=1)
    assert status in (200, 503)
    assert worker.search(index="other", vector=query_vector(env, 2), k=10)[0] == 200
