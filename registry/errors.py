"""The registry's one exception family.

Exception tree::

    RegistryError(message, code)      # code: ErrorCode
        code NOT_FOUND            model, version, alias or registry root missing
        code INVALID_ARGUMENT     bad name, alias, version or metadata
        code ALREADY_EXISTS       a reserved file name written by the caller
        code FAILED_PRECONDITION  promotion gate refused, verify failed, rollback impossible
        code CORRUPT              checksum mismatch or unreadable registry files
        code IO_ERROR             the disk refused (ENOSPC, EROFS, EACCES, ...)

The CLI maps codes to exit codes and the gRPC server maps them to status codes,
each in one place.
"""

from __future__ import annotations

import contextlib
import enum
import errno
from collections.abc import Iterator

__all__ = ["ErrorCode", "RegistryError", "os_errors"]


class ErrorCode(enum.Enum):
    """Why a registry operation failed; mirrors the gRPC status names."""

    NOT_FOUND = "NOT_FOUND"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    CORRUPT = "CORRUPT"
    IO_ERROR = "IO_ERROR"


class RegistryError(Exception):
    """A registry operation failed; `code` says why, `message` says what to do."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __repr__(self) -> str:
        return f"RegistryError({self.message!r}, {self.code})"


@contextlib.contextmanager
def os_errors(action: str) -> Iterator[None]:
    """Turn OSError (ENOSPC, EROFS, EACCES, ...) into RegistryError(IO_ERROR) at one boundary."""
    try:
        yield
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "OSError")
        where = f" ({exc.filename})" if exc.filename else ""
        raise RegistryError(
            f"{action}: {exc.strerror or exc} [{name}]{where}", ErrorCode.IO_ERROR
        ) from exc
