"""LangChain integration: `EdgeragVectorStore` (a `VectorStore` whose similarity search is the
worker's `POST /v1/search`; the worker embeds the query) and `EdgeragRetriever`. Both give the
same documents: `page_content` is the passage text, `metadata` the passage's metadata plus `id`,
`score` and `shard` (these three names win over metadata fields of the same names).

Needs `langchain-core` (`pip install "edgerag[langchain]"`)."""
from __future__ import annotations

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
NO_WRITE_API = ("edgerag has no write API yet (no upsert or delete route): build the corpus into an "
                "index with `shardc build` and publish it with `scripts/publish`")


def document(match: Match) -> Document:
    """A search match as a LangChain document."""
    metadata: Dict[str, Any] = {**match.metadata, "id": match.id, "score": match.score, "shard": match.shard}
    return Document(id=str(match.id), page_content=match.text, metadata=metadata)


class EdgeragVectorStore(VectorStore):
    """A read-only vector store over one index of an edgerag worker.

    `client` serves the sync methods, `async_client` (optional) the async ones natively; without
    it they run the sync client in an executor. `ef` and `probe` apply to every search."""

    def __init__(self, client: Client, index: str, *, async_client: Optional[AsyncClient] = None,
                 ef: Optional[int] = None, probe: Optional[int] = None) -> None:
        self.client = client
        self.async_client = async_client
        self.index = index
        self.ef = ef
        self.probe = probe

    @property
    def embeddings(self) -> Optional[Embeddings]:
        """None: the worker embeds queries itself (its embeddings pool)."""
        return None

    def _search_args(self, k: int, filter: Optional[Mapping[str, Any]], kwargs: Mapping[str, Any]) -> Dict[str, Any]:
        unknown = set(kwargs) - {"ef", "probe"}
        if unknown:
            raise TypeError(f"unsupported search arguments: {sorted(unknown)}")
        return dict(k=k, ef=kwargs.get("ef", self.ef), probe=kwargs.get("probe", self.probe), filter=filter)

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

    def add_texts(self, texts: Iterable[str], metadatas: Optional[List[Dict[str, Any]]] = None, **kwargs: Any) -> List[str]:
        raise NotImplementedError(NO_WRITE_API)

    def delete(self, ids: Optional[List[str]] = None, **kwargs: Any) -> Optional[bool]:
        raise NotImplementedError(NO_WRITE_API)

    @classmethod
    def from_texts(cls, texts: List[str], embedding: Embeddings, metadatas: Optional[List[Dict[str, Any]]] = None,
                   **kwargs: Any) -> "EdgeragVectorStore":
        raise NotImplementedError(NO_WRITE_API)


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


__all__: Sequence[str] = ["EdgeragRetriever", "EdgeragVectorStore", "NO_WRITE_API", "document"]
