"""The wire protocol without I/O, shared by the sync and async clients: request bodies, error
answers as `EdgeragError`, and the streamed RAG answer's server-sent events."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .errors import EdgeragError, StreamInterrupted
from .types import Source, sources_from_json


def search_body(index: str, text: Optional[str], vector: Optional[Sequence[float]], k: Optional[int],
                ef: Optional[int], probe: Optional[int], filter: Optional[Mapping[str, Any]],
                min_seq: Optional[int] = None, mode: Optional[str] = None,
                rrf_k: Optional[int] = None, rerank: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    if text is None and vector is None:
        raise ValueError("search takes text=, vector= or both (a hybrid search with your own vector)")
    body: Dict[str, Any] = {"index": index}
    if text is not None:
        body["text"] = text
    if vector is not None:
        body["vector"] = [float(x) for x in vector]
    for name, value in (("k", k), ("ef", ef), ("probe", probe), ("min_seq", min_seq), ("mode", mode),
                        ("rrf_k", rrf_k)):
        if value is not None:
            body[name] = value
    if filter is not None:
        body["filter"] = dict(filter)
    if rerank is not None:
        body["rerank"] = dict(rerank)
    return body


def upsert_body(vectors: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """`{vectors: [{id, values?, text?, metadata?}]}`, values as floats; an item with text and no
    values is embedded by the worker with the index's model."""
    items = []
    for v in vectors:
        item: Dict[str, Any] = {"id": v["id"]}
        if v.get("values") is not None:
            item["values"] = [float(x) for x in v["values"]]
        for name in ("text", "metadata"):
            if v.get(name) is not None:
                item[name] = v[name]
        items.append(item)
    return {"vectors": items}


def create_body(name: str, dims: int, metric: Optional[str], quant: Optional[str],
                regions: Optional[Sequence[str]]) -> Dict[str, Any]:
    body: Dict[str, Any] = {"name": name, "dims": dims}
    for key, value in (("metric", metric), ("quant", quant)):
        if value is not None:
            body[key] = value
    if regions is not None:
        body["regions"] = list(regions)
    return body


def rag_body(index: str, query: str, model: str, k: Optional[int], max_tokens: Optional[int],
             stream: bool) -> Dict[str, Any]:
    body: Dict[str, Any] = {"index": index, "query": query, "model": model, "stream": stream}
    if k is not None:
        body["k"] = k
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def problem(status: int, headers: Mapping[str, str], content: bytes) -> EdgeragError:
    """The error an answer with status >= 400 stands for."""
    try:
        body = json.loads(content or b"null")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"title": f"HTTP {status}", "detail": content.decode(errors="replace")[:500]}
    retry_after = headers.get("retry-after")
    return EdgeragError(status, body, int(retry_after) if retry_after and retry_after.isdigit() else None)


class RagEvents:
    """Turns the streamed answer's text, as it arrives, into tokens: the first event is
    `sources`, then OpenAI chat-completion chunks, then `[DONE]`; an error event (the origin
    broke off) raises `StreamInterrupted`."""

    def __init__(self) -> None:
        self.sources: List[Source] = []
        self.done = False
        self._buffer = ""

    def feed(self, text: str) -> List[str]:
        self._buffer += text.replace("\r\n", "\n").replace("\r", "\n")
        tokens: List[str] = []
        while "\n\n" in self._buffer and not self.done:
            block, self._buffer = self._buffer.split("\n\n", 1)
            event, data = "message", []
            for line in block.split("\n"):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:][1:] if line[5:].startswith(" ") else line[5:])
            if data:
                tokens.extend(self._event(event, "\n".join(data)))
        return tokens

    def _event(self, event: str, data: str) -> List[str]:
        if data == "[DONE]":
            self.done = True
            return []
        body = json.loads(data)
        if event == "sources":
            self.sources = sources_from_json(body.get("sources") or [])
            return []
        if "error" in body:
            raise StreamInterrupted(body["error"])
        return [c["delta"]["content"] for c in body.get("choices") or []
                if (c.get("delta") or {}).get("content")]
