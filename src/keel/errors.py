"""Keel's one exception tree. Each class carries the HTTP status and OpenAI error type it renders.

    KeelError (500, server_error)
    ├── ConfigError                      raised at start-up; never reaches a client
    ├── InternalError                    code=internal_error; Keel's own code failed
    ├── InvalidRequestError (400, invalid_request_error)
    │   ├── UnsupportedParameterError    code=unsupported_parameter
    │   └── ContextWindowExceededError   code=context_length_exceeded
    ├── AuthenticationError (401)
    ├── PermissionDeniedError (403)
    │   └── ResidencyError               code=data_residency
    ├── GuardrailError (400)             code=guardrail_blocked
    ├── NotFoundError (404)
    │   └── ModelNotFoundError           code=model_not_found
    ├── ConflictError (409)              the state changed or already exists
    ├── RequestTooLargeError (413)
    ├── UnsupportedMediaTypeError (415)  code=unsupported_media_type; the body is not JSON
    ├── RateLimitError (429)
    │   └── QuotaExceededError           code=quota_exceeded; a Keel quota or budget, not upstream
    ├── QuotaUnavailableError (503)      the shared quota store is down and the policy fails closed
    ├── ClientClosedRequestError (499)   the client went away; nothing can be sent back
    └── UpstreamError (502, upstream_error)
        ├── UpstreamConnectionError      could not reach the provider
        ├── UpstreamAuthError            the provider refused Keel's credentials
        ├── UpstreamBadResponseError     the provider answered with something unusable
        ├── UpstreamUnavailableError (503)
        │   └── ModelNotLoadableError    code=model_not_loadable; a local model file
        └── UpstreamTimeoutError (504)

Upstream errors that are about the client's request (a 400 from the provider) are raised as
InvalidRequestError, so the client sees a 4xx it can act on.
"""

from __future__ import annotations

from typing import Any

from keel import secrets

__all__ = [
    "AuthenticationError",
    "ClientClosedRequestError",
    "ConfigError",
    "ConflictError",
    "ContextWindowExceededError",
    "GuardrailError",
    "InternalError",
    "InvalidRequestError",
    "KeelError",
    "ModelNotFoundError",
    "ModelNotLoadableError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "QuotaUnavailableError",
    "RateLimitError",
    "RequestTooLargeError",
    "ResidencyError",
    "UnsupportedMediaTypeError",
    "UnsupportedParameterError",
    "UpstreamAuthError",
    "UpstreamBadResponseError",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
]


class KeelError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None
    # The deployment that raised it will fail the same way again (a refused key, a model
    # file that is not there): routing does not try it again for the same request.
    repeats: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        status_code: int | None = None,
        error_type: str | None = None,
    ) -> None:
        # Messages often quote an upstream's error body, which can repeat what it was sent.
        message = secrets.redact(message)
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}
        # An upstream's own status and type, kept for a client error it relays (see
        # `keel.providers._http.error_for_status`); the class's otherwise.
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type

    def to_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class ConfigError(KeelError):
    """A configuration file or setting is invalid. Raised before the server accepts traffic."""


class InternalError(KeelError):
    """Keel's own code failed (a provider adapter, say). Never the deployment's fault."""

    default_code = "internal_error"


class InvalidRequestError(KeelError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedParameterError(InvalidRequestError):
    default_code = "unsupported_parameter"


class ContextWindowExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class AuthenticationError(KeelError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(KeelError):
    status_code = 403
    error_type = "permission_error"


class ResidencyError(PermissionDeniedError):
    default_code = "data_residency"


class GuardrailError(KeelError):
    """A guardrail blocked the request or the answer."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code = "guardrail_blocked"


class NotFoundError(KeelError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class ConflictError(KeelError):
    status_code = 409
    error_type = "conflict_error"
    default_code = "conflict"


class RequestTooLargeError(KeelError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaTypeError(KeelError):
    status_code = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"


class RateLimitError(KeelError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class QuotaExceededError(RateLimitError):
    default_code = "quota_exceeded"


class QuotaUnavailableError(KeelError):
    status_code = 503
    error_type = "server_error"
    default_code = "quota_unavailable"


class ClientClosedRequestError(KeelError):
    status_code = 499
    error_type = "client_closed_request"


class UpstreamError(KeelError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"


class UpstreamConnectionError(UpstreamError):
    default_code = "upstream_unreachable"


class UpstreamAuthError(UpstreamError):
    default_code = "upstream_authentication_failed"
    repeats = True


class UpstreamBadResponseError(UpstreamError):
    default_code = "upstream_bad_response"


class UpstreamUnavailableError(UpstreamError):
    status_code = 503
    default_code = "upstream_unavailable"


class ModelNotLoadableError(UpstreamUnavailableError):
    """A local model's file is missing or cannot be loaded."""

    default_code = "model_not_loadable"
    repeats = True


class UpstreamTimeoutError(UpstreamError):
    status_code = 504
    default_code = "upstream_timeout"
