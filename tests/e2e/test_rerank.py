"""Reranking through the real worker under `wrangler dev`: a search's candidates go to a
`kind: "rerank"` origin pool through the balancer (devorigin's deterministic reranker, in TEI's
`/rerank` and in the Cohere/Jina `/v1/rerank` shapes), come back reordered with their rerank
rank and score beside the earlier stages, feed RAG's sources in that order, and a dead or
unknown reranker leaves the search's own order with an `x-rerank` header saying why."""
import json
import os
import re
import shutil
import tempfile

import pytest

from conftest import (CHAT_MODEL, EMBEDDING_MODEL, Origin, build_binary, build_index, corpus, free_port, log,
                      publish, query_texts, start_worker, stop, DEVORIGIN, SHARDC)

TEI_MODEL, COHERE_MODEL, DEAD_MODEL = "devorigin-rerank-tei", "devorigin-rerank-cohere", "dead-rerank"


@pytest.fixture(scope="module")
def reranked():
    build_binary(SHARDC, "shardc")
    build_binary(DEVORIGIN, "devorigin")
    tmp = tempfile.mkdtemp(prefix="edgerag-e2e-rerank-")
    passages, vectors, _ = corpus(tmp)
    docs = build_index(tmp, "docs", 2, passages, vectors)
    origin = Origin("rr", ["--ttft-ms", "10", "--tokens-per-sec", "1000"],
                    open(os.path.join(tmp, "devorigin-rr.log"), "w")).wait_ready()
    origins = [
        dict(name="chat", url=origin.url, models=[CHAT_MODEL], kind="chat"),
        dict(name="embed", url=origin.url, models=[EMBEDDING_MODEL], kind="embeddings"),
        dict(name="tei", url=origin.url, models=[TEI_MODEL], kind="rerank"),
        dict(name="cohere", url=origin.url + "/v1", models=[COHERE_MODEL], kind="rerank"),
        # Nothing listens there: every try fails to connect.
        dict(name="dead", url=f"http://127.0.0.1:{free_port()}", models=[DEAD_MODEL], kind="rerank"),
    ]
    logfile = open(os.path.join(tmp, "wrangler-rerank.log"), "w")
    log(f"starting wrangler dev (rerank); log {logfile.name}")
    worker = start_worker(os.path.join(tmp, "state"), "local", logfile, dict(
        ORIGINS=json.dumps(origins), ORIGIN_TRY_TIMEOUT_MS="2000", ORIGIN_DEADLINE_MS="4000"))
    publish(worker, docs)
    with open(query_texts()) as f:
        questions = [json.loads(line)["text"] for line in f if line.strip()][:4]
    yield dict(worker=worker, origin=origin, questions=questions)
    stop(worker)
    origin.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def words(text):
    return set(re.findall(r"[^\W_]+", text.lower()))


def devorigin_order(question, candidates):
    """devorigin's reranker: the share of the question's distinct words a passage has; ties keep
    the candidates' order."""
    wanted = words(question)
    scored = [(len(wanted & words(m["text"])) / max(1, len(wanted)), i) for i, m in enumerate(candidates)]
    return sorted(scored, key=lambda s: (-s[0], s[1]))


def search(worker, **body):
    status, headers, answer = worker.call("POST", "/v1/search", dict(index="docs", **body))
    assert status == 200, answer
    return headers, answer["matches"]


@pytest.mark.parametrize("model", [TEI_MODEL, COHERE_MODEL])
def test_rerank_reorders_the_candidates_by_the_reranker_keeping_each_stage(reranked, model):
    worker = reranked["worker"]
    for question in reranked["questions"]:
        _, candidates = search(worker, text=question, k=10)
        assert len(candidates) == 10
        headers, got = search(worker, text=question, k=10, rerank=dict(model=model, top_n=5))
        assert headers["x-rerank"] == f'reranked; model="{model}"', headers
        assert "rerank;dur=" in headers["server-timing"]
        want = devorigin_order(question, candidates)[:5]
        assert [m["id"] for m in got] == [candidates[i]["id"] for _, i in want], (question, got)
        for rank, (m, (score, i)) in enumerate(zip(got, want), 1):
            assert abs(m["score"] - score) <= 1e-6
            assert m["stages"]["rerank"] == {"rank": rank, "score": m["score"]}
            # The hybrid ranks it had before the rerank stay beside it.
            for stage in ("vector", "lexical"):
                assert m["stages"].get(stage) == candidates[i]["stages"].get(stage)
        # A vector-mode candidate gets its vector rank recorded too.
        _, by_vector = search(worker, text=question, k=10, mode="vector")
        _, got = search(worker, text=question, k=10, mode="vector", rerank=dict(model=model))
        assert len(got) == 10
        for m in got:
            before = [c["id"] for c in by_vector].index(m["id"])
            assert m["stages"]["vector"] == {"rank": before + 1, "score": by_vector[before]["score"]}


@pytest.mark.parametrize("model, why", [(DEAD_MODEL, "dead"), ("no-such-reranker", "no-such-reranker")])
def test_a_dead_or_unknown_reranker_leaves_the_search_order_with_a_header(reranked, model, why):
    worker = reranked["worker"]
    question = reranked["questions"][0]
    _, candidates = search(worker, text=question, k=10)
    headers, got = search(worker, text=question, k=10, rerank=dict(model=model, top_n=4))
    assert headers["x-rerank"].startswith("skipped; reason="), headers
    assert why in headers["x-rerank"], headers
    assert got == candidates[:4]


def test_rag_sources_and_prompt_come_in_reranked_order(reranked):
    worker = reranked["worker"]
    question = reranked["questions"][1]
    _, want = search(worker, text=question, k=5, rerank=dict(model=TEI_MODEL, top_n=3))
    status, headers, answer = worker.call("POST", "/v1/rag", dict(index="docs", query=question, k=5, model=CHAT_MODEL,
                                                                  rerank=dict(model=TEI_MODEL, top_n=3)))
    assert status == 200, answer
    assert headers["x-rerank"] == f'reranked; model="{TEI_MODEL}"'
    assert [s["id"] for s in answer["sources"]] == [m["id"] for m in want]
    # The chat route takes the same option as an extension member.
    status, headers, chat = worker.call("POST", "/v1/chat/completions", dict(
        model=CHAT_MODEL, index="docs", rerank=dict(model=COHERE_MODEL, top_n=2),
        messages=[dict(role="user", content=question)]))
    assert status == 200, chat
    assert headers["x-rerank"] == f'reranked; model="{COHERE_MODEL}"'
    assert len(chat["sources"]) == 2


@pytest.mark.parametrize("body, words", [
    (dict(vector=[0.1] * 384, rerank=dict(model=TEI_MODEL)), "send `text` too"),
    (dict(text="open a file", k=5, rerank=dict(model=TEI_MODEL, top_n=6)), "`rerank.top_n` must be in 1..=5"),
    (dict(text="open a file", rerank=dict(model="")), "`rerank.model` is empty"),
    (dict(text="open a file", rerank=dict(model=TEI_MODEL, depth=3)), "unknown field `depth`"),
])
def test_a_rerank_the_search_cannot_take_is_a_422_naming_why(reranked, body, words):
    status, _, problem = reranked["worker"].call("POST", "/v1/search", dict(index="docs", **body))
    assert status == 422, problem
    assert words in problem["detail"], problem
