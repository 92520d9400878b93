"""Live writes against the real worker under `wrangler dev`: indexes created through the API and
compiled ones take upserts (JSON and NDJSON) and deletes; every acknowledged write is durable in
the index's IndexWriter object (SQLite-backed storage) and seen by reads that carry its seq; seqs
have no gaps or duplicates; bad batches are refused whole, naming the item; a SIGKILLed
`wrangler dev` restarted on the same state keeps every acknowledged write and no half batch."""
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import (CHAT_MODEL, DIMS, EMBEDDING_MODEL, KEYS, Origin, bearer, build_binary, build_index,
                      corpus, log, publish, quoted_opening, shardc, start_worker, stop, DEVORIGIN, SHARDC)

SMALL_DIMS = 32
SEAL_ROWS = 500
NDJSON = {"content-type": "application/x-ndjson"}


def unit(rng, dims=SMALL_DIMS):
    v = [rng.gauss(0, 1) for _ in range(dims)]
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]


def create(worker, name, dims=SMALL_DIMS, **extra):
    status, _, body = worker.call("POST", "/v1/indexes", dict(name=name, dims=dims, **extra))
    assert status == 200, body
    return body


def upsert(worker, name, items, ndjson=False, headers=None):
    if ndjson:
        raw = "\n".join(json.dumps(item) for item in items).encode()
        return worker.call("POST", f"/v1/indexes/{name}/upsert", raw=raw, headers=dict(NDJSON, **(headers or {})))
    return worker.call("POST", f"/v1/indexes/{name}/upsert", dict(vectors=items), headers=headers)


def delete(worker, name, ids, headers=None):
    return worker.call("POST", f"/v1/indexes/{name}/delete", dict(ids=ids), headers=headers)


def write_state(worker, name):
    status, _, body = worker.call("GET", f"/v1/indexes/{name}")
    assert status == 200, body
    return body["writes"]


def item(i, vector, version=1):
    return dict(id=f"doc-{i}", values=vector, text=f"passage {i} version {version}",
                metadata=dict(n=i, version=version))


@pytest.fixture(scope="module")
def live():
    """A local-mode worker with one devorigin (chat + embeddings), for indexes made by writes."""
    build_binary(SHARDC, "shardc")
    build_binary(DEVORIGIN, "devorigin")
    tmp = tempfile.mkdtemp(prefix="edgerag-e2e-writes-")
    origin = Origin("w0", ["--ttft-ms", "5", "--tokens-per-sec", "1000"], open(os.path.join(tmp, "devorigin.log"), "w"))
    origin.wait_ready()
    origins = json.dumps([dict(name="w0", url=origin.url, models=[CHAT_MODEL], kind="chat"),
                          dict(name="w0-embed", url=origin.url, models=[EMBEDDING_MODEL], kind="embeddings")])
    logfile = open(os.path.join(tmp, "wrangler-writes.log"), "w")
    log(f"starting wrangler dev (writes); log {logfile.name}")
    # Segments of 500 rows, so that the loads below are read mostly from sealed segments in R2.
    worker = start_worker(os.path.join(tmp, "state"), "local", logfile,
                          dict(ORIGINS=origins, WRITE_SEAL_ROWS=str(SEAL_ROWS)))
    yield dict(tmp=tmp, worker=worker)
    stop(worker)
    origin.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def test_four_clients_5000_upserts_and_500_deletes_every_acknowledged_write_is_found_and_no_deleted_id_returned(live):
    worker = live["worker"]
    create(worker, "load")
    clients, per_client, batch = 4, 1250, 25
    vectors = {}
    latest = {}  # id -> (text, metadata) of the acknowledged newest version
    deleted = set()
    seqs = []
    lock = threading.Lock()
    failures = []

    def client(c):
        rng = random.Random(c)
        ids = list(range(c * per_client, (c + 1) * per_client))
        written = []
        for b in range(0, per_client, batch):
            items = []
            for i in ids[b:b + batch]:
                vectors[i] = unit(rng)
                items.append(item(i, vectors[i]))
            status, _, body = upsert(worker, "load", items, ndjson=(b // batch) % 2 == 1)
            if status != 200:
                failures.append(("upsert", status, body))
                return
            with lock:
                seqs.append(body["seq"])
                for it in items:
                    latest[it["id"]] = (it["text"], it["metadata"])
            written.extend(i for i in ids[b:b + batch])
            # Read your write: one of this batch by its own vector, at the batch's seq.
            probe = rng.choice(ids[b:b + batch])
            status, _, found = worker.search(index="load", vector=vectors[probe], k=1, min_seq=body["seq"])
            if status != 200 or found["matches"][0]["id"] != f"doc-{probe}" or found["seq"] < body["seq"]:
                failures.append(("read-your-write", probe, body["seq"], status, found))
            # Every other batch: delete 5 ids and replace 3 of those written before.
            if (b // batch) % 2 == 1:
                doomed = rng.sample([i for i in written if f"doc-{i}" not in deleted], 5)
                status, _, body = delete(worker, "load", [f"doc-{i}" for i in doomed])
                if status != 200:
                    failures.append(("delete", status, body))
                    return
                with lock:
                    seqs.append(body["seq"])
                    deleted.update(f"doc-{i}" for i in doomed)
                alive = [i for i in written if f"doc-{i}" not in deleted]
                again = [item(i, vectors[i], version=2) for i in rng.sample(alive, 3)]
                status, _, body = upsert(worker, "load", again)
                if status != 200:
                    failures.append(("replace", status, body))
                    return
                with lock:
                    seqs.append(body["seq"])
                    for it in again:
                        latest[it["id"]] = (it["text"], it["metadata"])

    started = time.time()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    log(f"writes: {len(seqs)} acknowledged writes from {clients} clients in {time.time() - started:.1f} s")
    assert not failures, failures[:5]
    assert len(deleted) == 500
    # One seq per acknowledged write, no gaps, no duplicates.
    assert sorted(seqs) == list(range(1, len(seqs) + 1))
    state = write_state(worker, "load")
    assert state["seq"] == len(seqs)
    assert state["pending_writes"] == clients * per_client
    last = max(seqs)

    def check(i):
        doc = f"doc-{i}"
        status, _, found = worker.search(index="load", vector=vectors[i], k=1 if doc not in deleted else 10, min_seq=last)
        assert status == 200, found
        ids = [m["id"] for m in found["matches"]]
        if doc in deleted:
            assert doc not in ids, (doc, ids)
            return
        top = found["matches"][0]
        assert top["id"] == doc, (doc, ids)
        assert (top["text"], top["metadata"]) == latest[doc], (doc, top)
        assert top["shard"] == "writes"

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(check, range(clients * per_client)))
    replaced = sum(1 for text, _ in latest.values() if text.endswith("version 2"))
    assert replaced > 0


def segment_reads(worker):
    status, _, health = worker.call("GET", "/healthz")
    assert status == 200, health
    return health["segment_reads"] or dict(read=0, fallbacks=0)


def wait_sealed(worker, name, seq, timeout_s=30):
    """The index's write state once its writer has sealed every write up to `seq`."""
    deadline = time.time() + timeout_s
    while True:
        state = write_state(worker, name)
        if state["sealed_seq"] >= seq or time.time() > deadline:
            return state
        time.sleep(0.2)


def test_writes_are_sealed_into_r2_segments_that_reads_use_and_a_compaction_retires(live):
    worker = live["worker"]
    create(worker, "sealed")
    rng = random.Random(11)
    vectors = [unit(rng) for _ in range(1300)]
    seq = 0
    for b in range(0, 1300, 100):
        status, _, body = upsert(worker, "sealed", [item(i, vectors[i]) for i in range(b, b + 100)])
        assert status == 200, body
        seq = body["seq"]
    # Ids 0..399 replaced: their new rows are sealed later than the old ones.
    for b in range(0, 400, 100):
        status, _, body = upsert(worker, "sealed", [item(i, vectors[i], 2) for i in range(b, b + 100)])
        assert status == 200, body
        seq = body["seq"]
    status, _, body = delete(worker, "sealed", [f"doc-{i}" for i in range(900, 950)])
    assert status == 200, body
    seq = body["seq"]
    # Once sealing is done the unsealed tail holds fewer than 500 rows, so every write up to
    # seq 13 is sealed (seqs 13..18 hold 550).
    sealed_state = wait_sealed(worker, "sealed", 13)
    assert 13 <= sealed_state["sealed_seq"] <= seq and sealed_state["sealed_segments"] >= 1, sealed_state
    assert sealed_state["seq"] == seq and sealed_state["pending_writes"] == 1300
    before = segment_reads(worker)
    for i in list(range(0, 1300, 7)) + list(range(900, 950)):
        status, _, found = worker.search(index="sealed", vector=vectors[i], k=1, min_seq=seq)
        assert status == 200 and found["seq"] == seq, found
        if 900 <= i < 950:
            assert all(m["id"] != f"doc-{i}" for m in found["matches"]), (i, found)
            continue
        match = found["matches"][0]
        version = 2 if i < 400 else 1
        assert match["id"] == f"doc-{i}" and match["text"] == f"passage {i} version {version}", (i, match)
        assert match["metadata"] == dict(n=i, version=version)
    after = segment_reads(worker)
    assert after["read"] - before["read"] >= sealed_state["sealed_segments"], (before, after, sealed_state)
    assert after["fallbacks"] == before["fallbacks"], after
    status, _, listing = worker.call("GET", "/v1/indexes")
    names = [ix if isinstance(ix, str) else ix["name"] for ix in listing["indexes"]]
    assert status == 200 and "sealed" in names and not any(n.startswith(".") for n in names), listing
    # A compaction folds every write into shards and retires the segments.
    env = dict(os.environ, EDGERAG_ADMIN_KEY=KEYS["admin"])
    done = subprocess.run([SHARDC, "compact", "sealed", "--url", worker.base], env=env, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    state = write_state(worker, "sealed")
    assert state["sealed_segments"] == 0 and state["pending_writes"] == 0 and state["base_seq"] == seq, state
    for i in (3, 399, 400, 1299):
        found = worker.search(index="sealed", vector=vectors[i], k=1)[2]
        assert found["matches"][0]["text"] == f"passage {i} version {2 if i < 400 else 1}", found


def test_a_created_empty_index_filled_only_through_the_api_serves_rag(live):
    worker = live["worker"]
    created = create(worker, "notes", dims=DIMS)
    assert created["writes"]["seq"] == 0
    status, _, summary = worker.call("GET", "/v1/indexes/notes")
    assert status == 200 and summary["shards"] == 0 and summary["vectors"] == 0, summary
    assert worker.call("POST", "/v1/indexes", dict(name="notes", dims=DIMS))[0] == 409
    tmp = tempfile.mkdtemp(prefix="edgerag-notes-", dir=live["tmp"])
    passages, vectors, _ = corpus(tmp)
    with open(passages) as f:
        rows = [json.loads(line) for _, line in zip(range(200), f)]
    with open(vectors, "rb") as f:
        data = f.read(len(rows) * DIMS * 4)
    items = [dict(id=row["id"], values=list(struct.unpack_from(f"<{DIMS}f", data, i * DIMS * 4)),
                  text=row["text"], metadata=row.get("metadata", {})) for i, row in enumerate(rows)]
    seq = 0
    for b in range(0, len(items), 50):
        status, _, body = upsert(worker, "notes", items[b:b + 50])
        assert status == 200, body
        seq = body["seq"]
    question = rows[7]["text"][:200]
    status, _, found = worker.search(index="notes", text=question, k=3, min_seq=seq)
    assert status == 200, found
    assert found["seq"] == seq and found["pending_writes"] == len(items)
    status, _, answer = worker.call("POST", "/v1/rag", dict(index="notes", query=question, k=3, model=CHAT_MODEL, min_seq=seq))
    assert status == 200, answer
    sources = [s["id"] for s in answer["sources"]]
    assert sources == [m["id"] for m in found["matches"]]
    assert set(sources) <= {row["id"] for row in rows}
    assert quoted_opening(found["matches"][0]["text"]) in answer["choices"][0]["message"]["content"]


def test_text_upserts_are_embedded_with_the_index_model_and_a_model_or_dims_mismatch_is_a_422(live):
    """Items with text and no values are embedded by the worker through the embeddings pool (the
    index's model), in batches: 150 such passage openings, each then found by its own text at rank 1,
    with the vector devorigin gives that text directly (the same embedding, bit for bit close). An
    index whose model no origin serves, and one whose dims the model does not give, answer 422
    naming the model, and write nothing."""
    worker = live["worker"]
    created = create(worker, "texts", dims=DIMS, embedding_model=EMBEDDING_MODEL)
    assert created["embedding_model"] == EMBEDDING_MODEL
    tmp = tempfile.mkdtemp(prefix="edgerag-texts-", dir=live["tmp"])
    passages, _, _ = corpus(tmp)
    with open(passages) as f:
        rows = [json.loads(line) for _, line in zip(range(150), f)]
    # Openings of passages, so that the dev origin embeds them on this CPU within the try timeout.
    texts = [row["text"][:300] for row in rows]
    items = [dict(id=f"t{i}", text=text, metadata=dict(n=i)) for i, text in enumerate(texts)]
    status, _, body = upsert(worker, "texts", items[:100])
    assert status == 200, body
    status, _, body = upsert(worker, "texts", items[100:], ndjson=True)
    assert status == 200, body
    seq = body["seq"]
    for i in (0, 31, 32, 99, 100, 149):  # either side of the worker's batches of 32 texts
        status, _, found = worker.search(index="texts", text=texts[i], k=1, min_seq=seq, mode="vector")
        assert status == 200, found
        assert found["matches"][0]["id"] == f"t{i}" and found["matches"][0]["metadata"]["n"] == i, (i, found)
        assert found["matches"][0]["score"] > 0.999, found
    status, _, emb = worker.call("POST", "/v1/embeddings", dict(model=EMBEDDING_MODEL, input=texts[5]))
    assert status == 200, emb
    status, _, by_vector = worker.search(index="texts", vector=emb["data"][0]["embedding"], k=1, min_seq=seq)
    assert by_vector["matches"][0]["id"] == "t5" and by_vector["matches"][0]["score"] > 0.9999, by_vector

    create(worker, "other-model", dims=DIMS, embedding_model="some-other-model")
    status, _, problem = upsert(worker, "other-model", [dict(id=1, text="hello")])
    assert status == 422 and "some-other-model" in problem["detail"], problem
    status, _, problem = worker.search(index="other-model", text="hello", k=1)
    assert status == 422 and "some-other-model" in problem["detail"], problem
    create(worker, "eight-dims", dims=8)
    status, _, problem = upsert(worker, "eight-dims", [dict(id=1, values=[0.1] * 8), dict(id=2, text="hello")])
    assert status == 422 and EMBEDDING_MODEL in problem["detail"] and "384 dimensions" in problem["detail"], problem
    assert "vectors[1]" in problem["detail"], problem
    for name in ("other-model", "eight-dims"):
        assert write_state(worker, name)["seq"] == 0, name


def sync(worker, src, state):
    """`shardc sync SRC --url --index folder` (built-in embedder), its JSON report."""
    env = dict(os.environ, EDGERAG_ADMIN_KEY=KEYS["admin"])
    done = subprocess.run([SHARDC, "sync", src, "--url", worker.base, "--index", "folder", "--state", state],
                          env=env, check=True, text=True, stdout=subprocess.PIPE)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_shardc_sync_keeps_a_live_index_answering_the_new_text_and_never_the_removed(live):
    """A folder synced into a created index, then one file edited (one section changed), one
    shortened and one removed, synced again: the second run upserts only the changed chunks and
    deletes the removed ones; afterwards a search by each new text finds it at rank 1, and no
    answer to any query returns a removed or replaced chunk."""
    worker = live["worker"]
    create(worker, "folder", dims=DIMS, embedding_model=EMBEDDING_MODEL)
    src = tempfile.mkdtemp(prefix="edgerag-sync-src-", dir=live["tmp"])
    state = os.path.join(live["tmp"], "sync-state")
    files = {
        "walrus.md": "# Walrus\n\nThe walrus operator assigns a value inside an expression.\n\n"
                     "## Loops\n\nIt shortens while loops that read and test a value.\n",
        "lists.md": "# Lists\n\nA list is a mutable sequence.\n\n## Sorting\n\nlist.sort sorts in place and is stable.\n",
        "gone.txt": "Tuples are immutable sequences, often of mixed types.\n",
    }
    for name, text in files.items():
        with open(os.path.join(src, name), "w") as f:
            f.write(text)
    first = sync(worker, src, state)
    assert first["upserted"] == first["chunks"] >= 5 and first["deleted"] == 0, first
    with open(os.path.join(src, "walrus.md"), "w") as f:
        f.write("# Walrus\n\nThe walrus operator assigns a value inside an expression.\n\n"
                "## Loops\n\nComprehensions can bind a name with it too.\n")
    with open(os.path.join(src, "lists.md"), "w") as f:
        f.write("# Lists\n\nA list is a mutable sequence.\n")
    os.remove(os.path.join(src, "gone.txt"))
    second = sync(worker, src, state)
    assert (second["upserted"], second["deleted"]) == (1, 2), second
    assert second["unchanged"] == second["chunks"] - 1, second
    status, _, summary = worker.call("GET", "/v1/indexes/folder")
    seq = summary["writes"]["seq"]
    status, _, found = worker.search(index="folder", text="Comprehensions can bind a name with it too.", k=1,
                                     min_seq=seq)
    assert status == 200, found
    assert found["matches"][0]["metadata"]["source"] == "walrus.md", found
    assert "Comprehensions" in found["matches"][0]["text"], found
    removed = ("while loops", "list.sort", "Tuples are immutable")
    for question in ("while loops that read and test a value", "sorting a list in place", "immutable tuples",
                     "the walrus operator", "mutable sequence"):
        status, _, found = worker.search(index="folder", text=question, k=10, min_seq=seq)
        assert status == 200, found
        for match in found["matches"]:
            assert not any(r in match["text"] for r in removed), (question, match)
    assert sync(worker, src, state)["upserted"] == 0, "a third run has nothing to send"


def test_bad_writes_are_problems_naming_the_item_and_write_nothing(live):
    worker = live["worker"]
    create(worker, "strict")
    rng = random.Random(7)
    status, _, body = upsert(worker, "strict", [item(1, unit(rng))])
    assert status == 200 and body["seq"] == 1
    cases = [
        ([item(2, unit(rng)), item(3, unit(rng, SMALL_DIMS - 1))], "vectors[1]", "dimensions"),
        ([item(2, unit(rng)), item(2, unit(rng))], "vectors[1]", "repeats"),
        ([dict(item(2, unit(rng)), text="x" * 40000)], "vectors[0]", "`text`"),
        ([dict(item(2, unit(rng)), id=5)], "item 0", "strings"),
        ([dict(item(2, unit(rng)), values=[1e39] * SMALL_DIMS)], "values[0]", "finite"),
    ]
    for items, where, what in cases:
        status, headers, problem = upsert(worker, "strict", items)
        assert status == 422, (where, problem)
        assert headers["Content-Type"] == "application/problem+json"
        assert where in problem["detail"] and what in problem["detail"], problem
    raw = (json.dumps(item(2, unit(rng))) + "\n{\"id\": \"doc-3\", \"values\": [NaN").encode()
    status, _, problem = worker.call("POST", "/v1/indexes/strict/upsert", raw=raw, headers=NDJSON)
    assert status == 400 and "line 2" in problem["detail"], problem
    status, _, problem = worker.call("POST", "/v1/indexes/strict/upsert", raw=b"{\"vectors\": [", headers=None)
    assert status == 400, problem
    assert delete(worker, "strict", ["doc-1", "doc-1"])[0] == 422
    assert upsert(worker, "nowhere", [item(1, unit(rng))])[0] == 404
    # A key that may read but not write, and one that may not read: 403 alike.
    assert upsert(worker, "strict", [item(2, unit(rng))], headers=bearer(KEYS["a"]))[0] == 403
    assert delete(worker, "strict", ["doc-1"], headers=bearer(KEYS["a"]))[0] == 403
    assert worker.call("POST", "/v1/indexes", dict(name="mine", dims=4), headers=bearer(KEYS["a"]))[0] == 403
    # Nothing of the refused batches was written.
    assert write_state(worker, "strict")["seq"] == 1
    status, _, found = worker.search(index="strict", vector=unit(rng), k=10, min_seq=1)
    assert [m["id"] for m in found["matches"]] == ["doc-1"]
    # A seq no write has: 503 with Retry-After once the wait is over.
    status, headers, problem = worker.search(index="strict", vector=unit(rng), k=1, min_seq=99)
    assert status == 503 and headers["Retry-After"] == "1", problem
    assert problem["type"].endswith("write-not-visible"), problem
    status, _, problem = worker.call("POST", "/v1/search", dict(index="strict", vector=unit(rng), k=1),
                                     headers={"x-min-seq": "soon"})
    assert status == 422, problem


@pytest.mark.parametrize("mode", ["local", "durable"])
def test_a_compiled_index_takes_writes_and_replaced_or_deleted_passages_never_come_from_its_shards(env, mode):
    worker = env[mode]
    name = f"wdocs-{mode}"
    built = build_index(env["tmp"], name, 2, env["passages"], env["vectors"])
    publish(worker, built)
    with open(env["passages"]) as f:
        rows = [json.loads(line) for _, line in zip(range(40), f)]
    with open(env["vectors"], "rb") as f:
        data = f.read(len(rows) * DIMS * 4)
    vector = lambda i: list(struct.unpack_from(f"<{DIMS}f", data, i * DIMS * 4))
    before = {i: worker.search(index=name, vector=vector(i), k=1)[2]["matches"][0]["id"] for i in (3, 5, 8, 13, 21)}
    assert before == {i: rows[i]["id"] for i in before}, "each passage is its own nearest"
    status, _, gone = delete(worker, name, [rows[3]["id"], rows[5]["id"]])
    assert status == 200, gone
    status, _, put = upsert(worker, name, [dict(id=rows[i]["id"], values=vector(i), text=f"rewritten {i}",
                                                metadata=dict(rewritten=True)) for i in (8, 13, 21)])
    assert status == 200 and put["seq"] == gone["seq"] + 1, put
    for i in (3, 5):
        status, _, found = worker.search(index=name, vector=vector(i), k=10, min_seq=put["seq"])
        assert status == 200, found
        assert rows[i]["id"] not in [m["id"] for m in found["matches"]], found
        assert len(found["matches"]) == 10 and not found["partial"], found
    for i in (8, 13, 21):
        status, _, found = worker.search(index=name, vector=vector(i), k=10, min_seq=put["seq"])
        assert status == 200, found
        same = [m for m in found["matches"] if m["id"] == rows[i]["id"]]
        assert len(same) == 1, found
        assert same[0] == found["matches"][0]
        assert (same[0]["text"], same[0]["metadata"], same[0]["shard"]) == (f"rewritten {i}", dict(rewritten=True), "writes")
        assert found["pending_writes"] == 5
    status, _, problem = upsert(worker, name, [dict(id="one", values=vector(0))])
    assert status == 422, problem
    assert worker.call("DELETE", f"/v1/admin/indexes/{name}")[0] == 200


def test_sigkill_mid_write_load_keeps_every_acknowledged_write_and_no_half_batch_and_seqs_continue():
    build_binary(SHARDC, "shardc")
    tmp = tempfile.mkdtemp(prefix="edgerag-e2e-crash-")
    persist = os.path.join(tmp, "state")
    worker = start_worker(persist, "local", open(os.path.join(tmp, "wrangler-1.log"), "w"))
    create(worker, "crash")
    acked, sent = [], []  # (seq, items) and items of every batch sent
    lock = threading.Lock()
    stop_at = time.time() + 4

    def writer(c):
        rng = random.Random(100 + c)
        n = 0
        while time.time() < stop_at:
            items = [dict(item(c * 100000 + n + j, unit(rng)), text=f"client {c} batch {n}") for j in range(20)]
            n += 20
            with lock:
                sent.append(items)
            try:
                status, _, body = upsert(worker, "crash", items)
            except OSError:
                return
            if status == 200:
                with lock:
                    acked.append((body["seq"], items))

    threads = [threading.Thread(target=writer, args=(c,)) for c in range(2)]
    for t in threads:
        t.start()
    time.sleep(2.5)
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(timeout=30)
    for t in threads:
        t.join(timeout=70)
    assert acked, "no write was acknowledged before the kill"
    log(f"crash: {len(acked)} batches acknowledged of {len(sent)} sent before SIGKILL")
    worker = start_worker(persist, "local", open(os.path.join(tmp, "wrangler-2.log"), "w"))
    try:
        state = write_state(worker, "crash")
        assert state["seq"] >= max(seq for seq, _ in acked)
        acked_ids = {it["id"] for _, items in acked for it in items}

        def present(it):
            found = worker.search(index="crash", vector=it["values"], k=1, min_seq=state["seq"])[2]
            top = found["matches"][0] if found["matches"] else None
            return top is not None and top["id"] == it["id"] and top["text"] == it["text"]

        for items in sent:
            seen = [present(it) for it in items]
            if items[0]["id"] in acked_ids:
                assert all(seen), items[0]["text"]
            else:
                assert all(seen) or not any(seen), f"half of {items[0]['text']} is applied"
        status, _, body = upsert(worker, "crash", [item(999999, unit(random.Random(1)))])
        assert status == 200 and body["seq"] == state["seq"] + 1, (state, body)
    finally:
        stop(worker)
        shutil.rmtree(tmp, ignore_errors=True)


def read_rows(passages, vectors, start, count):
    """Rows `start..start+count` of a corpus: (passage dict, vector) pairs."""
    with open(passages) as f:
        lines = f.readlines()[start:start + count]
    with open(vectors, "rb") as f:
        f.seek(start * DIMS * 4)
        data = f.read(len(lines) * DIMS * 4)
    return [(json.loads(line), list(struct.unpack_from(f"<{DIMS}f", data, i * DIMS * 4)))
            for i, line in enumerate(lines)]


def normalised(v):
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]


def exact_top10(live, query):
    q = normalised(query)
    scored = sorted(((sum(a * b for a, b in zip(q, v)), pid) for pid, v in live.items()), reverse=True)
    return [pid for _, pid in scored[:10]]


def test_compaction_under_query_load_keeps_recall_and_no_query_fails_or_mixes_versions(live):
    worker = live["worker"]
    tmp = tempfile.mkdtemp(prefix="edgerag-compact-", dir=live["tmp"])
    passages, vectors, queries = corpus(tmp)
    with open(passages) as f:
        n = sum(1 for _ in f)
    compiled_n, written_n, during_n = n // 2, n // 3, 20
    compiled = read_rows(passages, vectors, 0, compiled_n)
    written = read_rows(passages, vectors, compiled_n, written_n)
    during = read_rows(passages, vectors, compiled_n + written_n, during_n)
    # The compiled part, published as index `grow` (2 shards), then writes on top of it.
    part = os.path.join(tmp, "part.jsonl")
    with open(part, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row, _ in compiled)
    part_vectors = os.path.join(tmp, "part.f32")
    with open(part_vectors, "wb") as f:
        f.write(b"".join(struct.pack(f"<{DIMS}f", *v) for _, v in compiled))
    publish(worker, build_index(tmp, "grow", 2, part, part_vectors, regions="weur,enam"))
    deleted = [row["id"] for row, _ in compiled[::30]]
    assert delete(worker, "grow", deleted)[0] == 200
    seq = 0
    for b in range(0, len(written), 100):
        status, _, body = upsert(worker, "grow", [dict(id=row["id"], values=v, text=row["text"])
                                                  for row, v in written[b:b + 100]])
        assert status == 200, body
        seq = body["seq"]
    live_vectors = {row["id"]: v for row, v in compiled + written if row["id"] not in set(deleted)}
    with open(queries, "rb") as f:
        data = f.read(30 * DIMS * 4)
    qs = [list(struct.unpack_from(f"<{DIMS}f", data, i * DIMS * 4)) for i in range(len(data) // (DIMS * 4))]
    truth = [exact_top10(live_vectors, q) for q in qs]

    def recall_round(min_seq):
        hits, versions = 0, set()
        for q, want in zip(qs, truth):
            status, _, found = worker.search(index="grow", vector=q, k=10, min_seq=min_seq)
            assert status == 200, found
            assert not found["partial"], found
            ids = [m["id"] for m in found["matches"]]
            assert len(ids) == len(set(ids)) == 10, ids
            assert not set(ids) & set(deleted), "a deleted passage came back"
            hits += len(set(ids) & set(want))
            versions.add(found["version"])
        return hits / (10 * len(qs)), versions

    before, old_versions = recall_round(seq)
    # Compaction in a subprocess, with queries and new writes running until it ends.
    env = dict(os.environ, EDGERAG_ADMIN_KEY=KEYS["admin"])
    compaction = subprocess.Popen([SHARDC, "compact", "grow", "--url", worker.base], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    during_recalls, during_versions, during_seqs = [], set(), []
    for row, v in during:
        status, _, body = upsert(worker, "grow", [dict(id=row["id"], values=v, text=row["text"])])
        assert status == 200, body
        during_seqs.append(body["seq"])
    while compaction.poll() is None:
        recall, versions = recall_round(seq)
        during_recalls.append(recall)
        during_versions |= versions
    out, err = compaction.communicate()
    assert compaction.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    log(f"compaction: {summary}")
    after, new_versions = recall_round(max(during_seqs))
    log(f"compaction: recall@10 before {before:.3f}, during {during_recalls}, after {after:.3f}")
    assert before >= 0.95 and after >= 0.95 and all(r >= 0.95 for r in during_recalls), (before, during_recalls, after)
    assert new_versions == {summary["version"]} and summary["version"] not in old_versions
    assert during_versions <= old_versions | new_versions
    # The writer dropped what the new version holds, and kept the writes made meanwhile.
    state = write_state(worker, "grow")
    assert state["base_version"] == summary["version"] and state["base_seq"] == summary["compacted_seq"]
    assert state["seq"] == max(during_seqs)
    kept = [s for s in during_seqs if s > summary["compacted_seq"]]
    assert state["pending_writes"] == len(kept)
    status, _, index = worker.call("GET", "/v1/indexes/grow")
    assert index["vectors"] == len(live_vectors) + during_n - len(kept)
    for row, v in during:
        found = worker.search(index="grow", vector=v, k=1, min_seq=state["seq"])[2]
        assert found["matches"][0]["id"] == row["id"], found


def test_the_backlog_limit_refuses_writes_whole_and_views_over_the_isolate_budget_are_reported_not_crashed():
    tmp = tempfile.mkdtemp(prefix="edgerag-e2e-limits-")
    budget = 40_000
    worker = start_worker(os.path.join(tmp, "state"), "local", open(os.path.join(tmp, "wrangler.log"), "w"),
                          dict(WRITE_BACKLOG_MAX="300", WRITES_CACHE_BYTES=str(budget)))
    try:
        create(worker, "small")
        rng = random.Random(3)
        vectors = {}
        for b in range(0, 300, 100):
            items = []
            for i in range(b, b + 100):
                vectors[i] = unit(rng)
                items.append(item(i, vectors[i]))
            status, _, body = upsert(worker, "small", items)
            assert status == 200, body
        status, _, problem = upsert(worker, "small", [item(300, unit(rng)), item(301, unit(rng))])
        assert status == 503 and "WRITE_BACKLOG_MAX" in problem["detail"], problem
        assert problem["type"].endswith("writes-unavailable")
        # Replacing ids the log holds adds no row: still accepted.
        status, _, body = upsert(worker, "small", [item(5, vectors[5], version=2)])
        assert status == 200 and body["seq"] == 4, body
        assert write_state(worker, "small")["pending_writes"] == 300
        # 300 passages of 32 f32s and their texts are more than this isolate's view budget: a read
        # that needs them is refused naming the budget, one that does not is answered, partial.
        status, _, problem = worker.search(index="small", vector=vectors[1], k=1, min_seq=4)
        assert status == 503 and "WRITES_CACHE_BYTES" in problem["detail"], problem
        status, _, found = worker.search(index="small", vector=vectors[1], k=1)
        assert status == 200 and found["partial"] and found["failed_shards"] == ["writes"], found
        health = worker.call("GET", "/healthz")[2]
        assert health["writes_budget_bytes"] == budget and health["writes_bytes"] <= budget, health
    finally:
        stop(worker)
        shutil.rmtree(tmp, ignore_errors=True)
