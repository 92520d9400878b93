"""End-to-end: hostile and broken input against the real worker under `wrangler dev`: oversized,
deeply nested, non-UTF-8 and slowly trickled bodies, absurd numbers and texts. Every answer is a
client error as problem JSON (never a 5xx), and the service is healthy and correct afterwards."""
import http.client
import json
import socket
import urllib.parse

from conftest import DEFAULT_KEY, bearer
from test_worker import query_vector

PROBLEMS = "https://edgerag.dev/problems/"
QUERY_CHARS_MAX = 4096  # src/api/search.rs


def assert_problem(answer, status, kind, case):
    got, headers, problem = answer
    assert got == status, (case, problem)
    content_type = next(v for k, v in headers.items() if k.lower() == "content-type")
    assert content_type.startswith("application/problem+json"), case
    assert isinstance(problem, dict) and problem["type"] == PROBLEMS + kind, (case, problem)
    assert problem["status"] == status and problem["title"] and problem["detail"], (case, problem)


def deep(n):
    return b"[" * n + b"]" * n


def cases(v):
    vector = json.dumps(v).encode()
    search = lambda extra: b'{"index":"docs","vector":' + vector + extra + b"}"  # noqa: E731
    return [
        ("2 MB body", "/v1/search", b'{"index":"docs","text":"' + b"a" * (2 << 20) + b'"}', 413, "body-too-large"),
        ("2 MB chat body", "/v1/chat/completions", b'{"model":"m","messages":[{"role":"user","content":"' + b"a" * (2 << 20) + b'"}]}',
         413, "body-too-large"),
        ("10k-deep arrays in a filter", "/v1/search", search(b',"filter":{"a":' + deep(10_000) + b"}"), 400, "malformed-json"),
        ("10k-deep objects in a filter", "/v1/search", search(b',"filter":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
         400, "malformed-json"),
        ("10k-deep arrays in a chat message", "/v1/chat/completions",
         b'{"model":"m","messages":[{"role":"user","content":' + deep(10_000) + b"}]}", 400, "malformed-json"),
        ("10k-deep arrays as the body", "/v1/search", deep(10_000), 422, "invalid-request"),
        ("invalid UTF-8 in a string", "/v1/search", b'{"index":"docs","text":"caf\xc3\x28 \xff\xfe"}', 400, "malformed-json"),
        ("invalid UTF-8 outside strings", "/v1/search", b'{"index":"docs",\xff\xfe:1}', 400, "malformed-json"),
        ("a lone surrogate escape", "/v1/search", b'{"index":"docs","text":"\\ud800"}', 400, "malformed-json"),
        ("NUL bytes", "/v1/search", b"\x00" * 1000, 400, "malformed-json"),
        ("empty body", "/v1/search", b"", 400, "malformed-json"),
        ("k = 10^12", "/v1/search", search(b',"k":1000000000000'), 422, "invalid-request"),
        ("k = 10^30", "/v1/search", search(b',"k":1000000000000000000000000000000'), 422, "invalid-request"),
        ("k = -1", "/v1/search", search(b',"k":-1'), 422, "invalid-request"),
        ("ef = 2^64", "/v1/search", search(b',"ef":18446744073709551616'), 422, "invalid-request"),
        ("probe = 10^12", "/v1/search", search(b',"probe":1000000000000'), 422, "invalid-request"),
        ("rag k = 10^12", "/v1/rag", b'{"index":"docs","query":"q","model":"m","k":1000000000000}', 422, "invalid-request"),
        ("text over the limit", "/v1/search", json.dumps(dict(index="docs", text="a" * (QUERY_CHARS_MAX + 1))).encode(),
         422, "invalid-request"),
        ("rag query over the limit", "/v1/rag",
         json.dumps(dict(index="docs", query="a" * (QUERY_CHARS_MAX + 1), model="m")).encode(), 422, "invalid-request"),
        ("a 100 kB index name", "/v1/search", json.dumps(dict(index="d" * 100_000, vector=v)).encode(), 404, "unknown-index"),
        ("100k-element vector", "/v1/search", b'{"index":"docs","vector":[' + b"0," * 100_000 + b"0]}", 413, "body-too-large"),
    ]


def test_bad_and_abusive_bodies_are_client_errors(env):
    worker = env["local"]
    for case, path, raw, status, kind in cases(query_vector(env, 0)):
        assert_problem(worker.call("POST", path, raw=raw), status, kind, case)
    # The text limit is stated in the answer.
    answer = worker.call("POST", "/v1/search", dict(index="docs", text="a" * (QUERY_CHARS_MAX + 1)))
    assert str(QUERY_CHARS_MAX) in answer[2]["detail"], answer


def test_an_unannounced_oversized_body_is_refused(env):
    """Chunked transfer encoding: no content-length to refuse up front; the reader stops at the limit."""
    url = urllib.parse.urlparse(env["local"].base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    chunks = (b'{"index":"docs","text":"' if i == 0 else b"a" * 65536 for i in range(40))
    try:
        conn.request("POST", "/v1/search", body=chunks, encode_chunked=True,
                     headers={"content-type": "application/json", **bearer(DEFAULT_KEY)})
        response = conn.getresponse()
        # The worker drains the rest, so the client sees the answer, not a reset mid-upload.
        status, problem = response.status, json.loads(response.read())
    finally:
        conn.close()
    assert status == 413 and problem["type"] == PROBLEMS + "body-too-large", problem


def test_a_trickled_body_times_out_with_408(env):
    """The env workers run with BODY_TIMEOUT_MS = 3000: a body that arrives a byte at a time, for
    longer than that, is answered with 408 while the client is still sending."""
    url = urllib.parse.urlparse(env["local"].base)
    body = json.dumps(dict(index="docs", vector=query_vector(env, 0))).encode()
    head = (f"POST /v1/search HTTP/1.1\r\nhost: {url.netloc}\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {DEFAULT_KEY}\r\ncontent-length: {len(body)}\r\n\r\n").encode()
    answer = b""
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(head)
        sock.settimeout(0.5)
        for byte in body[:40]:  # 40 bytes, one each half second at most: far beyond the deadline
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                answer = sock.recv(65536)
            except socket.timeout:
                continue
            break
        sock.settimeout(30)
        while b"\r\n\r\n" in answer and len(answer.split(b"\r\n\r\n", 1)[1]) < content_length(answer):
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    status_line, rest = answer.split(b"\r\n", 1)
    assert status_line.startswith(b"HTTP/1.1 408"), answer[:300]
    problem = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert problem["type"] == PROBLEMS + "request-timeout" and problem["status"] == 408, problem


def content_length(answer):
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_the_service_is_healthy_after_the_abuse(env):
    """Runs after the tests above (file order): the isolate survived and still answers correctly."""
    worker = env["local"]
    status, _, health = worker.call("GET", "/healthz")
    assert status == 200 and health["status"] == "ok", health
    status, _, answer = worker.search(index="docs", vector=query_vector(env, 3), k=5)
    assert status == 200 and len(answer["matches"]) == 5 and answer["partial"] is False, answer
