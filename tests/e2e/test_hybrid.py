"""Lexical and hybrid search through the real worker under `wrangler dev` (local R2, and ShardHost
Durable Objects in durable mode): the worker's answer is `shardc query`'s (the same engine over the
same shards), each match shows its rank and score in each ranking, and requests a ranking cannot
answer get problem JSON naming why."""
import json

import pytest

from conftest import shardc, query_texts
from test_worker import query_vector

ROWS = range(6)


def question(row):
    with open(query_texts()) as f:
        return [json.loads(line)["text"] for line in f if line.strip()][row]


def native(env, *args):
    return json.loads(shardc("query", "--index", env["docs"], "--k", "10", "--json", *args))["matches"]


def assert_same(got, want):
    assert [m["id"] for m in got] == [m["id"] for m in want]
    for g, w in zip(got, want):
        assert abs(g["score"] - w["score"]) <= 1e-5 * max(1.0, abs(w["score"])), (g["id"], g["score"], w["score"])
        assert (g["text"], g["shard"], g["metadata"]) == (w["text"], w["shard"], w["metadata"])
        assert g.get("stages") is not None
        for stage in ("vector", "lexical"):
            assert (g["stages"].get(stage) or {}).get("rank") == (w["stages"].get(stage) or {}).get("rank")


@pytest.mark.parametrize("mode", ["local", "durable"])
def test_lexical_and_hybrid_answers_equal_shardc_query_with_per_stage_ranks(env, mode):
    worker = env[mode]
    shards_seen = set()
    for row in ROWS:
        text = question(row)
        status, _, body = worker.search(index="docs", text=text, mode="lexical", k=10)
        assert status == 200, body
        assert body["partial"] is False
        want = native(env, "--text", text)
        assert len(want) == 10
        assert_same(body["matches"], want)
        assert all(m["stages"]["lexical"]["rank"] == i + 1 for i, m in enumerate(body["matches"]))
        shards_seen.update(m["shard"] for m in body["matches"])

        vector = query_vector(env, row)
        status, _, body = worker.search(index="docs", vector=vector, text=text, k=10)
        assert status == 200, body
        want = native(env, "--text", text, "--vector-file", env["queries"], "--row", str(row))
        assert_same(body["matches"], want)
        scores = [m["score"] for m in body["matches"]]
        assert scores == sorted(scores, reverse=True)
        for m in body["matches"]:
            ranks = [m["stages"].get(s, {}).get("rank") for s in ("vector", "lexical")]
            fused = sum(1 / (60 + r) for r in ranks if r)
            assert abs(m["score"] - fused) <= 1e-6
    assert len(shards_seen) > 1, "the lexical merge drew on several shards"


def test_hybrid_rrf_k_sets_the_fusion_constant(env):
    vector, text = query_vector(env, 0), question(0)
    status, _, body = env["local"].search(index="docs", vector=vector, text=text, mode="hybrid", rrf_k=1, k=5)
    assert status == 200, body
    want = json.loads(shardc("query", "--index", env["docs"], "--k", "5", "--json", "--text", text,
                             "--vector-file", env["queries"], "--row", "0", "--rrf-k", "1"))["matches"]
    assert_same(body["matches"], want)
    top = body["matches"][0]
    ranks = [top["stages"].get(s, {}).get("rank") for s in ("vector", "lexical")]
    assert abs(top["score"] - sum(1 / (1 + r) for r in ranks if r)) <= 1e-6


@pytest.mark.parametrize("body, words", [
    (dict(vector=None, mode="lexical"), "send `text`"),
    (dict(vector=None, text="open a file", mode="vector"), "hybrid search"),
    (dict(text="open a file", mode="lexical", probe=1), "lexical search reads every shard"),
    (dict(text="open a file", rrf_k=0), "`rrf_k` must be in"),
    (dict(text="open a file", mode="fuzzy"), "expected one of `vector`, `lexical`, `hybrid`"),
    (dict(), "give `vector`, `text` or both"),
])
def test_a_ranking_the_query_cannot_have_is_a_problem_naming_why(env, body, words):
    if "vector" in body:
        body["vector"] = query_vector(env, 0)
    status, headers, answer = env["local"].search(index="docs", **body)
    assert status in (400, 422), answer
    headers = {name.lower(): value for name, value in headers.items()}
    assert headers.get("content-type", "").startswith("application/problem+json")
    assert words in answer["detail"], answer


@pytest.mark.parametrize("mode", ["local", "durable"])
def test_lexical_search_of_a_written_compiled_index_finds_new_words_and_never_deleted_or_replaced_text(env, mode):
    from conftest import build_index, publish
    from test_writes import delete, upsert
    worker = env[mode]
    name = f"lwrites-{mode}"
    publish(worker, build_index(env["tmp"], name, 2, env["passages"], env["vectors"]))
    with open(env["passages"]) as f:
        rows = [json.loads(line) for _, line in zip(range(10), f)]
    with open(env["vectors"], "rb") as f:
        import struct
        from conftest import DIMS
        data = f.read(len(rows) * DIMS * 4)
    vector = lambda i: list(struct.unpack_from(f"<{DIMS}f", data, i * DIMS * 4))
    words = " ".join(rows[3]["text"].split()[:12])
    status, _, before = worker.search(index=name, text=words, mode="lexical", k=10)
    assert status == 200, before
    assert rows[3]["id"] in [m["id"] for m in before["matches"]], "a passage is found by its own words"
    status, _, gone = delete(worker, name, [rows[3]["id"]])
    assert status == 200, gone
    new_id = 10 ** 9
    status, _, put = upsert(worker, name, [
        dict(id=rows[8]["id"], values=vector(8), text="a zebra in zqxv_plomb land"),
        dict(id=new_id, values=vector(9), text="zqxv_plomb zqxv_plomb zebra"),
    ])
    assert status == 200, put
    status, _, after = worker.search(index=name, text=words, mode="lexical", k=10, min_seq=put["seq"])
    assert status == 200 and after["seq"] >= put["seq"], after
    assert rows[3]["id"] not in [m["id"] for m in after["matches"]]
    assert len(after["matches"]) == 10
    status, _, found = worker.search(index=name, text="zqxv_plomb", mode="lexical", k=10, min_seq=put["seq"])
    assert status == 200, found
    assert [m["id"] for m in found["matches"]] == [new_id, rows[8]["id"]], found
    assert all(m["shard"] == "writes" for m in found["matches"])
    assert found["matches"][0]["score"] > found["matches"][1]["score"] > 0
    status, _, old = worker.search(index=name, text=" ".join(rows[8]["text"].split()[:12]), mode="lexical", k=10,
                                   min_seq=put["seq"])
    assert status == 200, old
    assert all(m["text"] != rows[8]["text"] for m in old["matches"]), "the replaced text is gone"
    assert worker.call("DELETE", f"/v1/admin/indexes/{name}")[0] == 200
