"""A RAG chain in LangChain over an edgerag worker: `EdgeragRetriever` retrieves the passages
(the worker's `POST /v1/search`, which embeds the question itself), an LCEL chain numbers them
into the prompt, and `ChatOpenAI` pointed at the worker's OpenAI-compatible `/v1` answers,
streamed token by token.

    pip install "./clients/python[langchain]" langchain-openai
    scripts/dev            # in another terminal
    python3 examples/langchain_rag.py "How do I read a file line by line?"

Defaults are those of `scripts/dev`; `--url`, `--key` (or EDGERAG_API_KEY), `--index`, `--model`
and `-k` point it elsewhere."""
import argparse
import os
import sys

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_openai import ChatOpenAI

from edgerag import Client
from edgerag.langchain import EdgeragRetriever

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer using only the numbered sources. Cite them with their [n] markers."),
    ("user", "Sources:\n{context}\n\nQuestion: {question}"),
])


def numbered(docs: list[Document]) -> str:
    """`[n] (source) text`, one passage a line: the layout the worker itself uses for /v1/rag."""
    return "\n".join(f"[{n}] ({d.metadata.get('source', d.metadata['shard'])}) {' '.join(d.page_content.split())}"
                     for n, d in enumerate(docs, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("question")
    parser.add_argument("--url", default=os.environ.get("EDGERAG_URL", "http://127.0.0.1:8787"))
    parser.add_argument("--key", default=os.environ.get("EDGERAG_API_KEY", "edgerag-dev-key"))
    parser.add_argument("--index", default="demo")
    parser.add_argument("--model", default="devorigin-extractive")
    parser.add_argument("-k", type=int, default=4)
    args = parser.parse_args()

    with Client(args.url, args.key) as client:
        retriever = EdgeragRetriever(client=client, index=args.index, k=args.k)
        llm = ChatOpenAI(base_url=f"{args.url}/v1", api_key=args.key, model=args.model, temperature=0)
        retrieved: list[Document] = []

        def keep(docs: list[Document]) -> list[Document]:
            retrieved.extend(docs)
            return docs

        chain = ({"context": retriever | RunnableLambda(keep) | numbered, "question": RunnablePassthrough()}
                 | PROMPT | llm | StrOutputParser())
        for token in chain.stream(args.question):
            print(token, end="", flush=True)
        print("\n\nSources:")
        for n, doc in enumerate(retrieved, 1):
            m = doc.metadata
            print(f"[{n}] id={m['id']} score={m['score']:.4f} shard={m['shard']} {m.get('source', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
