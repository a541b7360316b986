"""Ownership of background work: what a component starts and does not await at once, it keeps here,
so that its ``aclose()`` can cancel and await it and the agent's teardown leaves nothing behind."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Set


class TaskSet:
    """Tasks and executor futures a component started; each leaves the set when it is done."""

    def __init__(self) -> None:
        self._pending: Set["asyncio.Future[Any]"] = set()
        self._threads: Set["asyncio.Future[Any]"] = set()

    def spawn(self, coro: Awaitable[Any]) -> "asyncio.Future[Any]":
        return self.track(asyncio.ensure_future(coro))

    def in_thread(self, fn: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
        """Run ``fn(*args)`` in the default executor (a blocking write, say)."""
        future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._threads.add(future)
        future.add_done_callback(self._threads.discard)
        return future

    def track(self, future: "asyncio.Future[Any]") -> "asyncio.Future[Any]":
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    async def aclose(self) -> None:
        """Cancel everything still pending and wait until it has ended. An executor thread cannot
        be cancelled: its future is awaited until the thread returns (its pipe's reader was killed)."""
        while self._pending:
            pending = list(self._pending)
            for future in pending:
                future.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Cancelling a thread's future would only stop us waiting for it, not the thread.
        while self._threads:
            await asyncio.gather(*self._threads, return_exceptions=True)


async def cancel_and_wait(task: "asyncio.Future[Any]") -> None:
    """Cancel a task this code owns and wait until it has ended."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
