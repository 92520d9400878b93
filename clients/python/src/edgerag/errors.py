"""The client's one error type: an error answer from the worker, carrying its problem document."""
from __future__ import annotations

from typing import Any, Mapping, Optional


class EdgeragError(Exception):
    """The worker answered with an error: `problem` is its RFC 9457 problem document
    (`type`, `title`, `status`, `detail`, `request_id`). `retry_after` is the `Retry-After` of a
    429, in seconds. Transport failures (connection refused, timeouts) are httpx's own errors."""

    def __init__(self, status: int, problem: Mapping[str, Any], retry_after: Optional[int] = None):
        self.status = status
        self.problem = dict(problem)
        self.type: str = str(problem.get("type", "about:blank"))
        self.title: str = str(problem.get("title", f"HTTP {status}"))
        self.detail: str = str(problem.get("detail", ""))
        self.request_id: Optional[str] = problem.get("request_id")
        self.retry_after = retry_after
        rid = f" (request {self.request_id})" if self.request_id else ""
        super().__init__(f"{status} {self.title}: {self.detail}{rid}")


class StreamInterrupted(EdgeragError):
    """A streamed answer that broke off after it started: the origin's stream ended in an error
    event (the HTTP status was already 200)."""

    def __init__(self, error: Mapping[str, Any]):
        super().__init__(
            502,
            {"type": str(error.get("type", "origin_interrupted")), "title": "Answer interrupted",
             "detail": str(error.get("message", "the answer broke off"))},
        )
