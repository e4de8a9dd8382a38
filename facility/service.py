"""The shape every long-running service shares: `async with Service(...) as svc:` runs it.

`run()` is the service: one TaskGroup of named tasks, forever. Entering the context
starts `run()` as a task; leaving it cancels that task and waits for it, and re-raises
what it died of, if it died. Shutdown is cancellation, not a flag polled in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self


class Service:
    name = "service"

    def __init__(self) -> None:
        self.ready = asyncio.Event()  # set once the service is connected and working
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        raise NotImplementedError

    async def open(self) -> None:
        """Acquire resources before run() starts (files, HTTP sessions)."""

    async def close(self) -> None:
        """Release what open() acquired, after run() has stopped."""

    async def __aenter__(self) -> Self:
        await self.open()
        self._task = asyncio.create_task(self.run(), name=self.name)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        finally:
            self._task = None
            await self.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ready; raise what run() died of if it died first."""
        assert self._task is not None, "use inside 'async with'"
        waiter = asyncio.create_task(self.ready.wait())
        try:
            done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._task in done:
            self._task.result()  # raises its exception
            raise RuntimeError(f"{self.name} stopped before it was ready")
        if not self.ready.is_set():
            raise TimeoutError(f"{self.name} not ready after {timeout}s")

    @property
    def task(self) -> asyncio.Task[None]:
        assert self._task is not None, "use inside 'async with'"
        return self._task

    @property
    def failed(self) -> BaseException | None:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            return self._task.exception()
        return None


def check_cancelled() -> None:
    """Raise CancelledError if this task was cancelled and an await swallowed it.

    Python 3.11's asyncio.wait_for returns a result that raced with a cancel (gh-86296,
    fixed in 3.12), and libraries still use it (pymodbus, for every request). A loop
    around such calls checks after each one, or it outlives its cancel and stop hangs.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def forever(services: list[Service]) -> None:
    """Wait until a service stops (its error propagates) or we are cancelled."""
    done, _ = await asyncio.wait([s.task for s in services], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.result()
