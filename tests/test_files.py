"""Files: every rule under "Files" in the README, on every backend; big files through the Python API."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import zlib
from pathlib import Path

import pytest
from mcp_types import BlobResourceContents, ImageContent, TextResourceContents

from mcp_sandbox.manager import SandboxManager

from .conftest import Tools, settings_for
from .helpers import memory_kib, reset_peak_rss, workspace

pytestmark = pytest.mark.anyio


ALL_BYTES = bytes(range(256))


def png(width: int = 2, height: int = 1) -> bytes:
    """A valid PNG (red pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + b"\xff\0\0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


async def test_write_then_read_text_relative_to_the_session_cwd(mcp: Tools) -> None:
    ws = await workspace(mcp)
    await mcp.sh(f"mkdir -p {ws}/w && cd {ws}/w")
    w = await mcp("write_file", path="notes/hello.txt", content="héllo\nworld\n")
    assert w == {"path": f"{ws}/w/notes/hello.txt", "bytes_written": len("héllo\nworld\n".encode())}
    r = await mcp("read_file", path="notes/hello.txt")
    assert r["path"] == f"{ws}/w/notes/hello.txt"
    assert (r["content"], r["encoding"], r["size"], r["mime_type"], r["truncated"]) == (
        "héllo\nworld\n", "utf-8", 13, "text/plain", False,
    )
    assert (await mcp.sh("cat notes/hello.txt"))["stdout"] == "héllo\nworld\n"
    # Another session resolves relative paths against its own cwd.
    await mcp("create_session", session_id="s2", cwd=f"{ws}")
    r = await mcp("read_file", path="w/notes/hello.txt", session_id="s2")
    assert r["content"] == "héllo\nworld\n"
    assert (await mcp("read_file", path=f"{ws}/w/notes/hello.txt", session_id="s2"))["size"] == 13
    # The text block shows the content as lines.
    raw = await mcp.raw("read_file", path=f"{ws}/w/notes/hello.txt")
    assert "héllo\nworld\n" in raw.content[0].text  # type: ignore[union-attr]


async def test_all_256_byte_values_through_base64(mcp: Tools) -> None:
    ws = await workspace(mcp)
    encoded = base64.b64encode(ALL_BYTES).decode()
    w = await mcp("write_file", path=f"{ws}/bytes.bin", content=encoded, encoding="base64")
    assert w["bytes_written"] == 256
    assert (await mcp.sh(f"sha256sum {ws}/bytes.bin"))["stdout"].split()[0] == hashlib.sha256(ALL_BYTES).hexdigest()
    r = await mcp("read_file", path=f"{ws}/bytes.bin")
    assert r["encoding"] == "base64"
    assert base64.b64decode(r["content"]) == ALL_BYTES
    assert (r["size"], r["mime_type"], r["truncated"]) == (256, "application/octet-stream", False)
    # Forced encodings.
    forced = await mcp("read_file", path=f"{ws}/bytes.bin", encoding="utf-8")
    assert forced["encoding"] == "utf-8" and "\ufffd" in forced["content"]
    await mcp("write_file", path=f"{ws}/t.txt", content="text")
    assert (await mcp("read_file", path=f"{ws}/t.txt", encoding="base64"))["content"] == base64.b64encode(b"text").decode()
    assert "INVALID_ARGUMENT" in await mcp.error("write_file", path=f"{ws}/x", content="not base64!", encoding="base64")


async def test_paths_with_spaces_and_unicode(mcp: Tools) -> None:
    ws = await workspace(mcp)
    directory = f"{ws}/dir with spaces/ünï cødé 文件"
    path = f"{directory}/naïve fïlé 🚀.txt"
    await mcp("write_file", path=path, content="ok\n")
    assert (await mcp("read_file", path=path))["content"] == "ok\n"
    listed = await mcp("list_files", path=directory)
    assert [(f["name"], f["path"], f["type"]) for f in listed["files"]] == [("naïve fïlé 🚀.txt", path, "file")]
    assert (await mcp.sh(f"cat '{path}'"))["stdout"] == "ok\n"
    moved = await mcp("move_file", source=path, destination=f"{directory}/ренамед.txt")
    assert moved == {"source": path, "destination": f"{directory}/ренамед.txt"}
    assert (await mcp("delete_file", path=f"{ws}/dir with spaces", recursive=True))["deleted"] is True
    assert (await mcp.sh(f"ls '{ws}/dir with spaces' 2>&1"))["exit_code"] != 0


async def test_write_creates_parents_is_atomic_and_keeps_the_mode(mcp: Tools) -> None:
    ws = await workspace(mcp)
    await mcp("write_file", path=f"{ws}/deep/a/b/c/run.sh", content="#!/bin/sh\necho one\n")
    await mcp.sh(f"chmod 750 {ws}/deep/a/b/c/run.sh")
    inode = (await mcp.sh(f"stat -c %i {ws}/deep/a/b/c/run.sh"))["stdout"]
    await mcp("write_file", path=f"{ws}/deep/a/b/c/run.sh", content="#!/bin/sh\necho two\n")
    r = await mcp.sh(f"stat -c '%a %i' {ws}/deep/a/b/c/run.sh; {ws}/deep/a/b/c/run.sh")
    mode, new_inode, output = r["stdout"].split(maxsplit=2)
    assert mode == "750"  # kept, and still executable
    assert output == "two\n"
    assert new_inode != inode.strip()  # replaced by a rename, never rewritten in place
    hidden = await mcp("list_files", path=f"{ws}/deep/a/b/c", include_hidden=True)
    assert [f["name"] for f in hidden["files"]] == ["run.sh"]  # no temporary file left behind
    # Writing through a symlink replaces the file it points to and keeps the link.
    await mcp.sh(f"ln -sf {ws}/deep/a/b/c/run.sh {ws}/link.sh")
    await mcp("write_file", path=f"{ws}/link.sh", content="#!/bin/sh\necho three\n")
    assert (await mcp.sh(f"test -L {ws}/link.sh && {ws}/link.sh"))["stdout"] == "three\n"
    # A new file gets the usual mode (umask 022 here) and an empty write is a file too.
    await mcp("write_file", path=f"{ws}/empty.txt", content="")
    assert (await mcp.sh(f"stat -c '%a %s' {ws}/empty.txt"))["stdout"] == "644 0\n"


async def test_read_by_lines(mcp: Tools) -> None:
    ws = await workspace(mcp)
    await mcp.sh(f"seq 1 100 > {ws}/lines.txt")
    r = await mcp("read_file", path=f"{ws}/lines.txt", offset=10, limit=3)
    assert (r["content"], r["offset"], r["next_offset"], r["truncated"]) == ("10\n11\n12\n", 10, 13, False)
    r = await mcp("read_file", path=f"{ws}/lines.txt", limit=2)
    assert (r["content"], r["next_offset"]) == ("1\n2\n", 3)
    r = await mcp("read_file", path=f"{ws}/lines.txt", offset=99)
    assert (r["content"], r["next_offset"]) == ("99\n100\n", None)
    assert (await mcp("read_file", path=f"{ws}/lines.txt", offset=0, limit=1))["content"] == "1\n"
    r = await mcp("read_file", path=f"{ws}/lines.txt", offset=500)
    assert (r["content"], r["next_offset"], r["size"]) == ("", None, 292)
    r = await mcp("read_file", path=f"{ws}/lines.txt", offset=98, limit=10)
    assert (r["content"], r["next_offset"]) == ("98\n99\n100\n", None)


async def test_big_text_file_is_cut_at_a_line_and_can_be_read_on(mcp: Tools) -> None:
    ws = await workspace(mcp)
    await mcp.sh(f"seq 1 300000 > {ws}/big.txt")  # 1.9 MB
    size = int((await mcp.sh(f"stat -c %s {ws}/big.txt"))["stdout"])
    r = await mcp("read_file", path=f"{ws}/big.txt")
    assert r["truncated"] is True
    assert r["size"] == size
    assert len(r["content"].encode()) <= 1 << 20
    assert r["content"].startswith("1\n2\n") and r["content"].endswith("\n")
    last = int(r["content"].splitlines()[-1])
    assert r["next_offset"] == last + 1
    rest = await mcp("read_file", path=f"{ws}/big.txt", offset=r["next_offset"])
    assert rest["content"].startswith(f"{last + 1}\n")
    assert rest["content"].endswith("300000\n")
    assert (rest["truncated"], rest["next_offset"]) == (False, None)
    raw = await mcp.raw("read_file", path=f"{ws}/big.txt")
    assert f"offset={last + 1}" in raw.content[0].text  # type: ignore[union-attr]


async def test_mime_types_and_images_come_back_as_image_content(mcp: Tools) -> None:
    ws = await workspace(mcp)
    image = png()
    await mcp("write_file", path=f"{ws}/pic.png", content=base64.b64encode(image).decode(), encoding="base64")
    # Sniffed from the bytes, whatever the name says.
    await mcp("write_file", path=f"{ws}/pic.data", content=base64.b64encode(image).decode(), encoding="base64")
    for path in (f"{ws}/pic.png", f"{ws}/pic.data"):
        raw = await mcp.raw("read_file", path=path)
        assert not raw.is_error
        images = [c for c in raw.content if isinstance(c, ImageContent)]
        assert len(images) == 1
        assert images[0].mime_type == "image/png"
        assert base64.b64decode(images[0].data) == image
        assert raw.structured_content is not None
        assert raw.structured_content["mime_type"] == "image/png"
        assert raw.structured_content["encoding"] == "base64"
    for name, head, mime in (
        ("a.jpg", b"\xff\xd8\xff\xe0\0\x10JFIF\0", "image/jpeg"),
        ("a.gif", b"GIF89a\x01\0\x01\0\x80\0\0", "image/gif"),
        ("a.webp", b"RIFF\x1a\0\0\0WEBPVP8L\x0d\0\0\0\x2f\0\0\0\x10\x07\x10\x11\x11\x88\x88\xfe\x07\0", "image/webp"),
    ):
        await mcp("write_file", path=f"{ws}/{name}", content=base64.b64encode(head + b"\xff" * 8).decode(),
                  encoding="base64")
        raw = await mcp.raw("read_file", path=f"{ws}/{name}")
        assert [c.mime_type for c in raw.content if isinstance(c, ImageContent)] == [mime]
    await mcp("write_file", path=f"{ws}/data.json", content='{"a": 1}')
    assert (await mcp("read_file", path=f"{ws}/data.json"))["mime_type"] == "application/json"
    await mcp("write_file", path=f"{ws}/page.html", content="<p>hi</p>")
    r = await mcp.raw("read_file", path=f"{ws}/page.html")
    assert r.structured_content is not None and r.structured_content["mime_type"] == "text/html"
    assert not [c for c in r.content if isinstance(c, ImageContent)]


async def test_list_files(mcp: Tools) -> None:
    ws = await workspace(mcp)
    await mcp.sh(
        f"mkdir -p {ws}/tree/sub/deeper {ws}/tree/.hidden && cd {ws}/tree && echo 12345 > a.txt && "
        "touch .dotfile sub/b.txt sub/deeper/c.txt .hidden/h.txt && chmod 600 a.txt && ln -s a.txt link && "
        "mkfifo pipe"
    )
    r = await mcp("list_files")
    assert r["path"] == f"{ws}/tree"
    assert r["truncated"] is False
    by_name = {f["name"]: f for f in r["files"]}
    assert sorted(by_name) == ["a.txt", "link", "pipe", "sub"]
    a = by_name["a.txt"]
    assert (a["path"], a["type"], a["size"], a["mode"]) == (f"{ws}/tree/a.txt", "file", 6, "0600")
    assert a["modified_at"]
    assert (by_name["link"]["type"], by_name["sub"]["type"], by_name["pipe"]["type"]) == ("symlink", "directory", "other")
    assert by_name["link"]["target"] == "a.txt"

    hidden = await mcp("list_files", path=".", include_hidden=True)
    assert {f["name"] for f in hidden["files"]} == {"a.txt", "link", "pipe", "sub", ".dotfile", ".hidden"}
    deep = await mcp("list_files", path=f"{ws}/tree", recursive=True)
    assert {f["path"] for f in deep["files"]} == {
        f"{ws}/tree/a.txt", f"{ws}/tree/link", f"{ws}/tree/pipe", f"{ws}/tree/sub", f"{ws}/tree/sub/b.txt",
        f"{ws}/tree/sub/deeper", f"{ws}/tree/sub/deeper/c.txt",
    }
    everything = await mcp("list_files", path=f"{ws}/tree", recursive=True, include_hidden=True)
    assert f"{ws}/tree/.hidden/h.txt" in {f["path"] for f in everything["files"]}

    await mcp.sh(f"mkdir {ws}/many && cd {ws}/many && seq -w 1 10050 | xargs touch")
    many = await mcp("list_files", path=f"{ws}/many")
    assert many["truncated"] is True
    assert len(many["files"]) == 10000

    # A named pipe is listed, and reading it is refused rather than blocking.
    assert "INVALID_ARGUMENT" in await mcp.error("read_file", path=f"{ws}/tree/pipe")
    assert "INVALID_ARGUMENT" in await mcp.error("read_file", path="/dev/zero", offset=2)
    assert "NOT_DIRECTORY" in await mcp.error("list_files", path=f"{ws}/tree/a.txt")
    assert "FILE_NOT_FOUND" in await mcp.error("list_files", path=f"{ws}/nowhere")


async def test_mkdir(mcp: Tools) -> None:
    ws = await workspace(mcp)
    assert await mcp("mkdir", path=f"{ws}/newdir") == {"path": f"{ws}/newdir", "created": True}
    assert "FILE_EXISTS" in await mcp.error("mkdir", path=f"{ws}/newdir")
    assert (await mcp("mkdir", path=f"{ws}/newdir", recursive=True))["created"] is False
    text = await mcp.error("mkdir", path=f"{ws}/x/y/z")
    assert "FILE_NOT_FOUND" in text and "recursive" in text
    assert (await mcp("mkdir", path=f"{ws}/x/y/z", recursive=True))["path"] == f"{ws}/x/y/z"
    await mcp("write_file", path=f"{ws}/plain", content="")
    assert "FILE_EXISTS" in await mcp.error("mkdir", path=f"{ws}/plain", recursive=True)
    assert "NOT_DIRECTORY" in await mcp.error("mkdir", path=f"{ws}/plain/sub")


async def test_delete_file(mcp: Tools) -> None:
    ws = await workspace(mcp)
    await mcp.sh(f"mkdir -p {ws}/d/full/inner {ws}/d/empty && touch {ws}/d/f {ws}/d/full/inner/x && ln -s {ws}/d/full {ws}/d/ln")
    assert await mcp("delete_file", path=f"{ws}/d/f") == {"path": f"{ws}/d/f", "deleted": True}
    assert (await mcp("delete_file", path=f"{ws}/d/empty"))["deleted"] is True
    text = await mcp.error("delete_file", path=f"{ws}/d/full")
    assert "IS_DIRECTORY" in text and "recursive" in text
    await mcp("delete_file", path=f"{ws}/d/ln")  # the link, not what it points to
    assert (await mcp.sh(f"test -e {ws}/d/full/inner/x"))["exit_code"] == 0
    await mcp("delete_file", path=f"{ws}/d/full", recursive=True)
    assert (await mcp.sh(f"ls -A {ws}/d"))["stdout"] == ""
    assert "FILE_NOT_FOUND" in await mcp.error("delete_file", path=f"{ws}/d/f")


async def test_move_file(mcp: Tools) -> None:
    ws = await workspace(mcp)
    await mcp.sh(f"mkdir -p {ws}/m/dir && echo one > {ws}/m/a && echo two > {ws}/m/b && touch {ws}/m/dir/in")
    assert await mcp("move_file", source=f"{ws}/m/a", destination=f"{ws}/m/new/a2") == {
        "source": f"{ws}/m/a", "destination": f"{ws}/m/new/a2",
    }
    text = await mcp.error("move_file", source=f"{ws}/m/b", destination=f"{ws}/m/new/a2")
    assert "FILE_EXISTS" in text and "overwrite" in text
    await mcp("move_file", source=f"{ws}/m/b", destination=f"{ws}/m/new/a2", overwrite=True)
    assert (await mcp.sh(f"cat {ws}/m/new/a2; ls {ws}/m"))["stdout"] == "two\ndir\nnew\n"
    await mcp("move_file", source=f"{ws}/m/dir", destination=f"{ws}/m/renamed")
    assert (await mcp.sh(f"ls {ws}/m/renamed"))["stdout"] == "in\n"
    assert "FILE_NOT_FOUND" in await mcp.error("move_file", source=f"{ws}/m/nope", destination=f"{ws}/m/x")
    assert "INVALID_ARGUMENT" in await mcp.error("move_file", source=f"{ws}/m/renamed", destination=f"{ws}/m/renamed/x")
    # Across filesystems: the workspace and the sandbox's temporary directory may be different mounts.
    tmp = (await mcp.sh("echo ${TMPDIR:-/tmp}"))["stdout"].strip()
    await mcp("move_file", source=f"{ws}/m/renamed", destination=f"{tmp}/moved")
    await mcp("move_file", source=f"{tmp}/moved", destination=f"{ws}/back")
    assert (await mcp.sh(f"ls {ws}/back; ls {tmp}/moved 2>/dev/null"))["stdout"] == "in\n"


async def test_coded_errors(mcp: Tools) -> None:
    ws = await workspace(mcp)
    await mcp.sh(f"mkdir -p {ws}/e && echo x > {ws}/e/file")
    text = await mcp.error("read_file", path=f"{ws}/e/missing")
    assert text.startswith("FILE_NOT_FOUND") or "FILE_NOT_FOUND:" in text
    assert "IS_DIRECTORY" in await mcp.error("read_file", path=f"{ws}/e")
    assert "IS_DIRECTORY" in await mcp.error("write_file", path=f"{ws}/e", content="x")
    assert "NOT_DIRECTORY" in await mcp.error("write_file", path=f"{ws}/e/file/sub.txt", content="x")
    assert "NOT_DIRECTORY" in await mcp.error("read_file", path=f"{ws}/e/file/sub.txt")
    assert "PERMISSION_DENIED" in await mcp.error("write_file", path="/sys/kernel/mcp-test", content="x")
    assert "SESSION_NOT_FOUND" in await mcp.error("read_file", path="x", session_id="nosuch")
    assert "INVALID_ARGUMENT" in await mcp.error("read_file", path="")


async def test_file_resource(mcp: Tools) -> None:
    ws = await workspace(mcp)
    info = await mcp("sandbox_info")
    await mcp("write_file", path=f"{ws}/res dir/ü.txt", content="resource text\n")
    await mcp("write_file", path=f"{ws}/res dir/b.bin", content=base64.b64encode(ALL_BYTES).decode(), encoding="base64")
    r = await mcp.client.read_resource(f"sandbox://{info['sandbox_id']}/files{ws}/res%20dir/%C3%BC.txt")
    content = r.contents[0]
    assert isinstance(content, TextResourceContents) and content.text == "resource text\n"
    r = await mcp.client.read_resource(f"sandbox://default/files{ws}/res%20dir/b.bin")
    blob = r.contents[0]
    assert isinstance(blob, BlobResourceContents) and base64.b64decode(blob.blob) == ALL_BYTES
    templates = await mcp.client.list_resource_templates()
    assert "sandbox://{sandbox_id}/files/{+path}" in [t.uri_template for t in templates.resource_templates]
    with pytest.raises(Exception, match="FILE_NOT_FOUND"):
        await mcp.client.read_resource(f"sandbox://{info['sandbox_id']}/files{ws}/none")


async def test_100_mb_through_the_python_api_in_chunks(tmp_path: Path) -> None:
    """One backend is enough: the transfer is the agent channel's, the same on every backend."""
    if not reset_peak_rss():
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs) to measure memory")
    size = 100 << 20
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    async with SandboxManager(settings_for("none", tmp_path / "sandboxes")) as manager:
        sandbox = await manager.create()
        before = memory_kib("VmRSS")
        reset_peak_rss()
        written = await sandbox.write_file("big/blob.bin", data)
        write_growth = (memory_kib("VmHWM") - before) * 1024
        assert written.bytes_written == size
        assert (await sandbox.exec("sha256sum big/blob.bin")).stdout.split()[0] == digest
        assert write_growth < size // 2, f"write_file grew the host by {write_growth >> 20} MiB"
        del data

        before = memory_kib("VmRSS")
        reset_peak_rss()
        back = await sandbox.read_file_bytes(written.path)
        read_growth = (memory_kib("VmHWM") - before) * 1024
        assert len(back) == size
        assert hashlib.sha256(back).hexdigest() == digest
        assert read_growth < size * 3 // 2, f"read_file_bytes grew the host by {read_growth >> 20} MiB"
        del back

        total = 0
        async for chunk in sandbox.read_file_chunks(written.path):
            total += len(chunk)
        assert total == size


async def test_a_file_that_shrinks_while_it_is_read_ends_where_it_ends(tmp_path: Path) -> None:
    """The chunks are read into one buffer; a file cut short meanwhile gives what it still has."""
    async with SandboxManager(settings_for("none", tmp_path / "sandboxes")) as manager:
        sandbox = await manager.create()
        data = os.urandom(3 << 20)
        written = await sandbox.write_file("shrinks.bin", data)
        opened = await sandbox.call("file_read_open", {"path": written.path})
        await sandbox.exec(f"truncate -s {(3 << 20) // 2 + 5} {written.path}")
        back = await sandbox._read_into(opened["handle"], 0, opened["size"], None)
        assert bytes(back) == data[: (3 << 20) // 2 + 5]
