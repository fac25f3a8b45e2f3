"""MLflow's error answer: `{"error_code": "...", "message": "..."}` with the status MLflow gives that code."""

from __future__ import annotations

# The codes the official client knows (mlflow.protos.databricks_pb2.ErrorCode) and their statuses
# (mlflow.server.handlers / mlflow.exceptions.ERROR_CODE_TO_HTTP_STATUS).
STATUS_OF_CODE: dict[str, int] = {
    "BAD_REQUEST": 400,
    "INVALID_PARAMETER_VALUE": 400,
    "INVALID_STATE": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "RESOURCE_DOES_NOT_EXIST": 404,
    "ENDPOINT_NOT_FOUND": 404,
    "REQUEST_LIMIT_EXCEEDED": 429,
    "INTERNAL_ERROR": 500,
    "NOT_IMPLEMENTED": 501,
}


class MlflowError(Exception):
    """A refusal the client reads as an MlflowException: a code from STATUS_OF_CODE and a message."""

    def __init__(self, code: str, message: str) -> None:
        if code not in STATUS_OF_CODE:
            raise ValueError(f"unknown MLflow error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        """Return the HTTP status MLflow answers this code with."""
        return STATUS_OF_CODE[self.code]

    def body(self) -> dict[str, str]:
        """Return the JSON body of the answer."""
        return {"error_code": self.code, "message": self.message}


def invalid(message: str) -> MlflowError:
    """Return an INVALID_PARAMETER_VALUE error (400): a field the caller can fix; the message names it."""
    return MlflowError("INVALID_PARAMETER_VALUE", message)


def missing(message: str) -> MlflowError:
    """Return a RESOURCE_DOES_NOT_EXIST error (404)."""
    return MlflowError("RESOURCE_DOES_NOT_EXIST", message)
