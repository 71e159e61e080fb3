"""Per-client limit on failed key-release attempts (sliding window, in memory).

Kept in the broker process: several brokers behind a load balancer each limit
on their own, which bounds a guesser to (brokers x limit) failures per window.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from teellm.kbs.errors import RateLimited


class FailureRateLimiter:
    """At most ``max_failures`` failed attempts per client in any ``window_s`` seconds."""

    def __init__(
        self,
        max_failures: int = 20,
        window_s: float = 60.0,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _prune(self, client: str, now: float) -> deque[float] | None:
        q = self._failures.get(client)
        if q is None:
            return None
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._failures[client]
            return None
        return q

    def check(self, client: str) -> None:
        """Raise ``RateLimited`` if ``client`` used up its failures in the window."""
        with self._lock:
            now = self._clock()
            q = self._prune(client, now)
            if q is not None and len(q) >= self.max_failures:
                raise RateLimited(
                    "too many failed attempts from this client",
                    retry_after_s=max(0.0, q[0] + self.window_s - now),
                )

    def failed(self, client: str) -> None:
        """Count one failed attempt by ``client``."""
        with self._lock:
            now = self._clock()
            q = self._prune(client, now)
            if q is None:
                q = deque()
                self._failures[client] = q
                while len(self._failures) > self._max_clients:
                    self._failures.popitem(last=False)
            else:
                self._failures.move_to_end(client)
            q.append(now)
