"""Errors of the client: one exception per service, each carrying what the server said.

``code`` is gRPC-style for Triton (``INVALID_ARGUMENT``, ``UNAVAILABLE``, ...; an HTTP answer is
mapped to the same names) and the envelope's numeric code for the feed (``42200``, ...).
``retryable`` is what the retry policy reads: only a transient failure (unavailable, deadline
exceeded, 429/503, connection refused) is retried, never a request the server refused.
"""

from __future__ import annotations

# HTTP status -> gRPC status name, for Triton's HTTP endpoint (KServe v2 maps them the same way)
HTTP_TO_GRPC = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
RETRYABLE_GRPC = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
RETRYABLE_HTTP = frozenset({429, 503})
# Triton's answer while a model it knows has no loaded version: the watchdog's unload + load of a
# crashed instance (a few seconds, runtime/README.md "Operations: faults"). Transient, unlike a
# model name that does not exist ("... is not found").
RELOADING = "has no available versions"


def is_reloading(message: str) -> bool:
    return RELOADING in message


class ClientError(Exception):
    """A failed call: the server's message, its code, the request id, and whether to retry."""

    def __init__(
        self,
        message: str,
        *,
        code: str | int | None = None,
        status: int | None = None,
        request_id: str | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status  # HTTP status when the answer came over HTTP
        self.request_id = request_id
        self.retryable = retryable
        self.retry_after_s = retry_after_s  # the server's Retry-After, honoured by the retry policy

    def __str__(self) -> str:
        where = f" (request_id {self.request_id})" if self.request_id else ""
        return f"[{self.code}] {self.message}{where}" if self.code is not None else f"{self.message}{where}"


class RecommendError(ClientError):
    """Triton's ``recommend`` refused or failed a request."""

    @property
    def invalid_argument(self) -> bool:
        """The request itself was at fault: fix it, do not retry."""
        return self.code == "INVALID_ARGUMENT"


class FeedApiError(ClientError):
    """The feed service answered with an error envelope, or could not be reached."""
