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
        self.loop = loop
        self._queue: asyncio.Queue[Item] = asyncio.Queue()

    def push(self, item: Item) -> None:
        push_many([(self, item)])

    def _deliver(self, item: Item) -> None:
        self._queue.put_nowait(item)

    async def get(self) -> Item:
        item = await self._queue.get()
        self._taken()
        return item


def _deliver_all(items: list[tuple[AsyncSink, Item]]) -> None:
    for sink, item in items:
        sink._deliver(item)


def push_many(items: list[tuple[Sink, Item]]) -> None:
    """Push many items; async sinks get one wake-up per event loop, not one per item."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[AsyncSink, Item]]] = {}
    for sink, item in items:
        if isinstance(sink, AsyncSink):
            sink._pushed()
            by_loop.setdefault(sink.loop, []).append((sink, item))
        else:
            sink.push(item)
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver_all, batch)
        except RuntimeError:  # the reader's loop is closed: nobody will read
            for sink, _ in batch:
                sink.closed = True


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
