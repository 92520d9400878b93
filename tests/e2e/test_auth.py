"""End-to-end: API keys, tenants' indexes, internal routes and per-key rate limits of the real
worker under `wrangler dev` (the keys and their table are in conftest.py)."""
import secrets

from conftest import CHAT_MODEL, EMBEDDING_MODEL, KEYS, LIMITED_RATE, bearer, sha256
from test_worker import query_vector

PROBLEMS = "https://edgerag.dev/problems/"


def header(headers, name):
    return next((v for k, v in headers.items() if k.lower() == name), None)


def assert_problem(answer, status, kind):
    got, headers, problem = answer
    assert got == status, problem
    assert header(headers, "content-type").startswith("application/problem+json")
    assert problem["type"] == PROBLEMS + kind and problem["status"] == status and problem["title"], problem
    return problem


def without_request_id(problem):
    return {k: v for k, v in problem.items() if k != "request_id"}


def key_routes(env):
    """Every route that needs a key, with a body it would accept."""
    vector = query_vector(env, 0)
    return [
        ("GET", "/v1/indexes", None),
        ("GET", "/v1/indexes/docs", None),
        ("POST", "/v1/search", dict(index="docs", vector=vector, k=3)),
        ("POST", "/v1/embeddings", dict(model=EMBEDDING_MODEL, input="q")),
        ("POST", "/v1/rag", dict(index="docs", query="q", model=CHAT_MODEL)),
        ("POST", "/v1/chat/completions", dict(model=CHAT_MODEL, messages=[{"role": "user", "content": "q"}])),
    ]


def test_every_route_but_health_needs_a_valid_key(env):
    worker = env["local"]
    assert worker.call("GET", "/healthz", headers={"authorization": None})[0] == 200
    wrong = "test-a-" + secrets.token_hex(16)
    presented = {
        "no header": None,
        "empty": "",
        "no token": "Bearer",
        "other scheme": f"Basic {KEYS['a']}",
        "no scheme": KEYS["a"],
        "wrong key": f"Bearer {wrong}",
        "the stored hash": f"Bearer {sha256(KEYS['a'])}",
        "a key with a suffix": f"Bearer {KEYS['a']}x",
    }
    details = set()
    for method, path, body in key_routes(env):
        for name, authorization in presented.items():
            answer = worker.call(method, path, body, headers={"authorization": authorization})
            problem = assert_problem(answer, 401, "unauthorized")
            assert header(answer[1], "www-authenticate") == "Bearer", (path, name)
            assert KEYS["a"] not in str(problem) and wrong not in str(problem), (path, name, problem)
            details.add(problem["detail"])
        # The same route with a valid key gets past authentication (no origins here: 404 or 500
        # naming ORIGINS for the inference routes, 200 for the others).
        status, _, body_ = worker.call(method, path, body, headers=bearer(KEYS["a"]))
        assert status != 401, (path, body_)
    assert len(details) == 1, details


def test_a_tenant_reads_only_its_indexes(env):
    worker, vector = env["local"], query_vector(env, 0)
    a, b = bearer(KEYS["a"]), bearer(KEYS["b"])
    assert worker.call("POST", "/v1/search", dict(index="docs", vector=vector, k=3), headers=a)[0] == 200
    assert worker.call("POST", "/v1/search", dict(index="other", vector=vector, k=3), headers=b)[0] == 200
    assert worker.call("GET", "/v1/indexes/docs", headers=a)[0] == 200

    # Another tenant's index and one that does not exist get the same answer.
    foreign = assert_problem(worker.call("POST", "/v1/search", dict(index="other", vector=vector, k=3), headers=a), 403, "forbidden")
    missing = assert_problem(worker.call("POST", "/v1/search", dict(index="no-such-index", vector=vector, k=3), headers=a), 403, "forbidden")
    assert without_request_id(foreign) == without_request_id(missing)
    described = [assert_problem(worker.call("GET", f"/v1/indexes/{name}", headers=a), 403, "forbidden") for name in ("other", "no-such-index")]
    assert without_request_id(described[0]) == without_request_id(described[1]) == without_request_id(foreign)
    assert "other" not in foreign["detail"]

    assert worker.call("GET", "/v1/indexes", headers=a)[2] == {"indexes": ["docs"]}
    assert worker.call("GET", "/v1/indexes", headers=b)[2] == {"indexes": ["other"]}
    everything = worker.call("GET", "/v1/indexes", headers=bearer(KEYS["admin"]))[2]["indexes"]
    assert {"docs", "other"} <= set(everything)
    # The admin key (indexes ["*"]) still learns that an index does not exist.
    assert_problem(worker.call("GET", "/v1/indexes/no-such-index", headers=bearer(KEYS["admin"])), 404, "unknown-index")


def test_no_route_reads_another_tenants_index(rag):
    """Tenant beta may not read `docs` by search, by /v1/rag, or by chat with the index in the
    body or in `x-rag-index`; its key still serves embeddings and plain chat."""
    worker, b = rag["worker"], bearer(KEYS["b"])
    question = [{"role": "user", "content": "How do I read a file?"}]
    attempts = [
        ("/v1/search", dict(index="docs", text="How do I read a file?"), {}),
        ("/v1/rag", dict(index="docs", query="How do I read a file?", model=CHAT_MODEL), {}),
        ("/v1/chat/completions", dict(model=CHAT_MODEL, messages=question, index="docs"), {}),
        ("/v1/chat/completions", dict(model=CHAT_MODEL, messages=question), {"x-rag-index": "docs"}),
        ("/v1/chat/completions", dict(model=CHAT_MODEL, messages=question, stream=True), {"x-rag-index": "docs"}),
    ]
    for path, body, extra in attempts:
        problem = assert_problem(worker.call("POST", path, body, headers=dict(b, **extra)), 403, "forbidden")
        assert "docs" not in problem["detail"], problem
        # The same request with tenant acme's key is answered.
        status, _, answer = worker.call("POST", path, body, headers=dict(bearer(KEYS["a"]), **extra))
        assert status == 200, (path, answer)
    status, _, answer = worker.call("POST", "/v1/embeddings", dict(model=EMBEDDING_MODEL, input="q"), headers=b)
    assert status == 200 and answer["data"], answer
    status, _, answer = worker.call("POST", "/v1/chat/completions", dict(model=CHAT_MODEL, messages=question), headers=b)
    assert status == 200 and "sources" not in answer, answer


def test_internal_paths_are_not_routes(env):
    """The ShardHost and RateLimiter Durable Objects are reachable only through their bindings."""
    worker = env["durable"]  # the mode in which ShardHost objects serve searches
    paths = ["/shard-host/search", "/rate-limiter/take", "/internal/shards", "/admin", "/v1/admin",
             "/v1/indexes/docs/shard-000", "/v1/search/../../shard-host/search", "//shard-host/search"]
    for path in paths:
        for method in ("GET", "POST"):
            for headers in ({"authorization": None}, bearer(KEYS["admin"])):
                answer = worker.call(method, path, {"index": "docs"} if method == "POST" else None, headers=headers)
                assert_problem(answer, 404, "not-found")


def test_metrics_are_for_admin_keys_only(env):
    """/metrics tells of every tenant's traffic: a tenant's key gets 403, no key 401."""
    worker = env["local"]
    assert_problem(worker.call("GET", "/metrics", headers={"authorization": None}), 401, "unauthorized")
    for tenant in ("a", "b"):
        assert_problem(worker.call("GET", "/metrics", headers=bearer(KEYS[tenant])), 403, "forbidden")
    status, headers, text = worker.call("GET", "/metrics", headers=bearer(KEYS["admin"]))
    assert status == 200 and header(headers, "content-type").startswith("text/plain"), text
    assert "edgerag_requests_total" in text


def test_a_key_over_its_rate_gets_429_and_others_are_unaffected(env):
    worker, limited, other = env["local"], bearer(KEYS["limited"]), bearer(KEYS["a"])
    for _ in range(LIMITED_RATE["requests"]):
        assert worker.call("GET", "/v1/indexes", headers=limited)[0] == 200
        assert worker.call("GET", "/v1/indexes", headers=other)[0] == 200
    answer = worker.call("GET", "/v1/indexes", headers=limited)
    assert_problem(answer, 429, "rate-limited")
    retry_after = int(header(answer[1], "retry-after"))
    # One request's worth of the rate: 3 an hour refills one every 1200 s.
    interval = LIMITED_RATE["per_s"] // LIMITED_RATE["requests"]
    assert 1 <= retry_after <= interval, retry_after
    # Every route counts against the key, and the other keys of the tenant are not slowed.
    assert_problem(worker.call("POST", "/v1/search", dict(index="docs", vector=query_vector(env, 0)), headers=limited), 429, "rate-limited")
    assert worker.call("GET", "/v1/indexes", headers=other)[0] == 200
    assert worker.call("GET", "/healthz", headers=limited)[0] == 200
