"""OpenAI-shaped errors (pure).

Every error the gateway answers has the body OpenAI's API uses, so OpenAI clients raise their
usual exception types with a message that says what to do::

    {"error": {"message": "...", "type": "...", "param": null, "code": "..."}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class GatewayError(Exception):
    """An error answered to the client: HTTP status, message, OpenAI error type and code."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    #: Seconds for a ``Retry-After`` header (429 and 503).
    retry_after: int | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, self.retry_after))
        return headers


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    error = {"message": message, "type": type_, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, code="invalid_request", param=param)


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, type="authentication_error", code="invalid_api_key")


def forbidden(message: str) -> GatewayError:
    return GatewayError(403, message, type="permission_error", code="model_not_allowed")


def not_found(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(404, message, code="model_not_found", param=param)


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"The request body is larger than {limit} bytes.", code="too_large")


def rate_limited(message: str, retry_after: int, limit: str) -> GatewayError:
    return GatewayError(
        429, message, type="rate_limit_error", code=f"rate_limit_{limit}", retry_after=retry_after
    )


def unavailable(message: str, retry_after: int, code: str = "no_replica") -> GatewayError:
    return GatewayError(503, message, type="server_error", code=code, retry_after=retry_after)


def upstream_failed(message: str) -> GatewayError:
    return GatewayError(502, message, type="server_error", code="upstream_error")
