"""End-to-end: the response cache (Cache API under `wrangler dev`). Search results are keyed by
the index version a request pins, so a publish is never answered from the old version's entries;
query embeddings are keyed by model and normalised text, so they survive a publish."""
import struct

from conftest import DIMS

QUESTION = "How do I read a file line by line?"


def query_vector(observed, row):
    with open(observed["queries"], "rb") as f:
        f.seek(row * DIMS * 4)
        return list(struct.unpack(f"{DIMS}f", f.read(DIMS * 4)))


def embedding_calls(origin, after):
    return [q for q in origin.requests(after) if q["path"] == "/v1/embeddings"]


def test_a_cached_search_is_not_served_after_a_version_switch(observed):
    worker, vector = observed["worker"], query_vector(observed, 3)
    body = dict(index="docs", vector=vector, k=5, filter=None)
    status, first_headers, first = worker.search(**body)
    assert status == 200, first
    assert first_headers["cache-status"] == "edgerag-search; fwd=uri-miss; stored"
    status, headers, second = worker.search(**body)
    assert status == 200 and headers["cache-status"] == "edgerag-search; hit"
    assert second == first
    # The same query spelled differently (member order, the default ef written out) is the same entry.
    status, headers, third = worker.search(ef=64, k=5, vector=vector, index="docs")
    assert headers["cache-status"] == "edgerag-search; hit" and third == first

    version, ids = observed["switch_version"]()
    assert version != first["version"]
    status, headers, after = worker.search(**body)
    assert status == 200, after
    assert headers["cache-status"] == "edgerag-search; fwd=uri-miss; stored", "a hit for the old version was served"
    assert after["version"] == version
    assert after["matches"] and all(m["id"] in ids for m in after["matches"]), after["matches"]
    assert not {m["id"] for m in after["matches"]} & {m["id"] for m in first["matches"]}
    status, headers, again = worker.search(**body)
    assert headers["cache-status"] == "edgerag-search; hit" and again == after


def test_a_text_query_is_embedded_once_and_its_results_follow_the_version(observed):
    worker, origin = observed["worker"], observed["origin"]
    mark = origin.last_seq()
    status, headers, first = worker.search(index="docs", text=QUESTION, k=4)
    assert status == 200, first
    assert headers["cache-status"] == "edgerag-embed; fwd=uri-miss; stored, edgerag-search; fwd=uri-miss; stored"
    assert len(embedding_calls(origin, mark)) == 1

    # Whitespace is normalised before the text is embedded and keyed: the same entry.
    mark = origin.last_seq()
    status, headers, second = worker.search(index="docs", text=f"  {QUESTION.replace(' ', '   ')}\n", k=4)
    assert status == 200 and headers["cache-status"] == "edgerag-search; hit"
    assert second == first
    # A different k misses the result cache but finds the embedding: still no origin call.
    status, headers, other_k = worker.search(index="docs", text=QUESTION, k=2)
    assert headers["cache-status"] == "edgerag-embed; hit, edgerag-search; fwd=uri-miss; stored"
    assert [m["id"] for m in other_k["matches"]] == [m["id"] for m in first["matches"][:2]]
    assert embedding_calls(origin, mark) == []

    version, ids = observed["switch_version"]()
    status, headers, after = worker.search(index="docs", text=QUESTION, k=4)
    assert status == 200, after
    assert headers["cache-status"] == "edgerag-embed; hit, edgerag-search; fwd=uri-miss; stored"
    assert after["version"] == version and all(m["id"] in ids for m in after["matches"])
    assert embedding_calls(origin, mark) == [], "the embedding does not depend on the index version"


def test_errors_and_partial_answers_are_not_cached(observed):
    worker = observed["worker"]
    for _ in range(2):
        status, headers, problem = worker.search(index="nope", vector=query_vector(observed, 1))
        assert status == 404 and "cache-status" not in headers, problem
        status, headers, problem = worker.search(index="docs", vector=[1.0, 2.0])
        assert status == 422 and "cache-status" not in headers, problem
