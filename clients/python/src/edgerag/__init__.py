"""Python client for an edgerag worker: search, RAG answers (whole or streamed) with their
sources, index listing and info; `edgerag.langchain` holds a LangChain vector store and retriever
(`pip install "edgerag[langchain]"`). Live writes (upsert, delete) are not in the worker's API
yet, so they are not here either."""
from .client import AsyncClient, AsyncRagStream, Client, RagStream
from .errors import EdgeragError, StreamInterrupted
from .types import IndexInfo, Match, RagAnswer, SearchResult, Source

__all__ = [
    "AsyncClient", "AsyncRagStream", "Client", "EdgeragError", "IndexInfo", "Match", "RagAnswer", "RagStream",
    "SearchResult", "Source", "StreamInterrupted",
]
__version__ = "0.1.0"
