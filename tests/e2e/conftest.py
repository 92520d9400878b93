"""Fixtures for the end-to-end suite: a small index built by `shardc build`, published by `shardc
publish` through the admin routes of the real worker under `wrangler dev` into its local R2
(local and durable serving modes); for the inference
endpoints, `devorigin` processes on free loopback ports behind a worker whose ORIGINS names them;
for caching and observability, a worker of its own whose index is republished from other data.
Every worker runs with authentication on, with the key table KEY_TABLE (keys fresh per session);
`Worker.call` sends the admin key unless the test's headers say otherwise."""
import hashlib
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYDOCS = os.path.join(ROOT, "..", "shared", "data", "pydocs")
DIMS = 384
SHARDC = os.environ.get("SHARDC", os.path.join(ROOT, "target", "release", "shardc"))
DEVORIGIN = os.environ.get("DEVORIGIN", os.path.join(ROOT, "target", "release", "devorigin"))
CHAT_MODEL = "devorigin-extractive"
SLOW_MODEL = "slow"
LIMITED_MODEL = "limited"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"

# API keys: an admin key that reads every index (the default for requests), tenant "acme" (index
# `docs`), tenant "beta" (index `other`), an acme key limited to 3 requests an hour, and each
# tenant's admin key, which manages (publishes, rolls back, deletes) only that tenant's index.
KEYS = {name: f"test-{name}-{secrets.token_hex(16)}"
        for name in ("admin", "a", "b", "limited", "a-admin", "b-admin")}
LIMITED_RATE = dict(requests=3, per_s=3600)


def sha256(key):
    return hashlib.sha256(key.encode()).hexdigest()


KEY_TABLE = [
    dict(id="k-admin", tenant="ops", sha256=sha256(KEYS["admin"]), indexes=["*"], admin=True),
    dict(id="k-a", tenant="acme", sha256=sha256(KEYS["a"]), indexes=["docs"]),
    dict(id="k-b", tenant="beta", sha256=sha256(KEYS["b"]), indexes=["other"]),
    dict(id="k-limited", tenant="acme", sha256=sha256(KEYS["limited"]), indexes=["docs"], rate=LIMITED_RATE),
    dict(id="k-a-admin", tenant="acme", sha256=sha256(KEYS["a-admin"]), indexes=["docs"], admin=True),
    dict(id="k-b-admin", tenant="beta", sha256=sha256(KEYS["b-admin"]), indexes=["other"], admin=True),
]
DEFAULT_KEY = KEYS["admin"]


def bearer(key):
    return {"authorization": f"Bearer {key}"}


def log(msg):
    print(f"[e2e] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body_of(raw):
    """JSON when it is (every answer of ours is); the raw text otherwise, so a failure shows it."""
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")


class Worker:
    """HTTP helper for one `wrangler dev` instance; `log_path` is its output (the worker's logs)."""

    def __init__(self, port, persist, proc, log_path):
        self.base, self.persist, self.proc, self.log_path = f"http://127.0.0.1:{port}", persist, proc, log_path
        self.port = port

    def call(self, method, path, body=None, headers=None, raw=None):
        """`headers` override the defaults; a header given as None is not sent."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = dict(bearer(DEFAULT_KEY), **({"content-type": "application/json"} if data is not None else {}))
        hdrs.update(headers or {})
        hdrs = {name: value for name, value in hdrs.items() if value is not None}
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, dict(r.headers), body_of(r.read())
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), body_of(e.read())

    def search(self, **body):
        return self.call("POST", "/v1/search", body)

    def metrics(self):
        """`GET /metrics` read by the Prometheus client's own parser: {(sample name, labels): value}."""
        status, headers, text = self.call("GET", "/metrics")
        assert status == 200, text
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def log_lines(self):
        """The JSON lines in the worker's output (wrangler dev prints console.log as is, and
        console.warn/error inside a coloured `[WARNING]`/`[ERROR]` frame)."""
        lines = []
        with open(self.log_path, errors="replace") as f:
            for line in f:
                start, end = line.find("{"), line.rfind("}")
                if 0 <= start < end:
                    try:
                        lines.append(json.loads(line[start:end + 1]))
                    except ValueError:
                        pass
        return lines

    def log_line(self, request_id, wait_s=10):
        """The one log line of the request `request_id`, waiting for wrangler to write it out."""
        deadline = time.time() + wait_s
        while True:
            found = [entry for entry in self.log_lines() if entry.get("request_id") == request_id]
            if found or time.time() > deadline:
                assert len(found) == 1, (request_id, found)
                return found[0]
            time.sleep(0.1)


def query_texts():
    """The JSONL of the queries whose vectors `corpus` returns (same rows)."""
    if os.path.isdir(PYDOCS):
        return os.path.join(PYDOCS, "queries_public.jsonl")
    return os.path.join(ROOT, "shards", "demo", "queries.jsonl")


def corpus(tmp):
    """(passages.jsonl, vectors.f32, queries.f32): 3000 pydocs passages, else the demo corpus."""
    if os.path.isdir(PYDOCS):
        n = 3000
        passages = os.path.join(tmp, "passages.jsonl")
        with open(os.path.join(PYDOCS, "passages.jsonl")) as src, open(passages, "w") as dst:
            for _ in range(n):
                dst.write(src.readline())
        vectors = os.path.join(tmp, "vectors.f32")
        with open(os.path.join(PYDOCS, "base.f32"), "rb") as src, open(vectors, "wb") as dst:
            dst.write(src.read(n * DIMS * 4))
        return passages, vectors, os.path.join(PYDOCS, "queries_public.f32")
    demo = os.path.join(ROOT, "shards", "demo")
    return (os.path.join(demo, "passages.jsonl"), os.path.join(demo, "vectors.f32"),
            os.path.join(demo, "queries.f32"))


def query_row(queries, row):
    """Row `row` of the raw f32 query file `queries` as a list."""
    with open(queries, "rb") as f:
        f.seek(row * DIMS * 4)
        return list(struct.unpack(f"<{DIMS}f", f.read(DIMS * 4)))


def shardc(*args):
    return subprocess.run([SHARDC, *args], check=True, text=True, stdout=subprocess.PIPE).stdout


def build_index(tmp, name, shards, passages, vectors, extra_dir="", regions="weur,enam", placement=None):
    out = os.path.join(tmp, name + extra_dir)
    shardc("build", "--passages", passages, "--vectors", vectors, "--dims", str(DIMS), "--shards", str(shards),
           "--regions", regions, "--name", name, "--out", out,
           *(["--placement", placement] if placement else []))
    return out


def publish_command(worker, index_dir, key=None):
    """`shardc publish` of `index_dir` through `worker`'s admin routes, as a command and environment."""
    env = dict(os.environ, EDGERAG_ADMIN_KEY=key or KEYS["admin"])
    return [SHARDC, "publish", index_dir, "--url", worker.base], env


def publish(worker, index_dir, key=None):
    """Publishes and returns `shardc publish`'s JSON summary; a failure raises with its stderr."""
    cmd, env = publish_command(worker, index_dir, key)
    done = subprocess.run(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise RuntimeError(f"shardc publish {index_dir} exited {done.returncode}: {done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def serving(tmp, index_dir, mode, label):
    """A `wrangler dev` in `mode` with its state and log under `tmp`, `index_dir` published to it."""
    logfile = open(os.path.join(tmp, f"wrangler-{label}.log"), "w")
    log(f"starting wrangler dev ({mode}, {label}); log {logfile.name}")
    worker = start_worker(os.path.join(tmp, "state"), mode, logfile)
    publish(worker, index_dir)
    return worker


def start_worker(persist, mode, logfile, extra_vars=None, ready_status=200, inspector=True):
    """`wrangler dev` serving `persist`; ready once /healthz answers `ready_status` (a deployment
    with a bad configuration answers every request, /healthz included, with a 500 problem).
    `inspector=False`: the same dev server without wrangler's DevTools inspector (`scripts/serve
    --no-inspector`), as benchmarks use it."""
    port = free_port()
    env = dict(os.environ, WRANGLER_SEND_METRICS="false")
    # CURRENT_TTL_MS=0: a publish is visible to the next request (tests check versions); callers may override.
    variables = dict(SERVING_MODE=mode, CURRENT_TTL_MS="0", API_KEYS=json.dumps(KEY_TABLE))
    variables.update(extra_vars or {})
    proc = subprocess.Popen(
        [os.path.join(ROOT, "scripts", "serve"), "--port", str(port), "--persist-to", persist,
         *([] if inspector else ["--no-inspector"]), "--",
         *(arg for name, value in variables.items() for arg in ("--var", f"{name}:{value}"))],
        cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
    worker = Worker(port, persist, proc, logfile.name)
    deadline = time.time() + 600  # the first start compiles the worker
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"wrangler dev exited with {proc.returncode}; see {logfile.name}")
        try:
            if worker.call("GET", "/healthz")[0] == ready_status:
                return worker
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError("wrangler dev did not answer /healthz")


def stop(worker):
    os.killpg(worker.proc.pid, 15)
    worker.proc.wait(timeout=30)


class Origin:
    """One `devorigin` process on a free loopback port."""

    def __init__(self, name, args, logfile):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([DEVORIGIN, "--port", str(self.port), *args], stdout=logfile, stderr=subprocess.STDOUT)

    def wait_ready(self):
        deadline = time.time() + 120  # loading the MiniLM weights
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"devorigin {self.name} exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"devorigin {self.name} did not start")

    def requests(self, after=0):
        """What this origin received (devorigin's `GET /debug/requests`), numbered from 1, after
        request number `after`; its own debug requests are left out."""
        with urllib.request.urlopen(self.url + "/debug/requests", timeout=10) as r:
            seen = json.loads(r.read())["requests"]
        return [q for q in seen if q["seq"] > after and q["path"] != "/debug/requests"]

    def last_seq(self):
        with urllib.request.urlopen(self.url + "/debug/requests", timeout=10) as r:
            seen = json.loads(r.read())["requests"]
        return seen[-1]["seq"] if seen else 0

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_origins(logdir, fast_args, slow_args=("--tokens-per-sec", "10")):
    """Three origins serving chat (CHAT_MODEL) and embeddings, plus one slow chat origin serving
    SLOW_MODEL (embeddings off), and the ORIGINS value that names them."""
    log_to = lambda name: open(os.path.join(logdir, f"devorigin-{name}.log"), "w")  # noqa: E731
    fast = [Origin(f"o{i}", [*fast_args, "--seed", str(i)], log_to(f"o{i}")) for i in range(3)]
    slow = Origin("slow", [*slow_args, "--model", SLOW_MODEL, "--model-dir", os.path.join(logdir, "no-model")], log_to("slow"))
    for origin in (*fast, slow):
        origin.wait_ready()
    config = [dict(name=o.name, url=o.url, models=[CHAT_MODEL], kind="chat") for o in fast]
    config += [dict(name=f"{o.name}-embed", url=o.url, models=[EMBEDDING_MODEL], kind="embeddings") for o in fast]
    config.append(dict(name="slow", url=slow.url, models=[SLOW_MODEL], kind="chat"))
    return fast, slow, json.dumps(config)


def start_limited_pair(logdir):
    """Two chat origins for LIMITED_MODEL (embeddings off): `busy` serves one request at a time and
    answers 429 with Retry-After: 30 beyond that (its first token takes 20 s, so a request parked on
    it holds the slot), and `spare`, always free but slower (500 ms to the first token) than the
    latency the balancer assumes for an origin it has not heard from yet."""
    no_model = ["--model", LIMITED_MODEL, "--model-dir", os.path.join(logdir, "no-model")]
    busy = Origin("busy", ["--ttft-ms", "20000", "--max-concurrency", "1", "--retry-after-secs", "30", *no_model],
                  open(os.path.join(logdir, "devorigin-busy.log"), "w"))
    spare = Origin("spare", ["--ttft-ms", "500", "--tokens-per-sec", "400", *no_model],
                   open(os.path.join(logdir, "devorigin-spare.log"), "w"))
    return busy.wait_ready(), spare.wait_ready()


def build_binary(path, name):
    if not os.path.exists(path):
        subprocess.run(["cargo", "build", "--release", "--bin", name], cwd=ROOT, check=True)


@pytest.fixture(scope="session")
def env():
    """Indexes `docs` (4 shards) and `other` (1 shard) published into two local R2 states,
    one served in `local` mode and one in `durable` mode."""
    build_binary(SHARDC, "shardc")
    tmp = tempfile.mkdtemp(prefix="edgerag-e2e-")
    passages, vectors, queries = corpus(tmp)
    docs = build_index(tmp, "docs", 4, passages, vectors)
    other = build_index(tmp, "other", 1, passages, vectors)
    workers = {}
    for mode in ("local", "durable"):
        persist = os.path.join(tmp, f"state-{mode}")
        logfile = open(os.path.join(tmp, f"wrangler-{mode}.log"), "w")
        log(f"starting wrangler dev ({mode}); log {logfile.name}")
        # A short body deadline, so that the slow-body test need not trickle for long.
        workers[mode] = start_worker(persist, mode, logfile, dict(BODY_TIMEOUT_MS="3000"))
        for index in (docs, other):
            publish(workers[mode], index)
    yield dict(tmp=tmp, docs=docs, other=other, passages=passages, vectors=vectors, queries=queries, **workers)
    for worker in workers.values():
        stop(worker)
    shutil.rmtree(tmp, ignore_errors=True)


# Per module: test_inference kills origins on purpose, which must not reach the modules after it.
@pytest.fixture(scope="module")
def rag():
    """Index `docs` (4 shards) behind a local-mode worker whose pools are devorigin processes:
    three fast ones (chat + embeddings) and a slow chat origin."""
    build_binary(SHARDC, "shardc")
    build_binary(DEVORIGIN, "devorigin")
    tmp = tempfile.mkdtemp(prefix="edgerag-e2e-rag-")
    passages, vectors, queries = corpus(tmp)
    docs = build_index(tmp, "docs", 4, passages, vectors)
    persist = os.path.join(tmp, "state")
    fast, slow, origins = start_origins(tmp, ["--ttft-ms", "30", "--tokens-per-sec", "400"])
    limited = start_limited_pair(tmp)
    origins = json.dumps(json.loads(origins) + [dict(name=o.name, url=o.url, models=[LIMITED_MODEL], kind="chat")
                                                for o in limited])
    logfile = open(os.path.join(tmp, "wrangler-rag.log"), "w")
    log(f"starting wrangler dev (origins); log {logfile.name}")
    deadline_ms = 8000
    worker = start_worker(persist, "local", logfile, dict(
        ORIGINS=origins, ORIGIN_TRY_TIMEOUT_MS="4000", ORIGIN_DEADLINE_MS=str(deadline_ms)))
    publish(worker, docs)
    yield dict(tmp=tmp, worker=worker, fast=fast, slow=slow, limited=limited, queries=queries,
               query_texts=query_texts(), deadline_s=deadline_ms / 1000, persist=persist)
    stop(worker)
    for origin in (*fast, slow, *limited):
        origin.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def corpus_slices(tmp, passages, vectors, parts=3):
    """`parts` disjoint slices of the corpus, each as (passages.jsonl, vectors.f32): indexes built
    from two of them share no passage, so their answers to any query differ."""
    with open(passages) as f:
        lines = f.readlines()
    with open(vectors, "rb") as f:
        data = f.read()
    size = len(lines) // parts
    slices = []
    for i in range(parts):
        p, v = os.path.join(tmp, f"slice{i}.jsonl"), os.path.join(tmp, f"slice{i}.f32")
        with open(p, "w") as f:
            f.writelines(lines[i * size:(i + 1) * size])
        with open(v, "wb") as f:
            f.write(data[i * size * DIMS * 4:(i + 1) * size * DIMS * 4])
        slices.append((p, v, [json.loads(line)["id"] for line in lines[i * size:(i + 1) * size]]))
    return slices


@pytest.fixture(scope="session")
def observed():
    """A local-mode worker with the response cache on and one devorigin (chat + embeddings), whose
    index `docs` is built from the first of three disjoint corpus slices. `switch_version()`
    publishes the next slice as a new version of `docs` (each publish with one more shard, so no
    two share a version) and returns (version, ids of its passages)."""
    build_binary(SHARDC, "shardc")
    build_binary(DEVORIGIN, "devorigin")
    tmp = tempfile.mkdtemp(prefix="edgerag-e2e-observed-")
    passages, vectors, queries = corpus(tmp)
    slices = corpus_slices(tmp, passages, vectors)
    persist = os.path.join(tmp, "state")

    published = []
    origin = Origin("o0", ["--ttft-ms", "5", "--tokens-per-sec", "1000"], open(os.path.join(tmp, "devorigin-o0.log"), "w"))
    origin.wait_ready()
    origins = json.dumps([dict(name="o0", url=origin.url, models=[CHAT_MODEL], kind="chat"),
                          dict(name="o0-embed", url=origin.url, models=[EMBEDDING_MODEL], kind="embeddings")])
    logfile = open(os.path.join(tmp, "wrangler-observed.log"), "w")
    log(f"starting wrangler dev (observed); log {logfile.name}")
    worker = start_worker(persist, "local", logfile, dict(ORIGINS=origins, RESULT_CACHE_TTL_S="300"))

    def switch_version():
        i = len(published) % len(slices)
        built = build_index(tmp, "docs", 1 + len(published), slices[i][0], slices[i][1], extra_dir=f"-{len(published)}")
        published.append(publish(worker, built)["version"])
        return published[-1], set(slices[i][2])

    switch_version()
    yield dict(tmp=tmp, worker=worker, origin=origin, queries=queries, switch_version=switch_version)
    stop(worker)
    origin.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def quoted_opening(text, words=3):
    """The first `words` words of a passage as devorigin's extractive answer quotes it: it quotes
    the first sentence, which ends at a word ending in `.`, `?` or `!`."""
    opening = []
    for word in text.split()[:words]:
        opening.append(word)
        if word[-1] in ".?!":
            break
    return " ".join(opening)
