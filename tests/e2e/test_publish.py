"""End-to-end: publishing through the worker's admin routes (`shardc publish`, `shardc index ...`)
against the real worker under `wrangler dev` and its local R2 buckets (one per region): a version
goes live only once every blob is verified in every region its placement names, a killed publish
resumes, each region serves from its own bucket, rollback, and tenant isolation of admin keys."""
import json
import os
import signal
import struct
import subprocess
import threading
import time

import pytest

from conftest import (DIMS, KEYS, ROOT, SHARDC, bearer, build_index, build_binary, corpus_slices, log, publish,
                      publish_command, shardc, start_worker, stop)

TTL_MS = 1000
ROWS = range(6)
BUCKETS = {"weur": "edgerag-shards-weur", "enam": "edgerag-shards-enam"}


def manifest_of(index_dir):
    with open(os.path.join(index_dir, "manifest.json")) as f:
        return json.load(f)


def max_shard_bytes(*dirs):
    return max(s["bytes"] for d in dirs for s in manifest_of(d)["shards"])


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    """A local-mode worker whose `current` pointers live CURRENT_TTL_MS = 1 s, with an upload limit
    of twice the largest shard the tests publish (so a one-shard index of the whole corpus is over
    it), and indexes built from three disjoint slices of the shipped demo corpus (small, so the
    dozen builds are quick; disjoint, so two versions never give the same answer)."""
    build_binary(SHARDC, "shardc")
    tmp = str(tmp_path_factory.mktemp("publish"))
    demo = os.path.join(ROOT, "shards", "demo")
    passages, vectors, queries = (os.path.join(demo, f) for f in ("passages.jsonl", "vectors.f32", "queries.f32"))
    slices = corpus_slices(tmp, passages, vectors)
    built = {}

    def build(name, slice_no, shards, **kw):
        key = (name, slice_no, shards, tuple(sorted(kw.items())))
        if key not in built:
            built[key] = build_index(tmp, name, shards, slices[slice_no][0], slices[slice_no][1],
                                     extra_dir=f"-{slice_no}-{shards}-{len(built)}", **kw)
        return built[key]

    docs = build("docs", 0, 2)
    other = build("other", 1, 2)
    big = build_index(tmp, "big", 1, passages, vectors, extra_dir="-whole")
    limit = max_shard_bytes(docs, other) * 2
    assert max_shard_bytes(big) > limit, "the whole-corpus shard must be over the limit"
    logfile = open(os.path.join(tmp, "wrangler-publish.log"), "w")
    log(f"starting wrangler dev (publish); log {logfile.name}")
    worker = start_worker(os.path.join(tmp, "state"), "local", logfile,
                          dict(CURRENT_TTL_MS=str(TTL_MS), UPLOAD_LIMIT_BYTES=str(limit)))
    publish(worker, docs)
    publish(worker, other)
    yield dict(tmp=tmp, worker=worker, queries=queries, build=build, docs=docs, other=other, big=big, limit=limit)
    stop(worker)


def vector(env, row):
    with open(env["queries"], "rb") as f:
        f.seek(row * DIMS * 4)
        return list(struct.unpack(f"{DIMS}f", f.read(DIMS * 4)))


def expected_ids(env, index_dir, row):
    out = shardc("query", "--index", index_dir, "--vector-file", env["queries"], "--row", str(row),
                 "--k", "10", "--ef", "64", "--json")
    return [m["id"] for m in json.loads(out)["matches"]]


def answers_in_full(env, index, index_dir, region=None):
    """Every ROWS query answers 200 from `index_dir`'s version, all shards, the same ids as `shardc query`."""
    version = manifest_of(index_dir)["version"]
    headers = {"x-edge-region": region} if region else None
    for row in ROWS:
        status, _, body = env["worker"].call("POST", "/v1/search", dict(index=index, vector=vector(env, row), k=10, ef=64),
                                             headers=headers)
        assert status == 200, body
        assert body["version"] == version, (row, body["version"], version)
        assert body["partial"] is False and body["failed_shards"] == [], body
        assert [m["id"] for m in body["matches"]] == expected_ids(env, index_dir, row), row


def run_shardc(*args, key=None):
    env = dict(os.environ, EDGERAG_ADMIN_KEY=key or KEYS["admin"])
    return subprocess.run([SHARDC, *args], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def status_of(env, index, version):
    status, _, body = env["worker"].call("GET", f"/v1/admin/indexes/{index}/versions/{version}")
    assert status == 200, body
    return body


def test_a_region_without_a_bucket_fails_naming_it_and_the_live_version_still_answers_in_full(pub):
    answers_in_full(pub, "docs", pub["docs"])
    elsewhere = pub["build"]("docs", 1, 2, regions="weur,wnam")
    cmd, env = publish_command(pub["worker"], elsewhere)
    done = subprocess.run(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert done.returncode != 0
    assert "wnam" in done.stderr and "SHARDS_WNAM" in done.stderr, done.stderr
    assert "current" in done.stderr, done.stderr
    # Nothing of it went live, and nothing of it was even staged (the refusal came first).
    answers_in_full(pub, "docs", pub["docs"])
    version = manifest_of(elsewhere)["version"]
    assert pub["worker"].call("GET", f"/v1/admin/indexes/docs/versions/{version}")[0] == 404
    # Flipping to it is refused too.
    status, _, problem = pub["worker"].call("PUT", "/v1/admin/indexes/docs/current", dict(version=version))
    assert status == 404, problem


def test_a_shard_over_the_upload_limit_is_refused_before_any_upload_naming_the_limit(pub):
    done = run_shardc("publish", pub["big"], "--url", pub["worker"].base)
    assert done.returncode != 0
    assert str(pub["limit"]) in done.stderr and "UPLOAD_LIMIT_BYTES" in done.stderr, done.stderr
    assert pub["worker"].call("GET", "/v1/admin/indexes/big/versions")[0] == 404, "nothing was stored"


def test_a_publish_killed_midway_leaves_the_old_version_serving_and_a_rerun_completes_it(pub):
    old = pub["build"]("resume", 0, 2)
    new = pub["build"]("resume", 1, 6)
    publish(pub["worker"], old)
    cmd, env = publish_command(pub["worker"], new)
    proc = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stderr:
        if "verified in" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the publish finished before it could be killed"
    version = manifest_of(new)["version"]
    status = status_of(pub, "resume", version)
    done_blobs = [b for b in status["blobs"] if set(b["verified"]) == set(b["regions"])]
    assert status["complete"] is False and 1 <= len(done_blobs) < 6, status
    answers_in_full(pub, "resume", old)
    # The re-run sends only what is missing, then flips.
    rerun = publish(pub["worker"], new)
    assert rerun["version"] == version and rerun["previous"] == manifest_of(old)["version"]
    assert len(rerun["skipped"]) >= len(done_blobs) and len(rerun["uploaded"]) + len(rerun["skipped"]) == 6, rerun
    assert status_of(pub, "resume", version)["complete"] is True
    time.sleep(TTL_MS / 1000 + 0.2)
    answers_in_full(pub, "resume", new)


def r2_delete(worker, region, key):
    subprocess.run(["npx", "--no-install", "wrangler", "r2", "object", "delete", f"{BUCKETS[region]}/{key}",
                    "--local", "--persist-to", worker.persist], cwd=ROOT, check=True, capture_output=True,
                   env=dict(os.environ, WRANGLER_SEND_METRICS="false"))


def test_with_the_default_placement_each_regions_bucket_alone_serves_it(pub):
    for kept, emptied in (("weur", "enam"), ("enam", "weur")):
        name = f"alone-{kept}"
        index_dir = pub["build"](name, 2, 2)
        m = manifest_of(index_dir)
        assert m["placement"] == "replicate"
        assert all(s["regions"] == ["weur", "enam"] for s in m["shards"]), m["shards"]
        publish(pub["worker"], index_dir)
        # Everything a reader could use from the other region's bucket goes: pointer, manifest, shards.
        prefix = f"{name}/{m['version']}"
        for key in [f"{name}/current", f"{prefix}/manifest.json", *(f"{prefix}/{s['file']}" for s in m["shards"])]:
            r2_delete(pub["worker"], emptied, key)
        answers_in_full(pub, name, index_dir, region=kept)


def test_rollback_serves_the_older_version_within_the_ttl_and_no_answer_mixes_versions(pub):
    first, second = pub["build"]("rolling", 0, 2), pub["build"]("rolling", 1, 3)
    v1, v2 = manifest_of(first)["version"], manifest_of(second)["version"]
    publish(pub["worker"], first)
    time.sleep(TTL_MS / 1000 + 0.2)
    want = {v: {row: expected_ids(pub, d, row) for row in ROWS} for v, d in ((v1, first), (v2, second))}
    answers, stop_event = [], threading.Event()

    def query_loop(row):
        while not stop_event.is_set():
            status, _, body = pub["worker"].call("POST", "/v1/search", dict(index="rolling", vector=vector(pub, row), k=10, ef=64))
            answers.append((row, status, body))

    threads = [threading.Thread(target=query_loop, args=(row,)) for row in (0, 1, 2)]
    for t in threads:
        t.start()
    try:
        publish(pub["worker"], second)
        time.sleep(TTL_MS / 1000 + 0.2)
        done = run_shardc("index", "rollback", "rolling", v1, "--url", pub["worker"].base)
        assert done.returncode == 0, done.stderr
        rolled_back_at = time.time()
        assert json.loads(done.stdout)["previous"] == v2
        time.sleep(TTL_MS / 1000 + 0.2)
        after = len(answers)
        time.sleep(1)
    finally:
        stop_event.set()
        for t in threads:
            t.join()
    seen = set()
    for row, status, body in answers:
        assert status == 200, body
        assert body["partial"] is False, body
        assert [m["id"] for m in body["matches"]] == want[body["version"]][row], "an answer mixes versions"
        seen.add(body["version"])
    assert seen == {v1, v2}, seen
    late = [body["version"] for _, _, body in answers[after:]]
    assert late and set(late) == {v1}, f"answers {TTL_MS} ms after the rollback at {rolled_back_at} must be v1"

    # The lifecycle around it: versions, the live one protected, deletion, gc.
    listed = json.loads(run_shardc("index", "versions", "rolling", "--json", "--url", pub["worker"].base).stdout)
    by_version = {v["version"]: v for v in listed["versions"]}
    assert by_version[v1]["live"] and not by_version[v2]["live"]
    assert by_version[v1]["published_at_ms"] and by_version[v2]["published_at_ms"]
    assert by_version[v2]["bytes"] >= sum(s["bytes"] for s in manifest_of(second)["shards"])
    refused = run_shardc("index", "delete-version", "rolling", v1, "--url", pub["worker"].base)
    assert refused.returncode != 0 and "live" in refused.stderr, refused.stderr
    assert run_shardc("index", "gc", "rolling", "--keep", "1", "--url", pub["worker"].base).returncode == 0
    remaining = {v["version"] for v in pub["worker"].call("GET", "/v1/admin/indexes/rolling/versions")[2]["versions"]}
    assert remaining == {v1, v2}, "gc keeps the newest and the live one"
    assert run_shardc("index", "rollback", "rolling", v2, "--url", pub["worker"].base).returncode == 0
    gc = json.loads(run_shardc("index", "gc", "rolling", "--keep", "1", "--url", pub["worker"].base).stdout)
    assert gc["deleted"] == [v1], gc
    assert run_shardc("index", "delete", "rolling", "--url", pub["worker"].base).returncode == 0
    time.sleep(TTL_MS / 1000 + 0.2)
    assert pub["worker"].search(index="rolling", vector=vector(pub, 0), k=10)[0] == 404


def test_a_blob_that_does_not_match_its_manifest_is_refused_and_not_stored(pub):
    index_dir = pub["build"]("checked", 0, 2)
    m = manifest_of(index_dir)
    worker, base = pub["worker"], f"/v1/admin/indexes/checked/versions/{m['version']}"
    with open(os.path.join(index_dir, "manifest.json"), "rb") as f:
        status, _, staged = worker.call("PUT", f"{base}/manifest", raw=f.read())
    assert status == 200 and staged["complete"] is False, staged
    shard = m["shards"][0]
    with open(os.path.join(index_dir, shard["file"]), "rb") as f:
        blob = bytearray(f.read())
    blob[-1] ^= 0xFF
    status, _, problem = worker.call("PUT", f"{base}/blobs/{shard['file']}", raw=bytes(blob),
                                     headers={"content-type": "application/octet-stream"})
    assert status == 422 and "hashes to" in problem["detail"], problem
    status, _, problem = worker.call("PUT", f"{base}/blobs/{shard['file']}", raw=bytes(blob[:-1]),
                                     headers={"content-type": "application/octet-stream"})
    assert status == 422 and "Content-Length" in problem["detail"], problem
    after = status_of(pub, "checked", m["version"])
    assert after["blobs"][0]["verified"] == [], after
    status, _, problem = worker.call("PUT", "/v1/admin/indexes/checked/current", dict(version=m["version"]))
    assert status == 409 and shard["file"] in problem["detail"], problem
    # A real publish of the same version then completes it.
    assert publish(worker, index_dir)["version"] == m["version"]


def without_request_id(problem):
    return {k: v for k, v in problem.items() if k != "request_id"}


def test_a_tenants_admin_key_cannot_touch_another_tenants_index_and_403s_look_alike(pub):
    worker, acme = pub["worker"], bearer(KEYS["a-admin"])
    other_version = manifest_of(pub["other"])["version"]
    # Its own index: allowed.
    status, _, listed = worker.call("GET", "/v1/admin/indexes/docs/versions", headers=acme)
    assert status == 200 and any(v["live"] for v in listed["versions"]), listed
    attempts = lambda index: [  # noqa: E731
        ("GET", f"/v1/admin/indexes/{index}/versions", None),
        ("GET", f"/v1/admin/indexes/{index}/versions/{other_version}", None),
        ("PUT", f"/v1/admin/indexes/{index}/versions/{other_version}/manifest", {}),
        ("PUT", f"/v1/admin/indexes/{index}/current", dict(version=other_version)),
        ("DELETE", f"/v1/admin/indexes/{index}/versions/{other_version}", None),
        ("POST", f"/v1/admin/indexes/{index}/gc", dict(keep=1)),
        ("DELETE", f"/v1/admin/indexes/{index}", None),
    ]
    for (method, path, body), (_, missing_path, _) in zip(attempts("other"), attempts("no-such-index")):
        got = worker.call(method, path, body, headers=acme)
        missing = worker.call(method, missing_path, body, headers=acme)
        assert got[0] == 403 and missing[0] == 403, (path, got, missing)
        assert without_request_id(got[2]) == without_request_id(missing[2]), (path, got[2], missing[2])
    # Publishing and the lifecycle commands with that key fail the same way.
    other_again = pub["build"]("other", 2, 2)
    for args in (["publish", other_again], ["index", "rollback", "other", other_version],
                 ["index", "delete", "other"], ["index", "versions", "other"]):
        done = run_shardc(*args, "--url", worker.base, key=KEYS["a-admin"])
        assert done.returncode != 0 and "403" in done.stderr, (args, done.stderr)
    # A reading key reaches no admin route at all.
    assert worker.call("GET", "/v1/admin/indexes/docs/versions", headers=bearer(KEYS["a"]))[0] == 403
    # Beta's index still serves, untouched; and every action was logged with its key.
    answers_in_full(pub, "other", pub["other"])
    audit = [line for line in worker.log_lines() if line.get("audit") == "admin"]
    assert any(line["key_id"] == "k-a-admin" and line["index"] == "other" and line["status"] == 403 for line in audit)
    assert any(line["action"] == "admin_set_current" and line["status"] == 200 for line in audit)
