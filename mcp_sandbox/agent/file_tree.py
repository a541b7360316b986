"""Directory trees in the sandbox: listing, removing and moving them (blocking; for a thread)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from .protocol import AgentError

LIST_MAX = 10000


def entry_of(path: str, name: str) -> Optional[Dict[str, Any]]:
    """What list_files says of one entry (not following a symlink); None if it is gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    elif stat.S_ISDIR(st.st_mode):
        kind = "directory"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    else:
        kind = "other"
    entry: Dict[str, Any] = {
        "name": name,
        "path": path,
        "type": kind,
        "size": st.st_size,
        "modified_at": st.st_mtime,
        "mode": "%04o" % stat.S_IMODE(st.st_mode),
    }
    if kind == "symlink":
        try:
            entry["target"] = os.readlink(path)
        except OSError:
            pass
    return entry


def list_tree(root: str, recursive: bool, hidden: bool) -> Tuple[List[Dict[str, Any]], bool]:
    """Entries breadth first (so a cut list still shows the top levels), sorted by name."""
    files: List[Dict[str, Any]] = []
    queue: Deque[str] = deque([root])
    while queue:
        directory = queue.popleft()
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue  # unreadable subdirectory: skip it, list the rest
        for name in names:
            if not hidden and name.startswith("."):
                continue
            entry = entry_of(os.path.join(directory, name), name)
            if entry is None:
                continue
            if len(files) >= LIST_MAX:
                return files, True
            files.append(entry)
            if recursive and entry["type"] == "directory":
                queue.append(entry["path"])
    return files, False


def remove_tree(path: str) -> None:
    """Remove a directory tree, also where a directory lacks write permission."""
    def retry_writable(func: Any, failed: str, _exc: Any) -> None:
        # Directories without write permission stop rmtree; the sandbox owns them, so allow it.
        os.chmod(os.path.dirname(failed), stat.S_IRWXU)
        func(failed)

    shutil.rmtree(path, onerror=retry_writable)


def move_across(source: str, destination: str) -> None:
    """Move across filesystems (rename cannot), replacing a directory at the destination. A tree
    of which some files cannot be copied is not moved: the partial copy is removed, and the error
    is the first file's (shutil gathers them all in one shutil.Error)."""
    if os.path.isdir(destination) and not os.path.islink(destination):
        shutil.rmtree(destination)
    try:
        shutil.move(source, destination)
    except shutil.Error as exc:
        if os.path.isdir(destination) and not os.path.islink(destination):
            remove_tree(destination)
        problems = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        failed, why = (problems[0][0], str(problems[0][2])) if problems and len(problems[0]) == 3 else (source, str(exc))
        if "Permission denied" in why:
            raise PermissionError(errno.EACCES, why, failed) from None
        raise AgentError(
            "FILE_TOO_LARGE" if "No space" in why or "quota" in why else "INVALID_ARGUMENT",
            "%d files could not be copied to %s, so nothing was moved (first: %s: %s); move what can be "
            "copied, or copy with exec" % (len(problems), destination, failed, why),
        ) from None
