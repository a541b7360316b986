"""Tools: write_file, read_file, list_files, mkdir, delete_file, move_file; and the resource
template for a file."""

from __future__ import annotations

import posixpath
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, ContentBlock, ImageContent
from pydantic import Field

from ..manager import SandboxManager
from ..models import (
    DirectoryCreated,
    FileContent,
    FileDeleted,
    FileEntry,
    FileList,
    FileMoved,
    FileWritten,
)
from ..sandbox_files import decode_base64
from .common import (
    CREATES,
    DESTRUCTIVE,
    OVERWRITES,
    READ_ONLY,
    SandboxId,
    SessionId,
    resource_errors,
    resource_sandbox,
    result,
    tool_errors,
)

Path = Annotated[str, Field(description="A path in the sandbox, absolute or relative to the session's cwd.")]
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
# Resources return files whole, up to this size.
FILE_RESOURCE_MAX = 10 << 20


def render_content(r: FileContent) -> str:
    where = f"lines {r.offset}+ of " if r.offset > 1 else ""
    header = f"--- {where}{r.path} ({r.size} bytes, {r.mime_type}"
    if r.encoding == "base64":
        header += ", base64"
    header += ") ---"
    if r.mime_type in IMAGE_TYPES and r.encoding == "base64" and not r.truncated:
        return f"Image {r.path} ({r.size} bytes, {r.mime_type}), shown below."
    body = r.content
    if r.truncated:
        cont = f"; read on with offset={r.next_offset}" if r.next_offset else ""
        body += f"\n[... cut at the read limit{cont} ...]"
    elif r.next_offset:
        body += f"\n[... more lines follow; read on with offset={r.next_offset} ...]"
    return f"{header}\n{body}" if body else f"{header}\n(empty)"


def render_entry(e: FileEntry, base: str) -> str:
    kind = {"file": "-", "directory": "d", "symlink": "l", "other": "?"}[e.type]
    name = posixpath.relpath(e.path, base) if e.path.startswith(base.rstrip("/") + "/") else e.path
    suffix = "/" if e.type == "directory" else (f" -> {e.target}" if e.target else "")
    return f"{kind} {e.mode} {e.size:>10} {e.modified_at:%Y-%m-%d %H:%M} {name}{suffix}"


def register(server: MCPServer, manager: SandboxManager) -> None:
    @server.tool(annotations=OVERWRITES)
    @tool_errors
    async def write_file(
        path: Path,
        content: Annotated[str, Field(description="The whole new content of the file.")],
        encoding: Annotated[
            Literal["utf-8", "base64"], Field(description="utf-8 for text (default); base64 for binary content.")
        ] = "utf-8",
        session_id: SessionId = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, FileWritten]:
        """Create or replace a file with the given content.

        Parent directories are created as needed. The write is atomic (a temporary file renamed
        into place), so readers never see half a file, and a replaced file keeps its permissions
        (an executable script stays executable). Returns the absolute path and bytes written.
        """
        sandbox = await manager.get(sandbox_id)
        data: bytes | str = decode_base64(content) if encoding == "base64" else content
        r = await sandbox.write_file(path, data, session_id=session_id)
        return result(r, f"Wrote {r.bytes_written} bytes to {r.path}.")

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def read_file(
        path: Path,
        encoding: Annotated[
            Literal["utf-8", "base64"] | None,
            Field(description="Omit for auto (utf-8 if the bytes are valid UTF-8, else base64); or force one."),
        ] = None,
        offset: Annotated[
            int | None, Field(ge=0, description="First line to return, 1-based (1 = the start of the file).")
        ] = None,
        limit: Annotated[int | None, Field(ge=0, description="Most lines to return.")] = None,
        session_id: SessionId = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, FileContent]:
        """Read a file: text as text, anything else as base64, with its size and MIME type.

        One call returns at most 1 MiB (images up to 5 MiB); a longer file comes back cut at a line
        end with truncated=true, and next_offset tells where to go on (pass it as offset). Use
        offset/limit to read a range of lines of a big file. Images (PNG, JPEG, GIF, WebP) are also
        returned as images you can see. For directories use list_files.
        """
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.read_file(path, encoding=encoding, offset=offset, limit=limit, session_id=session_id)
        extra: list[ContentBlock] = []
        if r.mime_type in IMAGE_TYPES and r.encoding == "base64" and not r.truncated and r.offset == 1:
            extra.append(ImageContent(type="image", data=r.content, mime_type=r.mime_type))
        return result(r, render_content(r), extra)

    @server.tool(annotations=READ_ONLY)
    @tool_errors
    async def list_files(
        path: Annotated[
            str | None, Field(description="Directory to list, absolute or relative; default the session's cwd.")
        ] = None,
        recursive: Annotated[bool, Field(description="Include everything below, level by level.")] = False,
        include_hidden: Annotated[bool, Field(description="Include names starting with '.'.")] = False,
        session_id: SessionId = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, FileList]:
        """List a directory: name, absolute path, type (file, directory, symlink, other), size,
        modification time and mode of each entry, sorted by name. Recursive listings go level by
        level and stop at 10,000 entries (truncated=true); list a subdirectory to see more."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.list_files(path, recursive=recursive, include_hidden=include_hidden, session_id=session_id)
        lines = [f"{r.path}: {len(r.files)} entries{' (cut at the limit)' if r.truncated else ''}"]
        lines += [render_entry(e, r.path) for e in r.files]
        return result(r, "\n".join(lines))

    @server.tool(annotations=CREATES)
    @tool_errors
    async def mkdir(
        path: Path,
        recursive: Annotated[
            bool, Field(description="Create missing parents too, and accept a directory that exists (mkdir -p).")
        ] = False,
        session_id: SessionId = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, DirectoryCreated]:
        """Create a directory. Without recursive, its parent must exist and it must not."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.mkdir(path, recursive=recursive, session_id=session_id)
        return result(r, f"Created {r.path}." if r.created else f"{r.path} exists already.")

    @server.tool(annotations=DESTRUCTIVE)
    @tool_errors
    async def delete_file(
        path: Path,
        recursive: Annotated[
            bool, Field(description="Needed to delete a directory that is not empty, with all it contains.")
        ] = False,
        session_id: SessionId = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, FileDeleted]:
        """Delete a file, a symlink (not what it points to) or an empty directory; with
        recursive=true also a directory and everything in it. Irreversible."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.delete_file(path, recursive=recursive, session_id=session_id)
        return result(r, f"Deleted {r.path}.")

    @server.tool(annotations=DESTRUCTIVE)
    @tool_errors
    async def move_file(
        source: Annotated[str, Field(description="The file or directory to move (absolute or relative).")],
        destination: Annotated[
            str, Field(description="Its new path, including the new name (absolute or relative).")
        ],
        overwrite: Annotated[bool, Field(description="Replace the destination if it exists.")] = False,
        session_id: SessionId = None,
        sandbox_id: SandboxId = None,
    ) -> Annotated[CallToolResult, FileMoved]:
        """Move or rename a file or directory; missing parents of the destination are created. An
        existing destination is an error (FILE_EXISTS) unless overwrite=true."""
        sandbox = await manager.get(sandbox_id)
        r = await sandbox.move_file(source, destination, overwrite=overwrite, session_id=session_id)
        return result(r, f"Moved {r.source} to {r.destination}.")

    @server.resource(
        "sandbox://{sandbox_id}/files/{+path}",
        name="sandbox_file",
        title="File in a sandbox",
        description="A file in a sandbox, by its absolute path without the leading '/' (e.g. "
        "sandbox://sbx_.../files/workspace/app.py). Text comes back as text, other files as a "
        "base64 blob; at most 10 MiB. sandbox_id 'default' names the default sandbox.",
    )
    @resource_errors
    async def sandbox_file(sandbox_id: str, path: str) -> str | bytes:
        sandbox = await resource_sandbox(manager, sandbox_id)
        data = await sandbox.read_file_bytes("/" + path, max_bytes=FILE_RESOURCE_MAX)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return bytes(data)
