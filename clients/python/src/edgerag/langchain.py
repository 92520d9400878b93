"""LangChain integration: `EdgeragVectorStore` (a `VectorStore` whose similarity search is the
worker's `POST /v1/search`; the worker embeds the query) and `EdgeragRetriever`. Both give the
same documents: `page_content` is the passage text, `metadata` the passage's metadata plus `id`,
`score` and `shard` (these three names win over metadata fields of the same names).

Needs `langchain-core` (`pip install "edgerag[langchain]"`)."""
from __future__ import annotations

import uuid
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from pydantic import ConfigDict

from .client import AsyncClient, Client
from .types import Match, SearchResult

#: Why writes fail: the worker serves immutable index versions built by `shardc build`.
NO_EMBEDDING = ("this store was made without `embedding`: give it the Embeddings that produce the index's "
                "vectors to add texts (or upsert vectors with `Client.upsert`)")


def document(match: Match) -> Document:
    """A search match as a LangChain document."""
    metadata: Dict[str, Any] = {**match.metadata, "id": match.id, "score": match.score, "shard": match.shard}
    return Document(id=str(match.id), page_content=match.text, metadata=metadata)


class EdgeragVectorStore(VectorStore):
    """A vector store over one index of an edgerag worker.

    `client` serves the sync methods, `async_client` (optional) the async ones natively; without
    it they run the sync client in an executor. `ef` and `probe` apply to every search. Searches
    by text are embedded by the worker; `embedding` (optional) embeds the texts `add_texts`
    writes, and must produce the index's vectors. Each write's seq is kept, and later searches
    ask for it (`min_seq`): this store reads its own writes."""

    def __init__(self, client: Client, index: str, *, async_client: Optional[AsyncClient] = None,
                 ef: Optional[int] = None, probe: Optional[int] = None,
                 embedding: Optional[Embeddings] = None) -> None:
        self.client = client
        self.async_client = async_client
        self.index = index
        self.ef = ef
        self.probe = probe
        self.embedding = embedding
        self.last_seq: Optional[int] = None

    @property
    def embeddings(self) -> Optional[Embeddings]:
        """The Embeddings `add_texts` uses; queries are embedded by the worker (its embeddings pool)."""
        return self.embedding

    def _search_args(self, k: int, filter: Optional[Mapping[str, Any]], kwargs: Mapping[str, Any]) -> Dict[str, Any]:
        unknown = set(kwargs) - {"ef", "probe"}
        if unknown:
            raise TypeError(f"unsupported search arguments: {sorted(unknown)}")
        return dict(k=k, ef=kwargs.get("ef", self.ef), probe=kwargs.get("probe", self.probe), filter=filter,
                    min_seq=self.last_seq)

    @staticmethod
    def _scored(result: SearchResult) -> List[Tuple[Document, float]]:
        return [(document(m), m.score) for m in result.matches]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: Optional[Mapping[str, Any]] = None,
                                     **kwargs: Any) -> List[Tuple[Document, float]]:
        """The k passages nearest to `query`, each with the index metric's score; `filter` is
        metadata equality, e.g. `{"source": "tutorial/inputoutput.html"}`."""
        return self._scored(self.client.search(self.index, query, **self._search_args(k, filter, kwargs)))

    def similarity_search(self, query: str, k: int = 4, filter: Optional[Mapping[str, Any]] = None,
                          **kwargs: Any) -> List[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_by_vector(self, embedding: List[float], k: int = 4,
                                    filter: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> List[Document]:
        result = self.client.search(self.index, vector=embedding, **self._search_args(k, filter, kwargs))
        return [doc for doc, _ in self._scored(result)]

    async def asimilarity_search_with_score(self, query: str, k: int = 4,
                                            filter: Optional[Mapping[str, Any]] = None,
                                            **kwargs: Any) -> List[Tuple[Document, float]]:
        if self.async_client is None:
            return await super().asimilarity_search_with_score(query, k, filter=filter, **kwargs)
        args = self._search_args(k, filter, kwargs)
        return self._scored(await self.async_client.search(self.index, query, **args))

    async def asimilarity_search(self, query: str, k: int = 4, filter: Optional[Mapping[str, Any]] = None,
                                 **kwargs: Any) -> List[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, filter, **kwargs)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """Scores as LangChain's 0..1 relevance: cosine and dot scores are similarities already;
        an l2 score is a distance."""
        if self.client.index(self.index).metric == "l2":
            return self._euclidean_relevance_score_fn
        return lambda score: score

    def add_texts(self, texts: Iterable[str], metadatas: Optional[List[Dict[str, Any]]] = None, *,
                  ids: Optional[List[str]] = None, **kwargs: Any) -> List[str]:
        """Embeds `texts` with this store's `embedding` and upserts them (new ids are random)."""
        if self.embedding is None:
            raise ValueError(NO_EMBEDDING)
        texts = list(texts)
        ids = list(ids) if ids is not None else [uuid.uuid4().hex for _ in texts]
        vectors = self.embedding.embed_documents(texts)
        items = [{"id": i, "values": v, "text": t, "metadata": (metadatas or [{}] * len(texts))[n] or {}}
                 for n, (i, v, t) in enumerate(zip(ids, vectors, texts))]
        self.last_seq = self.client.upsert(self.index, items).seq
        return ids

    def delete(self, ids: Optional[List[str]] = None, **kwargs: Any) -> Optional[bool]:
        """Deletes passages by id (all of them at once is not offered)."""
        if not ids:
            raise ValueError("name the ids to delete")
        self.last_seq = self.client.delete(self.index, ids).seq
        return True

    @classmethod
    def from_texts(cls, texts: List[str], embedding: Embeddings, metadatas: Optional[List[Dict[str, Any]]] = None,
                   **kwargs: Any) -> "EdgeragVectorStore":
        """A store over `kwargs["client"]`'s index `kwargs["index"]` with `texts` added."""
        store = cls(kwargs.pop("client"), kwargs.pop("index"), embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas)
        return store


class EdgeragRetriever(BaseRetriever):
    """A retriever over one index: `k` passages per query, with optional `ef`, `probe` and a
    metadata `filter`. Give `async_client` for native async retrieval."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: Client
    index: str
    k: int = 4
    ef: Optional[int] = None
    probe: Optional[int] = None
    filter: Optional[Dict[str, Any]] = None
    async_client: Optional[AsyncClient] = None

    def _args(self) -> Dict[str, Any]:
        return dict(k=self.k, ef=self.ef, probe=self.probe, filter=self.filter)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> List[Document]:
        return [document(m) for m in self.client.search(self.index, query, **self._args()).matches]

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun) -> List[Document]:
        if self.async_client is None:
            return await super()._aget_relevant_documents(query, run_manager=run_manager)
        return [document(m) for m in (await self.async_client.search(self.index, query, **self._args())).matches]


__all__: Sequence[str] = ["EdgeragRetriever", "EdgeragVectorStore", "NO_EMBEDDING", "document"]
