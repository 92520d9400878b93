"""Metadata filters through the real worker under `wrangler dev`: the filter language's answers
over compiled shards equal `shardc query`'s (local R2 and ShardHost Durable Objects), every match
passes the filter, written passages are filtered by the same language, and a filter the index
cannot answer is a 422 naming the place."""
import json
import random

import pytest

from conftest import shardc
from test_hybrid import question
from test_worker import query_vector
from test_writes import create, unit, upsert


def native(env, filter, *args):
    out = shardc("query", "--index", env["docs"], "--k", "10", "--json", "--filter", json.dumps(filter), *args)
    return json.loads(out)["matches"]


def sources_near(env, row):
    _, _, body = env["local"].search(index="docs", vector=query_vector(env, row), k=10)
    return sorted({m["metadata"]["source"] for m in body["matches"]})


@pytest.mark.parametrize("mode", ["local", "durable"])
def test_filter_language_answers_equal_shardc_query_and_every_match_passes(env, mode):
    worker = env[mode]
    for row in range(3):
        vector, sources = query_vector(env, row), sources_near(env, row)
        assert len(sources) >= 2, sources
        chosen = sources[:2]
        cases = [
            ({"source": {"$in": chosen}}, lambda m: m["source"] in chosen),
            ({"$not": {"source": chosen[0]}}, lambda m: m["source"] != chosen[0]),
            ({"$or": [{"source": chosen[0]}, {"title": {"$gte": "S"}}]},
             lambda m: m["source"] == chosen[0] or m.get("title", "") >= "S"),
            ({"source": {"$nin": chosen}, "title": {"$exists": True}},
             lambda m: m["source"] not in chosen and "title" in m),
        ]
        for filter, passes in cases:
            status, _, body = worker.search(index="docs", vector=vector, k=10, filter=filter)
            assert status == 200, (filter, body)
            want = native(env, filter, "--vector-file", env["queries"], "--row", str(row))
            assert [m["id"] for m in body["matches"]] == [m["id"] for m in want], filter
            assert body["matches"], filter
            assert all(passes(m["metadata"]) for m in body["matches"]), (filter, body["matches"])
        # The lexical ranking takes the same filter.
        filter = {"source": {"$in": chosen}}
        text = question(row)
        status, _, body = worker.search(index="docs", text=text, mode="lexical", k=10, filter=filter)
        assert status == 200, body
        want = native(env, filter, "--text", text, "--mode", "lexical")
        assert [m["id"] for m in body["matches"]] == [m["id"] for m in want]
        assert all(m["metadata"]["source"] in chosen for m in body["matches"])


def test_index_reports_its_filterable_fields_and_other_fields_are_a_422_naming_them(env):
    worker = env["local"]
    status, _, index = worker.call("GET", "/v1/indexes/docs")
    assert status == 200, index
    assert "source" in index["filter_fields"] and "title" in index["filter_fields"], index
    vector = query_vector(env, 0)
    status, _, body = worker.search(index="docs", vector=vector, k=5, filter={"sourse": "x"})
    assert status == 422, body
    assert body["status"] == 422 and body["title"], body
    assert '"sourse"' in body["detail"], body
    status, _, body = worker.search(index="docs", vector=vector, k=5,
                                    filter={"$or": [{"source": {"$gte": "a", "$foo": 1}}]})
    assert status == 422, body
    assert "filter.$or[0].source.$foo" in body["detail"], body
    status, _, body = worker.search(index="docs", vector=vector, k=5, filter={"$and": []})
    assert status == 422, body


def test_written_passages_are_filtered_by_the_same_language(env):
    # The durable worker: test_worker asserts the local one's index listing.
    worker = env["durable"]
    create(worker, "filtered")
    rng = random.Random(7)
    items = [dict(id=f"w{i}", values=unit(rng), text=f"written {i}",
                  metadata=dict(year=2000 + i % 30, lang=["en", "de", "fr"][i % 3],
                                **({"draft": True} if i % 5 == 0 else {})))
             for i in range(120)]
    status, _, written = upsert(worker, "filtered", items)
    assert status == 200, written
    query = unit(rng)
    cases = [
        ({"year": {"$gte": 2020}, "lang": {"$in": ["en", "de"]}},
         lambda m: m["year"] >= 2020 and m["lang"] in ("en", "de")),
        ({"$or": [{"lang": "fr"}, {"draft": {"$exists": True}}]},
         lambda m: m["lang"] == "fr" or "draft" in m),
        ({"$not": {"year": {"$lt": 2025}}}, lambda m: m["year"] >= 2025),
    ]
    for filter, passes in cases:
        status, _, body = worker.search(index="filtered", vector=query, k=100, filter=filter,
                                        min_seq=written["seq"])
        assert status == 200, body
        expected = {item["id"] for item in items if passes(item["metadata"])}
        assert {m["id"] for m in body["matches"]} == expected, filter
