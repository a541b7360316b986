"""Files in the sandbox: read, write (atomically), list, mkdir, delete, move.

Paths are absolute or relative to a session's cwd. Big files move in chunks: a write is a temporary
file in the target's directory that chunks are appended to and that is renamed over the target at
the end; a read is an open file that the host pulls chunks from, so neither side ever holds a whole
large file for the transfer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import os
import stat
import tempfile
from collections import OrderedDict
from typing import IO, Any, Callable, Dict, Optional, TypeVar

from .file_errors import os_error, read_error
from .file_guards import VitalPaths, bounded_reader
from .file_text import decode_text, read_lines, sniff_mime
from .file_tree import list_tree, move_across, remove_tree
from .ids import Ids
from .output import remove_file
from .protocol import AgentError
from .sessions import Sessions

# What one read_file call returns at most: enough for any source file, small enough for a model.
READ_MAX = 1 << 20
# Images come back whole up to this size, so that they can be shown as images.
IMAGE_MAX = 5 << 20
CHUNK_MAX = 4 << 20
OPEN_MAX = 64

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
T = TypeVar("T")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AgentError("INVALID_ARGUMENT", "content is not valid base64 (%s); encode the bytes with base64" % exc)


async def _in_thread(operation: Callable[..., T], fd: int, *args: Any) -> T:
    """A chunk's disk I/O in a thread, so that the channel moves the next chunk meanwhile. On a
    descriptor of its own: the file may be closed (a cancelled transfer) while the thread runs,
    and its number must not then reach another file."""
    own = os.dup(fd)

    def run() -> T:
        try:
            return operation(own, *args)
        finally:
            os.close(own)

    return await asyncio.get_running_loop().run_in_executor(None, run)


class _Write:
    def __init__(self, target: str, temp: str, f: IO[bytes], mode: int) -> None:
        self.target = target
        self.temp = temp
        self.file = f
        self.mode = mode
        self.written = 0


class Files:
    def __init__(self, sessions: Sessions, config: Dict[str, Any]) -> None:
        self._sessions = sessions
        self._vital = VitalPaths(config["workspace"], config["state_dir"])
        self._umask = _umask()
        self._writes: Dict[str, _Write] = {}
        # Reads the host has not closed yet; the oldest is closed beyond OPEN_MAX (a host that died).
        self._reads: "OrderedDict[str, IO[bytes]]" = OrderedDict()
        self._handles = Ids("h%d")

    @property
    def busy(self) -> bool:
        """Whether a transfer is open (the agent does not rest meanwhile)."""
        return bool(self._writes or self._reads)

    def records(self) -> Dict[str, Any]:
        """What a rest keeps (saved_state.py): the handle counter, so that no handle comes twice."""
        return {"file_handles": self._handles.count}

    def restore(self, state: Dict[str, Any]) -> None:
        self._handles.count = state["file_handles"]

    # -- paths ---------------------------------------------------------------------------------

    def resolve(self, params: Dict[str, Any], key: str = "path", default: Optional[str] = None) -> str:
        """An absolute, normalised path; relative paths start at the session's cwd."""
        path = params.get(key)
        if path is None or path == "":
            if default is None:
                raise AgentError("INVALID_ARGUMENT", "%s is required" % key)
            path = default
        if not isinstance(path, str) or "\0" in path:
            raise AgentError("INVALID_ARGUMENT", "%s must be a path without NUL bytes" % key)
        cwd = self._sessions.get(params.get("session_id")).cwd
        return os.path.normpath(os.path.join(cwd, path))

    # -- writing -------------------------------------------------------------------------------

    def write(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """A whole file in one request (what fits in one message): bytes as ``data`` beside the
        message, or text as ``content``."""
        encoding = params.get("encoding") or "utf-8"
        content = params.get("content")
        if isinstance(params.get("data"), memoryview):
            data = params["data"]
        elif not isinstance(content, str):
            raise AgentError("INVALID_ARGUMENT", "content must be a string")
        elif encoding == "base64":
            data = decode_base64(content)
        elif encoding in ("utf-8", "utf8"):
            data = content.encode("utf-8", "surrogateescape")
        else:
            raise AgentError("INVALID_ARGUMENT", "encoding must be utf-8 or base64, not %r" % encoding)
        handle = self.write_open(params)["handle"]
        try:
            self._append(handle, data)
        except BaseException:
            self.write_close({"handle": handle, "commit": False})
            raise
        return self.write_close({"handle": handle, "commit": True})

    def write_open(self, params: Dict[str, Any]) -> Dict[str, Any]:
        target = self.resolve(params)
        # Writing through a symlink replaces its target, not the link.
        target = os.path.realpath(target)
        directory = os.path.dirname(target)
        try:
            st = os.stat(target)
        except FileNotFoundError:
            mode = 0o666 & ~self._umask
        except OSError as exc:
            raise os_error(exc, target)
        else:
            if stat.S_ISDIR(st.st_mode):
                raise AgentError("IS_DIRECTORY", "%s is a directory; write to a file path inside it" % target)
            if not os.access(target, os.W_OK):
                raise AgentError(
                    "PERMISSION_DENIED", "%s is read-only; make it writable (chmod u+w) or write elsewhere" % target
                )
            mode = stat.S_IMODE(st.st_mode)
        try:
            os.makedirs(directory, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix="." + os.path.basename(target)[:100] + ".", suffix=".mcp-tmp", dir=directory)
        except FileExistsError:
            raise AgentError("NOT_DIRECTORY", "a part of %s is a file, not a directory; check the path" % directory)
        except OSError as exc:
            raise os_error(exc, directory)
        handle = self._handles.mint()
        self._writes[handle] = _Write(target, temp, os.fdopen(fd, "wb"), mode)
        return {"handle": handle, "path": target}

    async def write_chunk(self, params: Dict[str, Any]) -> Dict[str, Any]:
        data = params.get("data")
        if not isinstance(data, memoryview):  # the bytes beside the message (protocol.py)
            raise AgentError("INVALID_ARGUMENT", "a file chunk comes as bytes beside its message")
        # The host sends several chunks at once; each says where it goes.
        write = self._writes.get(str(params.get("handle")))
        if write is None:
            raise AgentError("INVALID_ARGUMENT", "no file being written with handle %r" % params.get("handle"))
        try:
            write.file.flush()
            await _in_thread(os.pwrite, write.file.fileno(), data, int(params.get("offset") or 0))
        except OSError as exc:
            raise os_error(exc, write.target)
        write.written += len(data)
        return {"bytes": len(data)}

    def _append(self, handle: Any, data: "bytes | memoryview") -> None:
        write = self._writes.get(str(handle))
        if write is None:
            raise AgentError("INVALID_ARGUMENT", "no file being written with handle %r" % handle)
        try:
            write.file.write(data)
        except OSError as exc:
            raise os_error(exc, write.target)
        write.written += len(data)

    def write_close(self, params: Dict[str, Any]) -> Dict[str, Any]:
        write = self._writes.pop(str(params.get("handle")), None)
        if write is None:
            raise AgentError("INVALID_ARGUMENT", "no file being written with handle %r" % params.get("handle"))
        try:
            write.file.close()
            if not params.get("commit"):
                os.unlink(write.temp)
                return {"path": write.target, "bytes_written": 0}
            os.chmod(write.temp, write.mode)
            os.replace(write.temp, write.target)
        except OSError as exc:
            remove_file(write.temp)
            raise os_error(exc, write.target)
        return {"path": write.target, "bytes_written": write.written}

    # -- reading -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """On the agent's way out: transfers the host never closed end; unfinished writes leave no
        temporary file behind."""
        for write in self._writes.values():
            write.file.close()
            remove_file(write.temp)
        self._writes.clear()
        for f in self._reads.values():
            f.close()
        self._reads.clear()

    def _open_file(self, path: str) -> IO[bytes]:
        # Non-blocking, and checked before any read: a named pipe would block the agent, and a
        # device may never end. It stays non-blocking (no change for a regular file): a kernel file
        # that waits for data (/proc/kmsg, trace_pipe) then fails instead of stopping the agent.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as exc:
            raise read_error(exc, path)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise AgentError("IS_DIRECTORY", "%s is a directory; use list_files to see what is in it" % path)
            raise AgentError(
                "INVALID_ARGUMENT",
                "%s is not a regular file (a pipe, socket or device); read from it with exec, e.g. "
                "head -c 4096 %s" % (path, path),
            )
        return os.fdopen(fd, "rb")

    def read(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """read_file for a model: one capped piece, text when it decodes, images whole."""
        path = self.resolve(params)
        encoding = params.get("encoding")
        if encoding not in (None, "auto", "utf-8", "utf8", "base64"):
            raise AgentError("INVALID_ARGUMENT", "encoding must be utf-8 or base64 (or omitted for auto), not %r" % encoding)
        offset = params.get("offset")
        limit = params.get("limit")
        for name, value in (("offset", offset), ("limit", limit)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise AgentError("INVALID_ARGUMENT", "%s must be a number of lines, 0 or more" % name)
        with self._open_file(path) as f:
            try:
                size = os.fstat(f.fileno()).st_size
                head = os.pread(f.fileno(), 16, 0)
                mime = sniff_mime(path, head)
                cap = IMAGE_MAX if mime in IMAGE_TYPES and offset is None and limit is None else READ_MAX
                first_line = max(offset or 1, 1)
                data, truncated, next_line = read_lines(bounded_reader(f, size, path), first_line, limit, cap)
            except OSError as exc:
                raise read_error(exc, path)
        text: Optional[str] = None
        if encoding in (None, "auto", "utf-8", "utf8"):
            text = decode_text(data, final=not truncated or data.endswith(b"\n"))
            if text is None and encoding not in (None, "auto"):
                text = data.decode("utf-8", "replace")
        if text is None:
            content, used = base64.b64encode(data).decode("ascii"), "base64"
        else:
            content, used = text, "utf-8"
        if mime is None:
            mime = "text/plain" if used == "utf-8" else "application/octet-stream"
        return {
            "path": path,
            "content": content,
            "encoding": used,
            "size": size,
            "mime_type": mime,
            "truncated": truncated,
            "offset": first_line,
            "next_offset": next_line,
        }

    def read_open(self, params: Dict[str, Any]) -> Dict[str, Any]:
        path = self.resolve(params)
        f = self._open_file(path)
        handle = self._handles.mint()
        self._reads[handle] = f
        while len(self._reads) > OPEN_MAX:
            self._reads.popitem(last=False)[1].close()
        size = os.fstat(f.fileno()).st_size
        try:
            head = os.pread(f.fileno(), 16, 0)
        except OSError as exc:
            self.read_close({"handle": handle})
            raise read_error(exc, path)
        return {"handle": handle, "path": path, "size": size, "mime_type": sniff_mime(path, head)}

    async def read_chunk(self, params: Dict[str, Any]) -> Dict[str, Any]:
        f = self._reads.get(str(params.get("handle")))
        if f is None:
            raise AgentError("INVALID_ARGUMENT", "no open file with handle %r" % params.get("handle"))
        size = min(int(params.get("size") or CHUNK_MAX), CHUNK_MAX)
        try:
            data = await _in_thread(os.pread, f.fileno(), size, int(params.get("offset") or 0))
        except OSError as exc:
            raise read_error(exc, "the open file %s" % params.get("handle"))
        return {"data": data}  # bytes, sent beside the answer as they are

    def read_close(self, params: Dict[str, Any]) -> Dict[str, Any]:
        f = self._reads.pop(str(params.get("handle")), None)
        if f is not None:
            f.close()
        return {}

    # -- directories ---------------------------------------------------------------------------

    async def list(self, params: Dict[str, Any]) -> Dict[str, Any]:
        path = self.resolve(params, default=".")
        try:
            st = os.stat(path)
        except OSError as exc:
            raise os_error(exc, path)
        if not stat.S_ISDIR(st.st_mode):
            raise AgentError("NOT_DIRECTORY", "%s is a file, not a directory; use read_file to read it" % path)
        recursive = bool(params.get("recursive"))
        hidden = bool(params.get("include_hidden"))
        loop = asyncio.get_running_loop()
        files, truncated = await loop.run_in_executor(None, list_tree, path, recursive, hidden)
        return {"path": path, "files": files, "truncated": truncated}

    def mkdir(self, params: Dict[str, Any]) -> Dict[str, Any]:
        path = self.resolve(params)
        try:
            if params.get("recursive"):
                if os.path.isdir(path):
                    return {"path": path, "created": False}
                os.makedirs(path)
            else:
                os.mkdir(path)
        except FileExistsError:
            if os.path.isdir(path):
                raise AgentError("FILE_EXISTS", "directory %s already exists; pass recursive=true to accept that" % path)
            raise AgentError("FILE_EXISTS", "%s already exists and is a file; choose another path" % path)
        except FileNotFoundError:
            raise AgentError(
                "FILE_NOT_FOUND",
                "the parent directory of %s does not exist; pass recursive=true to create it too" % path,
            )
        except OSError as exc:
            raise os_error(exc, path)
        return {"path": path, "created": True}

    async def delete(self, params: Dict[str, Any]) -> Dict[str, Any]:
        path = self.resolve(params)
        self._vital.refuse(path, "delete")
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise os_error(exc, path)
        try:
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(path)
            elif params.get("recursive"):
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, remove_tree, path)
            else:
                try:
                    os.rmdir(path)
                except OSError as exc:
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        raise AgentError(
                            "IS_DIRECTORY",
                            "%s is a directory that is not empty; pass recursive=true to delete it with "
                            "everything in it" % path,
                        )
                    raise
        except OSError as exc:
            raise os_error(exc, path)
        return {"path": path, "deleted": True}

    async def move(self, params: Dict[str, Any]) -> Dict[str, Any]:
        source = self.resolve(params, "source")
        destination = self.resolve(params, "destination")
        self._vital.refuse(source, "move")
        self._vital.refuse(destination, "replace")
        try:
            os.lstat(source)
        except OSError as exc:
            raise os_error(exc, source)
        if os.path.lexists(destination) and not params.get("overwrite"):
            raise AgentError(
                "FILE_EXISTS", "%s already exists; pass overwrite=true to replace it, or choose another destination"
                % destination,
            )
        if os.path.isdir(source) and not os.path.islink(source) and (destination + os.sep).startswith(source + os.sep):
            raise AgentError("INVALID_ARGUMENT", "cannot move %s into itself (%s)" % (source, destination))
        try:
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            try:
                os.replace(source, destination)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                # Another filesystem: copy, then remove (in a thread; it may be big).
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, move_across, source, destination)
        except FileExistsError:
            raise AgentError("NOT_DIRECTORY", "a part of %s is a file, not a directory" % destination)
        except OSError as exc:
            raise os_error(exc, destination)
        return {"source": source, "destination": destination}
