"""End-to-end: what reaches an inference origin (devorigin records every request it gets) and
what the worker logs. Only a fixed allow-list of headers goes to origins, with values the worker
made (a sanitised request id, a `traceparent` rebuilt from parsed ids): a client's headers,
however malformed, are never forwarded, and never cause a 5xx."""
import re
import socket
import urllib.parse

from conftest import CHAT_MODEL, DEFAULT_KEY, EMBEDDING_MODEL

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$")
# What the worker sets, and what the runtime adds to every subrequest (host, length, cf-worker).
ORIGIN_HEADERS = {"content-type", "accept", "traceparent", "x-request-id", "authorization",
                  "host", "content-length", "cf-worker"}
SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def headers_of(request):
    return dict(request["headers"])


def sent(origin, after, path):
    return [q for q in origin.requests(after) if q["path"] == path]


def test_a_callers_trace_reaches_the_origin_with_our_span(observed):
    worker, origin = observed["worker"], observed["origin"]
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    mark = origin.last_seq()
    status, headers, body = worker.call(
        "POST", "/v1/chat/completions",
        dict(model=CHAT_MODEL, messages=[{"role": "user", "content": "How does tracing reach origins?"}]),
        headers={"traceparent": f"00-{trace_id}-{parent}-01", "x-request-id": "trace-test-1", "x-rag-index": "docs"})
    assert status == 200, body
    assert headers["x-request-id"] == "trace-test-1"
    embed, chat = sent(origin, mark, "/v1/embeddings"), sent(origin, mark, "/v1/chat/completions")
    assert len(embed) == 1 and len(chat) == 1, origin.requests(mark)
    spans = set()
    for request in (*embed, *chat):
        got = headers_of(request)
        match = TRACEPARENT.match(got["traceparent"])
        assert match and match[1] == trace_id and match[2] != parent, got
        assert got["traceparent"].endswith("-01"), "the sampled flag is kept"
        assert got["x-request-id"] == "trace-test-1"
        assert got["accept"] == ("application/json")
        spans.add(match[2])
    assert len(spans) == 1, "one span of ours is the parent of both calls"

    line = worker.log_line("trace-test-1")
    assert line["trace_id"] == trace_id
    assert (line["method"], line["route"], line["status"], line["index"], line["level"]) == (
        "POST", "chat_completions", 200, "docs", "info")
    assert line["duration_ms"] >= 0 and line["ts"].endswith("Z")
    assert line["cache"].startswith("edgerag-embed; fwd=uri-miss")


def test_an_invalid_traceparent_starts_a_fresh_trace(observed):
    worker, origin = observed["worker"], observed["origin"]
    for n, junk in enumerate([
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "not a traceparent at all",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" + "x" * 4000,
    ]):
        mark = origin.last_seq()
        request_id = f"junk-trace-{n}"
        status, headers, body = worker.call("POST", "/v1/search", dict(index="docs", text=f"fresh trace {n}", k=2),
                                            headers={"traceparent": junk, "x-request-id": request_id})
        assert status == 200, (junk, body)
        (embed,) = sent(origin, mark, "/v1/embeddings")
        match = TRACEPARENT.match(headers_of(embed)["traceparent"])
        assert match and match[1] not in junk.lower(), (junk, headers_of(embed))
        line = worker.log_line(request_id)
        assert line["trace_id"] == match[1], "the log names the trace the origin got"


def test_failures_are_logged_with_their_problem_type(observed):
    worker = observed["worker"]
    status, _, problem = worker.call("POST", "/v1/search", dict(index="no-such-index", vector=[1.0]),
                                     headers={"x-request-id": "log-test-404"})
    assert status == 404, problem
    line = worker.log_line("log-test-404")
    assert (line["level"], line["status"], line["route"], line["error"]) == ("warn", 404, "search", problem["type"])
    assert line["detail"] == problem["detail"] and line["index"] == "no-such-index" and line["cache"] is None


def raw_request(worker, method, path, header_lines, body=b""):
    """Sends bytes as given (no client library would send these headers), with the default API
    key first; (status, head, body)."""
    url = urllib.parse.urlparse(worker.base)
    head = [f"{method} {path} HTTP/1.1".encode(), f"host: {url.hostname}:{url.port}".encode(),
            b"connection: close", f"content-length: {len(body)}".encode(),
            f"authorization: Bearer {DEFAULT_KEY}".encode(), *header_lines]
    with socket.create_connection((url.hostname, url.port), timeout=30) as s:
        s.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        data = b""
        # The dev server keeps the connection open: read the head, then the body it announces.
        while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
            data += chunk
        head_bytes, _, payload = data.partition(b"\r\n\r\n")
        head_text = head_bytes.decode(errors="replace").lower()
        length = re.search(r"\r\ncontent-length: *(\d+)", head_text)
        done = (lambda: len(payload) >= int(length[1])) if length else (lambda: payload.endswith(b"0\r\n\r\n"))
        while not done() and (chunk := s.recv(65536)):
            payload += chunk
    status_line, _, head_text = head_text.partition("\r\n")
    return int(status_line.split()[1]), head_text, payload


def test_client_headers_never_reach_origins_raw(observed):
    worker, origin = observed["worker"], observed["origin"]
    valid = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    chat = (b'{"model":"' + CHAT_MODEL.encode() + b'","messages":[{"role":"user","content":"q\\r\\nx-evil: body"}]}')
    # Distinct texts, so that each search embeds (the embedding cache would answer a repeat).
    search = b'{"index":"docs","text":"injection attempt %d","k":2}'
    embeddings = b'{"model":"' + EMBEDDING_MODEL.encode() + b'","input":"injection"}'
    json_type = b"content-type: application/json"
    cases = [
        # A CR/LF in a value ends the header line: the rest arrives as a header of its own.
        ("/v1/search", search, [b"traceparent: " + valid + b"\r\nx-evil: injected-1"]),
        ("/v1/search", search, [b"x-request-id: abc\x01def", b"traceparent: junk\x7f"]),
        ("/v1/search", search, [b"x-request-id: \xff\xfe-latin1", b"traceparent: " + valid + b"\xff"]),
        ("/v1/search", search, [b"x-request-id: bare\rcr", b"x-evil: injected-2"]),
        ("/v1/search", search, [b"traceparent: " + valid, b" folded-continuation", b"x-evil: injected-3"]),
        ("/v1/search", search, [b"traceparent: " + valid, b"traceparent: " + valid]),
        ("/v1/search", search, [b"x-request-id: " + b"a" * 200, b"x-evil: injected-4"]),
        ("/v1/chat/completions", chat, [b"x-rag-index: docs\x7f", b"x-evil: injected-5"]),
        ("/v1/chat/completions", chat, [b"x-rag-index: docs", b"authorization: Bearer client-secret-1",
                                        b"cookie: session=client-secret-2", b"x-forwarded-for: 6.6.6.6"]),
        ("/v1/embeddings", embeddings, [b"x-request-id: emb\x00nul", b"openai-organization: client-secret-3"]),
        ("/v1/chat/completions", chat.replace(CHAT_MODEL.encode(), b"m\\r\\nx-evil: model"), [b"x-evil: injected-6"]),
        ("/v1/embeddings", embeddings.replace(EMBEDDING_MODEL.encode(), b"e\\r\\nx-evil: model"), []),
    ]
    mark = origin.last_seq()
    statuses = []
    for n, (path, body, lines) in enumerate(cases):
        body = body.replace(b"%d", str(n).encode())
        status, head, payload = raw_request(worker, "POST", path, [json_type, *lines], body)
        statuses.append(status)
        assert status < 500, (lines, status, payload[:300])
        if "x-request-id: " in head:
            given = head.split("x-request-id: ", 1)[1].split("\r\n", 1)[0]
            assert SANE_ID.match(given), (lines, given)
    assert statuses.count(200) >= 6, statuses  # most reach the worker and are answered
    reached = origin.requests(mark)
    assert len(reached) >= 6, reached
    for request in reached:
        names = {name for name, _ in request["headers"]}
        assert names <= ORIGIN_HEADERS, (names - ORIGIN_HEADERS, request)
        got = headers_of(request)
        assert TRACEPARENT.match(got["traceparent"]) and SANE_ID.match(got["x-request-id"]), got
        assert "authorization" not in got, "this origin has no API key: the client's must not stand in"
        for value in got.values():
            assert "evil" not in value and "client-secret" not in value and "6.6.6.6" not in value, got
            assert not re.search(r"[\x00-\x1f\x7f]", value), got
