"""The HTTP clients, sync (`Client`) and async (`AsyncClient`), over httpx. Both send
`Authorization: Bearer <api_key>` to `base_url` only, and raise `EdgeragError` for error answers."""
from __future__ import annotations

from typing import Any, AsyncIterator, Dict, Iterator, List, Mapping, Optional, Sequence
from urllib.parse import quote

import httpx

from . import _protocol as wire
from .types import IndexInfo, RagAnswer, SearchResult, Source, WriteResult

DEFAULT_TIMEOUT_S = 60.0


class _Base:
    def __init__(self, base_url: str, api_key: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"authorization": f"Bearer {api_key}", "user-agent": "edgerag-python/0.1"}
        self._timeout = timeout

    def _args(self, path: str, body: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        args: Dict[str, Any] = {"method": "GET" if body is None else "POST", "url": self.base_url + path,
                                "headers": self._headers}
        if body is not None:
            args["json"] = body
        return args

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise wire.problem(response.status_code, response.headers, response.content)
        return response.json()


class _Stream:
    """What both streams keep: the response's context manager (entered when iteration starts),
    the events read so far and the answer's text."""

    def __init__(self, responses: Any) -> None:
        self._responses = responses
        self._state = "new"
        self._events = wire.RagEvents()
        self.text = ""

    @property
    def sources(self) -> List[Source]:
        return self._events.sources

    def _start(self) -> None:
        if self._state != "new":
            raise RuntimeError("a streamed answer is iterated once")
        self._state = "open"

    def _feed(self, text: str) -> List[str]:
        tokens = self._events.feed(text)
        self.text += "".join(tokens)
        return tokens


class RagStream(_Stream):
    """A streamed RAG answer: iterate it for the answer's tokens as they arrive. `sources` is
    filled before the first token (the worker sends them first); `text` is the answer so far.
    Use it as a context manager, or iterate it to the end, so that the connection is released."""

    def __enter__(self) -> "RagStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Releases the connection (the request is sent when iteration starts)."""
        if self._state == "open":
            self._responses.__exit__(None, None, None)
        self._state = "closed"

    def __iter__(self) -> Iterator[str]:
        self._start()
        try:
            response = self._responses.__enter__()
            if response.status_code >= 400:
                raise wire.problem(response.status_code, response.headers, response.read())
            for text in response.iter_text():
                yield from self._feed(text)
                if self._events.done:
                    break
        finally:
            self.close()


class AsyncRagStream(_Stream):
    """`RagStream` for `AsyncClient`: `async for token in stream`."""

    async def __aenter__(self) -> "AsyncRagStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._state == "open":
            await self._responses.__aexit__(None, None, None)
        self._state = "closed"

    async def __aiter__(self) -> AsyncIterator[str]:
        self._start()
        try:
            response = await self._responses.__aenter__()
            if response.status_code >= 400:
                raise wire.problem(response.status_code, response.headers, await response.aread())
            async for text in response.aiter_text():
                for token in self._feed(text):
                    yield token
                if self._events.done:
                    break
        finally:
            await self.aclose()


class Client:
    """A blocking client: `Client("http://127.0.0.1:8787", "edgerag-dev-key")`."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                 http: Optional[httpx.Client] = None) -> None:
        self._base = _Base(base_url, api_key, timeout)
        self._http = http or httpx.Client(timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        return _Base._json(self._http.request(**self._base._args(path, body)))

    def indexes(self) -> List[str]:
        """The indexes this key may read."""
        return list(self._call("/v1/indexes")["indexes"])

    def index(self, name: str) -> IndexInfo:
        return IndexInfo.from_json(self._call(f"/v1/indexes/{quote(name, safe='')}"))

    def search(self, index: str, text: Optional[str] = None, *, vector: Optional[Sequence[float]] = None,
               k: Optional[int] = None, ef: Optional[int] = None, probe: Optional[int] = None,
               filter: Optional[Mapping[str, Any]] = None, min_seq: Optional[int] = None,
               mode: Optional[str] = None, rrf_k: Optional[int] = None,
               rerank: Optional[Mapping[str, Any]] = None) -> SearchResult:
        """The k best passages for `text` (embedded by the worker for a vector ranking, matched by
        words for a lexical one), `vector`, or both; `mode` is "vector", "lexical" or "hybrid"
        (the worker's default: hybrid for text, vector for a vector); with `min_seq`, from a view
        that includes every write up to that seq; `rerank={"model": ..., "top_n": ...}` reorders
        the k found by a reranker origin."""
        body = wire.search_body(index, text, vector, k, ef, probe, filter, min_seq, mode, rrf_k, rerank)
        return SearchResult.from_json(self._call("/v1/search", body))

    def create_index(self, name: str, dims: int, *, metric: Optional[str] = None, quant: Optional[str] = None,
                     regions: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """A new, empty index, writable at once (needs a write grant on `name`)."""
        return dict(self._call("/v1/indexes", wire.create_body(name, dims, metric, quant, regions)))

    def upsert(self, index: str, vectors: Sequence[Mapping[str, Any]]) -> WriteResult:
        """Inserts or replaces passages `{id, values?, text?, metadata?}` (text without values is
        embedded by the worker); answers once durable."""
        path = f"/v1/indexes/{quote(index, safe='')}/upsert"
        return WriteResult.from_json(self._call(path, wire.upsert_body(vectors)))

    def delete(self, index: str, ids: Sequence[Any]) -> WriteResult:
        """Deletes passages by id; answers once durable."""
        return WriteResult.from_json(self._call(f"/v1/indexes/{quote(index, safe='')}/delete", {"ids": list(ids)}))

    def rag(self, index: str, query: str, *, model: str, k: Optional[int] = None,
            max_tokens: Optional[int] = None) -> RagAnswer:
        """An answer to `query` from the passages retrieved for it, whole."""
        return RagAnswer.from_json(self._call("/v1/rag", wire.rag_body(index, query, model, k, max_tokens, False)))

    def rag_stream(self, index: str, query: str, *, model: str, k: Optional[int] = None,
                   max_tokens: Optional[int] = None) -> RagStream:
        """The same answer, streamed: iterate the result for tokens."""
        args = self._base._args("/v1/rag", wire.rag_body(index, query, model, k, max_tokens, True))
        return RagStream(self._http.stream(**args))


class AsyncClient:
    """`Client` for asyncio: the same methods, awaited."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                 http: Optional[httpx.AsyncClient] = None) -> None:
        self._base = _Base(base_url, api_key, timeout)
        self._http = http or httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        return _Base._json(await self._http.request(**self._base._args(path, body)))

    async def indexes(self) -> List[str]:
        return list((await self._call("/v1/indexes"))["indexes"])

    async def index(self, name: str) -> IndexInfo:
        return IndexInfo.from_json(await self._call(f"/v1/indexes/{quote(name, safe='')}"))

    async def search(self, index: str, text: Optional[str] = None, *, vector: Optional[Sequence[float]] = None,
                     k: Optional[int] = None, ef: Optional[int] = None, probe: Optional[int] = None,
                     filter: Optional[Mapping[str, Any]] = None, min_seq: Optional[int] = None,
                     mode: Optional[str] = None, rrf_k: Optional[int] = None,
                     rerank: Optional[Mapping[str, Any]] = None) -> SearchResult:
        body = wire.search_body(index, text, vector, k, ef, probe, filter, min_seq, mode, rrf_k, rerank)
        return SearchResult.from_json(await self._call("/v1/search", body))

    async def create_index(self, name: str, dims: int, *, metric: Optional[str] = None,
                           quant: Optional[str] = None, regions: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        return dict(await self._call("/v1/indexes", wire.create_body(name, dims, metric, quant, regions)))

    async def upsert(self, index: str, vectors: Sequence[Mapping[str, Any]]) -> WriteResult:
        path = f"/v1/indexes/{quote(index, safe='')}/upsert"
        return WriteResult.from_json(await self._call(path, wire.upsert_body(vectors)))

    async def delete(self, index: str, ids: Sequence[Any]) -> WriteResult:
        path = f"/v1/indexes/{quote(index, safe='')}/delete"
        return WriteResult.from_json(await self._call(path, {"ids": list(ids)}))

    async def rag(self, index: str, query: str, *, model: str, k: Optional[int] = None,
                  max_tokens: Optional[int] = None) -> RagAnswer:
        body = wire.rag_body(index, query, model, k, max_tokens, False)
        return RagAnswer.from_json(await self._call("/v1/rag", body))

    def rag_stream(self, index: str, query: str, *, model: str, k: Optional[int] = None,
                   max_tokens: Optional[int] = None) -> AsyncRagStream:
        args = self._base._args("/v1/rag", wire.rag_body(index, query, model, k, max_tokens, True))
        return AsyncRagStream(self._http.stream(**args))
