"""End-to-end: the inference endpoints (/v1/embeddings, /v1/rag, /v1/chat/completions, text search)
of the real worker under `wrangler dev`, balanced over `devorigin` processes (see conftest.py).
The tests that kill origins run last: they leave the pools degraded."""
import http.client
import json
import os
import struct
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import openai

from conftest import (CHAT_MODEL, DEFAULT_KEY, DIMS, EMBEDDING_MODEL, LIMITED_MODEL, SLOW_MODEL, bearer, log,
                      start_worker, stop)

QUESTION = "How do I read a file line by line?"


def query(env, row):
    """(text, vector) of a query (pydocs' public ones, else the demo corpus's): the vector was
    embedded ahead of time with the same model (the demo's by `shardc embed`)."""
    with open(env["query_texts"]) as f:
        text = [json.loads(line)["text"] for line in f][row]
    with open(env["queries"], "rb") as f:
        f.seek(row * DIMS * 4)
        return text, list(struct.unpack(f"{DIMS}f", f.read(DIMS * 4)))


def stream(worker, path, body):
    """POSTs and yields (seconds since the request, SSE event type, data) as each event arrives."""
    url = urllib.parse.urlparse(worker.base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    t0 = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json", **bearer(DEFAULT_KEY)})
    resp = conn.getresponse()
    if resp.status != 200:
        yield time.perf_counter() - t0, "status", (resp.status, json.loads(resp.read()))
        return
    assert resp.getheader("content-type").startswith("text/event-stream")
    event, data = None, []
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.decode().rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            yield time.perf_counter() - t0, event, "\n".join(data)
            event, data = None, []
    conn.close()


def content_of(events):
    return "".join(json.loads(d)["choices"][0]["delta"].get("content") or ""
                   for _, e, d in events if e is None and d != "[DONE]" and "choices" in json.loads(d))


def origin_metric(origin, name):
    """One unlabelled sample of a devorigin's /metrics."""
    with urllib.request.urlopen(origin.url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in {origin.name}'s metrics")


def wait_for(predicate, seconds, what):
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_text_search_equals_vector_search(rag):
    worker = rag["worker"]
    for row in range(4):
        text, vector = query(rag, row)
        s1, h1, by_text = worker.search(index="docs", text=text, k=10, mode="vector")
        s2, _, by_vector = worker.search(index="docs", vector=vector, k=10)
        assert s1 == s2 == 200, (by_text, by_vector)
        ids_t, ids_v = [m["id"] for m in by_text["matches"]], [m["id"] for m in by_vector["matches"]]
        # The worker's embedding (devorigin, candle) and the offline one agree to cosine > 0.9999:
        # same best match, near-identical top 10.
        assert ids_t[0] == ids_v[0] and len(set(ids_t) & set(ids_v)) >= 8, (ids_t, ids_v)
        assert "embed;dur=" in h1["server-timing"]


def test_rag_answer_quotes_the_passages_search_returned(rag):
    worker = rag["worker"]
    text, _ = query(rag, 5)
    status, headers, answer = worker.call("POST", "/v1/rag", dict(index="docs", query=text, k=3, model=CHAT_MODEL))
    assert status == 200, answer
    _, _, found = worker.search(index="docs", text=text, k=3)
    assert [s["id"] for s in answer["sources"]] == [m["id"] for m in found["matches"]]
    content = answer["choices"][0]["message"]["content"]
    assert answer["object"] == "chat.completion" and content
    for n, source in enumerate(answer["sources"], 1):
        # devorigin quotes the first sentence of each numbered passage, with its marker (a
        # sentence may end after two words: the demo corpus has "Strings 4.8.8. Function ...").
        first_words = " ".join(source["text"].split()[:2])
        assert first_words in content and f"[{n}]" in content, (n, first_words, content)
        assert source["source"] and source["score"] > 0
    timing = headers["server-timing"]
    assert "origin;dur=" in timing and "embed;dur=" in timing


def test_streamed_rag_starts_with_sources_and_arrives_incrementally(rag):
    worker = rag["worker"]
    tokens, tokens_per_sec = 20, 10  # the slow origin: one token every 100 ms, the last at ~2 s
    body = dict(index="docs", query=QUESTION, k=3, model=SLOW_MODEL, max_tokens=tokens)
    events = list(stream(worker, "/v1/rag", dict(body, stream=True)))
    assert events and events[0][1] == "sources", events[:2]
    sources = json.loads(events[0][2])["sources"]
    assert [s["n"] for s in sources] == [1, 2, 3]
    assert events[-1][2] == "[DONE]"
    chunks = [(t, d) for t, e, d in events if e is None and '"content":"' in d and '"content":""' not in d]
    assert len(chunks) == tokens, len(chunks)
    first, last = chunks[0][0], chunks[-1][0]
    # Not buffered: the first token reaches the client long before the origin writes the last
    # (ideally (tokens - 1) / tokens_per_sec = 1.9 s apart).
    assert last - first > 0.6 * (tokens - 1) / tokens_per_sec, (first, last)
    # The same answer as the non-streamed one, whose sources are the streamed ones.
    status, _, whole = worker.call("POST", "/v1/rag", body)
    assert status == 200 and [s["id"] for s in whole["sources"]] == [s["id"] for s in sources]
    assert content_of(events) == whole["choices"][0]["message"]["content"]


def test_embeddings_and_chat_problem_json(rag):
    worker = rag["worker"]
    status, _, body = worker.call("POST", "/v1/embeddings", dict(model=EMBEDDING_MODEL, input=["a", "b"]))
    assert status == 200 and len(body["data"]) == 2 and len(body["data"][1]["embedding"]) == DIMS
    cases = [
        ("/v1/chat/completions", dict(model="nope", messages=[{"role": "user", "content": "q"}]), 404, "unknown-model"),
        ("/v1/rag", dict(index="docs", query="q", model="nope"), 404, "unknown-model"),
        ("/v1/embeddings", dict(model="nope", input="q"), 404, "unknown-model"),
        ("/v1/rag", dict(index="nope", query="q", model=CHAT_MODEL), 404, "unknown-index"),
        ("/v1/rag", dict(index="docs", model=CHAT_MODEL), 422, "invalid-request"),
        ("/v1/chat/completions", dict(model=CHAT_MODEL, messages=[]), 422, "invalid-request"),
        ("/v1/chat/completions", b'{"model": "x", "messages": [', 400, "malformed-json"),
    ]
    for path, body, want, kind in cases:
        raw = body if isinstance(body, bytes) else None
        status, headers, problem = worker.call("POST", path, None if raw else body, raw=raw)
        assert status == want, (path, body, problem)
        assert headers["Content-Type"].startswith("application/problem+json")
        assert problem["type"].endswith("/" + kind) and problem["detail"], problem


def test_openai_sdk_needs_only_base_url_and_key(rag):
    client = openai.OpenAI(base_url=rag["worker"].base + "/v1", api_key=DEFAULT_KEY)
    messages = [{"role": "user", "content": QUESTION}]
    plain = client.chat.completions.create(model=CHAT_MODEL, messages=messages)
    assert plain.choices[0].message.content and plain.choices[0].finish_reason == "stop"

    augmented = client.chat.completions.create(model=CHAT_MODEL, messages=messages, extra_body={"index": "docs"})
    content = augmented.choices[0].message.content
    assert "[1]" in content and "[2]" in content, content
    assert len(augmented.model_extra["sources"]) == 5

    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=CHAT_MODEL, messages=messages, stream=True, extra_headers={"x-rag-index": "docs"}) if c.choices]
    assert len(pieces) > 3 and "".join(pieces) == content

    vectors = client.embeddings.create(model=EMBEDDING_MODEL, input=["os.walk", QUESTION])
    assert [len(d.embedding) for d in vectors.data] == [DIMS, DIMS]

    try:
        client.chat.completions.create(model="nope", messages=messages)
        raise AssertionError("an unknown model must fail")
    except openai.NotFoundError as e:
        assert e.status_code == 404

    stranger = openai.OpenAI(base_url=rag["worker"].base + "/v1", api_key="not-a-key")
    try:
        stranger.chat.completions.create(model=CHAT_MODEL, messages=messages)
        raise AssertionError("an unknown key must fail")
    except openai.AuthenticationError as e:
        assert e.status_code == 401


def test_an_origin_answering_429_is_skipped_for_its_retry_after(rag):
    worker, (busy, spare) = rag["worker"], rag["limited"]
    def park():
        """A request parked on `busy` (its first token takes 20 s): it refuses everything else."""
        request = urllib.request.Request(busy.url + "/v1/chat/completions", json.dumps(dict(
            model=LIMITED_MODEL, messages=[{"role": "user", "content": "hold"}])).encode(),
            {"content-type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=60).read()
        except OSError:
            pass  # the fixture kills `busy` at the end

    threading.Thread(target=park, daemon=True).start()
    wait_for(lambda: origin_metric(busy, "devorigin_inflight") == 1, 10, "the parked request did not reach busy")
    requests = 6
    body = dict(model=LIMITED_MODEL, messages=[{"role": "user", "content": "q"}], max_tokens=5)
    statuses = [worker.call("POST", "/v1/chat/completions", body)[0] for _ in range(requests)]
    assert statuses == [200] * requests, statuses
    # `busy` looks cheaper than `spare` (no latency sample yet vs 500 ms), so the balancer tries it
    # within the first two requests; its 429 says "come back in 30 s", so it is tried once only,
    # that request is retried on `spare`, and every answer comes from `spare`.
    assert origin_metric(busy, "devorigin_rate_limited_total") == 1
    served = [line for line in urllib.request.urlopen(spare.url + "/metrics", timeout=10).read().decode().splitlines()
              if line.startswith('devorigin_requests_total{endpoint="chat"}')]
    assert float(served[0].split()[1]) == requests, served


def test_a_client_leaving_mid_stream_cancels_the_origins_work(rag):
    worker, slow = rag["worker"], rag["slow"]
    url = urllib.parse.urlparse(worker.base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    # Quoting eight passages at 10 tokens/s keeps the origin busy for several seconds.
    conn.request("POST", "/v1/rag", json.dumps(dict(index="docs", query=QUESTION, k=8, model=SLOW_MODEL, stream=True)),
                 {"content-type": "application/json", **bearer(DEFAULT_KEY)})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"event: sources")
    assert origin_metric(slow, "devorigin_inflight") == 1
    left = time.time()
    conn.sock.close()
    conn.close()
    # The worker aborts the origin request as soon as the client is gone, long before the origin
    # would have written its last token.
    wait_for(lambda: origin_metric(slow, "devorigin_inflight") == 0, 4, "the origin kept generating for a client that left")
    log(f"origin request cancelled {time.time() - left:.2f} s after the client left")
    # Cancelling is not a failure: the origin keeps serving.
    status, _, answer = worker.call("POST", "/v1/chat/completions", dict(
        model=SLOW_MODEL, max_tokens=3, messages=[{"role": "user", "content": "q"}]))
    assert status == 200 and answer["choices"][0]["message"]["content"], answer


def test_invalid_origin_configuration_fails_loudly_naming_the_field(rag):
    bad = [
        (dict(ORIGINS=json.dumps([dict(name="a", url="ftp://gpu", models=[CHAT_MODEL], kind="chat")])), "ORIGINS[0].url"),
        (dict(ORIGINS=json.dumps([dict(name="a", url="http://127.0.0.1:9", models=[CHAT_MODEL], kind="chat")]),
              ROUTING="fastest"), "ROUTING"),
    ]
    for variables, field in bad:
        with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "wrangler.log"), "w") as logfile:
            worker = start_worker(tmp, "local", logfile, variables, ready_status=500)
            try:
                for method, path, body in [("GET", "/v1/indexes", None), ("POST", "/v1/chat/completions", dict(
                        model=CHAT_MODEL, messages=[{"role": "user", "content": "q"}]))]:
                    status, headers, problem = worker.call(method, path, body)
                    assert status == 500, (variables, path, problem)
                    assert headers["Content-Type"].startswith("application/problem+json")
                    assert problem["type"].endswith("/misconfigured") and field in problem["detail"], problem
            finally:
                stop(worker)


def test_killing_an_origin_loses_no_request_that_had_not_started_streaming(rag):
    worker, victim = rag["worker"], rag["fast"][0]
    results, stop_at, lock = [], time.time() + 8, threading.Lock()
    kill_at = time.time() + 2.5

    def client(c):
        n = 0
        while time.time() < stop_at:
            body = dict(index="docs", query=f"{QUESTION} ({c}.{n})", k=3, model=CHAT_MODEL, max_tokens=40)
            if n % 2:
                events = list(stream(worker, "/v1/rag", dict(body, stream=True)))
                started = any(e is None and '"content":"' in d for _, e, d in events)
                ok = bool(events) and events[-1][2] == "[DONE]"
                outcome = ("stream", ok, started, events[-1] if events else None)
            else:
                status, _, answer = worker.call("POST", "/v1/rag", body)
                outcome = ("whole", status == 200, False, answer if status != 200 else None)
            with lock:
                results.append((time.time(), *outcome))
            n += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, kill_at - time.time()))
    victim.kill()
    for t in threads:
        t.join()
    after = [r for r in results if r[0] > kill_at]
    assert len(after) >= 8, f"too little load after the kill: {len(after)}"
    broken = sum(1 for r in results if not r[2])
    log(f"origin killed under load: {len(results)} requests, {len(after)} after the kill, {broken} broke off mid-stream")
    lost = [r for r in results if not r[2] and not r[3]]
    assert not lost, lost
    # Only answers already streaming when the origin died may break off (with an error event).
    for r in results:
        if not r[2]:
            assert r[1] == "stream" and r[3] and "origin_interrupted" in r[4][2], r


def test_all_origins_down_gives_503_within_the_deadline(rag):
    worker = rag["worker"]
    for origin in (*rag["fast"], rag["slow"]):
        origin.kill()
    cases = [
        ("/v1/rag", dict(index="docs", query=QUESTION, model=CHAT_MODEL)),
        ("/v1/chat/completions", dict(model=SLOW_MODEL, messages=[{"role": "user", "content": "q"}])),
        # A text never asked before: a cached embedding would (rightly) answer without origins.
        ("/v1/search", dict(index="docs", text="Which origin answers when none is up?")),
    ]
    for path, body in cases:
        t0 = time.perf_counter()
        status, headers, problem = worker.call("POST", path, body)
        elapsed = time.perf_counter() - t0
        assert status == 503, (path, problem)
        assert problem["type"].endswith("/origins-unavailable") and problem["detail"], problem
        assert elapsed < rag["deadline_s"] + 1, (path, elapsed)
