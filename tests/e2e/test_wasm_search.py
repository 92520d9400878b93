"""The library's search compiled to wasm32 (examples/wasm_search.rs, run under Node by
scripts/wasm-search) answers the same queries exactly as native `shardc query` does: same ids in
the same order, same scores, texts, metadata and shard names. Needs no worker.

On a host with AVX2, FMA and F16C the scores are the same bits: the native kernels fuse their
multiply-adds and the wasm ones use relaxed SIMD's madd, which V8 fuses there too, in the same
summation order. Elsewhere they agree to 1e-6."""
import json
import os
import subprocess

import pytest

from conftest import DIMS, ROOT, SHARDC, shardc

DEMO = os.path.join(ROOT, "shards", "demo")
QUERIES = os.path.join(DEMO, "queries.f32")
ROWS = 16
K = 10
EFS = [16, 64]


def host_fuses_multiply_add():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return {"avx2", "fma", "f16c"} <= set(flags)


SCORE_TOLERANCE = 0.0 if host_fuses_multiply_add() else 1e-6


# Every distance kernel (f16 and i8, inner product and euclidean) under wasm32 simd128.
@pytest.fixture(scope="module", params=[("f16", "cosine"), ("i8", "cosine"), ("f16", "l2"), ("i8", "l2"),
                                        ("f16", "dot")], ids=lambda p: "-".join(p))
def index(request, tmp_path_factory):
    if not os.path.exists(SHARDC):
        subprocess.run(["cargo", "build", "--release", "--bin", "shardc"], cwd=ROOT, check=True)
    quant, metric = request.param
    out = str(tmp_path_factory.mktemp("wasm") / f"demo-{quant}-{metric}")
    shardc("build", "--passages", os.path.join(DEMO, "passages.jsonl"), "--vectors", os.path.join(DEMO, "vectors.f32"),
           "--dims", str(DIMS), "--metric", metric, "--quant", quant, "--shards", "2",
           "--regions", "weur", "--name", "demo", "--out", out)
    return out


def wasm_search(index_dir):
    """{ef: [matches per query row]} from the wasm probe (built by the script on first use)."""
    out = subprocess.run([os.path.join(ROOT, "scripts", "wasm-search"), "--index", index_dir, "--queries", QUERIES,
                          "--k", str(K), "--ef", ",".join(map(str, EFS)), "--limit", str(ROWS), "--matches"],
                         cwd=ROOT, check=True, text=True, stdout=subprocess.PIPE).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [line["ef"] for line in lines] == EFS and all(line["queries"] == ROWS for line in lines)
    return {line["ef"]: [r["matches"] for r in line["results"]] for line in lines}


def native_search(index_dir, row, ef):
    return json.loads(shardc("query", "--index", index_dir, "--vector-file", QUERIES, "--row", str(row),
                             "--k", str(K), "--ef", str(ef), "--json"))["matches"]


def test_wasm_search_equals_native(index):
    wasm = wasm_search(index)
    for ef in EFS:
        for row in range(ROWS):
            got, want = wasm[ef][row], native_search(index, row, ef)
            assert len(want) == K
            assert [m["id"] for m in got] == [m["id"] for m in want], (ef, row)
            for g, w in zip(got, want):
                assert abs(g["score"] - w["score"]) <= SCORE_TOLERANCE, (ef, row, g["id"], g["score"], w["score"])
                assert (g["text"], g["metadata"], g["shard"]) == (w["text"], w["metadata"], w["shard"])
    # Both shards must have contributed somewhere, or the merge went untested.
    assert len({m["shard"] for ef in EFS for matches in wasm[ef] for m in matches}) == 2


def test_wasm_lexical_search_equals_native(index):
    """BM25 over the postings: the same ids in the same order, texts, metadata and shards in wasm as
    natively, and the same scores to 1e-6 (the one logarithm, of the IDF, comes from each target's
    own libm, computed in f64 and rounded to f32, so it may differ in the last bit)."""
    texts = os.path.join(DEMO, "queries.jsonl")
    out = subprocess.run([os.path.join(ROOT, "scripts", "wasm-search"), "--index", index, "--texts", texts,
                          "--k", str(K), "--limit", str(ROWS), "--matches"],
                         cwd=ROOT, check=True, text=True, stdout=subprocess.PIPE).stdout
    line = next(json.loads(l) for l in out.splitlines() if l.startswith("{"))
    assert line["mode"] == "lexical" and line["queries"] == ROWS
    with open(texts) as f:
        questions = [json.loads(l)["text"] for l in f if l.strip()][:ROWS]
    shards = set()
    for question, got in zip(questions, line["results"]):
        want = json.loads(shardc("query", "--index", index, "--text", question, "--k", str(K), "--json"))["matches"]
        assert len(want) == K, question
        assert [m["id"] for m in got["matches"]] == [m["id"] for m in want], question
        for g, w in zip(got["matches"], want):
            assert abs(g["score"] - w["score"]) <= 1e-6 * max(1.0, abs(w["score"])), (question, g["id"])
            assert (g["text"], g["metadata"], g["shard"]) == (w["text"], w["metadata"], w["shard"])
            assert g["stages"]["lexical"]["rank"] == w["stages"]["lexical"]["rank"]
        shards.update(m["shard"] for m in want)
    assert len(shards) == 2, "both shards contributed"
