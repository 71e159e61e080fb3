"""Hand-off of deltas from the scheduler thread to whoever reads them.

The scheduler never blocks on a reader: it pushes and moves on. Each sink counts what
was pushed but not yet read (``backlog``); the scheduler pauses a sequence whose reader
lags too far behind (backpressure) instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
import queue
import threading

from teellm.engine.types import Delta

Item = Delta | BaseException


class Sink:
    """Where one request's deltas go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._backlog = 0
        self.closed = False

    def backlog(self) -> int:
        return self._backlog

    def _pushed(self) -> None:
        with self._lock:
            self._backlog += 1

    def _taken(self) -> None:
        with self._lock:
            self._backlog -= 1

    def push(self, item: Item) -> None:
        raise NotImplementedError


class AsyncSink(Sink):
    """Feeds an asyncio.Queue on the reader's event loop (thread-safe)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._queue: asyncio.Queue[Item] = asyncio.Queue()

    def push(self, item: Item) -> None:
        self._pushed()
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the reader's loop is closed: nobody will read
            self.closed = True

    async def get(self) -> Item:
        item = await self._queue.get()
        self._taken()
        return item


class ThreadSink(Sink):
    """Feeds a queue.Queue for blocking readers."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: queue.Queue[Item] = queue.Queue()

    def push(self, item: Item) -> None:
        self._pushed()
        self._queue.put(item)

    def get(self, timeout: float | None = None) -> Item:
        item = self._queue.get(timeout=timeout)
        self._taken()
        return item
