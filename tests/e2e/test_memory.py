"""The isolate's memory under `wrangler dev`: an index whose shards total three times the shard
budget (`CACHE_BYTES`, set small) is queried across all its shards by concurrent clients; the
shard bytes `/healthz` reports as held and loading never pass the budget, the page runs that hold
shard buffers never take more than the budget plus one shard, the wasm linear memory grows by no
more than that plus the live memory of request handling (so nothing is lost to fragmentation), and
every answer is exactly what `shardc query` gives."""
import json
import os
import struct
import threading

from conftest import DIMS, build_index, corpus, log, publish, shardc, start_worker, stop
from test_worker import assert_same

SHARDS = 12
ROWS = 24
PAGE = 65536
CLIENTS = 4


def page_rounded(n):
    return -(-n // PAGE) * PAGE


def test_shard_memory_stays_within_the_budget_plus_one_shard_wasm_growth_is_that_plus_live_request_memory_and_answers_stay_exact(tmp_path):
    passages, vectors, queries = corpus(str(tmp_path))
    index = build_index(str(tmp_path), "big", SHARDS, passages, vectors)
    # A one-shard index of a few passages, to warm the worker's own heap (request handling at this
    # concurrency) before the baseline is read; its shard is too small to matter.
    with open(passages) as f, open(tmp_path / "warm.jsonl", "w") as out:
        out.writelines(f.readlines()[:16])
    with open(vectors, "rb") as f, open(tmp_path / "warm.f32", "wb") as out:
        out.write(f.read(16 * DIMS * 4))
    warm = build_index(str(tmp_path), "warm", 1, str(tmp_path / "warm.jsonl"), str(tmp_path / "warm.f32"))
    with open(os.path.join(index, "manifest.json")) as f:
        sizes = [s["bytes"] for s in json.load(f)["shards"]]
    # Every shard of a version is held in a buffer the size of its largest, in whole pages.
    slot = page_rounded(max(sizes))
    budget = SHARDS * slot // 3
    assert 2 * slot < budget, "several shards must fit the budget for the LRU to matter"
    persist = str(tmp_path / "state")
    with open(tmp_path / "wrangler.log", "w") as logfile:
        worker = start_worker(persist, "local", logfile, dict(CACHE_BYTES=str(budget)))
    try:
        publish(worker, index)
        publish(worker, warm)
        expected = {}
        for row in range(ROWS):
            out = shardc("query", "--index", index, "--vector-file", queries, "--row", str(row), "--k", "10", "--json")
            expected[row] = json.loads(out)["matches"]
        with open(queries, "rb") as f:
            data = f.read()
        vectors_by_row = {r: list(struct.unpack(f"{DIMS}f", data[r * DIMS * 4:(r + 1) * DIMS * 4])) for r in range(ROWS)}

        def warm_client():
            for row in range(ROWS):
                status, _, body = worker.search(index="warm", vector=vectors_by_row[row], k=10)
                assert status == 200, body

        warmers = [threading.Thread(target=warm_client) for _ in range(CLIENTS)]
        for t in warmers:
            t.start()
        for t in warmers:
            t.join()
        status, _, health = worker.call("GET", "/healthz")
        assert status == 200 and health["cache_budget_bytes"] == budget, health
        baseline = health["wasm_memory_bytes"]

        failures, healths, stop_watch = [], [], threading.Event()

        def client(offset):
            for i in range(3 * ROWS):
                row = (i + offset) % ROWS
                status, _, body = worker.search(index="big", vector=vectors_by_row[row], k=10)
                if status != 200 or body["partial"]:
                    failures.append((row, status, body))
                    continue
                try:
                    assert_same(body["matches"], expected[row])
                except AssertionError as e:
                    failures.append((row, "mismatch", str(e)))

        def watch():
            while not stop_watch.is_set():
                healths.append(worker.call("GET", "/healthz")[2])
                stop_watch.wait(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        clients = [threading.Thread(target=client, args=(n * 7,)) for n in range(CLIENTS)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        stop_watch.set()
        watcher.join()
        healths.append(worker.call("GET", "/healthz")[2])
        assert not failures, failures[:3]
        held = [h["cached_bytes"] + h["loading_bytes"] for h in healths]
        grown = max(h["wasm_memory_bytes"] for h in healths) - baseline
        runs = max(h["heap_page_run_bytes"] for h in healths) - health["heap_page_run_bytes"]
        small = max(h["heap_small_bytes"] for h in healths) - health["heap_small_bytes"]
        log(f"memory: budget {budget}, shard buffer {slot}, most held {max(held)}; over the baseline "
            f"({baseline} bytes of wasm memory): page runs grew {runs}, small blocks live grew {small}, "
            f"wasm memory grew {grown} ({len(healths)} readings)")
        assert max(held) <= budget, max(held)
        assert runs <= budget + slot, f"shard buffers took {runs} bytes, past the budget {budget} plus one shard {slot}"
        # The rest of the growth is request handling's live memory, not fragmentation.
        assert grown <= budget + slot + page_rounded(max(small, 0)), (
            f"wasm memory grew {grown} bytes: past the budget {budget}, one shard {slot} and {small} bytes of requests' own")
        assert max(h["cached_shards"] for h in healths) < SHARDS, "the shards cannot all have fit"
        _, _, metrics = worker.call("GET", "/metrics")
        assert "edgerag_wasm_memory_bytes" in metrics
    finally:
        stop(worker)
