"""The disk budget of a local sandbox (``--disk``): what its directory holds, measured by the host.

The sandbox's directory (its workspace and its temporary directory) is measured as ``du`` would:
the blocks allocated to each file, hard links once, staying on its filesystem. The server does it
in a thread, not the agent: the sandbox's processes run as the agent's user and could stop or trace
it, and a host running as root sees every directory whatever its mode. A measure costs about a
microsecond per file, so it runs at most every 20 times its duration, and every 2 s at least while
the filesystem changes (every minute while nothing on it does); in between, every quarter of a
second, one ``statvfs`` (one for all the sandboxes, see Poller) tells how much the filesystem grew,
which bounds what the sandbox may have written: once the last measure plus that growth could be
beyond the budget, the sandbox is measured again at once. So a writer is caught within about a
quarter of a second plus a measure, whatever its speed; the per-file limit (RLIMIT_FSIZE, set to
the budget) stops a single file from growing past it even sooner.

A sandbox found over its budget is stopped: everything running in it is killed, and the commands
that were running get ``LIMIT_REACHED`` saying why. It is stopped again only when it grows further
while still over; files can be deleted meanwhile to get below.
"""

from __future__ import annotations

import itertools
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from .errors import SandboxError
from .sizes import format_size

POLL = 0.25
MIN_INTERVAL = 2.0
MAX_INTERVAL = 60.0
# Growth allowed while over the budget before everything is stopped again (the agent's own state
# files and a `du` to look around must not count as a new offence).
SLACK = 1 << 20
# A sandbox with at most this many files and directories is measured on the event loop (about
# 0.1 ms; a hop to a worker thread costs more than that), a bigger one in a thread.
INLINE_ENTRIES = 64
# A file transfer at least this big measures the sandbox first, to refuse what would not fit.
MEASURE_FIRST = 1 << 20


class TooMany(Exception):
    """A walk given ``most`` entries found more."""


def usage(top: Path, most: int | None = None) -> int:
    """Bytes allocated under ``top``, like ``du -s``. Directories made unreadable are opened up
    while they are measured (the server's user owns them when it is the sandbox's user). With
    ``most``, TooMany past that many entries: a walk short enough for the event loop."""
    try:
        device = os.lstat(top).st_dev
    except FileNotFoundError:
        return 0  # the sandbox was destroyed meanwhile
    seen: set[tuple[int, int]] = set()
    opened: list[tuple[str, int]] = []
    total = seen_entries = 0
    stack = [str(top)]
    try:
        while stack:
            path = stack.pop()
            try:
                entries = _entries(path, opened, None if most is None else most - seen_entries + 1)
            except OSError:
                continue  # removed meanwhile, or not ours
            seen_entries += len(entries)
            if most is not None and seen_entries > most:
                raise TooMany(top)
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                is_dir = stat.S_ISDIR(info.st_mode)
                if info.st_nlink > 1 and not is_dir:
                    if (info.st_dev, info.st_ino) in seen:
                        continue
                    seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
                if is_dir and info.st_dev == device:
                    stack.append(entry.path)
    finally:
        for path, mode in reversed(opened):
            try:
                os.chmod(path, mode)
            except OSError:
                pass
    return total


def _entries(path: str, opened: list[tuple[str, int]], most: int | None) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(itertools.islice(it, most))
    except PermissionError:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        os.chmod(path, mode | stat.S_IRWXU)
        opened.append((path, mode))
        with os.scandir(path) as it:
            return list(itertools.islice(it, most))


def filesystem_used(path: Path) -> int:
    info = os.statvfs(path)
    return (info.f_blocks - info.f_bfree) * info.f_frsize


class DiskBudget:
    """Keeps one sandbox's directory within its budget."""

    def __init__(self, directory: Path, budget: int) -> None:
        self.directory = directory
        self.budget = budget
        self.used = 0
        self.over: str | None = None  # the LIMIT_REACHED message while over the budget
        self._stopped_at = 0  # the usage when everything was stopped, while over

    def message(self) -> str:
        return (
            f"the sandbox uses {format_size(self.used)} of its {format_size(self.budget)} disk budget (--disk), "
            "counting its workspace and temporary files, and everything running in it was stopped; "
            "delete files (rm, delete_file) to get below the budget, then run the command again"
        )

    async def measure(self) -> int:
        return self._account(await anyio.to_thread.run_sync(usage, self.directory))

    def _account(self, used: int) -> int:
        self.used = used
        if self.used <= self.budget:
            self.over = None
            self._stopped_at = 0
        else:
            self.over = self.message()
        return self.used

    def _sample(self, most: int | None = None) -> tuple[int, int]:
        """The filesystem's used bytes, then the sandbox's."""
        return filesystem_used(self.directory), usage(self.directory, most)

    async def check_room(self, incoming: int = 0) -> None:
        """LIMIT_REACHED while the sandbox is over its budget, or would be with ``incoming`` more
        bytes written (a file transfer's size). Measured again first, except for a small write that
        fits by the last measure: the watch catches what that misses."""
        if self.over is None and incoming < MEASURE_FIRST and self.used + incoming <= self.budget:
            return
        used = await self.measure()
        if self.over is not None:
            raise SandboxError("LIMIT_REACHED", self.over)
        if used + incoming > self.budget:
            raise SandboxError(
                "LIMIT_REACHED",
                f"writing {format_size(incoming)} would take the sandbox past its {format_size(self.budget)} "
                f"disk budget (--disk), of which it uses {format_size(used)}, counting its workspace and "
                "temporary files; delete files (rm, delete_file) or write less",
            )

    async def watch(self, stop: Callable[[str], Awaitable[None]], poller: Poller) -> None:
        """Measure now and then, and call ``stop`` with the message when the sandbox is over its
        budget and grew since it was last stopped. Runs until cancelled, or the sandbox's directory
        is gone. ``poller`` reads the filesystem's growth in between, for every sandbox at once."""
        try:
            await self._watch(stop, poller)
        except FileNotFoundError:
            return

    async def _watch(self, stop: Callable[[str], Awaitable[None]], poller: Poller) -> None:
        device = os.stat(self.directory).st_dev
        while True:
            started = time.monotonic()
            try:  # an idle sandbox's few files are measured at once, a thread's hop costing more
                baseline, used = self._sample(INLINE_ENTRIES)
            except TooMany:  # in a thread then, however many there are (one hop for both)
                baseline, used = await anyio.to_thread.run_sync(self._sample)
            self._account(used)
            took = time.monotonic() - started
            if self.over is not None and self.used > self._stopped_at + SLACK:
                self._stopped_at = self.used
                await stop(self.over)
            # Measured again at the deadline if the filesystem changed at all, at the latest after
            # MAX_INTERVAL, and at once when it grew by more than the room left below the limit
            # (but not sooner than twice a measure's time after the last: never measuring nonstop).
            limit = max(self.budget, self._stopped_at + SLACK)
            await poller.wait(Wait(
                self.directory, device, baseline, baseline + limit - self.used, earliest=started + 2 * took,
                deadline=started + min(MAX_INTERVAL, max(MIN_INTERVAL, 20 * took)), latest=started + MAX_INTERVAL,
            ))


@dataclass(eq=False)
class Wait:
    """A watch waiting for its next measure: until ``deadline`` if its filesystem's use is no longer
    ``baseline`` (unchanged, nothing can have grown), until ``latest`` in any case, or until the
    filesystem's use is past ``most`` (after ``earliest``)."""

    directory: Path
    device: int
    baseline: int
    most: int
    earliest: float
    deadline: float
    latest: float
    woken: anyio.Event = field(default_factory=anyio.Event)


class Poller:
    """Reads the filesystems' use every POLL for all the watches at once, and wakes a watch only
    when it is to measure: a thousand idle sandboxes then cost one ``statvfs`` a tick, not a
    thousand wake-ups. The manager runs it."""

    def __init__(self) -> None:
        self._waits: set[Wait] = set()
        self._added = anyio.Event()

    async def wait(self, wait: Wait) -> None:
        self._waits.add(wait)
        self._added.set()
        try:
            await wait.woken.wait()
        finally:
            self._waits.discard(wait)

    async def run(self) -> None:
        while True:
            if not self._waits:
                self._added = anyio.Event()
                await self._added.wait()
            await anyio.sleep(POLL)
            now = time.monotonic()
            used: dict[int, int] = {}  # per device
            for wait in list(self._waits):
                if wait.device not in used:
                    try:
                        used[wait.device] = filesystem_used(wait.directory)
                    except OSError:  # the directory is gone: its watch finds out
                        wait.woken.set()
                        continue
                now_used = used[wait.device]
                if (
                    now >= wait.latest
                    or (now >= wait.deadline and now_used != wait.baseline)
                    or (now_used > wait.most and now > wait.earliest)
                ):
                    wait.woken.set()
