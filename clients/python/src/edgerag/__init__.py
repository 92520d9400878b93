"""Python client for an edgerag worker: search (with `min_seq` to read your writes), RAG answers
(whole or streamed) with their sources, index listing and info, and live writes (create_index,
upsert, delete); `edgerag.langchain` holds a LangChain vector store (which adds texts with the
Embeddings given to it) and retriever (`pip install "edgerag[langchain]"`)."""
from .client import AsyncClient, AsyncRagStream, Client, RagStream
from .errors import EdgeragError, StreamInterrupted
from .types import IndexInfo, Match, RagAnswer, SearchResult, Source, WriteResult

__all__ = [
    "AsyncClient", "AsyncRagStream", "Client", "EdgeragError", "IndexInfo", "Match", "RagAnswer", "RagStream",
    "SearchResult", "Source", "StreamInterrupted", "WriteResult",
]
__version__ = "0.1.0"
