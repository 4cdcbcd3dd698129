"""Domain errors of the API; the middleware turns each into its HTTP status and JSON body."""

from __future__ import annotations

from typing import ClassVar

from msgspec import UNSET

from http_api.bodies import Error, ErrorCode, ErrorDetail


class ApiError(Exception):
    """An error a client can act on: a status, a camelCase code and a message."""

    status: ClassVar[int] = 400
    code: ClassVar[ErrorCode] = "badRequest"

    def __init__(
        self, message: str, parameter: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter
        self.headers = headers or {}  # sent with the error (WWW-Authenticate, Retry-After)

    def body(self) -> Error:
        parameter = UNSET if self.parameter is None else self.parameter
        return Error(ErrorDetail(code=self.code, message=self.message, parameter=parameter))


class InvalidParameterError(ApiError):
    """A path or query parameter, or a field of the body, has a value the API cannot use."""

    code = "invalidParameter"


class UnknownParameterError(ApiError):
    """The query string names a parameter the endpoint does not take (a typo would otherwise
    be silently ignored)."""

    code = "unknownParameter"


class InvalidBodyError(ApiError):
    """The request body is not the JSON document the endpoint takes."""

    code = "invalidBody"


class UnsupportedMediaTypeError(ApiError):
    """The body is of a type the endpoint does not take (an import that is neither CSV nor JSON)."""

    status = 415
    code = "unsupportedMediaType"


class UnauthorizedError(ApiError):
    """No bearer token, or one that is unknown or revoked."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, token_given: bool) -> None:
        # RFC 6750: a challenge on every 401; an error code only when a token was presented.
        challenge = 'Bearer realm="fleetgate"'
        if token_given:
            challenge += ', error="invalid_token", error_description="unknown or revoked token"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class ForbiddenError(ApiError):
    """The token's scope does not allow this endpoint."""

    status = 403
    code = "forbidden"

    def __init__(self, message: str, *, needed: str) -> None:
        challenge = f'Bearer realm="fleetgate", error="insufficient_scope", scope="{needed}"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class NotFoundError(ApiError):
    """The vehicle, meter, link or registered device does not exist."""

    status = 404
    code = "notFound"


class ConflictError(ApiError):
    """The request contradicts the current state (e.g. a meter already linked elsewhere)."""

    status = 409
    code = "conflict"


class TooManyRequestsError(ApiError):
    """The token is over its limit of requests in progress or a second (http_api/limits.py)."""

    status = 429
    code = "tooManyRequests"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class BrokerUnavailableError(ApiError):
    """The broker did not acknowledge in time; nothing can be promised about the reading."""

    status = 503
    code = "brokerUnavailable"


class DatabaseUnavailableError(ApiError):
    """The database did not answer (down, restarting, or every connection busy too long)."""

    status = 503
    code = "databaseUnavailable"
