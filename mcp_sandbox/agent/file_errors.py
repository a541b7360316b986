"""What an OSError met on a file tells the host: a coded error that says what to do (files.py)."""

from __future__ import annotations

import errno

from .protocol import AgentError


def os_error(exc: OSError, path: str) -> AgentError:
    """An OSError as a coded error that says what to do."""
    where = exc.filename if isinstance(exc.filename, str) else path
    if isinstance(exc, FileNotFoundError):
        return AgentError("FILE_NOT_FOUND", "%s does not exist; check the path (list_files shows what is there)" % where)
    if isinstance(exc, IsADirectoryError):
        return AgentError("IS_DIRECTORY", "%s is a directory; use list_files for directories" % where)
    if isinstance(exc, NotADirectoryError):
        return AgentError("NOT_DIRECTORY", "a part of %s is not a directory; check the path" % where)
    if isinstance(exc, FileExistsError):
        return AgentError("FILE_EXISTS", "%s already exists; delete it first or choose another path" % where)
    if isinstance(exc, PermissionError):
        return AgentError(
            "PERMISSION_DENIED", "permission denied for %s; choose a path in the workspace or change its mode" % where
        )
    if exc.errno == errno.EROFS:
        return AgentError("PERMISSION_DENIED", "%s is on a read-only filesystem; use the workspace or /tmp" % where)
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return AgentError("FILE_TOO_LARGE", "%s: %s; free some space or write less" % (where, exc.strerror))
    if exc.errno == errno.ENAMETOOLONG:
        return AgentError("INVALID_ARGUMENT", "%s: the name is too long; use a shorter one" % where)
    if exc.errno == errno.ENOTEMPTY:
        return AgentError("IS_DIRECTORY", "%s is a directory that is not empty" % where)
    return AgentError("INTERNAL", "%s: %s" % (where, exc.strerror or exc))


def read_error(exc: OSError, path: str) -> AgentError:
    """An OSError while opening or reading a file: what special files do gets its own answer."""
    if exc.errno in (errno.EAGAIN, errno.EIO, errno.ENXIO, errno.ENODEV, errno.EINVAL, errno.EOPNOTSUPP):
        return AgentError(
            "INVALID_ARGUMENT",
            "%s cannot be read as a file (%s): it is a special file, such as a terminal, a device or "
            "process memory; read it with exec if it can be read at all" % (path, exc.strerror or exc),
        )
    return os_error(exc, path)
