"""What the worker answers, as typed values."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

DocId = Union[int, str]


@dataclass(frozen=True)
class Match:
    """One search hit: `score` is cosine similarity, dot product or euclidean distance (the
    index's metric) for a vector search, BM25 for a lexical one and the fused reciprocal-rank
    score for a hybrid one; `shard` the shard that held it; `stages` (lexical and hybrid
    searches) its `{"rank", "score"}` in the `vector` and `lexical` rankings it was in."""

    id: DocId
    score: float
    text: str
    metadata: Dict[str, Any]
    shard: str
    stages: Optional[Dict[str, Dict[str, float]]] = None

    @classmethod
    def from_json(cls, m: Mapping[str, Any]) -> "Match":
        return cls(id=m["id"], score=float(m["score"]), text=m["text"], metadata=dict(m.get("metadata") or {}),
                   shard=m["shard"], stages=m.get("stages"))


@dataclass(frozen=True)
class SearchResult:
    """`POST /v1/search`: the exact top-k of the shards that answered; `partial` when some did
    not (named in `failed_shards`)."""

    matches: List[Match]
    index: str
    version: str
    partial: bool
    failed_shards: List[str]
    #: Every write up to this seq is in the answer; `pending_writes` of them are not yet compacted.
    seq: int = 0
    pending_writes: int = 0

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "SearchResult":
        return cls(matches=[Match.from_json(m) for m in body["matches"]], index=body["index"],
                   version=body["version"], partial=bool(body.get("partial", False)),
                   failed_shards=list(body.get("failed_shards") or []), seq=int(body.get("seq", 0)),
                   pending_writes=int(body.get("pending_writes", 0)))


@dataclass(frozen=True)
class WriteResult:
    """An acknowledged (durable) upsert or delete: its `seq`, which a search's `min_seq` may name to
    see it, and how many writes of the index are not yet compacted into shards."""

    seq: int
    pending_writes: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "WriteResult":
        return cls(seq=int(body["seq"]), pending_writes=int(body["pending_writes"]))


@dataclass(frozen=True)
class IndexInfo:
    """`GET /v1/indexes/{name}`: the live version and its shape."""

    name: str
    version: str
    dims: int
    metric: str
    shards: int
    vectors: int
    bytes: int
    regions: List[str]
    #: The model the index's text queries and text upserts are embedded with.
    embedding_model: str = ""
    #: The live writes: `{seq, base_seq, base_version, pending_writes}`.
    writes: Dict[str, Any] = field(default_factory=dict)
    #: The metadata fields a search filter may name (absent: any field, for indexes built before
    #: the list was recorded or created empty).
    filter_fields: Optional[List[str]] = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "IndexInfo":
        return cls(name=body["name"], version=body["version"], dims=int(body["dims"]), metric=body["metric"],
                   shards=int(body["shards"]), vectors=int(body["vectors"]), bytes=int(body["bytes"]),
                   regions=list(body["regions"]), embedding_model=str(body.get("embedding_model") or ""),
                   writes=dict(body.get("writes") or {}),
                   filter_fields=None if body.get("filter_fields") is None else list(body["filter_fields"]))


@dataclass(frozen=True)
class Source:
    """A passage the answer was given from; `n` is its `[n]` marker in the answer. `text` is
    present in whole answers (`Client.rag`), not in streamed ones."""

    n: int
    id: DocId
    source: str
    title: Optional[str] = None
    score: Optional[float] = None
    shard: Optional[str] = None
    text: Optional[str] = None

    @classmethod
    def from_json(cls, s: Mapping[str, Any], n: int) -> "Source":
        score = s.get("score")
        return cls(n=int(s.get("n", n)), id=s["id"], source=s["source"], title=s.get("title"),
                   score=None if score is None else float(score), shard=s.get("shard"), text=s.get("text"))


@dataclass(frozen=True)
class RagAnswer:
    """`POST /v1/rag` without streaming: the answer text, its sources, and the whole OpenAI chat
    completion as the origin sent it (`raw`, with `sources`)."""

    text: str
    sources: List[Source]
    model: Optional[str] = None
    finish_reason: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "RagAnswer":
        choice = (body.get("choices") or [{}])[0]
        return cls(text=(choice.get("message") or {}).get("content") or "",
                   sources=sources_from_json(body.get("sources") or []), model=body.get("model"),
                   finish_reason=choice.get("finish_reason"), raw=dict(body))


def sources_from_json(sources: List[Mapping[str, Any]]) -> List[Source]:
    return [Source.from_json(s, n) for n, s in enumerate(sources, 1)]
