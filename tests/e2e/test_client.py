"""End-to-end: the Python client (`clients/python`, sync and async), its LangChain vector store and
retriever, and the LangChain RAG example (`examples/langchain_rag.py`), against the real worker
under `wrangler dev` with devorigin pools. What they return is compared with the HTTP API's own
answers to the same requests."""
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import pytest

from conftest import CHAT_MODEL, EMBEDDING_MODEL, KEYS, ROOT, SLOW_MODEL, quoted_opening

CLIENT_SRC = os.path.join(ROOT, "clients", "python", "src")
sys.path.insert(0, CLIENT_SRC)  # the client as in this checkout, not an installed copy

from edgerag import AsyncClient, Client, EdgeragError  # noqa: E402
from edgerag.langchain import NO_EMBEDDING, EdgeragRetriever, EdgeragVectorStore  # noqa: E402

QUESTION = "How do I read a file line by line?"
KEY = KEYS["a"]  # tenant acme: index docs only


def searched(worker, **body):
    status, _, answer = worker.call("POST", "/v1/search", dict(index="docs", **body), headers={"authorization": f"Bearer {KEY}"})
    assert status == 200, answer
    return answer


def as_json(match):
    fields = dict(id=match.id, score=match.score, text=match.text, metadata=match.metadata, shard=match.shard)
    # A hybrid match says where each ranking put it; the HTTP API leaves `stages` out otherwise.
    return fields if match.stages is None else dict(fields, stages=match.stages)


@pytest.fixture
def client(rag):
    with Client(rag["worker"].base, KEY) as client:
        yield client


def test_client_search_returns_the_matches_of_the_http_api(rag, client):
    worker = rag["worker"]
    expected = searched(worker, text=QUESTION, k=5, ef=80, probe=3)
    got = client.search("docs", QUESTION, k=5, ef=80, probe=3)
    assert [as_json(m) for m in got.matches] == expected["matches"]
    assert (got.index, got.version, got.partial, got.failed_shards) == ("docs", expected["version"], False, [])
    source = expected["matches"][0]["metadata"]["source"]
    filtered = client.search("docs", QUESTION, k=3, filter={"source": source})
    assert filtered.matches and all(m.metadata["source"] == source for m in filtered.matches)
    by_vector = client.search("docs", vector=[0.0] * 383 + [1.0], k=2)
    assert len(by_vector.matches) == 2


def test_client_lists_indexes_and_describes_one(rag, client):
    worker = rag["worker"]
    assert client.indexes() == ["docs"]
    _, _, summary = worker.call("GET", "/v1/indexes/docs")
    info = client.index("docs")
    assert summary["filter_fields"], summary
    # `filter_fields` is left out of the JSON of an index without the list; the client says None.
    assert info.__dict__ == summary


def test_client_errors_carry_the_problem_document(rag, client):
    base = rag["worker"].base
    with Client(base, "not-" + KEY) as wrong:
        with pytest.raises(EdgeragError) as e:
            wrong.indexes()
    assert e.value.status == 401 and e.value.problem["type"].endswith("/unauthorized") and e.value.request_id
    with pytest.raises(EdgeragError) as e:
        client.index("other")  # another tenant's index, or none at all: the same 403
    assert e.value.status == 403 and e.value.detail == "this API key may not read the requested index"
    with pytest.raises(EdgeragError) as e:
        client.search("docs", QUESTION, k=1000)
    assert e.value.status == 422 and "k" in e.value.detail
    with pytest.raises(EdgeragError) as e:
        client.rag("docs", QUESTION, model="no-such-model")
    assert e.value.status == 404 and e.value.problem["type"].endswith("/unknown-model")
    with pytest.raises(ValueError):
        client.search("docs")  # neither text nor vector
    # 429 with its wait: the limited key allows 3 requests an hour (other tests may spend some).
    with Client(base, KEYS["limited"]) as limited:
        for _ in range(4):
            try:
                limited.indexes()
            except EdgeragError as limit:
                assert limit.status == 429 and limit.retry_after >= 1, limit.problem
                break
        else:
            pytest.fail("the limited key was never refused")


def test_client_rag_streams_tokens_after_its_sources(rag, client):
    tokens, sources_at_first_token = [], None
    with client.rag_stream("docs", QUESTION, model=SLOW_MODEL, k=3, max_tokens=8) as stream:
        for token in stream:
            if sources_at_first_token is None:
                sources_at_first_token = list(stream.sources)
            tokens.append(token)
    assert len(tokens) == 8 and stream.text == "".join(tokens)
    whole = client.rag("docs", QUESTION, model=SLOW_MODEL, k=3, max_tokens=8)
    assert whole.text == stream.text
    assert [s.id for s in sources_at_first_token] == [s.id for s in whole.sources]
    assert [s.n for s in sources_at_first_token] == [1, 2, 3]
    found = searched(rag["worker"], text=QUESTION, k=3)["matches"]
    assert [(s.id, s.shard, s.source) for s in whole.sources] == [
        (m["id"], m["shard"], m["metadata"]["source"]) for m in found]
    assert all(s.text for s in whole.sources) and all(s.text is None for s in sources_at_first_token)


def test_async_client_gives_the_sync_clients_answers(rag, client):
    sync_search = client.search("docs", QUESTION, k=4)
    sync_answer = client.rag("docs", QUESTION, model=CHAT_MODEL, k=2)

    async def run():
        async with AsyncClient(rag["worker"].base, KEY) as aclient:
            searched_, info = await asyncio.gather(aclient.search("docs", QUESTION, k=4), aclient.index("docs"))
            tokens = []
            async with aclient.rag_stream("docs", QUESTION, model=CHAT_MODEL, k=2) as stream:
                async for token in stream:
                    tokens.append(token)
            return searched_, info, tokens, stream.sources, await aclient.indexes()

    searched_, info, tokens, sources, indexes = asyncio.run(run())
    assert searched_ == sync_search and info == client.index("docs") and indexes == ["docs"]
    assert "".join(tokens) == sync_answer.text and len(tokens) > 1
    assert [s.id for s in sources] == [s.id for s in sync_answer.sources]


def test_langchain_retriever_documents_equal_search_matches(rag, client):
    worker = rag["worker"]
    expected = searched(worker, text=QUESTION, k=4)["matches"]

    def documents_of(matches):
        return [(str(m["id"]), m["text"], {**m["metadata"], "id": m["id"], "score": m["score"], "shard": m["shard"]})
                for m in matches]

    def as_tuples(docs):
        return [(d.id, d.page_content, d.metadata) for d in docs]

    retriever = EdgeragRetriever(client=client, index="docs", k=4)
    assert as_tuples(retriever.invoke(QUESTION)) == documents_of(expected)
    store = EdgeragVectorStore(client, "docs")
    assert as_tuples(store.as_retriever(search_kwargs={"k": 4}).invoke(QUESTION)) == documents_of(expected)
    scored = store.similarity_search_with_score(QUESTION, k=4)
    assert [score for _, score in scored] == [m["score"] for m in expected]

    # Filters and search options reach /v1/search unchanged.
    source = expected[0]["metadata"]["source"]
    filtered = searched(worker, text=QUESTION, k=3, ef=100, filter={"source": source})["matches"]
    got = store.similarity_search(QUESTION, k=3, filter={"source": source}, ef=100)
    assert as_tuples(got) == documents_of(filtered)
    relevance = store.similarity_search_with_relevance_scores(QUESTION, k=2)
    assert [r for _, r in relevance] == [m["score"] for m in expected[:2]]

    async def run():
        async with AsyncClient(worker.base, KEY) as aclient:
            native = EdgeragRetriever(client=client, async_client=aclient, index="docs", k=4)
            return await native.ainvoke(QUESTION), await EdgeragVectorStore(client, "docs").asimilarity_search(QUESTION, k=4)

    native, in_executor = asyncio.run(run())
    assert as_tuples(native) == as_tuples(in_executor) == documents_of(expected)


def test_the_langchain_example_answers_from_the_retrieved_sources(rag):
    worker = rag["worker"]
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "langchain_rag.py"), QUESTION, "--url", worker.base,
         "--key", KEY, "--index", "docs", "--model", CHAT_MODEL, "-k", "3"],
        env=dict(os.environ, PYTHONPATH=CLIENT_SRC), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    answer, _, sources = run.stdout.partition("\n\nSources:\n")
    found = searched(worker, text=QUESTION, k=3)["matches"]
    lines = sources.strip().splitlines()
    assert [line.split()[1] for line in lines] == [f"id={m['id']}" for m in found], run.stdout
    for n, match in enumerate(found, 1):
        # devorigin quotes the first sentence of each numbered passage of the chain's prompt.
        assert f"[{n}]" in answer and quoted_opening(match["text"]) in answer, (n, answer)


def test_the_client_package_builds_as_a_wheel_with_its_langchain_extra():
    with tempfile.TemporaryDirectory() as tmp:
        # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
        source, out = os.path.join(tmp, "python"), os.path.join(tmp, "dist")
        shutil.copytree(os.path.join(ROOT, "clients", "python"), source)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "-w", out, source], check=True, capture_output=True, text=True)
        (wheel,) = [f for f in os.listdir(out) if f.endswith(".whl")]
        with zipfile.ZipFile(os.path.join(out, wheel)) as z:
            names = set(z.namelist())
            metadata = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert {"edgerag/__init__.py", "edgerag/client.py", "edgerag/langchain.py", "edgerag/py.typed"} <= names
    assert "Requires-Dist: httpx" in metadata and 'extra == "langchain"' in metadata


def test_client_writes_are_read_back_and_the_vector_store_adds_and_deletes_texts(rag, client):
    from langchain_openai import OpenAIEmbeddings
    worker = rag["worker"]
    writer = Client(worker.base, KEYS["admin"])
    with pytest.raises(EdgeragError) as refused:
        client.create_index("clientnotes", 384)
    assert refused.value.status == 403, "a read key may not create"
    created = writer.create_index("clientnotes", 384)
    assert created["writes"]["seq"] == 0
    # The worker's own embeddings route (the devorigin MiniLM pool), as LangChain's OpenAI embeddings.
    embeddings = OpenAIEmbeddings(base_url=worker.base + "/v1", api_key=KEYS["admin"], model=EMBEDDING_MODEL,
                                  check_embedding_ctx_length=False)
    store = EdgeragVectorStore(writer, "clientnotes", embedding=embeddings)
    ids = store.add_texts(["The walrus operator assigns a value inside an expression.",
                           "A list is a mutable sequence of items."], [{"topic": "syntax"}, {"topic": "types"}])
    first = store.similarity_search("assignment expressions with the walrus operator", k=1)[0]
    assert (first.id, first.metadata["topic"]) == (ids[0], "syntax")
    assert store.delete([ids[0]])
    left = store.similarity_search("assignment expressions with the walrus operator", k=2)
    assert [d.id for d in left] == [ids[1]]
    vector = embeddings.embed_query("by vector")
    written = writer.upsert("clientnotes", [{"id": "v1", "values": vector, "text": "written by vector"}])
    found = writer.search("clientnotes", vector=vector, k=1, min_seq=written.seq)
    assert found.matches[0].id == "v1" and found.seq >= written.seq and found.pending_writes == 3
    assert writer.index("clientnotes").writes["seq"] == written.seq
    # Text alone: the worker embeds it with the index's model.
    by_text = writer.upsert("clientnotes", [{"id": "t1", "text": "Dictionaries map keys to values."}])
    found = writer.search("clientnotes", "Dictionaries map keys to values.", k=1, min_seq=by_text.seq, mode="vector")
    assert found.matches[0].id == "t1" and found.matches[0].score > 0.999
    assert "embedding" in NO_EMBEDDING
    with pytest.raises(ValueError, match="embedding"):
        EdgeragVectorStore(writer, "clientnotes").add_texts(["no embeddings given"])
